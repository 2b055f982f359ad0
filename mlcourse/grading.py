"""Grade a student's chapter notebook from its exercise cells, and make student copies.

    python -m mlcourse.grading grade notebooks/02_maml.ipynb        # table of scores; exit 0 iff all pass
    python -m mlcourse.grading student-copy IN.ipynb OUT.ipynb       # drop the cells tagged `solution`

:func:`grade_notebook` never runs a chapter's training. In a fresh namespace it executes the
notebook's setup (the cells tagged ``setup``, or else its first code cell) and then only the
code cells tagged ``exercise`` (the student's filled-in stubs), then runs the check of every
registered exercise of the chapter on the function of that name. A function that is missing
counts as not attempted. Grading executes the student's code: run it where that is acceptable.

``main(argv)`` takes the subcommands above, so that ``python -m mlcourse grade NOTEBOOK`` and
``python -m mlcourse student-copy IN OUT`` can hand their arguments to it.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import linecache
import re
import sys
from pathlib import Path

from .exercises import exercises_for
from .exercises.checking import CheckResult

SETUP_TAG, EXERCISE_TAG, SOLUTION_TAG = "setup", "exercise", "solution"


# ---------------------------------------------------------------------------------------------
# Reading notebooks

def _read(path) -> dict:
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    if not isinstance(nb, dict) or "cells" not in nb:
        raise ValueError(f"{path} is not a Jupyter notebook (no 'cells')")
    return nb


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _tags(cell: dict) -> list:
    return list(cell.get("metadata", {}).get("tags", []))


def chapter_of(path) -> int:
    """The chapter number from a notebook's file name: ``02_maml.ipynb`` -> 2."""
    match = re.match(r"0*(\d+)_", Path(path).name)
    if not match:
        raise ValueError(f"cannot tell the chapter from the file name {Path(path).name!r} (expected a "
                         "prefix such as '02_'): pass chapter=N")
    return int(match.group(1))


def _python(source: str) -> str:
    """Notebook code as plain Python: IPython magics and shell escapes are commented out."""
    lines = source.splitlines()
    if lines and lines[0].lstrip().startswith("%%"):
        return ""  # a cell magic: the cell is not Python
    return "\n".join("# " + line if line.lstrip().startswith(("%", "!")) else line for line in lines)


def _run_cell(source: str, namespace: dict, filename: str) -> str | None:
    """Execute one cell in ``namespace`` with its output hidden; return the error, if any."""
    code = _python(source)
    linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            exec(compile(code, filename, "exec"), namespace)
    except Exception as err:  # the student's cell failed: grading carries on without it
        return f"{type(err).__name__}: {err}"
    return None


# ---------------------------------------------------------------------------------------------
# Grading

def grade_notebook(path, chapter: int | None = None) -> list[CheckResult]:
    """Check every registered exercise of the notebook's chapter; one CheckResult each.

    Runs the setup cell(s) and the cells tagged ``exercise`` only. ``chapter`` defaults to
    the number in the file name's prefix ("02_maml.ipynb" -> 2).
    """
    nb = _read(path)
    chapter = chapter_of(path) if chapter is None else int(chapter)
    exercises = exercises_for(chapter)
    if not exercises:
        raise ValueError(f"chapter {chapter} has no graded exercises")
    code_cells = [(i, c) for i, c in enumerate(nb["cells"]) if c.get("cell_type") == "code"]
    setup = [(i, c) for i, c in code_cells if SETUP_TAG in _tags(c)] or code_cells[:1]
    setup = [(i, c) for i, c in setup if EXERCISE_TAG not in _tags(c) and SOLUTION_TAG not in _tags(c)]
    namespace: dict = {"__name__": "__main__"}
    name = Path(path).name
    problems = []
    for i, cell in setup:
        error = _run_cell(_source(cell), namespace, f"<{name} setup cell {i + 1}>")
        if error:
            problems.append(f"the setup cell (cell {i + 1}) failed: {error}")
    for i, cell in code_cells:
        if EXERCISE_TAG in _tags(cell):
            error = _run_cell(_source(cell), namespace, f"<{name} cell {i + 1}>")
            if error:
                problems.append(f"exercise cell {i + 1} failed: {error}")
    note = f" ({'; '.join(problems)})" if problems else ""
    results = []
    for ex in exercises:
        fn = namespace.get(ex.function_name)
        if fn is None:
            results.append(CheckResult(ex.id, ex.title, False, f"not attempted: no function named "
                                       f"`{ex.function_name}` in the cells tagged `exercise`{note}.",
                                       ex.points, attempted=False))
        elif not callable(fn):
            results.append(CheckResult(ex.id, ex.title, False, f"`{ex.function_name}` is a "
                                       f"{type(fn).__name__}, not a function.", ex.points))
        else:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                results.append(ex.check(fn, verbose=False))
    return results


