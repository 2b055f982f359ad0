"""A small SNAIL, a black-box meta-learner (Mishra, Rohaninejad, Chen and Abbeel, 2018)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..functional import Params, forward
from ..nn import SNAILSequence
from ..utils import check_int
from .amortised import AmortisedLearner


class SNAIL(AmortisedLearner):
    """SNAIL: a sequence model reads the labelled support set and then an unlabelled query, and outputs the
    query's prediction. Nothing about learning is built in: the sequence model's weights, meta-trained
    over tasks, are the learning algorithm (a black box).

    Tokens (sec. 3):   support i: [f(x_i), y_i, 1]    query: [f(x), 0, 0]    (y_i one-hot, or the real target)
    Prediction:        h(tokens of the support set, then the query)  read at the query's step
    Meta-objective:    min over f and h of mean_i cross-entropy (classification) or MSE (regression)

    Each query is its own sequence (the support set, then that query), as in the paper, so queries never
    see one another. The trailing 1/0 says which tokens carry a target (a real target may itself be 0);
    the paper's classification tokens have none. The sequence model (:class:`~mlcourse.nn.SNAILSequence`)
    is smaller than the paper's Omniglot model, so it trains on a CPU. Its output layer fixes N (``outputs``):
    a SNAIL trained 5-way classifies 5-way tasks only.

    Args:
        model: the embedding network f (``ConvNet(None)``; the sinusoid MLP without its output layer).
        loss_fn: ``F.cross_entropy`` or ``F.mse_loss``.
        features: f's output size; outputs: N (classification) or the target size (regression).
        key, value, filters: the sequence model's attention and convolution widths.
        inner_steps, eval_inner_steps, vectorise, chunk_size, transductive: as for ProtoNet.
    """

    regression = True

    def __init__(self, model: nn.Module, loss_fn: Callable, features: int = 64, outputs: int = 5,
                 key: int = 16, value: int = 16, filters: int = 32, inner_steps: int = 0,
                 eval_inner_steps: int | None = None, vectorise="auto", chunk_size: int | None = None,
                 transductive: bool = True):
        self.num_outputs = check_int("outputs", outputs, 1)
        sequence = SNAILSequence(check_int("features", features, 1) + outputs + 1, outputs, key, value, filters)
        super().__init__(model, loss_fn, inner_steps, eval_inner_steps, vectorise, chunk_size, transductive,
                         parts={"sequence": sequence})

    def support_targets(self, support_y: torch.Tensor) -> torch.Tensor:
        targets = super().support_targets(support_y)
        if targets.shape[-1] != self.num_outputs:
            what = "classes" if not support_y.dtype.is_floating_point else "target dimensions"
            raise ValueError(f"this SNAIL was built with outputs={self.num_outputs}, but the tasks have "
                             f"{targets.shape[-1]} {what}: its output layer fixes them (build one per N)")
        return targets

    def task_state(self, params: Params, support: torch.Tensor, targets: torch.Tensor) -> dict:
        return {"tokens": torch.cat([support, targets, torch.ones_like(targets[..., :1])], dim=-1)}

    def outputs(self, params: Params, state: dict, query: torch.Tensor) -> torch.Tensor:
        support = state["tokens"]
        blank = query.new_zeros(query.shape[0], support.shape[-1] - query.shape[-1])
        sequences = torch.cat([support.unsqueeze(0).expand(query.shape[0], -1, -1),
                               torch.cat([query, blank], dim=-1).unsqueeze(1)], dim=1)
        return forward(self.model["sequence"], self.part(params, "sequence"), sequences)[:, -1]
