"""Ambiguous classification (PLATIPUS, sec. 6; chapter 7): the generated-shape tasks, the coverage,
accuracy and NLL of sampled classifiers, MAML + noise, and PLATIPUS on image classification."""
import math

import pytest
import torch
import torch.nn.functional as F

from mlcourse.algorithms import MAML, PLATIPUS
from mlcourse.algorithms.maml_noise import MAMLNoise
from mlcourse.analysis.ambiguous import (accuracy, ambiguity_scores, assigned_hypotheses, coverage,
                                         predictive_nll)
from mlcourse.nn import ConvNet
from mlcourse.tasks.ambiguous import SHAPE_ATTRIBUTES, AmbiguousShapes, render_shapes
from mlcourse.train import meta_train


def sample(sampler=None, tasks=6, seed=0):
    sampler = sampler or AmbiguousShapes(shots=4, queries=6, image_size=20)
    return sampler, *sampler.sample(tasks, torch.Generator().manual_seed(seed), return_info=True)


def task_attribute_values(info, which):
    """(T, n, m): the values of each task's m chosen attributes on its support or query images."""
    attrs = info["image_attributes"]
    k = info["support_has"].shape[1]
    part = attrs[:, :k] if which == "support" else attrs[:, k:]
    return part.gather(2, info["attributes"].unsqueeze(1).expand(-1, part.shape[1], -1))


# -- the sampler --------------------------------------------------------------------------------
def test_support_positives_share_all_three_attributes_and_negatives_none():
    sampler, batch, info = sample()
    values = task_attribute_values(info, "support")                     # (T, 2K, 3)
    has = values == info["values"].unsqueeze(1)
    positive = batch.support_y == 1
    assert batch.support_x.shape == (6, 8, 1, 20, 20) and positive.sum(1).eq(4).all()
    assert has[positive].all()                                          # every positive: all three
    assert not has[~positive].any()                                     # every negative: none
    assert torch.equal(has, info["support_has"])
    assert info["attributes"].unique(dim=1).shape[1] == 3               # three distinct attributes


def test_query_positives_are_exactly_the_images_with_the_hypothesis_pair():
    sampler, batch, info = sample()
    has = task_attribute_values(info, "query") == info["values"].unsqueeze(1)   # (T, Q, 3)
    assert torch.equal(has, info["query_has"])
    pairs = sampler.hypotheses()
    assert pairs == [(0, 1), (0, 2), (1, 2)]
    for t in range(batch.num_tasks):
        pair = list(pairs[info["hypothesis"][t]])
        assert torch.equal(batch.query_y[t].bool(), has[t][:, pair].all(-1))
    # balanced, and the same patterns for every hypothesis (the images do not give it away)
    assert batch.query_y.sum(1).eq(6).all() and batch.query_y.shape == (6, 12)
    assert (info["query_has"] == info["query_has"][:1]).all()
    assert torch.equal(sampler.hypothesis_labels(info["query_has"]).gather(
        1, info["hypothesis"].view(-1, 1, 1).expand(-1, 1, 12)).squeeze(1), batch.query_y)
    # positives share the pair: two of the three attributes, some of them the third as well
    assert has[batch.query_y.bool()].sum(-1).min() == 2


def test_the_other_attributes_are_random_and_values_in_range():
    _, batch, info = sample(tasks=40)
    assert batch.support_x.min() >= 0 and batch.support_x.max() <= 1
    assert batch.support_y.dtype == torch.int64
    rate = info["image_attributes"].float().mean().item()
    assert 0.4 < rate < 0.6


def test_same_seed_same_tasks_and_other_seed_other_tasks():
    s = AmbiguousShapes(shots=2, queries=3, image_size=16)
    a, b, c = (s.sample(3, torch.Generator().manual_seed(seed)) for seed in (5, 5, 6))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a.support_x, c.support_x)


def test_more_task_attributes_and_queries_of_any_multiple():
    sampler, batch, info = sample(AmbiguousShapes(shots=1, queries=8, task_attributes=4, image_size=16))
    assert len(sampler.hypotheses()) == 4 and batch.query_y.shape == (6, 16)
    assert batch.query_y.sum(1).eq(8).all()


