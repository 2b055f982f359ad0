"""Exercises of chapter 11 (the comparison): reading a table of means and 95% intervals honestly.

11.1 turns two methods' intervals into an interval for their difference; 11.2 does it for two
methods scored on the same test tasks (a paired comparison); 11.3 finds the methods that are
not dominated in cost and error (the Pareto front the chapter's plots show).

Each exercise has a reference solution (``*_solution``, the text the notebook's solution cell
shows), an independent reference used by its check (written another way: variances summed term
by term, a loop over tasks, a loop over pairs of methods), and ``check_*(fn)``.
"""
from __future__ import annotations

import math

import torch

from .checking import Case, Exercise, exercise

EXERCISES: dict[str, Exercise] = {}  # filled by the @exercise declarations below, in order

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: a 95% interval is mean +- Z95 * se


# ---------------------------------------------------------------------------------------------
# 11.1 The interval of a difference

def difference_interval_solution(mean_a, ci_a, mean_b, ci_b):
    """The difference of two independent estimates and its 95% half-width.

    ``mean_a +- ci_a`` and ``mean_b +- ci_b`` are means with 95% half-widths,
    ci = 1.96 * se, measured on independent test sets. Returns
    ``(mean_a - mean_b, half_width)``, the 95% half-width of the difference.
    """
    return mean_a - mean_b, math.sqrt(ci_a ** 2 + ci_b ** 2)


def _reference_difference(mean_a, ci_a, mean_b, ci_b):
    """Through the standard errors: back to se, add the variances, forward to a 95% half-width."""
    se_a, se_b = ci_a / Z95, ci_b / Z95
    return mean_a - mean_b, Z95 * (se_a * se_a + se_b * se_b) ** 0.5


@exercise(EXERCISES, "11.1", "The interval of a difference", difference_interval_solution,
          imports="import math", names=("difference", "half_width"))
def check_difference_interval(g):
    r"""Check ``difference_interval(mean_a, ci_a, mean_b, ci_b)`` on random pairs of results (exercise 11.1).

    Two rows of the table report $\bar a \pm c_a$ and $\bar b \pm c_b$, each a mean over its own
    test tasks with a 95% half-width $c = 1.96\,\mathrm{se}$. Write
    `difference_interval(mean_a, ci_a, mean_b, ci_b)` that returns the pair
    `(difference, half_width)`: the difference $\bar a - \bar b$ and the 95% half-width of that
    difference, assuming the two estimates are independent. (Hint: variances of independent
    estimates add; the half-widths are standard errors times the same 1.96.)
    """
    for _ in range(6):
        mean_a, mean_b = (90 + 10 * torch.rand(2, generator=g, dtype=torch.float64)).tolist()
        ci_a, ci_b = (0.1 + torch.rand(2, generator=g, dtype=torch.float64)).tolist()
        args = (mean_a, ci_a, mean_b, ci_b)
        mistakes = [
            ("the half-widths do not add: c_a + c_b would be right only if a's error were always "
             "up exactly when b's is down. Independent errors partly cancel in the difference, so "
             "their *variances* add: sqrt(c_a^2 + c_b^2).", (mean_a - mean_b, ci_a + ci_b)),
            ("the difference is mean_a - mean_b (a's minus b's), not the other way round.",
             (mean_b - mean_a, math.sqrt(ci_a ** 2 + ci_b ** 2))),
            ("a 95% half-width is already 1.96 standard errors: combine the half-widths as they "
             "are, without another factor 1.96.", (mean_a - mean_b, Z95 * math.sqrt(ci_a ** 2 + ci_b ** 2))),
            ("a 95% half-width is already 1.96 standard errors: combine the half-widths as they "
             "are, without another factor 1.96.", (mean_a - mean_b, 1.96 * math.sqrt(ci_a ** 2 + ci_b ** 2))),
            ("do not average the half-widths: the difference of two estimates is noisier than "
             "either, so its half-width exceeds both; the variances add, sqrt(c_a^2 + c_b^2).",
             (mean_a - mean_b, (ci_a + ci_b) / 2)),
        ]
        yield Case(args, _reference_difference(*args), mistakes=mistakes,
                   about=f"{mean_a:.2f} +- {ci_a:.2f} against {mean_b:.2f} +- {ci_b:.2f}")


