"""Exercises of chapter 1 (few-shot learning): episode labels, the 95% interval, sinusoid tasks.

Each exercise has a reference solution (``*_solution``, the text the notebook's solution cell
shows), an independent reference computation used by its check (``_reference_*``, written
differently on purpose), and ``check_*(fn)``, which returns a
:class:`~mlcourse.exercises.checking.CheckResult`.
"""
from __future__ import annotations

import math

import torch

from .checking import Case, Exercise, exercise, randn

Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal

EXERCISES: dict[str, Exercise] = {}  # filled by the @exercise declarations below, in order


# ---------------------------------------------------------------------------------------------
# 1.1 The label layout of an N-way K-shot episode

def episode_labels_solution(ways, shots, queries):
    """The labels of one N-way K-shot episode, class-major (the layout of notation.md).

    The support set holds K = ``shots`` examples of each of the N = ``ways``
    classes: all K of class 0 first, then all K of class 1, and so on, so support
    example n has label y_n = floor(n / K). The query set holds Q = ``queries``
    examples per class in the same order. Labels are local to the episode: 0 .. N-1.

    Returns ``(support_y, query_y)``, int64 tensors of shapes (N*K,) and (N*Q,).
    """
    classes = torch.arange(ways)
    return classes.repeat_interleave(shots), classes.repeat_interleave(queries)


def _reference_labels(ways: int, per_class: int) -> torch.Tensor:
    """Class-major labels y_n = floor(n / per_class), by integer division."""
    return torch.div(torch.arange(ways * per_class), per_class, rounding_mode="floor")


@exercise(EXERCISES, "1.1", "N-way K-shot episode labels", episode_labels_solution,
          names=("support_y", "query_y"),
          hints={"shape": "support_y has N*K labels and query_y has N*Q.",
                 "dtype": "Class labels are integer indices: use torch.long (int64)."})
def check_episode_labels(g):
    r"""Check ``episode_labels(ways, shots, queries)`` on several episode shapes (exercise 1.1).

    Write `episode_labels(ways, shots, queries)`, the labels of one $N$-way $K$-shot episode
    in the layout every sampler of `mlcourse` uses (class-major: all $K$ examples of class 0,
    then all of class 1, ...). It returns `(support_y, query_y)`, integer tensors of
    shapes $(NK,)$ and $(NQ,)$ with labels in $0, \dots, N-1$.
    """
    for ways, shots, queries in [(5, 1, 3), (5, 5, 2), (20, 1, 5), (3, 2, 4)]:
        expected = (_reference_labels(ways, shots), _reference_labels(ways, queries))

        def cycled(ways=ways, shots=shots, queries=queries):
            return torch.arange(ways).repeat(shots), torch.arange(ways).repeat(queries)

        def from_one(expected=expected):
            return expected[0] + 1, expected[1] + 1

        yield Case((ways, shots, queries), expected, about=f"N={ways}, K={shots}, Q={queries}",
                   mistakes=[
            ("the labels cycle through the classes (0, 1, 2, ..., 0, 1, 2, ...); the course's "
             "layout is class-major: all K examples of class 0, then all of class 1, ... "
             "(torch.repeat_interleave, not Tensor.repeat).", cycled),
            ("the labels run from 1 to N; they must run from 0 to N-1 (cross-entropy reads a "
             "label as the index of the class's logit).", from_one),
        ])


# ---------------------------------------------------------------------------------------------
# 1.2 The 95% confidence interval of a mean over test tasks

def confidence_interval_95_solution(scores):
    """Mean and half-width of the 95% confidence interval of the mean of ``scores``.

    For n per-task scores s_1 .. s_n (accuracies or MSEs) with mean m and sample
    standard deviation s (dividing by n - 1), the interval is m +- 1.96 s / sqrt(n):
    the normal interval behind the papers' "mean +- 95% interval over 600 test tasks".

    ``scores`` is a 1-D float tensor; returns ``(mean, half_width)`` as two floats.
    """
    n = scores.numel()
    mean = scores.mean().item()
    std = scores.std().item()  # the sample standard deviation: divides by n - 1
    return mean, 1.96 * std / math.sqrt(n)


def _reference_interval(scores: torch.Tensor) -> tuple[float, float]:
    values = [float(v) for v in scores]
    n = len(values)
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, Z_95 * math.sqrt(variance / n)


