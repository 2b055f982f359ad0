"""What every exercise check shares: run a student's function on seeded random cases, compare each
answer with an independent reference, and say in words what is wrong when it differs.

A check never raises on a wrong answer (a notebook keeps running); it returns a
:class:`CheckResult` and prints one line. The diagnosis tries, in this order: an exception
(shown with the student's line), a stub still raising NotImplementedError (not attempted), the
return type, the container structure (tuple length, dict keys), shapes, dtypes, NaN or inf,
then, for a wrong value, the known mistakes the exercise lists (a first-order answer, a
swapped argument, ...), a sign error (answer == -reference), a constant factor, and last the
largest difference with its location. :func:`exercise` declares an exercise on the generator
of its cases and makes its check.
"""
from __future__ import annotations

import copy
import inspect
import math
import numbers
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

RTOL = 1e-6
ATOL = 1e-9


@dataclass
class CheckResult:
    """The outcome of one check: ``passed``, a ``message`` a student can act on, the exercise id."""

    exercise: str
    title: str
    passed: bool
    message: str
    points: int = 1
    attempted: bool = True

    @property
    def score(self) -> int:
        return self.points if self.passed else 0

    @property
    def status(self) -> str:
        if self.passed:
            return "correct"
        return "wrong" if self.attempted else "not attempted"

    def line(self) -> str:
        mark = {"correct": "PASS", "wrong": "FAIL", "not attempted": "TODO"}[self.status]
        return f"[{mark}] Exercise {self.exercise} ({self.title}): {self.message}"

    def __str__(self) -> str:
        return self.line()

    def __bool__(self) -> bool:
        return self.passed


@dataclass(frozen=True)
class Exercise:
    """One graded exercise: the function a student writes, its check and its reference solution.

    ``task`` is the Markdown statement shown in the notebook; ``imports`` are the lines the
    stub cell and the solution cell start with (what the function body needs beyond ``torch``).
    """

    id: str
    title: str
    function_name: str
    check: Callable[..., CheckResult]
    solution: Callable
    points: int = 1
    task: str = ""
    imports: str = ""

    @property
    def chapter(self) -> int:
        return int(self.id.split(".")[0])

    @property
    def label(self) -> str:
        """The sphinx-exercise label, e.g. ``ex-2-1``."""
        return "ex-" + self.id.replace(".", "-")


@dataclass
class Case:
    """One random case: the arguments, the reference answer and the known wrong answers.

    ``mistakes`` is a list of ``(message, value)``; a value may be a zero-argument callable,
    evaluated only when a wrong answer needs explaining. ``about`` describes the case in words.
    """

    args: tuple
    expected: Any
    mistakes: list = field(default_factory=list)
    about: str = ""
    extra: dict = field(default_factory=dict)  # anything a check's own ``explain`` needs


class _Wrong(Exception):
    """Raised inside the comparison with the message to report."""


# ---------------------------------------------------------------------------------------------
# Running a check

def require_callable(fn, check_name: str, function_name: str) -> None:
    """A check is given the student's function itself: anything else is a TypeError."""
    if not callable(fn):
        hint = ""
        if fn is None or isinstance(fn, (torch.Tensor, numbers.Number, tuple, dict, list)):
            hint = (f" (pass the function itself, {check_name}({function_name}), "
                    f"not the result of calling it)")
        raise TypeError(f"{check_name} expects a function, got {type(fn).__name__}{hint}")


