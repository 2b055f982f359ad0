"""Bayesian MAML (Yoon et al., 2018) and its baseline EMAML, an ensemble of M independent MAMLs.

Both meta-learn M particles Theta_0 = {theta^1..theta^M}: M independent initialisations of the
model, stored in the model itself, each particle parameter with a leading dimension M. A task is
adapted by moving all particles at once (vmap over particles, and over tasks), and predicted by
their ensemble. EMAML moves each particle by gradient descent on its own; BMAML moves them by
Stein variational gradient descent (:mod:`mlcourse.svgd`), so that they interact through the kernel
and spread over the task posterior, and meta-trains them with the chaser loss.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn
from torch.func import vmap

from ..functional import Params, forward, inner_loop
from ..svgd import svgd_direction
from ..tasks.base import TaskBatch
from ..utils import check_int, check_positive
from .base import MetaLearner


class EMAML(MetaLearner):
    """Ensemble MAML: M MAMLs side by side, with no interaction (Yoon et al., 2018, sec. 5, the baseline).

    Inner loop, per particle:   phi_i^m = U^k(theta^m), k gradient steps of size alpha on L_i^tr
    Meta-objective:             min_Theta  mean_i (1/M) sum_m L_i^test(phi_i^m)
    Prediction (the ensemble):  the particles' mean output (regression), or the log of their mean
                                softmax (classification: integer targets) as "logits".

    Args:
        model: any ``nn.Module``. Its particle parameters become M independent initialisations
            stacked on a new leading dimension (the model is changed in place: run it with
            :meth:`particle_outputs` or ``functional_call`` on one particle's slice). Particle 0 keeps
            the model's values; the others are drawn by the layers' ``reset_parameters``.
        loss_fn: ``loss_fn(prediction, target)`` with mean reduction, e.g. ``F.mse_loss``.
        inner_lr: alpha > 0.   inner_steps: k >= 1.   num_particles: M >= 1.
        share_features: only the parameters of the last ``nn.Linear`` layer (the head) are
            particles; the layers before it are one feature extractor shared by all particles
            (the paper's choice for images, sec. 3), meta-learned but not adapted (ours).
        first_order: treat the inner gradients as constants (for BMAML: the scores; the kernel
            terms of SVGD are still differentiated).
        eval_inner_steps, vectorise, chunk_size, transductive: see :class:`MAML`.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, inner_lr: float, inner_steps: int = 1,
                 num_particles: int = 5, share_features: bool = False, first_order: bool = False,
                 eval_inner_steps: int | None = None, vectorise="auto", chunk_size: int | None = None,
                 transductive: bool = True):
        super().__init__(model, loss_fn, vectorise, chunk_size, transductive, eval_inner_steps)
        self.inner_lr = check_positive("inner_lr", inner_lr)
        self.inner_steps = check_int("inner_steps", inner_steps, 1)
        self.num_particles = check_int("num_particles", num_particles, 1)
        self.first_order = bool(first_order)
        self.share_features = bool(share_features)
        self.particle_names = _make_particles(model, self.num_particles, self.share_features)

    # -- particles -----------------------------------------------------------------------------
    def split(self, params: Params) -> tuple[Params, Params]:
        """(shared parameters, particle parameters with leading dimension M)."""
        return ({k: v for k, v in params.items() if k not in self.particle_names},
                {k: params[k] for k in self.particle_names})

    def over_particles(self, fn: Callable[[Params], torch.Tensor], params: Params) -> torch.Tensor:
        """[fn(theta^m) for each particle m] stacked on dimension 0 (vmap, or a loop where vmap is wrong)."""
        shared, particles = self.split(params)
        one = lambda p: fn({**shared, **p})  # noqa: E731
        if self.vectorised:
            return vmap(one, randomness="different")(particles)
        return torch.stack([one({k: v[m] for k, v in particles.items()}) for m in range(self.num_particles)])

    def particle_outputs(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """f_{theta^m}(x) for every particle: (M, *outputs)."""
        return self.over_particles(lambda p: forward(self.model, p, x), params)

    def particle_losses(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """L(theta^m; x, y) for every particle: (M,)."""
        return torch.stack([self.loss_fn(out, y) for out in self.particle_outputs(params, x)])

    # -- the inner loop ------------------------------------------------------------------------
    def inner_update(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, steps: int,
                     *extra: torch.Tensor) -> Params:
        """U^k on every particle at once: the gradient of sum_m L^tr(theta^m) w.r.t. theta^m is L^tr's own."""
        shared, particles = self.split(params)
        loss = lambda p: self.particle_losses({**shared, **p}, support_x, support_y).sum()  # noqa: E731
        return {**shared, **inner_loop(loss, particles, self.inner_lr, steps, self.first_order, self.vectorised)}

    # -- prediction ----------------------------------------------------------------------------
    def query_outputs(self, phi: Params, support_x: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Every adapted particle's outputs on one task's query set: (M, *outputs)."""
        return self.over_particles(lambda p: MetaLearner.query_outputs(self, p, support_x, query_x), phi)

    def predict_particles(self, batch: TaskBatch, inner_steps: int | None = None) -> torch.Tensor:
        """Adapt to each task, then every particle's outputs on its query set: (M, tasks, *outputs)."""
        return super().predict(batch, inner_steps).movedim(1, 0)

    def predict(self, batch: TaskBatch, inner_steps: int | None = None) -> torch.Tensor:
        """The ensemble: mean output (real targets), or log of the mean softmax (integer targets)."""
        outputs = self.predict_particles(batch, inner_steps)
        if batch.support_y.is_floating_point():
            return outputs.mean(0)
        return torch.logsumexp(outputs.log_softmax(-1), 0) - math.log(self.num_particles)

    # -- the outer loop ------------------------------------------------------------------------
    def meta_loss(self, batch: TaskBatch) -> torch.Tensor:
        """mean_i (1/M) sum_m L_i^test(phi_i^m): differentiable w.r.t. ``model.parameters()``."""
        theta = self.meta_parameters()

        def query_loss(sx, sy, qx, qy):
            return self.particle_losses(self.adapt(sx, sy, theta), qx, qy).mean()

        return self.map_tasks(query_loss, *batch).mean()


class BMAML(EMAML):
    """Bayesian MAML: particles adapted by SVGD, meta-trained by the chaser loss (Yoon et al., 2018, sec. 3).

    Inner loop (Bayesian fast adaptation): Theta_n = SVGD^n(Theta_0; D), n steps of
        theta^m <- theta^m + eps * phi*(theta^m),  phi* from :func:`mlcourse.svgd.svgd_direction`
    with scores grad log p(theta^m | D) = grad [ log p(D | theta^m) + log p(theta^m) ]:
        log p(D | theta) = -N * L(theta; D) * c  over the N examples of D: the cross-entropy is
            the negative log-likelihood (c = 1); for real targets the Gaussian likelihood with
            variance sigma^2 = ``noise_variance`` per output, c = d / (2 sigma^2) for d outputs
            (sigma^2 = d/2, c = 1, by default);
        log p(theta) = -tau/2 ||theta||^2, tau = ``prior_precision`` (0: no prior; the meta-learned
            Theta_0 is the prior, as in MAML read as hierarchical Bayes).
    The kernel bandwidth is the median heuristic, constant for autograd (or ``bandwidth``).

    Meta-objective (the chaser loss): the follower Theta_n (n steps on D^tr) chases the leader
    Theta_{n+s}, which takes s more SVGD steps from Theta_n on D^tr u D^test:
        min_Theta0  mean_i  sum_m || theta_{i,n}^m - stopgrad(theta_{i,n+s}^m) ||^2
    ``chaser=False`` meta-trains on the ensemble's query loss instead, as EMAML.

    With M = 1, no prior and ``chaser=False``, one SVGD step is theta - eps N c grad L^tr(theta):
    MAML's step with alpha = eps N c, so BMAML reduces to MAML exactly (``tests/test_bmaml.py``).

    Args:
        model, loss_fn, num_particles, share_features, first_order, eval_inner_steps, vectorise,
            chunk_size, transductive: see :class:`EMAML` (share_features: only the head is a particle).
        inner_lr: the SVGD step size eps > 0 (both follower and leader).
        inner_steps: n >= 1, follower steps (and adaptation steps at test time unless
            ``eval_inner_steps``).   leader_steps: s >= 1.
        chaser: meta-train by the chaser loss (True) or by the query loss (False).
        bandwidth: the RBF kernel's h > 0, or None for the median heuristic.
        noise_variance: sigma^2 > 0 (real targets), None for d/2.   prior_precision: tau >= 0.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, inner_lr: float, inner_steps: int = 1,
                 num_particles: int = 5, leader_steps: int = 1, chaser: bool = True, bandwidth: float | None = None,
                 noise_variance: float | None = None, prior_precision: float = 0.0, share_features: bool = False,
                 first_order: bool = False, eval_inner_steps: int | None = None, vectorise="auto",
                 chunk_size: int | None = None, transductive: bool = True):
        self.leader_steps = check_int("leader_steps", leader_steps, 1)
        self.chaser = bool(chaser)
        self.bandwidth = None if bandwidth is None else check_positive("bandwidth", bandwidth)
        self.noise_variance = None if noise_variance is None else check_positive("noise_variance", noise_variance)
        if not (isinstance(prior_precision, (int, float)) and 0 <= prior_precision < math.inf):
            raise ValueError(f"prior_precision={prior_precision!r} is out of range: allowed a finite number >= 0")
        self.prior_precision = float(prior_precision)
        super().__init__(model, loss_fn, inner_lr, inner_steps, num_particles, share_features, first_order,
                         eval_inner_steps, vectorise, chunk_size, transductive)

    def log_posterior(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """sum_m [ log p(D | theta^m) + log p(theta^m) ] up to constants, D = (x, y) (see the class)."""
        c = y[0].numel() / (2 * self.noise_variance) if y.is_floating_point() and self.noise_variance else 1.0
        log_lik = -y.shape[0] * c * self.particle_losses(params, x, y).sum()
        if not self.prior_precision:
            return log_lik
        return log_lik - self.prior_precision / 2 * sum((params[k] ** 2).sum() for k in self.particle_names)

    def inner_update(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, steps: int,
                     *extra: torch.Tensor) -> Params:
        """Theta_n = SVGD^n(Theta; D): ``steps`` SVGD steps of size eps on log p(theta | D)."""
        shared, particles = self.split(params)
        loss = lambda p: -self.log_posterior({**shared, **p}, support_x, support_y)  # noqa: E731
        return {**shared, **inner_loop(loss, particles, self.inner_lr, steps, self.first_order, self.vectorised,
                                       optimizer=_SVGDStep(self.bandwidth))}

    def lead(self, follower: Params, x: torch.Tensor, y: torch.Tensor) -> Params:
        """The leader Theta_{n+s}: s SVGD steps from the follower on (x, y) = D^tr u D^test, a constant."""
        with torch.no_grad():
            leader = self.inner_update({k: v.detach() for k, v in follower.items()}, x, y, self.leader_steps)
        return {k: leader[k].detach() for k in self.particle_names}

    def meta_loss(self, batch: TaskBatch) -> torch.Tensor:
        """mean_i sum_m ||theta_{i,n}^m - stopgrad(theta_{i,n+s}^m)||^2 (or, with ``chaser=False``, EMAML's)."""
        if not self.chaser:
            return super().meta_loss(batch)
        theta = self.meta_parameters()

        def per_task(sx, sy, qx, qy):
            follower = self.adapt(sx, sy, theta)
            return chaser_loss(follower, self.lead(follower, torch.cat([sx, qx]), torch.cat([sy, qy])))

        return self.map_tasks(per_task, *batch).mean()


def chaser_loss(follower: Params, leader: Params) -> torch.Tensor:
    """sum_m ||theta_n^m - stopgrad(theta_{n+s}^m)||^2, over the parameters named in ``leader``."""
    return sum(((follower[k] - leader[k].detach()) ** 2).sum() for k in leader)


class _SVGDStep:
    """An SVGD step as :func:`mlcourse.functional.inner_loop`'s optimiser: it gets grads of -log p."""

    def __init__(self, bandwidth: float | None):
        self.bandwidth = bandwidth

    def init(self, params: Params) -> dict:
        return {}

    def step(self, params: Params, grads: Params, state: dict, inner_lr: float):
        x = torch.cat([v.flatten(1) for v in params.values()], 1)          # (M, D): one row per particle
        scores = -torch.cat([g.flatten(1) for g in grads.values()], 1)    # grad log p
        x = x + inner_lr * svgd_direction(x, scores, self.bandwidth)
        sizes = [v[0].numel() for v in params.values()]
        return {k: row.reshape(v.shape) for (k, v), row in zip(params.items(), x.split(sizes, 1))}, state


def _make_particles(model: nn.Module, num_particles: int, share_features: bool) -> tuple[str, ...]:
    """Replace ``model``'s particle parameters by M initialisations stacked on dim 0; return their names."""
    if hasattr(model, "_particles"):
        raise ValueError(f"the model already holds {model._particles} particles (from another EMAML or BMAML): "
                         "pass a fresh model")
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    if share_features:
        heads = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not heads:
            raise ValueError(f"share_features=True needs a model whose last layer is an nn.Linear head; "
                             f"{type(model).__name__} has none")
        names = [k for k in names if k.rpartition(".")[0] == heads[-1]]
    owners = {k.rpartition(".")[0] for k in names}
    copies = [copy.deepcopy(model) for _ in range(num_particles - 1)]
    for c in copies:
        for name, module in c.named_modules():
            if name in owners and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    with torch.no_grad():
        for k in names:
            owner, _, leaf = k.rpartition(".")
            stacked = torch.stack([m.get_parameter(k) for m in [model, *copies]])
            setattr(model.get_submodule(owner), leaf, nn.Parameter(stacked))
    model._particles = num_particles
    return tuple(names)
