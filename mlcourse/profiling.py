"""Time and peak memory of one meta-iteration (forward, meta-gradient, no optimiser step).

Each measurement runs in a fresh subprocess so that peak memory is that of the meta-iteration
alone: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU (Linux) the rise of the process's
peak resident set size (VmHWM) over its size after a warm-up run, or after building the model
and batch (``baseline``).
The CPU figure counts only memory the allocator newly takes from the system, so it is a lower
bound that is most telling when it grows (with inner steps, with second order). The inputs
are random tensors of the benchmark's shapes: cost does not depend on their values.
"""
from __future__ import annotations

import multiprocessing as mp
import queue
import statistics
import time
import warnings

import torch

from .tasks.base import TaskBatch
from .utils import check_int

SINUSOID_SPEC = dict(model="mlp", meta_batch=25, shots=10, queries=10)
OMNIGLOT_SPEC = dict(model="convnet", meta_batch=32, ways=5, shots=1, queries=15)
BENCHMARK_OF_MODEL = {"mlp": "sinusoid", "convnet": "omniglot"}
SPEC_SIZES = ("algorithm", "model", "benchmark", "meta_batch", "shots", "queries", "ways", "threads", "baseline",
              "task_workers")
# reference computations of MAML's meta-gradient outside the package's paths (``spec["baseline"]``)
BASELINES = ("plain_loop", "higher_loop", "meta_loss_autograd")


def build(spec: dict, device):
    """An algorithm from the recipe table and a random ``TaskBatch`` on ``device`` (see ``measure``)."""
    from .recipes import build_algorithm

    if spec.get("model") not in BENCHMARK_OF_MODEL:
        raise ValueError(f"model={spec.get('model')!r} is unknown: allowed {', '.join(BENCHMARK_OF_MODEL)}")
    # a regression row other than the sinusoid's (multimodal-N) names its benchmark
    benchmark = spec.get("benchmark") or BENCHMARK_OF_MODEL[spec["model"]]
    t, k, q = spec["meta_batch"], spec["shots"], spec["queries"]
    if spec["model"] == "mlp":
        modes = int(benchmark.rpartition("-")[2]) if benchmark.startswith("multimodal-") else 1
        batch = TaskBatch(torch.rand(t, k, 1), torch.rand(t, k, 1), torch.rand(t, q, 1), torch.rand(t, q, 1),
                          mode=torch.arange(t) % modes)
    else:
        n = spec["ways"]
        labels = lambda m: torch.arange(n).repeat_interleave(m).repeat(t, 1)  # noqa: E731
        batch = TaskBatch(torch.rand(t, n * k, 1, 28, 28), labels(k), torch.rand(t, n * q, 1, 28, 28), labels(q))
    torch.manual_seed(0)
    overrides = {key: value for key, value in spec.items() if key not in SPEC_SIZES}
    alg = build_algorithm(spec.get("algorithm", "maml"), benchmark, spec.get("ways"), **overrides)
    alg, batch = alg.to(device), batch.to(device)
    baseline = spec.get("baseline")
    if baseline is None:
        return alg, batch
    if baseline not in BASELINES:
        raise ValueError(f"baseline={baseline!r} is unknown: allowed {', '.join(BASELINES)}")
    return {"plain_loop": PlainLoop, "higher_loop": HigherLoop, "meta_loss_autograd": MetaLossAutograd}[baseline](alg), batch


class PlainLoop:
    """MAML's meta-gradient by a plain per-task loop: ``torch.autograd.grad`` for the inner steps on
    ``functional_call`` of the model (its own modules: batch norm from primitive ops), one ``backward``
    of the mean query loss. No package path: the reference the benchmarks compare against."""

    def __init__(self, alg):
        self.model, self.loss_fn = alg.model, alg.loss_fn
        self.inner_lr, self.inner_steps, self.first_order = alg.inner_lr, alg.inner_steps, alg.first_order

    def meta_gradient(self, batch):
        from torch.func import functional_call

        names = [k for k, p in self.model.named_parameters() if p.requires_grad]
        theta = [p for p in self.model.parameters() if p.requires_grad]
        losses = []
        for sx, sy, qx, qy in zip(*batch):
            phi = list(theta)
            for _ in range(self.inner_steps):
                loss = self.loss_fn(functional_call(self.model, dict(zip(names, phi)), (sx,)), sy)
                grads = torch.autograd.grad(loss, phi, create_graph=not self.first_order)
                phi = [p - self.inner_lr * g for p, g in zip(phi, grads)]
            losses.append(self.loss_fn(functional_call(self.model, dict(zip(names, phi)), (qx,)), qy))
        loss = torch.stack(losses).mean()
        return loss.detach(), dict(zip(names, torch.autograd.grad(loss, theta)))


