"""Exercises of chapter 7 (PLATIPUS): the KL divergence between diagonal Gaussians, the amortised
prior's reparameterised sample with its second-order meta-gradient, and telling a sinusoid from a
line by least squares.

Each exercise has a reference solution (``*_solution``, the text the notebook's solution cell
shows), an independent reference used by its check (``torch.distributions`` for the KL, a dense
Jacobian built from explicit Hessians for the sample's meta-gradient, normal equations solved by
hand for the fit), and ``check_*(fn)``.
"""
from __future__ import annotations

import torch
from torch.distributions import Normal, kl_divergence

from .checking import Case, Exercise, exercise, randn

EXERCISES: dict[str, Exercise] = {}  # filled by the @exercise declarations below, in order


# ---------------------------------------------------------------------------------------------
# 7.1 KL(q || p) between diagonal Gaussians

def kl_diagonal_solution(mean_q, log_var_q, mean_p, log_var_p):
    """KL(q || p) between q = N(mean_q, diag exp(log_var_q)) and
    p = N(mean_p, diag exp(log_var_p)):

      1/2 sum_d [log var_p - log var_q + (var_q + (mean_q - mean_p)^2) / var_p - 1].
    All four arguments are tensors of one shape; returns a scalar tensor.
    """
    var_q, var_p = log_var_q.exp(), log_var_p.exp()
    terms = log_var_p - log_var_q + (var_q + (mean_q - mean_p) ** 2) / var_p - 1
    return 0.5 * terms.sum()


def _reference_kl(mq, lq, mp, lp):
    return kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(mp, (0.5 * lp).exp())).sum()


@exercise(EXERCISES, "7.1", "the KL divergence between diagonal Gaussians", kl_diagonal_solution)
def check_kl_diagonal(g):
    r"""Check ``kl_diagonal(mean_q, log_var_q, mean_p, log_var_p)`` against ``torch.distributions`` (exercise 7.1).

    Write `kl_diagonal(mean_q, log_var_q, mean_p, log_var_p)`: the KL divergence
    $\mathrm{KL}(q \,\|\, p)$ between two Gaussians with diagonal covariances, given by their
    means and the *logarithms* of their variances (how PLATIPUS stores $\sigma_\theta^2$ and
    $v_q$, so that they stay positive). It is the term the ELBO subtracts, summed over every
    parameter.
    """
    for shape in [(5,), (3, 4), (1,)]:
        mq, lq, mp, lp = (randn(*shape, g=g) for _ in range(4))
        yield Case((mq, lq, mp, lp), _reference_kl(mq, lq, mp, lp), about=f"shape {shape}", mistakes=[
            ("you computed KL(p || q): the KL is not symmetric, and the ELBO needs KL(q || p), "
             "with q's variance in the numerator.", _reference_kl(mp, lp, mq, lq)),
            ("the arguments are log-variances: exponentiate them (var = exp(log_var)) before "
             "dividing.", 0.5 * (lp - lq + (lq + (mq - mp) ** 2) / lp - 1).sum()),
            ("the formula has a factor 1/2 in front of the sum.", 2 * _reference_kl(mq, lq, mp, lp)),
            ("you used the standard deviations where the variances go: var = exp(log_var), "
             "std = exp(log_var / 2).", _reference_kl(mq, 2 * lq, mp, 2 * lp)),
        ])


# ---------------------------------------------------------------------------------------------
# 7.2 A sample from the amortised prior, and its meta-gradient

def prior_sample_solution(mu, support_loss, gamma, log_var, eps, w):
    """A reparameterised draw from PLATIPUS's prior, and a meta-gradient through it:

        theta = (mu - gamma grad L^tr(mu)) + exp(log_var / 2) * eps,
        g = d (w . theta) / d mu = (I - gamma H) w,   H = grad^2 L^tr(mu).
    ``mu``, ``log_var``, ``eps`` and ``w`` are (D,) tensors; ``support_loss`` maps a
    (D,) tensor to a scalar; gamma > 0. Returns (theta, g), both (D,).
    """
    mu = mu.detach().requires_grad_()
    grad = torch.autograd.grad(support_loss(mu), mu, create_graph=True)[0]
    theta = mu - gamma * grad + (0.5 * log_var).exp() * eps
    g = torch.autograd.grad((w * theta).sum(), mu)[0]
    return theta.detach(), g


def _reference_prior_sample(mu, loss, gamma, log_var, eps, w, second_order=True, scale=None):
    """theta from one gradient, g = (I - gamma H) w with the Hessian formed explicitly."""
    m = mu.detach().clone().requires_grad_()
    grad = torch.autograd.grad(loss(m), m)[0]
    noise_scale = (0.5 * log_var).exp() if scale is None else scale
    theta = mu.detach() - gamma * grad + noise_scale * eps
    if not second_order:
        return theta, w.clone()
    hess = torch.autograd.functional.hessian(loss, mu.detach())
    return theta, w - gamma * hess.T @ w


