"""The faster paths of issue 18 compute what the plain paths compute: the explicit conv-net forward
(fused batch norm), MAML's per-task and folded meta-gradients, task threads (mlcourse/fastpath.py)."""
import functools

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mlcourse.algorithms import IMAML, MAML, Reptile
from mlcourse.algorithms.meta_sgd import MetaSGD
from mlcourse.fastpath import (batched_forward, convnet_forward, get_task_workers, has_batched_forward, is_pure,
                               per_task, run_tasks, set_task_workers, task_workers)
from mlcourse.functional import forward
from mlcourse.nn import MLP, ConvNet, PerStepBatchNorm
from mlcourse.profiling import PlainLoop
from _helpers import check_directional_finite_differences, image_batch, sinusoid_batch, small_convnet, small_mlp


def flat(grads: dict) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads.values()])


def relative(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


CONVNETS = {
    "stride": lambda: ConvNet(3, hidden=4, blocks=2),
    "max pool": lambda: ConvNet(3, hidden=4, blocks=2, pool="max"),
    "film": lambda: ConvNet(3, hidden=4, blocks=2, film=True),
    "no head": lambda: ConvNet(None, hidden=4, blocks=2),
}


@pytest.mark.parametrize("name", list(CONVNETS))
def test_convnet_forward_equals_the_module_with_first_and_second_derivatives(name):
    torch.manual_seed(0)
    model = CONVNETS[name]().double()
    assert is_pure(model)
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    if name == "film":  # FiLM's buffers come from the dict, as functional_call takes them
        params["features.2.gamma"] = torch.rand(4, dtype=torch.float64) + 0.5
        params["features.2.beta"] = torch.randn(4, dtype=torch.float64)
    x = torch.rand(6, 1, 12, 12, dtype=torch.float64)
    fast, plain = convnet_forward(model, params, x), functional_call(model, params, (x,), strict=False)
    assert torch.allclose(fast, plain, rtol=1e-12, atol=1e-12)
    # gradients and a Hessian-vector product (the second-order term of MAML) of a scalar of the output
    leaves = [p for p in params.values() if p.requires_grad]
    v = [torch.randn_like(p) for p in leaves]
    out = []
    for run in (convnet_forward(model, params, x), functional_call(model, params, (x,), strict=False)):
        g = torch.autograd.grad(run.pow(2).sum(), leaves, create_graph=True)
        hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), leaves)
        out.append(torch.cat([t.flatten() for t in (*g, *hv)]))
    assert relative(out[0], out[1]) < 1e-10
    # the explicit forward was not a no-op check: a model the fast path does not cover falls back
    assert not is_pure(ConvNet(3, hidden=4, blocks=2, batch_norm=functools.partial(PerStepBatchNorm, steps=2)))


def test_convnet_forward_under_vmap_is_the_module_formula():
    model = small_convnet()
    params = dict(model.named_parameters())
    x = torch.rand(2, 4, 1, 12, 12, dtype=torch.float64)
    fast = torch.func.vmap(lambda xi: forward(model, params, xi))(x)
    plain = torch.func.vmap(lambda xi: functional_call(model, params, (xi,)))(x)
    assert torch.equal(fast, plain)  # inside a transform: the same ops, hence the same bits


