"""Graded exercises of every chapter, with checks that explain a wrong answer and hidden solutions.

Each chapter's module (``ch1`` ... ``ch11``) holds, per exercise, the reference solution
(``<name>_solution``), a check ``check_<name>(fn)`` that runs a student's function against an
independent reference on seeded random cases, and the registry ``EXERCISES``. A check is
declared once, with :func:`~mlcourse.exercises.checking.exercise` on the generator of its cases
(id, title, solution and points in the decorator, the task in its docstring). In a notebook::

    from mlcourse.exercises.ch2 import check_inner_step
    check_inner_step(inner_step)      # prints one line and returns a CheckResult

A check never raises on a wrong answer (only a TypeError when given something that is not a
function). ``ALL`` maps every exercise id ("2.1", ...) to its :class:`Exercise`;
:mod:`mlcourse.grading` grades a whole notebook with them.
"""
from . import ch1, ch2, ch3, ch4, ch5, ch6, ch7, ch8, ch9, ch10, ch11
from .checking import CheckResult, Exercise

CHAPTERS = {1: ch1, 2: ch2, 3: ch3, 4: ch4, 5: ch5, 6: ch6, 7: ch7, 8: ch8, 9: ch9, 10: ch10, 11: ch11}

ALL: dict[str, Exercise] = {}
for _module in CHAPTERS.values():
    ALL.update(_module.EXERCISES)


def exercises_for(chapter: int) -> list[Exercise]:
    """The exercises of one chapter, in order."""
    return [ex for ex in ALL.values() if ex.chapter == int(chapter)]


__all__ = ["ALL", "CHAPTERS", "CheckResult", "Exercise", "exercises_for",
           "ch1", "ch2", "ch3", "ch4", "ch5", "ch6", "ch7", "ch8", "ch9", "ch10", "ch11"]
