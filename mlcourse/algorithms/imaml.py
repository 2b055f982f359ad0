"""Implicit MAML (Rajeswaran, Finn, Kakade and Levine, 2019, Algorithms 1 and 2)."""
from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

from ..fastpath import run_tasks, workers_for
from ..functional import Params, forward, inner_loop
from ..functional import axpy
from ..implicit import (DEFAULT_HVP, HVP_METHODS, CGNotConvergedWarning, conjugate_gradient,
                        gauss_newton_operator, hvp_operator, newton_cg_step)
from ..utils import check_int, check_positive
from ..tasks.base import TaskBatch
from .base import MetaLearner

INNER_SOLVERS = ("gd", "newton_cg")
CURVATURES = ("hessian", "gauss_newton")


class IMAML(MetaLearner):
    """iMAML: meta-learn theta through the *solution* of a proximally regularised inner problem.

    Inner problem (eq. 4):   phi_i = Alg*_i(theta) = argmin_phi  G_i(phi, theta),
                             G_i(phi, theta) = L_i^tr(phi) + lam/2 ||phi - theta||^2
    solved approximately, *without* a graph (memory does not grow with ``inner_steps``), by

    * ``inner_solver="gd"``: ``inner_steps`` steps phi <- phi - alpha grad_phi G_i (the shared
      :func:`mlcourse.functional.inner_loop` on G_i), or
    * ``inner_solver="newton_cg"``: ``inner_steps`` Hessian-free Newton steps: the direction d
      solves (H_i + lam I) d = -grad G_i by ``newton_cg_steps`` of CG, the step length comes from a
      backtracking (Armijo) line search on G_i.

    Task meta-gradient (implicit function theorem, eqs. 6-7, Algorithm 2):

        d Alg*_i / d theta = (I + H_i / lam)^-1,   H_i = grad^2 L_i^tr(phi_i),
        g_i = (I + H_i / lam)^-1 grad L_i^test(phi_i),

    computed by ``cg_steps`` iterations of conjugate gradient with Hessian-vector products; the
    meta-gradient is mean_i g_i (Algorithm 1), which :func:`mlcourse.train.meta_train` hands to Adam.

    Args:
        model, loss_fn: as for :class:`~mlcourse.algorithms.maml.MAML`.
        lam: regularisation strength lambda > 0 (the paper: 2.0 on Omniglot).
        inner_solver: "gd" or "newton_cg".
        inner_steps: GD steps or Newton steps, >= 1 (used in meta-training and, unless overridden,
            adaptation).
        cg_steps: CG iterations for the meta-gradient, >= 1 (the paper: 5).
        inner_lr: alpha > 0, the GD step size (required for "gd", unused by "newton_cg").
        cg_tol: relative residual ||(I + H/lam) g - v|| / ||v|| the meta-gradient CG aims for; if a
            task's solve ends above it, ``meta_gradient`` warns (CGNotConvergedWarning) with the worst
            residual. The last call's iterations and residuals are in ``last_cg``.
        newton_cg_steps: CG iterations for each Newton direction (the paper: 5).
        max_backtracks: halvings of the Newton step before the line search gives up.
        hvp_method: "double_backward" or "forward_over_reverse" (see :mod:`mlcourse.implicit`).
        eval_inner_steps: solver steps at test time (default: ``inner_steps``).
        vectorise: "auto" or False, both the per-task loop (see below).
        transductive: see :class:`MetaLearner`.
        curvature: the matrix in the CG systems: "hessian" (H_i, as derived) or "gauss_newton"
            (G_i = J^T H_out J, positive semi-definite: I + G_i/lam is positive definite for every
            lam, where I + H_i/lam need not be; the Newton-CG solver then takes Gauss-Newton
            steps, (G_i + lam I) d = -grad G_i).
        newton_damping: eta >= 0, Levenberg-Marquardt damping of the Newton-CG solver's system only,
            (C + (lam + eta) I) d = -grad G (Martens, 2010): eta = 0 is the plain (Gauss-)Newton step;
            a larger eta shortens the step along low-curvature directions, towards a gradient step
            of size 1/(lam + eta). It changes how the inner problem is solved, not the problem.
        newton_expansions: how many times the Newton-CG line search may double a full step while G
            keeps falling (default 0: steps of length at most 1; see
            :func:`mlcourse.implicit.newton_cg_step`).
        cg_lam: the lambda of the meta-gradient's CG system, (I + C/cg_lam) g = v (default: lam).
            A larger value damps the system towards g = v, the first-order answer; the authors'
            code solves (2 I + H/(lam + 10)) g = v, i.e. cg_lam = 2 (lam + 10) up to a factor 1/2.

    Tasks are always mapped by a Python loop, never ``vmap``: CG and the line search branch on
    values (stop when the residual is small, halve the step while the loss has not decreased),
    data-dependent control flow that ``vmap`` cannot batch.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, lam: float, inner_solver: str = "gd",
                 inner_steps: int = 16, cg_steps: int = 5, inner_lr: float | None = None, cg_tol: float = 1e-2,
                 newton_cg_steps: int = 5, max_backtracks: int = 10, hvp_method: str = DEFAULT_HVP,
                 eval_inner_steps: int | None = None, vectorise="auto", transductive: bool = True,
                 curvature: str = "hessian", cg_lam: float | None = None, newton_damping: float = 0.0,
                 newton_expansions: int = 0):
        if vectorise is True:
            raise ValueError("vectorise=True is not possible for iMAML: CG and the line search branch on values, "
                             "which vmap cannot batch; allowed 'auto' or False (both take the per-task loop)")
        super().__init__(model, loss_fn, vectorise=False, transductive=transductive,
                         eval_inner_steps=eval_inner_steps)
        self.lam = check_positive("lam", lam)
        if inner_solver not in INNER_SOLVERS:
            raise ValueError(f"inner_solver={inner_solver!r} is unknown: allowed {', '.join(map(repr, INNER_SOLVERS))}")
        self.inner_solver = inner_solver
        self.inner_steps = check_int("inner_steps", inner_steps, 1)
        self.cg_steps = check_int("cg_steps", cg_steps, 1)
        if inner_solver == "gd":
            if inner_lr is None:
                raise ValueError("inner_lr is required for inner_solver='gd': allowed a finite number > 0")
            self.inner_lr = check_positive("inner_lr", inner_lr)
        else:
            self.inner_lr = None if inner_lr is None else check_positive("inner_lr", inner_lr)
        self.cg_tol = check_positive("cg_tol", cg_tol)
        self.newton_cg_steps = check_int("newton_cg_steps", newton_cg_steps, 1)
        self.max_backtracks = check_int("max_backtracks", max_backtracks, 0)
        if hvp_method not in HVP_METHODS:
            raise ValueError(f"hvp_method={hvp_method!r} is unknown: allowed {', '.join(HVP_METHODS)}")
        self.hvp_method = hvp_method
        if curvature not in CURVATURES:
            raise ValueError(f"curvature={curvature!r} is unknown: allowed {', '.join(map(repr, CURVATURES))}")
        self.curvature = curvature
        self.cg_lam = self.lam if cg_lam is None else check_positive("cg_lam", cg_lam)
        if not (isinstance(newton_damping, (int, float)) and 0 <= newton_damping < float("inf")):
            raise ValueError(f"newton_damping={newton_damping!r} is out of range: allowed a finite number >= 0")
        self.newton_damping = float(newton_damping)
        self.newton_expansions = check_int("newton_expansions", newton_expansions, 0)
        self.last_cg: dict = {}

    # -- the inner problem ----------------------------------------------------------------------
    def proximal_loss(self, theta: Params, support_x: torch.Tensor, support_y: torch.Tensor):
        """phi -> G(phi, theta) = L^tr(phi) + lam/2 ||phi - theta||^2 with theta held constant."""
        anchor = {k: v.detach() for k, v in theta.items()}

        def loss_of(phi: Params) -> torch.Tensor:
            distance = sum(((phi[k] - anchor[k]) ** 2).sum() for k in anchor)
            return self.support_loss(phi, support_x, support_y) + 0.5 * self.lam * distance

        return loss_of

    def inner_update(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                     steps: int) -> Params:
        """phi ~ Alg*(theta) on one task's support set (no task dimension); detached from theta."""
        phi = {k: v.detach() for k, v in params.items()}
        loss_of = self.proximal_loss(phi, support_x, support_y)
        with torch.no_grad():  # no graph through the solver: memory flat in the number of steps
            if self.inner_solver == "gd":
                return inner_loop(loss_of, phi, self.inner_lr, steps, first_order=True, vectorised=False)
            curvature = None
            shift = self.lam + self.newton_damping
            if self.curvature == "gauss_newton":  # Gauss-Newton steps: (G + (lam + eta) I) d = -grad G
                def curvature(point):
                    gn = self.curvature_operator(point, support_x, support_y)
                    return lambda u: axpy(shift, u, gn(u))
            elif self.newton_damping > 0:  # damped Newton steps: (H + (lam + eta) I) d = -grad G
                def curvature(point):
                    h = self.curvature_operator(point, support_x, support_y)
                    return lambda u: axpy(shift, u, h(u))
            for _ in range(steps):
                phi = newton_cg_step(loss_of, phi, self.newton_cg_steps, self.max_backtracks, self.hvp_method,
                                     curvature, self.newton_expansions)
        return phi

    # -- the meta-gradient ----------------------------------------------------------------------
    def curvature_operator(self, phi: Params, support_x: torch.Tensor, support_y: torch.Tensor):
        """u -> H u (the support loss's Hessian at phi) or u -> G u (its Gauss-Newton matrix)."""
        if self.curvature == "hessian":
            return hvp_operator(lambda p: self.support_loss(p, support_x, support_y), phi, self.hvp_method)
        return gauss_newton_operator(lambda p: forward(self.model, p, support_x),
                                     lambda out: self.loss_fn(out, support_y), phi)

    def task_meta_gradient(self, support_x, support_y, query_x, query_y, theta: Params | None = None):
        """Algorithm 2 for one task: ``(query loss, g_i, CG iterations, CG relative residual)``."""
        theta = self.meta_parameters() if theta is None else theta
        phi = self.adapt(support_x, support_y, theta)
        leaves = {k: v.detach().requires_grad_() for k, v in phi.items()}
        with torch.enable_grad():
            query_loss = self.loss_fn(forward(self.model, leaves, query_x), query_y)
            v = dict(zip(leaves, torch.autograd.grad(query_loss, list(leaves.values()))))
        curvature = self.curvature_operator(phi, support_x, support_y)

        def matvec(u: Params) -> Params:  # (I + H / lam) u
            return axpy(1.0 / self.cg_lam, curvature(u), u)

        g, iters, residual = conjugate_gradient(matvec, v, self.cg_steps, self.cg_tol, warn=False)
        return query_loss.detach(), g, iters, residual

    def meta_gradient(self, batch: TaskBatch):
        """(mean_i L_i^test(phi_i), {name: mean_i g_i}): Algorithm 1's average of Algorithm 2."""
        theta = self.meta_parameters()
        total = {k: torch.zeros_like(v) for k, v in theta.items()}
        losses, iterations, residuals = [], [], []
        # one task after another, or in threads when set_task_workers says so (only with double-backward
        # Hessian products: forward-mode AD, which the Gauss-Newton and forward-over-reverse products use,
        # fails in a second thread); summed in task order
        threadable = self.curvature == "hessian" and self.hvp_method == "double_backward"
        per_task = run_tasks(lambda i: self.task_meta_gradient(*(t[i] for t in batch), theta), batch.num_tasks,
                             workers_for(self.model) if threadable else 1)
        for loss, g, iters, residual in per_task:
            total = {k: total[k] + g[k] for k in total}
            losses.append(loss)
            iterations.append(iters)
            residuals.append(residual)
        self.last_cg = {"iterations": iterations, "residuals": residuals}
        worst = max(residuals)
        if worst > self.cg_tol:
            bad = sum(r > self.cg_tol for r in residuals)
            warnings.warn(f"iMAML meta-gradient: CG ({self.cg_steps} steps) ended above cg_tol={self.cg_tol:g} "
                          f"on {bad} of {len(residuals)} tasks; worst relative residual {worst:.3g}",
                          CGNotConvergedWarning, stacklevel=2)
        n = len(losses)
        return torch.stack(losses).mean(), {k: t / n for k, t in total.items()}
