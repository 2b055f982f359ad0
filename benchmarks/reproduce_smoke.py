"""Wall time of ``python -m mlcourse reproduce METHOD BENCHMARK --budget smoke`` for every row of the
recipe table (5-way rows and sinusoid), each in a fresh process, as a user would run it.

    python benchmarks/reproduce_smoke.py [--only METHOD ...]

Prints one line per row and the machine's load average before and after: figures taken on a
loaded machine are slower than the machine can do.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mlcourse.recipes import RECIPES  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="methods to time (default: all)")
    args = parser.parse_args()
    rows = [r for r in RECIPES.values() if r.ways in (None, 5) and (not args.only or r.method in args.only)]
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'method':<12}{'benchmark':<10}{'seconds':>9}  exit")
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            out = Path(tmp) / f"{row.method}-{row.benchmark}.json"
            tic = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "mlcourse", "reproduce", row.method, row.benchmark,
                                   "--budget", "smoke", "--out", str(out)], capture_output=True, text=True)
            seconds = time.perf_counter() - tic
            print(f"{row.method:<12}{row.benchmark:<10}{seconds:9.1f}  {proc.returncode}", flush=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
