"""Learners that adapt by a forward pass over the support set, with no gradient steps: metric-based
(ProtoNet, Matching and Relation networks), closed-form (R2-D2) and black-box (SNAIL) learners."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import vmap

from ..functional import Params, forward
from ..tasks.base import TaskBatch
from ..utils import check_int
from .base import MetaLearner

TASK = "task/"  # phi's keys for what the support set contributed (prototypes, ridge weights, ...)


def support_targets(support_y: torch.Tensor, dtype: torch.dtype, who: str, regression: bool = False) -> torch.Tensor:
    """One-hot targets Y (``[..., examples, ways]``) of integer labels 0..N-1, N the largest label + 1, or
    real-valued targets as they are when ``regression``; a ValueError for a class with no support example
    or for real targets given to a classifier. Runs eagerly, outside vmap: N must be a Python int."""
    if support_y.dtype.is_floating_point:
        if not regression:
            raise ValueError(f"{who} classifies: support_y holds real-valued targets ({support_y.dtype}, shape "
                             f"{tuple(support_y.shape)}), but it compares queries with class labels and outputs "
                             "class scores (chapter 10): use a regression learner (R2D2, SNAIL, MAML)")
        return support_y.to(dtype)
    if support_y.numel() == 0 or int(support_y.min()) < 0:
        raise ValueError(f"support_y must hold class labels 0..N-1 with at least one example, got "
                         f"{support_y.unique().tolist()}")
    ways = int(support_y.max()) + 1
    onehot = (support_y.unsqueeze(-1) == torch.arange(ways, device=support_y.device)).to(dtype)
    missing = (onehot.sum(-2) == 0).nonzero()
    if len(missing):
        where = f"task {missing[0, 0].item()}, " if support_y.dim() > 1 else ""
        raise ValueError(f"every class 0..{ways - 1} needs at least one support example: {where}class "
                         f"{missing[0, -1].item()} has none")
    return onehot


def split_task(phi: Params) -> tuple[Params, dict]:
    """(theta's entries, the task's entries without their ``task/`` prefix) of an adapted ``phi``."""
    return ({k: v for k, v in phi.items() if not k.startswith(TASK)},
            {k[len(TASK):]: v for k, v in phi.items() if k.startswith(TASK)})


class AmortisedLearner(MetaLearner):
    """Adaptation is one forward pass: phi = theta plus a task state computed from the embedded support
    set (``task_state``), and the query outputs are a function of that state and the embedded query set
    (``outputs``). A subclass defines those two; the meta-loss, mean_i L(outputs_i, query labels), and its
    gradient (plain backpropagation: no inner loop) are shared.

    ``model`` is the embedding network f_theta. ``parts`` (e.g. a relation module) are meta-learned with
    it: the learner's ``model`` is then ``ModuleDict(embedding=model, **parts)``.

    ``inner_steps`` must be 0: there are no gradient steps. ``predict`` and ``adapt`` accept a number of
    steps (the command line scores sinusoid rows after 1 and 10) and ignore it: the answer is the same.
    Labels are turned into one-hot targets before the tasks are mapped (``task_extras``), since vmap
    needs the number of classes as a Python int; ``adapt`` on one task without them does it itself.
    """

    regression = False  # whether real-valued targets make sense (R2-D2, SNAIL)

    def __init__(self, model: nn.Module, loss_fn: Callable, inner_steps: int = 0, eval_inner_steps: int | None = None,
                 vectorise="auto", chunk_size: int | None = None, transductive: bool = True,
                 parts: dict[str, nn.Module] | None = None):
        why = f"{type(self).__name__} adapts by a forward pass over the support set: no gradient steps"
        check_int("inner_steps", inner_steps, 0, 0, why)
        if eval_inner_steps is not None:
            check_int("eval_inner_steps", eval_inner_steps, 0, 0, why)
        self.prefix = "embedding." if parts else ""
        like = next(iter(model.parameters()))
        for part in (parts or {}).values():  # built in float32 on the CPU: match the embedding
            part.to(device=like.device, dtype=like.dtype)
        super().__init__(nn.ModuleDict({"embedding": model, **parts}) if parts else model, loss_fn, vectorise,
                         chunk_size, transductive, eval_inner_steps)
        self.inner_steps = 0

    # -- what a subclass defines -----------------------------------------------------------------
    def task_state(self, params: Params, support: torch.Tensor, targets: torch.Tensor) -> dict:
        """The task's state from the embedded support set ``[n, d]`` and its targets ``[n, ways]``."""
        raise NotImplementedError

    def outputs(self, params: Params, state: dict, query: torch.Tensor) -> torch.Tensor:
        """The outputs (logits, log-probabilities or scores) for the embedded query set ``[m, d]``."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------
    def part(self, params: Params, name: str) -> Params:
        """The entries of ``params`` that belong to ``model[name]``, keyed as that module's own."""
        prefix = name + "."
        return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}

    def embed(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """f_theta(x): the embedding network run on ``params``."""
        if self.prefix:
            return forward(self.model["embedding"], self.part(params, "embedding"), x)
        return forward(self.model, {k: v for k, v in params.items() if not k.startswith(TASK)}, x)

    def support_targets(self, support_y: torch.Tensor) -> torch.Tensor:
        dtype = next(iter(self.model.parameters())).dtype
        return support_targets(support_y, dtype, type(self).__name__, self.regression)

    def task_extras(self, batch: TaskBatch, steps: int) -> tuple:
        return (self.support_targets(batch.support_y),)

    def inner_update(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, steps: int,
                     targets: torch.Tensor | None = None) -> Params:
        """phi = theta plus ``task_state`` of the embedded support set (``steps`` are not taken: none exist)."""
        targets = self.support_targets(support_y) if targets is None else targets
        state = self.task_state(params, self.embed(params, support_x), targets)
        return {**params, **{TASK + k: v for k, v in state.items()}}

    def query_outputs(self, phi: Params, support_x: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """The query set embedded as one batch (transductive) or each example beside the support set alone
        (what batch norm sees; see :class:`MetaLearner`), then ``outputs``."""
        params, state = split_task(phi)
        if self.transductive:
            query = self.embed(params, query_x)
        else:
            query = vmap(lambda x: self.embed(params, torch.cat([support_x, x.unsqueeze(0)]))[-1])(query_x)
        return self.outputs(params, state, query)

    def meta_loss(self, batch: TaskBatch) -> torch.Tensor:
        """mean_i L(outputs of phi_i on the query set, query labels), phi_i from one forward pass."""
        theta = self.meta_parameters()
        extras = self.task_extras(batch, 0)

        def query_loss(sx, sy, qx, qy, *extra):
            return self.loss_fn(self.query_outputs(self.adapt(sx, sy, theta, 0, *extra), sx, qx), qy)

        return self.map_tasks(query_loss, *batch, *extras).mean()


def class_sums(support: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Y^T E: the sum of each class's support embeddings, ``[ways, d]``; Y^T 1: its number of shots)."""
    return targets.transpose(-1, -2) @ support, targets.sum(-2)
