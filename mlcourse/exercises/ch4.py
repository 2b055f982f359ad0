"""Exercises of chapter 4 (MAML as hierarchical Bayes): the prior covariance that early stopping
implies, the MAP estimate under a Gaussian prior, and Laplace's approximation of the evidence.

Each exercise has a reference solution (``*_solution``, the text the notebook's solution cell
shows), an independent reference used by its check (``_reference_*``: matrix powers and solves
where the solution diagonalises, a Cholesky factor where it calls slogdet), and ``check_*(fn)``.
"""
from __future__ import annotations

import math

import torch

from .checking import Case, Exercise, exercise, randn, random_spd

EXERCISES: dict[str, Exercise] = {}  # filled by the @exercise declarations below, in order


# ---------------------------------------------------------------------------------------------
# 4.1 The prior covariance of early stopping

def early_stopping_prior_covariance_solution(H, k, step):
    """The prior covariance Q that k gradient steps imply (Grant et al., 2018, eq. 3.9).

    k steps phi <- phi - b grad l(phi) from theta on the quadratic
    l(phi) = 1/2 (phi - phi*)^T H (phi - phi*) land exactly on the MAP estimate under
    the Gaussian prior N(theta, Q), with
        Q = O Lambda^-1 ((I - b Lambda)^-k - I) O^T,   H = O Lambda O^T,
    for the step size b = ``step`` (each 0 < b lambda_i < 1). H is (d, d) symmetric
    positive definite; returns Q, a (d, d) tensor. Its inverse is the prior precision.
    """
    lam, O = torch.linalg.eigh(H)  # H = O diag(lam) O^T, eigenvectors in O's columns
    q = ((1 - step * lam) ** (-k) - 1) / lam
    return O @ torch.diag(q) @ O.T


def _reference_covariance(H, k, b):
    """Q = H^-1 ((I - b H)^-k - I) (eq. 3.9 without the eigendecomposition: the factors commute)."""
    eye = torch.eye(H.shape[0], dtype=H.dtype)
    growth = torch.linalg.matrix_power(torch.linalg.inv(eye - b * H), k)  # (I - b H)^-k
    Q = torch.linalg.solve(H, growth - eye)
    return (Q + Q.T) / 2


def _covariance_variants(H, k, b):
    lam, O = torch.linalg.eigh(H)

    def rebuild(q, left=O):
        return left @ torch.diag(q) @ left.T

    q = ((1 - b * lam) ** (-k) - 1) / lam
    return [
        ("you returned the prior precision Q^-1; the exercise asks for the covariance Q "
         "(its inverse).", rebuild(1 / q)),
        ("the exponent has the wrong sign: the iterate's error shrinks like (I - b Lambda)^k, "
         "so Q has (I - b Lambda)^-k - I, which is positive.", rebuild(((1 - b * lam) ** k - 1) / lam)),
        ("the factor Lambda^-1 is missing: Q = O Lambda^-1 ((I - b Lambda)^-k - I) O^T.",
         rebuild((1 - b * lam) ** (-k) - 1)),
        ("the '- I' is missing: Q = O Lambda^-1 ((I - b Lambda)^-k - I) O^T (the covariance "
         "must vanish when k = 0).", rebuild((1 - b * lam) ** (-k) / lam)),
        ("the eigenvectors are on the wrong side: torch.linalg.eigh returns O with the "
         "eigenvectors in its columns, H = O diag(lambda) O^T, so Q = O diag(q) O^T.",
         rebuild(q, O.T)),
    ]


@exercise(EXERCISES, "4.1", "the prior covariance of early stopping",
          early_stopping_prior_covariance_solution, points=2,
          hints={"shape": "Q is a (d, d) matrix, like H."})
