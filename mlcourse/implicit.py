"""Implicit differentiation tools: Hessian-vector products and conjugate gradient over parameter dicts.

Implicit MAML (Rajeswaran et al., 2019) needs, per task, the solution g of the linear system

    (I + H / lambda) g = v,     H = grad^2 L_tr(phi),  v = grad L_test(phi)        (iMAML eq. 7)

without ever forming H (a P x P matrix for P parameters). Conjugate gradient solves it with one
Hessian-vector product H u per iteration, and an HVP costs a few gradient evaluations:

* double backward (reverse-over-reverse): differentiate <grad L(phi), u> once more; the graph of
  grad L(phi) can be built once and reused for every u (:func:`hvp_operator` does);
* forward-over-reverse: ``torch.func.jvp`` of ``torch.func.grad(L)`` along u.

Which is faster depends on the model and the machine: :func:`time_hvp` measures it, and
``DEFAULT_HVP`` holds the winner measured on this course's 2-core CPU (numbers in its comment).
Parameters are dicts ``{name: tensor}`` keyed like ``model.named_parameters()``.
"""
from __future__ import annotations

import math
import statistics
import time
import warnings
from typing import Callable, Tuple

import torch
from torch.func import grad as func_grad
from torch.func import jvp

from .functional import Params, axpy, dot, flatten, norm, unflatten
from .utils import check_int


# Measured with ``time_hvp`` (one thread, torch 2.14 CPU; a 5-way 1-shot support set of 5 images, a
# sinusoid support set of 10 points), milliseconds per Hessian-vector product within a 5-product solve:
#   Omniglot conv net:  double backward, graph reused 6.8 | fresh double backward 10.1 | forward-over-reverse 13.2
#   sinusoid MLP:       double backward, graph reused 0.25 | fresh double backward 0.40 | forward-over-reverse 1.45
# (the notebook of chapter 5 re-measures them). Reverse-over-reverse with the gradient graph built
# once per solve wins on both, so it is the default.
DEFAULT_HVP = "double_backward"
HVP_METHODS = ("double_backward", "forward_over_reverse")


class CGNotConvergedWarning(UserWarning):
    """Conjugate gradient stopped (iteration cap or non-positive curvature) above its tolerance."""


# ---------------------------------------------------------------------------------------------
# Hessian-vector products of a scalar loss_of(params)

def _leaves(params: Params) -> Params:
    return {k: v.detach().requires_grad_() for k, v in params.items()}


def hvp_double_backward(loss_of: Callable[[Params], torch.Tensor], params: Params, v: Params) -> Params:
    """H(params) v by reverse-over-reverse: grad_phi <grad_phi L(phi), v>. No graph is kept."""
    return hvp_operator(loss_of, params, "double_backward")(v)


def hvp_forward_over_reverse(loss_of: Callable[[Params], torch.Tensor], params: Params, v: Params) -> Params:
    """H(params) v by forward-over-reverse: the directional derivative of grad L along v (jvp)."""
    primals = {k: t.detach() for k, t in params.items()}
    tangents = {k: v[k].detach().to(primals[k].dtype) for k in primals}
    try:
        with torch.enable_grad():
            _, out = jvp(func_grad(loss_of), (primals,), (tangents,))
    except RuntimeError as err:
        if "ZeroTensor" not in str(err):
            raise
        raise RuntimeError(
            "forward-over-reverse failed inside the loss's double backward (PyTorch issue 123996: "
            "F.mse_loss(reduction='mean') under jvp of grad); write the loss from primitive ops, e.g. "
            "((out - y) ** 2).mean(), or use method='double_backward'") from err
    return {k: t.detach() for k, t in out.items()}


def hvp(loss_of: Callable[[Params], torch.Tensor], params: Params, v: Params, method: str = DEFAULT_HVP) -> Params:
    """H(params) v, the Hessian of ``loss_of`` at ``params`` times ``v``, by ``method`` (see HVP_METHODS)."""
    return hvp_operator(loss_of, params, method)(v)


def hvp_operator(loss_of: Callable[[Params], torch.Tensor], params: Params, method: str = DEFAULT_HVP):
    """A function u -> H(params) u for repeated products at one point (as CG needs).

    ``double_backward`` builds the graph of grad L(params) once and reuses it for every u;
    ``forward_over_reverse`` runs one jvp of grad L per u. Results are detached: nothing here is
    differentiated further (iMAML's meta-gradient needs H u only as a number).
    """
    if method not in HVP_METHODS:
        raise ValueError(f"method={method!r} is unknown: allowed {', '.join(HVP_METHODS)}")
    if method == "forward_over_reverse":
        return lambda u: hvp_forward_over_reverse(loss_of, params, u)
    return gradient_and_hvp(loss_of, params)[2]


