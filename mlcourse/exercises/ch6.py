"""Exercises of chapter 6 (Bayesian MAML): the RBF kernel of SVGD with its repulsive term, one
step of Stein variational gradient descent, and the meta-gradient of the chaser loss.

Each exercise has a reference solution (``*_solution``, the text the notebook's solution cell
shows), an independent reference used by its check (``_reference_*``: explicit double loops over
the particles where the solutions use matrix products, and a hand-written SVGD step where the
solution calls :func:`mlcourse.svgd.svgd_direction`), and ``check_*(fn)``.
"""
from __future__ import annotations

import torch

from mlcourse.svgd import svgd_direction

from .checking import Case, Exercise, exercise, randn, random_spd

EXERCISES: dict[str, Exercise] = {}  # filled by the @exercise declarations below, in order


# ---------------------------------------------------------------------------------------------
# 6.1 The RBF kernel and its repulsive term

def rbf_repulsion_solution(particles, h):
    """The RBF kernel matrix of M particles and SVGD's repulsive term (Liu, Wang 2016).

        K[j, m] = k(x_j, x_m) = exp(-||x_j - x_m||^2 / h),
        r(x_m) = (1/M) sum_j grad_{x_j} k(x_j, x_m)
               = (2 / (h M)) sum_j (x_m - x_j) K[j, m].
    ``particles`` is (M, D), one particle per row; h > 0 is the bandwidth.
    Returns (K, r): K is (M, M), r is (M, D).
    """
    m = particles.shape[0]
    diff = particles[:, None, :] - particles[None, :, :]     # diff[j, m] = x_j - x_m
    K = torch.exp(-(diff ** 2).sum(-1) / h)
    r = (2 / (h * m)) * (-diff * K[..., None]).sum(0)   # sum_j (x_m - x_j) K[j, m]
    return K, r


def _reference_rbf_repulsion(x, h):
    """Explicit loops over the pairs, and autograd for the kernel's gradient."""
    m = x.shape[0]
    K = torch.empty(m, m, dtype=x.dtype)
    r = torch.zeros_like(x)
    for j in range(m):
        for i in range(m):
            xj = x[j].clone().requires_grad_()
            k = torch.exp(-((xj - x[i]) ** 2).sum() / h)
            K[j, i] = k.detach()
            r[i] += torch.autograd.grad(k, xj)[0] / m
    return K, r


def _rbf_mistakes(x, h):
    m = x.shape[0]
    K, r = _reference_rbf_repulsion(x, h)
    sq = torch.cdist(x, x) ** 2
    return [
        ("the kernel divides by 2h: this course's RBF kernel is exp(-||x - y||^2 / h), "
         "the bandwidth of mlcourse.svgd.rbf_kernel.", (torch.exp(-sq / (2 * h)), r)),
        ("the kernel uses the distance ||x - y||, not its square: k = exp(-||x - y||^2 / h).",
         (torch.exp(-torch.cdist(x, x) / h), r)),
        ("the repulsive term has the wrong sign: grad_{x_j} k(x_j, x_m) points from x_j to x_m, "
         "(2/h)(x_m - x_j) k, so it pushes x_m away from its neighbours.", (K, -r)),
        ("the repulsive term is a sum over j; SVGD averages it, (1/M) sum_j.", (K, m * r)),
        ("the derivative of exp(-||x_j - x_m||^2 / h) in x_j brings down a factor 2/h, "
         "not 1/h.", (K, r / 2)),
    ]


@exercise(EXERCISES, "6.1", "the RBF kernel and the repulsive term", rbf_repulsion_solution,
          names=("K", "r"))
def check_rbf_repulsion(g):
    r"""Check ``rbf_repulsion(particles, h)`` against loops and autograd (exercise 6.1).

    Write `rbf_repulsion(particles, h)`: the kernel matrix
    $K_{jm} = \exp(-\|x_j - x_m\|^2 / h)$ of $M$ particles (the rows of `particles`) and
    the repulsive term $r(x_m) = \frac{1}{M}\sum_j \nabla_{x_j} k(x_j, x_m)$ of SVGD, for
    every particle. Return `(K, r)`. The check compares with explicit loops over the pairs
    and autograd's derivative of the kernel.
    """
    for m, d, h in [(5, 2, 1.0), (3, 4, 0.5), (7, 3, 2.5), (1, 2, 1.0)]:
        x = randn(m, d, g=g)
        yield Case((x, h), _reference_rbf_repulsion(x, h), mistakes=_rbf_mistakes(x, h),
                   about=f"M={m} particles in D={d}, h={h}")


