"""Multimodal regression: each task is drawn from one of several function families (MMAML).

Vuorio, Sun, Hu and Lim (2019), "Multimodal Model-Agnostic Meta-Learning via Task-Aware Modulation",
sec. 5.1 and the authors' regression code (github.com/vuoristo/MMAML-Regression), which gives the
parameter ranges below. x ~ U[-5, 5]; every observed y, support and query, carries Gaussian noise of
standard deviation ``noise`` (0.3 in the paper). The paper's task sets are the first 2, 3 or 5
families of :data:`FAMILIES` in this order (:meth:`Multimodal.paper`).
"""
from __future__ import annotations

import math

import torch

from ..utils import check_int
from .base import TaskBatch

# name: (formula, {parameter: (low, high)}); each family has three parameters a, b, c (unused ones are
# NaN in ``params``). The quadratic's a is a magnitude in [0.02, 0.15] with a random sign.
FAMILIES = {
    "sinusoid": ("a \\sin(x - b)", {"a": (0.1, 5.0), "b": (0.0, math.pi)}),
    "line": ("a x + b", {"a": (-3.0, 3.0), "b": (-3.0, 3.0)}),
    "quadratic": ("\\pm a (x - b)^2 + c", {"a": (0.02, 0.15), "b": (-3.0, 3.0), "c": (-3.0, 3.0)}),
    "tanh": ("a \\tanh(x - b) + c", {"a": (-3.0, 3.0), "b": (-3.0, 3.0), "c": (-3.0, 3.0)}),
    "l1": ("a \\lvert x - b \\rvert + c", {"a": (-3.0, 3.0), "b": (-3.0, 3.0), "c": (-3.0, 3.0)}),
}
PAPER_MODES = {2: ("sinusoid", "line"), 3: ("sinusoid", "line", "quadratic"),
               5: ("sinusoid", "line", "quadratic", "tanh", "l1")}