class HigherLoop(PlainLoop):
    """The same per-task loop written with the ``higher`` library (``innerloop_ctx``; a backward per task),
    as MAML implementations commonly are. Needs ``pip install higher`` (not a dependency of the package)."""

    def meta_gradient(self, batch):
        import higher

        theta = [p for p in self.model.parameters() if p.requires_grad]
        inner_opt = torch.optim.SGD(theta, lr=self.inner_lr)
        total, n = 0.0, batch.num_tasks
        for sx, sy, qx, qy in zip(*batch):
            with higher.innerloop_ctx(self.model, inner_opt, copy_initial_weights=False,
                                      track_higher_grads=not self.first_order) as (fmodel, diffopt):
                for _ in range(self.inner_steps):
                    diffopt.step(self.loss_fn(fmodel(sx), sy))
                loss = self.loss_fn(fmodel(qx), qy) / n
                loss.backward()
                total += loss.detach()
        return total, {k: p.grad for k, p in self.model.named_parameters() if p.requires_grad}


class MetaLossAutograd:
    """The algorithm's ``meta_loss`` and autograd (the contract's default ``meta_gradient``): MAML's path
    before the per-task and folded meta-gradients (on the MLP with vmap: the package's earlier default)."""

    def __init__(self, alg):
        self.alg, self.model = alg, alg.model

    def meta_gradient(self, batch):
        from .algorithms.base import MetaLearner

        return MetaLearner.meta_gradient(self.alg, batch)


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


def _worker(builder, spec, device_name, repeats, baseline, queue):
    try:
        torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
        from .fastpath import set_task_workers

        set_task_workers(spec.get("task_workers", 1))
        device = torch.device(device_name)
        alg, batch = builder(spec, device)
        cuda = device.type == "cuda"
        warnings.simplefilter("ignore")  # a profile times the work; CG's accuracy warnings are not its business

        def start_peak():
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
                return torch.cuda.memory_allocated(device)
            return _reset_peak_rss()

        base = start_peak() if baseline == "before_warmup" else None
        times = []
        for i in range(repeats + 1):  # the first run warms up (caches, allocator) and is not timed
            alg.model.zero_grad(set_to_none=True)
            if i == 1 and base is None:
                base = start_peak()
            tic = time.perf_counter()
            alg.meta_gradient(batch)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - tic)
        peak = (torch.cuda.max_memory_allocated(device) if cuda else _status_kib("VmHWM") * 1024) - base
        queue.put({"seconds": statistics.median(times[1:]), "peak_bytes": int(peak),
                   "memory_kind": "CUDA max_memory_allocated" if cuda else "peak RSS increase"})
    except Exception as err:  # report instead of hanging the parent
        queue.put({"error": f"{type(err).__name__}: {err}"})


def _interleaved_worker(builder, specs, device_name, repeats, queue):
    try:
        from .fastpath import set_task_workers

        device = torch.device(device_name)
        warnings.simplefilter("ignore")
        built = [builder(spec, device) for spec in specs]
        times = [[] for _ in specs]
        for i in range(repeats + 1):  # round 0 warms every path up
            for j, (spec, (alg, batch)) in enumerate(zip(specs, built)):
                torch.set_num_threads(spec.get("threads", _DEFAULT_THREADS))
                set_task_workers(spec.get("task_workers", 1))
                alg.model.zero_grad(set_to_none=True)
                tic = time.perf_counter()
                alg.meta_gradient(batch)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i:
                    times[j].append(time.perf_counter() - tic)
        queue.put([{"seconds": statistics.median(t), "min_seconds": min(t)} for t in times])
    except Exception as err:  # report instead of hanging the parent
        queue.put({"error": f"{type(err).__name__}: {err}"})


