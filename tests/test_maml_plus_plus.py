"""MAML++: each fix against MAML, per-step batch norm by hand, the schedules, finite differences, resume."""
import copy
import functools
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlcourse import recipes
from mlcourse.algorithms import MAML, MAMLPlusPlus, MetaLearner
from mlcourse.algorithms.maml_plus_plus import cosine_annealing_factor, multi_step_loss_weights
from mlcourse.nn import BatchNorm, ConvNet, PerStepBatchNorm, batch_norm_step, per_step_layers
from mlcourse.tasks import Sinusoid, TaskBatch
from mlcourse.train import meta_train
from _helpers import check_directional_finite_differences, image_batch, model_grads, sinusoid_batch, small_convnet, small_mlp

OFF = dict(msl=False, derivative_order_annealing=False, per_step_bn_stats=False, per_step_bn_weights=False,
           lslr=False, cosine_annealing=False)
HAVE_OMNIGLOT = bool(os.environ.get("MLCOURSE_DATA"))


CASES = [("mlp", small_mlp, sinusoid_batch, F.mse_loss, 0.05),
         ("convnet", small_convnet, image_batch, F.cross_entropy, 0.1)]


@pytest.mark.parametrize("name,make_model,make_batch,loss_fn,inner_lr", CASES)
@pytest.mark.parametrize("vectorise", [True, False])
def test_all_fixes_off_is_maml(name, make_model, make_batch, loss_fn, inner_lr, vectorise):
    batch = make_batch()
    maml = MAML(make_model(), loss_fn, inner_lr, 3, vectorise=vectorise)
    plus = MAMLPlusPlus(make_model(), loss_fn, inner_lr, 3, vectorise=vectorise, **OFF)
    assert not per_step_layers(plus.model) and [k for k, _ in plus.named_parameters()] == \
        [k for k, _ in maml.named_parameters()]
    torch.testing.assert_close(plus.meta_loss(batch), maml.meta_loss(batch), rtol=0, atol=1e-12)
    torch.testing.assert_close(model_grads(plus, batch), model_grads(maml, batch), rtol=0, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(plus.predict(batch, 4), maml.predict(batch, 4), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,make_model,make_batch,loss_fn,inner_lr", CASES)
def test_lslr_with_equal_rates_is_maml(name, make_model, make_batch, loss_fn, inner_lr):
    batch = make_batch()
    maml = MAML(make_model(), loss_fn, inner_lr, 3)
    plus = MAMLPlusPlus(make_model(), loss_fn, inner_lr, 3, **{**OFF, "lslr": True})
    rates = {k: v for k, v in plus.named_parameters() if k.startswith("inner_lr/")}
    assert set(rates) == {f"inner_lr/{k}" for k, _ in plus.model.named_parameters()}
    assert all(v.shape == (3,) and torch.all(v == inner_lr) for v in rates.values())
    torch.testing.assert_close(model_grads(plus, batch), model_grads(maml, batch), rtol=0, atol=1e-10)
    _, grads = plus.meta_gradient(batch)
    assert all(grads[k].abs().sum() > 0 for k in rates)  # the rates learn


def test_each_fix_changes_the_meta_gradient():
    """The equalities above would hold trivially if a flag did nothing: each fix alone moves the gradient."""
    batch = image_batch()
    convolutions = ["features.0.weight", "features.3.weight", "head.weight"]  # the same shapes in every variant
    _, maml = MAMLPlusPlus(small_convnet(), F.cross_entropy, 0.1, 3, **OFF).meta_gradient(batch)
    for fix in ("msl", "derivative_order_annealing", "per_step_bn_weights"):
        plus = MAMLPlusPlus(small_convnet(), F.cross_entropy, 0.1, 3, **{**OFF, fix: True})
        plus.start_iteration(0, 100)
        _, grads = plus.meta_gradient(batch)
        assert max((grads[k] - maml[k]).abs().max() for k in convolutions) > 1e-6, fix


# -- per-step batch norm ---------------------------------------------------------------------------

def per_step_layer(steps=3, channels=2, per_step_weights=True):
    layer = PerStepBatchNorm(channels, steps, per_step_weights).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in (layer.weight, layer.bias, layer.running_mean):
            t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64))
        layer.running_var.copy_(torch.rand(layer.running_var.shape, generator=g, dtype=torch.float64) + 0.5)
    return layer


