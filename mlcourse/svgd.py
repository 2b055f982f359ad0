"""Stein variational gradient descent (Liu and Wang, 2016): the inner loop of Bayesian MAML.

M particles x_1..x_M (the rows of an (M, D) tensor) approximate a density p. Each step moves
every particle along the direction that decreases KL(q || p) fastest in the unit ball of the
kernel's Hilbert space (Liu and Wang, 2016, Algorithm 1; Yoon et al., 2018, sec. 2):

    x_m <- x_m + eps * phi*(x_m),
    phi*(x_m) = (1/M) sum_j [ k(x_j, x_m) grad log p(x_j)  +  grad_{x_j} k(x_j, x_m) ]
                              driving term                  repulsive term

with the RBF kernel k(x, y) = exp(-||x - y||^2 / h). The driving term is a kernel-smoothed
gradient ascent on log p; the repulsive term, grad_{x_j} k(x_j, x_m) = (2/h)(x_m - x_j) k(x_j, x_m),
pushes particles apart so that they spread over p instead of collapsing on its mode. With one
particle the repulsive term vanishes and k = 1: SVGD is gradient ascent on log p.
"""
from __future__ import annotations

import math

import torch

from .utils import check_positive


def median_bandwidth(particles: torch.Tensor) -> torch.Tensor:
    """The median heuristic h = med_{j<m} ||x_j - x_m||^2 / log M (Liu and Wang, 2016, sec. 5).

    It makes sum_j k(x_j, x_m) ~ M exp(-med / h) = 1: each particle's own gradient and those of
    the others weigh about equally. The median of the M(M-1)/2 pairs is the mean of the two
    middle values when their number is even (as ``numpy.median``); h = 1 when M = 1, and h is at
    least the dtype's machine epsilon (coincident particles divide nothing by zero). The result
    is detached: a constant for autograd (the usual choice, and the authors' code's).
    """
    particles = _check_particles(particles)
    m = particles.shape[0]
    if m == 1:
        return torch.ones((), dtype=particles.dtype, device=particles.device)
    pairs = torch.triu_indices(m, m, 1, device=particles.device)
    sq = _squared_distances(particles.detach())[pairs[0], pairs[1]].sort().values
    n = sq.shape[0]
    median = (sq[(n - 1) // 2] + sq[n // 2]) / 2
    return (median / math.log(m)).clamp_min(torch.finfo(particles.dtype).eps)


def rbf_kernel(particles: torch.Tensor, bandwidth) -> torch.Tensor:
    """K[j, m] = k(x_j, x_m) = exp(-||x_j - x_m||^2 / h) for the rows of ``particles`` (M, D)."""
    return torch.exp(-_squared_distances(particles) / bandwidth)


def svgd_direction(particles: torch.Tensor, scores: torch.Tensor, bandwidth: float | None = None) -> torch.Tensor:
    """phi*(x_m) for every particle: (M, D), from ``particles`` (M, D) and their ``scores`` grad log p (M, D).

    phi*(x_m) = (1/M) sum_j [ k(x_j, x_m) score_j + (2/h)(x_m - x_j) k(x_j, x_m) ],  k(x, y) = exp(-||x - y||^2 / h).

    ``bandwidth`` is h > 0; None takes the median heuristic (:func:`median_bandwidth`), recomputed
    from the particles at each call and treated as a constant by autograd (detached). Everything
    else is differentiable w.r.t. the particles and the scores (Bayesian MAML's meta-gradient flows
    through the kernel). Vectorised over particles (two M x M matrix products), usable under vmap.
    """
    particles = _check_particles(particles)
    if scores.shape != particles.shape:
        raise ValueError(f"scores have shape {tuple(scores.shape)}, the particles {tuple(particles.shape)}: "
                         "need one score (grad log p) per particle, of the same shape")
    h = median_bandwidth(particles) if bandwidth is None else check_positive("bandwidth", bandwidth)
    k = rbf_kernel(particles, h)                   # symmetric: K[j, m] = K[m, j]
    driving = k @ scores                           # sum_j k(x_j, x_m) score_j
    # sum_j (x_m - x_j) k(x_j, x_m) = x_m sum_j k(x_j, x_m) - sum_j k(x_j, x_m) x_j
    repulsive = (2 / h) * (particles * k.sum(0).unsqueeze(-1) - k @ particles)
    return (driving + repulsive) / particles.shape[0]


def _squared_distances(x: torch.Tensor) -> torch.Tensor:
    """||x_j - x_m||^2 as an M x M matrix, from Gram products of the centred rows (no M x M x D tensor)."""
    x = x - x.mean(0)  # distances are translation invariant; centring limits cancellation
    norms = (x * x).sum(-1)
    sq = (norms.unsqueeze(1) + norms.unsqueeze(0) - 2 * x @ x.T).clamp_min(0)
    return sq * (1 - torch.eye(x.shape[0], dtype=x.dtype, device=x.device))  # exact zeros on the diagonal


def _check_particles(particles: torch.Tensor) -> torch.Tensor:
    if particles.dim() != 2 or particles.shape[0] < 1:
        raise ValueError(f"particles have shape {tuple(particles.shape)}: need (M, D) with M >= 1 particles")
    return particles