def run_check(exercise: Exercise, fn: Callable, cases: Sequence[Case], *,
              names: Sequence[str] | None = None, rtol: float = RTOL,
              atol: float = ATOL, hints: Mapping[str, str] | None = None,
              must_not_modify: Sequence[str] = (), arg_names: Sequence[str] = (),
              explain: Callable | None = None, verbose: bool = True) -> CheckResult:
    """Call ``fn(*case.args)`` on every case and compare with ``case.expected`` (for ``exercise``).

    ``names`` name the parts of a tuple answer; ``hints`` add advice to a message kind
    ("shape", "sign", "factor", "type"); ``must_not_modify`` lists argument names (from
    ``arg_names``) that the function must leave unchanged; ``explain(case, got, fn)`` may return
    a custom diagnosis of a wrong value, tried after the known mistakes and the sign check.
    """
    hints = dict(hints or {})
    why = None if explain is None else (lambda case, got: explain(case, got, fn))

    def result(passed: bool, message: str, attempted: bool = True) -> CheckResult:
        out = CheckResult(exercise.id, exercise.title, passed, message, exercise.points, attempted)
        if verbose:
            print(out.line())
        return out

    fname = getattr(fn, "__name__", "your function")
    for number, case in enumerate(cases, 1):
        where = f" [case {number} of {len(cases)}{': ' + case.about if case.about else ''}]"
        args = copy.deepcopy(case.args)
        before = copy.deepcopy(args)
        try:
            got = fn(*args)
        except NotImplementedError as err:
            if _raised_by(err, fn):  # the stub's own `raise`, not an op torch lacks
                return result(False, f"not attempted yet: {fname} still raises NotImplementedError; "
                                     "replace `raise NotImplementedError` with your code.", attempted=False)
            return result(False, describe_exception(err, fn) + where)
        except Exception as err:  # a student's bug of any kind: report it, never re-raise
            return result(False, describe_exception(err, fn) + where)
        for name in must_not_modify:
            i = list(arg_names).index(name)
            if not _same(args[i], before[i]):
                return result(False, f"{fname} changed its argument `{name}` in place; leave it as it "
                                     f"is and build a new result (a new dict or tensor)." + where)
        try:
            compare(got, case, names=names, rtol=rtol, atol=atol, hints=hints, explain=why)
        except _Wrong as wrong:
            return result(False, str(wrong).strip() + where)
        except Exception as err:  # an answer too odd to compare: still a message, never a crash
            return result(False, f"your result could not be compared with the reference "
                                 f"({type(err).__name__}: {err}); return the type the docstring "
                                 "names." + where)
    return result(True, f"correct: agrees with the reference on {len(cases)} random cases.")


def describe_exception(err: BaseException, fn: Callable) -> str:
    """'raised KeyError: 'w' at line 3 of inner_step: `...`' (the deepest line of the student's code)."""
    text = f"raised {type(err).__name__}: {err}"
    code = getattr(fn, "__code__", None)
    frames = traceback.extract_tb(err.__traceback__)
    mine = [f for f in frames if code is not None and f.filename == code.co_filename]
    if mine:
        frame = mine[-1]
        line = f": `{frame.line.strip()}`" if frame.line else ""
        text += f" (at line {frame.lineno - code.co_firstlineno + 1} of {fn.__name__}{line})"
    return text


def _raised_by(err: BaseException, fn: Callable) -> bool:
    """Whether ``err`` was raised in the body of ``fn`` itself (its last frame is fn's code)."""
    code = getattr(fn, "__code__", None)
    frames = traceback.extract_tb(err.__traceback__)
    return code is None or (bool(frames) and frames[-1].filename == code.co_filename)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# ---------------------------------------------------------------------------------------------
# Declaring an exercise where its check is defined

def exercise(registry: dict, exercise_id: str, title: str, solution: Callable, *, points: int = 1,
             imports: str = "", **options) -> Callable[[Callable], Callable[..., CheckResult]]:
    """Declare exercise ``exercise_id`` on the generator of its cases; return its check.

    Decorates ``check_<name>(g)``, which yields the exercise's :class:`Case` objects drawn
    from the generator ``g`` (seeded with the digits of the id: "2.1" -> 21), and turns it
    into the check ``check_<name>(fn, verbose=True)``: the same name, module and docstring,
    which runs ``fn`` (a student's ``<name>``) on those cases with :func:`run_check`
    (``options`` are its keywords: names, rtol, hints, explain, ...). The check goes into
    ``registry`` as ``Exercise(exercise_id, title, "<name>", check, solution, ...)``.

    The docstring's first paragraph says what the check tries; the rest is the task that
    the notebook shows (re-wrapped there, so its line breaks do not matter).
    """
    def declare(cases: Callable) -> Callable[..., CheckResult]:
        check_name = cases.__name__
        function_name = check_name.removeprefix("check_")
        task = inspect.cleandoc(cases.__doc__ or "").partition("\n\n")[2]
        seed = int(exercise_id.replace(".", ""))

        def check(fn, verbose: bool = True) -> CheckResult:
            require_callable(fn, check_name, function_name)
            return run_check(declared, fn, list(cases(generator(seed))), verbose=verbose, **options)

        check.__name__ = check.__qualname__ = check_name
        check.__module__, check.__doc__ = cases.__module__, cases.__doc__
        declared = Exercise(exercise_id, title, function_name, check, solution, points, task, imports)
        registry[exercise_id] = declared
        return check
    return declare


# ---------------------------------------------------------------------------------------------
# Comparing an answer with the reference

