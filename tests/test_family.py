"""Chapter 10's wider family: metric-based (ProtoNet, Matching, Relation), closed-form (R2-D2), hybrid
(Proto-MAML, ANIL) and black-box (SNAIL) learners. Each meta-gradient against finite differences, each
defining formula against an independent computation, bad input, vmap against the loop, seeds."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlcourse import recipes
from mlcourse.algorithms import ANIL, MAML, R2D2, SNAIL, MatchingNet, ProtoMAML, ProtoNet, RelationNet
from mlcourse.algorithms.amortised import split_task
from mlcourse.algorithms.r2d2 import ridge_weights, with_bias_column
from mlcourse.algorithms.relation_net import relation_mse
from mlcourse.nn import MLP, ConvNet, SNAILSequence
from mlcourse.tasks import TaskBatch

from _helpers import check_directional_finite_differences, image_batch, sinusoid_batch

WAYS = 3


def embedding(seed=0):
    """A float64 conv-net embedding (2 blocks of 4 channels, no head), seeded."""
    torch.manual_seed(seed)
    return ConvNet(None, hidden=4, blocks=2).double()


def mlp_embedding(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(MLP([1, 8, 8]), nn.ReLU()).double()


def make(name, vectorise="auto", seed=0):
    """Each new learner on a small float64 network, for 3-way image tasks."""
    e = embedding(seed)
    if name == "protonet":
        return ProtoNet(e, F.cross_entropy, vectorise=vectorise)
    if name == "matching":
        return MatchingNet(e, F.cross_entropy, vectorise=vectorise)
    if name == "relation":
        return RelationNet(e, relation_mse, features=4, hidden=3, vectorise=vectorise)
    if name == "r2d2":
        alg = R2D2(e, F.cross_entropy, init_lambda=0.7, init_scale=2.0, vectorise=vectorise)
        with torch.no_grad():
            alg.meta_tensors["bias"].fill_(0.3)
        return alg
    if name == "snail":
        return SNAIL(e, F.cross_entropy, features=4, outputs=WAYS, key=3, value=3, filters=4, vectorise=vectorise)
    if name == "protomaml":
        return ProtoMAML(e, F.cross_entropy, inner_lr=0.1, inner_steps=2, vectorise=vectorise)
    if name == "anil":
        torch.manual_seed(seed)
        return ANIL(ConvNet(WAYS, hidden=4, blocks=2).double(), F.cross_entropy, inner_lr=0.3, inner_steps=2,
                    vectorise=vectorise)
    raise KeyError(name)


NAMES = ["protonet", "matching", "relation", "r2d2", "snail", "protomaml", "anil"]


def batch(shots=2, seed=0):
    return image_batch(tasks=2, ways=WAYS, shots=shots, queries=2, seed=seed)


def embeddings(alg, x):
    """The learner's embedding network run as an ordinary module (an independent path to the features)."""
    net = alg.model["embedding"] if isinstance(alg.model, nn.ModuleDict) else alg.model
    return net(x)


# -- meta-gradients ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_meta_gradient_matches_finite_differences(name):
    alg = make(name)
    grads = check_directional_finite_differences(alg, batch())
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("name", ["protomaml", "anil"])
def test_first_order_drops_the_inner_jacobian(name):
    """First order is no loss's gradient, so it is checked by what it must not be: the second-order one."""
    second, first = make(name), make(name)
    first.first_order = True
    b = batch()
    _, g2 = second.meta_gradient(b)
    _, g1 = first.meta_gradient(b)
    assert g1.keys() == g2.keys()
    assert any(not torch.allclose(g1[k], g2[k]) for k in g1)


@pytest.mark.parametrize("name", ["r2d2", "snail"])
def test_regression_meta_gradient_matches_finite_differences(name):
    e = mlp_embedding()
    alg = (R2D2(e, F.mse_loss, init_lambda=0.5) if name == "r2d2"
           else SNAIL(e, F.mse_loss, features=8, outputs=1, key=3, value=3, filters=4))
    b = sinusoid_batch(tasks=3, shots=5, queries=7)
    check_directional_finite_differences(alg, b)
    assert alg.predict(b).shape == b.query_y.shape


