"""A meta-batch split over processes with ``torch.distributed`` (gloo on CPUs, NCCL on GPUs).

Every process draws the *same* meta-batch (the task generator is seeded alike everywhere),
keeps its own contiguous share of the tasks, computes the mean meta-gradient over them, and the
processes then all-reduce: the sum over ranks of ``share size x local mean`` divided by the
meta-batch is the mean over all tasks, the single process's meta-gradient up to the order of
floating-point additions. Every rank then takes the same outer step, so the parameters stay
equal without a broadcast. ``python -m mlcourse reproduce ... --nproc N`` starts N processes
through ``torch.distributed.run`` (torchrun); only rank 0 writes checkpoints, progress and
results.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .tasks.base import TaskBatch


def world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` when no process group is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_environment() -> tuple[int, int]:
    """Join the process group that torchrun describes in the environment (``WORLD_SIZE`` > 1):
    NCCL with one GPU per local rank when CUDA is there, else gloo. Returns ``(rank, world)``."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return world()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return world()


def share(batch: TaskBatch, rank: int, size: int) -> TaskBatch:
    """This rank's contiguous share of the tasks (shares differ in size by at most one)."""
    n = batch.num_tasks
    if n < size:
        raise ValueError(f"meta_batch={n} is smaller than the number of processes ({size}): "
                         f"allowed meta_batch >= {size}")
    start, stop = rank * n // size, (rank + 1) * n // size
    return batch.select(slice(start, stop))


def average(loss: torch.Tensor, grads: dict, local_tasks: int, total_tasks: int):
    """The mean over all ranks' tasks of the loss and of each gradient, from each rank's mean."""
    weight = local_tasks / total_tasks
    names = list(grads)
    flat = torch.cat([loss.detach().reshape(1)] + [grads[k].detach().reshape(-1) for k in names]) * weight
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, offset = {}, 1
    for k in names:
        n = grads[k].numel()
        out[k] = flat[offset:offset + n].view_as(grads[k])
        offset += n
    return flat[0], out


def any_rank(flag: bool, device) -> bool:
    """True on every rank if ``flag`` is true on any (so that all ranks stop at the same iteration)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
