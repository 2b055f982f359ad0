"""Faster forwards for the package's two standard networks, and tasks run in parallel threads.

:func:`mlcourse.functional.forward` runs any model through ``torch.func.functional_call``. For the
conv net and the MLP of :mod:`mlcourse.nn` this module has explicit functional forwards that compute
the same function from a parameter dict, without touching the module:

* :func:`convnet_forward` (used by ``forward`` for every :class:`~mlcourse.nn.ConvNet` built from
  ``Conv2d``, :class:`~mlcourse.nn.BatchNorm`, ``ReLU``, ``MaxPool2d`` and ``FiLM``, with no module
  hooks registered: hooks need ``functional_call``). Outside the
  ``torch.func`` transforms it normalises with PyTorch's fused batch norm (``F.batch_norm`` with the
  batch's statistics): three operations forward and back instead of about twenty, and an analytic
  double backward, exact outside ``vmap`` (inside ``vmap`` it is not: functorch issue 534, so
  inside a transform it runs :class:`~mlcourse.nn.BatchNorm`'s own formula, op for op). On the
  2-core CPU this makes the conv net's per-task loop about 1.2-1.4x faster (benchmarks/README.md).
  Because it never swaps the module's parameters, as ``functional_call`` does, it may run in
  several threads at once.
* :func:`batched_forward`: the MLP run on many tasks at once, each with its own weights
  (parameters with a leading task dimension), as one ``torch.baddbmm`` per layer. MAML's
  vectorised meta-gradient folds the tasks into this batch dimension, so autograd sees one
  small graph instead of ``vmap``'s batched one.

Task threads (:func:`set_task_workers`, :func:`task_workers`): ``n`` worker threads, each with one
intra-op thread (set while they run; the caller's thread count is restored after), share out the
tasks of a meta-batch: MAML's per-task meta-gradients, Reptile's and iMAML's per-task loops. On a
2-core CPU two such workers keep both cores busy with whole tasks, where two intra-op threads split
each small operation in two and wait for each other. It is opt-in (default 1: no threads), used
only for models whose forward is thread-safe (:func:`is_pure`); results are summed in task order,
so a run is repeatable for a given setting.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from .nn import MLP, BatchNorm, ConvNet, FiLM

Params = Dict[str, torch.Tensor]

_CONVNET_LAYERS = (nn.Conv2d, BatchNorm, nn.ReLU, nn.MaxPool2d, FiLM)


def _transforms_active() -> bool:
    return torch._C._are_functorch_transforms_active()


def _has_hooks(model: nn.Module) -> bool:
    # an explicit forward would skip module hooks (K-FAC's curvature records layer inputs by them)
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _is_convnet(model: nn.Module) -> bool:
    if type(model) is not ConvNet or _has_hooks(model):
        return False
    for m in model.features:
        if type(m) not in _CONVNET_LAYERS:
            return False
        if type(m) is nn.Conv2d and m.padding_mode != "zeros":
            return False
        if type(m) is nn.ReLU and m.inplace:
            return False
        if type(m) is nn.MaxPool2d and m.return_indices:
            return False
    return model.head is None or type(model.head) is nn.Linear


def _is_plain_mlp(model: nn.Module) -> bool:
    return type(model) is MLP and all(type(m) in (nn.Linear, nn.ReLU) and not getattr(m, "inplace", False)
                                      for m in model)


def is_pure(model: nn.Module) -> bool:
    """True if :func:`mlcourse.functional.forward` runs ``model`` by an explicit function of the parameter
    dict (never changing the module), so that several threads may run it at once."""
    return _is_convnet(model)


def batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Batch normalisation with the batch's statistics over all but dim 1, as :class:`mlcourse.nn.BatchNorm`.

    Outside ``torch.func`` transforms: PyTorch's fused kernel (biased variance, no running statistics),
    whose first and second derivatives are analytic. Inside one: the primitive formula, op for op the
    module's (``F.batch_norm``'s double backward under ``vmap`` is inexact)."""
    if not _transforms_active():
        return F.batch_norm(x, None, None, weight, bias, training=True, momentum=0.0, eps=eps)
    dims = [0] + list(range(2, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    shape = [1, -1] + [1] * (x.dim() - 2)
    return (x - mean) * torch.rsqrt(var + eps) * weight.view(shape) + bias.view(shape)


def convnet_forward(model: ConvNet, params: Params, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` with the tensors of ``params`` in place of the module's (those it lacks: the module's
    own, as ``functional_call(..., strict=False)`` does); the function :meth:`ConvNet.forward` computes."""
    def get(name: str, own: torch.Tensor | None) -> torch.Tensor | None:
        return params.get(name, own)

    h = x
    for i, m in enumerate(model.features):
        prefix = f"features.{i}."
        kind = type(m)
        if kind is nn.Conv2d:
            h = F.conv2d(h, get(prefix + "weight", m.weight), get(prefix + "bias", m.bias), m.stride, m.padding,
                         m.dilation, m.groups)
        elif kind is BatchNorm:
            h = batch_norm(h, get(prefix + "weight", m.weight), get(prefix + "bias", m.bias), m.eps)
        elif kind is FiLM:
            shape = [-1] + [1] * (h.dim() - 2)
            h = h * get(prefix + "gamma", m.gamma).view(shape) + get(prefix + "beta", m.beta).view(shape)
        elif kind is nn.ReLU:
            h = F.relu(h)
        else:
            h = F.max_pool2d(h, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    h = h.mean(dim=(-2, -1))
    if model.head is None:
        return h
    return F.linear(h, get("head.weight", model.head.weight), get("head.bias", model.head.bias))


def pure_forward(model: nn.Module) -> Callable | None:
    """The explicit forward :func:`mlcourse.functional.forward` uses for ``model``, or None."""
    return convnet_forward if _is_convnet(model) else None


# ---------------------------------------------------------------------------------------------
# Tasks folded into the batch dimension: parameters with a leading task dimension

def has_batched_forward(model: nn.Module) -> bool:
    """True if :func:`batched_forward` can run ``model`` (the plain ReLU MLP of :mod:`mlcourse.nn`)."""
    return _is_plain_mlp(model)


def batched_forward(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """The outputs of ``T`` copies of ``model``, task i run with ``{k: params[k][i]}`` on ``x[i]``.

    ``params[k]`` has shape ``[T, *shape_k]`` and ``x`` shape ``[T, N, in]``; returns ``[T, N, out]``.
    Each linear layer is one ``baddbmm``: y_i = b_i + x_i W_i^T."""
    if not has_batched_forward(model):
        raise TypeError(f"batched_forward runs mlcourse.nn.MLP of Linear and ReLU layers, got {type(model).__name__}")
    h = x
    for i, m in enumerate(model):
        if type(m) is nn.Linear:
            h = torch.baddbmm(params[f"{i}.bias"].unsqueeze(1), h, params[f"{i}.weight"].transpose(1, 2))
        else:
            h = F.relu(h)
    return h


def per_task(params: Params, tasks: int) -> Params:
    """Every tensor repeated along a new leading task dimension (a copy: ``bmm`` is slow on a stride-0 batch);
    gradients flow back to ``params`` summed over the tasks."""
    return {k: v.unsqueeze(0).repeat(tasks, *([1] * v.dim())) for k, v in params.items()}


# ---------------------------------------------------------------------------------------------
# Task threads

_settings = threading.local()
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def get_task_workers() -> int:
    """The number of task threads in effect in this thread (1: tasks run one after another)."""
    return getattr(_settings, "workers", 1)


def set_task_workers(workers: int) -> None:
    """Run the tasks of a meta-batch in ``workers`` threads of one intra-op thread each (1: off).

    A setting of the calling thread; on a machine of ``c`` cores, ``workers = c`` with torch's
    default ``c`` intra-op threads uses the same cores. See the module docstring."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r} is out of range: allowed an integer >= 1 (1: no task threads)")
    _settings.workers = workers


@contextmanager
def task_workers(workers: int):
    """``with task_workers(2): ...``: :func:`set_task_workers` inside the block, the previous value after."""
    before = get_task_workers()
    set_task_workers(workers)
    try:
        yield
    finally:
        set_task_workers(before)


def workers_for(model: nn.Module) -> int:
    """The task threads to use for ``model``: the setting if its forward is thread-safe, else 1."""
    workers = get_task_workers()
    return workers if workers > 1 and is_pure(model) else 1


def _one_thread():
    torch.set_num_threads(1)  # where the setting is per thread (OpenMP's), the worker's own


def _pool(workers: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="mlcourse-task",
                                                 initializer=_one_thread)
        return _pools[workers]


def run_tasks(job: Callable[[int], object], tasks: int, workers: int = 1) -> List[object]:
    """``[job(0), ..., job(tasks - 1)]``, in ``workers`` threads when ``workers > 1`` (each thread takes
    every ``workers``-th task; the caller's grad mode holds in the threads)."""
    if workers <= 1 or tasks <= 1:
        return [job(i) for i in range(tasks)]
    grad_enabled = torch.is_grad_enabled()

    def share(start: int):
        with torch.set_grad_enabled(grad_enabled):
            return [(i, job(i)) for i in range(start, tasks, workers)]

    out: list = [None] * tasks
    caller_threads = torch.get_num_threads()
    # torch's thread count is process-wide in some builds (MKL's always is): one intra-op thread while the
    # workers run, the caller's count restored after
    torch.set_num_threads(1)
    try:
        for part in _pool(workers).map(share, range(min(workers, tasks))):
            for i, result in part:
                out[i] = result
    finally:
        torch.set_num_threads(caller_threads)
    return out
