"""Exercises of chapter 9 (MAML++): the multi-step loss's annealed importance weights, a forward
pass of per-step batch normalisation, and the cosine-annealed outer step size.

Each exercise has a reference solution (``*_solution``, the text the notebook's solution cell
shows), an independent reference used by its check (a mixture of the uniform and the one-hot
weights, a loop over channels with ``torch.var``, the half-angle form cos^2 of the schedule), and
``check_*(fn)``.
"""
from __future__ import annotations

import math

import torch

from .checking import Case, Exercise, exercise, randn

EXERCISES: dict[str, Exercise] = {}  # filled by the @exercise declarations below, in order


# ---------------------------------------------------------------------------------------------
# 9.1 The multi-step loss's importance weights

def msl_weights_solution(steps, progress):
    """MSL's importance weights v_0, ..., v_{N-1} of the query losses after each step.

    ``steps`` is N >= 1; ``progress`` is how far the annealing has gone (0 at its
    start, 1 at its end; values outside [0, 1] count as 0 or 1). With rho = progress
    clamped to [0, 1], every earlier step gets (1 - rho) / N and the last step gets
    the rest, so the weights start uniform (1/N each), end one-hot on the last step
    (MAML's objective) and always sum to 1. Returns a float64 tensor of shape (N,).
    """
    rho = min(max(float(progress), 0.0), 1.0)
    weights = torch.full((steps,), (1.0 - rho) / steps, dtype=torch.float64)
    weights[-1] = 1.0 - weights[:-1].sum()
    return weights


def _mix(steps, rho):
    """(1 - rho) * uniform + rho * one-hot on the last step: the same weights, built another way."""
    one_hot = torch.zeros(steps, dtype=torch.float64)
    one_hot[-1] = 1.0
    return (1 - rho) * torch.ones(steps, dtype=torch.float64) / steps + rho * one_hot


@exercise(EXERCISES, "9.1", "the multi-step loss weights", msl_weights_solution)
def check_msl_weights(g):
    r"""Check ``msl_weights(steps, progress)`` at several points of the annealing (exercise 9.1).

    Write `msl_weights(steps, progress)`: the importance weights $v_0, \dots, v_{N-1}$ that
    MAML++'s multi-step loss gives the query losses after each of the $N$ inner steps. With
    $\rho$ = `progress` clamped to $[0, 1]$, every step but the last gets $(1 - \rho)/N$ and
    the last gets the rest: uniform at the start of meta-training, one-hot on the last step
    (MAML's objective) once the annealing is over, and always summing to 1.
    """
    cases = [(5, 0.0), (5, 0.3), (3, 0.75), (4, 1.0), (5, 2.5), (2, -0.5), (1, 0.4)]
    for steps, progress in cases:
        rho = min(max(progress, 0.0), 1.0)
        mistakes = []
        if not 0.0 <= progress <= 1.0:
            mistakes.append((f"progress={progress} is outside [0, 1]: clamp it first (before its "
                             "start the weights are uniform, after its end one-hot on the last "
                             "step; never negative).", _mix(steps, progress)))
        if steps > 1:
            mistakes += [
                ("the weight must move to the *last* step (index N - 1), whose loss is MAML's; "
                 "yours moves to the first.", lambda s=steps, r=rho: _mix(s, r).flip(0)),
                ("your weights do not sum to 1: the last step gets (1 - rho) / N plus rho, "
                 "i.e. everything the other steps do not get.",
                 lambda s=steps, r=rho: torch.cat([_mix(s, r)[:-1], torch.tensor([r], dtype=torch.float64)])),
                ("the annealing runs the other way: uniform at progress 0, one-hot on the last "
                 "step at progress 1.", lambda s=steps, r=rho: _mix(s, 1 - r)),
            ]
        yield Case((steps, progress), _mix(steps, rho), about=f"N={steps}, progress={progress}",
                   mistakes=mistakes)


# ---------------------------------------------------------------------------------------------
# 9.2 Per-step batch normalisation

