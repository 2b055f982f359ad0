"""Model-agnostic meta-learning (Finn, Abbeel and Levine, 2017, Algorithm 2), and first-order MAML."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from torch.func import vmap

from ..fastpath import batched_forward, has_batched_forward, per_task, workers_for
from ..functional import forward, inner_loop, task_gradients
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

    def meta_gradient(self, batch: TaskBatch):
        """(meta-loss, its gradient w.r.t. theta), by the fastest of three equivalent computations:

        * per-task loop: each task's gradient on its own (``task_gradients``: the task's graph freed
          before the next is built; in threads if :func:`mlcourse.functional.set_task_workers` says so);
        * vectorised, for the MLP: the tasks folded into the batch dimension, each with its own copy of
          theta (``mlcourse.fastpath.batched_forward``: one ``baddbmm`` per layer instead of ``vmap``);
        * otherwise (vmap over a conv net, ``chunk_size``): autograd of :meth:`meta_loss`.

        A subclass that redefines the objective (``meta_loss``, ``inner_update``, ``support_loss`` or
        ``adapt``) gets the last, the gradient of its own ``meta_loss``."""
        if not self._plain_maml_objective():
            return super().meta_gradient(batch)
        if not self.vectorised:
            theta = self.meta_parameters()

            def task_loss(sx, sy, qx, qy):
                return self.loss_fn(forward(self.model, self.adapt(sx, sy, theta), qx), qy)

            return task_gradients(task_loss, dict(self.named_parameters()), *batch,
                                  workers=workers_for(self.model))
        if self.chunk_size is None and has_batched_forward(self.model):
            return self._folded_meta_gradient(batch)
        return super().meta_gradient(batch)

    def _folded_meta_gradient(self, batch: TaskBatch):
        # phi_i from theta_i, a copy of theta per task: the sum of the task losses has gradient grad L_i(theta_i)
        # with respect to theta_i, so one autograd call takes every task's inner step (eq. 1)
        def summed_loss(x, y):
            return lambda p: vmap(self.loss_fn)(batched_forward(self.model, p, x), y).sum()

        phi = inner_loop(summed_loss(batch.support_x, batch.support_y), per_task(self.meta_parameters(),
                         batch.num_tasks), self.inner_lr, self.inner_steps, self.first_order, vectorised=False)
        loss = summed_loss(batch.query_x, batch.query_y)(phi) / batch.num_tasks
        named = self.named_parameters()
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        return loss.detach(), {k: g for (k, _), g in zip(named, grads) if g is not None}

    def _plain_maml_objective(self) -> bool:
        cls = type(self)
        return (cls.meta_loss is MetaLearner.meta_loss and cls.inner_update is MetaLearner.inner_update
                and cls.support_loss is MetaLearner.support_loss and cls.adapt is MetaLearner.adapt)
