"""Command line: ``python -m mlcourse reproduce|download|budgets``.

    python -m mlcourse reproduce maml omniglot --ways 5 --shots 1 --budget paper --out result.json
    python -m mlcourse reproduce fomaml sinusoid --shots 10
    python -m mlcourse download omniglot --root ~/data
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from .budget import BUDGETS, get_budget
from .recipes import ALGORITHMS, omniglot_run, sinusoid_run
from .utils import default_device


def _reproduce(args) -> dict:
    budget = get_budget(args.budget)
    device = torch.device(args.device) if args.device else default_device()
    tic = time.perf_counter()
    record = {"algorithm": args.algorithm, "benchmark": args.benchmark, "shots": args.shots,
              "budget": budget.as_dict(), "seed": args.seed, "device": str(device),
              "torch": torch.__version__, "python": platform.python_version()}
    if args.benchmark == "omniglot":
        run = omniglot_run(args.algorithm, args.ways, args.shots, budget, seed=args.seed, device=device,
                           root=args.data_root, protocol=args.protocol, checkpoint=args.checkpoint)
        r = run["result"]
        record.update(ways=args.ways, protocol=args.protocol, metric="accuracy_percent",
                      mean=100 * r["mean"], ci95=100 * r["ci95"], test_tasks=r["num_tasks"],
                      published=run["published"])
    else:
        run = sinusoid_run(args.algorithm, args.shots, budget, seed=args.seed, device=device,
                           checkpoint=args.checkpoint)
        record.update(metric="mse", results={str(k): {"mean": v["mean"], "ci95": v["ci95"]}
                                              for k, v in run["results"].items()},
                      test_tasks=budget.eval_tasks, published=None)
    record["iterations"] = len(run["history"]["loss"])
    record["final_meta_loss"] = run["history"]["loss"][-1] if run["history"]["loss"] else None
    record["seconds"] = time.perf_counter() - tic
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlcourse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("reproduce", help="train and evaluate one algorithm on one benchmark; write JSON")
    rep.add_argument("algorithm", choices=ALGORITHMS)
    rep.add_argument("benchmark", choices=("omniglot", "sinusoid"))
    rep.add_argument("--ways", type=int, default=5)
    rep.add_argument("--shots", type=int, default=None, help="K (default: 1 for omniglot, 10 for sinusoid)")
    rep.add_argument("--budget", default=None, help=f"one of {', '.join(BUDGETS)} (default: $MLCOURSE_BUDGET or default)")
    rep.add_argument("--seed", type=int, default=0)
    rep.add_argument("--device", default=None, help="e.g. cuda or cpu (default: cuda when available)")
    rep.add_argument("--data-root", default=None, help="folder holding omniglot/ (default: $MLCOURSE_DATA)")
    rep.add_argument("--protocol", default="maml", choices=("maml", "lake"))
    rep.add_argument("--checkpoint", default=None, help="save here periodically, and resume from it if it exists")
    rep.add_argument("--out", default=None, help="write the result as JSON here (default: print it)")

    dl = sub.add_parser("download", help="download a dataset's archives into a data root")
    dl.add_argument("dataset", choices=("omniglot",))
    dl.add_argument("--root", default=None, help="data root (default: $MLCOURSE_DATA or the user cache)")

    sub.add_parser("budgets", help="print the sizes of each budget")

    args = parser.parse_args(argv)
    if args.command == "budgets":
        for b in BUDGETS.values():
            print(json.dumps(b.as_dict()))
        return 0
    if args.command == "download":
        from .tasks.omniglot import download_omniglot

        print(download_omniglot(args.root))
        return 0
    if args.shots is None:
        args.shots = 1 if args.benchmark == "omniglot" else 10
    try:
        record = _reproduce(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(record, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
        print(f"wrote {args.out}")
    print(text)
    return 0
