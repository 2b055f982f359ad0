"""The two baselines of chapter 1: training from scratch, and joint training then fine-tuning."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..tasks.base import TaskBatch
from ..utils import check_int, check_positive
from .base import MetaLearner


class Pretrained(MetaLearner):
    """Joint training ("pretrained" in the MAML paper, section 5.1), then fine-tuning.

    Meta-training minimises the plain loss of theta on every task's data pooled (support and
    query), with no adaptation: mean_i L_i(theta). At test time it fine-tunes theta on the
    support set with ``inner_steps`` steps of gradient descent of size ``inner_lr`` (first order:
    fine-tuning never needs gradients through itself). On sinusoids with random phases the
    pooled loss is minimised by a function close to zero (chapter 1 works out which).
    """

    first_order = True

    def __init__(self, model: nn.Module, loss_fn: Callable, inner_lr: float, inner_steps: int = 1,
                 eval_inner_steps: int | None = None, vectorise="auto", chunk_size: int | None = None,
                 transductive: bool = True):
        super().__init__(model, loss_fn, vectorise, chunk_size, transductive, eval_inner_steps)
        self.inner_lr = check_positive("inner_lr", inner_lr)
        self.inner_steps = check_int("inner_steps", inner_steps, 0)

    def meta_loss(self, batch: TaskBatch) -> torch.Tensor:
        theta = self.meta_parameters()

        def pooled_loss(sx, sy, qx, qy):
            return self.support_loss(theta, torch.cat([sx, qx]), torch.cat([sy, qy]))

        return self.map_tasks(pooled_loss, *batch).mean()


class FromScratch(Pretrained):
    """No meta-learning: every task is learnt from the same random initialisation.

    The model's own (untrained) parameters serve as that initialisation; adaptation is
    ``inner_steps`` steps of gradient descent on the support set. It is never meta-trained.
    """

    def meta_loss(self, batch: TaskBatch) -> torch.Tensor:
        raise RuntimeError("FromScratch is not meta-trained: call evaluate() on it directly")