def format_report(results: list[CheckResult], title: str | None = None) -> str:
    """A table of the exercises with their points and status, the total, then the messages."""
    rows = [(r.exercise, r.title, f"{r.score}/{r.points}", r.status) for r in results]
    head = ("exercise", "title", "points", "result")
    widths = [max(len(str(row[k])) for row in rows + [head]) for k in range(4)]

    def fmt(row):
        return "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip()

    lines = [title] if title else []
    lines += [fmt(head), fmt(["-" * w for w in widths])] + [fmt(row) for row in rows]
    score, total = sum(r.score for r in results), sum(r.points for r in results)
    correct = sum(r.passed for r in results)
    lines += [fmt(["-" * w for w in widths]),
              f"total: {score}/{total} points ({correct} of {len(results)} exercises correct)"]
    details = [f"{r.exercise}: {r.message}" for r in results if not r.passed]
    if details:
        lines += ["", *details]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Student copies

_SOLUTION_FENCE = re.compile(r"^\s*(```+|:::+)\s*\{solution(-start|-end)?\}")


def strip_solutions(in_path, out_path) -> int:
    """Write a copy of the notebook without its solutions; return how many cells were dropped.

    Dropped: every cell tagged ``solution``, and any Markdown cell that opens a
    ``{solution}``, ``{solution-start}`` or ``{solution-end}`` directive (so that a gated
    solution is never left half open). Everything else, outputs included, is kept.
    """
    if Path(in_path).resolve() == Path(out_path).resolve():
        raise ValueError("the student copy must be written to another file than the notebook itself")
    nb = _read(in_path)
    keep = [c for c in nb["cells"]
            if SOLUTION_TAG not in _tags(c)
            and not (c.get("cell_type") == "markdown" and _SOLUTION_FENCE.match(_source(c)))]
    dropped = len(nb["cells"]) - len(keep)
    nb["cells"] = keep
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return dropped


# ---------------------------------------------------------------------------------------------
# Command line

def add_subcommands(subparsers) -> None:
    """Add ``grade`` and ``student-copy`` to an argparse subparsers object (for mlcourse.cli)."""
    grade = subparsers.add_parser("grade", help="grade the exercise cells of a chapter notebook")
    grade.add_argument("notebook")
    grade.add_argument("--chapter", type=int, default=None,
                       help="the chapter (default: from the file name, 02_maml.ipynb -> 2)")
    grade.add_argument("--json", action="store_true", help="print the results as JSON")
    grade.set_defaults(grading_command=_grade_command)
    copy = subparsers.add_parser("student-copy", help="write a notebook without its solution cells")
    copy.add_argument("notebook")
    copy.add_argument("out")
    copy.set_defaults(grading_command=_copy_command)


def _errors_exit_1(command):
    """Wrap a command so that a notebook it cannot read or use prints ``error: ...`` and exits 1."""
    @functools.wraps(command)
    def wrapped(args) -> int:
        try:
            return command(args)
        except (OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return wrapped


@_errors_exit_1
def _grade_command(args) -> int:
    results = grade_notebook(args.notebook, args.chapter)
    if args.json:
        print(json.dumps([{"exercise": r.exercise, "title": r.title, "passed": r.passed,
                           "points": r.points, "score": r.score, "status": r.status,
                           "message": r.message} for r in results], indent=1))
    else:
        print(format_report(results, title=f"{args.notebook}"))
    return 0 if all(r.passed for r in results) else 1


@_errors_exit_1
def _copy_command(args) -> int:
    dropped = strip_solutions(args.notebook, args.out)
    print(f"wrote {args.out} ({dropped} solution cells removed)")
    return 0


def run(args) -> int:
    """Run a parsed ``grade`` or ``student-copy`` command (after :func:`add_subcommands`)."""
    return args.grading_command(args)


def main(argv=None) -> int:
    """``grade NOTEBOOK [--chapter N] [--json]`` or ``student-copy IN OUT``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m mlcourse", description="Grade exercises.")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
