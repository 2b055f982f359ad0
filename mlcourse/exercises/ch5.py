"""Exercises of chapter 5 (implicit MAML): one conjugate-gradient iteration, the implicit
meta-gradient (I + H/lambda)^-1 v of a small matrix, and the same solve on a network with
Hessian-vector products and conjugate gradient.

Each exercise has a reference solution (``*_solution``, the text the notebook's solution cell
shows), an independent reference used by its check (``_reference_*``: eigendecompositions and
dense Hessians where the solutions iterate), and ``check_*(fn)``.
"""
from __future__ import annotations

import torch
from torch.autograd.functional import hessian
from torch.func import functional_call

from mlcourse.implicit import conjugate_gradient, hvp
from mlcourse.nn import MLP
from mlcourse.tasks import Sinusoid

from .checking import Case, Exercise, exercise, randn, random_spd, seeded

EXERCISES: dict[str, Exercise] = {}  # filled by the @exercise declarations below, in order


# ---------------------------------------------------------------------------------------------
# 5.1 One iteration of conjugate gradient

def cg_step_solution(A, x, r, p):
    """One iteration of conjugate gradient for A x = b (Hestenes and Stiefel, 1952):

        alpha = r^T r / p^T A p,    x' = x + alpha p,    r' = r - alpha A p,
        beta = r'^T r' / r^T r,     p' = r' + beta p.
    A is (d, d) symmetric positive definite; x is the iterate, r = b - A x its residual
    and p the search direction, all (d,). Returns (x', r', p').
    """
    Ap = A @ p
    alpha = (r @ r) / (p @ Ap)
    x_new = x + alpha * p
    r_new = r - alpha * Ap
    beta = (r_new @ r_new) / (r @ r)
    return x_new, r_new, r_new + beta * p