_DEFAULT_THREADS = torch.get_num_threads()


def _in_worker(target, args: tuple, what):
    """Run ``target(*args, results)`` in a spawned process and return what it puts on ``results``."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, results))
    proc.start()
    while True:  # poll, so that a worker killed from outside (no result sent) raises instead of hanging
        try:
            result = results.get(timeout=1.0)
            break
        except queue.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"measuring {what}: the worker process ended without a result "
                                   f"(exit code {proc.exitcode})") from None
    proc.join()
    return result


def count_flops(spec: dict, device=None) -> int:
    """Floating-point operations of one meta-gradient for ``spec`` (as in :func:`measure`), counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions, forward and
    backward): unlike a time, the same on every machine and under any load."""
    from torch.utils.flop_counter import FlopCounterMode

    from .utils import default_device

    device = torch.device(device) if device is not None else default_device()
    algorithm, batch = build(dict(spec), device)
    with FlopCounterMode(display=False) as counter:
        algorithm.meta_gradient(batch)
    return counter.get_total_flops()


def measure_interleaved(specs: list, device=None, repeats: int = 5, builder=build) -> list:
    """Median and minimum seconds of one meta-iteration for each of ``specs``, timed in turns in one fresh
    process (spec 1, spec 2, ..., spec 1, ...) after a warm-up round: on a machine shared with other jobs,
    the paths see the same load, so their ratios hold where separate runs would not. No memory figure."""
    from .utils import default_device

    check_int("repeats", repeats, 1)
    device = torch.device(device) if device is not None else default_device()
    result = _in_worker(_interleaved_worker, (builder, [dict(s) for s in specs], str(device), repeats), specs)
    if isinstance(result, dict):
        raise RuntimeError(f"measuring {specs} failed: {result['error']}")
    return [{**spec, "device": str(device), **r} for spec, r in zip(specs, result)]


def measure(spec: dict, device=None, repeats: int = 5, baseline: str = "after_warmup", builder=build) -> dict:
    """Median seconds and peak bytes of one meta-iteration for ``spec``.

    ``spec`` keys: model ("mlp": the sinusoid row, or "convnet": the Omniglot row; with
    ``benchmark`` a regression row of another benchmark, e.g. "multimodal-5"), meta_batch,
    shots, queries, ways (convnet), algorithm (a method of :data:`mlcourse.recipes.RECIPES`;
    default "maml"), threads (optional), task_workers (optional: :func:`mlcourse.fastpath.set_task_workers`
    in the measuring process), baseline (optional, MAML rows: one of :data:`BASELINES`, a reference
    computation instead of the package's: :class:`PlainLoop`, :class:`HigherLoop`, :class:`MetaLossAutograd`);
    every other key overrides one of the row's hyperparameters (e.g. inner_steps, inner_lr, first_order,
    vectorise, lam, cg_steps).

    ``baseline``: the peak is measured from just after a warm-up run ("after_warmup": memory the
    allocator keeps from the warm-up is not counted again) or from just after building the model
    and batch ("before_warmup": on the CPU a run's freed memory often stays with the allocator,
    so this counts a whole meta-iteration's memory once). ``builder(spec, device)`` returns
    ``(algorithm, batch)``; it must be a module-level function (it runs in a spawned process).
    """
    from .utils import default_device

    if baseline not in ("after_warmup", "before_warmup"):
        raise ValueError(f"baseline={baseline!r} is unknown: allowed 'after_warmup' or 'before_warmup'")
    check_int("repeats", repeats, 1)
    device = torch.device(device) if device is not None else default_device()
    result = _in_worker(_worker, (builder, dict(spec), str(device), repeats, baseline), spec)
    if "error" in result:
        raise RuntimeError(f"measuring {spec} failed: {result['error']}")
    return {**spec, "device": str(device), **result}
