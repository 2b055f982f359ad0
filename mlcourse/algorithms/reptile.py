"""Reptile (Nichol, Achiam and Schulman, 2018, Algorithms 1 and 2): move theta towards adapted weights."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..fastpath import workers_for
from ..functional import SGD, Adam, Params, forward, inner_loop, map_tasks
from ..utils import check_int, check_positive
from ..tasks.base import TaskBatch
from .base import MetaLearner

INNER_OPTIMIZERS = ("sgd", "adam")
SAMPLINGS = ("cycle", "replacement")


class Reptile(MetaLearner):
    """Reptile, batched (Algorithm 2); serial Reptile (Algorithm 1) is ``meta_batch = 1``.

    For each task i of a meta-batch:   W_i = U^k_i(theta)   (k steps of the inner optimiser on
    mini-batches of the task's support set), then

        theta <- theta + eps * (1/n) sum_i (W_i - theta).

    No second derivatives and no query set are needed: the query set only reports a loss. The
    update is handed to :func:`mlcourse.train.meta_train` as the "gradient" theta - mean_i W_i
    with plain SGD of step size eps (``outer_optimizer``), annealed linearly from
    ``outer_step_size`` to ``outer_step_size_final`` over the run (``outer_lr_factor``).

    Args:
        inner_lr: the inner optimiser's step size (alpha).
        inner_steps: k >= 1 during meta-training.
        outer_step_size, outer_step_size_final: eps at the first and at the last iteration (the
            paper: 1.0 -> 0 on Omniglot).
        inner_optimizer: "sgd" or "adam" (Adam with beta1 = 0, the paper's choice).
        inner_batch: examples per inner step (``None``: the whole support set every step).
        sampling: "cycle" (shuffle, then consecutive mini-batches, reshuffling after each pass)
            or "replacement" (each mini-batch drawn independently).
        eval_inner_steps, eval_inner_batch: adaptation at test time (default: as in training).
        carry_inner_state: with Adam, meta-training keeps its moment estimates across tasks, and
            every test task starts from a copy of them that is thrown away afterwards, so nothing
            leaks between test tasks (the paper's code backs the state up and restores it). One
            departure, for vmap: the paper runs a meta-batch's tasks one after another on one
            state; here they start from the same state, which is then replaced by their average.
            With ``False`` every task, in training and at test time, starts from a fresh state.
        seed: seeds the generator of the mini-batch indices (saved in ``state_dict``).
        vectorise, chunk_size, transductive: see :class:`MetaLearner`.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, inner_lr: float, inner_steps: int,
                 outer_step_size: float = 1.0, outer_step_size_final: float = 0.0, inner_optimizer: str = "sgd",
                 inner_batch: int | None = None, sampling: str = "cycle", eval_inner_steps: int | None = None,
                 eval_inner_batch: int | None = None, carry_inner_state: bool = True, seed: int = 0,
                 vectorise="auto", chunk_size: int | None = None, transductive: bool = True):
        super().__init__(model, loss_fn, vectorise, chunk_size, transductive, eval_inner_steps)
        self.inner_lr = check_positive("inner_lr", inner_lr)
        self.inner_steps = check_int("inner_steps", inner_steps, 1)
        self.outer_step_size = check_positive("outer_step_size", outer_step_size)
        if not outer_step_size_final >= 0:
            raise ValueError(f"outer_step_size_final={outer_step_size_final} would end the schedule negative: "
                             "allowed >= 0 (the paper anneals to 0)")
        self.outer_step_size_final = float(outer_step_size_final)
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise ValueError(f"inner_optimizer={inner_optimizer!r} is unknown: allowed {', '.join(INNER_OPTIMIZERS)}")
        self.inner_optimizer = Adam(betas=(0.0, 0.999)) if inner_optimizer == "adam" else SGD()
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling={sampling!r} is unknown: allowed {', '.join(SAMPLINGS)}")
        self.sampling = sampling
        self.inner_batch = None if inner_batch is None else check_int("inner_batch", inner_batch, 1)
        self.eval_inner_batch = self.inner_batch if eval_inner_batch is None else check_int(
            "eval_inner_batch", eval_inner_batch, 1)
        self.carry_inner_state = bool(carry_inner_state)
        self.generator = torch.Generator().manual_seed(seed)
        self.inner_state: dict | None = None  # the carried inner-optimiser state (Adam's moments)

    # -- the outer update, as meta_train applies it ------------------------------------------
    def outer_optimizer(self, params, outer_lr=None):
        """theta <- theta - eps * (theta - mean_i W_i): plain SGD with step size eps (``outer_lr`` unused)."""
        return torch.optim.SGD(params, lr=self.outer_step_size)

    def outer_lr_factor(self, iteration: int, iterations: int) -> float:
        """Linear annealing of eps from ``outer_step_size`` towards ``outer_step_size_final``, reached
        at the end of the run: iteration i of N uses the fraction i / N, as the paper's code does."""
        progress = iteration / max(iterations, 1)
        final = self.outer_step_size_final / self.outer_step_size
        return 1.0 + (final - 1.0) * progress

    # -- the inner loop ------------------------------------------------------------------------
    def batch_indices(self, num_tasks: int, num_examples: int, steps: int, batch: int | None,
                      generator: torch.Generator) -> torch.Tensor | None:
        """Indices of every task's inner mini-batches, shape [tasks, steps, batch] (None: full batch)."""
        if batch is None or steps == 0:
            return None
        if batch > num_examples:
            raise ValueError(f"inner batch of {batch} examples is larger than the support set's {num_examples}: "
                             f"allowed 1..{num_examples}")
        if self.sampling == "replacement":
            return torch.randint(num_examples, (num_tasks, steps, batch), generator=generator)
        passes = -(-steps * batch // num_examples)  # ceil: enough shuffled passes for every step
        orders = torch.argsort(torch.rand(num_tasks, passes, num_examples, generator=generator), dim=-1)
        return orders.flatten(1)[:, :steps * batch].reshape(num_tasks, steps, batch)

    def _inner(self, sx, sy, theta: Params, steps: int, indices, state):
        if indices is None:
            losses = lambda p: self.support_loss(p, sx, sy)  # noqa: E731
        else:
            losses = [lambda p, i=i: self.support_loss(p, sx[i], sy[i]) for i in indices]
        return inner_loop(losses, theta, self.inner_lr, steps, first_order=True, vectorised=self.vectorised,
                          optimizer=self.inner_optimizer, state=state, return_state=True)

    def inner_update(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, steps: int,
                     indices: torch.Tensor | None = None) -> Params:
        """W = U^k(theta) on one task at test time, on mini-batches ``indices`` [steps, batch] (default:
        the evaluation batch size, in a fixed order); the inner optimiser starts from a copy of the
        carried state (or a fresh one), which is then discarded."""
        if indices is None:
            indices = self._eval_indices(1, support_x.shape[0], steps)
            indices = None if indices is None else indices[0].to(support_x.device)
        with torch.no_grad():
            return self._inner(support_x, support_y, params, steps, indices, self._start_state(params))[0]

    def task_extras(self, batch: TaskBatch, steps: int) -> tuple:
        """Every task's evaluation mini-batches (see ``_eval_indices``)."""
        indices = self._eval_indices(batch.num_tasks, batch.support_x.shape[1], steps)
        return () if indices is None else (indices.to(batch.support_x.device),)

    def _eval_indices(self, num_tasks: int, num_examples: int, steps: int) -> torch.Tensor | None:
        # a generator seeded afresh each call: the same order every time, so predictions are repeatable
        return self.batch_indices(num_tasks, num_examples, steps, self.eval_inner_batch,
                                  torch.Generator().manual_seed(0))

    def _start_state(self, params: Params):
        if self.carry_inner_state and self.inner_state is not None:
            return self.inner_state  # inner_loop is functional: the carried state itself is never changed
        return self.inner_optimizer.init(params)

    # -- one meta-iteration --------------------------------------------------------------------
    def meta_gradient(self, batch: TaskBatch):
        """(mean query loss of the W_i, {name: theta - mean_i W_i}): Algorithm 2's update direction."""
        theta = {k: v.detach() for k, v in self.meta_parameters().items()}
        start = self._start_state(theta)
        indices = self.batch_indices(batch.num_tasks, batch.support_x.shape[1], self.inner_steps,
                                     self.inner_batch, self.generator)
        indices = None if indices is None else indices.to(batch.support_x.device)

        def per_task(sx, sy, qx, qy, *idx):
            weights, state = self._inner(sx, sy, theta, self.inner_steps, idx[0] if idx else None, start)
            return weights, state, self.loss_fn(forward(self.model, weights, qx), qy)

        extra = () if indices is None else (indices,)
        with torch.no_grad():  # the tasks share nothing: in threads when set_task_workers says so
            weights, states, query_losses = map_tasks(per_task, self.vectorised, *batch, *extra,
                                                      chunk_size=self.chunk_size, workers=workers_for(self.model))
        if self.carry_inner_state:
            self.inner_state = {k: v.mean(0) for k, v in states.items()}
        direction = {k: theta[k] - weights[k].mean(0) for k in theta}
        return query_losses.mean(), direction

    # -- checkpointing: the model, plus the carried inner state and the index generator ------
    def state_dict(self):
        state = {"model": self.model.state_dict(), "generator": self.generator.get_state()}
        if self.inner_state is not None:
            state["inner_state"] = dict(self.inner_state)
        return state

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.generator.set_state(state["generator"].cpu())  # a checkpoint loaded onto a GPU moved it
        self.inner_state = dict(state["inner_state"]) if "inner_state" in state else None