def compare(got, case: Case, *, names=None, rtol=RTOL, atol=ATOL, hints=None, explain=None) -> None:
    """Return silently if ``got`` matches ``case.expected``; else raise _Wrong with a diagnosis."""
    hints = hints or {}
    expected = case.expected
    parts: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    _structure(got, expected, "your result", names, parts, hints)
    for label, g, _ in parts:
        if torch.isnan(g).any():
            raise _Wrong(f"{label} contains NaN: look for 0/0, a log or sqrt of a negative "
                         "number, or an uninitialised tensor (torch.empty).")
        if torch.isinf(g).any():
            raise _Wrong(f"{label} contains inf: look for a division by zero or an overflow.")
    got_flat = torch.cat([g.reshape(-1) for _, g, _ in parts])
    exp_flat = torch.cat([e.reshape(-1) for _, _, e in parts])
    if _close(got_flat, exp_flat, rtol, atol):
        return
    for message, value in case.mistakes:
        value = value() if callable(value) else value
        wrong: list = []
        try:
            _structure(value, expected, "mistake", names, wrong, {})
        except _Wrong:  # a mistake of another shape cannot be this answer
            continue
        if _close(got_flat, torch.cat([v.reshape(-1) for _, v, _ in wrong]), rtol, atol):
            raise _Wrong(message)
    bad = [(label, g, e) for label, g, e in parts if not _close(g.reshape(-1), e.reshape(-1), rtol, atol)]
    good = [label for label, g, e in parts if not any(label == b[0] for b in bad)]
    subject = "your result"
    if names and good:  # a tuple answer with some parts right: name the wrong ones
        subject = ", ".join(label for label, _, _ in bad)
        prefix = f"{subject} {'is' if len(bad) == 1 else 'are'} wrong ({', '.join(good)} "
        prefix += f"{'is' if len(good) == 1 else 'are'} right): "
    else:
        prefix = ""
    g = torch.cat([b[1].reshape(-1) for b in bad])
    e = torch.cat([b[2].reshape(-1) for b in bad])
    if _close(g, -e, rtol, atol):
        raise _Wrong(prefix + f"sign error: {subject} is the negative of the reference. "
                     + hints.get("sign", "Check the sign of each term."))
    if explain is not None:
        message = explain(case, got)
        if message:
            raise _Wrong(prefix + message)
    if g.numel() == 1:  # a single number: any two have a ratio, so just show both
        raise _Wrong(prefix + f"wrong value: expected {e.item():.6g}, got {g.item():.6g}. "
                     + hints.get("value", ""))
    factor = _constant_ratio(g, e, rtol, atol)
    if factor is not None:
        raise _Wrong(prefix + f"off by a constant factor: {subject} is {factor:.6g} times the "
                     "reference. " + hints.get("factor", "Look for a missing or extra factor "
                                                         "(a 2, a 1/n, a step size)."))
    label, index, g_val, e_val, diff = _largest_difference(bad, rtol, atol)
    raise _Wrong(prefix + f"wrong values: the largest difference is {diff:.3g}, at {label}{index} "
                 f"(expected {e_val:.6g}, got {g_val:.6g}). " + hints.get("value", ""))