def test_per_step_batch_norm_uses_the_statistics_and_weights_of_its_step():
    layer = per_step_layer()
    x = torch.randn(5, 2, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mean = x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    var = x.var(dim=(0, 2, 3), unbiased=False).view(1, -1, 1, 1)
    outputs = []
    for s in range(3):
        w, b = layer.weight[s].view(1, -1, 1, 1), layer.bias[s].view(1, -1, 1, 1)
        with batch_norm_step(layer, s):
            torch.testing.assert_close(layer(x), (x - mean) / torch.sqrt(var + layer.eps) * w + b)
            outputs.append(layer(x))
        rm, rv = layer.running_mean[s].view(1, -1, 1, 1), layer.running_var[s].view(1, -1, 1, 1)
        with batch_norm_step(layer, s, running_stats=True):
            torch.testing.assert_close(layer(x), (x - rm) / torch.sqrt(rv + layer.eps) * w + b)
            torch.testing.assert_close(layer(x[:1]), layer(x)[:1])  # each example alone
    assert (outputs[0] - outputs[1]).abs().max() > 1e-3  # the sets differ, so the check above could fail
    assert layer.step == 0 and not layer.use_running_stats  # restored on exit
    with batch_norm_step(layer, 3), pytest.raises(ValueError, match=r"step=3 is out of range: allowed 0\.\.2"):
        layer(x)


def test_shared_weights_and_records():
    layer = per_step_layer(per_step_weights=False)
    x = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    record = {}
    with batch_norm_step(layer, 2, record=record):
        out = layer(x)
    assert layer.weight.shape == (2,) and set(record) == {"/2"}
    torch.testing.assert_close(record["/2"], torch.stack([x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3))]))
    torch.testing.assert_close(out, F.batch_norm(x, None, None, layer.weight, layer.bias, training=True))


def test_per_step_batch_norm_starts_as_batch_norm_and_builds_a_convnet():
    torch.manual_seed(0)
    plain = BatchNorm(4).double()
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-1, 1)
    per_step = PerStepBatchNorm.from_batch_norm(plain, steps=3)
    x = torch.randn(6, 4, 2, 2, dtype=torch.float64)
    for s in range(3):
        with batch_norm_step(per_step, s):
            torch.testing.assert_close(per_step(x), plain(x))
    net = ConvNet(5, batch_norm=functools.partial(PerStepBatchNorm, steps=4))
    assert [m.steps for m in per_step_layers(net).values()] == [4] * 4 and net(torch.rand(2, 1, 28, 28)).shape == (2, 5)


def test_per_step_flags_convert_the_model():
    plus = MAMLPlusPlus(small_convnet(), F.cross_entropy, 0.1, 4)
    layers = per_step_layers(plus.model)
    assert len(layers) == 2 and all(m.steps == 4 and m.weight.shape == (4, 4) for m in layers.values())
    assert plus.outer_only == {f"{n}.{p}" for n in layers for p in ("weight", "bias")}
    assert not any(f"inner_lr/{k}" in dict(plus.named_parameters()) for k in plus.outer_only)  # not adapted
    shared = MAMLPlusPlus(small_convnet(), F.cross_entropy, 0.1, 4, per_step_bn_weights=False)
    assert not shared.outer_only and "inner_lr/features.1.weight" in dict(shared.named_parameters())


def test_adaptation_leaves_per_step_weights_and_uses_each_steps_rate():
    plus = MAMLPlusPlus(small_convnet(), F.cross_entropy, 0.1, 2, **{**OFF, "per_step_bn_weights": True,
                                                                      "lslr": True})
    with torch.no_grad():
        plus.inner_lrs["head.bias"].copy_(torch.tensor([0.3, 0.0], dtype=torch.float64))
    batch = image_batch()
    theta = plus.meta_parameters()
    path = plus.trajectory(theta, batch.support_x[0], batch.support_y[0], 2)
    for k in plus.outer_only:
        assert torch.equal(path[-1][k], theta[k])
    assert not torch.equal(path[0]["head.bias"], theta["head.bias"])  # rate 0.3 at step 0
    assert torch.equal(path[1]["head.bias"], path[0]["head.bias"])  # rate 0 at step 1