@exercise(EXERCISES, "1.2", "the 95% confidence interval", confidence_interval_95_solution,
          imports="import math", names=("mean", "half_width"), rtol=5e-5)
def check_confidence_interval_95(g):
    r"""Check ``confidence_interval_95(scores)`` on per-task accuracies and MSEs (exercise 1.2).

    Write `confidence_interval_95(scores)`: the mean of per-task scores and the half-width
    of its 95% interval, $1.96\, s / \sqrt{n}$ with $s$ the sample standard deviation, as in
    the tables of this course (mean $\pm$ 95% interval over 600 test tasks).
    """
    for n, kind in [(600, "accuracies"), (25, "MSEs"), (2, "accuracies"), (100, "MSEs")]:
        if kind == "accuracies":
            scores = (0.9 + 0.05 * randn(n, g=g)).clamp(0, 1)
        else:
            scores = randn(n, g=g).exp()
        mean, half = _reference_interval(scores)
        std_biased = scores.std(unbiased=False).item()
        std = scores.std().item()
        yield Case((scores,), (mean, half), about=f"n={n} {kind}", mistakes=[
            ("the half-width uses the biased standard deviation (dividing by n); the sample "
             "standard deviation divides by n - 1 (torch.std's default).",
             (mean, Z_95 * std_biased / math.sqrt(n))),
            ("the half-width is 1.96 times the standard deviation of the scores; the interval "
             "is for their mean, so divide by sqrt(n) (the standard error).", (mean, Z_95 * std)),
            ("the half-width is the standard error s / sqrt(n); a 95% interval is 1.96 "
             "standard errors on each side.", (mean, std / math.sqrt(n))),
            ("you returned the full width of the interval; return the half-width (the interval "
             "is mean +- half_width).", (mean, 2 * half)),
            ("you returned the end points (low, high); return (mean, half_width).",
             (mean - half, mean + half)),
            ("the 95% quantile of the normal is 1.96, not 2.", (mean, 2 * std / math.sqrt(n))),
        ])


# ---------------------------------------------------------------------------------------------
# 1.3 The targets of a batch of sinusoid tasks

def sinusoid_targets_solution(x, amplitude, phase):
    """Targets y = A sin(x - b) of a batch of sinusoid tasks (MAML paper, section 5.1).

    ``x`` has shape (tasks, points, 1); ``amplitude`` (A) and ``phase`` (b) have shape
    (tasks,), one value per task. Returns y, with the shape of x.
    """
    a = amplitude.view(-1, 1, 1)  # (tasks, 1, 1): broadcasts over each task's points
    b = phase.view(-1, 1, 1)
    return a * torch.sin(x - b)


@exercise(EXERCISES, "1.3", "sinusoid task targets", sinusoid_targets_solution,
          hints={"shape": "Reshape amplitude and phase to (tasks, 1, 1) so that they "
                          "broadcast over the points of their own task."})
def check_sinusoid_targets(g):
    r"""Check ``sinusoid_targets(x, amplitude, phase)`` on random task batches (exercise 1.3).

    Write `sinusoid_targets(x, amplitude, phase)`: the targets $y = A \sin(x - b)$ of a
    batch of sinusoid tasks, with `x` of shape `(tasks, points, 1)` and one amplitude $A$ and
    phase $b$ per task (shape `(tasks,)`).
    """
    for tasks, points in [(4, 10), (3, 5), (1, 7), (6, 2)]:
        x = -5 + 10 * torch.rand(tasks, points, 1, generator=g, dtype=torch.float64)
        amplitude = 0.1 + 4.9 * torch.rand(tasks, generator=g, dtype=torch.float64)
        phase = math.pi * torch.rand(tasks, generator=g, dtype=torch.float64)
        expected = torch.stack([amplitude[i] * torch.sin(x[i] - phase[i]) for i in range(tasks)])
        plus = torch.stack([amplitude[i] * torch.sin(x[i] + phase[i]) for i in range(tasks)])
        shifted = torch.stack([amplitude[i] * torch.sin(x[i]) - phase[i] for i in range(tasks)])
        yield Case((x, amplitude, phase), expected, about=f"{tasks} tasks of {points} points",
                   mistakes=[
            ("the phase enters with the wrong sign: the family is A sin(x - b), the sine "
             "shifted right by b.", plus),
            ("the phase shifts the curve sideways, inside the sine: A sin(x - b), not "
             "A sin(x) - b.", shifted),
        ])
