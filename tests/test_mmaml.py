"""Multimodal MAML: FiLM, the modulation network, Multi-MAML's routing, and the multimodal sampler."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlcourse.algorithms import MAML, MMAML, MultiMAML
from mlcourse.functional import forward, params_of
from mlcourse.modulation import ConvSetEncoder, RecurrentEncoder, SetEncoder, film_layers
from mlcourse.nn import MLP, ConvNet, FiLM
from mlcourse.tasks import Multimodal, TaskBatch
from mlcourse.tasks.multimodal import FAMILIES, family_values


def small_batch(tasks=4, modes=2, dtype=torch.float64, seed=0):
    sampler = Multimodal(("sinusoid", "line", "quadratic", "tanh", "l1")[:modes], shots=4, queries=3)
    batch = sampler.sample(tasks, torch.Generator().manual_seed(seed))
    return TaskBatch(*(t.to(dtype) for t in batch), mode=batch.mode)


def grads_of(learner, batch):
    loss = learner.meta_loss(batch)
    named = learner.named_parameters()
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {k: g for (k, _), g in zip(named, grads)}


def test_film_at_identity_is_the_identity():
    torch.manual_seed(0)
    modulated = MLP([1, 8, 8, 1], film=True).double()
    plain = MLP([1, 8, 8, 1]).double()
    linear_of = [m for m in modulated if isinstance(m, nn.Linear)]
    for a, b in zip(linear_of, [m for m in plain if isinstance(m, nn.Linear)]):
        b.load_state_dict(a.state_dict())
    x = torch.randn(6, 1, dtype=torch.float64)
    assert torch.equal(modulated(x), plain(x))
    image = torch.randn(2, 3, 5, 5)
    film = FiLM(3)
    assert torch.equal(film(image), image)
    film.gamma.fill_(2.0)
    film.beta.copy_(torch.tensor([0.0, 1.0, -1.0]))
    assert torch.allclose(film(image)[:, 1], 2 * image[:, 1] + 1)


def test_film_layers_found_in_forward_order_and_not_saved():
    model = MLP([1, 5, 7, 1], film=True)
    assert film_layers(model) == [("1", 5), ("4", 7)]
    assert not any("gamma" in k or "beta" in k for k in model.state_dict())  # buffers are not persistent
    conv = ConvNet(5, film=True)
    assert [c for _, c in film_layers(conv)] == [64] * 4


@pytest.mark.parametrize("vectorise", [True, False])
def test_identity_modulation_gives_maml_meta_gradient(vectorise):
    """Generators start at zero, so tau is the identity: theta's meta-gradient must equal MAML's."""
    torch.manual_seed(1)
    model = MLP([1, 10, 10, 1], film=True).double()
    mmaml = MMAML(model, F.mse_loss, SetEncoder(2, 8, 6).double(), inner_lr=0.05, inner_steps=2, vectorise=vectorise)
    maml = MAML(model, F.mse_loss, inner_lr=0.05, inner_steps=2, vectorise=vectorise)
    batch = small_batch()
    ours, theirs = grads_of(mmaml, batch), grads_of(maml, batch)
    for name, g in theirs.items():
        assert torch.allclose(ours[name], g, rtol=0, atol=1e-12), name
    # The generators still learn (their gradient is not zero), the encoder waits for them.
    assert ours["modulator.generators.0.weight"].abs().sum() > 0


def _perturb_generators(learner, scale=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for g in learner.modulator.generators:
            g.weight.copy_(scale * torch.randn(g.weight.shape, generator=gen, dtype=g.weight.dtype))
            g.bias.copy_(scale * torch.randn(g.bias.shape, generator=gen, dtype=g.bias.dtype))


@pytest.mark.parametrize("kind", ["film", "softmax"])
def test_meta_gradient_matches_finite_differences_through_the_encoder(kind):
    torch.manual_seed(2)
    mmaml = MMAML(MLP([1, 6, 6, 1], film=True).double(), F.mse_loss, RecurrentEncoder(2, 5, 1).double(),
                  inner_lr=0.05, inner_steps=2, modulation=kind)
    _perturb_generators(mmaml)
    batch = small_batch(3)
    grads = grads_of(mmaml, batch)
    encoder_grads = [g for k, g in grads.items() if k.startswith("modulator.encoder")]
    assert all(g is not None for g in encoder_grads) and sum(g.abs().sum() for g in encoder_grads) > 0
    params = [p for _, p in mmaml.named_parameters()]
    gen = torch.Generator().manual_seed(3)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    analytic = sum((grads[k] * d).sum() for (k, _), d in zip(mmaml.named_parameters(), direction))
    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(eps * d)
        plus = mmaml.meta_loss(batch)
        for p, d in zip(params, direction):
            p.sub_(2 * eps * d)
        minus = mmaml.meta_loss(batch)
        for p, d in zip(params, direction):
            p.add_(eps * d)
    numeric = (plus - minus) / (2 * eps)
    assert torch.allclose(analytic, numeric, rtol=1e-6, atol=1e-8), (analytic.item(), numeric.item())


def test_vmap_and_loop_agree_and_modulation_is_fixed_in_the_inner_loop():
    torch.manual_seed(4)
    model = MLP([1, 8, 8, 1], film=True).double()
    encoder = RecurrentEncoder(2, 4, 2).double()
    a = MMAML(model, F.mse_loss, encoder, inner_lr=0.05, inner_steps=3, vectorise=True)
    b = MMAML(model, F.mse_loss, encoder, inner_lr=0.05, inner_steps=3, vectorise=False)
    b.modulator = a.modulator
    _perturb_generators(a)
    batch = small_batch()
    ga, gb = grads_of(a, batch), grads_of(b, batch)
    for k in ga:
        assert torch.allclose(ga[k], gb[k], atol=1e-12), k
    sx, sy = batch.support_x[0], batch.support_y[0]
    phi = a.adapt(sx, sy)
    tau = a.modulation(sx, sy)
    for k, v in tau.items():
        assert torch.equal(phi[k], v)  # the modulation the inner loop ran under, unchanged by it


def test_lstm_learner_is_modulation_without_adaptation():
    torch.manual_seed(5)
    learner = MMAML(MLP([1, 8, 1], film=True), F.mse_loss, SetEncoder(2, 8, 4), inner_lr=0.1, inner_steps=0)
    _perturb_generators(learner)
    batch = small_batch(3, dtype=torch.float32)
    expected = torch.stack([forward(learner.model, {**params_of(learner.model), **learner.modulation(sx, sy)}, qx)
                            for sx, sy, qx in zip(batch.support_x, batch.support_y, batch.query_x)])
    assert torch.allclose(learner.predict(batch), expected, atol=1e-6)


def test_embeddings_and_state_dict_round_trip(tmp_path):
    torch.manual_seed(6)
    learner = MMAML(MLP([1, 8, 1], film=True), F.mse_loss, RecurrentEncoder(2, 4, 1), inner_lr=0.1)
    _perturb_generators(learner)
    batch = small_batch(5, dtype=torch.float32)
    assert learner.embeddings(batch).shape == (5, 8)
    torch.save(learner.state_dict(), tmp_path / "m.pt")
    other = MMAML(MLP([1, 8, 1], film=True), F.mse_loss, RecurrentEncoder(2, 4, 1), inner_lr=0.1)
    other.load_state_dict(torch.load(tmp_path / "m.pt"))
    assert torch.equal(other.predict(batch), learner.predict(batch))


def test_conv_encoder_modulates_a_conv_net():
    torch.manual_seed(7)
    learner = MMAML(ConvNet(3, hidden=8, film=True), F.cross_entropy, ConvSetEncoder(1, 8, 2, 6), inner_lr=0.4,
                    inner_steps=1)
    _perturb_generators(learner)
    batch = TaskBatch(torch.rand(2, 3, 1, 28, 28), torch.arange(3).repeat(2, 1), torch.rand(2, 6, 1, 28, 28),
                      torch.arange(3).repeat_interleave(2).repeat(2, 1))
    grads = grads_of(learner, batch)
    assert grads["modulator.encoder.out.weight"].abs().sum() > 0
    assert learner.predict(batch).shape == (2, 6, 3)


def test_multi_maml_routes_each_task_to_its_modes_model():
    learner = MultiMAML(MLP([1, 1]), F.mse_loss, num_modes=3, inner_lr=1e-9, inner_steps=1)
    with torch.no_grad():
        for m, model in enumerate(learner.model):
            model[0].weight.zero_()
            model[0].bias.fill_(10.0 * m)
    batch = small_batch(7, modes=3, dtype=torch.float32)
    predictions = learner.predict(batch)
    assert torch.allclose(predictions[..., 0], 10.0 * batch.mode.float().unsqueeze(1).expand(-1, 3), atol=1e-4)
    # Each model's gradient comes only from its own mode's tasks.
    only_line = batch.select(batch.mode == 1)
    grads = grads_of(learner, only_line)
    assert grads["0.0.bias"] is None and grads["2.0.bias"] is None and grads["1.0.bias"] is not None
    with pytest.raises(ValueError, match="oracle"):
        learner.predict(TaskBatch(*batch))
    with pytest.raises(ValueError, match="allowed 0..1"):
        MultiMAML(MLP([1, 1]), F.mse_loss, 2, 0.1).predict(batch)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_sampler_families_match_their_formulas(name):
    sampler = Multimodal((name,), shots=5, queries=7, noise=0.0)
    batch, params = sampler.sample(40, torch.Generator().manual_seed(8), return_params=True)
    a, b, c = (params[k].view(-1, 1, 1) for k in "abc")
    formula = {"sinusoid": lambda x: a * torch.sin(x - b), "line": lambda x: a * x + b,
               "quadratic": lambda x: a * (x - b) ** 2 + c, "tanh": lambda x: a * torch.tanh(x - b) + c,
               "l1": lambda x: a * (x - b).abs() + c}[name]
    assert torch.allclose(batch.query_y, formula(batch.query_x), atol=1e-5)
    assert torch.allclose(batch.support_y, formula(batch.support_x), atol=1e-5)
    for key, (low, high) in FAMILIES[name][1].items():
        values = params[key].abs() if (name, key) == ("quadratic", "a") else params[key]
        assert values.min() >= low and values.max() <= high
    assert batch.support_x.min() >= -5 and batch.support_x.max() <= 5
    assert torch.equal(batch.mode, torch.zeros(40, dtype=torch.long))


def test_sampler_balances_modes_adds_noise_and_is_seeded():
    sampler = Multimodal.paper(5, noise=0.3)
    batch, params = sampler.sample(50, torch.Generator().manual_seed(9), return_params=True)
    assert torch.equal(torch.bincount(batch.mode, minlength=5), torch.full((5,), 10))
    residual = batch.query_y - sampler.function(batch.query_x, params)
    assert 0.25 < residual.std().item() < 0.35
    again = sampler.sample(50, torch.Generator().manual_seed(9))
    assert torch.equal(again.query_y, batch.query_y) and torch.equal(again.mode, batch.mode)
    moved = batch.to("cpu").select(torch.tensor([3, 1]))
    assert torch.equal(moved.mode, batch.mode[[3, 1]])
    assert torch.allclose(family_values("line", torch.tensor(2.0), torch.tensor(3.0), torch.tensor(1.0),
                                        torch.tensor(math.nan)), torch.tensor(7.0))


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="'circle' is unknown: allowed sinusoid, line"):
        Multimodal(("sinusoid", "circle"))
    with pytest.raises(ValueError, match="num_modes=4 is out of range"):
        Multimodal.paper(4)
    with pytest.raises(ValueError, match="repeats"):
        Multimodal(("line", "line"))
    with pytest.raises(ValueError, match="empty"):
        Multimodal(())
    with pytest.raises(ValueError, match="noise=-1"):
        Multimodal(noise=-1)
    with pytest.raises(ValueError, match="no FiLM layers"):
        MMAML(MLP([1, 4, 1]), F.mse_loss, SetEncoder(), inner_lr=0.1)
    with pytest.raises(ValueError, match="modulation 'gate' is unknown"):
        MMAML(MLP([1, 4, 1], film=True), F.mse_loss, SetEncoder(), inner_lr=0.1, modulation="gate")
    with pytest.raises(ValueError, match="inner_steps=-1"):
        MMAML(MLP([1, 4, 1], film=True), F.mse_loss, SetEncoder(), inner_lr=0.1, inner_steps=-1)
    with pytest.raises(ValueError, match="mode must be an int64"):
        TaskBatch(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), torch.zeros(2, 3, 1),
                  mode=torch.zeros(3, dtype=torch.long))