# ---------------------------------------------------------------------------------------------
# 6.2 One step of Stein variational gradient descent

def svgd_step_solution(particles, scores, h, eps):
    """One SVGD step x_m <- x_m + eps phi*(x_m) for every particle (Liu and Wang, 2016).

        phi*(x_m) = (1/M) sum_j [ k(x_j, x_m) score_j + grad_{x_j} k(x_j, x_m) ],
    with k(x, y) = exp(-||x - y||^2 / h) and score_j = grad log p(x_j).
    ``particles`` and ``scores`` are (M, D); h > 0, eps > 0. Returns the new (M, D).
    """
    m = particles.shape[0]
    diff = particles[:, None, :] - particles[None, :, :]     # diff[j, m] = x_j - x_m
    K = torch.exp(-(diff ** 2).sum(-1) / h)
    driving = K.T @ scores                                   # sum_j k(x_j, x_m) score_j
    repulsive = (2 / h) * (-diff * K[..., None]).sum(0)
    return particles + eps * (driving + repulsive) / m


def _reference_svgd_step(x, scores, h, eps, repulsion=1.0, average=True):
    m = x.shape[0]
    phi = torch.zeros_like(x)
    for i in range(m):
        for j in range(m):
            k = torch.exp(-((x[j] - x[i]) ** 2).sum() / h)
            phi[i] += k * scores[j] + repulsion * (2 / h) * (x[i] - x[j]) * k
    return x + eps * phi / (m if average else 1)


@exercise(EXERCISES, "6.2", "one step of Stein variational gradient descent", svgd_step_solution)
def check_svgd_step(g):
    r"""Check ``svgd_step(particles, scores, h, eps)`` against a double loop (exercise 6.2).

    Write `svgd_step(particles, scores, h, eps)`: move every particle along SVGD's direction,
    $x_m \leftarrow x_m + \epsilon\,\phi^*(x_m)$ with
    $\phi^*(x_m) = \frac{1}{M}\sum_j \big[k(x_j, x_m)\nabla\log p(x_j)$
    $+ \nabla_{x_j} k(x_j, x_m)\big]$ and the RBF kernel of exercise 6.1. `scores` holds
    $\nabla \log p$ at each particle.
    """
    for m, d, h, eps in [(4, 2, 1.0, 0.1), (6, 3, 0.7, 0.05), (5, 1, 2.0, 0.2)]:
        x, s = randn(m, d, g=g), randn(m, d, g=g)
        yield Case((x, s, h, eps), _reference_svgd_step(x, s, h, eps),
                   about=f"M={m} particles in D={d}, h={h}, eps={eps}", mistakes=[
            ("your step has no repulsive term: that is kernel-smoothed gradient ascent, and the "
             "particles collapse onto the mode. Add (1/M) sum_j grad_{x_j} k(x_j, x_m).",
             _reference_svgd_step(x, s, h, eps, repulsion=0.0)),
            ("the repulsive term has the wrong sign: it must push particles apart, "
             "(2/h)(x_m - x_j) k(x_j, x_m).", _reference_svgd_step(x, s, h, eps, repulsion=-1.0)),
            ("this is plain gradient ascent on log p, x + eps * score: SVGD mixes the scores of "
             "all particles through the kernel and adds the repulsive term.", x + eps * s),
            ("phi* is an average over the M particles: divide the sum by M.",
             _reference_svgd_step(x, s, h, eps, average=False)),
            ("you returned the direction phi*, not the moved particles x + eps phi*.",
             (_reference_svgd_step(x, s, h, eps) - x) / eps),
        ])


# ---------------------------------------------------------------------------------------------
# 6.3 The meta-gradient of the chaser loss

def chaser_gradient_solution(theta, score_train, score_all, eps, n, s, h):
    """The gradient in Theta_0 of BMAML's chaser loss (Yoon et al. 2018).

    The follower Theta_n takes n SVGD steps from ``theta`` (M, D) with ``score_train``;
    the leader takes s more SVGD steps from Theta_n with ``score_all`` (the posterior
    given the support and the query sets). The chaser loss
        sum_m ||theta_n^m - stopgrad(theta_{n+s}^m)||^2
    is differentiated through the follower's steps only. Scores map (M, D) to
    grad log p (M, D); use ``svgd_direction(x, score(x), h)`` (bandwidth h, step eps).
    Returns (M, D).
    """
    theta = theta.detach().requires_grad_()
    follower = theta
    for _ in range(n):
        follower = follower + eps * svgd_direction(follower, score_train(follower), h)
    leader = follower.detach()                                # the leader is a target
    for _ in range(s):
        leader = leader + eps * svgd_direction(leader, score_all(leader), h)
    loss = ((follower - leader) ** 2).sum()
    return torch.autograd.grad(loss, theta)[0]