def _reference_cg_state(A, b, iterations):
    """The CG state after some iterations, from the A-conjugacy and residual definitions."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    for _ in range(iterations):
        step = torch.dot(r, r) / torch.dot(p, torch.mv(A, p))
        x = x + step * p
        r_next = b - torch.mv(A, x)  # recomputed from its definition, not updated
        p = r_next - (torch.dot(r_next, torch.mv(A, p)) / torch.dot(p, torch.mv(A, p))) * p
        r = r_next
    return x, r, p


def _cg_variant(A, x, r, p, residual_sign=-1.0, beta="new/old", curvature=True):
    """One CG iteration with one thing changed, for recognising common mistakes."""
    Ap = A @ p
    alpha = (r @ r) / ((p @ Ap) if curvature else (p @ p))
    x1, r1 = x + alpha * p, r + residual_sign * alpha * Ap
    b = {"new/old": (r1 @ r1) / (r @ r), "old/new": (r @ r) / (r1 @ r1), "none": 0.0}[beta]
    return x1, r1, r1 + b * p


def _cg_variants(A, x, r, p):
    x1, r1, p1 = _cg_variant(A, x, r, p)
    return [
        ("the residual update has the wrong sign: r = b - A x, so x + alpha p gives "
         "r - alpha A p.", _cg_variant(A, x, r, p, residual_sign=1.0)),
        ("the new direction is the residual alone (steepest descent); CG adds beta p, "
         "beta = r'^T r' / r^T r, to keep the directions A-conjugate.",
         _cg_variant(A, x, r, p, beta="none")),
        ("beta is upside down: beta = r'^T r' / r^T r (new residual over old).",
         _cg_variant(A, x, r, p, beta="old/new")),
        ("the step size must divide by the curvature along p: alpha = r^T r / p^T A p.",
         _cg_variant(A, x, r, p, curvature=False)),
        ("you returned the parts in another order; return (x, r, p).", (x1, p1, r1)),
    ]


@exercise(EXERCISES, "5.1", "one conjugate-gradient iteration", cg_step_solution, names=("x", "r", "p"))
def check_cg_step(g):
    """Check ``cg_step(A, x, r, p)`` on states taken from the middle of CG runs (exercise 5.1).

    Write `cg_step(A, x, r, p)`: one iteration of conjugate gradient for $Ax = b$, from the
    iterate $x$, its residual $r = b - Ax$ and the search direction $p$ to the next
    $(x, r, p)$. The check starts from states in the middle of CG runs, so the direction
    update matters.
    """
    for d, done in [(4, 1), (6, 0), (5, 2), (8, 3)]:
        A, b = random_spd(d, 0.5, 5.0, g), randn(d, g=g)
        x, r, p = _reference_cg_state(A, b, done)
        about = f"d={d}, after {done} iteration{'s' * (done != 1)}"
        yield Case((A, x, r, p), _reference_cg_state(A, b, done + 1),
                   mistakes=_cg_variants(A, x, r, p), about=about)


# ---------------------------------------------------------------------------------------------
# 5.2 The implicit meta-gradient of a small matrix

def implicit_meta_gradient_solution(H, v, lam):
    """iMAML's meta-gradient g = (I + H / lambda)^-1 v (iMAML eq. 7, notation-imaml).

    The implicit Jacobian d phi / d theta = (I + H / lambda)^-1 of the proximal inner
    problem applied to v = grad L_test(phi). Solve the linear system rather than invert.
    H is (d, d) symmetric with I + H / lambda positive definite, v is (d,), lam > 0.
    """
    eye = torch.eye(H.shape[0], dtype=H.dtype)
    return torch.linalg.solve(eye + H / lam, v)


def _reference_implicit(H, v, lam):
    """(I + H / lambda)^-1 v in the eigenbasis of H: each component divided by 1 + lambda_i / lambda."""
    evals, O = torch.linalg.eigh(H)
    return O @ ((O.T @ v) / (1 + evals / lam))


@exercise(EXERCISES, "5.2", "the implicit meta-gradient of a small matrix",
          implicit_meta_gradient_solution)
def check_implicit_meta_gradient(g):
    r"""Check ``implicit_meta_gradient(H, v, lam)`` on random symmetric H (exercise 5.2).

    Write `implicit_meta_gradient(H, v, lam)`: $g = (I + H/\lambda)^{-1} v$, the implicit
    Jacobian of the proximal inner problem applied to the query gradient $v$, for a small
    explicit Hessian $H$.
    """
    for d, lam in [(3, 2.0), (5, 0.5), (4, 10.0), (2, 1.0)]:
        H = random_spd(d, 0.1, 4.0, g) - 0.3 * lam * torch.eye(d, dtype=torch.float64)  # indefinite
        v = randn(d, g=g)
        eye = torch.eye(d, dtype=torch.float64)
        yield Case((H, v, lam), _reference_implicit(H, v, lam), about=f"d={d}, lambda={lam}",
                   mistakes=[
            ("you returned v itself: that takes d phi / d theta = I (first order). The implicit "
             "Jacobian is (I + H / lambda)^-1.", v),
            ("you multiplied v by I + H / lambda; the meta-gradient solves the system "
             "(I + H / lambda) g = v (torch.linalg.solve).", v + H @ v / lam),
            ("lambda is on the wrong side: the Jacobian is (I + H / lambda)^-1, which tends to I "
             "as the proximal strength lambda grows.", torch.linalg.solve(eye + lam * H, v)),
            ("the Hessian term has the wrong sign: (I + H / lambda)^-1, from the stationarity "
             "condition grad L(phi) + lambda (phi - theta) = 0.", torch.linalg.solve(eye - H / lam, v)),
        ])


# ---------------------------------------------------------------------------------------------
# 5.3 The implicit meta-gradient of a network, by conjugate gradient

def implicit_gradient_cg_solution(support_loss, query_loss, phi, lam, cg_iters):
    """iMAML's meta-gradient of one task by conjugate gradient (iMAML eq. 7).

    Solves (I + H / lambda) g = v for v = grad L_test(phi), H the Hessian of the support
    loss at phi, without forming H: CG only needs u -> u + H u / lambda, one
    Hessian-vector product ``hvp(support_loss, phi, u)`` each. ``support_loss`` and
    ``query_loss`` map a parameter dict to a scalar; ``phi`` is a dict {name: tensor}.
    Runs at most ``cg_iters`` CG iterations; returns g, a dict keyed like ``phi``.
    """
    phi = {name: p.detach().requires_grad_() for name, p in phi.items()}
    v = dict(zip(phi, torch.autograd.grad(query_loss(phi), list(phi.values()))))

    def matvec(u):  # (I + H / lambda) u
        hu = hvp(support_loss, phi, u)
        return {name: u[name] + hu[name] / lam for name in u}

    g, _, _ = conjugate_gradient(matvec, v, max_iters=cg_iters)
    return g


def _flat_loss(loss, like):
    def of_flat(flat):
        out, i = {}, 0
        for name, p in like.items():
            out[name] = flat[i:i + p.numel()].view_as(p)
            i += p.numel()
        return loss(out)
    return of_flat


def _dense(loss, phi):
    """The gradient and the dense Hessian of ``loss`` at ``phi`` (flattened in dict order)."""
    flat = torch.cat([p.detach().reshape(-1) for p in phi.values()])
    f = _flat_loss(loss, phi)
    grad = torch.autograd.functional.jacobian(f, flat)
    return grad, hessian(f, flat)


def _as_dict(flat, like):
    out, i = {}, 0
    for name, p in like.items():
        out[name] = flat[i:i + p.numel()].view_as(p).clone()
        i += p.numel()
    return out


def _dense_cg_iterates(M, v, iterations):
    """The iterates x_1, x_2, ... of plain conjugate gradient on M x = v from x_0 = 0."""
    x, r, p, out = torch.zeros_like(v), v.clone(), v.clone(), []
    for _ in range(iterations):
        Mp = M @ p
        step = (r @ r) / (p @ Mp)
        x, r_next = x + step * p, r - step * Mp
        p, r = r_next + (r_next @ r_next) / (r @ r) * p, r_next
        out.append(x)
    return out


def _explain_cg(case: Case, got, fn) -> str | None:
    try:
        g = torch.cat([torch.as_tensor(got[k]).detach().double().reshape(-1) for k in case.expected])
    except Exception:  # not a dict of tensors: the generic diagnosis has already said so
        return None
    e = torch.cat([case.expected[k].reshape(-1) for k in case.expected])
    M, v = case.extra["matrix"], case.extra["v"]
    for j, x in enumerate(_dense_cg_iterates(M, v, M.shape[0]), 1):
        if torch.allclose(g, x, rtol=1e-6, atol=1e-9) and not torch.allclose(x, e, rtol=1e-6):
            return (f"your answer is the CG iterate after {j} iteration{'s' * (j > 1)}, not yet "
                    "converged: let CG run up to `cg_iters` iterations (with a small tolerance).")
    error = ((g - e).norm() / e.norm()).item()
    if error < 1e-2:
        return (f"close, but not converged: relative error {error:.2g}. Let CG run to "
                "convergence (up to `cg_iters` iterations, with a small tolerance).")
    return None


@exercise(EXERCISES, "5.3", "the implicit meta-gradient by conjugate gradient",
          implicit_gradient_cg_solution, points=2, explain=_explain_cg, rtol=1e-5, atol=1e-8,
          imports="from mlcourse.implicit import conjugate_gradient, hvp")
def check_implicit_gradient_cg(g):
    r"""Check ``implicit_gradient_cg(...)`` against a dense solve on a small network (exercise 5.3).

    Write `implicit_gradient_cg(support_loss, query_loss, phi, lam, cg_iters)`: the same
    $g = (I + H/\lambda)^{-1} \nabla \mathcal{L}^{\mathrm{test}}(\phi)$ for a network, without
    forming $H$: use `hvp` and `conjugate_gradient` from `mlcourse.implicit`. The check
    compares it with a dense solve on a network small enough to form its Hessian.
    """
    model = seeded(53, lambda: MLP([1, 4, 1]).double())
    sampler = Sinusoid(shots=6, queries=6)
    for lam in (1.0, 4.0, 0.5):
        sx, sy, qx, qy = (t[0].double() for t in sampler.sample(1, generator=g))

        def support_loss(p, sx=sx, sy=sy):
            return ((functional_call(model, p, (sx,)) - sy) ** 2).mean()

        def query_loss(p, qx=qx, qy=qy):
            return ((functional_call(model, p, (qx,)) - qy) ** 2).mean()

        phi = {name: randn(*p.shape, g=g) for name, p in model.named_parameters()}
        _, H = _dense(support_loss, phi)
        lam = max(lam, -2 * torch.linalg.eigvalsh(H).min().item())  # keep I + H/lambda definite
        v, H_query = _dense(query_loss, phi)
        eye = torch.eye(H.shape[0], dtype=H.dtype)
        expected = _as_dict(torch.linalg.solve(eye + H / lam, v), phi)
        yield Case((support_loss, query_loss, phi, lam, 40), expected,
                   extra={"matrix": eye + H / lam, "v": v},
                   about=f"lambda={lam:.3g}, {v.numel()} parameters", mistakes=[
            ("you returned v = grad L_test(phi): that is the first-order approximation. Solve "
             "(I + H / lambda) g = v.", _as_dict(v, phi)),
            ("H must be the Hessian of the support (training) loss, the one the inner problem "
             "minimises, not of the query loss.",
             _as_dict(torch.linalg.solve(eye + H_query / lam, v), phi)),
            ("lambda is on the wrong side: the matrix is I + H / lambda.",
             _as_dict(torch.linalg.solve(eye + lam * H, v), phi)),
            ("the Hessian term has the wrong sign: the matrix is I + H / lambda.",
             _as_dict(torch.linalg.solve(eye - H / lam, v), phi)),
            ("you multiplied v by I + H / lambda instead of solving the system with CG.",
             _as_dict(v + H @ v / lam, phi)),
        ])
