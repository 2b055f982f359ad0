"""LLAMA: Lightweight Laplace Approximation for Meta-Adaptation (Grant et al., 2018, Subroutine 4).

MAML read as empirical Bayes in a hierarchical model: each task's parameters phi_j ~ p(phi | theta),
and theta maximises the marginal likelihood prod_j integral p(X_j | phi_j) p(phi_j | theta) dphi_j.
Laplace's method around the adapted phi_hat_j = U^k(theta) (early stopping = the prior) gives

    -log p(X_j | theta) ~ -log p(X_j^query | phi_hat_j) + eta log det H_hat_j         (ML-LAPLACE)

with H_hat_j the curvature of the task's support negative log-likelihood at phi_hat_j plus the
isotropic prior precision tau I, approximated per Linear / Conv2d layer by K-FAC (Kronecker
factors) or by the diagonal Fisher. Batch-norm scale and shift get no curvature term, as in the
paper. The same H_hat gives the Laplace posterior N(phi_hat_j, H_hat_j^-1) to sample from.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..curvature import CURVATURES, laplace_logdet, sample_laplace_posterior
from ..functional import Params, forward
from ..tasks.base import TaskBatch
from ..utils import check_positive
from .maml import MAML


class LLAMA(MAML):
    """MAML whose meta-objective adds eta * log det H_hat (the Laplace complexity term) per task.

    Meta-objective:  mean_j [ L_j^test(phi_hat_j) + eta log det H_hat_j ],  phi_hat_j = U^k(theta),
    H_hat_j = sum_n curvature of l_n at phi_hat_j (K-FAC or diagonal) + tau I  (see mlcourse.curvature).
    The curvature depends on theta through phi_hat_j, and that dependence is differentiated.

    Args:
        model, loss_fn: as for MAML; ``loss_fn`` must be cross-entropy (integer targets) or the mean
            squared error (real targets), the likelihoods whose curvature is computed.
        inner_lr: alpha > 0.   inner_steps: k >= 1.
        prior_precision: tau > 0.   eta: weight > 0 of log det H_hat.
        curvature: "kfac" or "diagonal".
        noise_variance: regression only, sigma^2 of the Gaussian likelihood whose curvature is used;
            default: the one that makes it the loss, D/2 for a mean squared error over D outputs.
        eval_inner_steps, vectorise, chunk_size, transductive: see :class:`MAML`.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, inner_lr: float, inner_steps: int = 1,
                 prior_precision: float = 1e-3, eta: float = 1e-6, curvature: str = "kfac",
                 noise_variance: float | None = None, eval_inner_steps: int | None = None, vectorise="auto",
                 chunk_size: int | None = None, transductive: bool = True):
        # phi_hat = U^k(theta): MAML's inner loop, unchanged (second order)
        super().__init__(model, loss_fn, inner_lr, inner_steps, False, eval_inner_steps, vectorise, chunk_size,
                         transductive)
        self.prior_precision = check_positive("prior_precision", prior_precision)
        self.eta = check_positive("eta", eta)
        if curvature not in CURVATURES:
            raise ValueError(f"curvature={curvature!r} is unknown: allowed {', '.join(map(repr, CURVATURES))}")
        self.curvature = curvature
        self.noise_variance = None if noise_variance is None else check_positive("noise_variance", noise_variance)

    def log_det(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
        """log det H_hat at ``params`` on one task's support set (differentiable)."""
        return laplace_logdet(self.model, params, support_x, support_y, self.prior_precision, self.curvature,
                              self.noise_variance)

    def task_terms(self, batch: TaskBatch):
        """Per task: (query loss at phi_hat, log det H_hat), each of shape (tasks,)."""
        theta = self.meta_parameters()

        def per_task(sx, sy, qx, qy):
            phi = self.adapt(sx, sy, theta)
            return self.loss_fn(forward(self.model, phi, qx), qy), self.log_det(phi, sx, sy)

        return self.map_tasks(per_task, *batch)

    def meta_loss(self, batch: TaskBatch) -> torch.Tensor:
        """mean_j [ L_j^test(phi_hat_j) + eta log det H_hat_j ]  (ML-LAPLACE, averaged over the meta-batch)."""
        query, logdet = self.task_terms(batch)
        return (query + self.eta * logdet).mean()

    def sample_posterior(self, support_x: torch.Tensor, support_y: torch.Tensor, num_samples: int,
                         generator: torch.Generator | None = None, inner_steps: int | None = None) -> Params:
        """Adapt to a new task, then draw ``num_samples`` parameter sets from N(phi_hat, H_hat^-1)."""
        with torch.enable_grad():
            phi = self.adapt(support_x, support_y, inner_steps=inner_steps)
        phi = {k: v.detach() for k, v in phi.items()}
        return sample_laplace_posterior(self.model, phi, support_x, support_y, self.prior_precision,
                                        num_samples, self.curvature, generator,
                                        self.noise_variance)

    def predictive_samples(self, support_x: torch.Tensor, support_y: torch.Tensor, x: torch.Tensor,
                           num_samples: int, generator: torch.Generator | None = None,
                           inner_steps: int | None = None) -> torch.Tensor:
        """Outputs on ``x`` of ``num_samples`` posterior draws: (num_samples, *model output on x)."""
        samples = self.sample_posterior(support_x, support_y, num_samples, generator, inner_steps)
        with torch.no_grad():
            return torch.stack([forward(self.model, {k: v[s] for k, v in samples.items()}, x)
                                for s in range(num_samples)])