def check_early_stopping_prior_covariance(g):
    r"""Check ``early_stopping_prior_covariance(H, k, step)`` on random quadratics (exercise 4.1).

    Write `early_stopping_prior_covariance(H, k, step)`: the covariance $Q$ of the Gaussian
    prior under which the MAP estimate on the quadratic
    $\frac12 (\phi - \phi^*)^\top H (\phi - \phi^*)$ equals $k$ steps of gradient descent of
    size $b$ = `step` from $\theta$: $Q = O \Lambda^{-1}((I - b\Lambda)^{-k} - I) O^\top$
    with $H = O \Lambda O^\top$ (use `torch.linalg.eigh`).
    """
    for d, k, reach in [(3, 3, 0.8), (2, 1, 0.5), (4, 10, 0.3), (3, 5, 0.6)]:
        H = random_spd(d, 0.2, 2.0, g)
        b = reach / torch.linalg.eigvalsh(H).max().item()  # b lambda_max = reach < 1
        yield Case((H, k, b), _reference_covariance(H, k, b), mistakes=_covariance_variants(H, k, b),
                   about=f"d={d}, k={k}, b lambda_max={reach}")


# ---------------------------------------------------------------------------------------------
# 4.2 The MAP estimate under a Gaussian prior

def map_estimate_solution(H, phi_star, theta, Q):
    """The MAP estimate for a quadratic loss and the prior N(theta, Q) (Grant et al.).

        phi_MAP = argmin_phi 1/2 (phi - phi*)^T H (phi - phi*)
                             + 1/2 (phi - theta)^T Q^-1 (phi - theta)
                = (H + Q^-1)^-1 (H phi* + Q^-1 theta),
    the precision-weighted average of the loss's minimiser phi* and the prior mean
    theta (the equation before Grant et al.'s eq. 3.9).
    H and Q are (d, d) symmetric positive definite; phi_star and theta are (d,).
    """
    precision = torch.linalg.inv(Q)
    return torch.linalg.solve(H + precision, H @ phi_star + precision @ theta)


def _reference_map(H, phi_star, theta, Q):
    """The MAP estimate from the stationarity condition H (phi - phi*) + Q^-1 (phi - theta) = 0."""
    eye = torch.eye(H.shape[0], dtype=H.dtype)
    # setting the gradient to zero and multiplying by Q: (Q H + I)(phi - theta) = Q H (phi* - theta)
    return theta + torch.linalg.solve(Q @ H + eye, Q @ H @ (phi_star - theta))


def _gradient_descent(H, phi_star, theta, k, b):
    phi = theta.clone()
    for _ in range(k):
        phi = phi - b * H @ (phi - phi_star)
    return phi


@exercise(EXERCISES, "4.2", "the MAP estimate under a Gaussian prior", map_estimate_solution)
def check_map_estimate(g):
    r"""Check ``map_estimate(H, phi_star, theta, Q)``, including with early stopping's Q (exercise 4.2).

    Write `map_estimate(H, phi_star, theta, Q)`: the minimiser of
    $\frac12 (\phi - \phi^*)^\top H (\phi - \phi^*)$
    $+ \frac12 (\phi - \theta)^\top Q^{-1} (\phi - \theta)$, the MAP estimate under the prior
    $\mathcal{N}(\theta, Q)$. Some of the check's cases use the $Q$ of early stopping, where
    the answer is exactly the $k$-th gradient-descent iterate.
    """
    for d, k in [(3, 2), (2, 4), (4, None), (3, None)]:
        H = random_spd(d, 0.3, 2.0, g)
        phi_star, theta = randn(d, g=g), randn(d, g=g)
        if k is None:
            Q, about = random_spd(d, 0.1, 3.0, g), f"d={d}, random Q"
        else:  # the prior of k steps of size b: its MAP estimate is the k-th iterate
            b = 0.5 / torch.linalg.eigvalsh(H).max().item()
            Q = _reference_covariance(H, k, b)
            about = f"d={d}, Q of k={k} gradient steps (the answer is the k-th iterate)"
            assert torch.allclose(_reference_map(H, phi_star, theta, Q),
                                  _gradient_descent(H, phi_star, theta, k, b), atol=1e-8)
        P = torch.linalg.inv(Q)
        yield Case((H, phi_star, theta, Q), _reference_map(H, phi_star, theta, Q), about=about,
                   mistakes=[
            ("theta and phi* are swapped: the loss is centred at phi* and the prior at theta, so "
             "phi_MAP = (H + Q^-1)^-1 (H phi* + Q^-1 theta).",
             torch.linalg.solve(H + P, H @ theta + P @ phi_star)),
            ("Q is the prior's covariance; its precision, which adds to H, is Q^-1.",
             torch.linalg.solve(H + Q, H @ phi_star + Q @ theta)),
            ("the prior's precision adds to the curvature: (H + Q^-1), not (H - Q^-1).",
             torch.linalg.solve(H - P, H @ phi_star - P @ theta)),
            ("you returned phi*, the loss's minimiser; the prior pulls the estimate towards "
             "theta.", phi_star),
            ("you returned theta, the prior mean; the loss pulls the estimate towards phi*.", theta),
        ])


