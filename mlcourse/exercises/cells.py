"""The notebook cells of each chapter's graded exercises, built from the registry.

Every exercise becomes the gated directives of sphinx-exercise with code cells inside:

    markdown  ```{exercise-start} <title>``` with ``:label: ex-2-1``, then the task
    code      the stub (tag ``exercise``): imports, signature, docstring, ``raise NotImplementedError``
    markdown  ```{exercise-end}```
    code      ``check_<name>(<name>);`` (no tag)
    markdown  ```{solution-start} ex-2-1``` with ``:class: dropdown``   (tag ``solution``)
    code      the reference solution under the student's function name   (tag ``solution``)
    markdown  ```{solution-end}```                                       (tag ``solution``)
    code      ``check_<name>(<name>);`` again, which now passes           (tag ``solution``)

The solution cell is the source of ``<name>_solution`` renamed, so the two never drift apart;
the stub is its signature and docstring. :func:`mlcourse.grading.strip_solutions` drops every
cell tagged ``solution``. Write the JSON files with ``python -m mlcourse.exercises.cells DIR``.
"""
from __future__ import annotations

import ast
import inspect
import json
import re
import sys
import textwrap
from pathlib import Path

from . import ALL, exercises_for
from .checking import Exercise

NOTEBOOKS = {1: "01_few_shot_learning.ipynb", 2: "02_maml.ipynb", 3: "03_reptile.ipynb",
             4: "04_hierarchical_bayes.ipynb", 5: "05_imaml.ipynb",
             6: "06_bmaml.ipynb", 7: "07_platipus.ipynb", 8: "08_mmaml.ipynb",
             9: "09_maml_plus_plus.ipynb", 10: "10_the_family.ipynb",
             11: "11_comparison.ipynb"}
WIDTH = 88  # the longest line a notebook cell may hold
# The chapters already end with a "## Exercises" section of slider exercises; whoever inserts
# these cells after it may prefer "## Graded exercises" here (then regenerate the JSON files).
HEADING = "## Graded exercises"


def solution_source(ex: Exercise) -> str:
    """The solution cell: the exercise's imports, then ``<name>_solution`` renamed ``<name>``."""
    source = inspect.getsource(ex.solution)
    source = source.replace(f"def {ex.solution.__name__}(", f"def {ex.function_name}(", 1)
    return (ex.imports + "\n\n\n" if ex.imports else "") + source.rstrip() + "\n"


def stub_source(ex: Exercise) -> str:
    """The exercise cell: imports, the signature and docstring, and ``raise NotImplementedError``."""
    source = inspect.getsource(ex.solution)
    func = ast.parse(source).body[0]
    docstring = func.body[0]
    if not (isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant)):
        raise ValueError(f"{ex.solution.__name__} needs a docstring: the stub shows it")
    head = "\n".join(source.splitlines()[:docstring.end_lineno])
    head = head.replace(f"def {ex.solution.__name__}(", f"def {ex.function_name}(", 1)
    body = "    # your code here\n    raise NotImplementedError\n"
    return (ex.imports + "\n\n\n" if ex.imports else "") + head + "\n" + body


def wrap_markdown(text: str, width: int = WIDTH) -> str:
    """Re-wrap each paragraph to ``width`` columns, never breaking inside $...$ or `...`."""
    out = []
    for paragraph in text.split("\n\n"):
        joined = " ".join(paragraph.split())
        # protect the spaces inside inline math and code so that no line break falls there
        protected = re.sub(r"(\$[^$]+\$|`[^`]+`)", lambda m: m.group(0).replace(" ", "\0"), joined)
        lines = textwrap.wrap(protected, width, break_long_words=False, break_on_hyphens=False)
        out.append("\n".join(lines).replace("\0", " "))
    return "\n\n".join(out)


def _lines(source: str) -> list[str]:
    lines = source.splitlines(keepends=True)
    if lines and lines[-1].endswith("\n"):
        lines[-1] = lines[-1][:-1]
    return lines


def _markdown(cell_id: str, source: str, tags=()) -> dict:
    return {"cell_type": "markdown", "id": cell_id, "metadata": {"tags": list(tags)} if tags else {},
            "source": _lines(source)}


def _code(cell_id: str, source: str, tags=()) -> dict:
    return {"cell_type": "code", "execution_count": None, "id": cell_id,
            "metadata": {"tags": list(tags)} if tags else {}, "outputs": [], "source": _lines(source)}


def exercise_cells(ex: Exercise) -> list[dict]:
    """The eight cells of one exercise (see the module docstring)."""
    check = ex.check.__name__
    module = ex.check.__module__
    label = ex.label
    task = wrap_markdown(ex.task)
    call = f"{check}({ex.function_name});"
    return [
        _markdown(f"{label}-task", f"```{{exercise-start}} {ex.id}: {ex.title}\n:label: {label}\n"
                                   ":nonumber:\n```\n\n"
                                   f"{task}\n\n*({ex.points} point{'s' if ex.points > 1 else ''})*"),
        _code(f"{label}-stub", stub_source(ex), tags=("exercise",)),
        _markdown(f"{label}-end", "```{exercise-end}\n```"),
        _code(f"{label}-check", f"from {module} import {check}\n\n{call}"),
        _markdown(f"{label}-solution-start", f"```{{solution-start}} {label}\n:class: dropdown\n```",
                  tags=("solution",)),
        _code(f"{label}-solution", solution_source(ex), tags=("solution",)),
        _markdown(f"{label}-solution-end", "```{solution-end}\n```", tags=("solution",)),
        _code(f"{label}-recheck", call, tags=("solution",)),
    ]


def chapter_cells(chapter: int) -> list[dict]:
    """All the exercise cells of one chapter, after a "## Exercises" heading."""
    notebook = f"notebooks/{NOTEBOOKS[chapter]}"
    intro = (HEADING + "\n\n" + wrap_markdown(
        "Each exercise below is graded: fill in the function in its cell and run the check "
        f"under it, or grade them all at once with `python -m mlcourse grade {notebook}`, "
        "which runs only the setup cell and your exercise cells, not the training."))
    cells = [_markdown(f"exercises-chapter-{chapter}", intro)]
    for ex in exercises_for(chapter):
        cells += exercise_cells(ex)
    return cells


def write_cells(folder) -> list[Path]:
    """Write ``chN.json`` (a list of nbformat v4 cells) for every chapter into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for chapter in sorted({ex.chapter for ex in ALL.values()}):
        path = folder / f"ch{chapter}.json"
        path.write_text(json.dumps(chapter_cells(chapter), indent=1, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_cells(sys.argv[1] if len(sys.argv) > 1 else "notebooks/_exercise_cells"):
        print(written)
