"""Exercises of chapter 3 (Reptile and the Taylor analysis): the Reptile update, AvgGrad and
AvgGradInner of quadratic mini-batch losses, and the first-order coefficients of the expected
MAML, FOMAML and Reptile gradients.

Each exercise has a reference solution (``*_solution``, the text the notebook's solution cell
shows), an independent reference used by its check (``_reference_*``), and ``check_*(fn)``.
"""
from __future__ import annotations

from itertools import permutations

import torch
from torch.autograd.functional import hessian
from torch.func import grad as func_grad

from .checking import Case, Exercise, exercise, randn, random_spd

ALGORITHMS = ("maml", "fomaml", "reptile")

EXERCISES: dict[str, Exercise] = {}  # filled by the @exercise declarations below, in order


# ---------------------------------------------------------------------------------------------
# 3.1 The Reptile update

def reptile_outer_step_solution(theta, weights, eps):
    """Batched Reptile's outer step, theta + eps 1/n sum_i (W_i - theta) (Algorithm 2).

    ``theta`` is a dict {name: tensor}; ``weights`` is a list of n such dicts, the
    weights W_i = U^k(theta) adapted to task i; ``eps`` is the outer step size epsilon.
    Serial Reptile (Algorithm 1) is n = 1. Returns a new dict; ``theta`` is unchanged.
    """
    n = len(weights)
    return {name: theta[name] + eps * sum(w[name] - theta[name] for w in weights) / n
            for name in theta}


def _parameters(g: torch.Generator) -> dict:
    return {"weight": randn(3, 2, g=g), "bias": randn(3, g=g)}


@exercise(EXERCISES, "3.1", "the Reptile update", reptile_outer_step_solution,
          must_not_modify=("theta", "weights"), arg_names=("theta", "weights", "eps"))
def check_reptile_outer_step(g):
    r"""Check ``reptile_outer_step(theta, weights, eps)`` on random weights (exercise 3.1).

    Write `reptile_outer_step(theta, weights, eps)`, the outer step of batched Reptile,
    $\theta \leftarrow \theta + \epsilon \frac1n \sum_i (W_i - \theta)$, where `weights` is
    the list of the $n$ adapted parameter dicts $W_i$. Return a new dict and leave `theta`
    unchanged.
    """
    for n, eps in [(3, 0.1), (1, 0.5), (5, 0.25)]:
        theta = _parameters(g)
        weights = [_parameters(g) for _ in range(n)]
        mean_w = {k: torch.stack([w[k] for w in weights]).mean(0) for k in theta}

        def update(target, step, theta=theta):
            return {k: theta[k] + step * (target[k] - theta[k]) for k in theta}

        mistakes = [
            ("theta moved away from the adapted weights; Reptile moves towards them: "
             "theta + eps (W - theta).", update(mean_w, -eps)),
            ("you returned the mean of the adapted weights; Reptile moves only a fraction eps "
             "of the way towards them.", mean_w),
            ("you returned the step eps (W - theta); return the new parameters "
             "theta + eps (W - theta).", {k: eps * (mean_w[k] - theta[k]) for k in theta}),
        ]
        if n > 1:
            total = {k: sum(w[k] for w in weights) - (n - 1) * theta[k] for k in theta}
            mistakes += [
                ("you summed (W_i - theta) over the n tasks; average them (divide by n).",
                 update(total, eps)),
                ("you used only the first task's weights; average (W_i - theta) over all tasks.",
                 update(weights[0], eps)),
            ]
        yield Case((theta, weights, eps), update(mean_w, eps), mistakes=mistakes,
                   about=f"{n} task{'s' if n > 1 else ''}, eps={eps}")


# ---------------------------------------------------------------------------------------------
# 3.2 AvgGrad and AvgGradInner for quadratic mini-batch losses

