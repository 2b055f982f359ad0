"""iMAML's positive-definite curvature (Gauss-Newton products, a larger CG lambda) and
validation-based checkpoint selection in meta_train."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import hessian, jacobian

from mlcourse.algorithms.imaml import IMAML
from mlcourse.functional import flatten, forward, unflatten
from mlcourse.implicit import explicit_hessian, gauss_newton_operator
from mlcourse.nn import MLP
from mlcourse.tasks import Sinusoid, TaskBatch
from mlcourse.train import evaluate, meta_train
from _helpers import image_task, small_convnet  # noqa: E402


def dense_gauss_newton(model, params, x, loss_of_output):
    """J^T H_out J from the dense Jacobian of the outputs and the dense Hessian in the outputs."""
    flat = flatten(params)
    out = forward(model, params, x).detach()
    jac = jacobian(lambda f: forward(model, unflatten(f, params), x).flatten(), flat)
    h_out = hessian(lambda o: loss_of_output(o.view(out.shape)), out.flatten())
    return jac.T @ h_out @ jac


@pytest.mark.parametrize("kind", ["convnet_cross_entropy", "mlp_squared_error"])
def test_gauss_newton_products_equal_the_dense_matrix(kind):
    if kind == "convnet_cross_entropy":
        model = small_convnet()
        x, y = image_task()
        loss_of_output = lambda out: F.cross_entropy(out, y)  # noqa: E731
    else:
        torch.manual_seed(0)
        model = MLP([1, 6, 6, 1]).double()
        x = torch.linspace(-3, 3, 9, dtype=torch.float64).view(-1, 1)
        y = torch.sin(x)
        loss_of_output = lambda out: ((out - y) ** 2).mean()  # noqa: E731
    params = {k: v.detach() for k, v in model.named_parameters()}
    dense = dense_gauss_newton(model, params, x, loss_of_output)
    product = gauss_newton_operator(lambda p: forward(model, p, x), loss_of_output, params)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        u = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}
        torch.testing.assert_close(flatten(product(u)), dense @ flatten(u), rtol=1e-9, atol=1e-11)


def test_gauss_newton_is_positive_semidefinite_where_the_hessian_is_not():
    model = small_convnet()
    x, y = image_task()
    params = {k: v.detach() for k, v in model.named_parameters()}
    loss_of_output = lambda out: F.cross_entropy(out, y)  # noqa: E731
    h = explicit_hessian(lambda p: loss_of_output(forward(model, p, x)), params)
    gn = dense_gauss_newton(model, params, x, loss_of_output)
    assert torch.linalg.eigvalsh(h).min() < -1e-4  # the conv net's loss is not convex here
    assert torch.linalg.eigvalsh(gn).min() > -1e-10 * torch.linalg.eigvalsh(gn).max()


@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
def test_meta_gradient_equals_dense_solve_with_curvature_and_cg_lam(curvature):
    model = small_convnet()
    tasks = [image_task(seed=s) for s in range(2)]
    batch = TaskBatch(torch.stack([t[0] for t in tasks]), torch.stack([t[1] for t in tasks]),
                      torch.stack([t[0].flip(-1) for t in tasks]), torch.stack([t[1] for t in tasks]))
    cg_lam = 12.0
    alg = IMAML(model, F.cross_entropy, lam=2.0, inner_steps=3, inner_lr=0.1, cg_steps=200,
                cg_tol=1e-12, curvature=curvature, cg_lam=cg_lam)
    _, grads = alg.meta_gradient(batch)
    theta = alg.meta_parameters()
    expected = 0.0
    for sx, sy, qx, qy in zip(*batch):
        phi = alg.adapt(sx, sy, theta)
        loss_of_output = lambda out: F.cross_entropy(out, sy)  # noqa: E731
        if curvature == "hessian":
            c = explicit_hessian(lambda p: loss_of_output(forward(model, p, sx)), phi)
        else:
            c = dense_gauss_newton(model, phi, sx, loss_of_output)
        leaves = {k: v.detach().requires_grad_() for k, v in phi.items()}
        v = torch.autograd.grad(F.cross_entropy(forward(model, leaves, qx), qy), list(leaves.values()))
        a = torch.eye(c.shape[0], dtype=c.dtype) + c / cg_lam
        expected = expected + torch.linalg.solve(a, torch.cat([t.flatten() for t in v]))
    got = torch.cat([grads[k].flatten() for k, _ in model.named_parameters()])
    torch.testing.assert_close(got, expected / 2, rtol=1e-7, atol=1e-10)
    assert max(alg.last_cg["residuals"]) < 1e-10


def test_on_a_linear_model_gauss_newton_is_the_hessian():
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    x = torch.randn(7, 3, dtype=torch.float64)
    y = torch.randn(7, 1, dtype=torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    loss_of_output = lambda out: ((out - y) ** 2).mean()  # noqa: E731
    h = explicit_hessian(lambda p: loss_of_output(forward(model, p, x)), params)
    torch.testing.assert_close(dense_gauss_newton(model, params, x, loss_of_output), h)


@pytest.mark.parametrize("kwargs, match", [
    (dict(curvature="fisher"), "curvature='fisher'.*'hessian', 'gauss_newton'"),
    (dict(cg_lam=0.0), "cg_lam=0.0"),
    (dict(cg_lam=-3.0), "cg_lam=-3.0"),
])
def test_bad_curvature_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IMAML(small_convnet(), F.cross_entropy, lam=2.0, inner_lr=0.1, **kwargs)


# ---------------------------------------------------------------------------------------------
# Validation-based checkpoint selection

def sinusoid_setup(seed=0):
    torch.manual_seed(seed)
    from mlcourse.algorithms import MAML

    return MAML(MLP([1, 20, 20, 1]), F.mse_loss, inner_lr=0.01, inner_steps=1), Sinusoid(5, 5)


def test_best_val_selection_leaves_the_best_validated_parameters(tmp_path):
    alg, sampler = sinusoid_setup()
    history = meta_train(alg, sampler, iterations=40, meta_batch=4, outer_lr=0.01, val_sampler=sampler,
                         val_every=5, val_tasks=20, progress=False, select="best_val",
                         checkpoint=tmp_path / "run.pt", checkpoint_every=10)
    best = min(history["val_mean"])  # mse: lower is better
    assert history["selected_val"] == best
    assert history["selected_iteration"] == history["val_iteration"][history["val_mean"].index(best)]
    # the parameters left in the algorithm score exactly the recorded validation value
    again = evaluate(alg, sampler, num_tasks=20)
    assert again["mean"] == pytest.approx(best, rel=1e-6)
    state = torch.load(tmp_path / "run.pt", weights_only=False)
    assert state["best"]["iteration"] == history["selected_iteration"]


def test_best_val_selection_survives_a_resume(tmp_path):
    alg, sampler = sinusoid_setup()
    kwargs = dict(meta_batch=4, outer_lr=0.01, val_sampler=sampler, val_every=5, val_tasks=20,
                  progress=False, select="best_val", checkpoint=tmp_path / "run.pt", checkpoint_every=5)
    whole = meta_train(alg, sampler, iterations=30, **kwargs)
    alg2, _ = sinusoid_setup()
    meta_train(alg2, sampler, iterations=15, **{**kwargs, "checkpoint": tmp_path / "part.pt"})
    alg3, _ = sinusoid_setup()
    resumed = meta_train(alg3, sampler, iterations=30, **{**kwargs, "checkpoint": tmp_path / "part.pt"})
    assert resumed["selected_iteration"] == whole["selected_iteration"]
    for (k, a), b in zip(alg.state_dict().items(), alg3.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_best_val_selection_needs_validation():
    alg, sampler = sinusoid_setup()
    with pytest.raises(ValueError, match="select='best_val' needs validation"):
        meta_train(alg, sampler, iterations=2, meta_batch=2, select="best_val", progress=False)
    with pytest.raises(ValueError, match="select='best'.*'last', 'best_val'"):
        meta_train(alg, sampler, iterations=2, meta_batch=2, select="best", progress=False)


def test_gauss_newton_steps_lower_the_proximal_loss_every_step():
    model = small_convnet()
    sx, sy = image_task()
    alg = IMAML(model, F.cross_entropy, lam=2.0, inner_solver="newton_cg", inner_steps=1,
                curvature="gauss_newton")
    theta = alg.meta_parameters()
    prox = alg.proximal_loss(theta, sx, sy)
    values, phi = [prox(theta).item()], theta
    for _ in range(4):
        phi = _one_gauss_newton_step(alg, theta, phi, sx, sy)
        values.append(prox(phi).item())
    assert all(b <= a for a, b in zip(values, values[1:])) and values[-1] < 0.97 * values[0], values


def _one_gauss_newton_step(alg, theta, phi, sx, sy):
    """One step of the HF solver on G(., theta) from phi (inner_update always starts at theta)."""
    from mlcourse.functional import axpy
    from mlcourse.implicit import newton_cg_step

    def curvature(point):
        gn = alg.curvature_operator(point, sx, sy)
        return lambda u: axpy(alg.lam, u, gn(u))

    return newton_cg_step(alg.proximal_loss(theta, sx, sy), phi, 5, 10, curvature=curvature)


def test_extreme_eigenvalues_match_a_dense_eigendecomposition():
    from mlcourse.implicit import extreme_eigenvalues, hvp_operator

    torch.manual_seed(0)
    model = MLP([1, 6, 6, 1]).double()
    x = torch.linspace(-3, 3, 9, dtype=torch.float64).view(-1, 1)
    params = {k: v.detach() for k, v in model.named_parameters()}
    loss_of = lambda p: ((forward(model, p, x) - torch.sin(x)) ** 2).mean()  # noqa: E731
    eig = torch.linalg.eigvalsh(explicit_hessian(loss_of, params))
    low, high = extreme_eigenvalues(hvp_operator(loss_of, params), params, iterations=2000)
    assert low == pytest.approx(eig.min().item(), rel=0.05, abs=1e-3)
    assert high == pytest.approx(eig.max().item(), rel=0.01)


@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
def test_newton_damping_turns_the_newton_step_into_a_gradient_step(curvature):
    """(C + (lam + eta) I) d = -grad G: for eta much larger than C's eigenvalues the step is
    -grad G / (lam + eta), one gradient step of that size; for eta = 0 it is not."""
    model = small_convnet()
    x, y = image_task()
    theta = {k: v.detach() for k, v in model.named_parameters()}
    lam, eta = 0.5, 1e5

    def one_newton_step(damping):
        alg = IMAML(model, F.cross_entropy, lam=lam, inner_solver="newton_cg", inner_steps=1,
                    newton_cg_steps=20, curvature=curvature, newton_damping=damping)
        return flatten(alg.adapt(x, y, theta))

    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    grad = flatten(dict(zip(leaves, torch.autograd.grad(F.cross_entropy(forward(model, leaves, x), y),
                                                        list(leaves.values())))))
    gradient_step = flatten(theta) - grad / (lam + eta)
    torch.testing.assert_close(one_newton_step(eta), gradient_step, rtol=1e-6, atol=1e-9)
    undamped = one_newton_step(0.0) - flatten(theta)
    assert undamped.norm() > 10 * (gradient_step - flatten(theta)).norm()


def test_newton_damping_rejects_bad_values():
    for bad in (-1.0, float("inf"), float("nan"), "1"):
        with pytest.raises(ValueError, match="newton_damping"):
            IMAML(MLP([1, 4, 1]), F.mse_loss, lam=1.0, inner_solver="newton_cg", newton_damping=bad)


def test_newton_line_search_expands_only_while_the_loss_keeps_falling():
    """On softplus(-x) (a one-parameter cross-entropy) the Newton step from 0 is 2 and the loss keeps
    falling beyond it: three doublings give 16. On a quadratic the Newton step is exact and stays."""
    from mlcourse.implicit import newton_cg_step

    start = {"x": torch.zeros(1, dtype=torch.float64)}
    softplus = lambda p: F.softplus(-p["x"]).sum()  # noqa: E731
    assert newton_cg_step(softplus, start, cg_steps=1)["x"].item() == pytest.approx(2.0)
    assert newton_cg_step(softplus, start, cg_steps=1, max_expansions=3)["x"].item() == pytest.approx(16.0)
    quadratic = lambda p: ((p["x"] - 3.0) ** 2).sum()  # noqa: E731
    assert newton_cg_step(quadratic, start, cg_steps=1, max_expansions=3)["x"].item() == pytest.approx(3.0)


def test_the_papers_imaml_settings_do_not_inherit_the_recipe_rows_solver():
    """Chapter 5 trains 'the paper's' iMAML by overriding the recipe row with IMAML_PAPER; every
    solver setting in which the row departs from the paper must be overridden, not inherited."""
    from mlcourse import recipes

    hf = recipes.build_algorithm("imaml-hf", "omniglot", 5, **recipes.IMAML_PAPER["imaml-hf"])
    assert (hf.lam, hf.inner_steps, hf.cg_steps, hf.newton_damping, hf.newton_expansions) == (2.0, 3, 5, 0.0, 0)
    gd = recipes.build_algorithm("imaml-gd", "omniglot", 5, **recipes.IMAML_PAPER["imaml-gd"])
    assert (gd.lam, gd.inner_steps, gd.inner_lr, gd.cg_steps) == (2.0, 16, 0.1, 5)
