"""Prototypical Networks (Snell, Swersky and Zemel, 2017)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..functional import Params
from ..utils import check_int
from .amortised import AmortisedLearner, class_sums


class ProtoNet(AmortisedLearner):
    """Prototypical Networks: each class is the mean of its embedded support examples, and a query is
    classified by a softmax over negative squared Euclidean distances to these prototypes.

    Prototypes (eq. 1):     c_k = (1 / |S_k|) sum_{(x_i, y_i) in S_k} f_theta(x_i)
    Class scores (eq. 2):   p(y = k | x) = softmax_k(-||f_theta(x) - c_k||^2)
    Meta-objective:         min_theta mean_i cross-entropy of those scores on the query set

    Expanding the square, -||f - c_k||^2 = 2 c_k^T f - ||c_k||^2 - ||f||^2: a linear classifier on the
    embedding with W_k = 2 c_k and b_k = -||c_k||^2, up to a term the same for every class (sec. 2.3;
    ProtoMAML starts its head there). No inner loop: ``inner_steps`` is 0.

    Args:
        model: the embedding network f_theta (e.g. ``ConvNet(None)``, the Omniglot conv net without head).
        loss_fn: on logits and labels, ``F.cross_entropy``.
        lr_halving_every: the paper halves the outer step size every 2000 episodes (sec. 3.1); None: constant.
        inner_steps, eval_inner_steps: 0 (or None); vectorise, chunk_size, transductive: see
            :class:`MetaLearner`.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, inner_steps: int = 0, lr_halving_every: int | None = None,
                 eval_inner_steps: int | None = None, vectorise="auto", chunk_size: int | None = None,
                 transductive: bool = True):
        super().__init__(model, loss_fn, inner_steps, eval_inner_steps, vectorise, chunk_size, transductive)
        self.lr_halving_every = None if lr_halving_every is None else check_int("lr_halving_every",
                                                                                  lr_halving_every, 1)

    def task_state(self, params: Params, support: torch.Tensor, targets: torch.Tensor) -> dict:
        sums, shots = class_sums(support, targets)
        return {"prototypes": sums / shots.unsqueeze(-1)}

    def outputs(self, params: Params, state: dict, query: torch.Tensor) -> torch.Tensor:
        """-||f(x) - c_k||^2 for every query x and class k, as the difference itself (not the expansion,
        which cancels badly when the two are close)."""
        return -((query.unsqueeze(-2) - state["prototypes"]) ** 2).sum(-1)

    def outer_lr_factor(self, iteration: int, iterations: int) -> float:
        return 1.0 if self.lr_halving_every is None else 0.5 ** (iteration // self.lr_halving_every)
