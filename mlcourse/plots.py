"""Figures the chapters share (matplotlib)."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
from matplotlib.transforms import ScaledTranslation
import numpy as np
import torch

from .functional import forward


def omniglot_episode(batch, task: int = 0, max_queries: int = 3, title: str | None = None):
    """One N-way K-shot episode as a grid: a row per class, its support drawings then queries."""
    sx, sy, qx, qy = (t[task].cpu() for t in batch)
    ways = int(sy.max()) + 1
    shots = int((sy == 0).sum())
    queries = min(max_queries, int((qy == 0).sum()))
    cols = shots + queries
    fig, axes = plt.subplots(ways, cols, figsize=(1.1 * cols + 0.6, 1.1 * ways), squeeze=False)
    for label in range(ways):
        drawings = list(sx[sy == label][:shots]) + list(qx[qy == label][:queries])
        for j, image in enumerate(drawings):
            ax = axes[label, j]
            ax.imshow(image[0], cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            for side in ax.spines.values():
                side.set_color("tab:blue" if j < shots else "tab:orange")
                side.set_linewidth(2)
        axes[label, 0].set_ylabel(f"label {label}", rotation=0, ha="right", va="center", fontsize=9)
    axes[0, 0].set_title("support", fontsize=9, color="tab:blue", loc="left")
    axes[0, shots].set_title("query", fontsize=9, color="tab:orange", loc="left")
    fig.suptitle(title or f"{ways}-way {shots}-shot episode", fontsize=10)
    fig.tight_layout()
    return fig


def sinusoid_family(sampler, n: int = 8, generator=None, ax=None):
    """``n`` tasks of the sinusoid family, drawn as curves with one task's support points."""
    ax = ax or plt.subplots(figsize=(6.4, 3.6))[1]
    batch, amplitude, phase = sampler.sample(n, generator=generator, return_params=True)
    x = torch.linspace(*sampler.x_range, 200).view(1, -1, 1)
    ys = sampler.function(x.expand(n, -1, -1), amplitude, phase)
    for i in range(n):
        ax.plot(x[0, :, 0], ys[i, :, 0], lw=1.2, alpha=0.8)
    ax.scatter(batch.support_x[0, :, 0], batch.support_y[0, :, 0], color="k", zorder=3, s=18,
               label=f"a task's K={sampler.shots} support points")
    ax.set_ylim(-5.5, 7)  # |y| <= 5: the legend gets the band above the curves
    ax.set_xlabel("x"), ax.set_ylabel("y"), ax.legend(loc="upper center", fontsize=9)
    ax.set_title(f"{n} tasks: y = A sin(x - b), A in [0.1, 5], b in [0, pi]", fontsize=10)
    return ax