# -- the schedules --------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 2, 5])
def test_multi_step_loss_weights_sum_to_one_and_anneal_to_the_last_step(steps):
    for progress in (0.0, 0.25, 0.5, 0.999, 1.0, 3.0):
        weights = multi_step_loss_weights(steps, progress)
        assert len(weights) == steps and math.isclose(sum(weights), 1.0) and min(weights) >= 0
    assert multi_step_loss_weights(steps, 0.0) == pytest.approx([1 / steps] * steps)
    assert multi_step_loss_weights(steps, 1.0) == [0.0] * (steps - 1) + [1.0]
    last = [multi_step_loss_weights(steps, p)[-1] for p in (0.0, 0.3, 0.6, 0.9)]
    assert last == sorted(last)


def test_msl_weights_follow_the_iteration():
    plus = MAMLPlusPlus(small_mlp(), F.mse_loss, 0.05, 5, msl_annealing_fraction=0.1)
    assert plus.step_weights() == pytest.approx([0.2] * 5)  # a fresh algorithm is at its start
    plus.start_iteration(50, 1000)  # halfway through the 100 annealing iterations
    assert plus.step_weights() == pytest.approx([0.1] * 4 + [0.6])
    for it in (100, 999):
        plus.start_iteration(it, 1000)
        assert plus.step_weights() == [0.0] * 4 + [1.0]
    plus.msl = False
    plus.start_iteration(0, 1000)
    assert plus.step_weights() == [0.0] * 4 + [1.0]


def test_derivative_order_annealing_switches_at_the_configured_iteration():
    batch = sinusoid_batch()
    plus = MAMLPlusPlus(small_mlp(), F.mse_loss, 0.05, 2, **{**OFF, "derivative_order_annealing": True},
                        first_order_fraction=0.3)
    first = model_grads(MAML(small_mlp(), F.mse_loss, 0.05, 2, first_order=True), batch)
    second = model_grads(MAML(small_mlp(), F.mse_loss, 0.05, 2), batch)
    assert (first - second).abs().max() > 1e-6
    for it in range(10):
        plus.start_iteration(it, 10)
        assert plus.first_order == (it < 3)
        torch.testing.assert_close(model_grads(plus, batch), first if it < 3 else second, rtol=0, atol=1e-12)
    plus.derivative_order_annealing = False
    plus.start_iteration(0, 10)
    assert not plus.first_order


def test_cosine_annealing_of_the_outer_step_size():
    plus = MAMLPlusPlus(small_mlp(), F.mse_loss, 0.05, 2, min_outer_lr_factor=0.01)
    factors = [plus.outer_lr_factor(it, 100) for it in range(100)]
    assert factors[0] == 1.0 and factors[50] == pytest.approx(0.505) and factors[-1] == pytest.approx(0.01, abs=3e-4)
    assert factors == sorted(factors, reverse=True)
    assert cosine_annealing_factor(100, 100, 0.01) == pytest.approx(0.01)
    plus.cosine_annealing = False
    assert plus.outer_lr_factor(50, 100) == 1.0


class Interrupted(Exception):
    pass


