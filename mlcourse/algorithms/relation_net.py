"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr and Hospedales, 2018)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..functional import Params, forward
from ..nn import RelationModule
from ..utils import check_int
from .amortised import AmortisedLearner, class_sums


def relation_mse(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The paper's objective (eq. 2): squared error of each relation score against 1 for the query's class and
    0 for the others, summed over classes and averaged over queries."""
    onehot = (labels.unsqueeze(-1) == torch.arange(scores.shape[-1], device=labels.device)).to(scores.dtype)
    return ((scores - onehot) ** 2).sum(-1).mean()


class RelationNet(AmortisedLearner):
    """Relation Networks: a learned module g scores how well a query matches each class.

    Class feature (sec. 3.3):   C_k = sum of f(x_i) over the class's support examples (K-shot: summed)
    Relation score (eq. 1):     r_{k}(x) = g([f(x), C_k]) in (0, 1)
    Meta-objective (eq. 2):     min mean over queries of sum_k (r_k(x) - 1[y = k])^2  (:func:`relation_mse`)

    The paper concatenates feature maps and runs g's two conv blocks on them; our embedding averages over
    space, so g reads concatenated feature vectors (:class:`~mlcourse.nn.RelationModule`). The outputs are
    the scores (argmax classifies). f and g are meta-learned together; no inner loop.

    Args:
        model: the embedding network f (e.g. ``ConvNet(None)``).
        loss_fn: :func:`relation_mse` (the paper); ``F.cross_entropy`` on the scores also trains.
        features: f's output size (64 for the conv net); hidden: g's last hidden layer (the paper: 8).
        inner_steps, eval_inner_steps, vectorise, chunk_size, transductive: as for ProtoNet.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable = relation_mse, features: int = 64, hidden: int = 8,
                 inner_steps: int = 0, eval_inner_steps: int | None = None, vectorise="auto",
                 chunk_size: int | None = None, transductive: bool = True):
        relation = RelationModule(check_int("features", features, 1), check_int("hidden", hidden, 1))
        super().__init__(model, loss_fn, inner_steps, eval_inner_steps, vectorise, chunk_size, transductive,
                         parts={"relation": relation})

    def task_state(self, params: Params, support: torch.Tensor, targets: torch.Tensor) -> dict:
        return {"classes": class_sums(support, targets)[0]}

    def outputs(self, params: Params, state: dict, query: torch.Tensor) -> torch.Tensor:
        classes = state["classes"]
        pairs = torch.cat([query.unsqueeze(-2).expand(-1, classes.shape[0], -1),
                           classes.unsqueeze(0).expand(query.shape[0], -1, -1)], dim=-1)
        return forward(self.model["relation"], self.part(params, "relation"), pairs)