def avg_grad_terms_quadratic_solution(A, b, theta):
    """AvgGrad and AvgGradInner of the Taylor analysis (Nichol et al., 2018, section 5).

    Mini-batch j has the loss L_j(theta) = 1/2 theta^T A_j theta + b_j^T theta, so its
    gradient is gbar_j = A_j theta + b_j and its Hessian Hbar_j = A_j. Then
        AvgGrad      = E[gbar_1]        = 1/m sum_j gbar_j,
        AvgGradInner = E[Hbar_2 gbar_1] = 1/(m(m-1)) sum over i != j of Hbar_j gbar_i,
    the mean over ordered pairs of *different* mini-batches.
    Shapes: A (m, d, d) with each A_j symmetric, b (m, d), theta (d,).
    Returns (avg_grad, avg_grad_inner), two tensors of shape (d,).
    """
    m = A.shape[0]
    grads = A @ theta + b  # row j is gbar_j
    pairs = [A[j] @ grads[i] for i in range(m) for j in range(m) if i != j]
    return grads.mean(0), torch.stack(pairs).mean(0)


def _reference_avg_terms(A, b, theta):
    """AvgGrad and AvgGradInner by autograd gradients and Hessians, over ordered pairs i != j."""
    losses = [lambda t, j=j: 0.5 * t @ A[j] @ t + b[j] @ t for j in range(A.shape[0])]
    grads = [func_grad(f)(theta) for f in losses]
    hessians = [hessian(f, theta) for f in losses]
    inner = [hessians[j] @ grads[i] for i, j in permutations(range(len(losses)), 2)]
    return torch.stack(grads).mean(0), torch.stack(inner).mean(0)


@exercise(EXERCISES, "3.2", "AvgGrad and AvgGradInner of quadratic losses",
          avg_grad_terms_quadratic_solution, points=2, names=("avg_grad", "avg_grad_inner"))
def check_avg_grad_terms_quadratic(g):
    r"""Check ``avg_grad_terms_quadratic(A, b, theta)`` against autograd (exercise 3.2).

    For $m$ mini-batches with quadratic losses
    $L_j(\theta) = \frac12 \theta^\top A_j \theta + b_j^\top \theta$, write
    `avg_grad_terms_quadratic(A, b, theta)` returning `(avg_grad, avg_grad_inner)`: AvgGrad
    $= \mathbb{E}[\bar g_1]$ and AvgGradInner $= \mathbb{E}[\bar H_2 \bar g_1]$, the
    expectation over ordered pairs of *different* mini-batches. The check compares them with
    autograd.
    """
    for m, d in [(3, 4), (2, 3), (5, 2)]:
        A = torch.stack([random_spd(d, 0.2, 3.0, g) for _ in range(m)])
        b, theta = randn(m, d, g=g), randn(d, g=g)
        avg_grad, inner = _reference_avg_terms(A, b, theta)
        grads = A @ theta + b
        all_pairs = A.mean(0) @ grads.mean(0)
        minus_b = A @ theta - b
        minus_inner = torch.stack([A[j] @ minus_b[i] for i, j in permutations(range(m), 2)]).mean(0)
        yield Case((A, b, theta), (avg_grad, inner), about=f"m={m} mini-batches, d={d}",
                   mistakes=[
            ("avg_grad_inner includes the pairs i = j (a mini-batch paired with itself, which is "
             "what (mean of the A_j) times (mean of the gbar_j) does); AvgGradInner = "
             "E[Hbar_2 gbar_1] averages over pairs of *different* mini-batches.",
             (avg_grad, all_pairs)),
            ("you summed over the m(m-1) ordered pairs; AvgGradInner is their mean.",
             (avg_grad, inner * m * (m - 1))),
            ("you summed over the m mini-batches; AvgGrad and AvgGradInner are means.",
             (avg_grad * m, inner * m * (m - 1))),
            ("the gradient of 1/2 theta^T A_j theta + b_j^T theta is A_j theta + b_j (plus b_j).",
             (minus_b.mean(0), minus_inner)),
        ])


# ---------------------------------------------------------------------------------------------
# 3.3 The first-order coefficients of the expected gradients

