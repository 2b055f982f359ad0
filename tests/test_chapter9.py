"""Chapter 9's graded exercises and package pieces: the checks pass their solutions and explain
planted mistakes (PLANTED below, for tests/test_exercises.py too); the references agree with the
package (MSL's weights, PerStepBatchNorm, CA's factor); the stored notebook cells match the
registry and the chapter notebook embeds them; the playgrounds' static twins draw and refuse bad
input, and scaling the step sizes leaves the learners as they were."""
import math
from pathlib import Path

import matplotlib
import pytest
import torch
import torch.nn.functional as F

from mlcourse.algorithms import MAML, MAMLPlusPlus, MetaSGD
from mlcourse.algorithms.maml_plus_plus import cosine_annealing_factor, multi_step_loss_weights
from mlcourse.exercises import ch9
from mlcourse.nn import ConvNet, PerStepBatchNorm, batch_norm_step
from mlcourse.tasks import TaskBatch

matplotlib.use("Agg")
from _helpers import (check_exercise_registry, check_notebook_embeds_cells,  # noqa: E402
                      check_planted_mistakes, check_stored_exercise_cells)

ROOT = Path(__file__).resolve().parents[1]
SETUP = {"math": math, "torch": torch, "F": F}
CHAPTER = 9


def _msl_reversed(steps, progress):
    return ch9.msl_weights_solution(steps, progress).flip(0)


def _msl_unclamped(steps, progress):
    weights = torch.full((steps,), (1.0 - progress) / steps, dtype=torch.float64)
    weights[-1] = 1.0 - weights[:-1].sum()
    return weights


def _bn_first_set(x, step, weight, bias, mean, var, running, eps=1e-5):
    return ch9.per_step_batch_norm_solution(x, 0, weight, bias, mean, var, running, eps)


def _bn_unbiased(x, step, weight, bias, mean, var, running, eps=1e-5):
    if running:
        return ch9.per_step_batch_norm_solution(x, step, weight, bias, mean, var, running, eps)
    m = x.mean(dim=(0, 2, 3), keepdim=True)
    v = x.var(dim=(0, 2, 3), keepdim=True)  # unbiased: the planted mistake
    return (x - m) / torch.sqrt(v + eps) * weight[step].view(1, -1, 1, 1) + bias[step].view(1, -1, 1, 1)


def _schedule_to_zero(beta, iterations, min_factor):
    return ch9.cosine_schedule_solution(beta, iterations, 0.0)


# id -> [(a wrong answer, a phrase its diagnosis must contain)]
PLANTED = {
    "9.1": [(_msl_reversed, "*last* step"), (_msl_unclamped, "clamp it first")],
    "9.2": [(_bn_first_set, "row 0"), (_bn_unbiased, "biased variance")],
    "9.3": [(_schedule_to_zero, "not at 0"),
            (lambda b, T, f: ch9.cosine_schedule_solution(b, T, f).flip(0), "yours rises")],
}


def test_registry_has_chapter_9():
    check_exercise_registry(CHAPTER, ch9, PLANTED, "09_maml_plus_plus.ipynb")


@pytest.mark.parametrize("ex_id", list(PLANTED))
def test_checks_pass_solutions_and_explain_planted_mistakes(ex_id):
    check_planted_mistakes(ex_id, PLANTED)


def test_exercise_solutions_agree_with_the_package():
    for steps in (1, 2, 5):
        for progress in (-0.5, 0.0, 0.3, 1.0, 4.0):
            torch.testing.assert_close(ch9.msl_weights_solution(steps, progress),
                                       torch.tensor(multi_step_loss_weights(steps, progress), dtype=torch.float64))
    schedule = ch9.cosine_schedule_solution(1e-3, 40, 0.01)
    torch.testing.assert_close(schedule, torch.tensor([1e-3 * cosine_annealing_factor(t, 40, 0.01)
                                                       for t in range(40)], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    layer = PerStepBatchNorm(3, steps=4).double()
    with torch.no_grad():
        for t in (layer.weight, layer.bias, layer.running_mean):
            t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64))
        layer.running_var.uniform_(0.5, 1.5, generator=g)
    x = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    for step in range(4):
        for running in (False, True):
            with batch_norm_step(layer, step, running_stats=running):
                ours = ch9.per_step_batch_norm_solution(x, step, layer.weight, layer.bias, layer.running_mean,
                                                        layer.running_var, running, layer.eps)
                torch.testing.assert_close(ours, layer(x))