# ---------------------------------------------------------------------------------------------
# 4.3 Laplace's approximation of the log evidence

def laplace_log_evidence_solution(log_joint_at_mode, hessian):
    """Laplace's approximation of log(integral of exp f(phi) d phi) (LLAMA, eq. 4).

        log Z ~ f(phi*) + d/2 log(2 pi) - 1/2 log det H,   H = -grad^2 f(phi*),
    exact when f is quadratic (a Gaussian integrand). ``log_joint_at_mode`` is
    f(phi*), a number; ``hessian`` is H, (d, d) symmetric positive definite.
    Returns a number.
    """
    d = hessian.shape[0]
    log_det = torch.linalg.slogdet(hessian).logabsdet
    return float(log_joint_at_mode) + d / 2 * math.log(2 * math.pi) - log_det.item() / 2


def _reference_laplace(f, H):
    """f + d/2 log(2 pi) - 1/2 log det H, with log det H from a Cholesky factor (LLAMA eq. 4)."""
    chol = torch.linalg.cholesky(H)
    log_det = 2 * torch.log(torch.diagonal(chol)).sum().item()
    return f + 0.5 * H.shape[0] * math.log(2 * math.pi) - 0.5 * log_det


@exercise(EXERCISES, "4.3", "Laplace's approximation of the evidence", laplace_log_evidence_solution,
          imports="import math")
def check_laplace_log_evidence(g):
    r"""Check ``laplace_log_evidence(log_joint_at_mode, hessian)`` on random Hessians (exercise 4.3).

    Write `laplace_log_evidence(log_joint_at_mode, hessian)`: Laplace's approximation of
    $\log \int \exp f(\phi)\, d\phi$ from the value $f(\phi^*)$ at the mode and the Hessian
    $H = -\nabla^2 f(\phi^*)$. (LLAMA keeps only its $\log\det$ part, weighted by $\eta$, as
    the term it adds to MAML's objective.) Return a number.
    """
    for d in (3, 1, 6, 2):
        H = random_spd(d, 0.05, 40.0, g) if d > 1 else torch.tensor([[7.5]], dtype=torch.float64)
        f = float(5 * randn(1, g=g))
        log_det = torch.logdet(H).item()
        c = math.log(2 * math.pi)
        yield Case((f, H), _reference_laplace(f, H), about=f"d={d}", mistakes=[
            ("the log det H term has the wrong sign: a sharper peak (larger curvature) holds "
             "less mass, so it is -1/2 log det H.", f + d / 2 * c + log_det / 2),
            ("the d/2 log(2 pi) term is missing: the integral of exp(-1/2 x^T H x) is "
             "(2 pi)^(d/2) det(H)^(-1/2).", f - log_det / 2),
            ("the 1/2 in front of log det H is missing: det(H)^(-1/2) gives -1/2 log det H.",
             f + d / 2 * c - log_det),
            ("the 2 pi term is d/2 log(2 pi), half of d log(2 pi).", f + d * c - log_det / 2),
            ("the 2 pi term grows with the dimension: d/2 log(2 pi), not 1/2 log(2 pi).",
             f + c / 2 - log_det / 2),
            ("f(phi*) is missing: the approximation starts from the log joint at the mode.",
             d / 2 * c - log_det / 2),
        ])