def predicted_gradient_solution(algorithm, avg_grad, avg_grad_inner, inner_lr, k):
    """E[g] of MAML, FOMAML or Reptile to first order in alpha (Nichol et al., 25-27).

    With k mini-batches per update (MAML and FOMAML take k - 1 inner steps and their
    outer gradient on the k-th; Reptile takes k steps and g = (theta - W) / alpha),
        E[g] = a AvgGrad - b alpha AvgGradInner + O(alpha^2),
    with coefficients (a, b) that depend on the algorithm and on k.
    ``algorithm`` is "maml", "fomaml" or "reptile"; returns a tensor like avg_grad.
    """
    a, b = {"maml": (1, 2 * (k - 1)),      # the Jacobian doubles FOMAML's inner term
            "fomaml": (1, k - 1),          # each inner step adds one alpha H g term
            "reptile": (k, k * (k - 1) / 2)}[algorithm]  # k steps; pairs j < l
    return a * avg_grad - b * inner_lr * avg_grad_inner


def _reference_coefficients(algorithm: str, k: int) -> tuple[float, float]:
    inner_steps = k - 1
    if algorithm == "reptile":  # step j (0-based) sees the j earlier steps: 0 + 1 + ... + (k-1)
        return float(k), float(sum(range(k)))
    # FOMAML's outer gradient sees each inner step once; MAML's Jacobian adds as much again
    return 1.0, float(inner_steps * (2 if algorithm == "maml" else 1))


def _explain_coefficients(case: Case, got, fn) -> str | None:
    algorithm, avg_grad, _, alpha, k = case.args
    ones, zeros = torch.ones_like(avg_grad), torch.zeros_like(avg_grad)
    try:
        a = fn(algorithm, ones, zeros, alpha, k)
        b = fn(algorithm, zeros, ones, alpha, k)
        a, b = float(torch.as_tensor(a).reshape(-1)[0]), -float(torch.as_tensor(b).reshape(-1)[0]) / alpha
    except Exception:  # not a function of the expected form: leave it to the generic diagnosis
        return None
    ref_a, ref_b = _reference_coefficients(algorithm, k)
    if abs(a - ref_a) < 1e-9 and abs(b - ref_b) < 1e-9:
        return None

    def formula(a, b):
        return f"{a:g} AvgGrad {'-' if b >= 0 else '+'} {abs(b):g} alpha AvgGradInner"

    return (f"wrong coefficients: for {algorithm} with k={k} your answer is {formula(a, b)}; the "
            f"expansion gives {formula(ref_a, ref_b)}. (Reptile's k steps each add a gradient; "
            "MAML's AvgGradInner weight is twice FOMAML's.)")


@exercise(EXERCISES, "3.3", "the Taylor coefficients of MAML, FOMAML and Reptile",
          predicted_gradient_solution, points=2, explain=_explain_coefficients)
def check_predicted_gradient(g):
    r"""Check ``predicted_gradient(algorithm, avg_grad, avg_grad_inner, inner_lr, k)`` (exercise 3.3).

    Write `predicted_gradient(algorithm, avg_grad, avg_grad_inner, inner_lr, k)`: the expected
    gradient of `"maml"`, `"fomaml"` or `"reptile"` with $k$ mini-batches per update, to first
    order in $\alpha$, as this chapter's expansion gives it: $a\,$AvgGrad
    $- b\,\alpha\,$AvgGradInner with the coefficients $(a, b)$ of each algorithm.
    """
    for k in (2, 4, 3):
        for algorithm in ALGORITHMS:
            avg_grad, inner = randn(5, g=g), randn(5, g=g)
            alpha = float(0.01 + 0.2 * torch.rand((), generator=g, dtype=torch.float64))
            a, b = _reference_coefficients(algorithm, k)
            yield Case((algorithm, avg_grad, inner, alpha, k), a * avg_grad - b * alpha * inner,
                       about=f"{algorithm}, k={k}, alpha={alpha:.3f}")
