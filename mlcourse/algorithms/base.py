"""The contract between an algorithm and the layers above it (training, evaluation, profiling, CLI).

``meta_train``, ``evaluate``, ``profiling`` and the recipes call only what :class:`MetaLearner`
defines here, never asking an algorithm what it can do. A new method subclasses it and
overrides what differs from MAML; every method of the contract has a default:

=======================================  ====================================================
``meta_loss(batch)``                     default: MAML's, mean_i L_i^test(adapt(task i))
``meta_gradient(batch)``                 ``(loss, {name: grad})``; default: autograd of
                                         ``meta_loss(batch)``
``outer_optimizer(params, outer_lr)``    the outer update; default Adam with step ``outer_lr``
``outer_lr_factor(iteration, total)``    the outer step-size schedule; default constant 1
``start_iteration(iteration, total)``    told before each meta-iteration; default: nothing
``inner_update(params, sx, sy, steps,    the inner loop U^k on one task; default ``steps`` of
*extra)``                                gradient descent of size ``inner_lr``
``task_extras(batch, steps)``            per-task tensors ``predict`` passes on to ``adapt``
                                         (default none; Reptile's mini-batch indices)
``eval_inner_steps``                     test-time adaptation steps (default: ``inner_steps``)
``state_dict()`` / ``load_state_dict``   what a checkpoint saves (default: the model's state
                                         and ``meta_tensors``)
``named_parameters()``                   what the outer optimiser updates (default: the
                                         model's parameters and ``meta_tensors``, the
                                         tensors an algorithm meta-learns beside the model:
                                         Meta-SGD's alpha, MAML++'s step sizes)
=======================================  ====================================================
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import vmap

from ..functional import Params, choose_vectorised, forward, inner_loop, map_tasks, params_of
from ..nn import has_torch_batchnorm
from ..tasks.base import TaskBatch
from ..utils import check_int, check_positive


class MetaLearner:
    """Base class: holds ``model`` (whose parameters are the meta-parameters theta) and ``loss_fn``.

    A subclass sets ``inner_lr`` and ``inner_steps`` (and ``first_order``) or overrides
    ``inner_update``; ``meta_loss(batch)`` defaults to MAML's objective (the mean query loss after
    ``adapt``), and an algorithm whose objective differs overrides it or ``meta_gradient(batch)``.

    ``vectorise``: "auto" (see :func:`mlcourse.functional.choose_vectorised`: vmap over tasks
    except for PyTorch batch-norm layers, and for convolutions on the CPU), True (vmap) or False
    (a loop over tasks). It is resolved once for the model's device, and again by :meth:`to`.
    ``chunk_size`` bounds how many tasks vmap runs at once.

    ``transductive`` says how batch norm sees the query set when predicting (it changes nothing
    for a model without batch norm). True: the whole query set is one batch, so its statistics
    are shared between query examples (MAML's evaluation). False: each query example is
    classified alone, normalised with the statistics of the support set plus that one example
    (the Reptile paper's non-transductive setting). The papers' tables differ by it.

    ``eval_inner_steps``: adaptation steps at test time (None: ``inner_steps``).
    """

    inner_lr: float | dict = 0.0
    inner_steps: int = 0
    first_order: bool = False

    def __init__(self, model: nn.Module, loss_fn: Callable, vectorise="auto", chunk_size: int | None = None,
                 transductive: bool = True, eval_inner_steps: int | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.loss_fn = loss_fn
        self.vectorise = vectorise
        self.chunk_size = chunk_size
        if not isinstance(transductive, bool):
            raise TypeError(f"transductive={transductive!r} must be True or False")
        self.transductive = transductive
        # meta-learned tensors beside the model ("alpha/<name>", "inner_lr/<name>"): named, moved,
        # saved and loaded with it by the defaults below
        self.meta_tensors: dict[str, nn.Parameter] = {}
        self.eval_inner_steps = None if eval_inner_steps is None else check_int("eval_inner_steps",
                                                                                 eval_inner_steps, 0)
        self._resolve_vectorised()

    def _resolve_vectorised(self):
        device = next(iter(self.model.parameters()), torch.empty(0)).device
        self.vectorised = choose_vectorised(self.model, self.vectorise, device)

    def to(self, device) -> "MetaLearner":
        """Move the model to ``device`` and choose vmap or the loop for it."""
        self.model.to(device)
        with torch.no_grad():
            for p in self.meta_tensors.values():
                p.data = p.data.to(device)
        self._resolve_vectorised()
        return self

    # -- parameters ----------------------------------------------------------------------------
    def named_parameters(self):
        """``(name, tensor)`` of everything the outer optimiser updates: the model's parameters,
        plus whatever else an algorithm meta-learns (``meta_tensors``; PLATIPUS: variances and step sizes)."""
        return [(k, p) for k, p in self.model.named_parameters() if p.requires_grad] + list(self.meta_tensors.items())

    def parameters(self):
        """The meta-parameters the outer optimiser updates."""
        return [p for _, p in self.named_parameters()]

    def meta_parameters(self) -> Params:
        return params_of(self.model)

    def support_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(forward(self.model, params, x), y)

    def map_tasks(self, per_task: Callable, *task_tensors: torch.Tensor):
        return map_tasks(per_task, self.vectorised, *task_tensors, chunk_size=self.chunk_size)

    # -- the inner loop ------------------------------------------------------------------------
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, params: Params | None = None,
              inner_steps: int | None = None, *extra: torch.Tensor) -> Params:
        """phi = U^k(params) on one task's support set (no task dimension); params default to theta,
        steps to the training ``inner_steps``."""
        params = self.meta_parameters() if params is None else params
        steps = self.inner_steps if inner_steps is None else check_int("inner_steps", inner_steps, 0)
        return self.inner_update(params, support_x, support_y, steps, *extra)

    def inner_update(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, steps: int,
                     *extra: torch.Tensor) -> Params:
        """U^k: ``steps`` steps of gradient descent of size ``inner_lr`` on the support loss (eq. 1)."""
        return inner_loop(lambda p: self.support_loss(p, support_x, support_y), params, self.inner_lr, steps,
                          self.first_order, self.vectorised)

    def test_steps(self, inner_steps: int | None = None) -> int:
        """The adaptation steps at test time: ``inner_steps`` if given, else the algorithm's own."""
        if inner_steps is not None:
            return check_int("inner_steps", inner_steps, 0)
        return self.inner_steps if self.eval_inner_steps is None else self.eval_inner_steps

    def task_extras(self, batch: TaskBatch, steps: int) -> tuple:
        """Per-task tensors (leading task dimension) that ``predict`` hands to ``adapt``."""
        return ()

    def predict(self, batch: TaskBatch, inner_steps: int | None = None) -> torch.Tensor:
        """Adapt to each task's support set, then return the model's outputs on its query set."""
        steps = self.test_steps(inner_steps)
        theta = self.meta_parameters()
        extras = self.task_extras(batch, steps)

        def per_task(sx, sy, qx, *extra):
            return self.query_outputs(self.adapt(sx, sy, theta, steps, *extra), sx, qx)

        return self.map_tasks(per_task, batch.support_x, batch.support_y, batch.query_x, *extras)

    def query_outputs(self, phi: Params, support_x: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """The adapted model's outputs on one task's query set, transductively or not (see the class)."""
        if self.transductive:
            return forward(self.model, phi, query_x)

        def alone(x):  # the support set plus one query example: batch norm sees only these
            return forward(self.model, phi, torch.cat([support_x, x.unsqueeze(0)]))[-1]

        if has_torch_batchnorm(self.model):  # its running statistics cannot live under vmap
            return torch.stack([alone(x) for x in query_x])
        return vmap(alone)(query_x)

    # -- the outer loop ------------------------------------------------------------------------
    def meta_loss(self, batch: TaskBatch) -> torch.Tensor:
        """mean_i L_i^test(U^k(theta)), MAML's objective (eq. 1-2) for whatever ``adapt`` does:
        differentiable w.r.t. the meta-parameters through the adaptation."""
        theta = self.meta_parameters()

        def query_loss(sx, sy, qx, qy):
            return self.loss_fn(forward(self.model, self.adapt(sx, sy, theta), qx), qy)

        return self.map_tasks(query_loss, *batch).mean()

    def meta_gradient(self, batch: TaskBatch):
        """(meta-loss, {name: its gradient w.r.t. theta}); algorithms whose direction is not a loss's
        gradient (Reptile, iMAML) override this."""
        loss = self.meta_loss(batch)
        named = self.named_parameters()
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        return loss.detach(), {k: g for (k, _), g in zip(named, grads) if g is not None}

    def outer_optimizer(self, params, outer_lr: float) -> torch.optim.Optimizer:
        """theta <- Adam(theta, meta-gradient) with step size beta = ``outer_lr``."""
        return torch.optim.Adam(params, lr=check_positive("outer_lr", outer_lr))

    def outer_lr_factor(self, iteration: int, iterations: int) -> float:
        """Scales the outer step size at ``iteration`` of ``iterations`` (a function of these alone,
        so that a resumed run matches an uninterrupted one)."""
        return 1.0

    def start_iteration(self, iteration: int, iterations: int) -> None:
        """Called by ``meta_train`` before meta-iteration ``iteration`` (0-based) of ``iterations``, for an
        objective that follows a schedule (MAML++: multi-step-loss weights, derivative order). Whatever it
        sets must be a function of these alone, so that a resumed run matches an uninterrupted one."""

    # -- checkpointing -------------------------------------------------------------------------
    def state_dict(self):
        """The model's state and the ``meta_tensors``, as one flat dict."""
        return {**self.model.state_dict(), **{k: v.detach().clone() for k, v in self.meta_tensors.items()}}

    def load_state_dict(self, state):
        self.model.load_state_dict({k: v for k, v in state.items() if k not in self.meta_tensors})
        with torch.no_grad():
            for k, p in self.meta_tensors.items():
                p.copy_(state[k])
