"""Multimodal MAML (Vuorio, Sun, Hu and Lim, 2019, Algorithm 1) and its oracle baseline, Multi-MAML."""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from ..functional import SGD, inner_loop
from ..modulation import Modulator, film_layers, make_encoder
from ..tasks.base import TaskBatch
from ..utils import check_int, check_positive
from .base import MetaLearner
from .maml import MAML


class ClampedSGD(SGD):
    """Gradient descent on gradients clamped entry by entry to [-clip, clip] (the authors' inner loop)."""

    def __init__(self, clip: float):
        self.clip = clip

    def step(self, params, grads, state, inner_lr):
        return super().step(params, {k: g.clamp(-self.clip, self.clip) for k, g in grads.items()}, state, inner_lr)


class MMAML(MetaLearner):
    """MMAML: modulate the initialisation to the task, then adapt it by gradient descent.

    Algorithm 1 of the paper, for each task T_j:
        v = h({(x_k, y_k)}; omega_h)                 task embedding of the support set   (line 6)
        tau = {g_i(v; omega_g)}                       modulation of each block            (line 7)
        theta'_j = theta - alpha grad_theta L(f(x; theta, tau); D^tr)                     (lines 8-9)
    and theta, omega_g, omega_h all descend mean_j L(f(x; theta'_j, tau); D^val)      (lines 11-13).
    tau is held fixed in the inner loop; the meta-gradient flows through the inner steps (second
    order, as MAML) and through tau into the generators and the encoder.

    ``model`` is the task network f, holding FiLM layers (``MLP(..., film=True)``,
    ``ConvNet(..., film=True)``); ``encoder`` reads one task's (support_x, support_y) and has an
    ``embedding_dim`` (or is a name for :func:`mlcourse.modulation.make_encoder`: "lstm", "set",
    "conv"); ``modulation`` is "film" or "softmax". ``inner_steps=0`` gives the paper's
    "LSTM learner" baseline: modulation alone, no gradient step.

    Two safeguards of the authors' code, off by default: ``inner_grad_clip`` (theirs: 10) clamps
    each entry of the inner gradients to [-c, c], and ``grad_clip`` (theirs: 2) rescales the
    meta-gradient of the task network, and separately that of the modulation network, to at most
    this norm. Early in training a modulation can scale a block by a large factor, and an inner
    or outer step taken there can throw the network far off.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, encoder: nn.Module | str, inner_lr: float,
                 inner_steps: int = 5, modulation: str = "film", first_order: bool = False,
                 inner_grad_clip: float | None = None, grad_clip: float | None = None, eval_inner_steps: int | None = None, vectorise="auto",
                 chunk_size: int | None = None, transductive: bool = True):
        super().__init__(model, loss_fn, vectorise, chunk_size, transductive, eval_inner_steps)
        self.grad_clip = None if grad_clip is None else check_positive("grad_clip", grad_clip)
        self.inner_optimizer = None if inner_grad_clip is None else ClampedSGD(
            check_positive("inner_grad_clip", inner_grad_clip))
        encoder = make_encoder(encoder) if isinstance(encoder, str) else encoder
        self.modulator = Modulator(encoder, film_layers(model), modulation)
        like = next(model.parameters())
        self.modulator.to(device=like.device, dtype=like.dtype)  # new generators follow the task network
        self.inner_lr = check_positive("inner_lr", inner_lr)
        self.inner_steps = check_int("inner_steps", inner_steps, 0)
        self.first_order = bool(first_order)

    def named_parameters(self):
        """theta (the task network) and omega (encoder and generators), all meta-trained."""
        return super().named_parameters() + [("modulator." + k, p) for k, p in self.modulator.named_parameters()]

    def to(self, device) -> "MMAML":
        self.modulator.to(device)
        return super().to(device)

    def modulation(self, support_x: torch.Tensor, support_y: torch.Tensor) -> dict:
        """tau for one task: FiLM buffers to merge into the task network's parameters."""
        return self.modulator(support_x, support_y)

    def inner_update(self, params, support_x, support_y, steps, *extra):
        """phi = {U^k(theta) under tau, tau}: tau is computed once and fixed during the k steps."""
        tau = self.modulation(support_x, support_y)
        theta = {k: v for k, v in params.items() if k not in tau}
        phi = inner_loop(lambda p: self.support_loss({**p, **tau}, support_x, support_y), theta,
                         self.inner_lr, steps, self.first_order, self.vectorised, self.inner_optimizer)
        return {**phi, **tau}

    def meta_gradient(self, batch: TaskBatch):
        loss, grads = super().meta_gradient(batch)
        if self.grad_clip is not None:
            for part in (lambda k: not k.startswith("modulator."), lambda k: k.startswith("modulator.")):
                names = [k for k in grads if part(k)]
                total = torch.sqrt(sum((grads[k] ** 2).sum() for k in names)) if names else 0.0
                if names and total > self.grad_clip:
                    for k in names:
                        grads[k] = grads[k] * (self.grad_clip / total)
        return loss, grads

    def embeddings(self, batch: TaskBatch) -> torch.Tensor:
        """The task embedding v of each task (tasks, embedding_dim), for figures."""
        return self.map_tasks(self.modulator.embed, batch.support_x, batch.support_y)

    def state_dict(self):
        return {"model": self.model.state_dict(), "modulator": self.modulator.state_dict()}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.modulator.load_state_dict(state["modulator"])


