"""Command line: ``python -m mlcourse reproduce|compare|download|budgets|grade|student-copy``.

    python -m mlcourse reproduce maml omniglot --ways 5 --shots 1 --budget paper --out result.json
    python -m mlcourse reproduce fomaml sinusoid --shots 10
    python -m mlcourse reproduce maml omniglot --iterations 5000 --checkpoint runs/maml.pt
    python -m mlcourse reproduce maml omniglot --iterations 7000 --checkpoint runs/maml.pt --outer-lr-decay 5000:0.1
    python -m mlcourse compare --budget default --methods maml,protonet --benchmarks omniglot
    python -m mlcourse download omniglot --root ~/data
    python -m mlcourse grade notebooks/02_maml.ipynb

Every argument is checked, and the output file's folder made, before the first meta-iteration.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from . import grading
from .budget import BUDGETS, Budget, get_budget
from .recipes import BENCHMARKS, METHODS, REGRESSION, run
from .train import check_outer_lr_decay
from .utils import default_device

# test-time steps scored besides each row's own: the sinusoid after 1 and 10 steps (the MAML paper's
# figure); multimodal regression right after modulation (0 steps), as the MMAML paper's table
_EVAL_STEPS = {"sinusoid": (1, 10)}


def _check_writable(out: str) -> Path:
    """Make the output's folder and prove it can be written now, not after hours of training."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"--out {out} is a folder: give a file name, e.g. {path / 'result.json'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"--out {out} cannot be written ({err.strerror}): choose another path") from None
    return path


def _decay_step(text: str) -> tuple:
    """``--outer-lr-decay`` entry ``ITERATION:FACTOR`` as ``(int, float)``, checked."""
    at, sep, factor = text.partition(":")
    try:
        step = (int(at), float(factor))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not ITERATION:FACTOR (e.g. 20000:0.1)") from None
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not ITERATION:FACTOR (e.g. 20000:0.1)")
    try:
        check_outer_lr_decay([step])
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return step


def _minutes(text: str) -> float:
    """``--time-limit`` in minutes, a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes (e.g. 50)") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: allowed a finite number of minutes >= 0")
    return value


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return (f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, "
            f"{threads} thread{'s' if threads != 1 else ''}")


def _processes() -> int:
    from .distributed import world

    return world()[1]


def eval_steps(benchmark: str) -> tuple:
    """Test-time steps scored besides the row's own (see ``_EVAL_STEPS``)."""
    return _EVAL_STEPS.get(benchmark, (0,) if benchmark in REGRESSION else ())


def run_record(method: str, benchmark: str, ways: int | None, shots: int, budget, *, command: str, seed: int = 0,
               device=None, root=None, protocol: str = "maml", checkpoint=None, checkpoint_every: int = 100,
               restart: bool = False, iterations: int | None = None, meta_batch: int | None = None,
               select: str = "last", progress: bool = True, outer_lr_decay=(),
               time_limit: float | None = None) -> tuple[dict, dict]:
    """Train and score one recipe row (:func:`mlcourse.recipes.run`); return the record that
    ``reproduce`` writes (``compare`` adds its columns to the same record) and ``run``'s result
    (the algorithm, its samplers, history). ``select`` is the command line's spelling ("last" or
    "best-val"); ``command`` is recorded as given."""
    from . import __version__

    budget = get_budget(budget) if not isinstance(budget, Budget) else budget
    device = torch.device(device) if device is not None else default_device()
    tic = time.perf_counter()
    ways = None if benchmark in REGRESSION else ways
    result = run(method, benchmark, ways, shots, budget, seed=seed, device=device, root=root, protocol=protocol,
                 checkpoint=checkpoint, checkpoint_every=checkpoint_every, restart=restart,
                 eval_steps=eval_steps(benchmark), iterations=iterations, meta_batch=meta_batch,
                 select=select.replace("-", "_"), progress=progress, outer_lr_decay=outer_lr_decay,
                 time_limit=time_limit)
    history = result["history"]
    record = {"algorithm": method, "benchmark": benchmark, "shots": shots,
              "budget": budget.as_dict(), "seed": seed, "device": str(device), "hardware": _hardware(device),
              "torch": torch.__version__, "python": platform.python_version(), "mlcourse": __version__,
              "command": command, "settings": result["settings"],
              "iterations": len(history["loss"]), "meta_batch": result["meta_batch"],
              "checkpoint": None if checkpoint is None else str(checkpoint), "select": select,
              "selected_iteration": history.get("selected_iteration", len(history["loss"])),
              "selected_val": history.get("selected_val"), "processes": _processes()}
    if history.get("stopped_at_time_limit"):  # only then, so that other records keep their fields
        record["stopped_at_time_limit"] = history["stopped_at_time_limit"]
    r = result["result"]
    if benchmark == "omniglot":
        record.update(ways=ways, protocol=protocol, metric="accuracy_percent", mean=100 * r["mean"],
                      ci95=100 * r["ci95"], test_tasks=r["num_tasks"], published=result["published"])
    else:
        record.update(metric="mse", mean=r["mean"], ci95=r["ci95"],  # after the row's own test-time steps
                      results={str(k): {"mean": v["mean"], "ci95": v["ci95"]}
                                              for k, v in result["results"].items()},
                      test_tasks=r["num_tasks"], published=None)
    record["final_meta_loss"] = history["loss"][-1] if history["loss"] else None
    record["train_seconds"] = history["seconds"]
    record["seconds"] = time.perf_counter() - tic
    return record, result


