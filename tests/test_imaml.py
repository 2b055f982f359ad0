"""iMAML and the implicit-differentiation tools: CG, Hessian-vector products, implicit meta-gradients."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mlcourse.algorithms.imaml import IMAML
from mlcourse.functional import flatten, params_of, unflatten
from mlcourse.implicit import (CGNotConvergedWarning, conjugate_gradient, explicit_hessian, hvp,
                               hvp_forward_over_reverse)
from mlcourse.tasks import TaskBatch
from mlcourse.train import evaluate, meta_train
from _helpers import image_task, sinusoid_batch, small_convnet, small_mlp  # noqa: E402


def squared_error(out, y):
    """F.mse_loss from primitive ops (forward-over-reverse fails on F.mse_loss: PyTorch issue 123996)."""
    return ((out - y) ** 2).mean()


def as_dict(flat, like):
    return unflatten(flat, like)


def random_like(params, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}


# ---------------------------------------------------------------------------------------------
# Conjugate gradient

def test_cg_equals_dense_solve_on_random_spd():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(30, 30, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(30, dtype=torch.float64)
    b = {"u": torch.randn(20, generator=g, dtype=torch.float64), "w": torch.randn(2, 5, generator=g, dtype=torch.float64)}
    like = {"u": b["u"], "w": b["w"]}
    x, iters, residual = conjugate_gradient(lambda v: as_dict(a @ flatten(v), like), b, max_iters=200, tol=1e-12)
    torch.testing.assert_close(flatten(x), torch.linalg.solve(a, flatten(b)), rtol=1e-9, atol=1e-10)
    assert residual <= 1e-12 and 1 <= iters <= 200
    assert set(x) == {"u", "w"} and x["w"].shape == (2, 5)


def test_cg_warns_with_the_residual_when_it_stops_early():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(30, 30, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.1 * torch.eye(30, dtype=torch.float64)
    b = {"u": torch.randn(30, generator=g, dtype=torch.float64)}
    with pytest.warns(CGNotConvergedWarning, match=r"relative residual [0-9.e+-]+ > tol"):
        x, iters, residual = conjugate_gradient(lambda v: {"u": a @ v["u"]}, b, max_iters=2, tol=1e-10)
    assert iters == 2 and residual > 1e-10
    exact = float(torch.linalg.norm(b["u"] - a @ x["u"]) / torch.linalg.norm(b["u"]))
    assert abs(exact - residual) < 1e-8 * max(1.0, exact)  # the reported residual is the true one
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conjugate_gradient(lambda v: {"u": a @ v["u"]}, b, max_iters=2, tol=1e-10, warn=False)


def test_cg_stops_and_warns_on_negative_curvature():
    a = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    b = {"u": torch.tensor([0.0, 1.0], dtype=torch.float64)}
    with pytest.warns(CGNotConvergedWarning, match="non-positive curvature"):
        _, iters, residual = conjugate_gradient(lambda v: {"u": a @ v["u"]}, b, max_iters=5)
    assert iters == 0 and residual == pytest.approx(1.0)


def test_cg_bad_input():
    b = {"u": torch.ones(3)}
    with pytest.raises(ValueError, match="max_iters=0"):
        conjugate_gradient(lambda v: v, b, max_iters=0)
    with pytest.raises(ValueError, match="tol"):
        conjugate_gradient(lambda v: v, b, max_iters=3, tol=-1.0)


# ---------------------------------------------------------------------------------------------
# Hessian-vector products and CG on (I + H / lam) of a small network

def support_loss_of(model, x, y, loss_fn):
    return lambda p: loss_fn(functional_call(model, p, (x,)), y)


@pytest.mark.parametrize("method", ["double_backward", "forward_over_reverse"])
@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_hvp_equals_explicit_hessian_times_vector(method, kind):
    if kind == "mlp":
        model, batch = small_mlp(), sinusoid_batch(1)
        loss_of = support_loss_of(model, batch.support_x[0], batch.support_y[0], squared_error)
    else:
        model = small_convnet()
        loss_of = support_loss_of(model, *image_task(), F.cross_entropy)
    params = {k: v.detach() for k, v in params_of(model).items()}
    h = explicit_hessian(loss_of, params)
    assert torch.linalg.norm(h) > 1e-3  # a real curvature to reproduce
    v = random_like(params)
    torch.testing.assert_close(flatten(hvp(loss_of, params, v, method)), h @ flatten(v), rtol=1e-9, atol=1e-10)


def test_forward_over_reverse_explains_the_mse_loss_bug_or_works():
    model, batch = small_mlp(), sinusoid_batch(1)
    params = {k: v.detach() for k, v in params_of(model).items()}
    loss_of = support_loss_of(model, batch.support_x[0], batch.support_y[0], F.mse_loss)
    expected = hvp(loss_of, params, random_like(params), "double_backward")
    try:
        got = hvp_forward_over_reverse(loss_of, params, random_like(params))
    except RuntimeError as err:  # PyTorch issue 123996; the message must say what to do
        assert "123996" in str(err) and "double_backward" in str(err)
    else:
        torch.testing.assert_close(flatten(got), flatten(expected))


def test_hvp_rejects_unknown_method():
    model, batch = small_mlp(), sinusoid_batch(1)
    params = params_of(model)
    with pytest.raises(ValueError, match="method='exact'"):
        hvp(support_loss_of(model, batch.support_x[0], batch.support_y[0], squared_error), params, params, "exact")


def test_cg_equals_dense_solve_on_proximal_hessian_of_small_net():
    model, batch = small_mlp(), sinusoid_batch(1)
    loss_of = support_loss_of(model, batch.support_x[0], batch.support_y[0], squared_error)
    params = {k: v.detach() for k, v in params_of(model).items()}
    h = explicit_hessian(loss_of, params)
    lam = 2.0 * max(1.0, -torch.linalg.eigvalsh(h).min().item())  # I + H/lam positive definite
    a = torch.eye(h.shape[0], dtype=torch.float64) + h / lam
    v = random_like(params)
    matvec = lambda u: {k: u[k] + w / lam for k, w in hvp(loss_of, params, u).items()}  # noqa: E731
    exact = torch.linalg.solve(a, flatten(v))
    x, iters, residual = conjugate_gradient(matvec, v, max_iters=3 * h.shape[0], tol=1e-11)
    torch.testing.assert_close(flatten(x), exact, rtol=1e-8, atol=1e-9)
    assert residual <= 1e-11
    # and its residual falls with the iterations
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CGNotConvergedWarning)
        residuals = [conjugate_gradient(matvec, v, max_iters=k, tol=1e-14)[2] for k in (1, 4, 16)]
    assert residuals[0] > residuals[1] > residuals[2]


# ---------------------------------------------------------------------------------------------
# Implicit meta-gradients against closed forms and unrolled differentiation

def linear_tasks(tasks=3, dim=4, shots=6, queries=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(tasks, dim, 1, generator=g, dtype=torch.float64)
    sx = torch.randn(tasks, shots, dim, generator=g, dtype=torch.float64)
    qx = torch.randn(tasks, queries, dim, generator=g, dtype=torch.float64)
    noise = lambda *s: 0.1 * torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return TaskBatch(sx, sx @ w + noise(tasks, shots, 1), qx, qx @ w + noise(tasks, queries, 1))


def linear_model(dim=4, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(dim, 1).double()


def closed_form_meta_gradient(model, batch, lam):
    """Proximal least squares: Alg*(theta) = (H + lam I)^-1 (2/n Z^T y + lam theta), H = 2/n Z^T Z,
    d Alg*/d theta = lam (H + lam I)^-1 = (I + H/lam)^-1, gradient = (dAlg*/dtheta)^T grad L_test."""
    theta = torch.cat([model.weight.detach().flatten(), model.bias.detach()])
    total = torch.zeros_like(theta)
    eye = torch.eye(theta.numel(), dtype=torch.float64)
    for sx, sy, qx, qy in zip(*batch):
        z = torch.cat([sx, torch.ones(len(sx), 1, dtype=torch.float64)], 1)
        h = 2.0 / len(sx) * z.T @ z
        phi = torch.linalg.solve(h + lam * eye, 2.0 / len(sx) * z.T @ sy[:, 0] + lam * theta)
        zq = torch.cat([qx, torch.ones(len(qx), 1, dtype=torch.float64)], 1)
        grad_test = 2.0 / len(qx) * zq.T @ (zq @ phi - qy[:, 0])
        total += torch.linalg.solve(eye + h / lam, grad_test)  # (I + H/lam) is symmetric
    return total / batch.num_tasks


def flat_grad(grads, model):
    return torch.cat([grads[n].flatten() for n, _ in model.named_parameters()])


@pytest.mark.parametrize("solver", ["gd", "newton_cg"])
def test_implicit_meta_gradient_equals_closed_form_on_proximal_linear_regression(solver):
    model, batch, lam = linear_model(), linear_tasks(), 0.7
    steps = 400 if solver == "gd" else 2
    alg = IMAML(model, squared_error, lam=lam, inner_solver=solver, inner_steps=steps, cg_steps=20,
                inner_lr=0.1, cg_tol=1e-12, newton_cg_steps=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CGNotConvergedWarning)  # the solves must reach tolerance here
        loss, grads = alg.meta_gradient(batch)
    assert set(grads) == {n for n, _ in model.named_parameters()}
    torch.testing.assert_close(flat_grad(grads, model), closed_form_meta_gradient(model, batch, lam),
                               rtol=1e-8, atol=1e-10)
    assert loss.ndim == 0 and torch.isfinite(loss)


def unrolled_proximal_maml_gradient(model, batch, lam, inner_lr, steps):
    """MAML differentiated through ``steps`` GD steps on L_tr(phi) + lam/2 ||phi - theta||^2 (theta live)."""
    names, theta = zip(*model.named_parameters())
    total = 0.0
    for sx, sy, qx, qy in zip(*batch):
        phi = list(theta)
        for _ in range(steps):
            loss = squared_error(functional_call(model, dict(zip(names, phi)), (sx,)), sy)
            grads = torch.autograd.grad(loss, phi, create_graph=True)
            phi = [p - inner_lr * (g + lam * (p - t)) for p, g, t in zip(phi, grads, theta)]
        total = total + squared_error(functional_call(model, dict(zip(names, phi)), (qx,)), qy)
    grads = torch.autograd.grad(total / batch.num_tasks, theta)
    return torch.cat([g.flatten() for g in grads])


def test_imaml_with_exact_inner_solve_equals_maml_unrolled_to_convergence():
    model, batch, lam, alpha = linear_model(), linear_tasks(tasks=2), 1.5, 0.1
    unrolled = unrolled_proximal_maml_gradient(model, batch, lam, alpha, steps=300)
    # far from convergence the unrolled gradient is a different number: the check below has teeth
    early = unrolled_proximal_maml_gradient(model, batch, lam, alpha, steps=2)
    assert (early - unrolled).abs().max() > 1e-3
    alg = IMAML(model, squared_error, lam=lam, inner_solver="newton_cg", inner_steps=3, cg_steps=10,
                cg_tol=1e-13, newton_cg_steps=10)
    _, grads = alg.meta_gradient(batch)
    torch.testing.assert_close(flat_grad(grads, model), unrolled, rtol=1e-8, atol=1e-10)


def test_implicit_meta_gradient_matches_finite_differences_on_a_small_net():
    """A nonlinear net: the meta-objective F(theta) = L_test(Alg*(theta)), Alg* solved to high accuracy."""
    model, batch, lam = small_mlp(), sinusoid_batch(tasks=1), 20.0  # lam large: G strongly convex
    alg = IMAML(model, squared_error, lam=lam, inner_solver="newton_cg", inner_steps=8, cg_steps=200,
                cg_tol=1e-12, newton_cg_steps=100)
    _, grads = alg.meta_gradient(batch)
    grad = flat_grad(grads, model)
    theta = flatten({n: p.detach() for n, p in model.named_parameters()})
    like = {n: p.detach() for n, p in model.named_parameters()}

    def meta_objective(flat):
        phi = alg.adapt(batch.support_x[0], batch.support_y[0], as_dict(flat, like))
        return squared_error(functional_call(model, phi, (batch.query_x[0],)), batch.query_y[0]).item()

    eps = 1e-5
    for seed in range(2):
        d = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        fd = (meta_objective(theta + eps * d) - meta_objective(theta - eps * d)) / (2 * eps)
        assert abs(fd - grad @ d) <= 1e-6 * max(1.0, abs(fd)), (fd, (grad @ d).item())


# ---------------------------------------------------------------------------------------------
# The algorithm object: memory, warnings, bad input, the shared training and evaluation

def test_inner_solve_keeps_no_graph():
    model, batch = small_mlp(), sinusoid_batch(1)
    for solver in ("gd", "newton_cg"):
        alg = IMAML(model, squared_error, lam=2.0, inner_solver=solver, inner_steps=3, inner_lr=0.05)
        phi = alg.adapt(batch.support_x[0], batch.support_y[0])
        assert all(v.grad_fn is None and not v.requires_grad for v in phi.values())
        support = lambda p: squared_error(functional_call(model, p, (batch.support_x[0],)), batch.support_y[0])  # noqa: E731
        assert support(phi) < support(dict(model.named_parameters()))  # it did adapt


def test_meta_gradient_warns_when_cg_does_not_reach_tolerance():
    model, batch = small_mlp(), sinusoid_batch(2)
    alg = IMAML(model, squared_error, lam=2.0, inner_steps=2, cg_steps=1, inner_lr=0.05, cg_tol=1e-12)
    with pytest.warns(CGNotConvergedWarning, match="worst relative residual"):
        alg.meta_gradient(batch)
    assert len(alg.last_cg["residuals"]) == 2 and max(alg.last_cg["residuals"]) > 1e-12


@pytest.mark.parametrize("kwargs,match", [
    (dict(lam=0.0), "lam=0.0"),
    (dict(lam=-1.0), "lam=-1.0"),
    (dict(cg_steps=0), "cg_steps=0"),
    (dict(inner_steps=0), "inner_steps=0"),
    (dict(inner_solver="adam"), "inner_solver='adam'.*'gd', 'newton_cg'"),
    (dict(inner_lr=None), "inner_lr is required"),
    (dict(inner_lr=0.0), "inner_lr=0.0"),
    (dict(hvp_method="finite_differences"), "hvp_method='finite_differences'"),
    (dict(cg_tol=0.0), "cg_tol=0.0"),
])
def test_bad_input(kwargs, match):
    args = dict(lam=2.0, inner_solver="gd", inner_steps=2, cg_steps=2, inner_lr=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        IMAML(small_mlp(), squared_error, **args)


class SharedLinearTasks:
    """Linear-regression tasks whose weights scatter around one shared w0: theta should move to w0."""

    def __init__(self, dim=3, shots=5, queries=10):
        self.w0 = torch.linspace(-2.0, 2.0, dim).view(dim, 1)
        self.dim, self.shots, self.queries = dim, shots, queries

    def sample(self, n, generator=None):
        w = self.w0 + 0.1 * torch.randn(n, self.dim, 1, generator=generator)
        sx = torch.randn(n, self.shots, self.dim, generator=generator)
        qx = torch.randn(n, self.queries, self.dim, generator=generator)
        return TaskBatch(sx, sx @ w, qx, qx @ w)


def test_trains_and_evaluates_with_the_shared_routines():
    torch.manual_seed(0)
    sampler = SharedLinearTasks()
    alg = IMAML(nn.Linear(3, 1), F.mse_loss, lam=1.0, inner_steps=5, cg_steps=4, inner_lr=0.1, cg_tol=1e-3)
    before = evaluate(alg, sampler, num_tasks=50)
    history = meta_train(alg, sampler, iterations=150, meta_batch=4, outer_lr=0.05, progress=False)
    assert len(history["loss"]) == 150 and all(torch.isfinite(torch.tensor(history["loss"])))
    after = evaluate(alg, sampler, num_tasks=50)
    assert after["metric"] == "mse" and after["mean"] < 0.2 * before["mean"], (before["mean"], after["mean"])
    torch.testing.assert_close(alg.model.weight.detach().flatten(), sampler.w0.flatten(), atol=0.2, rtol=0)
    assert not alg.vectorised  # per-task loop (data-dependent control flow in CG)


def test_predict_on_convnet_matches_manual_adaptation():
    model = small_convnet()
    x, y = image_task()
    batch = TaskBatch(x[None], y[None], x[None], y[None])
    alg = IMAML(model, F.cross_entropy, lam=2.0, inner_steps=3, inner_lr=0.1)
    with torch.no_grad():
        out = alg.predict(batch)
    phi = alg.adapt(x, y)
    torch.testing.assert_close(out[0], functional_call(model, phi, (x,)))


def _build_and_die(spec, device):
    import os
    os._exit(3)  # a worker that dies without reporting (as if killed)


def test_profiling_reports_a_dead_worker_instead_of_hanging():
    from mlcourse.profiling import measure

    with pytest.raises(RuntimeError, match="exit code 3"):
        measure({}, device="cpu", repeats=1, builder=_build_and_die)
