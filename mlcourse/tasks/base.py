"""Episodes: the `TaskBatch` every sampler returns, and the episode helpers samplers share."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..utils import check_int


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


def check_episode(ways, shots, queries, num_classes: int, per_class: int, split: str, unit: str = "drawings"):
    """Raise ValueError unless an episode of this shape can be drawn from the split."""
    check_int("ways", ways, 1, num_classes, why=f"classes in the {split!r} split")
    check_int("shots", shots, 1, per_class - 1, why=f"{per_class} {unit} per class, and queries need some")
    check_int("queries", queries, 1, per_class - 1, why=f"{per_class} {unit} per class, and shots need some")
    if shots + queries > per_class:
        raise ValueError(
            f"shots+queries={shots + queries} (shots={shots}, queries={queries}) is out of range: "
            f"allowed in 2..{per_class} ({unit} per class)"
        )


def episode_indices(num_classes: int, per_class: int, ways: int, n_draw: int, meta_batch: int,
                     generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random classes (T, ways), distinct per task, and drawings (T, ways, n_draw), distinct per class.

    A random permutation per row is the argsort of uniforms: vectorised over tasks and classes.
    """
    classes = torch.rand(meta_batch, num_classes, generator=generator).argsort(dim=1)[:, :ways]
    draws = torch.rand(meta_batch, ways, per_class, generator=generator).argsort(dim=2)[..., :n_draw]
    return classes, draws


def episodes_from(x: torch.Tensor, ways: int, shots: int, queries: int) -> TaskBatch:
    """(T, ways, shots+queries, *x_shape) uint8 -> TaskBatch of float32 in [0, 1], class-major."""
    meta_batch, x_shape = x.shape[0], x.shape[3:]
    x = x.float().div_(255.0)
    support_x = x[:, :, :shots].reshape(meta_batch, ways * shots, *x_shape)
    query_x = x[:, :, shots:].reshape(meta_batch, ways * queries, *x_shape)
    labels = torch.arange(ways)
    support_y = labels.repeat_interleave(shots).expand(meta_batch, -1).clone()
    query_y = labels.repeat_interleave(queries).expand(meta_batch, -1).clone()
    return TaskBatch(support_x.contiguous(), support_y, query_x.contiguous(), query_y)


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