@pytest.mark.parametrize("bad, message", [
    (dict(task_attributes=9), r"task_attributes=9 is out of range: allowed in 2\.\.8 \(the generator draws 8"),
    (dict(task_attributes=1), r"task_attributes=1 is out of range: allowed in 2\.\.8"),
    (dict(shots=0), r"shots=0 is out of range: allowed >= 1"),
    (dict(queries=4), r"queries=4 is not a multiple of task_attributes=3"),
    (dict(queries=0), r"queries=0 is out of range"),
    (dict(image_size=8), r"image_size=8 is out of range: allowed in 16\.\.256"),
    (dict(noise_std=-1.0), r"noise_std=-1\.0 is out of range"),
])
def test_bad_settings_are_refused_naming_the_value_and_the_range(bad, message):
    with pytest.raises(ValueError, match=message):
        AmbiguousShapes(**bad)


def test_render_shapes_draws_what_the_attributes_say():
    n = 64
    g = torch.Generator().manual_seed(0)
    names = list(SHAPE_ATTRIBUTES)

    def draw(name, value):
        a = (torch.rand(n, len(names), generator=g) < 0.5).long()
        a[:, names.index(name)] = value
        return render_shapes(a, image_size=28, noise_std=0.0, generator=g)[:, 0]

    border = lambda x: torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], 1)  # noqa: E731
    assert border(draw("framed", 1)).mean(1).min() > 0.6
    assert border(draw("framed", 0)).mean(1).max() < 0.6
    assert draw("bright", 1).amax((1, 2)).min() > 0.84
    big, small = draw("large", 1), draw("large", 0)
    assert (big > 0.3).float().mean() > (small > 0.3).float().mean()
    with pytest.raises(ValueError, match=r"expected \(n, 8\)"):
        render_shapes(torch.zeros(3, 5))


# -- the metrics ----------------------------------------------------------------------------------
def logits_for(labels, confidence=4.0):
    """Logits of a classifier that predicts ``labels`` (..., Q) with the given margin."""
    sign = labels.double() * 2 - 1
    return torch.stack([-confidence * sign / 2, confidence * sign / 2], dim=-1)


def test_coverage_counts_the_hypotheses_the_samples_explain():
    sampler, batch, info = sample(tasks=4)
    labels = sampler.hypothesis_labels(info["query_has"])              # (T, 3, Q)
    three = torch.stack([logits_for(labels[:, h]) for h in range(3)])  # each sample: one hypothesis
    assert torch.equal(assigned_hypotheses(three, labels), torch.arange(3).view(3, 1).expand(3, 4))
    assert coverage(three, labels).tolist() == [3.0] * 4
    same = torch.stack([logits_for(labels[:, 1])] * 5)
    assert coverage(same, labels).tolist() == [1.0] * 4
    assert coverage(three[:1], labels).tolist() == [1.0] * 4           # one classifier: 1
    two = torch.stack([logits_for(labels[:, 0]), logits_for(labels[:, 2]), logits_for(labels[:, 0])])
    assert coverage(two, labels).tolist() == [2.0] * 4