def _reproduce(args) -> dict:
    budget = get_budget(args.budget)
    device = torch.device(args.device) if args.device else default_device()
    out = _check_writable(args.out) if args.out else None
    record, _ = run_record(args.algorithm, args.benchmark, args.ways, args.shots, budget,
                           command="python -m mlcourse " + shlex.join(args.argv), seed=args.seed, device=device,
                           root=args.data_root, protocol=args.protocol, checkpoint=args.checkpoint,
                           checkpoint_every=args.checkpoint_every, restart=args.force_restart,
                           iterations=args.iterations, meta_batch=args.meta_batch, select=args.select,
                           outer_lr_decay=args.outer_lr_decay,
                           time_limit=None if args.time_limit is None else 60 * args.time_limit)
    if record.get("stopped_at_time_limit"):
        total = f"{args.iterations:,}" if args.iterations else "the budget's"
        print(f"stopped at the time limit after meta-iteration {record['stopped_at_time_limit']:,} of {total}; "
              "the result is of that iteration"
              + ("; run the same command again to continue" if args.checkpoint else ""), file=sys.stderr)
    if out is not None:
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}", file=sys.stderr)
    return record


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mlcourse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("reproduce", help="train and evaluate one method on one benchmark; write JSON")
    rep.add_argument("algorithm", choices=METHODS, help="a method of the recipe table (mlcourse/recipes.py)")
    rep.add_argument("benchmark", choices=BENCHMARKS)
    rep.add_argument("--ways", type=int, default=5)
    rep.add_argument("--shots", type=int, default=None, help="K (default: 1 for omniglot, 10 for sinusoid, 5 for multimodal-N)")
    rep.add_argument("--budget", default=None, help=f"one of {', '.join(BUDGETS)} (default: $MLCOURSE_BUDGET or default)")
    rep.add_argument("--iterations", type=int, default=None, help="meta-iterations (default: the budget's)")
    rep.add_argument("--meta-batch", type=int, default=None, help="tasks per meta-iteration (default: the recipe's)")
    rep.add_argument("--seed", type=int, default=0)
    rep.add_argument("--device", default=None, help="e.g. cuda or cpu (default: cuda when available)")
    rep.add_argument("--data-root", default=None, help="folder holding omniglot/ (default: $MLCOURSE_DATA)")
    rep.add_argument("--protocol", default="maml", choices=("maml", "lake"))
    rep.add_argument("--checkpoint", default=None,
                     help="save here periodically, and resume from it if it exists (same settings only)")
    rep.add_argument("--checkpoint-every", type=int, default=100, help="meta-iterations between checkpoints")
    rep.add_argument("--force-restart", action="store_true",
                     help="delete the --checkpoint file (and its backup) and start over")
    rep.add_argument("--nproc", type=int, default=1,
                     help="processes that share each meta-batch (torch.distributed: gloo on CPUs, NCCL "
                          "with one GPU each); started through torchrun")
    rep.add_argument("--select", default="last", choices=("last", "best-val"),
                     help="test the last iterate, or the parameters at the best validation score "
                          "(validation-based checkpoint selection; kept in the checkpoint)")
    rep.add_argument("--outer-lr-decay", nargs="+", type=_decay_step, default=(), metavar="ITERATION:FACTOR",
                     help="multiply the outer step size by FACTOR (0 < FACTOR <= 1) from ITERATION on, e.g. "
                          "20000:0.1; a checkpoint made before ITERATION resumes under it")
    rep.add_argument("--time-limit", type=_minutes, default=None, metavar="MINUTES",
                     help="stop training at the first checkpoint after MINUTES of it, then test and write --out "
                          "as usual; the same command again resumes (for sessions of fixed length)")
    rep.add_argument("--out", default=None, help="write the result as JSON here (its folder is created)")

    cmp = sub.add_parser("compare", help="every method of the recipe table on chapter 11's benchmarks; one JSON "
                                         "per row, resumable")
    cmp.add_argument("--budget", default=None,
                     help=f"one of {', '.join(BUDGETS)} (default: $MLCOURSE_BUDGET or default)")
    cmp.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                     help="only these methods of the recipe table (names separated by spaces or commas; default all)")
    cmp.add_argument("--benchmarks", nargs="+", default=None, metavar="BENCHMARK",
                     help="only these: sinusoid, omniglot, or a setting such as sinusoid_5s, omniglot_20w1s "
                          "(default all)")
    cmp.add_argument("--out", default=None, help="folder of the row JSONs (default: compare_results/<budget>)")
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--device", default=None, help="e.g. cuda or cpu (default: cuda when available)")
    cmp.add_argument("--data-root", default=None, help="folder holding omniglot/ (default: $MLCOURSE_DATA)")
    cmp.add_argument("--force", action="store_true",
                     help="compute the selected rows again even when their JSON is on disk")
    cmp.add_argument("--row-progress", action="store_true",
                     help="also show each row's training and evaluation progress bars")

    dl = sub.add_parser("download", help="download a dataset's archives into a data root")
    dl.add_argument("dataset", choices=("omniglot",))
    dl.add_argument("--root", default=None, help="data root (default: $MLCOURSE_DATA or the user cache)")

    sub.add_parser("budgets", help="print the sizes of each budget")
    grading.add_subcommands(sub)
    return parser


