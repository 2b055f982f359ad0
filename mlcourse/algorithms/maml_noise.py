"""MAML + noise: MAML whose inner gradient steps get Gaussian noise (the baseline of PLATIPUS's
Table 1, Finn, Xu and Levine, 2018)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..functional import Params, forward, inner_loop, unflatten
from ..tasks.base import TaskBatch
from ..utils import check_int, check_positive
from .maml import MAML


class GradientNoise:
    """The inner optimiser of :class:`MAMLNoise`: phi <- phi - alpha (grad + noise_std * eps_j) at
    step j, the standard-normal eps_j given in the state (``{"noise": (steps, numel), "step": j}``)
    so that the draws are the caller's (seeded, and one per task under vmap)."""

    def __init__(self, noise_std: float):
        self.noise_std = noise_std

    def init(self, params: Params) -> dict:
        raise ValueError("GradientNoise needs its noise: pass state={'noise': ..., 'step': 0} to inner_loop")

    def step(self, params: Params, grads: Params, state: dict, inner_lr):
        eps = unflatten(state["noise"][state["step"]], params)
        new = {k: params[k] - inner_lr * (grads[k] + self.noise_std * eps[k]) for k in params}
        return new, {"noise": state["noise"], "step": state["step"] + 1}


class MAMLNoise(MAML):
    """MAML with noise in the gradient: every inner step is

        phi <- phi - alpha (grad L^tr(phi) + s eps),   eps ~ N(0, I), s = ``noise_std``,

    in meta-training (unless ``train_noise=False``) and at meta-test time, so that adapting to the
    same support set several times gives several classifiers. PLATIPUS's Table 1 calls its
    baseline "MAML + noise", a method that adds noise to the gradient but does no variational
    inference; its noise level, and whether the noise is there in meta-training, are ours.
    Unlike PLATIPUS the noise is isotropic and fixed: nothing learns where it helps.

    Args (beyond :class:`MAML`'s): ``noise_std`` s > 0; ``train_noise``; ``seed`` seeds the noise
    of meta-training (saved in ``state_dict``) and, afresh at every call, that of prediction.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, inner_lr: float, inner_steps: int = 1,
                 noise_std: float = 1.0, train_noise: bool = True, seed: int = 0, first_order: bool = False,
                 eval_inner_steps: int | None = None, vectorise="auto", chunk_size: int | None = None,
                 transductive: bool = True):
        super().__init__(model, loss_fn, inner_lr, inner_steps, first_order, eval_inner_steps, vectorise,
                         chunk_size, transductive)
        self.noise_std = check_positive("noise_std", noise_std)
        self.train_noise = bool(train_noise)
        self.seed = check_int("seed", seed, 0)
        self.generator = torch.Generator().manual_seed(seed)

    def _noise(self, num_tasks: int, steps: int, generator: torch.Generator) -> torch.Tensor:
        """(tasks, steps, numel) standard-normal draws, one per parameter element and inner step."""
        like = self.meta_parameters()
        first = next(iter(like.values()))
        size = sum(v.numel() for v in like.values())
        return torch.randn(num_tasks, steps, size, generator=generator).to(first.device, first.dtype)

    def inner_update(self, params: Params, support_x, support_y, steps: int, *extra) -> Params:
        """``steps`` noisy gradient steps (the noise is ``extra[0]``; without it, MAML's plain steps)."""
        if not extra or steps == 0:
            return super().inner_update(params, support_x, support_y, steps)
        return inner_loop(lambda p: self.support_loss(p, support_x, support_y), params, self.inner_lr, steps,
                          self.first_order, self.vectorised, optimizer=GradientNoise(self.noise_std),
                          state={"noise": extra[0], "step": 0})

    def meta_loss(self, batch: TaskBatch) -> torch.Tensor:
        """mean_i L_i^test(phi_i), phi_i adapted with noisy steps (plain ones if not ``train_noise``)."""
        if not self.train_noise:
            return super().meta_loss(batch)
        theta = self.meta_parameters()
        noise = self._noise(batch.num_tasks, self.inner_steps, self.generator)

        def query_loss(sx, sy, qx, qy, n):
            return self.loss_fn(forward(self.model, self.adapt(sx, sy, theta, None, n), qx), qy)

        return self.map_tasks(query_loss, *batch, noise).mean()

    def task_extras(self, batch: TaskBatch, steps: int) -> tuple:
        """One draw of the noise per task and step, from a generator seeded with ``seed``."""
        return (self._noise(batch.num_tasks, steps, torch.Generator().manual_seed(self.seed)),)

    def sample_predictions(self, batch: TaskBatch, num_samples: int, inner_steps: int | None = None,
                           seed: int | None = None) -> torch.Tensor:
        """(num_samples, tasks, queries, outputs): one noisy adaptation per sample (as PLATIPUS's)."""
        check_int("num_samples", num_samples, 1)
        steps = self.test_steps(inner_steps)
        theta = self.meta_parameters()
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        outputs = []
        for _ in range(num_samples):
            noise = self._noise(batch.num_tasks, steps, generator)

            def per_task(sx, sy, qx, n):
                return self.query_outputs(self.adapt(sx, sy, theta, steps, n), sx, qx)

            outputs.append(self.map_tasks(per_task, batch.support_x, batch.support_y, batch.query_x, noise))
        return torch.stack(outputs).detach()

    def state_dict(self):
        return {"model": self.model.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.generator.set_state(state["generator"].cpu())