class MultiMAML(MetaLearner):
    """Multi-MAML (the paper's oracle baseline): one MAML per mode, each task sent to the MAML of
    its mode (``batch.mode``, which a real learner is never told). Each MAML learns only from its
    mode's tasks; the meta-loss is their task-weighted mean.

    ``model`` is copied once per mode (the copies start equal and then learn apart); the MAML
    settings are shared by every mode.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, num_modes: int, inner_lr: float,
                 inner_steps: int = 5, first_order: bool = False, eval_inner_steps: int | None = None,
                 vectorise="auto", chunk_size: int | None = None, transductive: bool = True):
        check_int("num_modes", num_modes, 1)
        self.learners = [MAML(copy.deepcopy(model), loss_fn, inner_lr, inner_steps, first_order, eval_inner_steps,
                              vectorise, chunk_size, transductive) for _ in range(num_modes)]
        super().__init__(nn.ModuleList(m.model for m in self.learners), loss_fn, vectorise, chunk_size,
                         transductive, eval_inner_steps)
        self.inner_lr, self.inner_steps, self.first_order = inner_lr, inner_steps, bool(first_order)

    def to(self, device) -> "MultiMAML":
        for learner in self.learners:
            learner.to(device)
        return super().to(device)

    def _routes(self, batch: TaskBatch):
        """(mode, index of its tasks) for every mode present in ``batch``."""
        if batch.mode is None:
            raise ValueError("Multi-MAML is an oracle: it needs each task's mode (batch.mode), which "
                             "mlcourse.tasks.Multimodal provides; this batch has none")
        if batch.mode.min() < 0 or batch.mode.max() >= len(self.learners):
            raise ValueError(f"batch.mode holds {batch.mode.min().item()}..{batch.mode.max().item()}: allowed "
                             f"0..{len(self.learners) - 1} ({len(self.learners)} modes)")
        return [(m, (batch.mode == m).nonzero().flatten()) for m in range(len(self.learners))
                if (batch.mode == m).any()]

    def meta_loss(self, batch: TaskBatch) -> torch.Tensor:
        return sum(self.learners[m].meta_loss(batch.select(index)) * len(index)
                   for m, index in self._routes(batch)) / batch.num_tasks

    def predict(self, batch: TaskBatch, inner_steps: int | None = None) -> torch.Tensor:
        steps = self.test_steps(inner_steps)
        routes = self._routes(batch)
        outputs = [self.learners[m].predict(batch.select(index), steps) for m, index in routes]
        order = torch.cat([index for _, index in routes])
        result = torch.empty((batch.num_tasks, *outputs[0].shape[1:]), dtype=outputs[0].dtype,
                             device=outputs[0].device)
        result[order] = torch.cat(outputs)
        return result
