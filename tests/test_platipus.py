"""PLATIPUS (probabilistic MAML) and the ambiguous sinusoid-or-line tasks."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from mlcourse.algorithms import PLATIPUS
from mlcourse.algorithms.platipus import gaussian_kl
from mlcourse.tasks import SinusoidOrLine, TaskBatch
from mlcourse.train import meta_train
from _helpers import small_mlp  # noqa: E402


def ambiguous_batch(tasks=3, shots=4, queries=5, seed=0):
    batch = SinusoidOrLine(shots, queries).sample(tasks, torch.Generator().manual_seed(seed))
    return TaskBatch(*(t.double() for t in batch))


def platipus(float64=True, **kw):
    settings = dict(inner_lr=0.05, inner_steps=2, kl_weight=0.3, init_variance=0.02, seed=3,
                    vectorise=False)
    settings.update(kw)
    model = small_mlp() if float64 else small_mlp().float()
    return PLATIPUS(model, F.mse_loss, **settings)


def test_gaussian_kl_equals_torch_distributions():
    g = torch.Generator().manual_seed(0)
    shapes = {"a": (3, 2), "b": (4,)}
    draw = lambda: {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}  # noqa: E731
    mean_q, log_q, mean_p, log_p = draw(), draw(), draw(), draw()
    expected = sum(kl_divergence(Normal(mean_q[k], (0.5 * log_q[k]).exp()),
                                 Normal(mean_p[k], (0.5 * log_p[k]).exp())).sum() for k in shapes)
    torch.testing.assert_close(gaussian_kl(mean_q, log_q, mean_p, log_p), expected)
    assert gaussian_kl(mean_q, log_q, mean_q, log_q).abs() < 1e-12  # KL(q || q) = 0


def test_meta_gradient_matches_finite_differences():
    """Every kind of meta-parameter (mu, both variances, both step sizes), with the noise held fixed."""
    alg = platipus()
    batch = ambiguous_batch()
    state = alg.generator.get_state()

    def loss():
        alg.generator.set_state(state)  # the same theta draws at every evaluation
        return alg.meta_loss(batch)

    alg.generator.set_state(state)
    _, grads = alg.meta_gradient(batch)
    named = dict(alg.named_parameters())
    eps = 1e-6
    g = torch.Generator().manual_seed(1)
    for name in ("0.weight", "2.bias", "log_prior_var/4.weight", "log_posterior_var/0.bias",
                 "log_gamma_p", "log_gamma_q"):
        p = named[name]
        flat = p.data.view(-1)
        for i in torch.randint(flat.numel(), (2,), generator=g).tolist():
            old = flat[i].item()
            with torch.no_grad():
                flat[i] = old + eps
                up = loss().item()
                flat[i] = old - eps
                down = loss().item()
                flat[i] = old
            numeric = (up - down) / (2 * eps)
            assert grads[name].reshape(-1)[i].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8), name


def test_every_meta_parameter_gets_a_gradient_and_is_trained():
    alg = platipus(float64=False, vectorise="auto")
    before = {k: v.detach().clone() for k, v in alg.named_parameters()}
    _, grads = alg.meta_gradient(SinusoidOrLine(4, 5).sample(3, torch.Generator().manual_seed(0)))
    assert set(grads) == set(before)
    meta_train(alg, SinusoidOrLine(4, 5), 3, 2, outer_lr=1e-2, progress=False)
    after = dict(alg.named_parameters())
    assert all(not torch.equal(before[k], after[k].detach().to(before[k].dtype)) for k in before)


def test_vmap_and_loop_give_the_same_meta_gradient():
    batch = ambiguous_batch()
    results = []
    for vectorise in (True, False):
        alg = platipus(vectorise=vectorise)
        results.append(alg.meta_gradient(batch))
    torch.testing.assert_close(results[0][0], results[1][0])
    for k in results[0][1]:
        torch.testing.assert_close(results[0][1][k], results[1][1][k])


def test_meta_test_samples_change_with_the_seed_and_not_otherwise():
    alg = platipus()
    batch = ambiguous_batch()
    first = alg.sample_predictions(batch, 3)
    again = alg.sample_predictions(batch, 3)
    other = alg.sample_predictions(batch, 3, seed=4)
    assert first.shape == (3, 3, 5, 1)
    torch.testing.assert_close(first, again)  # same seed: the same hypotheses
    assert not torch.allclose(first, other)   # another seed: others
    assert not torch.allclose(first[0], first[1])  # and the samples of one call differ
    torch.testing.assert_close(alg.predict(batch), alg.predict(batch))


def test_zero_prior_variance_makes_meta_test_deterministic_maml_from_the_prior_mean():
    """With sigma^2 -> 0 every draw from p(theta | D^tr) is its mean mu - gamma_p grad L(mu, D^tr)."""
    alg = platipus(init_variance=1e-30)
    batch = ambiguous_batch()
    samples = alg.sample_predictions(batch, 3)
    torch.testing.assert_close(samples[0], samples[2])


def test_state_dict_restores_every_meta_parameter_and_the_generator():
    alg = platipus(float64=False)
    meta_train(alg, SinusoidOrLine(4, 5), 2, 2, outer_lr=1e-2, progress=False)
    copy = platipus(float64=False)
    copy.load_state_dict(alg.state_dict())
    batch = SinusoidOrLine(4, 5).sample(3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(copy.meta_loss(batch), alg.meta_loss(batch))


@pytest.mark.parametrize("bad, message", [
    (dict(kl_weight=-0.1), "kl_weight=-0.1 is out of range"),
    (dict(kl_weight=math.inf), "kl_weight=inf is out of range"),
    (dict(init_variance=0.0), "init_variance"),
    (dict(inner_steps=0), "inner_steps"),
])
def test_bad_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        platipus(**bad)


def test_bad_number_of_samples_is_refused():
    with pytest.raises(ValueError, match="num_samples"):
        platipus().sample_predictions(ambiguous_batch(), 0)


# -- the ambiguous tasks -------------------------------------------------------------------------

def test_sinusoid_or_line_mixes_both_kinds_and_matches_its_functions():
    sampler = SinusoidOrLine(shots=5, queries=7, noise_std=0.0, support_range=(-1.0, 1.0))
    batch, params = sampler.sample(400, torch.Generator().manual_seed(0), return_params=True)
    share = params["kind"].float().mean().item()
    assert 0.4 < share < 0.6
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)
    torch.testing.assert_close(y, SinusoidOrLine.function(x, params))
    assert batch.support_x.abs().max() <= 1.0 and batch.query_x.abs().max() > 1.0
    lines = params["kind"] == 1
    assert params["slope"][lines].abs().max() <= 3 and params["amplitude"][lines].isnan().all()
    assert params["slope"][~lines].isnan().all()


def test_sinusoid_or_line_noise_has_the_stated_size():
    clean = SinusoidOrLine(5, 50, noise_std=0.0).sample(200, torch.Generator().manual_seed(2))
    noisy = SinusoidOrLine(5, 50, noise_std=0.3).sample(200, torch.Generator().manual_seed(2))
    assert (noisy.query_y - clean.query_y).std().item() == pytest.approx(0.3, rel=0.05)


@pytest.mark.parametrize("bad, message", [
    (dict(noise_std=-1.0), "noise_std=-1.0 is out of range"),
    (dict(support_range=(2.0, 1.0)), r"support_range=\(2.0, 1.0\) is out of range"),
    (dict(support_range=(-6.0, 1.0)), "allowed"),
    (dict(shots=0), "shots"),
])
def test_sinusoid_or_line_refuses_bad_settings(bad, message):
    with pytest.raises(ValueError, match=message):
        SinusoidOrLine(**bad)


def test_closest_kind_recovers_the_family_of_noiseless_curves():
    batch, params = SinusoidOrLine(5, 40, noise_std=0.0).sample(200, torch.Generator().manual_seed(5),
                                                                  return_params=True)
    kinds = SinusoidOrLine.closest_kind(batch.query_x.double(), batch.query_y.double())
    # a sinusoid of tiny amplitude is also nearly a flat line: score only clear cases
    clear = params["amplitude"].isnan() | (params["amplitude"] > 0.5)
    assert torch.equal(kinds[clear], params["kind"][clear])