# ---------------------------------------------------------------------------------------------
# 11.2 A paired comparison on the same test tasks

def paired_interval_solution(a, b):
    """The mean difference of two methods on the same tasks, and its 95% half-width.

    ``a`` and ``b`` are (n,) tensors: the two methods' scores on the same n test
    tasks. The differences d_j = a_j - b_j are n independent draws, so the 95%
    half-width is 1.96 * std(d) / sqrt(n), with the sample standard deviation
    (n - 1 in its denominator). Returns ``(mean_difference, half_width)`` as floats.
    """
    d = a - b
    return d.mean().item(), Z95 * d.std().item() / math.sqrt(len(d))


def _reference_paired(a, b):
    """Task by task: the differences, their mean, then the unbiased variance by a loop."""
    n = len(a)
    d = [float(a[j]) - float(b[j]) for j in range(n)]
    mean = sum(d) / n
    variance = sum((x - mean) ** 2 for x in d) / (n - 1)
    return mean, Z95 * math.sqrt(variance / n)


def _unpaired(a, b):
    n = len(a)
    return (a - b).mean().item(), Z95 * math.sqrt(a.var().item() / n + b.var().item() / n)


@exercise(EXERCISES, "11.2", "A paired comparison", paired_interval_solution,
          imports="import math\n\nZ95 = 1.959963984540054",
          names=("mean_difference", "half_width"))
def check_paired_interval(g):
    r"""Check ``paired_interval(a, b)`` against a loop over tasks (exercise 11.2).

    `python -m mlcourse compare` tests every method on the **same** test tasks (the same seed
    draws them). Given two methods' per-task scores `a` and `b`, tensors of shape $(n,)$ in the
    same task order, write `paired_interval(a, b)` that returns `(mean_difference, half_width)`:
    the mean of the differences $d_j = a_j - b_j$ and its 95% half-width
    $1.96\, s_d / \sqrt{n}$, where $s_d$ is the sample standard deviation of the $d_j$ (with
    $n - 1$ in its denominator). The constant `Z95` (1.96 to more digits) is defined for you.
    """
    for n in (5, 12, 40, 600):
        task_difficulty = torch.rand(n, generator=g, dtype=torch.float64)
        # two methods whose scores share each task's difficulty: pairing removes that shared part
        a = 0.7 + 0.25 * task_difficulty + 0.03 * torch.randn(n, generator=g, dtype=torch.float64)
        b = 0.68 + 0.25 * task_difficulty + 0.03 * torch.randn(n, generator=g, dtype=torch.float64)
        d = a - b
        mistakes = [
            ("this is the *unpaired* half-width (each method's variance added): it ignores that both "
             "methods met the same tasks. Take the differences a_j - b_j first, then their standard "
             "deviation.", lambda a=a, b=b: _unpaired(a, b)),
            ("use the sample standard deviation, with n - 1 in its denominator (torch's default, "
             "correction=1), not the population one.",
             (d.mean().item(), Z95 * d.std(correction=0).item() / math.sqrt(n))),
            ("divide the standard deviation by sqrt(n): the half-width is for the *mean* "
             "difference, not for one task's difference.", (d.mean().item(), Z95 * d.std().item())),
            ("divide by sqrt(n), not by n: the standard error of a mean is s / sqrt(n).",
             (d.mean().item(), Z95 * d.std().item() / n)),
            ("use the constant Z95 that the cell defines: 1.96 is it rounded, and the check compares "
             "to more digits than that.", (d.mean().item(), 1.96 * d.std().item() / math.sqrt(n))),
        ]
        yield Case((a, b), _reference_paired(a, b), mistakes=mistakes, about=f"n={n} tasks")