def test_accuracy_and_nll_on_hand_made_predictions():
    sampler, batch, info = sample(tasks=4)
    labels = sampler.hypothesis_labels(info["query_has"])
    truth = batch.query_y
    right = logits_for(truth)[None]
    torch.testing.assert_close(accuracy(right, truth), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(predictive_nll(right, truth),
                               torch.full((4,), math.log1p(math.exp(-4.0)), dtype=torch.float64))
    # half right, half wrong: accuracy is the mean over samples; the NLL is the mixture's
    mixed = torch.cat([right, logits_for(1 - truth)[None]])
    torch.testing.assert_close(accuracy(mixed, truth), torch.full((4,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(predictive_nll(mixed, truth),
                               torch.full((4,), math.log(2.0), dtype=torch.float64))
    uniform = torch.zeros(1, 4, truth.shape[1], 2)
    scores = ambiguity_scores(uniform, truth, labels)
    torch.testing.assert_close(scores["nll"], torch.full((4,), math.log(2.0), dtype=torch.float64))
    assert scores["coverage"].tolist() == [1.0] * 4
    with pytest.raises(ValueError, match="expected 4 tasks and 12 queries"):
        coverage(uniform, labels[:3])


# -- the algorithms on these tasks ----------------------------------------------------------------
def tiny_net(seed=0):
    torch.manual_seed(seed)
    return ConvNet(ways=2, hidden=4, blocks=2).double()


def double(batch):
    return type(batch)(batch.support_x.double(), batch.support_y, batch.query_x.double(), batch.query_y)


def test_platipus_classification_step_has_a_finite_meta_gradient_and_trains():
    sampler = AmbiguousShapes(shots=2, queries=3, image_size=16)
    batch = double(sampler.sample(2, torch.Generator().manual_seed(0)))
    alg = PLATIPUS(tiny_net(), F.cross_entropy, inner_lr=0.1, kl_weight=0.05, init_variance=1e-3,
                   vectorise=False)
    loss, grads = alg.meta_gradient(batch)
    assert torch.isfinite(loss)
    assert set(grads) == {k for k, _ in alg.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert grads["head.weight"].abs().sum() > 0 and grads["log_prior_var/head.weight"].abs().sum() > 0
    samples = alg.sample_predictions(batch, 3)
    assert samples.shape == (3, 2, 6, 2) and not torch.equal(samples[0], samples[1])
    alg = PLATIPUS(tiny_net().float(), F.cross_entropy, inner_lr=0.1, init_variance=1e-3)
    history = meta_train(alg, sampler, 2, 2, progress=False, device="cpu")
    assert len(history["loss"]) == 2 and all(math.isfinite(v) for v in history["loss"])


def test_maml_noise_adds_seeded_gradient_noise_to_maml():
    batch = double(AmbiguousShapes(shots=2, queries=3, image_size=16).sample(2, torch.Generator().manual_seed(1)))
    noisy = MAMLNoise(tiny_net(), F.cross_entropy, inner_lr=0.1, inner_steps=2, noise_std=0.5, seed=3)
    plain = MAML(tiny_net(), F.cross_entropy, inner_lr=0.1, inner_steps=2)
    with torch.no_grad():
        samples = noisy.sample_predictions(batch, 4)
        again = noisy.sample_predictions(batch, 4)
        other = noisy.sample_predictions(batch, 4, seed=4)
        maml = plain.predict(batch)
    assert samples.shape == (4, 2, 6, 2) and torch.equal(samples, again)
    assert not torch.equal(samples, other) and not torch.equal(samples[0], samples[1])
    # the noise is centred: its mean over many draws is MAML's step (one step: linear in eps)
    one = MAMLNoise(tiny_net(), F.cross_entropy, inner_lr=0.1, noise_std=0.5)
    sx, sy = batch.support_x[0], batch.support_y[0]
    eps = torch.randn(400, 1, sum(p.numel() for p in one.model.parameters()),
                      generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        phis = [one.adapt(sx, sy, None, 1, e) for e in eps]
        mean = {k: torch.stack([p[k] for p in phis]).mean(0) for k in phis[0]}
        ref = MAML(tiny_net(), F.cross_entropy, inner_lr=0.1).adapt(sx, sy)
    assert max((mean[k] - ref[k]).abs().max().item() for k in ref) < 0.02
    assert not torch.equal(maml, samples[0])
    # meta-training with and without noise: finite, and without it exactly MAML's meta-loss
    loss, grads = noisy.meta_gradient(batch)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads.values())
    quiet = MAMLNoise(tiny_net(), F.cross_entropy, inner_lr=0.1, inner_steps=2, train_noise=False)
    torch.testing.assert_close(quiet.meta_loss(batch), plain.meta_loss(batch))
    state = noisy.state_dict()
    before = noisy.meta_loss(batch)
    noisy.load_state_dict(state)
    torch.testing.assert_close(noisy.meta_loss(batch), before)
    with pytest.raises(ValueError, match="noise_std=0 is out of range"):
        MAMLNoise(tiny_net(), F.cross_entropy, inner_lr=0.1, noise_std=0)


def test_maml_noise_resumes_from_a_checkpoint_as_if_never_stopped(tmp_path):
    sampler = AmbiguousShapes(shots=1, queries=3, image_size=16)

    def run(iterations, path):
        alg = MAMLNoise(tiny_net().float(), F.cross_entropy, inner_lr=0.1, noise_std=0.5, seed=2)
        meta_train(alg, sampler, iterations, 2, progress=False, device="cpu", checkpoint=path,
                   checkpoint_every=1)
        return alg

    run(2, tmp_path / "a.pt")
    resumed = run(3, tmp_path / "a.pt")
    straight = run(3, tmp_path / "b.pt")
    for (k, a), (_, b) in zip(resumed.model.state_dict().items(), straight.model.state_dict().items()):
        assert torch.equal(a, b), k
