"""Ambiguous regression: half the tasks are sinusoids and half are lines (PLATIPUS, Finn et al. 2018, sec. 6).

From a few noisy points a sinusoid and a line can both fit, so a good few-shot learner should
answer with several hypotheses, some of each kind.
"""
from __future__ import annotations

import math

import torch

from .base import TaskBatch, check_int
from .sinusoid import Sinusoid

SINUSOID, LINE = 0, 1


class SinusoidOrLine:
    """Tasks y = A sin(x - b) (A ~ U[0.1, 5], b ~ U[0, pi], as :class:`Sinusoid`) or y = a x + c
    (a, c ~ U[-3, 3]), each with probability 1/2, observed with Gaussian noise of standard deviation
    ``noise_std``; x ~ U[-5, 5], and the support points from ``support_range`` (narrower makes the
    task more ambiguous). The paper mixes sinusoids and lines observed with noise; the ranges of
    slope and intercept, the noise level and the support range here are ours.

    ``sample(meta_batch, generator, return_params=True)`` also returns a dict with ``kind`` (0 for a
    sinusoid, 1 for a line) and the parameters (amplitude, phase, slope, intercept; the ones a task
    does not use are NaN), for plotting the true functions with :meth:`function`.
    """

    slope_range = (-3.0, 3.0)
    intercept_range = (-3.0, 3.0)
    x_range = Sinusoid.x_range

    def __init__(self, shots: int = 5, queries: int = 10, noise_std: float = 0.3,
                 support_range: tuple[float, float] | None = None):
        self.shots = check_int("shots", shots, 1)
        self.queries = check_int("queries", queries, 1)
        if not (isinstance(noise_std, (int, float)) and 0 <= noise_std < math.inf):
            raise ValueError(f"noise_std={noise_std!r} is out of range: allowed a finite number >= 0")
        self.noise_std = float(noise_std)
        lo, hi = self.x_range
        support_range = (lo, hi) if support_range is None else tuple(support_range)
        if not (len(support_range) == 2 and lo <= support_range[0] < support_range[1] <= hi):
            raise ValueError(f"support_range={support_range!r} is out of range: allowed (a, b) with "
                             f"{lo} <= a < b <= {hi}")
        self.support_range = support_range

    @staticmethod
    def function(x: torch.Tensor, params: dict) -> torch.Tensor:
        """The noiseless y of each task at x of shape (tasks, n, 1)."""
        view = lambda t: t.view(-1, 1, 1)  # noqa: E731
        sine = view(params["amplitude"].nan_to_num()) * torch.sin(x - view(params["phase"].nan_to_num()))
        line = view(params["slope"].nan_to_num()) * x + view(params["intercept"].nan_to_num())
        return torch.where(view(params["kind"]) == SINUSOID, sine, line)

    @staticmethod
    def closest_kind(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Which family fits each curve better, by least squares: 0 a sinusoid, 1 a line.

        x and y are (curves, n, 1) or (curves, n). Both families are linear in their coefficients:
        a line is a x + c, and A sin(x - b) = (A cos b) sin x - (A sin b) cos x; each is fitted by
        ``torch.linalg.lstsq`` and the smaller residual wins. (A sinusoid's family has no
        intercept, a line's no curvature, so neither contains the other.)"""
        x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
        ones = torch.ones_like(x)
        residuals = []
        for basis in ((torch.sin(x), torch.cos(x)), (x, ones)):
            design = torch.stack(basis, dim=-1)                        # (curves, n, 2)
            coef = torch.linalg.lstsq(design, y.unsqueeze(-1)).solution
            residuals.append(((design @ coef).squeeze(-1) - y).pow(2).mean(-1))
        return (residuals[1] < residuals[0]).long()

    def sample(self, meta_batch: int, generator: torch.Generator | None = None, return_params: bool = False):
        check_int("meta_batch", meta_batch, 1)

        def uniform(bounds, *shape):
            return bounds[0] + (bounds[1] - bounds[0]) * torch.rand(*shape, generator=generator)

        kind = (torch.rand(meta_batch, generator=generator) < 0.5).long()  # 1: a line
        is_line = kind == LINE
        nan = torch.full((meta_batch,), math.nan)
        params = {"kind": kind,
                  "amplitude": torch.where(is_line, nan, uniform(Sinusoid.amplitude_range, meta_batch)),
                  "phase": torch.where(is_line, nan, uniform(Sinusoid.phase_range, meta_batch)),
                  "slope": torch.where(is_line, uniform(self.slope_range, meta_batch), nan),
                  "intercept": torch.where(is_line, uniform(self.intercept_range, meta_batch), nan)}
        x = torch.cat([uniform(self.support_range, meta_batch, self.shots, 1),
                       uniform(self.x_range, meta_batch, self.queries, 1)], dim=1)
        y = self.function(x, params) + self.noise_std * torch.randn(x.shape, generator=generator)
        k = self.shots
        batch = TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])
        return (batch, params) if return_params else batch
