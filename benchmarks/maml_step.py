"""Benchmark one MAML meta-iteration: the package's paths against a plain per-task autograd loop.

One meta-iteration = forward + meta-gradient (no optimiser step), on random inputs of the benchmark's
shapes, each row in its own fresh subprocess (:func:`mlcourse.profiling.measure`: one warm-up, then the
median of ``repeats``). Rows, side by side in one run:

* sinusoid MLP (1-40-40-1; meta-batch 25, K = 10, 10 queries), second and first order:
  ``plain loop`` (a per-task ``torch.autograd.grad`` loop, :class:`mlcourse.profiling.PlainLoop`),
  ``higher loop`` (the same with the ``higher`` library, if installed), ``vmap (before)`` (autograd of
  ``meta_loss`` under ``vmap``: the package's vectorised path before the folded one) and ``package``
  (``MAML``'s default: tasks folded into the batch dimension, ``baddbmm`` per layer);
* Omniglot conv net (5-way 1-shot), second order, meta-batch 8 and 32, 5 and 15 queries per class,
  1 and 5 inner steps (and first order at meta-batch 32, 15 queries, 1 step): ``plain loop``,
  ``package`` (``MAML``'s default on the CPU: the per-task loop with the explicit conv-net forward),
  ``package + N task threads`` (the same with :func:`mlcourse.functional.set_task_workers`);
  with ``--vmap`` also ``vmap`` (``vectorise=True``), with ``--others`` Reptile and iMAML rows.

``plain/path`` is the plain loop's median over the row's: above 1 the row is faster (MLP rows also
give ``higher/path``, the issue's reference). By default the paths
of one case are timed in turns in one fresh process (fair on a machine shared with other jobs; also
the minima are shown); ``--separate`` times each row in its own process and adds its peak memory.

    python benchmarks/maml_step.py [--device cpu] [--threads N] [--workers N] [--json out.json]
    python benchmarks/maml_step.py --growth --plot benchmarks/maml_growth.png   # cost vs meta-batch, steps

The header shows the 1-minute load average before and after the run: on a shared machine, compare
rows of one run (ratios), not runs (see benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mlcourse.profiling import OMNIGLOT_SPEC, SINUSOID_SPEC, measure, measure_interleaved  # noqa: E402
from mlcourse.utils import default_device  # noqa: E402

HAVE_HIGHER = importlib.util.find_spec("higher") is not None


def mlp_paths():
    paths = [("plain loop", dict(baseline="plain_loop"))]
    if HAVE_HIGHER:
        paths.append(("higher loop", dict(baseline="higher_loop")))
    paths += [("vmap (before)", dict(baseline="meta_loss_autograd", vectorise=True)), ("package", {})]
    return paths


def conv_paths(workers: int, vmap: bool):
    paths = [("plain loop", dict(baseline="plain_loop")), ("package", {}),
             (f"package + {workers} task threads", dict(task_workers=workers))]
    if vmap:
        paths.append(("vmap", dict(vectorise=True)))
    return paths


def headline_cases(workers: int, vmap: bool, others: bool):
    """(group label, base spec, repeats key, paths) for the default run."""
    cases = []
    for order, first_order in (("second", False), ("first", True)):
        cases.append((f"sinusoid MLP, {order} order, T=25", dict(SINUSOID_SPEC, first_order=first_order), "mlp",
                      mlp_paths()))
    for tasks in (8, 32):
        for queries in (5, 15):
            for steps in (1, 5):
                spec = dict(OMNIGLOT_SPEC, meta_batch=tasks, queries=queries, inner_steps=steps)
                cases.append((f"conv net, second order, T={tasks}, Q={queries}, k={steps}", spec, "conv",
                              conv_paths(workers, vmap and tasks == 32 and queries == 15 and steps == 1)))
    cases.append(("conv net, first order, T=32, Q=15, k=1", dict(OMNIGLOT_SPEC, first_order=True), "conv",
                  conv_paths(workers, False)))
    if others:
        # Reptile's recipe takes inner mini-batches of 10 examples: 2 shots of 5 classes
        # iMAML with Hessian products (its recipe's Gauss-Newton products use forward-mode AD: no task threads)
        for algorithm, shots, extra in (("reptile", 2, {}), ("imaml-gd", 1, {"curvature": "hessian"})):
            cases.append((f"conv net, {algorithm}, T=32, {shots}-shot", dict(OMNIGLOT_SPEC, algorithm=algorithm,
                                                                           shots=shots, **extra), "conv",
                          [("package", {}), (f"package + {workers} task threads", dict(task_workers=workers))]))
    return cases


GROWTH_TASKS = (4, 8, 16, 32)
GROWTH_STEPS = (1, 2, 3, 5)


def growth_cases(workers: int):
    cases = []
    for tasks in GROWTH_TASKS:
        cases.append((f"conv net, T={tasks}, Q=15, k=1", dict(OMNIGLOT_SPEC, meta_batch=tasks), "conv",
                      conv_paths(workers, False)))
    for steps in GROWTH_STEPS[1:]:
        cases.append((f"conv net, T=8, Q=15, k={steps}", dict(OMNIGLOT_SPEC, meta_batch=8, inner_steps=steps),
                      "conv", conv_paths(workers, False)))
    return cases


def run(cases, device: str, repeats: dict, threads: int | None = None, separate: bool = False,
        log=print) -> list[dict]:
    """Measure every row; add to each the plain loop's time over its own (``plain_over_path``, of the
    medians; ``plain_over_path_min``, of the minima). By default the paths of a case are timed in turns
    in one process (:func:`mlcourse.profiling.measure_interleaved`); ``separate``: each row in its own
    process, with its peak memory (:func:`mlcourse.profiling.measure`)."""
    rows = []
    for group, base_spec, key, paths in cases:
        specs = []
        for path, extra in paths:
            spec = dict(base_spec, **extra)
            if threads is not None and "threads" not in extra:
                spec["threads"] = threads
            specs.append(spec)
        tic = time.perf_counter()
        if separate:
            results = [measure(spec, device, repeats[key]) for spec in specs]
        else:
            results = measure_interleaved(specs, device, repeats[key])
        measured = [{"group": group, "path": path, "repeats": repeats[key], **result}
                    for (path, _), result in zip(paths, results)]
        log(f"  {group}: " + ", ".join(f"{r['path']} {r['seconds'] * 1e3:.1f} ms" for r in measured)
            + f" ({time.perf_counter() - tic:.1f} s wall)", file=sys.stderr)
        plain = next((r for r in measured if r["path"] == "plain loop"), None)
        higher = next((r for r in measured if r["path"] == "higher loop"), None)
        for r in measured:
            if higher:
                r["higher_over_path"] = higher["seconds"] / r["seconds"]
                r["higher_over_path_min"] = higher["min_seconds"] / r["min_seconds"] if "min_seconds" in r else None
            r["plain_over_path"] = plain["seconds"] / r["seconds"] if plain else None
            r["plain_over_path_min"] = (plain["min_seconds"] / r["min_seconds"]
                                        if plain and "min_seconds" in r else None)
            rows.append(r)
    return rows


def table(rows: list[dict]) -> str:
    memory = any("peak_bytes" in r for r in rows)
    head = (f"{'case':<42} {'path':<26} {'median s/iter':>13} {'min s/iter':>10} {'plain/path':>10} "
            f"{'(of minima)':>11}" + (f" {'peak MB':>8}" if memory else ""))
    lines = [head, "-" * len(head)]
    for r in rows:
        show = r["plain_over_path"] and r["path"] != "plain loop"
        ratio = f"{r['plain_over_path']:.2f}x" if show else ""
        ratio_min = f"{r['plain_over_path_min']:.2f}x" if show and r.get("plain_over_path_min") else ""
        low = f"{r['min_seconds']:.4f}" if "min_seconds" in r else ""
        peak = f"{r['peak_bytes'] / 2**20:.1f}" if "peak_bytes" in r else ""
        extra = ""
        if r.get("higher_over_path") and r["path"] not in ("plain loop", "higher loop"):
            extra = f"   higher/path {r['higher_over_path']:.1f}x" + (
                f" (of minima {r['higher_over_path_min']:.1f}x)" if r.get("higher_over_path_min") else "")
        lines.append(f"{r['group']:<42} {r['path']:<26} {r['seconds']:>13.4f} {low:>10} {ratio:>10} "
                     f"{ratio_min:>11}" + (f" {peak:>8}" if memory else "") + extra)
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, note: str = "") -> None:
    """Seconds per meta-iteration against the meta-batch (k = 1) and against the inner steps (T = 8)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    paths = list(dict.fromkeys(r["path"] for r in rows))
    for label, ax, xs, pick in (
            ("meta-batch T (Q = 15, k = 1)", axes[0], GROWTH_TASKS,
             lambda r, x: r["meta_batch"] == x and r.get("inner_steps", 1) == 1),
            ("inner steps k (T = 8, Q = 15)", axes[1], GROWTH_STEPS,
             lambda r, x: r["meta_batch"] == 8 and r.get("inner_steps", 1) == x)):
        for name in paths:
            ys = [next((r["seconds"] for r in rows if r["path"] == name and pick(r, x)), float("nan")) for x in xs]
            ax.plot(xs, ys, "o-", label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("seconds per meta-iteration")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("MAML meta-iteration, Omniglot conv net 5-way 1-shot, second order, CPU" + (f"\n{note}" if note else ""))
    fig.tight_layout()
    fig.savefig(path)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return "%.2f" % os.getloadavg()[0]
    except (AttributeError, OSError):
        return "n/a"


def environment(device: str, threads: int | None, workers: int) -> dict:
    env = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
           "threads": threads if threads is not None else torch.get_num_threads(), "task_workers": workers,
           "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "higher": HAVE_HIGHER}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed meta-iterations per row (default: 20 for the MLP, 3 for the conv net)")
    parser.add_argument("--mlp-repeats", type=int, default=None, help="repeats for the MLP rows only")
    parser.add_argument("--conv-repeats", type=int, default=None, help="repeats for the conv-net rows only")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--workers", type=int, default=2, help="task threads of the 'task threads' rows")
    parser.add_argument("--vmap", action="store_true", help="add a conv-net vmap row (slow, ~1 GB)")
    parser.add_argument("--others", action="store_true", help="add Reptile and iMAML conv-net rows")
    parser.add_argument("--growth", action="store_true", help="time the conv net against meta-batch and steps")
    parser.add_argument("--plot", type=Path, default=None, help="with --growth: write the plot here (PNG/SVG)")
    parser.add_argument("--separate", action="store_true",
                        help="time each row in its own process, with its peak memory (default: a case's paths "
                             "in turns in one process, the fair comparison on a shared machine)")
    parser.add_argument("--json", type=Path, default=None, help="also write all rows to this JSON file")
    args = parser.parse_args(argv)

    device = args.device or default_device().type
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    repeats = {"mlp": 20, "conv": 3}
    if args.repeats is not None:
        repeats = {k: args.repeats for k in repeats}
    if args.mlp_repeats is not None:
        repeats["mlp"] = args.mlp_repeats
    if args.conv_repeats is not None:
        repeats["conv"] = args.conv_repeats
    if min(repeats.values()) < 1:
        parser.error("repeats must be at least 1")
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: allowed an integer >= 1")

    env = environment(device, args.threads, args.workers)
    env["load_before"] = _load()
    tic = time.perf_counter()
    cases = growth_cases(args.workers) if args.growth else headline_cases(args.workers, args.vmap, args.others)
    rows = run(cases, device, repeats, args.threads, args.separate)
    env["total_seconds"] = round(time.perf_counter() - tic, 1)
    env["load_after"] = _load()

    print(f"device: {env['device']}{' (' + env['gpu'] + ')' if 'gpu' in env else ''}   torch {env['torch']}   "
          f"threads: {env['threads']}   cpu: {env['cpu']} x{env['cpu_count']}   "
          f"1-min load avg before/after: {env['load_before']}/{env['load_after']}")
    how = (f"each row in its own process; peak memory = {rows[0]['memory_kind']}" if args.separate else
           "a case's paths timed in turns in one process")
    print(f"one meta-iteration = forward + meta-gradient; median (and min) over {repeats['mlp']} (MLP) and "
          f"{repeats['conv']} (conv net) repeats after one "
          f"warm-up; {how}; task threads: {args.workers} x 1 intra-op thread; higher installed: {HAVE_HIGHER}")
    print(table(rows))
    print(f"total run time: {env['total_seconds']:.1f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    if args.plot is not None:
        plot(rows, args.plot, f"{env['cpu_count']} cores, {env['threads']} intra-op thread(s), median of "
                              f"{repeats['conv']}, 1-min load average {env['load_before']}/{env['load_after']}")
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
