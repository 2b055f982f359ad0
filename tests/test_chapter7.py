"""Chapter 7's graded exercises and package pieces: the checks pass their solutions and explain
planted mistakes (run by tests/test_exercises.py with PLANTED below); the references agree with
the package (PLATIPUS's KL and sampling, SinusoidOrLine.closest_kind); the stored notebook cells
match the registry and the chapter notebook embeds them; the playground's static twin draws."""
import math
from pathlib import Path

import matplotlib
import nbformat
import pytest
import torch
import torch.nn.functional as F

from mlcourse.algorithms import MAML, PLATIPUS
from mlcourse.algorithms.platipus import gaussian_kl
from mlcourse.exercises import ALL, ch7, exercises_for
from mlcourse.exercises.cells import NOTEBOOKS
from mlcourse.nn import MLP
from mlcourse.tasks import SinusoidOrLine

matplotlib.use("Agg")
from _helpers import check_notebook_embeds_cells, check_stored_exercise_cells  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETUP = {"math": math, "torch": torch, "F": F}
CELLS = ROOT / "notebooks" / "_exercise_cells"
CHAPTER = 7


def _kl_reversed(mq, lq, mp, lp):
    return ch7.kl_diagonal_solution(mp, lp, mq, lq)


def _first_order_sample(mu, loss, gamma, log_var, eps, w):
    mu = mu.detach().requires_grad_()
    grad = torch.autograd.grad(loss(mu), mu)[0]             # detached: the planted mistake
    theta = mu - gamma * grad + (0.5 * log_var).exp() * eps
    return theta.detach(), torch.autograd.grad((w * theta).sum(), mu)[0]


# id -> [(a wrong answer, a phrase its diagnosis must contain)]
PLANTED = {
    "7.1": [(_kl_reversed, "KL(p || q)"),
            (lambda *a: 2 * ch7.kl_diagonal_solution(*a), "factor 1/2")],
    "7.2": [(_first_order_sample, "first order")],
    "7.3": [(lambda x, y: 1 - ch7.closest_family_solution(x, y), "other way round")],
}


def test_registry_has_chapter_7():
    exercises = exercises_for(CHAPTER)
    assert set(PLANTED) == {ex.id for ex in exercises}
    assert NOTEBOOKS[CHAPTER] == "07_platipus.ipynb"
    for ex in exercises:
        assert ALL[ex.id] is ex and ex.check.__name__ == f"check_{ex.function_name}"
        assert getattr(ch7, ex.check.__name__) is ex.check


def test_exercise_solutions_agree_with_the_package():
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(6, generator=g, dtype=torch.float64) for _ in range(4)]
    torch.testing.assert_close(ch7.kl_diagonal_solution(*parts),
                               gaussian_kl(*({"w": p} for p in parts)))
    batch, params = SinusoidOrLine(5, 30, noise_std=0.05).sample(20, g, return_params=True)
    package = SinusoidOrLine.closest_kind(batch.query_x.double(), batch.query_y.double())
    ours = torch.tensor([ch7.closest_family_solution(x[:, 0].double(), y[:, 0].double())
                         for x, y in zip(batch.query_x, batch.query_y)])
    assert torch.equal(package, ours)


def test_stored_cells_match_the_registry():
    check_stored_exercise_cells(CHAPTER, SETUP)


def test_the_notebook_embeds_the_cells():
    check_notebook_embeds_cells(CHAPTER)


def test_platipus_playground_static_twin_draws_both_families_and_refuses_bad_input():
    from mlcourse import widgets

    torch.manual_seed(0)
    platipus = PLATIPUS(MLP([1, 16, 1]), F.mse_loss, inner_lr=0.01, init_variance=1.0)
    maml = MAML(MLP([1, 16, 1]), F.mse_loss, inner_lr=0.01)
    for kind in ("line", "sinusoid"):
        fig = widgets.draw_platipus_samples(platipus, maml, points=3, kind=kind, samples=6)
        assert len(fig.axes[0].lines) >= 6 + 2   # the draws, MAML, the truth
    with pytest.raises(ValueError, match="kind='circle' is unknown"):
        widgets.draw_platipus_samples(platipus, kind="circle")
    with pytest.raises(TypeError, match="trained mlcourse PLATIPUS"):
        widgets.draw_platipus_samples(maml)
    assert widgets.platipus_playground(platipus, maml) is not None


def test_the_notebook_sets_the_papers_ambiguous_celeba_table_beside_its_own_run():
    """Section 7.3 runs the four methods on generated shapes and quotes Table 1 of the paper as
    published; its prose says that the data are not celebA."""
    nb = nbformat.read(str(ROOT / "notebooks" / NOTEBOOKS[CHAPTER]), as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for row in ('"MAML": ("89.00 ± 1.78", "1.00 ± 0.0", "0.73 ± 0.06")',
                '"MAML + noise": ("84.3 ± 1.60", "1.89 ± 0.04", "0.68 ± 0.05")',
                '"PLATIPUS, KL weight 0.05": ("88.34 ± 1.06", "1.59 ± 0.03", "0.67 ± 0.05")',
                '"PLATIPUS, KL weight 0.15": ("87.8 ± 1.03", "1.94 ± 0.04", "0.56 ± 0.04")'):
        assert row in code
    for call in ("AmbiguousShapes(", "MAMLNoise(", "ambiguity_scores(", "kl_weight=kl"):
        assert call in code
    assert "celebA is not available here" in text and "differs from celebA" in text