def test_anil_regression_meta_gradient_matches_finite_differences():
    torch.manual_seed(0)
    alg = ANIL(MLP([1, 8, 8, 1]).double(), F.mse_loss, inner_lr=0.05, inner_steps=2)
    assert alg.head == ["4.weight", "4.bias"]
    check_directional_finite_differences(alg, sinusoid_batch())


# -- what each method computes, against an independent computation ---------------------------------

def test_protonet_logits_are_negative_squared_distances_to_prototypes():
    alg, b = make("protonet"), batch(shots=3)
    logits = alg.predict(b)
    for i in range(b.num_tasks):
        support, query = embeddings(alg, b.support_x[i]), embeddings(alg, b.query_x[i])
        prototypes = torch.stack([support[b.support_y[i] == k].mean(0) for k in range(WAYS)])
        expected = -torch.cdist(query, prototypes) ** 2
        torch.testing.assert_close(logits[i], expected, rtol=1e-9, atol=1e-9)


def test_protonet_is_a_linear_classifier_on_the_embedding():
    """-||f - c_k||^2 = (2 c_k)^T f - ||c_k||^2 - ||f||^2: the linear layer's logits plus a per-query term."""
    alg, b = make("protonet"), batch()
    phi = alg.adapt(b.support_x[0], b.support_y[0])
    c = phi["task/prototypes"]
    f = embeddings(alg, b.query_x[0])
    linear = f @ (2 * c).T - (c ** 2).sum(-1)
    torch.testing.assert_close(alg.predict(b)[0], linear - (f ** 2).sum(-1, keepdim=True))


def test_matching_net_is_cosine_attention_over_support_labels():
    alg, b = make("matching"), batch()
    out = alg.predict(b)
    for i in range(b.num_tasks):
        s, q = embeddings(alg, b.support_x[i]), embeddings(alg, b.query_x[i])
        cosine = F.cosine_similarity(q.unsqueeze(1), s.unsqueeze(0), dim=-1)
        attention = cosine.softmax(-1)
        expected = torch.stack([attention[:, b.support_y[i] == k].sum(-1) for k in range(WAYS)], -1)
        torch.testing.assert_close(out[i].exp(), expected)
    assert torch.allclose(out.exp().sum(-1), torch.ones((), dtype=out.dtype))  # a distribution over classes


def test_relation_net_scores_pairs_with_class_sums():
    alg, b = make("relation"), batch(shots=2)
    scores = alg.predict(b)
    relation = alg.model["relation"]
    for i in range(b.num_tasks):
        s, q = embeddings(alg, b.support_x[i]), embeddings(alg, b.query_x[i])
        classes = torch.stack([s[b.support_y[i] == k].sum(0) for k in range(WAYS)])
        pairs = torch.stack([torch.stack([torch.cat([qj, ck]) for ck in classes]) for qj in q])  # [m, N, 2d]
        expected = relation(pairs)  # one batch: its batch norm sees every pair of the task
        torch.testing.assert_close(scores[i], expected)
    assert ((scores > 0) & (scores < 1)).all()
    labels = b.query_y[0]
    assert torch.isclose(relation_mse(scores[0], labels),
                         ((scores[0] - F.one_hot(labels, WAYS).double()) ** 2).sum(-1).mean())


@pytest.mark.parametrize("outputs", [1, WAYS])
def test_r2d2_woodbury_head_equals_the_primal_ridge_solution(outputs):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 10, generator=g, dtype=torch.float64)  # n = 6 examples, d = 10 features
    y = torch.randn(6, outputs, generator=g, dtype=torch.float64)
    lam = torch.tensor(0.37, dtype=torch.float64)
    primal = torch.linalg.solve(x.T @ x + lam * torch.eye(10, dtype=torch.float64), x.T @ y)
    torch.testing.assert_close(ridge_weights(x, y, lam), primal)