def gradient_and_hvp(loss_of: Callable[[Params], torch.Tensor], params: Params):
    """``(loss, gradient, u -> H u)`` at ``params``, all detached; the products reuse the graph of
    the gradient (double backward), so a solve pays one gradient-with-graph plus one backward per product."""
    leaves = _leaves(params)
    with torch.enable_grad():
        loss = loss_of(leaves)
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
    names = list(leaves)

    def product(u: Params) -> Params:
        with torch.enable_grad():
            out = torch.autograd.grad(grads, list(leaves.values()), [u[k].detach() for k in names],
                                      retain_graph=True, allow_unused=True)
        return {k: (torch.zeros_like(leaves[k]) if o is None else o.detach()) for k, o in zip(names, out)}

    return loss.detach(), {k: g.detach() for k, g in zip(names, grads)}, product


def gauss_newton_operator(output_of: Callable[[Params], torch.Tensor],
                          loss_of_output: Callable[[torch.Tensor], torch.Tensor], params: Params):
    """A function u -> G u for the generalised Gauss-Newton matrix G = J^T H_out J at ``params``.

    ``output_of(params)`` is the network's output f(phi) (logits or predictions), J its Jacobian,
    and H_out the Hessian of ``loss_of_output`` in that output (Schraudolph, 2002). The full
    Hessian is G plus a term weighted by the loss's gradient in the output; G drops that term,
    and because the loss is convex in the output (cross-entropy, squared error) G is positive
    semi-definite everywhere, which H is not. At a point where the network fits its data the
    dropped term vanishes and G = H. One product costs a jvp (J u) and a vjp (J^T w).
    """
    primal = {k: v.detach() for k, v in params.items()}
    out, pullback = torch.func.vjp(output_of, primal)
    out_leaf = out.detach().requires_grad_()
    with torch.enable_grad():
        out_grad = torch.autograd.grad(loss_of_output(out_leaf), out_leaf, create_graph=True)[0]

    def product(u: Params) -> Params:
        _, ju = jvp(output_of, (primal,), ({k: u[k].detach() for k in primal},))
        with torch.enable_grad():
            h_ju = torch.autograd.grad(out_grad, out_leaf, ju, retain_graph=True)[0]
        return {k: v.detach() for k, v in pullback(h_ju)[0].items()}

    return product


def explicit_hessian(loss_of: Callable[[Params], torch.Tensor], params: Params) -> torch.Tensor:
    """The dense P x P Hessian of ``loss_of`` at ``params`` (flattened in dict order): for checks only."""
    like = {k: v.detach() for k, v in params.items()}
    flat = flatten(like)
    return torch.autograd.functional.hessian(lambda f: loss_of(unflatten(f, like)), flat)


# ---------------------------------------------------------------------------------------------
# Conjugate gradient

def conjugate_gradient(matvec: Callable[[Params], Params], b: Params, max_iters: int, tol: float = 1e-10,
                       x0: Params | None = None, warn: bool = True) -> Tuple[Params, int, float]:
    """Solve A x = b for a symmetric positive-definite A given only ``matvec(u) = A u``.

    CG minimises the quadratic q(x) = 1/2 x^T A x - b^T x (whose gradient is A x - b), moving
    along A-conjugate directions; in exact arithmetic it is exact after P iterations and, after
    k, its error shrinks like ((sqrt(kappa) - 1) / (sqrt(kappa) + 1))^k for condition number kappa.

    Stops when the relative residual ||b - A x|| / ||b|| <= ``tol`` or after ``max_iters``
    iterations, or earlier if a direction of non-positive curvature p^T A p <= 0 shows up (A is
    then not positive definite). Returns ``(x, iterations used, final relative residual)``.
    If it stops above ``tol`` and ``warn`` is set, it warns (CGNotConvergedWarning) with the
    residual, so a truncated solve is never silent.
    """
    check_int("max_iters", max_iters, 1)
    if not (tol >= 0):
        raise ValueError(f"tol={tol!r} is out of range: allowed a number >= 0")
    b = {k: v.detach() for k, v in b.items()}
    b_norm = norm(b).item()
    if b_norm == 0.0:
        return {k: torch.zeros_like(v) for k, v in b.items()}, 0, 0.0
    if x0 is None:
        x = {k: torch.zeros_like(v) for k, v in b.items()}
        r = dict(b)
    else:
        x = {k: v.detach().clone() for k, v in x0.items()}
        r = axpy(-1.0, matvec(x), b)
    p = dict(r)
    rs = dot(r, r)
    iters, reason = 0, "iteration cap"
    while iters < max_iters and math.sqrt(rs.item()) > tol * b_norm:
        Ap = matvec(p)
        curvature = dot(p, Ap)
        if curvature.item() <= 0:
            reason = f"non-positive curvature p^T A p = {curvature.item():.3g}"
            break
        step = rs / curvature
        x = axpy(step, p, x)
        r = axpy(-step, Ap, r)
        rs_new = dot(r, r)
        p = axpy(rs_new / rs, p, r)
        rs = rs_new
        iters += 1
    residual = math.sqrt(rs.item()) / b_norm
    if warn and residual > tol:
        warnings.warn(f"conjugate gradient stopped ({reason}) after {iters} iterations with relative "
                      f"residual {residual:.3g} > tol={tol:g}", CGNotConvergedWarning, stacklevel=2)
    return x, iters, residual


