"""One prepared run for a machine with a GPU: correctness, vmap against the loop, a short training.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--iterations 500] [--parts 1,2,3]

1. Every method of the recipe table (the Omniglot 5-way row, and the sinusoid row where there is
   one): the meta-gradient on CUDA against the CPU's, both in float64 on the same batch from the
   same initialisation; it prints the largest relative difference and fails above 1e-6.
2. The Omniglot conv net (5-way 1-shot, 15 queries, second order), meta-batch 8 and 32: one
   meta-iteration with vmap over tasks and with the per-task loop, time and peak memory
   (``mlcourse.profiling.measure``, each in a fresh process).
3. One short MAML Omniglot 5-way 1-shot run at the default budget's settings on CUDA
   (``--iterations``, default 500), its test accuracy on 600 tasks and its wall time.

It prints a Markdown section to paste into benchmarks/README.md (the GPU named) and, with
``--out``, writes the figures as JSON. ``--dry-run`` runs every part on the CPU with tiny sizes,
so that the script can be checked on a machine without a GPU (part 1 then compares the CPU with
itself); its figures mean nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import warnings  # noqa: E402

from mlcourse import recipes  # noqa: E402
from mlcourse.implicit import CGNotConvergedWarning  # noqa: E402
from mlcourse.profiling import OMNIGLOT_SPEC, measure  # noqa: E402
from mlcourse.tasks import Sinusoid, TaskBatch  # noqa: E402

TOLERANCE = 1e-6


def random_omniglot_batch(tasks: int, ways: int = 5, shots: int = 1, queries: int = 3, seed: int = 0):
    """Images of the right shape and labels in 0..ways-1 (part 1 compares devices, not accuracy)."""
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(tasks, ways * shots, 1, 28, 28, generator=g)
    qx = torch.rand(tasks, ways * queries, 1, 28, 28, generator=g)
    labels = lambda n: torch.arange(ways).repeat_interleave(n).expand(tasks, -1).contiguous()  # noqa: E731
    return TaskBatch(sx, labels(shots), qx, labels(queries))


def meta_gradient_on(method: str, benchmark: str, batch: TaskBatch, device: str):
    ways = None if benchmark in recipes.REGRESSION else 5
    torch.manual_seed(0)  # the same initialisation on both devices
    algorithm = recipes.build_algorithm(method, benchmark, ways, seed=0)
    algorithm.model.double()
    for p in algorithm.parameters():  # what an algorithm meta-learns besides the model, too
        p.data = p.data.double()
    algorithm.to(device)
    batch = TaskBatch(*(t.double() if t.is_floating_point() else t for t in batch), mode=batch.mode).to(device)
    loss, grads = algorithm.meta_gradient(batch)
    return loss.double().cpu(), {k: g.double().cpu() for k, g in grads.items()}


def max_relative_difference(reference: dict, other: dict, negligible: float = 1e-6) -> float:
    """The largest ||other_k - reference_k|| / ||reference_k|| over the parameters k; for a parameter whose
    gradient is negligible (below ``negligible`` times the whole gradient's norm) the difference is taken
    relative to the whole gradient's norm instead. Some gradients are zero in exact arithmetic (a
    convolution's bias just before batch norm; a key's bias before a softmax), so each device returns its
    own rounding noise there, and Reptile's inner Adam divides that noise by its own square root: a
    plain ratio of the two noises reads about 1 even between two CPU runs whose inputs differ by 1e-14."""
    total = torch.sqrt(sum(g.pow(2).sum() for g in reference.values())).clamp_min(1e-300)
    scale = lambda g: g.norm() if g.norm() >= negligible * total else total  # noqa: E731
    return max(((other[k] - g).norm() / scale(g)).item() for k, g in reference.items())


def check_devices(device: str, log) -> list[dict]:
    rows = []
    sinusoid = Sinusoid(10, 10).sample(4, torch.Generator().manual_seed(0))
    for (method, benchmark, ways), row in recipes.RECIPES.items():
        if ways not in (None, 5):
            continue
        if benchmark == "sinusoid":
            batch = sinusoid
        elif benchmark in recipes.REGRESSION:  # multimodal-N: four tasks of its families
            batch = recipes.test_sampler(benchmark, None, 5).sample(4, torch.Generator().manual_seed(0))
        else:
            batch = random_omniglot_batch(2, shots=row.train_shots or 1)
        _, cpu = meta_gradient_on(method, benchmark, batch, "cpu")
        _, other = meta_gradient_on(method, benchmark, batch, device)
        worst = max_relative_difference(cpu, other)
        rows.append({"method": method, "benchmark": benchmark, "max_relative_difference": worst,
                     "ok": worst <= TOLERANCE})
        log(f"  {method:10s} {benchmark:9s} max relative difference {worst:.2e}")
    return rows


def vmap_against_loop(device: str, meta_batches, repeats: int, log) -> list[dict]:
    rows = []
    for meta_batch in meta_batches:
        # "plain loop": a per-task autograd loop outside the package's paths (mlcourse.profiling.PlainLoop)
        for path, extra in (("vmap", dict(vectorise=True)), ("loop", dict(vectorise=False)),
                            ("plain loop", dict(baseline="plain_loop"))):
            spec = dict(OMNIGLOT_SPEC, meta_batch=meta_batch, **extra)
            result = measure(spec, device, repeats)
            rows.append({"meta_batch": meta_batch, "path": path, "seconds": result["seconds"],
                         "peak_bytes": result["peak_bytes"], "memory_kind": result["memory_kind"]})
            log(f"  meta-batch {meta_batch} {path}: {1e3 * result['seconds']:.1f} ms, "
                f"{result['peak_bytes'] / 2**20:.0f} MB")
    return rows


def short_run(device: str, iterations: int, eval_tasks: int, log) -> dict:
    tic = time.perf_counter()
    run = recipes.run("maml", "omniglot", 5, 1, "default", device=device, iterations=iterations,
                      eval_tasks=eval_tasks, progress=False)
    seconds = time.perf_counter() - tic
    r = run["result"]
    log(f"  MAML 5-way 1-shot, {iterations} iterations: {100 * r['mean']:.2f} +- {100 * r['ci95']:.2f}% "
        f"in {seconds:.0f} s")
    return {"iterations": iterations, "meta_batch": run["meta_batch"], "mean": 100 * r["mean"],
            "ci95": 100 * r["ci95"], "seconds": seconds, "train_seconds": run["history"]["seconds"]}


def markdown(report: dict) -> str:
    lines = [f"### GPU check: {report['device_name']} (torch {report['torch']})"]
    if "devices" in report:
        lines += ["", "| method | benchmark | max relative difference, CUDA vs CPU (float64) |", "|---|---|---:|"]
        lines += [f"| {r['method']} | {r['benchmark']} | {r['max_relative_difference']:.1e} |"
                  for r in report["devices"]]
    if "vmap_vs_loop" in report:
        lines += ["", "| conv net, 5-way 1-shot, 15 queries | path | ms per meta-iteration | peak MB |",
                  "|---|---|---:|---:|"]
        lines += [f"| meta-batch {r['meta_batch']} | {r['path']} | {1e3 * r['seconds']:.1f} | "
                  f"{r['peak_bytes'] / 2**20:.0f} |" for r in report["vmap_vs_loop"]]
    if "short_run" in report:
        s = report["short_run"]
        lines += ["", f"MAML Omniglot 5-way 1-shot, {s['iterations']} iterations of {s['meta_batch']} tasks: "
                  f"{s['mean']:.2f} +- {s['ci95']:.2f}% in {s['seconds']:.0f} s."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("--iterations", type=int, default=500, help="meta-iterations of the short run")
    parser.add_argument("--dry-run", action="store_true", help="everything on the CPU, tiny sizes")
    parser.add_argument("--parts", default="1,2,3",
                        help="which parts to run, e.g. 2,3 (the timings alone, on an otherwise idle GPU)")
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error(f"--iterations={args.iterations} is out of range: allowed >= 1")
    parts = set(args.parts.replace(" ", "").split(","))
    if not parts or not parts <= {"1", "2", "3"}:
        parser.error(f"--parts={args.parts!r} is out of range: allowed a comma-separated subset of 1,2,3")
    log = lambda *a, **k: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    # iMAML's 5-step CG on a fresh conv net stops above its tolerance: expected, not news here
    warnings.simplefilter("ignore", CGNotConvergedWarning)
    if args.dry_run:
        device, meta_batches, repeats, iterations, eval_tasks = "cpu", (2,), 1, 2, 10
    elif not torch.cuda.is_available():
        print("error: no CUDA device here; run with --dry-run to check the script on a CPU", file=sys.stderr)
        return 2
    else:
        device, meta_batches, repeats, iterations, eval_tasks = "cuda", (8, 32), 5, args.iterations, 600
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run: figures mean nothing)"
    report = {"device_name": name, "torch": torch.__version__}
    if "1" in parts:
        log("1. meta-gradients, CUDA against CPU" if device == "cuda" else "1. meta-gradients (dry run)")
        report["devices"] = check_devices(device, log)
    if "2" in parts:
        log("2. vmap against the loop")
        report["vmap_vs_loop"] = vmap_against_loop(device, meta_batches, repeats, log)
    if "3" in parts:
        log("3. a short Omniglot run")
        report["short_run"] = short_run(device, iterations, eval_tasks, log)
    print(markdown(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    bad = [r for r in report.get("devices", []) if not r["ok"]]
    if bad:
        print(f"error: meta-gradients differ between devices: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