def _compare(args) -> int:
    """Run the comparison; print the folder's table (stdout) and a summary (stderr). Exit status 1
    when a row was left alone (other settings, unreadable) or failed, after every other row ran."""
    from . import compare

    budget = get_budget(args.budget)
    summary = compare.compare(budget, args.methods, args.benchmarks, args.out, seed=args.seed, device=args.device,
                              root=args.data_root, force=args.force, row_progress=args.row_progress,
                              command="python -m mlcourse " + shlex.join(args.argv))
    for line in compare.summary_lines(summary):
        print(line, file=sys.stderr)
    with warnings.catch_warnings(record=True) as caught:  # an unreadable row: one line, not a traceback
        warnings.simplefilter("always")
        rows = compare.load_table(summary["out"])
    for w in caught:
        if not any(f"{name}.json" in str(w.message) for name in summary["corrupt"]):  # said already
            print(f"warning: {w.message}", file=sys.stderr)
    if rows:
        print(compare.markdown_table(rows))
    return 1 if compare.needs_attention(summary) else 0


def _check_numbers(args):
    for name in ("iterations", "meta_batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')}={value} is out of range: allowed >= 1")
    if args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every={args.checkpoint_every} is out of range: allowed >= 1")
    if args.shots < 1:
        raise ValueError(f"--shots={args.shots} is out of range: allowed >= 1")
    if args.nproc < 1:
        raise ValueError(f"--nproc={args.nproc} is out of range: allowed >= 1")


def _launch(args, argv) -> int:
    """Start ``--nproc`` copies of this command through torchrun (each sees WORLD_SIZE > 1)."""
    import subprocess

    rest, skip = [], False
    for i, a in enumerate(argv):  # the same command without --nproc
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "mlcourse", *rest]
    return subprocess.call(command)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    if args.command in ("grade", "student-copy"):
        return grading.run(args)
    if args.command == "budgets":
        for b in BUDGETS.values():
            print(json.dumps(b.as_dict()))
        return 0
    try:
        if args.command == "compare":
            return _compare(args)
        if args.command == "download":
            from .tasks.omniglot import download_omniglot

            print(download_omniglot(args.root))
            return 0
        if args.shots is None:
            args.shots = {"omniglot": 1, "sinusoid": 10}.get(args.benchmark, 5)  # multimodal: the paper's K = 5
        _check_numbers(args)
        from . import distributed

        if args.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return _launch(args, argv)
        rank, _ = distributed.init_from_environment()
        if rank != 0:  # the others train their share in step; rank 0 reports
            args.out = None
        record = _reproduce(args)
        if rank != 0:
            return 0
    except (ValueError, OSError, FloatingPointError) as err:  # one line, no traceback: it says what to do
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=2))
    return 0
