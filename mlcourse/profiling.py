"""Time and peak memory of one meta-iteration (forward, meta-gradient, no optimiser step).

Each measurement runs in a fresh subprocess so that peak memory is that of the meta-iteration
alone: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU (Linux) the rise of the process's
peak resident set size (VmHWM, reset after a warm-up run) over its size before the timed runs.
The CPU figure counts only memory the allocator newly takes from the system, so it is a lower
bound that is most telling when it grows (with inner steps, with second order). The inputs
are random tensors of the benchmark's shapes: cost does not depend on their values.
"""
from __future__ import annotations

import multiprocessing as mp
import statistics
import time

import torch
import torch.nn.functional as F

from .tasks.base import TaskBatch

SINUSOID_SPEC = dict(model="mlp", meta_batch=25, shots=10, queries=10)
OMNIGLOT_SPEC = dict(model="convnet", meta_batch=32, ways=5, shots=1, queries=15)


def build(spec: dict, device):
    """An algorithm and a random ``TaskBatch`` on ``device`` from a spec dict (see ``measure``)."""
    from .algorithms import MAML
    from .nn import MLP, ConvNet

    torch.manual_seed(0)
    t = spec["meta_batch"]
    if spec["model"] == "mlp":
        model, loss = MLP([1, 40, 40, 1]), F.mse_loss
        k, q = spec["shots"], spec["queries"]
        batch = TaskBatch(torch.rand(t, k, 1), torch.rand(t, k, 1), torch.rand(t, q, 1), torch.rand(t, q, 1))
        lr = 0.01
    else:
        n, k, q = spec["ways"], spec["shots"], spec["queries"]
        model, loss = ConvNet(n), F.cross_entropy
        labels = lambda m: torch.arange(n).repeat_interleave(m).repeat(t, 1)  # noqa: E731
        batch = TaskBatch(torch.rand(t, n * k, 1, 28, 28), labels(k), torch.rand(t, n * q, 1, 28, 28), labels(q))
        lr = 0.4
    name = spec.get("algorithm", "maml")
    if name == "maml":
        alg = MAML(model.to(device), loss, inner_lr=lr, inner_steps=spec.get("inner_steps", 1),
                   first_order=spec.get("first_order", False), vectorise=spec.get("vectorise", True))
    elif name == "reptile":
        from .algorithms import Reptile

        # The Reptile paper's inner loop: Adam (beta1 = 0) over the whole support set here.
        alg = Reptile(model.to(device), loss, inner_lr=1e-3, inner_steps=spec.get("inner_steps", 1),
                      inner_optimizer="adam", vectorise=spec.get("vectorise", True))
    else:
        raise ValueError(f"algorithm {name!r} is unknown: allowed 'maml' or 'reptile'")
    return alg, batch.to(device)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset the kernel's high-water mark of resident memory (Linux); return the current size."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS") * 1024


def _worker(spec, device_name, repeats, queue):
    try:
        torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
        device = torch.device(device_name)
        alg, batch = build(spec, device)
        cuda = device.type == "cuda"
        times = []
        for i in range(repeats + 1):  # the first run warms up (caches, allocator) and is not counted
            alg.model.zero_grad(set_to_none=True)
            if i == 1:
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                else:
                    base = _reset_peak_rss()
            tic = time.perf_counter()
            if callable(getattr(alg, "meta_gradient", None)):
                alg.meta_gradient(batch)  # Reptile: no backward pass at all
            else:
                alg.meta_loss(batch).backward()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - tic)
        peak = (torch.cuda.max_memory_allocated(device) if cuda else _status_kib("VmHWM") * 1024) - base
        queue.put({"seconds": statistics.median(times[1:]), "peak_bytes": int(peak),
                   "memory_kind": "CUDA max_memory_allocated" if cuda else "peak RSS increase"})
    except Exception as err:  # report instead of hanging the parent
        queue.put({"error": f"{type(err).__name__}: {err}"})


def measure(spec: dict, device=None, repeats: int = 5) -> dict:
    """Median seconds and peak bytes of one meta-iteration for ``spec``.

    ``spec`` keys: model ("mlp" or "convnet"), meta_batch, shots, queries, ways (convnet),
    algorithm ("maml", the default, or "reptile"), inner_steps, first_order, vectorise (True, the default: the vmap path; False; or "auto"),
    threads (optional).
    """
    from .utils import default_device

    device = torch.device(device) if device is not None else default_device()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(dict(spec), str(device), repeats, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise RuntimeError(f"measuring {spec} failed: {result['error']}")
    return {**spec, "device": str(device), **result}