def test_r2d2_predictions_use_the_explicit_ridge_head():
    alg, b = make("r2d2"), batch()
    out = alg.predict(b)
    scale, bias, lam = alg.meta_tensors["scale"], alg.meta_tensors["bias"], alg.lam
    assert torch.isclose(lam, torch.tensor(0.7, dtype=torch.float64))
    for i in range(b.num_tasks):
        x = with_bias_column(embeddings(alg, b.support_x[i]))
        y = F.one_hot(b.support_y[i], WAYS).double()
        w = torch.linalg.solve(x.T @ x + lam * torch.eye(x.shape[1], dtype=torch.float64), x.T @ y)
        torch.testing.assert_close(out[i], scale * with_bias_column(embeddings(alg, b.query_x[i])) @ w + bias)


def test_r2d2_fixed_lambda_is_not_learned():
    alg = R2D2(embedding(), F.cross_entropy, init_lambda=2.0, learn_lambda=False)
    assert set(alg.meta_tensors) == {"scale", "bias"} and torch.isclose(alg.lam, torch.tensor(2.0).double())
    _, grads = alg.meta_gradient(batch())
    assert "log_lambda" not in grads and "scale" in grads


def test_anil_adapts_only_the_head():
    alg, b = make("anil"), batch()
    theta = alg.meta_parameters()
    phi = alg.adapt(b.support_x[0], b.support_y[0])
    assert alg.head == ["head.weight", "head.bias"] and phi.keys() == theta.keys()
    for k in theta:
        if k in alg.head:
            assert not torch.equal(phi[k], theta[k]), k
        else:
            assert phi[k] is theta[k] and torch.equal(phi[k], theta[k]), k


def test_anil_head_step_equals_a_hand_written_gradient_step():
    alg, b = make("anil"), batch()
    alg.inner_steps = 1
    theta = {k: v.detach() for k, v in alg.meta_parameters().items()}
    head = {k: theta[k].clone().requires_grad_() for k in alg.head}
    features = alg.model.features(b.support_x[0]).mean((-2, -1))
    loss = F.cross_entropy(F.linear(features, head["head.weight"], head["head.bias"]), b.support_y[0])
    grads = torch.autograd.grad(loss, list(head.values()))
    phi = alg.adapt(b.support_x[0], b.support_y[0])
    for (k, h), g in zip(head.items(), grads):
        torch.testing.assert_close(phi[k], h - 0.3 * g)


def test_anil_body_still_gets_a_meta_gradient():
    alg, b = make("anil"), batch()
    _, grads = alg.meta_gradient(b)
    assert set(grads) == {k for k, _ in alg.named_parameters()}
    assert grads["features.0.weight"].abs().sum() > 0


def test_protomaml_initial_head_is_the_prototype_classifier():
    alg, b = make("protomaml"), batch(shots=2)
    theta = alg.meta_parameters()
    f = embeddings(alg, b.support_x[0])
    c = torch.stack([f[b.support_y[0] == k].mean(0) for k in range(WAYS)])
    phi0 = alg.adapt(b.support_x[0], b.support_y[0], inner_steps=0)
    torch.testing.assert_close(phi0["head.weight"], 2 * c)
    torch.testing.assert_close(phi0["head.bias"], -(c ** 2).sum(-1))
    assert all(torch.equal(phi0[k], theta[k]) for k in theta)


def test_protomaml_before_adaptation_predicts_as_protonet():
    alg, b = make("protomaml"), batch(shots=2)
    proto = ProtoNet(copy.deepcopy(alg.model), F.cross_entropy)
    before, distances = alg.predict(b, inner_steps=0), proto.predict(b)
    norms = torch.stack([(embeddings(alg, b.query_x[i]) ** 2).sum(-1) for i in range(b.num_tasks)])
    torch.testing.assert_close(before, distances + norms.unsqueeze(-1))  # a per-query constant apart
    torch.testing.assert_close(before.softmax(-1), distances.softmax(-1))
    assert torch.equal(before.argmax(-1), distances.argmax(-1))
    assert not torch.allclose(alg.predict(b), before)  # the inner steps do move it


