"""MAML++ (Antoniou, Edwards and Storkey, 2019, "How to train your MAML", sec. 4): MAML with six fixes."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..functional import Params, forward, inner_loop
from ..nn import batch_norm_step, per_step_layers, use_per_step_batch_norm
from ..tasks.base import TaskBatch
from ..utils import check_int, check_positive
from .base import MetaLearner


def multi_step_loss_weights(steps: int, progress: float) -> list[float]:
    """MSL's importance weights v_0..v_{N-1} at ``progress`` (0: start of their annealing, 1: its end).

    Uniform (1/N each) at 0, moving linearly to one-hot on the last step at 1 and after; they sum to 1.
    """
    rho = min(max(float(progress), 0.0), 1.0)
    earlier = (1.0 - rho) / steps
    return [earlier] * (steps - 1) + [1.0 - earlier * (steps - 1)]


def cosine_annealing_factor(iteration: int, iterations: int, floor: float) -> float:
    """CA: beta_t / beta = floor + (1 - floor) (1 + cos(pi t / T)) / 2, from 1 at t = 0 towards ``floor``."""
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * iteration / max(iterations, 1)))


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} is out of range: allowed a number in [0, 1]")
    return float(value)


class MAMLPlusPlus(MetaLearner):
    """MAML++: MAML (Finn et al., 2017, Algorithm 2) with the six fixes of Antoniou et al. (sec. 4), each a flag.

    With N = ``inner_steps`` and phi^0 = theta, inner step s = 0..N-1 on the support set is

        phi^{s+1} = phi^s - alpha_s * grad L^tr(f(phi^s; batch-norm set s)),

    and the meta-objective is the multi-step loss of sec. 4 (MSL),

        min_theta  mean_b  sum_{s=0}^{N-1} v_s L_b^test(f(phi_b^{s+1}; batch-norm set s)).

    * ``msl``: the importance weights v_s anneal from 1/N each to one-hot on the last step over the first
      ``msl_annealing_fraction`` of meta-training (:func:`multi_step_loss_weights`); off: one-hot (MAML).
    * ``derivative_order_annealing`` (DA): first order (dphi/dtheta = I) for the first ``first_order_fraction``
      of meta-training, second order after; off: second order throughout.
    * ``per_step_bn_stats`` (BNRS): the model's :class:`~mlcourse.nn.BatchNorm` layers become
      :class:`~mlcourse.nn.PerStepBatchNorm` layers (in place) with running statistics per step: the moving
      average of the query sets' batch statistics at set s, updated after each ``meta_gradient`` (outside
      any transform). With ``transductive=False`` the query set is normalised with them, each example on
      its own; with ``transductive=True`` (the paper's evaluation) with its own batch statistics.
    * ``per_step_bn_weights`` (BNWB): batch norm's weight and bias per step, [N, C], meta-learned by the outer
      loop only (as in the authors' code); off: shared, [C], and adapted in the inner loop as in MAML.
    * ``lslr``: alpha_s is a learned step size per parameter tensor (per layer) and per step, the meta-parameter
      ``inner_lr/<name>`` of shape [N], started at ``inner_lr``; it may turn negative (a learned direction).
      Off: alpha_s = ``inner_lr``.
    * ``cosine_annealing`` (CA): the outer step size goes from beta to ``min_outer_lr_factor`` * beta along a
      cosine over meta-training (:meth:`outer_lr_factor`, the contract's schedule hook); off: constant beta.

    Meta-training reports its position through :meth:`start_iteration` (before each meta-iteration); the MSL
    weights, DA's order and CA's factor are functions of (iteration, iterations) alone, so a resumed run
    matches an uninterrupted one. A fresh algorithm is at iteration 0. The authors' code counts in epochs of
    500 iterations and steps its schedules once per epoch; these fractions move every iteration.

    Batch-norm set s (and alpha_s) belongs to inner step s; the query loss after step s uses set s (as in the
    authors' code), so the adapted model phi^N runs set N-1. Adapting for more steps than N at test time
    reuses set N-1 and alpha_{N-1}. With all six flags off this is MAML (tests/test_maml_plus_plus.py).

    Args:
        model, loss_fn: as for :class:`~mlcourse.algorithms.maml.MAML`.
        inner_lr: alpha > 0 (the start of every learned rate with ``lslr``).   inner_steps: N >= 1.
        msl, derivative_order_annealing, per_step_bn_stats, per_step_bn_weights, lslr, cosine_annealing: the fixes.
        msl_annealing_fraction, first_order_fraction: fractions in [0, 1] of the meta-iterations.
        min_outer_lr_factor: where CA ends, in [0, 1] (the authors': 1e-5 / 1e-3).
        eval_inner_steps, vectorise, chunk_size, transductive: see :class:`MetaLearner`.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, inner_lr: float, inner_steps: int = 5, msl: bool = True,
                 derivative_order_annealing: bool = True, per_step_bn_stats: bool = True,
                 per_step_bn_weights: bool = True, lslr: bool = True, cosine_annealing: bool = True,
                 msl_annealing_fraction: float = 0.1, first_order_fraction: float = 0.5,
                 min_outer_lr_factor: float = 0.01, eval_inner_steps: int | None = None, vectorise="auto",
                 chunk_size: int | None = None, transductive: bool = True):
        super().__init__(model, loss_fn, vectorise, chunk_size, transductive, eval_inner_steps)
        self.inner_lr = check_positive("inner_lr", inner_lr)
        self.inner_steps = check_int("inner_steps", inner_steps, 1)
        flags = dict(msl=msl, derivative_order_annealing=derivative_order_annealing,
                     per_step_bn_stats=per_step_bn_stats, per_step_bn_weights=per_step_bn_weights, lslr=lslr,
                     cosine_annealing=cosine_annealing)
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise TypeError(f"{name}={value!r} must be True or False")
            setattr(self, name, value)
        self.msl_annealing_fraction = _check_fraction("msl_annealing_fraction", msl_annealing_fraction)
        self.first_order_fraction = _check_fraction("first_order_fraction", first_order_fraction)
        self.min_outer_lr_factor = _check_fraction("min_outer_lr_factor", min_outer_lr_factor)
        if per_step_bn_stats or per_step_bn_weights:
            use_per_step_batch_norm(model, self.inner_steps, per_step_bn_weights)
        elif per_step_layers(model):
            raise ValueError("the model has PerStepBatchNorm layers but per_step_bn_stats and per_step_bn_weights "
                             "are both off: turn one on, or build the model with mlcourse.nn.BatchNorm")
        # BNWB's per-step weights and biases are meta-learned by the outer loop only; the rest is adapted
        self.outer_only = {f"{name}.{p}" for name, m in per_step_layers(model).items() if m.per_step_weights
                           for p in ("weight", "bias")}
        # LSLR: one step size per adapted parameter tensor and step, a leaf of its own beside the model's
        self.inner_lrs = {k: nn.Parameter(torch.full((self.inner_steps,), self.inner_lr, dtype=v.dtype,
                                                     device=v.device))
                          for k, v in self.meta_parameters().items() if k not in self.outer_only} if lslr else {}
        self.meta_tensors = {f"inner_lr/{k}": p for k, p in self.inner_lrs.items()}
        self.iteration, self.iterations = 0, None
        self._query_set = self.inner_steps - 1

    # -- the schedules: functions of (iteration, iterations) -----------------------------------
    def start_iteration(self, iteration: int, iterations: int):
        """Meta-training is about to run ``iteration`` (0-based) of ``iterations``: MSL and DA follow it."""
        self.iteration, self.iterations = check_int("iteration", iteration, 0), check_int("iterations", iterations, 0)

    def _progress(self, fraction: float) -> float:
        """How far meta-training is through its first ``fraction``: 0 at the start (where a fresh algorithm is),
        >= 1 from its end on."""
        if self.iterations is None:
            return 0.0 if fraction > 0 else math.inf
        span = fraction * self.iterations
        return self.iteration / span if span > 0 else math.inf

    @property
    def first_order(self) -> bool:
        """DA: first-order inner gradients during the first ``first_order_fraction`` of meta-training."""
        return self.derivative_order_annealing and self._progress(self.first_order_fraction) < 1

    def step_weights(self) -> list[float]:
        """v_0..v_{N-1} now: MSL's annealed weights, or one-hot on the last step (MAML's objective)."""
        return multi_step_loss_weights(self.inner_steps, self._progress(self.msl_annealing_fraction) if self.msl
                                       else 1.0)

    def outer_lr_factor(self, iteration: int, iterations: int) -> float:
        """CA: the cosine from 1 to ``min_outer_lr_factor`` (:func:`cosine_annealing_factor`), or 1."""
        if not self.cosine_annealing:
            return 1.0
        return cosine_annealing_factor(iteration, iterations, self.min_outer_lr_factor)

    # -- the inner loop ------------------------------------------------------------------------
    def _set(self, step: int) -> int:
        """The batch-norm set (and LSLR rate) of inner step ``step``: steps past N reuse the last."""
        return min(max(step, 0), self.inner_steps - 1)

    def step_size(self, step: int):
        """alpha_s: LSLR's learned rate per parameter tensor at step s, or ``inner_lr``."""
        if not self.lslr:
            return self.inner_lr
        return {k: rates[self._set(step)] for k, rates in self.inner_lrs.items()}

    def trajectory(self, params: Params, support_x, support_y, steps: int) -> list[Params]:
        """[phi^1, ..., phi^steps] from phi^0 = ``params``: step s runs batch-norm set s and steps by alpha_s."""
        fixed = {k: v for k, v in params.items() if k in self.outer_only}
        fast = {k: v for k, v in params.items() if k not in self.outer_only}
        path = []
        for s in range(steps):
            def support_loss(p, s=s):
                with batch_norm_step(self.model, self._set(s)):
                    return self.support_loss({**fixed, **p}, support_x, support_y)

            fast = inner_loop(support_loss, fast, self.step_size(s), 1, self.first_order, self.vectorised)
            path.append({**fixed, **fast})
        return path

    def inner_update(self, params: Params, support_x, support_y, steps: int, *extra) -> Params:
        """phi^steps (see :meth:`trajectory`)."""
        path = self.trajectory(params, support_x, support_y, steps)
        return path[-1] if path else params

    # -- the outer loop ------------------------------------------------------------------------
    def task_objective(self, theta: Params, support_x, support_y, query_x, query_y):
        """sum_s v_s L^test(phi^{s+1}; set s) for one task, and (BNRS) its query sets' batch statistics."""
        statistics = {}
        record = statistics if self.per_step_bn_stats else None
        loss = 0.0
        path = self.trajectory(theta, support_x, support_y, self.inner_steps)
        for s, (v, phi) in enumerate(zip(self.step_weights(), path)):
            if v > 0:  # after MSL's annealing only the last step counts: skip the others' forward passes
                with batch_norm_step(self.model, s, record=record):
                    loss = loss + v * self.loss_fn(forward(self.model, phi, query_x), query_y)
        return loss, statistics

    def meta_objective(self, batch: TaskBatch):
        """(the meta-loss, the query sets' batch statistics per layer and set, ``[tasks, 2, C]`` each)."""
        theta = self.meta_parameters()
        losses, statistics = self.map_tasks(lambda sx, sy, qx, qy: self.task_objective(theta, sx, sy, qx, qy),
                                            *batch)
        return losses.mean(), statistics

    def meta_loss(self, batch: TaskBatch) -> torch.Tensor:
        """The MSL meta-objective above: differentiable in theta and the LSLR rates."""
        return self.meta_objective(batch)[0]

    def meta_gradient(self, batch: TaskBatch):
        """Autograd of the meta-loss; then BNRS moves the running statistics towards this batch's."""
        loss, statistics = self.meta_objective(batch)
        named = self.named_parameters()
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        self.update_running_statistics(statistics)
        return loss.detach(), {k: g for (k, _), g in zip(named, grads) if g is not None}

    def update_running_statistics(self, statistics: dict):
        """Each layer's set s moves towards the task-averaged batch statistics recorded at set s."""
        layers = per_step_layers(self.model)
        for key, stats in statistics.items():
            name, step = key.rsplit("/", 1)
            mean, var = stats.mean(dim=0)
            layers[name].update_running_statistics(int(step), mean, var)

    # -- prediction ----------------------------------------------------------------------------
    def predict(self, batch: TaskBatch, inner_steps: int | None = None) -> torch.Tensor:
        """As :meth:`MetaLearner.predict`; the query set runs the batch-norm set of the last adaptation step."""
        self._query_set = self._set(self.test_steps(inner_steps) - 1)
        try:
            return super().predict(batch, inner_steps)
        finally:
            self._query_set = self.inner_steps - 1

    def query_outputs(self, phi: Params, support_x: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Transductive: the query set's batch statistics. Otherwise, with BNRS, each query example is
        normalised alone by the running statistics of its set (without BNRS: the base class's way)."""
        if self.transductive or not (self.per_step_bn_stats and per_step_layers(self.model)):
            with batch_norm_step(self.model, self._query_set):
                return super().query_outputs(phi, support_x, query_x)
        with batch_norm_step(self.model, self._query_set, running_stats=True):
            return forward(self.model, phi, query_x)
