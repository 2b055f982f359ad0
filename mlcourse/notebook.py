"""What the first cell of every chapter does once ``mlcourse`` can be imported.

The cell itself (``notebooks/_setup_cell.py``, pasted into each chapter) installs the package from
the book's repository when it is missing, as in a fresh Colab runtime, then calls :func:`setup`:

>>> budget, device = setup(data=("omniglot",))          # doctest: +SKIP
budget: default   device: cuda   torch 2.5.1+cu121

Nothing here reads ``_config.yml`` at run time: :data:`REPOSITORY_URL` is a copy of its
``repository: url:`` that a test keeps equal to it.
"""
from __future__ import annotations

import sys
import time
from typing import NamedTuple

import torch

from .budget import Budget, get_budget
from .utils import default_device

#: The book's repository; the same string as ``repository: url:`` in ``_config.yml`` (tested).
REPOSITORY_URL = "https://github.com/mlcourse/mlcourse"

#: Environment variable that replaces the pip source of the setup cell (a path, a wheel, a URL).
INSTALL_SOURCE_ENV = "MLCOURSE_INSTALL_SOURCE"

#: Resolution of the figures, on screen and stored: a default 6.4-inch-wide figure is 960 px wide.
FIGURE_DPI = 150

#: The data sets that :func:`setup` can fetch ahead of the chapter's first use.
DATASETS = ("omniglot",)


class Setup(NamedTuple):
    """What :func:`setup` returns; unpacks as ``budget, device = setup()``."""

    budget: Budget
    device: torch.device


def in_colab() -> bool:
    """True inside a Google Colab runtime (its ``google.colab`` module is loaded at start)."""
    return "google.colab" in sys.modules


def setup(data=(), *, quiet: bool = False) -> Setup:
    """Prepare a chapter: sharp figures, the device, the budget and, in Colab, its data.

    ``data`` names the data sets the chapter reads (``("omniglot",)``). In Colab they are
    downloaded now with the package's own loader (archives already there are kept), so that the
    first training cell does not stall on a download; elsewhere the loaders fetch what is missing
    on first use, from ``$MLCOURSE_DATA`` or the user cache. Prints one line,
    ``budget: NAME   device: DEVICE   torch VERSION``, unless ``quiet``.
    """
    data = (data,) if isinstance(data, str) else tuple(data)
    unknown = [name for name in data if name not in DATASETS]
    if unknown:
        raise ValueError(f"unknown data set(s) {unknown}: setup() can fetch {', '.join(DATASETS)}")

    import matplotlib
    import matplotlib.pyplot  # noqa: F401  (selects the backend before the settings below)

    matplotlib.rcParams["figure.dpi"] = FIGURE_DPI
    matplotlib.rcParams["savefig.dpi"] = FIGURE_DPI

    budget = get_budget()  # $MLCOURSE_BUDGET, else "default"; an unknown name raises here
    device = default_device()
    if in_colab() and "omniglot" in data:
        from .tasks.omniglot import download_omniglot

        download_omniglot()
    if not quiet:
        print(f"budget: {budget.name}   device: {device}   torch {torch.__version__}")
    global _started, _setup
    _started, _setup = time.perf_counter(), Setup(budget, device)
    return _setup


_started: float | None = None
_setup: Setup | None = None


def finish(glue_name: str = "running_minutes") -> None:
    """Print how long the chapter ran since :func:`setup` (its last cell calls this) and glue the
    minutes under ``glue_name``, so the chapter's opening can quote the time of the stored run."""
    if _started is None:
        raise RuntimeError("finish() measures from setup(): run the chapter's first cell first")
    minutes = (time.perf_counter() - _started) / 60
    threads = torch.get_num_threads()
    print(f"this chapter ran for {minutes:.1f} min at the {_setup.budget.name} budget on {_setup.device} "
          f"({threads} thread{'s' if threads != 1 else ''})")
    try:
        from myst_nb import glue
    except ImportError:  # outside the book's environment nothing needs the glued value
        return
    # a number renders without quotes; one decimal under ten minutes, so that 1.5 min is not "1"
    glue(glue_name, round(minutes, 1) if minutes < 10 else round(minutes), display=False)


def glue(name: str, value, display: bool = False) -> None:
    """Store ``value`` under ``name`` for the chapter's prose (myst-nb's ``glue``).

    The text quotes it as ``{glue:text}`name:.1f```, so every number in the prose is one that a
    stored output computed. Outside the book's environment (Colab has no myst-nb) it does
    nothing. It returns nothing, so a cell that ends with it prints nothing either."""
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return
    # the book shows a glued value's repr: a plain str would appear in quotes
    myst_glue(name, _Text(value) if isinstance(value, str) else value, display=display)


class _Text(str):
    """A str whose repr is itself, so that glued text reads as text in the book."""

    def __repr__(self) -> str:
        return str(self)


def table(header, rows, floatfmt: str = ".2f", caption: str | None = None):
    """Show a table as Markdown (rendered as an HTML table in Jupyter, Colab and the book).

    ``header`` is a list of column names, ``rows`` a list of lists; floats are written with
    ``floatfmt``, everything else with ``str``. Unlike a printed table it is never clipped at the
    output box's width. Returns nothing (so that a cell ending with it shows the table once);
    :func:`markdown_table` gives the text."""
    text = markdown_table(header, rows, floatfmt, caption)
    try:
        from IPython.display import Markdown, display as show
    except ImportError:  # plain Python: print the Markdown
        print(text)
    else:
        show(Markdown(text))


def markdown_table(header, rows, floatfmt: str = ".2f", caption: str | None = None) -> str:
    """The Markdown text of :func:`table`."""
    def cell(value):  # a '|' inside a cell (a norm, ||g||) would end the cell: escape it
        return (format(value, floatfmt) if isinstance(value, float) else str(value)).replace("|", "\\|")

    widths = len(header)
    for row in rows:
        if len(row) != widths:
            raise ValueError(f"a row has {len(row)} cells, the header {widths}: {row!r}")
    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(widths)) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return ("**" + caption + "**\n\n" if caption else "") + "\n".join(lines)


# -- storing an executed chapter for the book ---------------------------------------------------
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def prepare_for_book(path) -> dict:
    """Make an executed chapter read well in the book, which runs no kernel (a step after execution).

    * Progress bars (tqdm's notebook widgets) are dropped: without a kernel they render as empty
      boxes, and their stored text is the bar as it was created (0%), not as it ended.
    * Playgrounds (``interactive(...)``) keep their widget output but the notebook's stored widget
      state is dropped, so the book shows its note "an interactive widget appears here when the
      notebook runs" (``book/_static/widget-fallback.js``) beside the static twins drawn above it,
      not a dead slider. In Jupyter and Colab the cells draw live widgets as always.

    Returns ``{"progress_bars": n, "playgrounds": m}``.
    """
    import json
    from pathlib import Path

    path = Path(path)
    nb = json.loads(path.read_text())
    counts = {"progress_bars": 0, "playgrounds": 0}
    for cell in nb["cells"]:
        kept = []
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data and not "".join(data.get("text/plain", "")).startswith("interactive("):
                counts["progress_bars"] += 1
                continue
            counts["playgrounds"] += WIDGET_VIEW in data
            kept.append(output)
        if "outputs" in cell:
            cell["outputs"] = kept
    nb["metadata"].pop("widgets", None)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return counts


if __name__ == "__main__":  # python -m mlcourse.notebook NOTEBOOK...  (after executing them)
    for name in sys.argv[1:]:
        print(name, prepare_for_book(name))