def test_snail_queries_do_not_see_each_other():
    alg, b = make("snail"), batch()
    alg.transductive = False  # else batch norm would share the query set's statistics between queries
    out = alg.predict(b)
    alone = TaskBatch(b.support_x, b.support_y, b.query_x[:, :1], b.query_y[:, :1])
    torch.testing.assert_close(alg.predict(alone)[:, 0], out[:, 0])
    shuffled = TaskBatch(b.support_x, b.support_y, b.query_x.flip(1), b.query_y.flip(1))
    torch.testing.assert_close(alg.predict(shuffled).flip(1), out)


def test_snail_sequence_is_causal():
    torch.manual_seed(0)
    seq = SNAILSequence(5, 2, key=3, value=3, filters=4).double()
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    changed = x.clone()
    changed[:, 4:] += 1.0
    a, c = seq(x), seq(changed)
    torch.testing.assert_close(a[:, :4], c[:, :4])
    assert not torch.allclose(a[:, 4:], c[:, 4:])


def test_snail_reads_the_support_labels():
    """Swapping two classes' labels in the support set swaps the prediction's columns' sources: the
    output must change (a learner that ignored the labels would not)."""
    alg, b = make("snail"), batch()
    swapped = b.support_y.clone()
    swapped[b.support_y == 0], swapped[b.support_y == 1] = 1, 0
    other = TaskBatch(b.support_x, swapped, b.query_x, b.query_y)
    assert not torch.allclose(alg.predict(b), alg.predict(other))


@pytest.mark.parametrize("name", ["protonet", "matching", "r2d2", "snail"])
def test_non_transductive_embeds_each_query_beside_the_support_set(name):
    """Batch norm then sees the support set plus that one query: its embedding is the last row of the
    embedding of the two together."""
    alg, b = make(name), batch()
    alg.transductive = False
    out = alg.predict(b)
    for i in range(b.num_tasks):
        params, state = split_task(alg.adapt(b.support_x[i], b.support_y[i]))
        for j in range(b.query_x.shape[1]):
            query = alg.embed(params, torch.cat([b.support_x[i], b.query_x[i, j:j + 1]]))[-1:]
            torch.testing.assert_close(out[i, j], alg.outputs(params, state, query)[0])
    alg.transductive = True
    assert not torch.allclose(alg.predict(b), out)


# -- vmap against the loop -------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_vectorised_path_equals_per_task_path(name):
    b = batch()
    looped, mapped = make(name, vectorise=False), make(name, vectorise=True)
    assert not looped.vectorised and mapped.vectorised
    l1, g1 = looped.meta_gradient(b)
    l2, g2 = mapped.meta_gradient(b)
    torch.testing.assert_close(l1, l2)
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], msg=k)
    torch.testing.assert_close(looped.predict(b), mapped.predict(b))
    with torch.no_grad():  # evaluation: no outer graph
        torch.testing.assert_close(looped.predict(b), mapped.predict(b))


# -- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [ProtoNet, MatchingNet, R2D2])
def test_no_inner_steps_allowed(cls):
    with pytest.raises(ValueError, match=r"inner_steps=1 is out of range: allowed in 0..0 \(" + cls.__name__):
        cls(embedding(), F.cross_entropy, inner_steps=1)
    with pytest.raises(ValueError, match="eval_inner_steps=3 is out of range"):
        cls(embedding(), F.cross_entropy, eval_inner_steps=3)


@pytest.mark.parametrize("name", ["protonet", "matching", "relation", "protomaml"])
def test_classifiers_refuse_regression_targets(name):
    alg = make(name)
    b = sinusoid_batch()
    with pytest.raises(ValueError, match="classifies: support_y holds real-valued targets"):
        alg.meta_loss(b)