class Logged(MAMLPlusPlus):
    """Records the schedule at every meta-gradient; with ``stop_at``, dies there (a killed run)."""

    def __init__(self, *args, stop_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop_at, self.log = stop_at, []

    def meta_gradient(self, batch):
        if self.iteration == self.stop_at:
            raise Interrupted
        self.log.append((self.iteration, self.first_order, tuple(self.step_weights())))
        return super().meta_gradient(batch)


@pytest.mark.xfail(not hasattr(MetaLearner, "start_iteration"), strict=True,
                   reason="meta_train does not yet tell algorithms the iteration (MetaLearner.start_iteration)")
def test_resume_across_the_switch_matches_an_uninterrupted_run(tmp_path):
    """8 iterations: MSL anneals over the first 2, DA is first order for the first 3. A run killed at iteration
    3 (last checkpoint: 2) and resumed goes across DA's switch exactly as the uninterrupted run."""
    sampler = Sinusoid(5, 5)

    def make(seed=0, stop_at=None):
        torch.manual_seed(seed)
        return Logged(small_mlp().float(), F.mse_loss, 0.05, 2, msl_annealing_fraction=0.25,
                      first_order_fraction=0.375, stop_at=stop_at)

    settings = dict(iterations=8, meta_batch=3, progress=False, device="cpu")
    straight = make()
    h1 = meta_train(straight, sampler, **settings)
    assert [first for _, first, _ in straight.log] == [True] * 3 + [False] * 5  # the switch, at iteration 3
    assert [weights for *_, weights in straight.log[:3]] == [(0.5, 0.5), (0.25, 0.75), (0.0, 1.0)]
    ckpt = tmp_path / "run.pt"
    with pytest.raises(Interrupted):
        meta_train(make(stop_at=3), sampler, checkpoint=ckpt, checkpoint_every=2, **settings)
    resumed = make(seed=99)  # a different initialisation: everything must come from the checkpoint
    h2 = meta_train(resumed, sampler, checkpoint=ckpt, **settings)
    assert [it for it, *_ in resumed.log] == list(range(2, 8)) and resumed.log == straight.log[2:]
    assert h2["loss"] == h1["loss"]
    for (k, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), k


def test_checkpoint_state_is_flat_and_restores_everything():
    batch = image_batch()
    plus = MAMLPlusPlus(small_convnet(), F.cross_entropy, 0.1, 2, transductive=False)
    plus.meta_gradient(batch)
    state = plus.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert "features.1.running_mean" in state and state["inner_lr/head.weight"].shape == (2,)
    other = MAMLPlusPlus(small_convnet(seed=5), F.cross_entropy, 0.1, 2, transductive=False)
    other.load_state_dict(copy.deepcopy(state))
    with torch.no_grad():
        torch.testing.assert_close(other.predict(batch), plus.predict(batch), rtol=0, atol=0)
        assert torch.isfinite(plus.predict(batch, inner_steps=5)).all()  # past N: the last set and rate again


# -- exactness ------------------------------------------------------------------------------------

def test_meta_gradient_matches_finite_differences_with_every_fix_on():
    """All six fixes, mid-way through MSL's annealing and after DA's switch: theta, the per-step batch-norm
    weights and the LSLR rates all get their exact gradient."""
    plus = MAMLPlusPlus(small_convnet(), F.cross_entropy, 0.1, 2, msl_annealing_fraction=0.5,
                        first_order_fraction=0.1, vectorise=False)
    plus.start_iteration(20, 100)
    assert not plus.first_order and 0 < plus.step_weights()[0] < 0.5
    with torch.no_grad():  # per-step weights and rates that differ between steps
        for layer in per_step_layers(plus.model).values():
            layer.weight.add_(0.2 * torch.arange(2, dtype=torch.float64).view(-1, 1))
        for rates in plus.inner_lrs.values():
            rates.mul_(torch.tensor([1.0, 0.5], dtype=torch.float64))
    check_directional_finite_differences(plus, image_batch())


def test_vectorised_path_equals_per_task_path():
    batch = image_batch(tasks=3)
    vec = MAMLPlusPlus(small_convnet(), F.cross_entropy, 0.1, 2, vectorise=True)
    loop = MAMLPlusPlus(small_convnet(), F.cross_entropy, 0.1, 2, vectorise=False)
    for alg in (vec, loop):
        alg.start_iteration(60, 100)  # second order, MSL over
    torch.testing.assert_close(model_grads(vec, batch), model_grads(loop, batch), rtol=1e-9, atol=1e-12)
    for (k, a), (_, b) in zip(vec.model.named_buffers(), loop.model.named_buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=k)


# -- running statistics and non-transductive evaluation -------------------------------------------

class NormFirst(nn.Module):
    """Per-step batch norm on the raw input, then a linear head: its statistics can be computed by hand."""

    def __init__(self, steps, ways=3, size=4):
        super().__init__()
        self.norm = PerStepBatchNorm(1, steps)
        self.head = nn.Linear(size * size, ways)

    def forward(self, x):
        return self.head(self.norm(x).flatten(1))


def test_running_statistics_are_the_moving_average_of_the_query_statistics():
    torch.manual_seed(0)
    plus = MAMLPlusPlus(NormFirst(steps=2).double(), F.cross_entropy, 0.1, 2)
    plus.start_iteration(0, 100)  # MSL on: the query losses of both steps, hence both sets, are computed
    batch = image_batch(size=4)
    plus.meta_gradient(batch)
    m = plus.model.norm.momentum
    query_mean = batch.query_x.mean(dim=(1, 2, 3, 4))  # per task: the layer sees the raw query images
    query_var = batch.query_x.flatten(1).var(dim=1)
    for s in range(2):
        torch.testing.assert_close(plus.model.norm.running_mean[s], m * query_mean.mean().view(1))
        torch.testing.assert_close(plus.model.norm.running_var[s], (1 - m) + m * query_var.mean().view(1))
    plus.start_iteration(50, 100)  # MSL over: only the last step's query loss, so only set 1 moves
    before = plus.model.norm.running_mean.clone()
    plus.meta_gradient(image_batch(size=4, seed=1))
    after = plus.model.norm.running_mean
    assert torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])
    plus.meta_loss(batch)
    assert torch.equal(plus.model.norm.running_mean, after)  # only the training step moves them


