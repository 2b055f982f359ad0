"""SVGD and Bayesian MAML: SVGD against a double loop and autograd, SVGD on a Gaussian, the chaser loss's
stop-gradient, BMAML = MAML for one particle, finite differences, EMAML = M MAMLs, bad input, training."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlcourse.algorithms import BMAML, EMAML, MAML
from mlcourse.algorithms.bmaml import chaser_loss
from mlcourse.nn import MLP, ConvNet
from mlcourse.svgd import median_bandwidth, rbf_kernel, svgd_direction
from mlcourse.tasks import Sinusoid, TaskBatch
from mlcourse.train import evaluate, meta_train
from _helpers import sinusoid_batch, small_mlp, flat_params, set_flat


def random_particles(m=6, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, d, generator=g, dtype=torch.float64),
            torch.randn(m, d, generator=g, dtype=torch.float64))


def meta_grad(alg, batch):
    loss, grads = alg.meta_gradient(batch)
    return loss, torch.cat([grads[k].flatten() for k, _ in alg.model.named_parameters()])


# ---------------------------------------------------------------------------------------------
# SVGD

def double_loop_direction(x, scores, h):
    """phi*(x_m) = (1/M) sum_j [k(x_j, x_m) score_j + grad_{x_j} k(x_j, x_m)], written out term by term."""
    m_count = x.shape[0]
    phi = torch.zeros_like(x)
    for m in range(m_count):
        for j in range(m_count):
            k = math.exp(-float(((x[j] - x[m]) ** 2).sum()) / h)
            phi[m] += k * scores[j] + k * (-2.0 / h) * (x[j] - x[m])
    return phi / m_count


def numpy_median_bandwidth(x):
    x = x.numpy()
    sq = [((x[j] - x[m]) ** 2).sum() for j in range(len(x)) for m in range(j + 1, len(x))]
    return float(np.median(sq)) / math.log(len(x))


@pytest.mark.parametrize("m", [5, 6])  # odd and even numbers of pairs (10, 15)
def test_svgd_direction_equals_the_double_loop(m):
    x, s = random_particles(m)
    kernel = torch.tensor([[math.exp(-float(((a - b) ** 2).sum()) / 0.7) for b in x] for a in x], dtype=x.dtype)
    torch.testing.assert_close(rbf_kernel(x, 0.7), kernel)
    torch.testing.assert_close(svgd_direction(x, s, bandwidth=0.7), double_loop_direction(x, s, 0.7))
    h = numpy_median_bandwidth(x)
    assert median_bandwidth(x).item() == pytest.approx(h, rel=1e-12)
    torch.testing.assert_close(svgd_direction(x, s), double_loop_direction(x, s, h))


def test_median_bandwidth_values():
    x = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)  # squared distances 1, 9, 4: median 4
    assert median_bandwidth(x).item() == pytest.approx(4 / math.log(3))
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 4.0]], dtype=torch.float64)
    # pairs: 1, 4, 16, 5, 17, 4 -> sorted 1 4 4 5 16 17, median (4 + 5) / 2
    assert median_bandwidth(x).item() == pytest.approx(4.5 / math.log(4))
    assert median_bandwidth(x[:1]).item() == 1.0


def test_repulsive_term_is_the_autograd_gradient_of_the_kernel():
    x, _ = random_particles(5, 3)
    h = 1.3
    expected = torch.zeros_like(x)
    for m in range(x.shape[0]):  # sum_j grad_{x_j} k(x_j, x_m), x_m held fixed
        xs = x.clone().requires_grad_()
        k = torch.exp(-((xs - x[m].detach()) ** 2).sum(-1) / h)
        expected[m] = torch.autograd.grad(k.sum(), xs)[0].sum(0)
    repulsive = svgd_direction(x, torch.zeros_like(x), bandwidth=h) * x.shape[0]
    torch.testing.assert_close(repulsive, expected)
    assert repulsive.abs().max() > 1e-3  # not trivially zero


def test_one_particle_gives_the_score():
    x, s = random_particles(1, 5)
    torch.testing.assert_close(svgd_direction(x, s), s)
    torch.testing.assert_close(svgd_direction(x, s, bandwidth=0.1), s)


def test_median_bandwidth_is_a_constant_for_autograd():
    x, s = random_particles(5, 3)
    x.requires_grad_()
    h = median_bandwidth(x)
    assert not h.requires_grad
    v = torch.randn_like(x)
    g_median = torch.autograd.grad((svgd_direction(x, s) * v).sum(), x)[0]
    g_fixed = torch.autograd.grad((svgd_direction(x, s, bandwidth=h.item()) * v).sum(), x)[0]
    torch.testing.assert_close(g_median, g_fixed)


def test_svgd_recovers_a_gaussian():
    """150 particles from N(0, I) move to N(mu, Sigma); SVGD's finite-M fixed point underestimates the
    variance by about 5% here, hence the tolerance (with no repulsion they would collapse on mu)."""
    mu = torch.tensor([1.0, -2.0], dtype=torch.float64)
    cov = torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    precision = torch.linalg.inv(cov)
    x = torch.randn(150, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for _ in range(800):
        x = x + 0.5 * svgd_direction(x, -(x - mu) @ precision)
    torch.testing.assert_close(x.mean(0), mu, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.0, rtol=0.1)


# ---------------------------------------------------------------------------------------------
# Particles, prediction

def test_particles_are_independent_initialisations_and_theta():
    model = small_mlp()
    original = {k: v.detach().clone() for k, v in model.named_parameters()}
    alg = BMAML(model, F.mse_loss, 0.01, num_particles=4)
    for k, v in alg.meta_parameters().items():
        assert v.shape == (4, *original[k].shape)
        torch.testing.assert_close(v[0], original[k])  # particle 0 keeps the model's values
        assert not torch.equal(v[1], v[2])
    assert sorted(alg.particle_names) == sorted(original)


def test_share_features_makes_only_the_head_a_particle():
    alg = BMAML(small_mlp(), F.mse_loss, 0.01, num_particles=3, share_features=True)
    assert alg.particle_names == ("4.weight", "4.bias")
    assert alg.meta_parameters()["0.weight"].shape == (8, 1)
    conv = BMAML(ConvNet(3, hidden=4, blocks=2).double(), F.cross_entropy, 0.1, num_particles=3,
                 share_features=True)
    assert conv.particle_names == ("head.weight", "head.bias")
    assert conv.meta_parameters()["head.weight"].shape == (3, 3, 4)


def test_prediction_is_the_ensemble():
    batch = sinusoid_batch()
    alg = BMAML(small_mlp(), F.mse_loss, 0.01, num_particles=3)
    with torch.no_grad():
        particles = alg.predict_particles(batch)
        assert particles.shape == (3, *batch.query_y.shape)
        torch.testing.assert_close(alg.predict(batch), particles.mean(0))
    g = torch.Generator().manual_seed(0)
    images = TaskBatch(torch.rand(2, 3, 1, 12, 12, generator=g, dtype=torch.float64), torch.arange(3).repeat(2, 1),
                       torch.rand(2, 6, 1, 12, 12, generator=g, dtype=torch.float64),
                       torch.arange(3).repeat_interleave(2).repeat(2, 1))
    conv = EMAML(ConvNet(3, hidden=4, blocks=2).double(), F.cross_entropy, 0.1, num_particles=3)
    with torch.no_grad():
        probabilities = conv.predict_particles(images).softmax(-1).mean(0)
        torch.testing.assert_close(conv.predict(images), probabilities.log())


# ---------------------------------------------------------------------------------------------
# Meta-gradients

def test_chaser_gradient_reaches_only_the_follower():
    """The meta-gradient equals the one with the leader replaced by a constant tensor."""
    batch = sinusoid_batch()
    alg = BMAML(small_mlp(), F.mse_loss, 0.02, inner_steps=2, num_particles=3, leader_steps=2)
    loss, grads = alg.meta_gradient(batch)
    theta = alg.meta_parameters()
    total = 0
    for i in range(batch.num_tasks):
        sx, sy, qx, qy = (t[i] for t in batch)
        leader = alg.lead(alg.adapt(sx, sy, theta), torch.cat([sx, qx]), torch.cat([sy, qy]))
        constant = {k: torch.tensor(v.tolist(), dtype=v.dtype) for k, v in leader.items()}
        total = total + chaser_loss(alg.adapt(sx, sy, theta), constant)
    total = total / batch.num_tasks
    expected = torch.autograd.grad(total, list(theta.values()))
    torch.testing.assert_close(loss, total.detach())
    for (k, _), g in zip(theta.items(), expected):
        torch.testing.assert_close(grads[k], g, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("vectorise", [True, False])
@pytest.mark.parametrize("noise_variance", [None, 0.25])
def test_one_particle_without_chaser_is_maml(vectorise, noise_variance):
    """M = 1: SVGD is gradient ascent on log p(D|theta) = -N c L(theta), i.e. MAML with alpha = eps N c."""
    batch, eps, steps = sinusoid_batch(shots=5), 0.004, 2
    c = 1.0 if noise_variance is None else 1 / (2 * noise_variance)
    model = small_mlp()
    maml = MAML(copy.deepcopy(model), F.mse_loss, inner_lr=eps * 5 * c, inner_steps=steps, vectorise=vectorise)
    bmaml = BMAML(model, F.mse_loss, inner_lr=eps, inner_steps=steps, num_particles=1, chaser=False,
                  noise_variance=noise_variance, vectorise=vectorise)
    loss, grads = bmaml.meta_gradient(batch)
    expected_loss, expected = maml.meta_gradient(batch)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=0)
    for k, g in expected.items():
        torch.testing.assert_close(grads[k][0], g, rtol=1e-10, atol=1e-14)
    with torch.no_grad():
        torch.testing.assert_close(bmaml.predict(batch, inner_steps=3), maml.predict(batch, inner_steps=3))


def fixed_leader_objective(alg, batch, leaders):
    """mean_i chaser(adapt_i(theta), leader_i) with the leaders held fixed: the function the meta-gradient
    differentiates (the stop-gradient makes the meta-loss itself another function of theta)."""
    theta = alg.meta_parameters()
    return sum(chaser_loss(alg.adapt(batch.support_x[i], batch.support_y[i], theta), leaders[i])
               for i in range(batch.num_tasks)) / batch.num_tasks


@pytest.mark.parametrize("share_features", [False, True])
@pytest.mark.parametrize("vectorise", [True, False])
def test_chaser_meta_gradient_matches_finite_differences(share_features, vectorise):
    batch = sinusoid_batch(tasks=2)
    alg = BMAML(small_mlp(), F.mse_loss, 0.02, inner_steps=1, num_particles=3, leader_steps=1, bandwidth=2.0,
                prior_precision=0.1, share_features=share_features, vectorise=vectorise)
    theta, leaders = alg.meta_parameters(), []
    for i in range(batch.num_tasks):
        sx, sy, qx, qy = (t[i] for t in batch)
        leaders.append(alg.lead(alg.adapt(sx, sy, theta), torch.cat([sx, qx]), torch.cat([sy, qy])))
    loss, grad = meta_grad(alg, batch)
    base = flat_params(alg.model)
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        v = torch.randn(base.numel(), generator=g, dtype=torch.float64)
        values = []
        for sign in (1, -1):
            set_flat(alg.model, base + sign * 1e-6 * v)
            values.append(fixed_leader_objective(alg, batch, leaders).item())
        set_flat(alg.model, base)
        fd = (values[0] - values[1]) / 2e-6
        assert abs(fd - grad @ v) <= 1e-6 * abs(fd), (fd, (grad @ v).item())


def test_vectorised_path_equals_per_task_path():
    batch, model = sinusoid_batch(), small_mlp()
    loop = BMAML(copy.deepcopy(model), F.mse_loss, 0.02, inner_steps=2, num_particles=3, vectorise=False)
    vec = BMAML(model, F.mse_loss, 0.02, inner_steps=2, num_particles=3, vectorise=True)
    assert vec.vectorised and not loop.vectorised
    loop.load_state_dict(vec.state_dict())
    (lv, gv), (ll, gl) = meta_grad(vec, batch), meta_grad(loop, batch)
    torch.testing.assert_close(lv, ll, rtol=1e-12, atol=0)
    torch.testing.assert_close(gv, gl, rtol=1e-9, atol=1e-14)


def test_emaml_is_the_mean_of_separate_mamls():
    batch, m = sinusoid_batch(), 3
    emaml = EMAML(small_mlp(), F.mse_loss, 0.05, inner_steps=2, num_particles=m)
    loss, grads = emaml.meta_gradient(batch)
    losses = []
    for p in range(m):
        single = small_mlp()
        with torch.no_grad():
            for k, w in single.named_parameters():
                w.copy_(emaml.meta_parameters()[k][p])
        maml_loss, maml_grads = MAML(single, F.mse_loss, 0.05, 2).meta_gradient(batch)
        losses.append(maml_loss)
        for k, g in maml_grads.items():
            torch.testing.assert_close(grads[k][p], g / m, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(loss, torch.stack(losses).mean())


def test_svgd_particles_interact():
    """With M > 1 and the kernel, a particle's step depends on the others (EMAML's would not)."""
    batch = sinusoid_batch(tasks=1)
    alg = BMAML(small_mlp(), F.mse_loss, 0.05, num_particles=3)
    sx, sy = batch.support_x[0], batch.support_y[0]
    theta = {k: v.detach() for k, v in alg.meta_parameters().items()}
    moved = {k: v.clone() for k, v in theta.items()}
    for v in moved.values():
        v[2] += 0.3
    a, b = alg.adapt(sx, sy, theta), alg.adapt(sx, sy, moved)
    assert (a["0.weight"][0] - b["0.weight"][0]).abs().max() > 1e-6


# ---------------------------------------------------------------------------------------------
# Bad input

@pytest.mark.parametrize("kwargs,match", [
    (dict(num_particles=0), r"num_particles=0 is out of range: allowed >= 1"),
    (dict(leader_steps=0), r"leader_steps=0 is out of range: allowed >= 1"),
    (dict(inner_steps=0), r"inner_steps=0 is out of range: allowed >= 1"),
    (dict(bandwidth=0.0), r"bandwidth=0.0 is out of range: allowed a finite number > 0"),
    (dict(bandwidth=-1.0), r"bandwidth=-1.0 is out of range"),
    (dict(inner_lr=0.0), r"inner_lr=0.0 is out of range"),
    (dict(noise_variance=-0.1), r"noise_variance=-0.1 is out of range"),
    (dict(prior_precision=-1.0), r"prior_precision=-1.0 is out of range: allowed a finite number >= 0"),
])
def test_bad_arguments(kwargs, match):
    model = small_mlp()
    before = {k: v.shape for k, v in model.named_parameters()}
    with pytest.raises(ValueError, match=match):
        BMAML(model, F.mse_loss, **{"inner_lr": 0.01, **kwargs})
    assert {k: v.shape for k, v in model.named_parameters()} == before  # refused before changing the model


def test_bad_svgd_input():
    x, s = random_particles(4, 3)
    with pytest.raises(ValueError, match=r"bandwidth=0 is out of range: allowed a finite number > 0"):
        svgd_direction(x, s, bandwidth=0)
    with pytest.raises(ValueError, match=r"bandwidth=-2.0 is out of range"):
        svgd_direction(x, s, bandwidth=-2.0)
    with pytest.raises(ValueError, match=r"scores have shape \(4, 2\), the particles \(4, 3\)"):
        svgd_direction(x, s[:, :2])
    with pytest.raises(ValueError, match=r"need \(M, D\) with M >= 1"):
        svgd_direction(x[0], s[0])
    with pytest.raises(ValueError, match=r"need \(M, D\) with M >= 1"):
        svgd_direction(x[:0], s[:0])
    with pytest.raises(ValueError, match="share_features=True needs .* nn.Linear head"):
        EMAML(nn.Sequential(nn.Conv1d(1, 1, 1)), F.mse_loss, 0.1, share_features=True)
    alg = EMAML(small_mlp(), F.mse_loss, 0.1, num_particles=2)
    with pytest.raises(ValueError, match="already holds 2 particles"):
        BMAML(alg.model, F.mse_loss, 0.1, num_particles=2)
    with pytest.raises(ValueError, match="already holds 2 particles"):
        BMAML(copy.deepcopy(alg.model), F.mse_loss, 0.1, num_particles=2)


# ---------------------------------------------------------------------------------------------
# Training

@pytest.mark.parametrize("cls,kwargs", [(BMAML, dict(inner_lr=1e-3, noise_variance=0.05)), (EMAML, dict(inner_lr=0.01))])
def test_short_training_lowers_the_query_error(cls, kwargs):
    torch.manual_seed(0)
    alg = cls(MLP([1, 40, 40, 1]), F.mse_loss, num_particles=4, eval_inner_steps=5, **kwargs)
    test = Sinusoid(10, 50)
    before = evaluate(alg, test, num_tasks=50)["mean"]
    meta_train(alg, Sinusoid(10, 10), 300, 5, outer_lr=1e-3, progress=False, device="cpu")
    after = evaluate(alg, test, num_tasks=50)["mean"]
    assert after < 0.8 * before, (before, after)
