"""Exercises of chapter 2 (MAML and first-order MAML): the inner step, the meta-gradient of a
linear-regression task by hand, and the FOMAML gradient of a network.

Each exercise has a reference solution (``*_solution``, the text the notebook's solution cell
shows), an independent reference used by its check (``_reference_*``: ``torch.func`` where the
solution uses ``torch.autograd``, autograd where the solution works by hand), and ``check_*(fn)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.func import grad as func_grad

from mlcourse.functional import forward
from mlcourse.nn import MLP
from mlcourse.tasks import Sinusoid

from .checking import Case, Exercise, exercise, randn, seeded

EXERCISES: dict[str, Exercise] = {}  # filled by the @exercise declarations below, in order


# ---------------------------------------------------------------------------------------------
# 2.1 The inner step

def inner_step_solution(params, grads, inner_lr):
    """One step of MAML's inner loop, phi = theta - alpha grad L_i^tr(theta).

    The inner update of the notation page's reference card (equation notation-inner).

    ``params`` (theta) and ``grads`` are dicts {name: tensor} with the same keys, and
    ``inner_lr`` is alpha. Returns a new dict phi; ``params`` itself is left unchanged.
    """
    return {name: params[name] - inner_lr * grads[name] for name in params}


def _parameter_dict(g: torch.Generator) -> dict:
    shapes = {"0.weight": (5, 1), "0.bias": (5,), "2.weight": (1, 5), "2.bias": (1,)}
    return {name: randn(*shape, g=g) for name, shape in shapes.items()}


@exercise(EXERCISES, "2.1", "the MAML inner step", inner_step_solution,
          must_not_modify=("params",), arg_names=("params", "grads", "inner_lr"))
def check_inner_step(g):
    r"""Check ``inner_step(params, grads, inner_lr)`` on random parameter dicts (exercise 2.1).

    Write `inner_step(params, grads, inner_lr)`, one step of the inner loop
    $\phi = \theta - \alpha \nabla \mathcal{L}_i^{\mathrm{tr}}(\theta)$ on parameter dicts.
    It must return a new dict and leave `params` unchanged: $\theta$ is still needed after
    the step.
    """
    for alpha in (0.01, 0.4, 0.1):
        theta, grads = _parameter_dict(g), _parameter_dict(g)
        expected = {n: theta[n] - alpha * grads[n] for n in theta}
        yield Case((theta, grads, alpha), expected, about=f"alpha={alpha}", mistakes=[
            ("you stepped up the gradient (theta + alpha g); gradient descent steps against it: "
             "phi = theta - alpha grad L.", {n: theta[n] + alpha * grads[n] for n in theta}),
            ("the step size is missing: phi = theta - alpha grad L, with alpha = inner_lr.",
             {n: theta[n] - grads[n] for n in theta}),
            ("you returned the step -alpha g; return the new parameters theta - alpha g.",
             {n: -alpha * grads[n] for n in theta}),
            ("you returned the parameters unchanged; subtract alpha times the gradient.", theta),
        ])


# ---------------------------------------------------------------------------------------------
# 2.2 The meta-gradient of one linear-regression task, by hand

def maml_meta_gradient_linear_solution(w, support_x, support_y, query_x, query_y, inner_lr):
    """MAML's meta-gradient of a linear-regression task (notation-metagrad, k = 1).

    The loss of weights w on n points (X, y) is L(w) = 1/n ||X w - y||^2, with gradient
    2/n X^T (X w - y) and Hessian H = 2/n X^T X. After the inner step
    phi = w - alpha grad L_tr(w), the chain rule gives the meta-gradient
        grad_w L_test(phi) = (I - alpha H_tr) grad L_test(phi).
    Shapes: w (d,), support_x (n, d), support_y (n,), query_x (m, d), query_y (m,);
    returns a tensor of shape (d,).
    """
    n, m = support_x.shape[0], query_x.shape[0]
    grad_tr = 2 / n * support_x.T @ (support_x @ w - support_y)
    phi = w - inner_lr * grad_tr
    grad_test = 2 / m * query_x.T @ (query_x @ phi - query_y)
    hessian_tr = 2 / n * support_x.T @ support_x
    eye = torch.eye(w.shape[0], dtype=w.dtype)
    return (eye - inner_lr * hessian_tr) @ grad_test


def _squared_error(v, X, y):
    return ((X @ v - y) ** 2).mean()


def _reference_linear(w, sx, sy, qx, qy, alpha):
    """grad_w L_test(w - alpha grad L_tr(w)) by autograd through the inner step (notation-metagrad)."""
    def query_loss_after_step(v):
        return _squared_error(v - alpha * func_grad(_squared_error)(v, sx, sy), qx, qy)
    return func_grad(query_loss_after_step)(w)


def _linear_variants(w, sx, sy, qx, qy, alpha):
    """The answers of common mistakes, each from the closed form with one thing changed."""
    n, m, eye = sx.shape[0], qx.shape[0], torch.eye(w.shape[0], dtype=w.dtype)

    def grad(v, X, y, c):
        return c / X.shape[0] * X.T @ (X @ v - y)

    phi = w - alpha * grad(w, sx, sy, 2)
    h_tr, h_te = 2 / n * sx.T @ sx, 2 / m * qx.T @ qx
    g_te = grad(phi, qx, qy, 2)
    phi_half = w - alpha * grad(w, sx, sy, 1)
    phi_sum = w - alpha * 2 * sx.T @ (sx @ w - sy)
    return [
        ("this is the first-order (FOMAML) gradient grad L_test(phi): the Jacobian factor "
         "(I - alpha H_tr) of the inner step is missing, with H_tr = 2/n X_tr^T X_tr the Hessian "
         "of the support loss.", g_te),
        ("the Hessian term has the wrong sign: d phi / d w = I - alpha H_tr, because phi = "
         "w - alpha grad L_tr(w).", (eye + alpha * h_tr) @ g_te),
        ("the query gradient is taken at w, before adaptation; take it at the adapted "
         "phi = w - alpha grad L_tr(w).", (eye - alpha * h_tr) @ grad(w, qx, qy, 2)),
        ("the Jacobian factor uses the Hessian of the query loss; it comes from the inner step, "
         "so it is the support loss's Hessian H_tr = 2/n X_tr^T X_tr.", (eye - alpha * h_te) @ g_te),
        ("you used L = 1/(2n) ||X w - y||^2; this exercise's loss is the mean squared error "
         "1/n ||X w - y||^2, with gradient 2/n X^T (X w - y) and Hessian 2/n X^T X.",
         (eye - alpha * h_tr / 2) @ grad(phi_half, qx, qy, 1)),
        ("the losses are sums over the points; this exercise's loss is the mean, "
         "1/n ||X w - y||^2 (divide by n and by m).",
         (eye - alpha * 2 * sx.T @ sx) @ (2 * qx.T @ (qx @ phi_sum - qy))),
    ]


@exercise(EXERCISES, "2.2", "the meta-gradient of a linear-regression task",
          maml_meta_gradient_linear_solution, points=2,
          hints={"shape": "Return a vector of shape (d,), like w (not (d, 1))."})
def check_maml_meta_gradient_linear(g):
    r"""Check the hand-derived meta-gradient against autograd through the inner step (exercise 2.2).

    For linear regression with the loss $\mathcal{L}(w) = \frac1n \lVert Xw - y \rVert^2$, write
    `maml_meta_gradient_linear(w, support_x, support_y, query_x, query_y, inner_lr)`: the
    meta-gradient of one task after one inner step, by hand (no autograd), with its
    Hessian term written out: $(I - \alpha H^{\mathrm{tr}})\, \nabla \mathcal{L}^{\mathrm{test}}(\phi)$
    where $H^{\mathrm{tr}} = \frac2n X_{\mathrm{tr}}^\top X_{\mathrm{tr}}$. The check compares it
    with autograd through the inner step.
    """
    for d, n, m, alpha in [(3, 5, 8, 0.05), (5, 10, 12, 0.1), (2, 4, 6, 0.02), (4, 6, 5, 0.2)]:
        w, sx, qx = randn(d, g=g), randn(n, d, g=g), randn(m, d, g=g)
        sy, qy = randn(n, g=g), randn(m, g=g)
        args = (w, sx, sy, qx, qy, alpha)
        yield Case(args, _reference_linear(*args), about=f"d={d}, n={n}, m={m}, alpha={alpha}",
                   mistakes=_linear_variants(*args))


# ---------------------------------------------------------------------------------------------
# 2.3 The first-order MAML gradient of a network

def fomaml_gradient_solution(model, params, support_x, support_y, query_x, query_y,
                             inner_lr, inner_steps):
    """First-order MAML's gradient for one task, grad L_test(phi) (notation-fomaml).

    phi = U^k(theta): k = ``inner_steps`` steps of phi <- phi - alpha grad L_tr(phi)
    from theta = ``params`` (a dict {name: tensor}), the loss being the mean squared
    error of ``forward(model, phi, x)``. FOMAML treats d phi / d theta as the identity,
    so nothing is differentiated through the inner steps: the gradient of the query
    loss at phi is the answer. Returns a dict {name: tensor} keyed like ``params``.
    """
    phi = {name: p.detach().requires_grad_() for name, p in params.items()}
    for _ in range(inner_steps):
        loss = F.mse_loss(forward(model, phi, support_x), support_y)
        grads = torch.autograd.grad(loss, list(phi.values()))
        phi = {name: (p - inner_lr * g).detach().requires_grad_()
               for (name, p), g in zip(phi.items(), grads)}
    loss = F.mse_loss(forward(model, phi, query_x), query_y)
    return dict(zip(phi, torch.autograd.grad(loss, list(phi.values()))))


def _mse_of(model):
    def loss(p, x, y):
        return ((functional_call(model, p, (x,)) - y) ** 2).mean()
    return loss


def _adapt(loss, theta, x, y, alpha, k):
    phi = theta
    for _ in range(k):
        grads = func_grad(loss)(phi, x, y)
        phi = {name: phi[name] - alpha * grads[name] for name in phi}
    return phi


def _reference_fomaml(model, theta, sx, sy, qx, qy, alpha, k):
    """grad L_test at phi = U^k(theta), by torch.func, differentiating w.r.t. phi (notation-fomaml)."""
    loss = _mse_of(model)
    theta = {name: p.detach() for name, p in theta.items()}
    return func_grad(loss)(_adapt(loss, theta, sx, sy, alpha, k), qx, qy)


def _fomaml_variants(model, theta, sx, sy, qx, qy, alpha, k):
    loss = _mse_of(model)
    theta = {name: p.detach() for name, p in theta.items()}
    own = {name: p.detach() for name, p in model.named_parameters()}
    out = [
        ("this is the full second-order MAML gradient: you differentiated through the inner "
         "steps. FOMAML treats d phi / d theta as the identity: take the query loss's gradient "
         "with respect to phi (or detach the inner gradients).",
         lambda: func_grad(lambda t: loss(_adapt(loss, t, sx, sy, alpha, k), qx, qy))(theta)),
        ("the gradient is taken at theta, without adapting; take k inner steps first and the "
         "query gradient at the adapted phi.", lambda: func_grad(loss)(theta, qx, qy)),
        ("the outer gradient uses the support set; FOMAML's gradient is that of the query loss "
         "L_test at phi.", lambda: func_grad(loss)(_adapt(loss, theta, sx, sy, alpha, k), sx, sy)),
        ("you used the model's own parameters; run the model with the `params` you are given "
         "(forward(model, phi, x)).",
         lambda: func_grad(loss)(_adapt(loss, own, sx, sy, alpha, k), qx, qy)),
    ]
    if k > 1:
        out.append(("you took one inner step; take `inner_steps` of them.",
                    lambda: func_grad(loss)(_adapt(loss, theta, sx, sy, alpha, 1), qx, qy)))
    out.append(("you took one inner step too many: `inner_steps` steps, then the query gradient.",
                lambda: func_grad(loss)(_adapt(loss, theta, sx, sy, alpha, k + 1), qx, qy)))
    return out


@exercise(EXERCISES, "2.3", "the first-order MAML gradient", fomaml_gradient_solution, points=2,
          imports="from mlcourse.functional import forward")
def check_fomaml_gradient(g):
    r"""Check ``fomaml_gradient(...)`` on a small sinusoid network and random tasks (exercise 2.3).

    Write `fomaml_gradient`, whose arguments are `model, params, support_x, support_y,
    query_x, query_y, inner_lr, inner_steps`: take $k$ = `inner_steps` gradient steps on the
    support loss (mean squared error) from $\theta$ = `params`, then return the gradient of
    the query loss at the adapted $\phi$ (FOMAML drops the Jacobian of the inner steps). Run
    the model with `forward(model, phi, x)` from `mlcourse.functional`.
    """
    model = seeded(23, lambda: MLP([1, 8, 8, 1]).double())
    sampler = Sinusoid(shots=5, queries=6)
    for alpha, k in [(0.05, 1), (0.02, 3), (0.1, 2)]:
        batch = sampler.sample(1, generator=g)
        sx, sy, qx, qy = (t[0].double() for t in batch)
        theta = {name: (0.5 * randn(*p.shape, g=g)).requires_grad_()
                 for name, p in model.named_parameters()}
        args = (model, theta, sx, sy, qx, qy, alpha, k)
        yield Case(args, _reference_fomaml(*args), about=f"alpha={alpha}, k={k}",
                   mistakes=_fomaml_variants(*args))
