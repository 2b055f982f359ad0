"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu and Wierstra, 2016), without
full-context embeddings."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..functional import Params
from .amortised import AmortisedLearner


class MatchingNet(AmortisedLearner):
    """Matching Networks: a query's label distribution is an attention-weighted sum of the support labels,
    the attention a softmax over cosine similarities of embeddings.

    Prediction (eq. 1):   P(y | x, S) = sum_i a(x, x_i) y_i         (y_i one-hot)
    Attention (eq. 2):    a(x, x_i) = softmax_i( cos(f(x), g(x_i)) )
    Meta-objective:       min_theta mean_i -log P(y | x, S_i) over each task's query set

    Without full-context embeddings (sec. 2.1.2): f = g = the embedding network, each example embedded on
    its own, not in the context of the whole support set (no LSTMs). The outputs are log P(y | x, S), so
    ``F.cross_entropy`` on them is that negative log-likelihood (their softmax is P itself). No inner loop.

    Args: as for :class:`~mlcourse.algorithms.protonet.ProtoNet` (without the step-size schedule).
    """

    def task_state(self, params: Params, support: torch.Tensor, targets: torch.Tensor) -> dict:
        return {"support": F.normalize(support, dim=-1), "targets": targets}

    def outputs(self, params: Params, state: dict, query: torch.Tensor) -> torch.Tensor:
        attention = torch.softmax(F.normalize(query, dim=-1) @ state["support"].transpose(-1, -2), dim=-1)
        # every class has a support example and softmax weights are > 0, so the sum is > 0: the clamp only
        # guards against underflow
        return torch.log((attention @ state["targets"]).clamp_min(torch.finfo(query.dtype).tiny))
