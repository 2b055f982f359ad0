"""Episodes: the `TaskBatch` every sampler returns, and the episode helpers samplers share."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..utils import check_int


@dataclass
class TaskBatch:
    """A meta-batch of few-shot tasks; dimension 0 indexes the tasks.

    For N-way K-shot classification with Q queries per class:
    ``support_x`` is (tasks, N*K, *x_shape), ``support_y`` is (tasks, N*K) of int64 labels in
    0..N-1, ``query_x`` is (tasks, N*Q, *x_shape), ``query_y`` is (tasks, N*Q).
    For regression, ``*_y`` carry a trailing feature dimension, e.g. (tasks, K, 1).

    Construction checks these shapes and dtypes (TypeError or ValueError naming the field, the
    shape it has and the shape expected): ``*_x`` have at least 2 dimensions; ``*_y`` are
    (tasks, examples) integer labels or (tasks, examples, outputs) floats, both of one dtype and
    per-example shape; all four agree on the number of tasks, each x and its y on the number of
    examples, and support and query x on the per-example shape.

    ``mode`` (optional, (tasks,) int64): which family each task was drawn from, for samplers that
    mix families (:class:`mlcourse.tasks.Multimodal`). Oracles (Multi-MAML) route tasks by it and
    figures colour by it; learners that are not oracles never read it. It is not part of the
    four-tensor unpacking ``support_x, support_y, query_x, query_y = batch``.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    mode: torch.Tensor | None = None

    DATA = ("support_x", "support_y", "query_x", "query_y")

    def __post_init__(self):
        # A batch with a missing or swapped dimension would train on garbage without an error.
        for name in self.DATA:
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                kind = type(value)
                module = "" if kind.__module__ == "builtins" else kind.__module__ + "."
                raise TypeError(f"{name} must be a torch.Tensor, got {module}{kind.__qualname__}")
        if self.mode is not None and (not isinstance(self.mode, torch.Tensor) or self.mode.dtype != torch.int64
                                      or tuple(self.mode.shape) != (self.support_x.shape[0],)):
            got = tuple(self.mode.shape) if isinstance(self.mode, torch.Tensor) else type(self.mode).__name__
            raise ValueError(f"mode must be an int64 tensor of shape ({self.support_x.shape[0]},) (one id per "
                             f"task), got {got}")

        def fmt(shape) -> str:
            return str(tuple(shape))

        sx, sy, qx, qy = self.support_x, self.support_y, self.query_x, self.query_y
        for name, x in (("support_x", sx), ("query_x", qx)):
            if x.dim() < 2:
                raise ValueError(f"{name} has shape {fmt(x.shape)}; expected (tasks, examples, ...)")
        for name, y in (("support_y", sy), ("query_y", qy)):
            if y.dim() not in (2, 3):
                raise ValueError(f"{name} has shape {fmt(y.shape)}; expected (tasks, examples) integer "
                                 f"labels or (tasks, examples, outputs) floats")
            integer = not (y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool)
            if y.dim() == 2 and not integer:
                raise TypeError(f"{name} is a 2-D {y.dtype} tensor of shape {fmt(y.shape)}; expected "
                                f"integer labels (or floats of shape (tasks, examples, outputs))")
            if y.dim() == 3 and not y.dtype.is_floating_point:
                raise TypeError(f"{name} is a 3-D {y.dtype} tensor of shape {fmt(y.shape)}; expected "
                                f"floating-point targets (or integer labels of shape (tasks, examples))")
        tasks = sx.shape[0]
        for name, t in (("support_y", sy), ("query_x", qx), ("query_y", qy)):
            if t.shape[0] != tasks:
                raise ValueError(f"{name} has shape {fmt(t.shape)}; expected "
                                 f"{fmt((tasks, *t.shape[1:]))}: {tasks} tasks like support_x")
        for x_name, x, y_name, y in (("support_x", sx, "support_y", sy), ("query_x", qx, "query_y", qy)):
            if y.shape[1] != x.shape[1]:
                what = "label" if y.dim() == 2 else "target"
                raise ValueError(f"{y_name} has shape {fmt(y.shape)}; expected "
                                 f"{fmt((tasks, x.shape[1], *y.shape[2:]))}: one {what} per example "
                                 f"of {x_name} {fmt(x.shape)}")
        if qx.shape[2:] != sx.shape[2:]:
            raise ValueError(f"query_x has shape {fmt(qx.shape)}; expected "
                             f"{fmt((*qx.shape[:2], *sx.shape[2:]))}: the per-example shape of "
                             f"support_x {fmt(sx.shape)}")
        if qy.dtype != sy.dtype:
            raise TypeError(f"query_y has dtype {qy.dtype}; expected {sy.dtype} like support_y")
        if qy.shape[2:] != sy.shape[2:]:
            raise ValueError(f"query_y has shape {fmt(qy.shape)}; expected "
                             f"{fmt((*qy.shape[:2], *sy.shape[2:]))}: the outputs of support_y "
                             f"{fmt(sy.shape)}")

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def to(self, device) -> "TaskBatch":
        mode = None if self.mode is None else self.mode.to(device)
        return TaskBatch(*(t.to(device) for t in self), mode=mode)

    def select(self, index) -> "TaskBatch":
        """The tasks at ``index`` (a slice, an index tensor or a boolean mask), with their modes."""
        mode = None if self.mode is None else self.mode[index]
        return TaskBatch(*(t[index] for t in self), mode=mode)

    def task(self, i: int) -> "TaskBatch":
        """Task ``i`` alone, keeping a leading task dimension of size 1."""
        return self.select(slice(i, i + 1))

    def __iter__(self):
        # Allows ``support_x, support_y, query_x, query_y = batch`` (the mode is not unpacked).
        return iter(getattr(self, name) for name in self.DATA)


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