def per_step_batch_norm_solution(
        x, step, weight, bias, running_mean, running_var, use_running_stats, eps=1e-5):
    """Batch normalisation with one set of statistics and weights per step (BNRS, BNWB).

    ``x`` is (B, C, H, W); ``weight``, ``bias``, ``running_mean`` and
    ``running_var`` are (N, C), row s belonging to inner step s; ``step`` is s. With
    ``use_running_stats`` the mean and variance are running_mean[s] and
    running_var[s]; otherwise they are the batch's own, per channel over the batch
    and the spatial positions (dims 0, 2, 3; the variance biased, dividing by the
    count). Then
        y = (x - mean) / sqrt(var + eps) * weight[s] + bias[s],   channel by channel.
    Returns a tensor shaped like x.
    """
    shape = (1, -1, 1, 1)
    if use_running_stats:
        mean, var = running_mean[step].view(shape), running_var[step].view(shape)
    else:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    normalised = (x - mean) / torch.sqrt(var + eps)
    return normalised * weight[step].view(shape) + bias[step].view(shape)


def _reference_bn(x, step, weight, bias, running_mean, running_var, use_running_stats, eps=1e-5,
                  unbiased=False, per_example=False):
    out = torch.empty_like(x)
    for c in range(x.shape[1]):
        channel = x[:, c]
        if use_running_stats:
            mean, var = running_mean[step, c], running_var[step, c]
        elif per_example:  # instance statistics: each example alone (a planted mistake)
            mean = channel.mean(dim=(1, 2), keepdim=True)
            var = channel.var(dim=(1, 2), unbiased=unbiased, keepdim=True)
        else:
            mean, var = channel.mean(), torch.var(channel.reshape(-1), unbiased=unbiased)
        out[:, c] = (channel - mean) / (var + eps).sqrt() * weight[step, c] + bias[step, c]
    return out


@exercise(EXERCISES, "9.2", "per-step batch normalisation", per_step_batch_norm_solution, points=2)
def check_per_step_batch_norm(g):
    r"""Check ``per_step_batch_norm(...)`` against a loop over channels, with batch and running statistics (exercise 9.2).

    Write `per_step_batch_norm`, whose arguments are `x, step, weight, bias`,
    `running_mean, running_var, use_running_stats` and `eps=1e-5`: the forward pass of
    a batch-norm layer of MAML++, which
    keeps one row of statistics (BNRS) and of weights and biases (BNWB) for each inner step
    $s$. Inner step $s$ normalises with row $s$: the running mean and variance of that step
    when `use_running_stats` is true, otherwise the batch's own statistics (per channel, over
    the batch and the spatial positions, the biased variance); then it scales by
    `weight[s]` and shifts by `bias[s]`.
    """
    for batch, channels, size, steps, step, running in [(6, 3, 4, 5, 2, False), (4, 2, 3, 3, 1, True),
                                                         (5, 4, 2, 4, 3, False), (3, 3, 3, 2, 0, True),
                                                         (8, 2, 5, 5, 4, False)]:
        x = 2.0 + 1.5 * randn(batch, channels, size, size, g=g)
        weight, bias = 1 + 0.5 * randn(steps, channels, g=g), randn(steps, channels, g=g)
        running_mean = randn(steps, channels, g=g)
        running_var = 0.5 + torch.rand(steps, channels, generator=g, dtype=torch.float64)
        args = (x, step, weight, bias, running_mean, running_var, running)
        mistakes = [
            ("you used the batch's statistics where `use_running_stats` is true: normalise with "
             "running_mean[step] and running_var[step]." if running else
             "you used the running statistics where `use_running_stats` is false: normalise "
             "with the batch's own mean and variance.",
             lambda a=args: _reference_bn(*a[:6], not a[6])),
        ]
        if step != 0:
            mistakes.append(("you used row 0 (the first step's set): inner step s must use row s "
                             "of weight, bias and the running statistics.",
                             lambda a=args: _reference_bn(a[0], 0, *a[2:])))
        if not running:
            mistakes += [
                ("batch norm divides by the biased variance (the mean of the squared deviations, "
                 "unbiased=False), not the unbiased one.",
                 lambda a=args: _reference_bn(*a, unbiased=True)),
                ("you normalised each example on its own: the statistics are over the batch and "
                 "the spatial positions together (dims 0, 2, 3), one mean and variance per "
                 "channel.", lambda a=args: _reference_bn(*a, per_example=True)),
            ]
        yield Case(args, _reference_bn(*args),
                   about=f"x of shape {tuple(x.shape)}, step {step} of {steps}, "
                         + ("running" if running else "batch") + " statistics",
                   mistakes=mistakes)