def _phi(x, scores, h):
    """SVGD's direction, written out pair by pair (no mlcourse.svgd)."""
    m = x.shape[0]
    rows = []
    for i in range(m):
        total = 0
        for j in range(m):
            k = torch.exp(-((x[j] - x[i]) ** 2).sum() / h)
            total = total + k * scores[j] + (2 / h) * (x[i] - x[j]) * k
        rows.append(total / m)
    return torch.stack(rows)


def _reference_chaser(theta, score_train, score_all, eps, n, s, h, stop=True, leader_from=None):
    def steps(x, score, k):
        for _ in range(k):
            x = x + eps * _phi(x, score(x), h)
        return x

    t = theta.detach().clone().requires_grad_()
    follower = steps(t, score_train, n)
    start = follower if leader_from is None else leader_from
    with torch.no_grad() if stop else torch.enable_grad():
        leader = steps(start if not stop else start.detach(), score_all, s)
    if leader_from is not None:
        leader = leader.detach()
    loss = ((follower - leader) ** 2).sum()
    return torch.autograd.grad(loss, t)[0]


def _first_order_chaser(theta, score_train, score_all, eps, n, s, h):
    """2 (Theta_n - Theta_{n+s}): the chaser loss's gradient in Theta_n, not in Theta_0."""
    x = theta.detach().clone()
    for _ in range(n):
        x = x + eps * _phi(x, score_train(x), h)
    leader = x
    for _ in range(s):
        leader = leader + eps * _phi(leader, score_all(leader), h)
    return 2 * (x - leader)


def _gaussian_score(mean, precision):
    def score(x):  # grad log N(x; mean, precision^-1) = -(x - mean) P
        return -(x - mean) @ precision
    return score


@exercise(EXERCISES, "6.3", "the meta-gradient of the chaser loss", chaser_gradient_solution,
          points=2, rtol=1e-6, atol=1e-9, imports="from mlcourse.svgd import svgd_direction")
def check_chaser_gradient(g):
    r"""Check ``chaser_gradient(...)`` on Gaussian task posteriors (exercise 6.3).

    Write `chaser_gradient(theta, score_train, score_all, eps, n, s, h)`: the gradient with
    respect to the initial particles $\Theta_0$ (the rows of `theta`) of the chaser loss
    $\sum_m \|\theta^m_n - \mathrm{stopgrad}(\theta^m_{n+s})\|^2$, where the follower
    $\Theta_n$ takes $n$ SVGD steps on the support set's posterior (`score_train`) and the
    leader $\Theta_{n+s}$ takes $s$ more from $\Theta_n$ on the posterior of support and
    query sets together (`score_all`). Use `svgd_direction` from `mlcourse.svgd`. The check
    uses Gaussian posteriors, whose scores are linear.
    """
    for m, d, n, s, h in [(3, 2, 1, 1, 1.0), (4, 2, 2, 1, 0.8), (2, 3, 1, 2, 1.5)]:
        theta = randn(m, d, g=g)
        p_train, p_all = random_spd(d, 0.5, 2.0, g), random_spd(d, 1.0, 4.0, g)
        score_train = _gaussian_score(randn(d, g=g), p_train)
        score_all = _gaussian_score(randn(d, g=g), p_all)
        eps = 0.1
        args = (theta, score_train, score_all, eps, n, s, h)
        yield Case(args, _reference_chaser(*args), about=f"M={m}, D={d}, n={n}, s={s}, h={h}",
                   mistakes=[
            ("the gradient also flows through the leader: it is a target, stopgrad(theta_{n+s}) "
             "(detach it), so only the follower's path is differentiated.",
             lambda args=args: _reference_chaser(*args, stop=False)),
            ("the leader starts from Theta_0: it continues from the follower Theta_n for s more "
             "steps (n + s in all).",
             lambda args=args: _reference_chaser(*args, leader_from=args[0].detach())),
            ("this is the gradient in the follower Theta_n, 2 (Theta_n - Theta_{n+s}): "
             "differentiate through the follower's n SVGD steps back to Theta_0 (autograd "
             "on a `theta` that requires grad).", lambda args=args: _first_order_chaser(*args)),
        ])

