"""ipywidgets playgrounds for the exercises; each has a static twin for the rendered book."""
from __future__ import annotations

import copy

import matplotlib.pyplot as plt
import torch

from .functional import flatten
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


# -- chapter 3: the geometry of Reptile, and the Taylor expansion ---------------------------------
def draw_manifolds(tasks, inner_steps: int, inner_lr: float = 0.25, iterations: int = 150, ax=None):
    """Reptile's iterates on the 2-D line tasks of :mod:`mlcourse.analysis.manifolds`, with the
    point closest to all lines and joint training's minimiser."""
    from .analysis import manifolds

    ax = ax or plt.subplots(figsize=(4.8, 4.2))[1]
    closest, joint = manifolds.closest_point(tasks), manifolds.joint_minimiser(tasks)
    path = manifolds.reptile_path(tasks, inner_steps, inner_lr, iterations=iterations)
    u = torch.linspace(-4, 4, 2, dtype=torch.float64)
    for a, b in zip(tasks.support_x[:, 0], tasks.support_y[:, 0, 0]):
        n = a / a.norm()
        base, along = n * b / a.norm(), torch.stack([-n[1], n[0]])
        ends = base + u.unsqueeze(1) * along
        ax.plot(ends[:, 0], ends[:, 1], color="0.6", lw=1)
    ax.plot(path[:, 0], path[:, 1], ".-", ms=2, lw=0.8, color="tab:blue", label=f"Reptile, k={inner_steps}")
    ax.plot(*closest, "*", ms=14, color="tab:green", label="closest to all lines")
    ax.plot(*joint, "x", ms=10, mew=2, color="tab:red", label="joint training")
    ax.set_xlim(-0.5, 3.0), ax.set_ylim(-0.5, 3.0), ax.set_aspect("equal")
    ax.set_xlabel("phi[0]"), ax.set_ylabel("phi[1]")
    ax.legend(fontsize=8, loc="upper right")
    return ax


def manifolds_playground(tasks, inner_steps: int = 1):
    """A slider for the number of inner steps k of Reptile on the 2-D line tasks."""
    import ipywidgets as w

    def show(inner_steps):
        draw_manifolds(tasks, inner_steps)
        plt.show()

    return w.interactive(show, inner_steps=w.IntSlider(value=inner_steps, min=1, max=60, description="inner steps k"))


def draw_taylor_error(loss_of, theta, tasks, inner_lr: float, k: int):
    """Bars: |exact - predicted| expected gradient of MAML, FOMAML and Reptile, with and without
    the AvgGradInner term, for one step size alpha and k mini-batches."""
    from .analysis import taylor

    avg_grad, avg_inner = taylor.avg_grad_terms(loss_of, theta, tasks)
    exact = taylor.exact_gradients(loss_of, theta, tasks, inner_lr, k)
    full = taylor.predicted_gradients(avg_grad, avg_inner, inner_lr, k)
    zero = {p: 0 * v for p, v in avg_inner.items()}
    lead = taylor.predicted_gradients(avg_grad, zero, inner_lr, k)
    names = list(taylor.ALGORITHMS)
    err = lambda pred: [(flatten(exact[n]) - flatten(pred[n])).norm().item() for n in names]  # noqa: E731
    fig, ax = plt.subplots(figsize=(5.5, 3))
    x = torch.arange(len(names)).numpy()
    ax.bar(x - 0.2, err(lead), 0.4, label="AvgGrad term only")
    ax.bar(x + 0.2, err(full), 0.4, label="with AvgGradInner")
    ax.set_xticks(x, names), ax.set_yscale("log"), ax.set_ylabel("|exact - predicted|")
    ax.set_title(f"alpha={inner_lr:g}, k={k}"), ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def taylor_playground(loss_of, theta, tasks, inner_lr: float = 0.01, k: int = 2):
    """Sliders for alpha and k: how well the O(alpha^2) expansion predicts the exact gradients."""
    import ipywidgets as w

    def show(inner_lr, k):
        draw_taylor_error(loss_of, theta, tasks, inner_lr, k)
        plt.show()

    fewest = min(len(t) for t in tasks)
    return w.interactive(
        show,
        inner_lr=w.FloatLogSlider(value=inner_lr, base=10, min=-3.5, max=-0.5, step=0.1, description="alpha"),
        k=w.IntSlider(value=k, min=1, max=fewest, description="k"),
    )
