"""Meta-SGD: a constant alpha is MAML, one step by hand, finite differences for theta and alpha, resume."""
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import mlcourse
from mlcourse import recipes
from mlcourse.algorithms import MAML, MetaSGD
from mlcourse.tasks import Sinusoid
from _helpers import check_directional_finite_differences, image_batch, model_grads, sinusoid_batch, small_convnet, small_mlp

HAVE_OMNIGLOT = bool(os.environ.get("MLCOURSE_DATA"))


CASES = [("mlp", small_mlp, sinusoid_batch, F.mse_loss, 0.05),
         ("convnet", small_convnet, image_batch, F.cross_entropy, 0.1)]


@pytest.mark.parametrize("name,make_model,make_batch,loss_fn,inner_lr", CASES)
@pytest.mark.parametrize("vectorise", [True, False])
@pytest.mark.parametrize("steps", [1, 2])
def test_constant_alpha_is_maml(name, make_model, make_batch, loss_fn, inner_lr, vectorise, steps):
    batch = make_batch()
    maml = MAML(make_model(), loss_fn, inner_lr, steps, vectorise=vectorise)
    meta_sgd = MetaSGD(make_model(), loss_fn, init_inner_lr=inner_lr, inner_steps=steps, vectorise=vectorise)
    torch.testing.assert_close(meta_sgd.meta_loss(batch), maml.meta_loss(batch), rtol=0, atol=1e-12)
    torch.testing.assert_close(model_grads(meta_sgd, batch), model_grads(maml, batch), rtol=0, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(meta_sgd.predict(batch, 3), maml.predict(batch, 3), rtol=0, atol=1e-12)


def test_alpha_is_as_large_as_theta_and_drawn_from_its_range():
    torch.manual_seed(0)
    alg = MetaSGD(small_convnet(), F.cross_entropy, init_inner_lr=[0.005, 0.1])
    named = dict(alg.named_parameters())
    for k, theta in alg.model.named_parameters():
        alpha = named[f"alpha/{k}"]
        assert alpha.shape == theta.shape and alpha.dtype == theta.dtype
        assert alpha.min() >= 0.005 and alpha.max() <= 0.1
    every = torch.cat([v.flatten() for v in alg.alpha.values()])
    assert every.std() > 0.01  # drawn, not constant
    assert set(named) == {k for k, _ in alg.model.named_parameters()} | {f"alpha/{k}" for k in alg.alpha}


def test_one_step_by_hand():
    """phi = theta - alpha ∘ grad L^tr(theta), with a different alpha for every element."""
    torch.manual_seed(0)
    model = small_mlp()
    alg = MetaSGD(model, F.mse_loss, init_inner_lr=[0.01, 0.2])
    batch = sinusoid_batch(tasks=1)
    theta = dict(model.named_parameters())
    loss = F.mse_loss(functional_call(model, theta, (batch.support_x[0],)), batch.support_y[0])
    grads = torch.autograd.grad(loss, list(theta.values()))
    phi = alg.adapt(batch.support_x[0], batch.support_y[0])
    for (k, t), g in zip(theta.items(), grads):
        torch.testing.assert_close(phi[k], t - alg.alpha[k] * g, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name,make_model,make_batch,loss_fn,inner_lr", CASES)
def test_meta_gradient_matches_finite_differences(name, make_model, make_batch, loss_fn, inner_lr):
    """theta and alpha together (alpha spread, so its entries differ), one and two inner steps."""
    torch.manual_seed(0)
    alg = MetaSGD(make_model(), loss_fn, init_inner_lr=[inner_lr / 2, inner_lr * 1.5], inner_steps=2)
    grads = check_directional_finite_differences(alg, make_batch())
    named = alg.named_parameters()
    alpha_part = torch.cat([grads[k].flatten() for k, _ in named if k.startswith("alpha/")])
    assert alpha_part.abs().max() > 1e-6  # alpha is learned, and the check above covered it


def test_checkpoint_resume_continues_identically(tmp_path):
    sampler = Sinusoid(5, 5)

    def make(seed=0):
        torch.manual_seed(seed)
        return MetaSGD(small_mlp().float(), F.mse_loss)

    straight = make()
    h1 = mlcourse.meta_train(straight, sampler, iterations=6, meta_batch=3, progress=False, device="cpu")
    ckpt = tmp_path / "run.pt"
    mlcourse.meta_train(make(), sampler, iterations=3, meta_batch=3, checkpoint=ckpt, progress=False, device="cpu")
    resumed = make(seed=99)
    h2 = mlcourse.meta_train(resumed, sampler, iterations=6, meta_batch=3, checkpoint=ckpt, progress=False,
                             device="cpu")
    assert h2["loss"] == h1["loss"]
    for (k, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), k
    assert not torch.equal(resumed.alpha["0.weight"], make().alpha["0.weight"])  # alpha was trained


@pytest.mark.parametrize("value", [0.0, -0.1, [0.1, 0.01], [0.0, 0.1], [0.1], "0.1", float("inf")])
def test_bad_initial_step_size(value):
    with pytest.raises(ValueError, match=r"init_inner_lr=.* is out of range: allowed a number > 0 or a pair"):
        MetaSGD(small_mlp(), F.mse_loss, init_inner_lr=value)


def test_bad_inner_steps():
    with pytest.raises(ValueError, match=r"inner_steps=0 is out of range: allowed >= 1"):
        MetaSGD(small_mlp(), F.mse_loss, inner_steps=0)


@pytest.mark.skipif(not HAVE_OMNIGLOT, reason="Omniglot archives not available (set MLCOURSE_DATA)")
@pytest.mark.parametrize("ways", [5, 20])
def test_smoke_run(ways):
    out = recipes.run("meta-sgd", "omniglot", ways, budget="smoke", device="cpu", progress=False,
                      eval_tasks=10 if ways == 20 else None)
    assert math.isfinite(out["result"]["mean"]) and 0 <= out["result"]["mean"] <= 1
    assert out["published"] == ({"mean": 99.53, "ci95": 0.26} if ways == 5 else {"mean": 95.93, "ci95": 0.38})
