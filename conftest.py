"""Test-suite defaults, applied before any notebook kernel starts (kernels inherit them).

* ``MLCOURSE_BUDGET`` defaults to ``smoke``: CI re-executes every notebook in seconds.
* ``MLCOURSE_DATA`` defaults to ``../shared/data`` next to the checkout when that folder exists
  (the offline copy of Omniglot on the project's machines); elsewhere the loader downloads.
* Matplotlib draws off-screen.
"""
import os
from pathlib import Path

os.environ.setdefault("MLCOURSE_BUDGET", "smoke")
os.environ.setdefault("MPLBACKEND", "Agg")
_shared = Path(__file__).resolve().parent.parent / "shared" / "data"
if "MLCOURSE_DATA" not in os.environ and (_shared / "omniglot").is_dir():
    os.environ["MLCOURSE_DATA"] = str(_shared)


def pytest_collection_modifyitems(items):
    """nbval waits a fixed 5 s for each output message of a cell that has already finished; on a
    machine shared with other jobs a message can take longer, and the cell then fails with
    "Timeout of 5 seconds exceeded waiting for output" although it ran. Wait up to a minute."""
    for item in items:
        if hasattr(item, "output_timeout"):
            item.output_timeout = 60
