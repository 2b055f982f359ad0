"""Benchmark one MAML meta-iteration: the package's vmap path against a plain per-task loop.

For the sinusoid MLP (1-40-40-1; meta-batch 25, K=10, 10 queries) and the Omniglot conv net
(meta-batch 32, 5-way 1-shot, 15 queries), second and first order, it times one meta-iteration
(forward + meta-gradient, no optimiser step) with ``vectorise=True`` (``torch.func.vmap`` over
tasks) and ``vectorise=False`` (a Python loop over tasks with ``torch.autograd.grad``), and with the
default ``vectorise="auto"`` (what ``MAML`` does unless told: the loop for conv nets on the
CPU, vmap otherwise). Every row
is measured by :func:`mlcourse.profiling.measure`, in its own fresh subprocess.

    python benchmarks/maml_step.py [--repeats N] [--device cpu|cuda] [--json out.json]

``--repeats`` overrides both defaults (20 meta-iterations for the MLP, 3 for the conv net);
``--mlp-repeats`` / ``--conv-repeats`` set them separately. ``--threads`` sets the number of
intra-op threads of the measuring processes (default: torch's default). The header shows the
1-minute load average before and after the run: on a shared machine, figures taken under load
are unreliable (see benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mlcourse.profiling import OMNIGLOT_SPEC, SINUSOID_SPEC, measure  # noqa: E402
from mlcourse.utils import default_device  # noqa: E402

CASES = (("sinusoid MLP", SINUSOID_SPEC, "mlp"), ("Omniglot conv net", OMNIGLOT_SPEC, "conv"))
ORDERS = (("second", False), ("first", True))
PATHS = (("vmap", True), ("loop", False), ("auto", "auto"))  # auto: what MAML picks by default
DEFAULT_REPEATS = {"mlp": 20, "conv": 3}


def run(device: str, repeats: dict, threads: int | None = None, log=print) -> list[dict]:
    """Measure every (case, order, path) row; add to each the loop/vmap ratio of its pair."""
    rows = []
    for case, base_spec, key in CASES:
        for order, first_order in ORDERS:
            pair = {}
            for path, vectorise in PATHS:
                spec = dict(base_spec, first_order=first_order, vectorise=vectorise)
                if threads is not None:
                    spec["threads"] = threads
                tic = time.perf_counter()
                result = measure(spec, device, repeats[key])
                log(f"  measured {case}, {order} order, {path}: {result['seconds'] * 1e3:.2f} ms "
                    f"({time.perf_counter() - tic:.1f} s wall)", file=sys.stderr)
                pair[path] = {"case": case, "order": order, "path": path, "repeats": repeats[key], **result}
            ratio = pair["loop"]["seconds"] / pair["vmap"]["seconds"]
            for row in pair.values():
                row["loop_over_vmap"] = ratio
                row["loop_over_auto"] = pair["loop"]["seconds"] / pair["auto"]["seconds"]
                rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = f"{'model':<18} {'order':<7} {'path':<5} {'repeats':>7} {'median s/iter':>14} {'loop/path':>10} {'peak MB':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r['loop_over_vmap']:.2f}x" if r["path"] == "vmap" else (
            f"{r['loop_over_auto']:.2f}x" if r["path"] == "auto" else "")
        lines.append(f"{r['case']:<18} {r['order']:<7} {r['path']:<5} {r['repeats']:>7} {r['seconds']:>14.4f} "
                     f"{ratio:>10} {r['peak_bytes'] / 2**20:>9.1f}")
    return "\n".join(lines)


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


def environment(device: str, threads: int | None) -> dict:
    env = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
           "threads": threads if threads is not None else torch.get_num_threads(),
           "cpu": _cpu_name(), "cpu_count": os.cpu_count()}
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
    parser.add_argument("--json", type=Path, default=None, help="also write all rows to this JSON file")
    args = parser.parse_args(argv)

    device = args.device or default_device().type
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    repeats = {k: (args.repeats if args.repeats is not None else v) for k, v in DEFAULT_REPEATS.items()}
    if args.mlp_repeats is not None:
        repeats["mlp"] = args.mlp_repeats
    if args.conv_repeats is not None:
        repeats["conv"] = args.conv_repeats
    if min(repeats.values()) < 1:
        parser.error("repeats must be at least 1")

    env = environment(device, args.threads)
    env["load_before"] = _load()
    tic = time.perf_counter()
    rows = run(device, repeats, args.threads)
    env["total_seconds"] = round(time.perf_counter() - tic, 1)
    env["load_after"] = _load()

    memory_kind = rows[0]["memory_kind"]
    print(f"device: {env['device']}{' (' + env['gpu'] + ')' if 'gpu' in env else ''}   torch {env['torch']}   "
          f"threads: {env['threads']}   cpu: {env['cpu']} x{env['cpu_count']}   "
          f"1-min load avg before/after: {env['load_before']}/{env['load_after']}")
    print("one meta-iteration = forward + meta-gradient, 1 inner step; "
          f"median over repeats after one warm-up; peak memory = {memory_kind}")
    print(table(rows))
    print(f"total run time: {env['total_seconds']:.1f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