# ---------------------------------------------------------------------------------------------
# Newton's method without a Hessian

def newton_cg_step(loss_of: Callable[[Params], torch.Tensor], phi: Params, cg_steps: int = 5,
                   max_backtracks: int = 10, hvp_method: str = DEFAULT_HVP, curvature=None,
                   max_expansions: int = 0) -> Params:
    """One Hessian-free (truncated) Newton step on ``loss_of`` with a backtracking (Armijo) line search.

    The direction d solves C d = -grad loss by ``cg_steps`` of CG, where C is the Hessian of the
    loss or, if given, ``curvature(phi)`` (a function returning u -> C u, e.g. a Gauss-Newton
    matrix plus the proximal term's lambda I: a Gauss-Newton step); the step halves up to
    ``max_backtracks`` times until the Armijo condition holds (else phi is returned unchanged).
    With ``max_expansions`` > 0 a full step that holds is then doubled, up to that many times, while
    the loss keeps falling and the Armijo condition keeps holding: the quadratic model of a
    cross-entropy overestimates its curvature along the step as the fit saturates the softmax."""
    value, grad, hess = gradient_and_hvp(loss_of, phi)
    if curvature is not None:
        hess = curvature(phi)
    elif hvp_method != "double_backward":
        hess = hvp_operator(loss_of, phi, hvp_method)
    # Truncated Newton: a few CG iterations on H d = -grad. Stopping early is the
    # method (not an error), so no warning; CG from 0 keeps d a descent direction while the
    # curvature met is positive.
    direction, _, _ = conjugate_gradient(hess, {k: -g for k, g in grad.items()}, cg_steps,
                                         tol=1e-10, warn=False)
    slope = dot(grad, direction)
    if not (slope < 0):  # no curvature information (e.g. negative curvature at once): steepest descent
        direction = {k: -g for k, g in grad.items()}
        slope = -dot(grad, grad)
    if slope == 0:
        return phi  # already stationary
    step = 1.0
    for _ in range(max_backtracks + 1):
        trial = axpy(step, direction, phi)
        trial_value = loss_of(trial)
        if trial_value <= value + 1e-4 * step * slope:
            break
        step *= 0.5
    else:
        return phi  # no decrease found: keep phi (the line search never makes G worse)
    if step == 1.0:
        for _ in range(max_expansions):
            longer = axpy(2 * step, direction, phi)
            longer_value = loss_of(longer)
            if not (longer_value < trial_value and longer_value <= value + 2e-4 * step * slope):
                break
            trial, trial_value, step = longer, longer_value, 2 * step
    return trial


def extreme_eigenvalues(matvec: Callable[[Params], Params], like: Params, iterations: int = 50,
                        seed: int = 0) -> Tuple[float, float]:
    """``(lowest, highest)`` eigenvalue of a symmetric operator, by power iteration: first on
    ``matvec`` (the eigenvalue of largest magnitude), then on ``matvec - that * I`` (the other
    end of the spectrum). Cheap (2 x ``iterations`` products) and approximate: enough to tell
    whether I + H / lambda is positive definite."""
    check_int("iterations", iterations, 1)
    g = torch.Generator().manual_seed(seed)

    def dominant(shift: float) -> float:
        u = {k: torch.randn(v.shape, generator=g, dtype=v.dtype).to(v.device) for k, v in like.items()}
        value = 0.0
        for _ in range(iterations):
            size = norm(u)
            u = {k: x / size for k, x in u.items()}
            w = axpy(-shift, u, matvec(u))
            value = dot(u, w).item()  # Rayleigh quotient of the shifted operator
            u = w
        return value + shift

    first = dominant(0.0)
    second = dominant(first)
    return (min(first, second), max(first, second))


# ---------------------------------------------------------------------------------------------
# Measuring

def time_hvp(loss_of: Callable[[Params], torch.Tensor], params: Params, repeats: int = 20,
             cg_iters: int = 5) -> dict[str, float]:
    """Seconds per Hessian-vector product within a ``cg_iters``-product solve, for each method.

    ``double_backward (graph reused)`` pays one gradient-with-graph per solve and then one
    backward per product; ``double_backward (fresh)`` and ``forward_over_reverse`` pay their
    full cost per product. Median over ``repeats`` solves.
    """
    g = torch.Generator().manual_seed(0)
    v = {k: torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device) for k, t in params.items()}
    runs = {
        "double_backward (graph reused)": lambda: [op(v) for op in [hvp_operator(loss_of, params, "double_backward")]
                                                   for _ in range(cg_iters)],
        "double_backward (fresh)": lambda: [hvp_double_backward(loss_of, params, v) for _ in range(cg_iters)],
        "forward_over_reverse": lambda: [hvp_forward_over_reverse(loss_of, params, v) for _ in range(cg_iters)],
    }
    out = {}
    for name, run in runs.items():
        run()  # warm-up
        times = []
        for _ in range(repeats):
            tic = time.perf_counter()
            run()
            times.append(time.perf_counter() - tic)
        out[name] = statistics.median(times) / cg_iters
    return out
