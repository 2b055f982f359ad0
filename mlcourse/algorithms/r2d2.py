"""R2-D2: meta-learning with a differentiable closed-form ridge regression head (Bertinetto, Henriques,
Torr and Vedaldi, 2019)."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..functional import Params
from ..utils import check_positive
from .amortised import AmortisedLearner


def with_bias_column(features: torch.Tensor) -> torch.Tensor:
    """[X, 1]: a constant feature, so that the ridge head has a per-task bias."""
    return torch.cat([features, torch.ones_like(features[..., :1])], dim=-1)


def ridge_weights(features: torch.Tensor, targets: torch.Tensor, lam) -> torch.Tensor:
    """W = X^T (X X^T + lambda I_n)^-1 Y: ridge regression argmin_W ||X W - Y||^2 + lambda ||W||^2 solved
    through the Woodbury identity, an n x n system for n support examples instead of the d x d primal
    (X^T X + lambda I_d)^-1 X^T Y (equal; tests/test_family.py checks it)."""
    n = features.shape[-2]
    gram = features @ features.transpose(-1, -2)
    eye = torch.eye(n, dtype=features.dtype, device=features.device)
    return features.transpose(-1, -2) @ torch.linalg.solve(gram + lam * eye, targets)


class R2D2(AmortisedLearner):
    """R2-D2: the base learner is ridge regression on the embedded support set, solved in closed form, so
    the meta-gradient flows through the solution to the embedding (and to lambda).

    Head (sec. 3.2):       W = X^T (X X^T + lambda I)^-1 Y     X: support embeddings [n, d+1], Y: one-hot [n, N]
    Outputs (sec. 3.2):    alpha X' W + beta                   X': query embeddings; alpha, beta meta-learned
    Meta-objective:        min over theta, alpha, beta, lambda of mean_i cross-entropy (classification) or
                           MSE (regression) of the outputs on the query set

    The paper learns the scale alpha and offset beta, which calibrate the regression outputs for the
    cross-entropy, and lambda; we learn all three (lambda as log lambda, so it stays positive), and append
    a constant 1 to the embedding (a per-task bias; the paper's features are larger than ours, so this is
    ours). Under the cross-entropy beta shifts every class's logit alike and so changes nothing; it matters
    for regression, which works as it is: Y holds the real targets. No inner loop.

    Args:
        model: the embedding network (``ConvNet(None)``; the sinusoid MLP without its output layer).
        loss_fn: ``F.cross_entropy`` (classification) or ``F.mse_loss`` (regression).
        init_lambda: lambda's start (> 0); learn_lambda: meta-learn it (else fixed).
        init_scale: alpha's start (beta starts at 0).
        inner_steps, eval_inner_steps, vectorise, chunk_size, transductive: as for ProtoNet.

    The meta-parameters beyond the model's are ``scale``, ``bias`` and (if learned) ``log_lambda``.
    """

    regression = True

    def __init__(self, model: nn.Module, loss_fn: Callable, inner_steps: int = 0, init_lambda: float = 1.0,
                 learn_lambda: bool = True, init_scale: float = 1.0, eval_inner_steps: int | None = None,
                 vectorise="auto", chunk_size: int | None = None, transductive: bool = True):
        super().__init__(model, loss_fn, inner_steps, eval_inner_steps, vectorise, chunk_size, transductive)
        like = next(iter(self.model.parameters()))
        log_lambda = torch.tensor(math.log(check_positive("init_lambda", init_lambda)), dtype=like.dtype)
        self.meta_tensors = {"scale": nn.Parameter(torch.tensor(check_positive("init_scale", init_scale),
                                                                dtype=like.dtype)),
                             "bias": nn.Parameter(torch.zeros((), dtype=like.dtype))}
        if learn_lambda:
            self.meta_tensors["log_lambda"] = nn.Parameter(log_lambda)
        self.fixed_log_lambda = None if learn_lambda else log_lambda
        self.to(like.device)

    @property
    def lam(self) -> torch.Tensor:
        """lambda > 0."""
        log_lambda = self.meta_tensors.get("log_lambda")
        if log_lambda is None:
            log_lambda = self.fixed_log_lambda.to(self.meta_tensors["scale"].device)
        return log_lambda.exp()

    def task_state(self, params: Params, support: torch.Tensor, targets: torch.Tensor) -> dict:
        return {"weights": ridge_weights(with_bias_column(support), targets, self.lam)}

    def outputs(self, params: Params, state: dict, query: torch.Tensor) -> torch.Tensor:
        return self.meta_tensors["scale"] * (with_bias_column(query) @ state["weights"]) + self.meta_tensors["bias"]
