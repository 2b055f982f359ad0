"""Linear regression tasks: the proximal-regression experiments of chapter 5 (iMAML, Figure 2a)."""
from __future__ import annotations

import math

import torch

from .base import TaskBatch
from ..utils import check_int


class LinearRegression:
    """Tasks y = x^T w + eps with w ~ N(0, I), x ~ N(0, diag(scales)^2), eps ~ N(0, noise^2).

    ``sample(meta_batch, generator)`` returns a :class:`TaskBatch` with ``shots`` support and
    ``queries`` query points per task: x of shape (meta_batch, points, dim), y of shape
    (meta_batch, points, 1), in ``dtype``. ``sample(..., return_params=True)`` also returns the
    task weights w, (meta_batch, dim, 1). The draws come from ``generator`` in a fixed order
    (w, support x, query x, support noise, query noise), so a seeded generator gives the same
    tasks on every machine.

    ``scales`` (one positive number per input dimension, default all ones) stretches the
    inputs: badly scaled features make the support loss ill-conditioned, so that gradient
    descent converges slowly (chapter 5, section 5.5).
    """

    def __init__(self, dim: int, shots: int, queries: int, noise: float = 0.1, scales=None,
                 dtype: torch.dtype = torch.float64):
        self.dim = check_int("dim", dim, 1)
        self.shots = check_int("shots", shots, 1)
        self.queries = check_int("queries", queries, 1)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)):
            raise TypeError(f"noise must be a number, got {noise!r}")
        if not (math.isfinite(noise) and noise >= 0):
            raise ValueError(f"noise={noise!r} is out of range: allowed a finite number >= 0 "
                             "(the standard deviation of the label noise)")
        self.noise = noise
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype={dtype!r} is not allowed: allowed a floating-point torch.dtype "
                             "(torch.float32 or torch.float64)")
        self.dtype = dtype
        if scales is None:
            self.scales = torch.ones(self.dim, dtype=dtype)
        else:
            scales = torch.as_tensor(scales).to(dtype)
            if scales.shape != (self.dim,):
                raise ValueError(f"scales has shape {tuple(scales.shape)}: allowed ({self.dim},), one "
                                 f"scale per input dimension (dim={self.dim})")
            if not (torch.isfinite(scales).all() and (scales > 0).all()):
                raise ValueError(f"scales={scales.tolist()} is out of range: allowed finite numbers > 0")
            self.scales = scales

    def sample(self, meta_batch: int, generator: torch.Generator | None = None, return_params: bool = False):
        check_int("meta_batch", meta_batch, 1)
        t, d, dtype = meta_batch, self.dim, self.dtype
        w = torch.randn(t, d, 1, generator=generator, dtype=dtype)
        support_x = torch.randn(t, self.shots, d, generator=generator, dtype=dtype) * self.scales
        query_x = torch.randn(t, self.queries, d, generator=generator, dtype=dtype) * self.scales
        support_noise = self.noise * torch.randn(t, self.shots, 1, generator=generator, dtype=dtype)
        query_noise = self.noise * torch.randn(t, self.queries, 1, generator=generator, dtype=dtype)
        batch = TaskBatch(support_x, support_x @ w + support_noise, query_x, query_x @ w + query_noise)
        return (batch, w) if return_params else batch