def _structure(got, expected, label, names, parts, hints) -> None:
    """Check types, keys and shapes recursively; append (label, got, expected) float64 pairs."""
    if isinstance(expected, Mapping):
        if not isinstance(got, Mapping):
            raise _Wrong(f"{label} {_is_a(got)}; expected a dict of tensors keyed like the "
                         f"parameters ({_keys(expected)}). " + _none_hint(got) + hints.get("type", ""))
        missing = [k for k in expected if k not in got]
        extra = [k for k in got if k not in expected]
        if missing or extra:
            text = f"{label} has the wrong keys:"
            text += f" missing {_keys(missing)}" if missing else ""
            text += ("," if missing and extra else "") + (f" unexpected {_keys(extra)}" if extra else "")
            raise _Wrong(text + ". Keep the keys of the parameter dict.")
        for k in expected:
            _structure(got[k], expected[k], f"{label}[{k!r}]", None, parts, hints)
        return
    if isinstance(expected, tuple):
        n = len(expected)
        what = f"a tuple of {n} ({', '.join(names)})" if names else f"a tuple of {n} items"
        if not isinstance(got, (tuple, list)):
            raise _Wrong(f"{label} {_is_a(got)}; expected {what}. " + _none_hint(got))
        if len(got) != n:
            raise _Wrong(f"{label} has {len(got)} items; expected {what}.")
        for i, (g, e) in enumerate(zip(got, expected)):
            part = f"`{names[i]}`" if names else f"item {i}"
            _structure(g, e, part, None, parts, hints)
        return
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            tip = " (convert it with torch.as_tensor)" if hasattr(got, "shape") else ""
            raise _Wrong(f"{label} {_is_a(got)}; expected a torch.Tensor of shape "
                         f"{tuple(expected.shape)}{tip}. " + _none_hint(got) + hints.get("type", ""))
        if tuple(got.shape) != tuple(expected.shape):
            raise _Wrong(f"wrong shape: {label} has shape {tuple(got.shape)}; expected "
                         f"{tuple(expected.shape)}. " + hints.get("shape", ""))
        if _integral(expected) and not _integral(got):
            raise _Wrong(f"wrong dtype: {label} is {got.dtype}; expected integers ({expected.dtype}). "
                         + hints.get("dtype", ""))
        if got.is_complex():
            raise _Wrong(f"{label} is complex ({got.dtype}); expected real numbers.")
        parts.append((label, got.detach().cpu().double(), expected.detach().cpu().double()))
        return
    if isinstance(expected, numbers.Real):
        if isinstance(got, torch.Tensor) and got.numel() == 1 and got.dim() <= 1:
            got = got.detach().cpu().double().reshape(())
        elif isinstance(got, numbers.Real) and not isinstance(got, bool):
            got = torch.tensor(float(got), dtype=torch.float64)
        elif hasattr(got, "item") and getattr(got, "size", 0) == 1:  # a numpy scalar or 1-array
            got = torch.tensor(float(got.item()), dtype=torch.float64)
        else:
            extra = f" of shape {tuple(got.shape)}" if isinstance(got, torch.Tensor) else ""
            raise _Wrong(f"{label} {_is_a(got)}{extra}; expected a single number "
                         "(a float, or a tensor with one element). " + _none_hint(got))
        parts.append((label, got, torch.tensor(float(expected), dtype=torch.float64)))
        return
    raise TypeError(f"unsupported reference type {type(expected).__name__}")  # a bug in a check


def _integral(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex()) and t.dtype != torch.bool


def _kind(x) -> str:
    mod = type(x).__module__
    return type(x).__name__ if mod == "builtins" else f"{mod.split('.')[0]}.{type(x).__name__}"


def _is_a(x) -> str:
    return "is None" if x is None else f"is a {_kind(x)}"


def _none_hint(got) -> str:
    return "Did you forget the `return`? " if got is None else ""


def _keys(keys) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:4])
    return shown + (", ..." if len(keys) > 4 else "")


def _close(g: torch.Tensor, e: torch.Tensor, rtol: float, atol: float) -> bool:
    if g.shape != e.shape:
        return False
    scale = max(1.0, e.abs().max().item()) if e.numel() else 1.0
    return bool(((g - e).abs() <= atol * scale + rtol * e.abs()).all())


def _constant_ratio(g: torch.Tensor, e: torch.Tensor, rtol: float, atol: float) -> float | None:
    """The constant c with g == c * e, if there is one (c not 0, 1 or -1)."""
    big = e.abs() > 1e-8 * max(e.abs().max().item(), 1e-300)
    if not big.any():
        return None
    ratios = g[big] / e[big]
    c = ratios.median().item()
    if not math.isfinite(c) or abs(c) < 1e-12 or abs(abs(c) - 1) < 10 * rtol:
        return None
    return c if _close(g, c * e, max(rtol, 1e-7) * 10, atol * 10) else None


def _largest_difference(parts, rtol, atol):
    best = None
    for label, g, e in parts:
        diff = (g - e).abs()
        if diff.numel() == 0:
            continue
        i = int(diff.reshape(-1).argmax())
        value = diff.reshape(-1)[i].item()
        if best is None or value > best[4]:
            index = "" if g.dim() == 0 else str(list(_unravel(i, g.shape)))
            best = (label, index, g.reshape(-1)[i].item(), e.reshape(-1)[i].item(), value)
    return best


def _unravel(i: int, shape) -> tuple:
    out = []
    for size in reversed(tuple(shape)):
        out.append(i % size)
        i //= size
    return tuple(reversed(out))


# ---------------------------------------------------------------------------------------------
# Helpers the chapters' checks use

def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def seeded(seed: int, build: Callable):
    """``build()`` under ``torch.manual_seed(seed)``, without moving the caller's random stream."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def randn(*shape, g: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def random_spd(d: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    """A random symmetric positive-definite d x d matrix with eigenvalues in [low, high]."""
    q, _ = torch.linalg.qr(randn(d, d, g=g))
    evals = low + (high - low) * torch.rand(d, generator=g, dtype=torch.float64)
    evals[0], evals[-1] = low, high  # span the whole range
    return (q * evals) @ q.T