@pytest.mark.parametrize("name", NAMES[:-1])
def test_a_class_without_support_examples_is_named(name):
    alg, b = make(name), batch()
    sy = b.support_y.clone()
    sy[1, sy[1] == 1] = 0  # task 1 has no example of class 1 (class 2 keeps the label range 0..2)
    with pytest.raises(ValueError, match="every class 0..2 needs at least one support example: task 1, class 1"):
        alg.meta_loss(TaskBatch(b.support_x, sy, b.query_x, b.query_y))


def test_snail_refuses_another_number_of_ways():
    alg = make("snail")
    b = image_batch(tasks=2, ways=4, shots=1, queries=1)
    with pytest.raises(ValueError, match="built with outputs=3, but the tasks have 4 classes"):
        alg.predict(b)


def test_bad_hyperparameters_are_named():
    with pytest.raises(ValueError, match="init_lambda=0.0 is out of range"):
        R2D2(embedding(), F.cross_entropy, init_lambda=0.0)
    with pytest.raises(ValueError, match="head='body' is not a module of the model holding parameters"):
        ANIL(ConvNet(WAYS), F.cross_entropy, inner_lr=0.1, head="body")
    with pytest.raises(ValueError, match="hidden=0 is out of range"):
        RelationNet(embedding(), features=4, hidden=0)
    with pytest.raises(ValueError, match="lr_halving_every=0 is out of range"):
        ProtoNet(embedding(), F.cross_entropy, lr_halving_every=0)


def test_metric_methods_have_no_regression_row():
    for method in ("protonet", "matching-net", "relation-net", "protomaml"):
        with pytest.raises(ValueError, match=f"{method} has no recipe for sinusoid: allowed omniglot 5-way, "
                                             "omniglot 20-way"):
            recipes.recipe(method, "sinusoid")
    for method in ("r2d2", "anil", "snail"):
        assert recipes.recipe(method, "sinusoid").benchmark == "sinusoid"


def test_protonet_halves_its_step_size_every_2000_episodes():
    alg = recipes.build_algorithm("protonet", "omniglot", 5)
    assert [alg.outer_lr_factor(i, 10 ** 5) for i in (0, 1999, 2000, 4000)] == [1.0, 1.0, 0.5, 0.25]


# -- same seed, same numbers -----------------------------------------------------------------------

FAMILY = ["protonet", "matching-net", "relation-net", "r2d2", "protomaml", "anil", "snail"]


@pytest.mark.parametrize("method", FAMILY)
def test_same_seed_same_numbers(method):
    b = image_batch(tasks=2, ways=5, shots=1, queries=1, size=28)
    b = TaskBatch(*(t.float() if t.is_floating_point() else t for t in b))
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        alg = recipes.build_algorithm(method, "omniglot", 5)
        loss, grads = alg.meta_gradient(b)
        results.append((loss, grads, alg.predict(b)))
    (l1, g1, p1), (l2, g2, p2) = results
    assert torch.equal(l1, l2) and torch.equal(p1, p2) and all(torch.equal(g1[k], g2[k]) for k in g1)
    torch.manual_seed(1)
    other = recipes.build_algorithm(method, "omniglot", 5)
    assert not torch.equal(other.meta_gradient(b)[0], l1)


def test_convnet_without_head_returns_the_embedding_and_with_head_is_unchanged():
    torch.manual_seed(0)
    with_head = ConvNet(5)
    torch.manual_seed(0)
    without = ConvNet(None)
    x = torch.rand(3, 1, 28, 28)
    assert without.head is None and "head.weight" not in dict(without.named_parameters())
    torch.testing.assert_close(with_head(x), with_head.head(without(x)))
    assert isinstance(MAML(ConvNet(5), F.cross_entropy, 0.4).model.head, nn.Linear)
