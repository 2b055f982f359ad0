"""meta_train (resume, NaN stop), evaluate's interval, budgets."""
import math

import pytest
import torch
import torch.nn.functional as F

import mlcourse
from mlcourse.algorithms import MAML
from mlcourse.nn import MLP
from mlcourse.tasks import Sinusoid, TaskBatch
from mlcourse.train import confidence_interval


def make_maml(seed=0):
    torch.manual_seed(seed)
    return MAML(MLP([1, 16, 16, 1]), F.mse_loss, inner_lr=0.01, inner_steps=1)


def test_checkpoint_resume_continues_identically(tmp_path):
    sampler = Sinusoid(5, 5)
    straight = make_maml()
    h1 = mlcourse.meta_train(straight, sampler, iterations=12, meta_batch=4, progress=False, device="cpu")
    resumed = make_maml()
    ckpt = tmp_path / "run.pt"
    mlcourse.meta_train(resumed, sampler, iterations=5, meta_batch=4, checkpoint=ckpt, progress=False, device="cpu")
    fresh = make_maml(seed=99)  # a different init: everything must come from the checkpoint
    h2 = mlcourse.meta_train(fresh, sampler, iterations=12, meta_batch=4, checkpoint=ckpt, progress=False,
                             device="cpu")
    assert h2["iteration"] == list(range(1, 13))
    assert h2["loss"] == h1["loss"]
    for a, b in zip(straight.model.parameters(), fresh.model.parameters()):
        assert torch.equal(a, b)


def test_same_seed_same_numbers():
    runs = []
    for _ in range(2):
        alg = make_maml()
        h = mlcourse.meta_train(alg, Sinusoid(5, 5), iterations=5, meta_batch=3, seed=7, progress=False, device="cpu")
        runs.append((h["loss"], mlcourse.evaluate(alg, Sinusoid(5, 5), num_tasks=10)["mean"]))
    assert runs[0] == runs[1]


def test_nan_stops_with_clear_message():
    alg = make_maml()
    with torch.no_grad():
        alg.model[0].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="meta-iteration 0"):
        mlcourse.meta_train(alg, Sinusoid(5, 5), iterations=3, meta_batch=2, progress=False, device="cpu")


def test_validation_is_recorded():
    alg = make_maml()
    h = mlcourse.meta_train(alg, Sinusoid(5, 5), iterations=4, meta_batch=2, val_sampler=Sinusoid(5, 5),
                            val_every=2, val_tasks=4, progress=False, device="cpu")
    assert h["val_iteration"] == [2, 4] and len(h["val_mean"]) == 2 and all(v > 0 for v in h["val_ci95"])


class _Fixed:
    """A sampler and predictor whose per-task accuracy is known: task t scores t % 2."""

    def __init__(self):
        self.model = torch.nn.Linear(1, 1)
        self.next = 0

    def sample(self, n, generator=None):
        # query label 0 for every example; predictions below are right on even tasks.
        ids = torch.arange(self.next, self.next + n)
        self.next += n
        x = ids.view(n, 1, 1).float()
        y = torch.zeros(n, 4, dtype=torch.long)
        return TaskBatch(x, y[:, :1], x.expand(n, 4, 1), y)

    def predict(self, batch, inner_steps=None):
        even = (batch.query_x[:, :, 0] % 2 == 0).float()
        return torch.stack([even, 1 - even], dim=-1)  # argmax 0 on even tasks


def test_evaluate_interval_on_known_case():
    fixed = _Fixed()
    result = mlcourse.evaluate(fixed, fixed, num_tasks=100, batch_size=7)
    assert result["metric"] == "accuracy" and result["num_tasks"] == 100
    assert result["mean"] == pytest.approx(0.5)
    std = math.sqrt(0.25 * 100 / 99)  # sample std of fifty 0s and fifty 1s
    assert result["ci95"] == pytest.approx(1.959964 * std / 10, rel=1e-6)


def test_confidence_interval_and_mse_metric():
    mean, ci = confidence_interval(torch.tensor([1.0, 3.0]))
    assert mean == 2.0 and ci == pytest.approx(1.959964 * math.sqrt(2) / math.sqrt(2), rel=1e-6)
    alg = make_maml()
    r = mlcourse.evaluate(alg, Sinusoid(5, 5), num_tasks=10)
    assert r["metric"] == "mse" and r["mean"] > 0


def test_budgets():
    assert mlcourse.get_budget("smoke").name == "smoke"
    paper = mlcourse.get_budget("paper")
    assert paper.sinusoid_iterations == 70000 and paper.omniglot_meta_batch == 32 and paper.eval_tasks == 600
    with pytest.raises(ValueError, match="budget 'huge' is unknown: allowed smoke, default, paper"):
        mlcourse.get_budget("huge")


def test_budget_from_environment(monkeypatch):
    monkeypatch.setenv("MLCOURSE_BUDGET", "smoke")
    assert mlcourse.get_budget().name == "smoke"
    monkeypatch.setenv("MLCOURSE_BUDGET", "tiny")
    with pytest.raises(ValueError, match="'tiny'"):
        mlcourse.get_budget()


@pytest.mark.parametrize("kwargs,match", [
    (dict(iterations=-1, meta_batch=2), "iterations=-1"),
    (dict(iterations=2, meta_batch=0), "meta_batch=0"),
    (dict(iterations=2, meta_batch=2, outer_lr=-1e-3), "outer_lr=-0.001"),
])
def test_meta_train_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mlcourse.meta_train(make_maml(), Sinusoid(5, 5), progress=False, **kwargs)


def test_sinusoid_sampler():
    batch, amp, phase = Sinusoid(5, 7).sample(6, generator=torch.Generator().manual_seed(0), return_params=True)
    assert batch.support_x.shape == (6, 5, 1) and batch.query_y.shape == (6, 7, 1)
    assert ((amp >= 0.1) & (amp <= 5)).all() and ((phase >= 0) & (phase <= math.pi)).all()
    assert (batch.support_x.abs() <= 5).all()
    torch.testing.assert_close(batch.query_y, amp.view(-1, 1, 1) * torch.sin(batch.query_x - phase.view(-1, 1, 1)))
    with pytest.raises(ValueError, match="shots=0"):
        Sinusoid(0, 5)