@exercise(EXERCISES, "7.2", "a sample from the amortised prior and its meta-gradient",
          prior_sample_solution, names=("theta", "g"))
def check_prior_sample(g):
    r"""Check ``prior_sample(mu, support_loss, gamma, log_var, eps, w)`` against explicit Hessians (exercise 7.2).

    Write `prior_sample(mu, support_loss, gamma, log_var, eps, w)`: one reparameterised draw
    $\theta = m_p + \sigma_\theta \odot \epsilon$ from PLATIPUS's amortised prior, whose
    mean is one gradient step, $m_p = \mu_\theta - \gamma_p \nabla\mathcal{L}^{\mathrm{tr}}(\mu_\theta)$,
    and $\sigma_\theta = \exp(\tfrac12 \log \sigma_\theta^2)$; and the gradient in
    $\mu_\theta$ of $w \cdot \theta$, which is $(I - \gamma_p H)\,w$: keep the graph of
    the inner gradient. Return `(theta, g)`.
    """
    for d, gamma in [(3, 0.1), (5, 0.05), (2, 0.3)]:
        a = randn(d, d, g=g)
        target = randn(d, g=g)

        def loss(m, a=a, target=target):  # a smooth, non-quadratic loss
            return torch.log1p((a @ m - target) ** 2).sum() + 0.1 * (m ** 4).sum()

        mu, log_var, eps, w = randn(d, g=g), randn(d, g=g) - 2, randn(d, g=g), randn(d, g=g)
        args = (mu, loss, gamma, log_var, eps, w)
        yield Case(args, _reference_prior_sample(*args), about=f"D={d}, gamma={gamma}", mistakes=[
            ("your meta-gradient is w itself: the gradient step was detached (first order). Pass "
             "create_graph=True to torch.autograd.grad so that g = (I - gamma H) w.",
             _reference_prior_sample(*args, second_order=False)),
            ("the noise is scaled by the variance; scale it by the standard deviation, "
             "exp(log_var / 2).", _reference_prior_sample(*args, scale=log_var.exp())),
            ("the step goes uphill: the prior's mean is mu - gamma grad L, a gradient *descent* step.",
             _reference_prior_sample(mu, lambda m, f=loss: -f(m), gamma, log_var, eps, w)),
        ])


# ---------------------------------------------------------------------------------------------
# 7.3 A sinusoid or a line?

def closest_family_solution(x, y):
    """0 if y is better fitted by a sinusoid A sin(x - b), 1 if by a line a x + c.

    Both families are linear in their coefficients: A sin(x - b) = c1 sin x + c2 cos x.
    Fit each by least squares on the points (x, y), both (n,), and compare the sums of
    squared residuals. Returns an int.
    """
    residuals = []
    for basis in ((torch.sin(x), torch.cos(x)), (x, torch.ones_like(x))):
        design = torch.stack(basis, dim=1)
        coef = torch.linalg.lstsq(design, y.unsqueeze(1)).solution
        residuals.append(((design @ coef).squeeze(1) - y).pow(2).sum())
    return int(residuals[1] < residuals[0])


def _normal_equations(design, y):
    return torch.linalg.solve(design.T @ design, design.T @ y)


def _reference_family(x, y):
    sums = []
    for design in (torch.stack([torch.sin(x), torch.cos(x)], 1), torch.stack([x, torch.ones_like(x)], 1)):
        sums.append(((design @ _normal_equations(design, y)) - y).pow(2).sum())
    return int(sums[1] < sums[0])


@exercise(EXERCISES, "7.3", "a sinusoid or a line?", closest_family_solution)
def check_closest_family(g):
    r"""Check ``closest_family(x, y)`` on noisy sinusoids and lines of known family (exercise 7.3).

    Write `closest_family(x, y)`: return 0 if the points are better explained by a sinusoid
    $A \sin(x - b)$ and 1 if by a line $a x + c$. Both families are linear in their
    coefficients ($A\sin(x - b) = c_1 \sin x + c_2 \cos x$), so two least-squares fits
    decide. Section 7.2 uses the same test to count how many of PLATIPUS's sampled functions
    are line-like.
    """
    for kind in (0, 1, 0, 1, 1, 0):
        x = -5 + 10 * torch.rand(30, generator=g, dtype=torch.float64)
        if kind == 0:
            amplitude, phase = 1 + 4 * torch.rand(1, generator=g, dtype=torch.float64), torch.rand(
                1, generator=g, dtype=torch.float64) * 3.1
            y = amplitude * torch.sin(x - phase)
        else:
            slope, intercept = -3 + 6 * torch.rand(2, generator=g, dtype=torch.float64)
            y = slope * x + intercept
        y = y + 0.1 * randn(30, g=g)
        yield Case((x, y), _reference_family(x, y), about=f"a noisy {'line' if kind else 'sinusoid'}",
                   mistakes=[("you returned 1 for a sinusoid and 0 for a line: the other way round.",
                              1 - _reference_family(x, y))])
