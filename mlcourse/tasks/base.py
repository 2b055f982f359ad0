"""Episodes: the `TaskBatch` every sampler returns, and argument checks shared by samplers."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class TaskBatch:
    """A meta-batch of few-shot tasks; dimension 0 indexes the tasks.

    For N-way K-shot classification with Q queries per class:
    ``support_x`` is (tasks, N*K, *x_shape), ``support_y`` is (tasks, N*K) of int64 labels in
    0..N-1, ``query_x`` is (tasks, N*Q, *x_shape), ``query_y`` is (tasks, N*Q).
    For regression, ``*_y`` carry a trailing feature dimension, e.g. (tasks, K, 1).
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def to(self, device) -> "TaskBatch":
        return TaskBatch(*(getattr(self, f.name).to(device) for f in fields(self)))

    def task(self, i: int) -> "TaskBatch":
        """Task ``i`` alone, keeping a leading task dimension of size 1."""
        return TaskBatch(*(getattr(self, f.name)[i : i + 1] for f in fields(self)))

    def __iter__(self):
        # Allows ``support_x, support_y, query_x, query_y = batch``.
        return iter(getattr(self, f.name) for f in fields(self))


def check_int(name: str, value, low: int, high: int | None = None, why: str = "") -> int:
    """Return ``value`` as an int, or raise ValueError naming it and the allowed range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in {low}..{high}"
        extra = f" ({why})" if why else ""
        raise ValueError(f"{name}={value} is out of range: allowed {allowed}{extra}")
    return value


def check_positive(name: str, value) -> float:
    """Return ``value`` as a float, or raise ValueError if it is not a finite number > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not (v > 0) or v == float("inf"):
        raise ValueError(f"{name}={value!r} is out of range: allowed a finite number > 0")
    return v


class SharedTail:
    """Wrap a sampler so that every task's query set is its support set.

    The Reptile paper's "shared-tail" first-order MAML: the outer gradient is taken on data the
    inner loop has already fitted, against the usual "separate-tail" with fresh query examples.
    """

    def __init__(self, sampler):
        self.sampler = sampler

    def sample(self, meta_batch: int, generator=None) -> TaskBatch:
        batch = self.sampler.sample(meta_batch, generator=generator)
        return TaskBatch(batch.support_x, batch.support_y, batch.support_x, batch.support_y)