def test_forward_falls_back_to_functional_call_when_a_module_has_a_hook():
    model = small_convnet()
    seen = []
    handle = model.features[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        assert not is_pure(model)
        forward(model, dict(model.named_parameters()), torch.rand(3, 1, 12, 12, dtype=torch.float64))
    finally:
        handle.remove()
    assert seen and is_pure(model)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("workers", [1, 2])
def test_per_task_meta_gradient_of_the_conv_net(first_order, workers):
    """MAML's per-task path (in threads or not) against finite differences and an independent loop."""
    alg = MAML(small_convnet(), F.cross_entropy, inner_lr=0.1, inner_steps=2, first_order=first_order,
               vectorise=False)
    batch = image_batch(tasks=3)
    with task_workers(workers):
        if not first_order:  # FOMAML is not the meta-loss's gradient
            check_directional_finite_differences(alg, batch)
        loss, grads = alg.meta_gradient(batch)
    ref_loss, ref = PlainLoop(alg).meta_gradient(batch)
    assert relative(flat(grads), flat(ref)) < 1e-12
    assert torch.allclose(loss, ref_loss, rtol=1e-12)


@pytest.mark.parametrize("first_order", [False, True])
def test_folded_meta_gradient_of_the_mlp(first_order):
    """The vectorised path for the MLP (tasks folded into the batch dimension) against the vmap path
    (autograd of meta_loss), an independent loop and finite differences."""
    alg = MAML(small_mlp(), F.mse_loss, inner_lr=0.05, inner_steps=3, first_order=first_order, vectorise=True)
    assert has_batched_forward(alg.model)
    batch = sinusoid_batch(tasks=4)
    if not first_order:
        check_directional_finite_differences(alg, batch)
    loss, grads = alg.meta_gradient(batch)
    vmap_loss = alg.meta_loss(batch)
    vmap_grads = torch.autograd.grad(vmap_loss, list(alg.model.parameters()))
    assert relative(flat(grads), torch.cat([g.flatten() for g in vmap_grads])) < 1e-12
    assert relative(flat(grads), flat(PlainLoop(alg).meta_gradient(batch)[1])) < 1e-12
    assert torch.allclose(loss, vmap_loss.detach(), rtol=1e-12)


def test_folded_meta_gradient_with_per_parameter_step_sizes():
    """Meta-SGD inherits MAML's objective, so it takes the folded path: alpha gets its gradient too."""
    torch.manual_seed(0)
    alg = MetaSGD(small_mlp(), F.mse_loss, init_inner_lr=(0.01, 0.1), inner_steps=2, vectorise=True)
    grads = check_directional_finite_differences(alg, sinusoid_batch(tasks=3))
    assert any(k.startswith("alpha/") for k in grads)


def test_batched_forward_is_the_model_per_task():
    model = small_mlp()
    params = {k: v + 0.1 * torch.randn_like(v) for k, v in per_task(dict(model.named_parameters()), 3).items()}
    x = torch.rand(3, 5, 1, dtype=torch.float64)
    out = batched_forward(model, params, x)
    for i in range(3):
        own = functional_call(model, {k: v[i] for k, v in params.items()}, (x[i],))
        assert torch.allclose(out[i], own, rtol=1e-13, atol=1e-13)
    with pytest.raises(TypeError):
        batched_forward(MLP([1, 4, 1], film=True).double(), params, x)


@pytest.mark.filterwarnings("ignore::mlcourse.implicit.CGNotConvergedWarning")  # 3 CG steps: the same either way
def test_reptile_and_imaml_give_the_same_update_in_task_threads():
    batch = image_batch(tasks=3)
    for make in (lambda m: Reptile(m, F.cross_entropy, inner_lr=0.05, inner_steps=3, inner_optimizer="adam"),
                 lambda m: IMAML(m, F.cross_entropy, lam=2.0, inner_steps=3, cg_steps=3, inner_lr=0.05)):
        results = []
        for workers in (1, 2):
            alg = make(small_convnet())
            with task_workers(workers):
                loss, direction = alg.meta_gradient(batch)
            results.append((loss, flat(direction)))
        assert relative(results[1][1], results[0][1]) < 1e-12
        assert torch.allclose(results[1][0], results[0][0], rtol=1e-12)


def test_task_threads_setting_and_thread_count():
    assert get_task_workers() == 1
    with pytest.raises(ValueError, match="workers=0 is out of range"):
        set_task_workers(0)
    before = torch.get_num_threads()
    with task_workers(2):
        assert get_task_workers() == 2
        seen = run_tasks(lambda i: (i, torch.is_grad_enabled()), 5, 2)
    assert seen == [(i, True) for i in range(5)]  # task order kept, grad mode carried into the threads
    assert get_task_workers() == 1 and torch.get_num_threads() == before
    with torch.no_grad():
        assert run_tasks(lambda i: torch.is_grad_enabled(), 3, 2) == [False] * 3