def test_non_transductive_predictions_use_running_statistics_one_example_at_a_time():
    batch = image_batch(tasks=2, queries=3)
    plus = MAMLPlusPlus(small_convnet(), F.cross_entropy, 0.1, 2, transductive=False)
    for seed in range(3):
        plus.meta_gradient(image_batch(seed=seed))
    with torch.no_grad():
        alone = plus.predict(batch)
        changed = batch.query_x.clone()
        changed[:, 1:] = torch.rand_like(changed[:, 1:])
        other = plus.predict(TaskBatch(batch.support_x, batch.support_y, changed, batch.query_y))
        torch.testing.assert_close(other[:, 0], alone[:, 0], rtol=0, atol=1e-12)
        layer = plus.model.features[1]
        layer.running_mean[0].add_(1.0)  # set 0 is not the query's after two steps ...
        torch.testing.assert_close(plus.predict(batch), alone, rtol=0, atol=1e-12)
        layer.running_mean[1].add_(1.0)  # ... set 1 is
        assert (plus.predict(batch) - alone).abs().max() > 1e-6
        plus.transductive = True  # the query set's own statistics: example 0 depends on the others
        assert (plus.predict(batch)[:, 0] - plus.predict(TaskBatch(batch.support_x, batch.support_y, changed,
                                                                   batch.query_y))[:, 0]).abs().max() > 1e-6


# -- bad input and the recipe rows ----------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(inner_lr=-0.1), r"inner_lr=-0\.1 is out of range: allowed a finite number > 0"),
    (dict(inner_steps=0), r"inner_steps=0 is out of range: allowed >= 1"),
    (dict(msl_annealing_fraction=-0.1), r"msl_annealing_fraction=-0\.1 is out of range: allowed a number in \[0, 1\]"),
    (dict(first_order_fraction=1.5), r"first_order_fraction=1\.5 is out of range: allowed a number in \[0, 1\]"),
    (dict(min_outer_lr_factor=2.0), r"min_outer_lr_factor=2\.0 is out of range"),
])
def test_bad_arguments(kwargs, match):
    settings = dict(inner_lr=0.1, inner_steps=2)
    settings.update(kwargs)
    with pytest.raises(ValueError, match=match):
        MAMLPlusPlus(small_convnet(), F.cross_entropy, **settings)


def test_bad_models_and_flags():
    with pytest.raises(TypeError, match="msl=1 must be True or False"):
        MAMLPlusPlus(small_mlp(), F.mse_loss, 0.1, 2, msl=1)
    with pytest.raises(ValueError, match="torch.nn.BatchNorm"):
        MAMLPlusPlus(ConvNet(3, hidden=4, blocks=1, batch_norm=nn.BatchNorm2d), F.cross_entropy, 0.1, 2)
    with pytest.raises(ValueError, match="has steps=3, per_step_weights=True: allowed steps=2"):
        MAMLPlusPlus(ConvNet(3, hidden=4, blocks=1, batch_norm=functools.partial(PerStepBatchNorm, steps=3)),
                     F.cross_entropy, 0.1, 2)
    with pytest.raises(ValueError, match=r"steps=0 is out of range: allowed an integer >= 1"):
        PerStepBatchNorm(4, 0)


@pytest.mark.skipif(not HAVE_OMNIGLOT, reason="Omniglot archives not available (set MLCOURSE_DATA)")
@pytest.mark.parametrize("ways", [5, 20])
def test_smoke_run(ways):
    out = recipes.run("maml++", "omniglot", ways, budget="smoke", device="cpu", progress=False,
                      eval_tasks=10 if ways == 20 else None)
    assert math.isfinite(out["result"]["mean"]) and 0 <= out["result"]["mean"] <= 1
    assert out["published"] == ({"mean": 99.47, "ci95": None} if ways == 5 else {"mean": 97.65, "ci95": 0.05})
    assert isinstance(out["algorithm"], MAMLPlusPlus) and out["algorithm"].inner_steps == 5