def family_values(name: str, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The noiseless y of family ``name`` at x, with parameters broadcast against x."""
    if name == "sinusoid":
        return a * torch.sin(x - b)
    if name == "line":
        return a * x + b
    if name == "quadratic":
        return a * (x - b) ** 2 + c
    if name == "tanh":
        return a * torch.tanh(x - b) + c
    if name == "l1":
        return a * (x - b).abs() + c
    raise ValueError(f"family {name!r} is unknown: allowed {', '.join(FAMILIES)}")


class Multimodal:
    """Tasks from ``modes`` (names in :data:`FAMILIES`), each family equally often.

    ``sample(meta_batch, generator)`` returns a :class:`TaskBatch` of ``shots`` support and
    ``queries`` query points per task, with ``batch.mode`` the index in ``modes`` of each task's
    family. ``return_params=True`` also returns ``{"mode", "a", "b", "c"}`` (tensors of shape
    (tasks,)) for plotting the true functions with :meth:`function`.

    The modes of a meta-batch are balanced (``meta_batch // len(modes)`` tasks of each, the rest
    drawn at random) and shuffled, as the paper's sampler gives each family an equal share.
    """

    x_range = (-5.0, 5.0)

    def __init__(self, modes=("sinusoid", "line"), shots: int = 5, queries: int = 5, noise: float = 0.3):
        if isinstance(modes, str):
            modes = (modes,)
        modes = tuple(modes)
        if not modes:
            raise ValueError("modes is empty: allowed 1 to 5 names from " + ", ".join(FAMILIES))
        for name in modes:
            if name not in FAMILIES:
                raise ValueError(f"mode {name!r} is unknown: allowed {', '.join(FAMILIES)}")
        if len(set(modes)) != len(modes):
            raise ValueError(f"modes={modes} repeats a family: allowed each of {', '.join(FAMILIES)} at most once")
        self.modes = modes
        self.shots = check_int("shots", shots, 1)
        self.queries = check_int("queries", queries, 1)
        if not (isinstance(noise, (int, float)) and 0 <= noise < math.inf):
            raise ValueError(f"noise={noise!r} is out of range: allowed a finite number >= 0")
        self.noise = float(noise)

    @classmethod
    def paper(cls, num_modes: int, shots: int = 5, queries: int = 5, noise: float = 0.3) -> "Multimodal":
        """The paper's task set with 2, 3 or 5 modes."""
        if num_modes not in PAPER_MODES:
            raise ValueError(f"num_modes={num_modes!r} is out of range: the paper uses 2, 3 or 5 modes")
        return cls(PAPER_MODES[num_modes], shots, queries, noise)

    @property
    def num_modes(self) -> int:
        return len(self.modes)

    def function(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """The noiseless y of each task at x of shape (tasks, n, 1)."""
        view = lambda t: t.view(-1, 1, 1).nan_to_num()  # noqa: E731
        a, b, c = view(params["a"]), view(params["b"]), view(params["c"])
        y = torch.zeros(x.shape, dtype=x.dtype)
        for index, name in enumerate(self.modes):
            y = torch.where(view(params["mode"]) == index, family_values(name, x, a, b, c), y)
        return y

    def sample(self, meta_batch: int, generator: torch.Generator | None = None, return_params: bool = False):
        check_int("meta_batch", meta_batch, 1)
        mode = _balanced_modes(meta_batch, self.num_modes, generator)

        a, b, c = (torch.full((meta_batch,), math.nan) for _ in range(3))
        for index, name in enumerate(self.modes):
            chosen = mode == index
            ranges = FAMILIES[name][1]
            for key, value in (("a", a), ("b", b), ("c", c)):
                if key in ranges:
                    low, high = ranges[key]
                    value[chosen] = low + (high - low) * torch.rand(int(chosen.sum()), generator=generator)
            if name == "quadratic":  # a magnitude with a random sign
                sign = torch.randint(2, (int(chosen.sum()),), generator=generator) * 2.0 - 1.0
                a[chosen] = a[chosen] * sign

        params = {"mode": mode, "a": a, "b": b, "c": c}
        lo, hi = self.x_range
        points = self.shots + self.queries
        x = lo + (hi - lo) * torch.rand(meta_batch, points, 1, generator=generator)
        y = self.function(x, params) + self.noise * torch.randn(meta_batch, points, 1, generator=generator)
        batch = TaskBatch(x[:, :self.shots], y[:, :self.shots], x[:, self.shots:], y[:, self.shots:], mode=mode)
        return (batch, params) if return_params else batch


# Image modes: each a fixed transformation of the images of a base sampler (intensities in [0, 1]).
IMAGE_MODES = {
    "original": lambda x: x,
    "inverted": lambda x: 1.0 - x,  # white strokes on black: the first layer's useful filters change sign
}


class ImageModes:
    """Few-shot image tasks of several modes, each mode a fixed transformation of the images of one
    base sampler (e.g. :class:`mlcourse.tasks.Omniglot`): ``"original"`` and ``"inverted"`` (1 - x).

    The MMAML paper's image modes are five datasets (Omniglot, miniImageNet, FC100, CUB, Aircraft),
    which this course does not hold; a transformed Omniglot keeps the tasks' difficulty equal across
    modes and makes the modes differ only in how the pixels must be read. ``batch.mode`` says which
    transformation each task received; the modes of a meta-batch are balanced as in
    :class:`Multimodal`.
    """

    def __init__(self, base, modes=("original", "inverted")):
        modes = (modes,) if isinstance(modes, str) else tuple(modes)
        for name in modes:
            if name not in IMAGE_MODES:
                raise ValueError(f"image mode {name!r} is unknown: allowed {', '.join(IMAGE_MODES)}")
        if not modes or len(set(modes)) != len(modes):
            raise ValueError(f"modes={modes} must name each of {', '.join(IMAGE_MODES)} at most once, and one at least")
        self.base, self.modes = base, modes

    @property
    def num_modes(self) -> int:
        return len(self.modes)

    def sample(self, meta_batch: int, generator: torch.Generator | None = None) -> TaskBatch:
        batch = self.base.sample(meta_batch, generator)
        mode = _balanced_modes(meta_batch, self.num_modes, generator)
        support_x, query_x = batch.support_x.clone(), batch.query_x.clone()
        for index, name in enumerate(self.modes):
            chosen = mode == index
            support_x[chosen] = IMAGE_MODES[name](support_x[chosen])
            query_x[chosen] = IMAGE_MODES[name](query_x[chosen])
        return TaskBatch(support_x, batch.support_y, query_x, batch.query_y, mode=mode)


def _balanced_modes(meta_batch: int, modes: int, generator) -> torch.Tensor:
    """``meta_batch // modes`` tasks of each mode, the rest at random, shuffled."""
    balanced = torch.arange(meta_batch) % modes
    extra = torch.randint(modes, (meta_batch,), generator=generator)
    mode = torch.where(torch.arange(meta_batch) < meta_batch - meta_batch % modes, balanced, extra)
    return mode[torch.randperm(meta_batch, generator=generator)]