def test_stored_cells_match_the_registry():
    check_stored_exercise_cells(CHAPTER, SETUP)


def test_the_notebook_embeds_the_cells():
    check_notebook_embeds_cells(CHAPTER)


def test_schedule_twin_follows_the_package_and_refuses_bad_input():
    from mlcourse import widgets

    fig = widgets.draw_maml_plus_plus_schedules(inner_steps=4, msl_fraction=0.2, first_order_fraction=0.5,
                                                min_outer_lr_factor=0.1, iterations=50, iteration=5)
    assert len(fig.axes) == 4
    last = fig.axes[0].lines[1].get_ydata()   # v_{N-1} over the iterations
    assert last[0] == pytest.approx(0.25) and last[-1] == 1.0
    order = fig.axes[1].lines[0].get_ydata()
    assert list(order[:25]) == [1] * 25 and list(order[25:]) == [2] * 25
    factor = fig.axes[2].lines[0].get_ydata()
    assert factor[0] == 1.0 and factor[-1] == pytest.approx(cosine_annealing_factor(49, 50, 0.1))
    assert [p.get_height() for p in fig.axes[3].patches] == pytest.approx(multi_step_loss_weights(4, 5 / 10))
    assert len(widgets.draw_maml_plus_plus_schedules(iterations=10).axes) == 3
    with pytest.raises(ValueError, match=r"iteration=10 is out of range: allowed 0\.\.9"):
        widgets.draw_maml_plus_plus_schedules(iterations=10, iteration=10)
    with pytest.raises(ValueError, match="inner_steps"):
        widgets.draw_maml_plus_plus_schedules(inner_steps=0)
    assert widgets.maml_plus_plus_schedule_playground() is not None


def _batch(tasks=2, ways=3, shots=1, queries=2, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(tasks, ways * shots, 1, size, size, generator=g)
    qx = torch.rand(tasks, ways * queries, 1, size, size, generator=g)
    sy = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    qy = torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1)
    return TaskBatch(sx, sy, qx, qy)


def _learners():
    def net():
        torch.manual_seed(0)
        return ConvNet(3, hidden=4, blocks=2)

    return {"MAML": MAML(net(), F.cross_entropy, 0.1, 2),
            "MAML++": MAMLPlusPlus(net(), F.cross_entropy, 0.1, 2),
            "Meta-SGD": MetaSGD(net(), F.cross_entropy, init_inner_lr=[0.05, 0.1])}


def test_adaptation_twin_scales_step_sizes_and_restores_them():
    from mlcourse import widgets

    learners, batch = _learners(), _batch()
    before = {label: {k: v.detach().clone() for k, v in alg.named_parameters()} for label, alg in learners.items()}
    curves = widgets.adaptation_by_step(learners, batch, max_steps=3)
    assert set(curves) == set(learners) and all(len(c) == 4 for c in curves.values())
    assert all(0 <= a <= 1 for c in curves.values() for a in c)
    zero = widgets.adaptation_by_step(learners, batch, max_steps=2, lr_scale=0.0)
    for label, c in zero.items():  # no step size: every step leaves the task where theta is
        assert c == pytest.approx([c[0]] * 3), label
    for label, alg in learners.items():  # the step sizes come back as they were
        for k, v in alg.named_parameters():
            assert torch.equal(v, before[label][k]), (label, k)
    assert learners["MAML"].inner_lr == 0.1
    fig = widgets.draw_adaptation_by_step(learners, batch, max_steps=2, trained_steps=2)
    assert len(fig.axes[0].lines) == len(learners) + 2  # the learners, chance, the trained steps
    with pytest.raises(ValueError, match="lr_scale=-1 is out of range"):
        widgets.adaptation_by_step(learners, batch, lr_scale=-1)
    assert widgets.adaptation_playground(learners, batch, max_steps=2) is not None
