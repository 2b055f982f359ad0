"""What every gradient-based meta-learner shares: the model, its loss, and how tasks are mapped."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import vmap

from ..functional import Params, choose_vectorised, forward, map_tasks, params_of
from ..nn import has_torch_batchnorm
from ..tasks.base import TaskBatch


class MetaLearner:
    """Base class: holds ``model`` (whose parameters are the meta-parameters theta) and ``loss_fn``.

    Subclasses define ``adapt(support_x, support_y, params=None, inner_steps=None)`` for one
    task, and either ``meta_loss(batch)`` (a differentiable scalar) or ``meta_gradient(batch)``.
    ``predict`` and the training/evaluation routines in :mod:`mlcourse.train` are shared.

    ``vectorise``: "auto" (see :func:`mlcourse.functional.choose_vectorised`: vmap over tasks
    except for PyTorch batch-norm layers, and for convolutions on the CPU), True (vmap) or False
    (a loop over tasks). ``chunk_size`` bounds how many tasks vmap runs at once.

    ``transductive`` says how batch norm sees the query set when predicting (it changes nothing
    for a model without batch norm). True: the whole query set is one batch, so its statistics
    are shared between query examples (MAML's evaluation). False: each query example is
    classified alone, normalised with the statistics of the support set plus that one example
    (the Reptile paper's non-transductive setting). The papers' tables differ by it.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, vectorise="auto", chunk_size: int | None = None,
                 transductive: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.loss_fn = loss_fn
        choose_vectorised(model, vectorise)  # reject a bad option now, not at the first batch
        self.vectorise = vectorise
        self.chunk_size = chunk_size
        if not isinstance(transductive, bool):
            raise TypeError(f"transductive={transductive!r} must be True or False")
        self.transductive = transductive

    @property
    def vectorised(self) -> bool:
        """Whether tasks are mapped with vmap, decided for the device the model is on now."""
        device = next(iter(self.model.parameters()), torch.empty(0)).device
        return choose_vectorised(self.model, self.vectorise, device) if isinstance(self.vectorise, str) \
            else bool(self.vectorise)

    @vectorised.setter
    def vectorised(self, value: bool):
        self.vectorise = bool(value)  # an explicit override (tests use it to bypass the guard)

    def parameters(self):
        """The meta-parameters the outer optimiser updates."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def meta_parameters(self) -> Params:
        return params_of(self.model)

    def support_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(forward(self.model, params, x), y)

    def map_tasks(self, per_task: Callable, *task_tensors: torch.Tensor):
        return map_tasks(per_task, self.vectorised, *task_tensors, chunk_size=self.chunk_size)

    def predict(self, batch: TaskBatch, inner_steps: int | None = None) -> torch.Tensor:
        """Adapt to each task's support set, then return the model's outputs on its query set."""
        theta = self.meta_parameters()

        def per_task(sx, sy, qx):
            return self.query_outputs(self.adapt(sx, sy, theta, inner_steps), sx, qx)

        return self.map_tasks(per_task, batch.support_x, batch.support_y, batch.query_x)

    def query_outputs(self, phi: Params, support_x: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """The adapted model's outputs on one task's query set, transductively or not (see the class)."""
        if self.transductive:
            return forward(self.model, phi, query_x)

        def alone(x):  # the support set plus one query example: batch norm sees only these
            return forward(self.model, phi, torch.cat([support_x, x.unsqueeze(0)]))[-1]

        if has_torch_batchnorm(self.model):  # its running statistics cannot live under vmap
            return torch.stack([alone(x) for x in query_x])
        return vmap(alone)(query_x)

    def state_dict(self):
        return self.model.state_dict()

    def load_state_dict(self, state):
        self.model.load_state_dict(state)