# ---------------------------------------------------------------------------------------------
# 9.3 The cosine-annealed outer step size

def cosine_schedule_solution(beta, iterations, min_factor):
    """The outer step size at every meta-iteration t = 0, ..., T - 1, cosine-annealed:

        beta_t = beta * (f + (1 - f) * (1 + cos(pi t / T)) / 2),   f = ``min_factor``,

    T = ``iterations``. It starts at exactly beta and falls along a half cosine towards
    f * beta. Returns a float64 tensor of shape (T,).
    """
    t = torch.arange(iterations, dtype=torch.float64)
    cosine = (1 + torch.cos(math.pi * t / iterations)) / 2
    return beta * (min_factor + (1 - min_factor) * cosine)


def _reference_schedule(beta, iterations, min_factor, denominator=None, floor=True, shifted=False,
                        rising=False):
    """The half-angle form: (1 + cos x) / 2 = cos^2(x / 2), element by element."""
    T = iterations if denominator is None else denominator
    out = []
    for t in range(iterations):
        c = math.cos(math.pi * t / (2 * T)) ** 2
        c = 1 - c if rising else c
        if not floor:
            out.append(beta * c)
        elif shifted:
            out.append(beta * (min_factor + c))
        else:
            out.append(beta * min_factor + beta * (1 - min_factor) * c)
    return torch.tensor(out, dtype=torch.float64)


def _explain_schedule(case, got, fn):
    """A schedule that ends above where it starts rises, whatever its shape."""
    values = torch.as_tensor(got, dtype=torch.float64).flatten()
    if values.numel() > 1 and values[-1] > values[0]:
        return ("the step size must fall: (1 + cos(pi t / T)) / 2 goes from 1 down to 0; "
                "yours rises.")
    return None


@exercise(EXERCISES, "9.3", "the cosine-annealed outer step size", cosine_schedule_solution,
          explain=_explain_schedule)
def check_cosine_schedule(g):
    r"""Check ``cosine_schedule(beta, iterations, min_factor)`` against the half-angle form (exercise 9.3).

    Write `cosine_schedule(beta, iterations, min_factor)`: the outer (meta) step size at every
    meta-iteration $t = 0, \dots, T-1$ under MAML++'s cosine annealing,
    $\beta_t = \beta\,\big(f + (1 - f)\,\tfrac12 (1 + \cos(\pi t / T))\big)$ with
    $f$ = `min_factor`: exactly $\beta$ at the start, falling along a half cosine towards
    $f\beta$ at the end.
    """
    for beta, iterations, factor in [(1e-3, 10, 0.01), (0.5, 7, 0.2), (2.0, 25, 0.0), (1e-2, 4, 0.5)]:
        args = (beta, iterations, factor)
        mistakes = [
            ("the step size must fall: (1 + cos(pi t / T)) / 2 goes from 1 down to 0; yours rises.",
             lambda a=args: _reference_schedule(*a, rising=True)),
            ("divide by T = iterations, not T - 1: pi * t / iterations (the last iteration, "
             "T - 1, stays just above the floor).", lambda a=args: _reference_schedule(*a, denominator=a[1] - 1)),
        ]
        if factor > 0:
            mistakes += [
                ("the schedule must end near min_factor * beta, not at 0: add the floor "
                 "f * beta and scale the cosine part by (1 - f).",
                 lambda a=args: _reference_schedule(*a, floor=False)),
                ("scale the cosine part by (1 - min_factor): as written your schedule starts at "
                 "(1 + f) * beta instead of beta.", lambda a=args: _reference_schedule(*a, shifted=True)),
            ]
        yield Case(args, _reference_schedule(*args), about=f"beta={beta}, T={iterations}, f={factor}",
                   mistakes=mistakes)
