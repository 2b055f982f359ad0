"""Model-agnostic meta-learning (Finn, Abbeel and Levine, 2017, Algorithm 2), and first-order MAML."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..functional import forward
from ..tasks.base import TaskBatch
from ..utils import check_int, check_positive
from .base import MetaLearner


class MAML(MetaLearner):
    """MAML: learn theta so that k gradient steps on a task's support set do well on its query set.

    Inner loop (adaptation, eq. 1):   phi_i = U^k(theta) with U(phi) = phi - alpha grad L_i^tr(phi)
    Meta-objective (eq. 3):           min_theta  mean_i L_i^test(phi_i)
    Its gradient carries the Jacobian dphi_i/dtheta = prod_j (I - alpha H_j), i.e. Hessian-vector
    products; ``first_order=True`` drops it (FOMAML: dphi_i/dtheta taken as I).

    Args:
        model: any ``nn.Module``; its parameters are theta.
        loss_fn: ``loss_fn(prediction, target)``, e.g. ``F.cross_entropy`` or ``F.mse_loss``.
        inner_lr: alpha > 0.
        inner_steps: k >= 1 in meta-training.
        first_order: FOMAML.
        eval_inner_steps: k at test time (default: ``inner_steps``; the paper uses 3 on Omniglot 5-way).
        vectorise, chunk_size, transductive: see :class:`MetaLearner`.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, inner_lr: float, inner_steps: int = 1,
                 first_order: bool = False, eval_inner_steps: int | None = None, vectorise="auto",
                 chunk_size: int | None = None, transductive: bool = True):
        super().__init__(model, loss_fn, vectorise, chunk_size, transductive, eval_inner_steps)
        self.inner_lr = check_positive("inner_lr", inner_lr)
        self.inner_steps = check_int("inner_steps", inner_steps, 1)
        self.first_order = bool(first_order)

    def meta_loss(self, batch: TaskBatch) -> torch.Tensor:
        """mean_i L_i^test(U^k(theta)): differentiable w.r.t. ``model.parameters()``."""
        theta = self.meta_parameters()

        def query_loss(sx, sy, qx, qy):
            return self.loss_fn(forward(self.model, self.adapt(sx, sy, theta), qx), qy)

        return self.map_tasks(query_loss, *batch).mean()