def sinusoid_fit(algorithm, support_x, support_y, amplitude, phase, steps=(0, 1, 10), ax=None, title=None):
    """True function, support points, and the model after each number of adaptation steps."""
    ax = ax or plt.subplots(figsize=(6.4, 3.6))[1]
    device = next(algorithm.model.parameters()).device
    x = torch.linspace(-5, 5, 200).view(-1, 1)
    ax.plot(x[:, 0], float(amplitude) * torch.sin(x[:, 0] - float(phase)), color="k", lw=2, label="true")
    ax.scatter(support_x[:, 0].cpu(), support_y[:, 0].cpu(), color="k", marker="^", zorder=4, s=30, label="support")
    colours = plt.cm.viridis(np.linspace(0.1, 0.85, len(steps)))
    for c, k in zip(colours, steps):
        with torch.no_grad():
            phi = algorithm.adapt(support_x.to(device), support_y.to(device), inner_steps=k)
            y = forward(algorithm.model, phi, x.to(device)).cpu()
        ax.plot(x[:, 0], y[:, 0], color=c, lw=1.5, ls="--" if k == 0 else "-", label=f"{k} step{'s' if k != 1 else ''}")
    ax.set_ylim(-6, 6), ax.set_xlabel("x")
    # below the x label (0.45 inch under the axes, whatever their height): it hides no curve
    below = ax.transAxes + ScaledTranslation(0, -0.45, ax.figure.dpi_scale_trans)
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=below,
              ncol=3, columnspacing=1.0, handlelength=1.5, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def adaptation_curves(curves: dict, ax=None, ylabel="query MSE", title=None):
    """``curves``: name -> (steps, means, ci95s); mean with a 95% band against adaptation steps."""
    ax = ax or plt.subplots(figsize=(6.4, 3.6))[1]
    for name, (steps, means, cis) in curves.items():
        steps, means, cis = map(np.asarray, (steps, means, cis))
        ax.plot(steps, means, marker="o", ms=3, label=name)
        ax.fill_between(steps, means - cis, means + cis, alpha=0.2)
    ax.set_xlabel("gradient steps at test time"), ax.set_ylabel(ylabel)
    ax.legend(fontsize=9)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def grid(n: int, cols: int = 3, size=(4.2, 3.0)):
    """A figure with ``n`` axes in rows of ``cols``."""
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, min(cols, n), figsize=(size[0] * min(cols, n), size[1] * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.remove()
    return fig, list(axes.flat[:n])


# -- chapter 4: LLAMA's posterior on sinusoids ----------------------------------------------------
SINUSOID_GRID = torch.linspace(-5, 5, 201).view(-1, 1)  # where posterior curves are drawn


def sinusoid_task(seed: int, shots: int = 10, x_range=(-5.0, 5.0)):
    """One sinusoid task seen through ``shots`` points drawn uniformly from ``x_range``.

    Returns ``(x, y, amplitude, phase)``: x and y of shape (shots, 1), amplitude and phase of
    shape (1,), all from a generator seeded by ``seed`` (the amplitude and phase first, as
    :class:`mlcourse.tasks.Sinusoid` draws them, then the points).
    """
    from .tasks import Sinusoid

    lo, hi = x_range
    if not lo <= hi:
        raise ValueError(f"x_range={tuple(x_range)} is reversed: allowed (low, high) with low <= high")
    gen = torch.Generator().manual_seed(seed)
    _, amplitude, phase = Sinusoid(1, 1).sample(1, gen, return_params=True)
    x = lo + (hi - lo) * torch.rand(shots, 1, generator=gen)
    return x, Sinusoid.function(x[None], amplitude, phase)[0], amplitude, phase


def sinusoid_posterior(algorithm, x, y, amplitude, phase, samples: int = 12, seed: int = 0, steps: int = 10,
                       title: str = "", ax=None):
    """The true sinusoid, the support points and, after ``steps`` adaptation steps on them, either
    ``samples`` draws of the posterior predictive (an algorithm with ``predictive_samples``, such
    as LLAMA; drawn with a generator seeded by ``seed``) or the one adapted prediction (MAML)."""
    from .tasks import Sinusoid

    ax = ax or plt.subplots(figsize=(5, 3.2))[1]
    device = next(algorithm.model.parameters()).device
    grid_x = SINUSOID_GRID
    truth = Sinusoid.function(grid_x[None], amplitude, phase)[0]
    ax.plot(grid_x[:, 0], truth[:, 0], "k", lw=2, label="ground truth")
    if hasattr(algorithm, "predictive_samples"):
        preds = algorithm.predictive_samples(x.to(device), y.to(device), grid_x.to(device), samples,
                                             torch.Generator().manual_seed(seed), inner_steps=steps).cpu()
        for i, p in enumerate(preds):
            ax.plot(grid_x[:, 0], p[:, 0], color="tab:blue", lw=0.8, alpha=0.6,
                    label="posterior sample" if i == 0 else None)
    else:
        with torch.no_grad():
            phi = algorithm.adapt(x.to(device), y.to(device), inner_steps=steps)
            prediction = forward(algorithm.model, phi, grid_x.to(device)).cpu()
        ax.plot(grid_x[:, 0], prediction[:, 0], color="tab:orange", lw=1.5, label="MAML prediction")
    ax.scatter(x[:, 0], y[:, 0], color="red", zorder=5, s=18, label="support points")
    ax.set_ylim(-7, 7)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=9, loc="upper right")
    return ax
