"""MAML's meta-gradient: finite differences, an independent loop, vmap vs loop, first order."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mlcourse.algorithms import MAML
from mlcourse.nn import MLP, BatchNorm, ConvNet
from mlcourse.tasks import Sinusoid, TaskBatch
from _helpers import flat_params, image_batch, set_flat


def sinusoid_batch(tasks=3, shots=5, seed=0):
    batch = Sinusoid(shots, 7).sample(tasks, generator=torch.Generator().manual_seed(seed))
    return TaskBatch(*(t.double() for t in batch))


def small_mlp(seed=0):
    torch.manual_seed(seed)
    return MLP([1, 8, 8, 1]).double()


def small_convnet(seed=0, batch_norm=BatchNorm):
    torch.manual_seed(seed)
    return ConvNet(ways=3, hidden=4, blocks=2, batch_norm=batch_norm).double()


def meta_grad(alg, batch):
    alg.model.zero_grad()
    alg.meta_loss(batch).backward()
    return torch.cat([p.grad.flatten() for p in alg.model.parameters()])


def finite_difference_directional(alg, batch, direction, eps=1e-6):
    base = flat_params(alg.model)
    values = []
    for sign in (+1, -1):
        set_flat(alg.model, base + sign * eps * direction)
        with torch.no_grad():
            pass
        values.append(alg.meta_loss(batch).item())
    set_flat(alg.model, base)
    return (values[0] - values[1]) / (2 * eps)


CASES = [
    ("mlp", small_mlp, sinusoid_batch, F.mse_loss, 0.05),
    ("convnet", small_convnet, image_batch, F.cross_entropy, 0.1),
]


@pytest.mark.parametrize("name,make_model,make_batch,loss_fn,inner_lr", CASES)
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_finite_differences(name, make_model, make_batch, loss_fn, inner_lr, first_order):
    alg = MAML(make_model(), loss_fn, inner_lr=inner_lr, inner_steps=2, first_order=first_order)
    batch = make_batch()
    grad = meta_grad(alg, batch)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(grad.numel(), generator=g, dtype=torch.float64)
        fd = finite_difference_directional(alg, batch, v)
        if first_order:
            # FOMAML is not the gradient of the meta-loss: it must differ from finite differences
            # (this is what makes the second-order check below meaningful).
            continue
        assert abs(fd - grad @ v) <= 1e-6 * max(1.0, abs(fd)), (fd, (grad @ v).item())
    if first_order:
        assert abs(fd - grad @ v) > 1e-6


def independent_maml_gradient(model, loss_fn, inner_lr, inner_steps, batch, first_order=False):
    """A plain loop over tasks with torch.autograd.grad: no vmap, no mlcourse helpers."""
    names = [n for n, _ in model.named_parameters()]
    theta = [p for _, p in model.named_parameters()]
    total = 0
    for i in range(batch.num_tasks):
        phi = list(theta)
        for _ in range(inner_steps):
            out = functional_call(model, dict(zip(names, phi)), (batch.support_x[i],))
            grads = torch.autograd.grad(loss_fn(out, batch.support_y[i]), phi, create_graph=not first_order)
            phi = [w - inner_lr * g for w, g in zip(phi, grads)]
        out = functional_call(model, dict(zip(names, phi)), (batch.query_x[i],))
        total = total + loss_fn(out, batch.query_y[i])
    grads = torch.autograd.grad(total / batch.num_tasks, theta)
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("name,make_model,make_batch,loss_fn,inner_lr", CASES)
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("vectorise", [True, False])
def test_meta_gradient_matches_independent_loop(name, make_model, make_batch, loss_fn, inner_lr, first_order, vectorise):
    model = make_model()
    batch = make_batch()
    alg = MAML(model, loss_fn, inner_lr=inner_lr, inner_steps=3, first_order=first_order, vectorise=vectorise)
    expected = independent_maml_gradient(model, loss_fn, inner_lr, 3, batch, first_order)
    torch.testing.assert_close(meta_grad(alg, batch), expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name,make_model,make_batch,loss_fn,inner_lr", CASES)
@pytest.mark.parametrize("first_order", [False, True])
def test_vectorised_path_equals_per_task_path(name, make_model, make_batch, loss_fn, inner_lr, first_order):
    batch = make_batch()
    model = make_model()
    vec = MAML(model, loss_fn, inner_lr, 2, first_order, vectorise=True)
    loop = MAML(copy.deepcopy(model), loss_fn, inner_lr, 2, first_order, vectorise=False)
    assert vec.vectorised and not loop.vectorised
    torch.testing.assert_close(vec.meta_loss(batch), loop.meta_loss(batch), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(meta_grad(vec, batch), meta_grad(loop, batch), rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(vec.predict(batch, inner_steps=4), loop.predict(batch, inner_steps=4))


def test_first_order_equals_dropping_the_hessian_term():
    """One inner step: grad_MAML = (I - alpha H(theta)) g(phi) and grad_FOMAML = g(phi), per task."""
    model, batch, alpha = small_mlp(), sinusoid_batch(tasks=2), 0.05
    second = meta_grad(MAML(model, F.mse_loss, alpha, 1), batch)
    first = meta_grad(MAML(model, F.mse_loss, alpha, 1, first_order=True), batch)
    names = [n for n, _ in model.named_parameters()]
    theta = [p for _, p in model.named_parameters()]
    hessian_term = 0
    for i in range(batch.num_tasks):
        support = F.mse_loss(functional_call(model, dict(zip(names, theta)), (batch.support_x[i],)), batch.support_y[i])
        g_s = torch.autograd.grad(support, theta, create_graph=True)
        phi = [w - alpha * g for w, g in zip(theta, g_s)]
        query = F.mse_loss(functional_call(model, dict(zip(names, phi)), (batch.query_x[i],)), batch.query_y[i])
        g_q = torch.autograd.grad(query, phi, retain_graph=True)
        # H(theta) g_q: a Hessian-vector product by double backward of the support loss.
        hvp = torch.autograd.grad(g_s, theta, grad_outputs=[g.detach() for g in g_q])
        hessian_term = hessian_term + torch.cat([h.flatten() for h in hvp]) / batch.num_tasks
    torch.testing.assert_close(second, first - alpha * hessian_term, rtol=1e-9, atol=1e-12)
    assert (second - first).abs().max() > 1e-6  # the term is not negligible here


def test_own_batchnorm_equals_torch_batchnorm_in_training_mode():
    x = torch.randn(6, 5, 4, 4, dtype=torch.float64)
    ours = BatchNorm(5).double()
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-1, 1)
    expected = F.batch_norm(x, None, None, ours.weight, ours.bias, training=True, eps=ours.eps)
    torch.testing.assert_close(ours(x), expected)


def test_torch_batchnorm_model_takes_exact_per_task_path():
    """A user's model with nn.BatchNorm2d: 'auto' takes the loop, and its gradient is exact."""
    torch_bn = small_convnet(batch_norm=nn.BatchNorm2d)
    ours = small_convnet(batch_norm=BatchNorm)
    ours.load_state_dict({k: v for k, v in torch_bn.state_dict().items() if k in ours.state_dict()})
    batch = image_batch()
    alg_torch = MAML(torch_bn, F.cross_entropy, 0.1, 2)
    alg_ours = MAML(ours, F.cross_entropy, 0.1, 2, vectorise=True)
    assert not alg_torch.vectorised and alg_ours.vectorised
    torch.testing.assert_close(meta_grad(alg_torch, batch), meta_grad(alg_ours, batch), rtol=1e-9, atol=1e-12)
    grad = meta_grad(alg_torch, batch)
    v = torch.randn(grad.numel(), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    fd = finite_difference_directional(alg_torch, batch, v)
    assert abs(fd - grad @ v) <= 1e-6 * max(1.0, abs(fd))


def test_auto_policy():
    """vmap for MLPs; the loop for torch batch norm, and for convolutions on the CPU."""
    assert MAML(small_mlp(), F.mse_loss, 0.1).vectorised
    assert not MAML(small_convnet(batch_norm=nn.BatchNorm2d), F.cross_entropy, 0.1).vectorised
    assert not MAML(small_convnet(), F.cross_entropy, 0.1).vectorised  # the model is on the CPU
    from mlcourse.functional import choose_vectorised
    assert choose_vectorised(small_convnet(), "auto", device="cuda")
    assert not choose_vectorised(small_convnet(batch_norm=nn.BatchNorm2d), "auto", device="cuda")


def test_vmap_refused_for_torch_batchnorm():
    with pytest.raises(ValueError, match="BatchNorm"):
        MAML(small_convnet(batch_norm=nn.BatchNorm2d), F.cross_entropy, 0.1, 1, vectorise=True)


def test_adapt_reduces_support_loss_and_keeps_theta():
    alg = MAML(small_mlp(), F.mse_loss, inner_lr=0.01, inner_steps=5)
    batch = sinusoid_batch(tasks=1)
    theta = {k: v.detach().clone() for k, v in alg.meta_parameters().items()}
    phi = alg.adapt(batch.support_x[0], batch.support_y[0])
    before = alg.support_loss(alg.meta_parameters(), batch.support_x[0], batch.support_y[0])
    after = alg.support_loss(phi, batch.support_x[0], batch.support_y[0])
    assert after < before
    for k, v in alg.meta_parameters().items():
        assert torch.equal(v, theta[k])


@pytest.mark.parametrize("kwargs,match", [
    (dict(inner_lr=-0.1), "inner_lr=-0.1"),
    (dict(inner_lr=0.0), "inner_lr=0.0"),
    (dict(inner_lr=0.1, inner_steps=0), "inner_steps=0"),
    (dict(inner_lr=0.1, vectorise="sometimes"), "vectorise='sometimes'"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MAML(small_mlp(), F.mse_loss, **kwargs)


def test_torch_batchnorm_under_vmap_is_still_inexact_upstream():
    """Why the per-task path exists: pins the upstream bug (functorch issue 534).

    If this starts failing, PyTorch has fixed second-order batch norm under vmap, and
    ``choose_vectorised`` could allow vmap for ``nn.BatchNorm2d`` models.
    """
    model = small_convnet(batch_norm=nn.BatchNorm2d)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # no running stats: only the gradient bug remains
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    batch = image_batch()
    alg = MAML(model, F.cross_entropy, 0.1, 2)
    exact = meta_grad(alg, batch)
    alg.vectorised = True  # bypass the guard on purpose
    under_vmap = meta_grad(alg, batch)
    assert (under_vmap - exact).norm() / exact.norm() > 1e-6, "upstream fixed: see docstring"