# ---------------------------------------------------------------------------------------------
# 11.3 The methods worth picking: the Pareto front

def pareto_front_solution(cost, error):
    """Which methods no other method beats on both counts (the Pareto front).

    ``cost`` and ``error`` are (m,) tensors, lower is better in both (seconds per
    meta-iteration, say, and 100 minus the accuracy). Method i is *dominated* when
    some j has cost_j <= cost_i and error_j <= error_i, with at least one of the two
    strictly smaller. Returns a bool (m,) tensor, True for the methods that are not
    dominated.
    """
    no_worse = (cost[None, :] <= cost[:, None]) & (error[None, :] <= error[:, None])
    better = (cost[None, :] < cost[:, None]) | (error[None, :] < error[:, None])
    dominated = (no_worse & better).any(dim=1)  # row i: does some column j beat i?
    return ~dominated


def _reference_front(cost, error, strict=False):
    """A double loop over pairs; with ``strict``, a method must be strictly better on both to dominate."""
    m = len(cost)
    keep = []
    for i in range(m):
        beaten = False
        for j in range(m):
            if j == i:
                continue
            if strict:
                dominates = cost[j] < cost[i] and error[j] < error[i]
            else:
                dominates = (cost[j] <= cost[i] and error[j] <= error[i]
                             and (cost[j] < cost[i] or error[j] < error[i]))
            beaten = beaten or bool(dominates)
        keep.append(not beaten)
    return torch.tensor(keep)


def _front_ties_dominate(cost, error):
    """'No worse in both' taken as enough to dominate (other methods only): exact duplicates knock each other out."""
    no_worse = (cost[None, :] <= cost[:, None]) & (error[None, :] <= error[:, None])
    no_worse.fill_diagonal_(False)
    return ~no_worse.any(dim=1)


@exercise(EXERCISES, "11.3", "The Pareto front", pareto_front_solution)
def check_pareto_front(g):
    r"""Check ``pareto_front(cost, error)`` against a double loop over pairs of methods (exercise 11.3).

    The chapter's plots put each method at (cost, error). A method is worth considering only if
    no other is at least as cheap **and** at least as good while strictly better in one of the
    two. Write `pareto_front(cost, error)`: given tensors `cost` and `error` of shape $(m,)$,
    lower is better in both, return a `bool` tensor of shape $(m,)$ that is `True` for the
    methods no other method dominates (a method is never compared with itself). Methods with
    exactly the same cost and error do not dominate each other.
    """
    for m, levels in ((4, 10), (7, 4), (12, 3), (9, 100)):
        # few distinct levels: ties in one coordinate (and whole duplicates) happen, as in real tables
        cost = torch.randint(1, levels + 1, (m,), generator=g).double()
        error = torch.randint(1, levels + 1, (m,), generator=g).double()
        if m == 12:  # an exact duplicate of a method on the front (the cheapest of the most accurate)
            best = int(torch.argmin(error * (levels + 1) + cost))
            cost[best - 1], error[best - 1] = cost[best], error[best]
        args = (cost, error)
        mistakes = [
            ("True marks the methods on the front (not dominated); yours marks the dominated ones.",
             lambda a=args: ~_reference_front(*a)),
            ("a method is dominated when another is no worse in both and strictly better in *one* "
             "(not necessarily both): one that is as cheap and more accurate beats it.",
             lambda a=args: _reference_front(*a, strict=True)),
            ("two methods with the same cost and the same error do not dominate each other: require "
             "'strictly better' in at least one of the two.",
             lambda a=args: _front_ties_dominate(*a)),
            ("no method is on your front, yet one always is (the cheapest of the most accurate): "
             "check that a method is not compared with itself, and that to dominate, another "
             "must be no worse in *both* and strictly better in one.",
             torch.zeros(m, dtype=torch.bool)),
        ]
        yield Case(args, _reference_front(*args), mistakes=mistakes,
                   about=f"{m} methods, {levels} levels of cost and error")
