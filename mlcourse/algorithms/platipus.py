"""PLATIPUS, probabilistic MAML (Finn, Xu and Levine, 2018, Algorithms 1 and 2)."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..functional import Params, forward, inner_loop, unflatten
from ..tasks.base import TaskBatch
from ..utils import check_int, check_positive
from .base import MetaLearner


def gaussian_kl(mean_q: Params, log_var_q: Params, mean_p: Params, log_var_p: Params) -> torch.Tensor:
    """KL(N(mean_q, diag exp log_var_q) || N(mean_p, diag exp log_var_p)), summed over every element:

        1/2 sum [ log var_p - log var_q + (var_q + (mean_q - mean_p)^2) / var_p - 1 ].
    """
    total = 0.0
    for k in mean_q:
        var_q, var_p = log_var_q[k].exp(), log_var_p[k].exp()
        total = total + 0.5 * (log_var_p[k] - log_var_q[k]
                               + (var_q + (mean_q[k] - mean_p[k]) ** 2) / var_p - 1).sum()
    return total


def like_dtype(params: Params) -> torch.dtype:
    return next(iter(params.values())).dtype


class PLATIPUS(MetaLearner):
    """PLATIPUS: a distribution over initialisations, amortised by one gradient step from mu_theta.

    Generative model: theta ~ p(theta) = N(mu_theta, sigma_theta^2), phi_i = U^k(theta) on task i's
    support set. Inference uses two Gaussians whose means are one gradient step from mu_theta
    (the paper's eq. 4 and Algorithm 1):

        q(theta | D^tr, D^test) = N(mu_theta - gamma_q grad L(mu_theta, D^test), v_q)
        p(theta | D^tr)         = N(mu_theta - gamma_p grad L(mu_theta, D^tr),   sigma_theta^2)

    Meta-training (Algorithm 1), per task: theta ~ q (reparameterised), phi = U^k(theta) by
    ``inner_steps`` gradient steps of size alpha on the support loss, and the loss

        L^test(phi) + kl_weight * KL(q(theta | D^tr, D^test) || p(theta | D^tr)),

    the negative evidence lower bound with the KL term weighted; the meta-parameters are mu_theta
    (the model's parameters), sigma_theta^2 and v_q (one per parameter element, stored as logs)
    and gamma_p, gamma_q (two positive scalars, stored as logs). Meta-test (Algorithm 2):
    theta ~ p(theta | D^tr), then phi = U^k(theta); each sample is one hypothesis about the task
    (:meth:`sample_predictions`).

    Args:
        model, loss_fn: as for :class:`~mlcourse.algorithms.maml.MAML`.
        inner_lr: alpha > 0.   inner_steps: k >= 1.
        kl_weight: the KL term's weight >= 0 (the paper's ambiguous celebA table: 0.05 and 0.15).
        init_variance: the initial sigma_theta^2 and v_q > 0 (ours: the paper gives none).
        init_step: the initial gamma_p and gamma_q (default alpha).
        first_order: treat the inner gradients (of U^k) as constants.
        seed: seeds the noise of meta-training (saved in ``state_dict``) and of prediction.
        eval_inner_steps, vectorise, chunk_size, transductive: see :class:`MetaLearner`.

    Prediction draws its noise from a generator seeded afresh with ``seed`` at every call, so
    the same tasks get the same hypotheses until the seed changes.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, inner_lr: float, inner_steps: int = 1,
                 kl_weight: float = 0.1, init_variance: float = 1e-2, init_step: float | None = None,
                 first_order: bool = False, seed: int = 0, eval_inner_steps: int | None = None,
                 vectorise="auto", chunk_size: int | None = None, transductive: bool = True):
        super().__init__(model, loss_fn, vectorise, chunk_size, transductive, eval_inner_steps)
        self.inner_lr = check_positive("inner_lr", inner_lr)
        self.inner_steps = check_int("inner_steps", inner_steps, 1)
        if not (isinstance(kl_weight, (int, float)) and 0 <= kl_weight < math.inf):
            raise ValueError(f"kl_weight={kl_weight!r} is out of range: allowed a finite number >= 0")
        self.kl_weight = float(kl_weight)
        check_positive("init_variance", init_variance)
        step = inner_lr if init_step is None else check_positive("init_step", init_step)
        self.first_order = bool(first_order)
        self.seed = check_int("seed", seed, 0)
        self.generator = torch.Generator().manual_seed(seed)
        like = self.meta_parameters()
        self._names = list(like)
        # log sigma_theta^2 and log v_q per element, log gamma_p and log gamma_q: leaves of their own
        # (nn.Parameter) beside the model's, so the outer optimiser and checkpoints see them
        self.log_prior_var = {k: nn.Parameter(torch.full_like(v.detach(), math.log(init_variance)))
                              for k, v in like.items()}
        self.log_posterior_var = {k: nn.Parameter(torch.full_like(v.detach(), math.log(init_variance)))
                                  for k, v in like.items()}
        first = next(iter(like.values()))
        self.log_gamma_p = nn.Parameter(torch.tensor(math.log(step), dtype=first.dtype, device=first.device))
        self.log_gamma_q = nn.Parameter(torch.tensor(math.log(step), dtype=first.dtype, device=first.device))

    # -- meta-parameters beyond the model ------------------------------------------------------
    def _extras(self) -> list[tuple[str, nn.Parameter]]:
        return ([(f"log_prior_var/{k}", v) for k, v in self.log_prior_var.items()]
                + [(f"log_posterior_var/{k}", v) for k, v in self.log_posterior_var.items()]
                + [("log_gamma_p", self.log_gamma_p), ("log_gamma_q", self.log_gamma_q)])

    def named_parameters(self):
        return super().named_parameters() + self._extras()

    def to(self, device) -> "PLATIPUS":
        super().to(device)
        with torch.no_grad():
            for _, p in self._extras():
                p.data = p.data.to(device)
        return self

    def state_dict(self):
        return {"model": self.model.state_dict(), "generator": self.generator.get_state(),
                "extras": {k: v.detach().clone() for k, v in self._extras()}}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.generator.set_state(state["generator"].cpu())
        with torch.no_grad():
            for k, p in self._extras():
                p.copy_(state["extras"][k])

    # -- the two amortised Gaussians -----------------------------------------------------------
    def _gradient_step(self, mu: Params, step: torch.Tensor, x, y) -> Params:
        """mu - step * grad L(mu; x, y): the mean of q (on D^test) or of p (on D^tr)."""
        return inner_loop(lambda p: self.support_loss(p, x, y), mu, {k: step for k in mu}, 1,
                          self.first_order, self.vectorised)

    def prior_mean(self, mu: Params, support_x, support_y) -> Params:
        """The mean of p(theta | D^tr) = N(mu - gamma_p grad L(mu, D^tr), sigma^2)."""
        return self._gradient_step(mu, self.log_gamma_p.exp(), support_x, support_y)

    def posterior_mean(self, mu: Params, query_x, query_y) -> Params:
        """The mean of q(theta | D^tr, D^test) = N(mu - gamma_q grad L(mu, D^test), v_q)."""
        return self._gradient_step(mu, self.log_gamma_q.exp(), query_x, query_y)

    def draw(self, mean: Params, log_var: Params, noise: torch.Tensor) -> Params:
        """mean + sqrt(var) * eps, the noise given flat (reparameterisation: differentiable)."""
        eps = unflatten(noise, mean)
        return {k: mean[k] + (0.5 * log_var[k]).exp() * eps[k] for k in mean}

    def _noise(self, num_tasks: int, generator: torch.Generator, like: Params) -> torch.Tensor:
        size = sum(v.numel() for v in like.values())
        device = next(iter(like.values())).device
        return torch.randn(num_tasks, size, generator=generator).to(device=device, dtype=like_dtype(like))

    # -- Algorithm 1: meta-training ------------------------------------------------------------
    def task_loss(self, mu: Params, sx, sy, qx, qy, noise) -> torch.Tensor:
        """L^test(U^k(theta)) + kl_weight * KL(q || p) for one task, theta ~ q by ``noise``."""
        mean_q = self.posterior_mean(mu, qx, qy)
        mean_p = self.prior_mean(mu, sx, sy)
        theta = self.draw(mean_q, self.log_posterior_var, noise)
        phi = inner_loop(lambda p: self.support_loss(p, sx, sy), theta, self.inner_lr, self.inner_steps,
                         self.first_order, self.vectorised)
        query_loss = self.loss_fn(forward(self.model, phi, qx), qy)
        kl = gaussian_kl(mean_q, self.log_posterior_var, mean_p, self.log_prior_var)
        return query_loss + self.kl_weight * kl

    def meta_loss(self, batch: TaskBatch) -> torch.Tensor:
        """mean_i [L_i^test(phi_i) + kl_weight * KL_i]: differentiable in every meta-parameter."""
        mu = self.meta_parameters()
        noise = self._noise(batch.num_tasks, self.generator, mu)
        return self.map_tasks(lambda sx, sy, qx, qy, n: self.task_loss(mu, sx, sy, qx, qy, n),
                              *batch, noise).mean()

    # -- Algorithm 2: meta-test ----------------------------------------------------------------
    def inner_update(self, params: Params, support_x, support_y, steps: int, *extra) -> Params:
        """theta ~ p(theta | D^tr) (the noise is ``extra[0]``; without it, the prior's mean),
        then ``steps`` gradient steps on the support set."""
        mean_p = self.prior_mean(params, support_x, support_y)
        theta = self.draw(mean_p, self.log_prior_var, extra[0]) if extra else mean_p
        return inner_loop(lambda p: self.support_loss(p, support_x, support_y), theta, self.inner_lr, steps,
                          self.first_order, self.vectorised)

    def task_extras(self, batch: TaskBatch, steps: int) -> tuple:
        """One draw of the prior's noise per task, from a generator seeded with ``seed``."""
        return (self._noise(batch.num_tasks, torch.Generator().manual_seed(self.seed), self.meta_parameters()),)

    def sample_predictions(self, batch: TaskBatch, num_samples: int, inner_steps: int | None = None,
                           seed: int | None = None) -> torch.Tensor:
        """(num_samples, tasks, queries, outputs): one adapted model per draw theta ~ p(theta | D^tr)."""
        check_int("num_samples", num_samples, 1)
        steps = self.test_steps(inner_steps)
        mu = self.meta_parameters()
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        outputs = []
        for _ in range(num_samples):
            noise = self._noise(batch.num_tasks, generator, mu)

            def per_task(sx, sy, qx, n):
                return self.query_outputs(self.adapt(sx, sy, mu, steps, n), sx, qx)

            outputs.append(self.map_tasks(per_task, batch.support_x, batch.support_y, batch.query_x, noise))
        return torch.stack(outputs).detach()
