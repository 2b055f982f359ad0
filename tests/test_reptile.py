"""Reptile, the functional inner optimisers, transduction, and the Taylor analysis of chapter 3."""
import math

import pytest
import torch
import torch.nn.functional as F

from mlcourse.algorithms import MAML
from mlcourse.algorithms.reptile import Reptile
from mlcourse.analysis import taylor
from mlcourse.functional import Adam, flatten, forward, inner_loop, params_of
from mlcourse.nn import MLP, ConvNet
from mlcourse.tasks import Sinusoid, TaskBatch
from mlcourse.train import meta_train


def sinusoid_batch(tasks=3, shots=10, seed=1):
    return Sinusoid(shots=shots, queries=5).sample(tasks, generator=torch.Generator().manual_seed(seed))


# -- the Taylor analysis -------------------------------------------------------------------------
def quadratic_tasks(dim=4, tasks=3, minibatches=3, seed=0):
    """Quadratic mini-batch losses 1/2 w'Aw + b'w: gradients are linear, Hessians constant."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(tasks):
        batches = []
        for _ in range(minibatches):
            m = torch.randn(dim, dim, generator=g, dtype=torch.float64)
            batches.append((m @ m.T / dim + torch.eye(dim, dtype=torch.float64),
                            torch.randn(dim, generator=g, dtype=torch.float64)))
        out.append(batches)
    return out


def quadratic_loss(params, minibatch):
    a, b = minibatch
    w = params["w"]
    return 0.5 * w @ a @ w + b @ w


def test_expansion_on_a_quadratic_is_exact_up_to_the_known_alpha_squared_term():
    tasks = quadratic_tasks()
    theta = {"w": torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))}
    alpha, k = 0.05, 2
    avg_grad, avg_inner = taylor.avg_grad_terms(quadratic_loss, theta, tasks)
    exact = taylor.exact_gradients(quadratic_loss, theta, tasks, alpha, k)
    predicted = taylor.predicted_gradients(avg_grad, avg_inner, alpha, k)
    # For k = 2 on a quadratic, FOMAML's and Reptile's expansions have no remainder at all ...
    for name in ("fomaml", "reptile"):
        torch.testing.assert_close(exact[name]["w"], predicted[name]["w"], rtol=0, atol=1e-12)
    # ... and MAML's remainder is exactly alpha^2 E[A_1 A_2 gbar_1] over ordered pairs of batches.
    remainder = []
    for batches in tasks:
        for i in range(len(batches)):
            for j in range(len(batches)):
                if i != j:
                    g_i = batches[i][0] @ theta["w"] + batches[i][1]
                    remainder.append(batches[i][0] @ batches[j][0] @ g_i)
    remainder = alpha ** 2 * torch.stack(remainder).mean(0)
    torch.testing.assert_close(exact["maml"]["w"] - predicted["maml"]["w"], remainder, rtol=1e-9, atol=1e-12)
    assert remainder.norm() > 1e-4  # the check above is not vacuous


def test_expansion_error_shrinks_like_alpha_squared_on_a_network():
    torch.manual_seed(0)
    # tanh, not ReLU: the expansion assumes a smooth loss (a step across a ReLU kink breaks it).
    model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    theta = params_of(model)

    def loss_of(params, minibatch):
        return F.mse_loss(forward(model, params, minibatch[0]), minibatch[1])

    g = torch.Generator().manual_seed(3)
    tasks = [[(x, 2 * torch.sin(x + p)) for x in (torch.rand(4, 1, generator=g, dtype=torch.float64) * 10 - 5
                                               for _ in range(3))] for p in (0.3, 1.7)]
    avg_grad, avg_inner = taylor.avg_grad_terms(loss_of, theta, tasks)
    errors = []
    for alpha in (0.004, 0.002):
        exact = taylor.exact_gradients(loss_of, theta, tasks, alpha, 3)
        predicted = taylor.predicted_gradients(avg_grad, avg_inner, alpha, 3)
        errors.append([(flatten(exact[n]) - flatten(predicted[n])).norm() for n in taylor.ALGORITHMS])
    slopes = [math.log2(a / b) for a, b in zip(*errors)]
    assert all(1.7 < s < 2.3 for s in slopes), slopes


def test_tasks_of_different_sizes_weigh_the_same():
    """Per-task averages first: with 2 and 3 mini-batches the expansion still holds to O(alpha^2)."""
    tasks = quadratic_tasks(minibatches=3)
    tasks[0] = tasks[0][:2]
    theta = {"w": torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))}
    avg_grad, avg_inner = taylor.avg_grad_terms(quadratic_loss, theta, tasks)
    exact = taylor.exact_gradients(quadratic_loss, theta, tasks, 1e-3, 2)
    predicted = taylor.predicted_gradients(avg_grad, avg_inner, 1e-3, 2)
    torch.testing.assert_close(exact["fomaml"]["w"], predicted["fomaml"]["w"], rtol=0, atol=1e-12)


def test_taylor_bad_input():
    tasks = quadratic_tasks(minibatches=2)
    theta = {"w": torch.zeros(4, dtype=torch.float64)}
    with pytest.raises(ValueError, match="k=3"):
        taylor.exact_gradients(quadratic_loss, theta, tasks, 0.1, 3)
    with pytest.raises(ValueError, match="k=0"):
        taylor.exact_gradients(quadratic_loss, theta, tasks, 0.1, 0)
    with pytest.raises(ValueError, match="inner_lr"):
        taylor.predicted_gradients(theta, theta, -0.1, 2)


# -- Reptile -------------------------------------------------------------------------------------
def test_reptile_with_one_step_is_joint_training():
    torch.manual_seed(0)
    model = MLP([1, 20, 1])
    batch = sinusoid_batch()
    alpha, eps = 0.01, 0.5
    reptile = Reptile(model, F.mse_loss, inner_lr=alpha, inner_steps=1, outer_step_size=eps)
    theta = {k: v.detach().clone() for k, v in params_of(model).items()}
    meta_train(reptile, _Fixed(batch), iterations=1, meta_batch=batch.num_tasks, progress=False)
    # Joint training: one SGD step of size eps * alpha on the mean support loss over the tasks.
    theta_req = {k: v.clone().requires_grad_() for k, v in theta.items()}
    loss = torch.stack([F.mse_loss(forward(model, theta_req, batch.support_x[i]), batch.support_y[i])
                        for i in range(batch.num_tasks)]).mean()
    grads = torch.autograd.grad(loss, list(theta_req.values()))
    for (name, p), g in zip(theta.items(), grads):
        torch.testing.assert_close(dict(model.named_parameters())[name].detach(), p - eps * alpha * g)


def test_batched_reptile_is_the_mean_of_serial_directions():
    torch.manual_seed(0)
    model = MLP([1, 20, 1])
    batch = sinusoid_batch(tasks=3)
    make = lambda: Reptile(model, F.mse_loss, inner_lr=0.02, inner_steps=4, inner_batch=5, seed=7)  # noqa: E731
    _, batched = make().meta_gradient(batch)
    # Serial: one task at a time, drawing the same mini-batch indices (same generator stream).
    reptile = make()
    indices = reptile.batch_indices(3, batch.support_x.shape[1], 4, 5, torch.Generator().manual_seed(7))
    theta = {k: v.detach() for k, v in params_of(model).items()}
    serial = []
    for i in range(3):  # plain SGD on each step's mini-batch, written out
        weights = {k: v.clone() for k, v in theta.items()}
        for step in range(4):
            leaves = {k: v.requires_grad_() for k, v in weights.items()}
            rows = indices[i, step]
            loss = F.mse_loss(forward(model, leaves, batch.support_x[i][rows]), batch.support_y[i][rows])
            grads = torch.autograd.grad(loss, list(leaves.values()))
            weights = {k: (v - 0.02 * g).detach() for (k, v), g in zip(leaves.items(), grads)}
        serial.append({k: theta[k] - weights[k] for k in theta})
    for k in theta:
        torch.testing.assert_close(batched[k], torch.stack([s[k] for s in serial]).mean(0))
    # And a meta-batch of one task is serial Reptile.
    one = TaskBatch(*(t[:1] for t in batch))
    _, single = make().meta_gradient(one)
    for k in theta:
        torch.testing.assert_close(single[k], serial[0][k])


def test_reptile_vmap_and_loop_agree_with_adam_and_minibatches():
    torch.manual_seed(0)
    model = MLP([1, 20, 1])
    batch = sinusoid_batch(tasks=4)
    results = []
    for vectorise in (True, False):
        reptile = Reptile(model, F.mse_loss, inner_lr=0.01, inner_steps=3, inner_optimizer="adam", inner_batch=4,
                          sampling="replacement", vectorise=vectorise, seed=3)
        results.append((reptile.meta_gradient(batch), reptile.predict(batch)))
    (l1, d1), p1 = results[0]
    (l2, d2), p2 = results[1]
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(p1, p2)
    for k in d1:
        torch.testing.assert_close(d1[k], d2[k])


@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_functional_adam_equals_torch_adam(beta1):
    torch.manual_seed(0)
    model = MLP([1, 10, 1])
    x, y = torch.randn(8, 1), torch.randn(8, 1)
    theta = {k: v.detach().clone() for k, v in params_of(model).items()}
    ours = inner_loop(lambda p: F.mse_loss(forward(model, p, x), y), theta, 0.01, 5, first_order=True,
                      vectorised=False, optimizer=Adam(betas=(beta1, 0.999)))
    reference = {k: torch.nn.Parameter(v.clone()) for k, v in theta.items()}
    opt = torch.optim.Adam(reference.values(), lr=0.01, betas=(beta1, 0.999))
    for _ in range(5):
        opt.zero_grad()
        F.mse_loss(forward(model, reference, x), y).backward()
        opt.step()
    for k in theta:
        torch.testing.assert_close(ours[k], reference[k].detach())


def test_cycling_visits_every_example_once_per_pass():
    reptile = Reptile(MLP([1, 4, 1]), F.mse_loss, inner_lr=0.1, inner_steps=6, inner_batch=5)
    idx = reptile.batch_indices(2, 10, 6, 5, torch.Generator().manual_seed(0))
    assert idx.shape == (2, 6, 5)
    for task in idx:
        passes = task.flatten().reshape(3, 10)
        for p in passes:
            assert sorted(p.tolist()) == list(range(10))


def test_outer_step_size_anneals_linearly_and_resume_is_exact(tmp_path):
    def run(checkpoint=None, stop_after=None):
        torch.manual_seed(0)
        reptile = Reptile(MLP([1, 20, 1]), F.mse_loss, inner_lr=0.01, inner_steps=3, inner_optimizer="adam",
                          inner_batch=5, outer_step_size=0.8, outer_step_size_final=0.2)
        meta_train(reptile, _Interrupted(Sinusoid(shots=10, queries=5), stop_after), 6, 4, progress=False,
                   checkpoint=checkpoint, checkpoint_every=3)
        return reptile

    reptile = run()
    assert reptile.outer_lr_factor(0, 6) == pytest.approx(1.0)
    assert reptile.outer_lr_factor(3, 6) * 0.8 == pytest.approx(0.5)
    assert reptile.outer_lr_factor(6, 6) * 0.8 == pytest.approx(0.2)  # reached at the end of the run
    path = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        run(path, stop_after=4)  # interrupted during iteration 5, after the checkpoint at 3 ...
    resumed = run(path)  # ... and resumed
    for a, b in zip(reptile.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(reptile.inner_state["t"], resumed.inner_state["t"])


def test_meta_train_applies_the_annealed_step_size():
    torch.manual_seed(0)
    reptile = Reptile(MLP([1, 20, 1]), F.mse_loss, inner_lr=0.01, inner_steps=2, outer_step_size=0.8,
                      outer_step_size_final=0.2)
    batch = sinusoid_batch()
    optimizer = torch.optim.SGD(reptile.parameters(), lr=0.8)
    meta_train(reptile, _Fixed(batch), iterations=4, meta_batch=3, progress=False, optimizer=optimizer)
    # The last of 4 iterations ran with eps = 0.8 * (1 + (0.2/0.8 - 1) * 3/4) = 0.35.
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.8 * reptile.outer_lr_factor(3, 4))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.35)


def test_evaluation_starts_from_a_copy_of_the_carried_state():
    torch.manual_seed(0)
    reptile = Reptile(MLP([1, 20, 1]), F.mse_loss, inner_lr=0.01, inner_steps=3, inner_optimizer="adam")
    batch = sinusoid_batch()
    fresh = reptile.predict(batch)
    reptile.meta_gradient(batch)  # fills the carried Adam state ...
    assert reptile.inner_state is not None and reptile.inner_state["t"] == 3
    saved = {k: v.clone() for k, v in reptile.inner_state.items()}
    first = reptile.predict(batch)
    assert not torch.allclose(first, fresh)  # ... which test-time adaptation starts from ...
    torch.testing.assert_close(reptile.predict(batch), first)  # ... without changing it
    for k in saved:
        torch.testing.assert_close(reptile.inner_state[k], saved[k], rtol=0, atol=0)
    reptile.carry_inner_state = False
    torch.testing.assert_close(reptile.predict(batch), fresh)


@pytest.mark.parametrize("kwargs, match", [
    (dict(inner_steps=0), "inner_steps=0"),
    (dict(inner_lr=0.0), "inner_lr"),
    (dict(outer_step_size=-1.0), "outer_step_size"),
    (dict(outer_step_size_final=-0.1), "ends? the schedule negative|negative"),
    (dict(inner_optimizer="rmsprop"), "rmsprop"),
    (dict(sampling="random"), "random"),
])
def test_reptile_bad_input(kwargs, match):
    args = dict(inner_lr=0.01, inner_steps=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Reptile(MLP([1, 4, 1]), F.mse_loss, **args)


def test_inner_batch_larger_than_the_support_set_is_refused():
    reptile = Reptile(MLP([1, 4, 1]), F.mse_loss, inner_lr=0.01, inner_steps=2, inner_batch=50)
    with pytest.raises(ValueError, match="50 examples is larger than the support set's 10"):
        reptile.meta_gradient(sinusoid_batch())


# -- transductive and non-transductive prediction --------------------------------------------------
def conv_batch(tasks=2, ways=3, shots=2, queries=4):
    g = torch.Generator().manual_seed(0)
    labels = lambda m: torch.arange(ways).repeat_interleave(m).repeat(tasks, 1)  # noqa: E731
    return TaskBatch(torch.rand(tasks, ways * shots, 1, 12, 12, generator=g), labels(shots),
                     torch.rand(tasks, ways * queries, 1, 12, 12, generator=g), labels(queries))


@pytest.mark.parametrize("vectorise", [True, False])
def test_non_transductive_prediction_sees_the_support_set_and_one_query(vectorise):
    torch.manual_seed(0)
    model = ConvNet(3, hidden=8, blocks=2)
    batch = conv_batch()
    maml = MAML(model, F.cross_entropy, inner_lr=0.1, inner_steps=1, vectorise=vectorise, transductive=False)
    out = maml.predict(batch)
    i, j = 1, 2
    phi = maml.adapt(batch.support_x[i], batch.support_y[i])
    alone = forward(model, phi, torch.cat([batch.support_x[i], batch.query_x[i, j:j + 1]]))[-1]
    torch.testing.assert_close(out[i, j], alone, rtol=1e-4, atol=1e-5)
    # Changing the other query examples changes nothing for this one, unlike transductive prediction.
    other = TaskBatch(batch.support_x, batch.support_y, batch.query_x.clone(), batch.query_y)
    other.query_x[:, :j] = torch.rand_like(other.query_x[:, :j])
    torch.testing.assert_close(maml.predict(other)[:, j], out[:, j], rtol=1e-4, atol=1e-5)
    maml.transductive = True
    assert not torch.allclose(maml.predict(other)[:, j], maml.predict(batch)[:, j])


def test_transduction_changes_nothing_without_batch_norm():
    torch.manual_seed(0)
    batch = sinusoid_batch()
    maml = MAML(MLP([1, 20, 1]), F.mse_loss, inner_lr=0.01, transductive=False)
    out = maml.predict(batch)
    maml.transductive = True
    torch.testing.assert_close(maml.predict(batch), out)


class _Interrupted:
    """A sampler that raises KeyboardInterrupt after ``stop_after`` batches (None: never)."""

    def __init__(self, sampler, stop_after):
        self.sampler, self.stop_after, self.calls = sampler, stop_after, 0

    def sample(self, meta_batch, generator=None):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        return self.sampler.sample(meta_batch, generator=generator)


class _Fixed:
    """A sampler that always returns the same batch (for exact one-step checks)."""

    def __init__(self, batch):
        self.batch = batch

    def sample(self, meta_batch, generator=None):
        return self.batch
