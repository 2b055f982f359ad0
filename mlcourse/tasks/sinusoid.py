"""The sinusoid regression tasks of the MAML paper (section 5.1)."""
from __future__ import annotations

import math

import torch

from .base import TaskBatch, check_int


class Sinusoid:
    """Tasks y = A sin(x - b) with amplitude A ~ U[0.1, 5], phase b ~ U[0, pi], x ~ U[-5, 5].

    ``sample(meta_batch)`` returns ``shots`` support points (K) and ``queries`` query points per
    task, with x and y of shape (meta_batch, points, 1). ``sample(..., return_params=True)`` also
    returns the amplitudes and phases, for plotting the true functions.
    """

    amplitude_range = (0.1, 5.0)
    phase_range = (0.0, math.pi)
    x_range = (-5.0, 5.0)

    def __init__(self, shots: int = 10, queries: int = 10):
        self.shots = check_int("shots", shots, 1)
        self.queries = check_int("queries", queries, 1)

    @staticmethod
    def function(x: torch.Tensor, amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """A sin(x - b), broadcasting a (tasks,) amplitude and phase over x of shape (tasks, n, 1)."""
        return amplitude.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1))

    def sample(self, meta_batch: int, generator: torch.Generator | None = None, return_params: bool = False):
        check_int("meta_batch", meta_batch, 1)
        lo, hi = self.amplitude_range
        amplitude = lo + (hi - lo) * torch.rand(meta_batch, generator=generator)
        lo, hi = self.phase_range
        phase = lo + (hi - lo) * torch.rand(meta_batch, generator=generator)
        lo, hi = self.x_range
        x = lo + (hi - lo) * torch.rand(meta_batch, self.shots + self.queries, 1, generator=generator)
        y = self.function(x, amplitude, phase)
        k = self.shots
        batch = TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])
        return (batch, amplitude, phase) if return_params else batch
