"""ipywidgets playgrounds for the exercises; each has a static twin for the rendered book."""
from __future__ import annotations

import copy

import matplotlib.pyplot as plt
import torch

from .plots import grid, sinusoid_fit
from .tasks import Sinusoid


def _task(shots: int, seed: int):
    batch, amplitude, phase = Sinusoid(shots, 1).sample(1, torch.Generator().manual_seed(seed), return_params=True)
    return batch.support_x[0], batch.support_y[0], amplitude[0], phase[0]


def _with_lr(algorithm, inner_lr):
    clone = copy.copy(algorithm)  # shares the model: only the step size differs
    clone.inner_lr = inner_lr
    return clone


def draw_sinusoid_adaptation(algorithms: dict, inner_lr: float, inner_steps: int, shots: int, seed: int = 0):
    """Each algorithm's fit to one sinusoid task after 0 and ``inner_steps`` steps of size ``inner_lr``."""
    sx, sy, amplitude, phase = _task(shots, seed)
    fig, axes = grid(len(algorithms), cols=len(algorithms))
    for ax, (name, alg) in zip(axes, algorithms.items()):
        sinusoid_fit(_with_lr(alg, inner_lr), sx, sy, amplitude, phase, steps=(0, inner_steps), ax=ax,
                     title=f"{name}: alpha={inner_lr:g}, k={inner_steps}, K={shots}")
    fig.tight_layout()
    return fig


def sinusoid_static(algorithms: dict, settings, seed: int = 0):
    """The static twin of :func:`sinusoid_playground`: one figure per (inner_lr, steps, shots)."""
    for inner_lr, steps, shots in settings:
        draw_sinusoid_adaptation(algorithms, inner_lr, steps, shots, seed)
        plt.show()


def sinusoid_playground(algorithms: dict, inner_lr: float = 0.01, inner_steps: int = 10, shots: int = 10):
    """Sliders for the inner step size alpha, the number of inner steps k and K; redraws the fits."""
    import ipywidgets as w

    def show(inner_lr, inner_steps, shots, task):
        draw_sinusoid_adaptation(algorithms, inner_lr, inner_steps, shots, task)
        plt.show()

    return w.interactive(
        show,
        inner_lr=w.FloatLogSlider(value=inner_lr, base=10, min=-3, max=-0.5, step=0.1, description="alpha"),
        inner_steps=w.IntSlider(value=inner_steps, min=0, max=40, description="steps k"),
        shots=w.IntSlider(value=shots, min=1, max=40, description="K"),
        task=w.IntSlider(value=0, min=0, max=20, description="task seed"),
    )
