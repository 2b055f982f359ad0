"""The Taylor analysis of first-order meta-learning (Nichol et al., 2018, section 5).

Each task offers m mini-batches with losses L_1, ..., L_m. At the initial point phi_1 = theta
write gbar_j = grad L_j(theta) and Hbar_j = hess L_j(theta), and define

    AvgGrad      = E[gbar_1]             (the gradient of the expected loss: joint training)
    AvgGradInner = E[Hbar_2 gbar_1]      (over ordered pairs of *different* mini-batches)

With k mini-batches per update (Reptile takes k SGD steps on L_1..L_k; MAML and FOMAML take
k - 1 inner steps on L_1..L_{k-1} and their outer gradient on L_k), expanding every gradient
to first order in the step size alpha gives (section 5.1, eqs. 25-27):

    E[g_MAML]    = AvgGrad - 2(k-1) alpha AvgGradInner + O(alpha^2)
    E[g_FOMAML]  = AvgGrad -  (k-1) alpha AvgGradInner + O(alpha^2)
    E[g_Reptile] = k AvgGrad - k(k-1)/2 alpha AvgGradInner + O(alpha^2),

where g_Reptile = (theta - W) / alpha. :func:`exact_gradients` computes the left-hand sides
exactly with autograd, averaging over every ordered choice of k distinct mini-batches, which is
exactly the expectation the right-hand sides use; their difference is then O(alpha^2).

A loss is ``loss_of(params, minibatch)``; params are dicts as everywhere in mlcourse.
"""
from __future__ import annotations

from itertools import permutations
from typing import Callable, Sequence

import torch

from ..functional import Params, inner_loop
from ..implicit import gradient_and_hvp
from ..utils import check_int, check_positive

ALGORITHMS = ("maml", "fomaml", "reptile")


def _mean(dicts: list[Params]) -> Params:
    return {k: torch.stack([d[k] for d in dicts]).mean(0) for k in dicts[0]}


def _check_tasks(tasks, k: int):
    if len(tasks) == 0:
        raise ValueError("need at least one task")
    fewest = min(len(t) for t in tasks)
    if not 1 <= k <= fewest:
        raise ValueError(f"k={k} mini-batches per update is out of range: allowed 1..{fewest} "
                         "(the fewest mini-batches any task offers; they must be distinct)")


def avg_grad_terms(loss_of: Callable, theta: Params, tasks: Sequence[Sequence]) -> tuple[Params, Params]:
    """(AvgGrad, AvgGradInner) at ``theta`` for ``tasks``: each a list of at least 2 mini-batches."""
    _check_tasks(tasks, 2)
    theta = {k: v.detach() for k, v in theta.items()}
    grads, inners = [], []
    for minibatches in tasks:  # average within each task, then over tasks (each task weighs the same)
        # gbar_j and v -> Hbar_j v for every mini-batch j (the graph of each gradient is reused)
        terms = [gradient_and_hvp(lambda p, b=b: loss_of(p, b), theta)[1:] for b in minibatches]
        grads.append(_mean([g for g, _ in terms]))
        inners.append(_mean([terms[j][1](terms[i][0]) for i, j in permutations(range(len(minibatches)), 2)]))
    return _mean(grads), _mean(inners)


def predicted_gradients(avg_grad: Params, avg_grad_inner: Params, inner_lr: float, k: int) -> dict:
    """The three expected gradients to first order in alpha (the module docstring's equations)."""
    check_positive("inner_lr", inner_lr)
    check_int("k", k, 1)
    coefficients = {"maml": (1.0, 2.0 * (k - 1)), "fomaml": (1.0, float(k - 1)), "reptile": (float(k), k * (k - 1) / 2)}
    return {name: {p: a * avg_grad[p] - b * inner_lr * avg_grad_inner[p] for p in avg_grad}
            for name, (a, b) in coefficients.items()}


def sequence_gradients(loss_of: Callable, theta: Params, minibatches: Sequence, inner_lr: float) -> dict:
    """g_MAML, g_FOMAML, g_Reptile for one ordered sequence of k mini-batches (exact, autograd)."""
    check_positive("inner_lr", inner_lr)
    k = len(minibatches)
    theta = {name: v.detach().requires_grad_() for name, v in theta.items()}
    losses = [lambda p, b=b: loss_of(p, b) for b in minibatches]
    with torch.enable_grad():
        phi = inner_loop(losses[:-1], theta, inner_lr, k - 1, first_order=False, vectorised=False)
        test_loss = losses[-1](phi)
        maml = torch.autograd.grad(test_loss, list(theta.values()), retain_graph=True)
        fomaml = torch.autograd.grad(test_loss, list(phi.values())) if k > 1 else maml
    weights = inner_loop(losses, theta, inner_lr, k, first_order=True, vectorised=False)
    names = list(theta)
    return {"maml": dict(zip(names, maml)), "fomaml": dict(zip(names, fomaml)),
            "reptile": {p: ((theta[p] - weights[p]) / inner_lr).detach() for p in names}}


def exact_gradients(loss_of: Callable, theta: Params, tasks: Sequence[Sequence], inner_lr: float, k: int) -> dict:
    """E[g] for MAML, FOMAML and Reptile: the mean over tasks and over all ordered k-tuples of
    distinct mini-batches of each task (the expectation the expansion is taken under)."""
    _check_tasks(tasks, k)
    per_task = {name: [] for name in ALGORITHMS}
    for minibatches in tasks:  # as in avg_grad_terms: within each task first, then over tasks
        per_sequence = {name: [] for name in ALGORITHMS}
        for order in permutations(range(len(minibatches)), k):
            grads = sequence_gradients(loss_of, theta, [minibatches[i] for i in order], inner_lr)
            for name in ALGORITHMS:
                per_sequence[name].append(grads[name])
        for name in ALGORITHMS:
            per_task[name].append(_mean(per_sequence[name]))
    return {name: _mean(per_task[name]) for name in ALGORITHMS}
