"""Chapter 4's analyses: evidence, and early stopping as a Gaussian prior.

* :func:`linear_regression_log_evidence`: the exact log marginal likelihood of Bayesian linear
  regression, the one model where the Laplace approximation is exact.
* :func:`laplace_log_evidence`: log of integral exp(f(phi)) dphi ~ f(phi*) + d/2 log 2 pi
  - 1/2 log det H, with H = -grad^2 f(phi*) (Grant et al., 2018, section 4.1).
* :func:`early_stopping_prior_covariance`: the Gaussian prior covariance Q for which k steps of
  preconditioned gradient descent on a quadratic land exactly on the MAP estimate
  (Santos, 1996; Grant et al., 2018, section 3.2).

LLAMA's curvature of a network (K-FAC, diagonal Fisher) is in :mod:`mlcourse.curvature`.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..utils import check_int, check_positive

LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------------------------------
# Evidence
# ---------------------------------------------------------------------------------------------

def linear_regression_log_evidence(X: torch.Tensor, y: torch.Tensor, prior_precision: float,
                                   noise_variance: float, prior_mean: torch.Tensor | None = None) -> torch.Tensor:
    """Exact log p(y | X) for y = X w + eps, w ~ N(m, tau^-1 I), eps ~ N(0, sigma^2 I).

    Integrating w out, y ~ N(X m, sigma^2 I + X X^T / tau): the marginal likelihood of the
    hierarchical model for one task, with the prior mean m playing theta.
    """
    tau = check_positive("prior_precision", prior_precision)
    sigma2 = check_positive("noise_variance", noise_variance)
    n, d = X.shape
    m = torch.zeros(d, dtype=X.dtype, device=X.device) if prior_mean is None else prior_mean
    cov = sigma2 * torch.eye(n, dtype=X.dtype, device=X.device) + X @ X.T / tau
    r = y.reshape(-1) - X @ m
    chol = torch.linalg.cholesky(cov)
    z = torch.linalg.solve_triangular(chol, r.unsqueeze(-1), upper=False).squeeze(-1)
    return -0.5 * (z @ z) - torch.log(torch.diagonal(chol)).sum() - 0.5 * n * LOG_2PI


def laplace_log_evidence(log_joint: Callable[[torch.Tensor], torch.Tensor], init: torch.Tensor,
                         newton_steps: int = 100, tol: float = 1e-12) -> dict:
    """Laplace's approximation of log integral exp(f(phi)) dphi, f = ``log_joint`` on R^d.

    Finds the mode phi* by Newton's method from ``init``, then
    log Z ~ f(phi*) + d/2 log(2 pi) - 1/2 log det H,   H = -grad^2 f(phi*)   (eq. 4 of LLAMA).
    Exact when f is quadratic (Gaussian integrand). Returns ``{"log_evidence", "mode", "hessian"}``.
    """
    check_int("newton_steps", newton_steps, 1)
    phi = init.detach().clone().reshape(-1)
    hess = lambda v: -torch.autograd.functional.hessian(lambda u: log_joint(u), v)
    for _ in range(newton_steps):
        g = torch.func.grad(lambda u: log_joint(u))(phi)
        step = torch.linalg.solve(hess(phi), g)
        phi = phi + step
        if step.abs().max() < tol:
            break
    H = hess(phi)
    d = phi.numel()
    value = log_joint(phi) + 0.5 * d * LOG_2PI - 0.5 * torch.linalg.slogdet(H)[1]
    return {"log_evidence": value, "mode": phi, "hessian": H}


# ---------------------------------------------------------------------------------------------
# Early stopping as a prior
# ---------------------------------------------------------------------------------------------

def _preconditioner(B, n: int, like: torch.Tensor) -> torch.Tensor:
    if isinstance(B, torch.Tensor) and B.dim() == 2:
        if B.shape != (n, n):
            raise ValueError(f"B has shape {tuple(B.shape)}: must be ({n}, {n}) like H, or a step size > 0")
        return B.to(like)
    return check_positive("B (step size)", B) * torch.eye(n, dtype=like.dtype, device=like.device)


def gradient_descent_iterate(H: torch.Tensor, phi_star: torch.Tensor, theta: torch.Tensor, k: int, B) -> torch.Tensor:
    """phi_k after k steps phi <- phi - B grad l(phi) on l(phi) = 1/2 (phi - phi*)^T H (phi - phi*), from theta."""
    check_int("k", k, 0)
    B = _preconditioner(B, H.shape[0], H)
    phi = theta.clone()
    for _ in range(k):
        phi = phi - B @ (H @ (phi - phi_star))
    return phi


def map_estimate(H: torch.Tensor, phi_star: torch.Tensor, theta: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """argmin_phi 1/2 (phi - phi*)^T H (phi - phi*) + 1/2 (phi - theta)^T Q^-1 (phi - theta)  (eq. 3.9).

    The MAP estimate under the prior N(theta, Q): phi = (H + Q^-1)^-1 (H phi* + Q^-1 theta), computed
    as (I + Q H)^-1 (theta + Q H phi*) so that Q is never inverted (it is ill-conditioned for large k).
    """
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    return torch.linalg.solve(eye + Q @ H, theta + Q @ (H @ phi_star))


def early_stopping_prior_covariance(H: torch.Tensor, k: int, B=1.0) -> torch.Tensor:
    """The prior covariance Q that k steps of preconditioned gradient descent implement (eq. 3.9).

    Convention: the step is phi_k = phi_{k-1} - B grad l(phi_{k-1}) on the quadratic
    l(phi) = 1/2 (phi - phi*)^T H (phi - phi*), with B symmetric positive definite (a float b
    means B = b I, plain gradient descent with step size b). Then phi_k - phi* = (I - B H)^k (theta - phi*).

    When B and H share eigenvectors O (always so for B = b I): H = O Lambda O^T, B = O diag(b) O^T,
    and writing B for diag(b) = O^T B O as in the derivation,
        Q = O Lambda^-1 ((I - B Lambda)^-k - I) O^T.
    General B: in the coordinates psi = B^-1/2 phi the step is plain gradient descent with unit
    step on H~ = B^1/2 H B^1/2 = O~ Lambda~ O~^T, so Q = B^1/2 O~ Lambda~^-1 ((I - Lambda~)^-k - I) O~^T B^1/2,
    which reduces to the formula above when B and H commute. Each eigenvalue needs
    0 <= b_i lambda_i < 1 (a monotone, non-oscillating iteration); a zero eigenvalue gets its
    limit k b_i (a direction the loss does not see moves by nothing, as a prior variance k b would allow).
    """
    check_int("k", k, 1)
    n = H.shape[0]
    B = _preconditioner(B, n, H)
    evals_b, vecs_b = torch.linalg.eigh(B)
    if evals_b.min() <= 0:
        raise ValueError(f"B must be positive definite: its smallest eigenvalue is {evals_b.min().item():.3g}")
    root = vecs_b @ torch.diag(evals_b.sqrt()) @ vecs_b.T
    Ht = root @ H @ root
    lam, O = torch.linalg.eigh((Ht + Ht.T) / 2)
    lam = torch.where(lam.abs() < 1e-14 * max(1.0, lam.abs().max().item()), torch.zeros_like(lam), lam)
    if lam.min() < 0 or lam.max() >= 1:
        raise ValueError(f"the eigenvalues of B H must lie in [0, 1) for early stopping to act as a Gaussian "
                         f"prior; they span [{lam.min().item():.3g}, {lam.max().item():.3g}]: reduce the step size")
    # ((1 - lam)^-k - 1) / lam, stably: expm1(-k log1p(-lam)) / lam, and its limit k at lam = 0
    safe = torch.where(lam > 0, lam, torch.ones_like(lam))
    q = torch.where(lam > 0, torch.expm1(-k * torch.log1p(-lam)) / safe, torch.full_like(lam, float(k)))
    return root @ O @ torch.diag(q) @ O.T @ root
