"""Chapter 8's graded exercises and package pieces: the checks pass their solutions and explain
planted mistakes (run by tests/test_exercises.py with PLANTED below); the references agree with
the package (FiLM, the softmax modulation, the nearest-centroid accuracy); the stored notebook
cells match the registry and the chapter notebook embeds them; the playground's static twin and
the image modes work."""
from pathlib import Path

import matplotlib
import pytest
import torch
import torch.nn.functional as F

from mlcourse.algorithms import MAML, MMAML, MultiMAML
from mlcourse.analysis.embedding import nearest_centroid_accuracy, pca_2d
from mlcourse.exercises import ch8
from mlcourse.modulation import Modulator, SetEncoder
from mlcourse.nn import MLP, FiLM
from mlcourse.tasks import ImageModes, TaskBatch

matplotlib.use("Agg")
from _helpers import (check_exercise_registry, check_notebook_embeds_cells,  # noqa: E402
                      check_stored_exercise_cells)

ROOT = Path(__file__).resolve().parents[1]
SETUP = {"torch": torch, "F": F}
CHAPTER = 8

# id -> [(a wrong answer, a phrase its diagnosis must contain)]
PLANTED = {
    "8.1": [(lambda h, gamma, beta: ch8.film_solution(h, beta, gamma), "beta as a scale"),
            (lambda h, gamma, beta: ch8.film_solution(h, gamma, gamma * beta), "not before")],
    "8.2": [(lambda logits: torch.softmax(logits, dim=0), "factor C is missing")],
    "8.3": [(lambda a, b, c, d: ch8.nearest_centroid_accuracy_solution(c, d, c, d), "training tasks")],
}


def test_registry_has_chapter_8():
    check_exercise_registry(CHAPTER, ch8, PLANTED, "08_mmaml.ipynb")


def test_exercise_solutions_agree_with_the_package():
    g = torch.Generator().manual_seed(0)
    for shape in [(3, 4), (2, 4, 5, 5)]:
        film = FiLM(4)
        film.gamma, film.beta = torch.randn(4, generator=g), torch.randn(4, generator=g)
        h = torch.randn(*shape, generator=g)
        torch.testing.assert_close(ch8.film_solution(h, film.gamma, film.beta), film(h))
    modulator = Modulator(SetEncoder(2, 8, 4), [("layer", 6)], kind="softmax")
    with torch.no_grad():
        modulator.generators[0].bias.copy_(torch.randn(6, generator=g))
    tau = modulator(torch.zeros(3, 1), torch.zeros(3, 1))
    torch.testing.assert_close(tau["layer.gamma"], ch8.softmax_modulation_solution(modulator.generators[0].bias))
    x, modes = torch.randn(40, 3, generator=g), torch.arange(40) % 4
    y, test_modes = torch.randn(25, 3, generator=g), torch.randint(4, (25,), generator=g)
    assert ch8.nearest_centroid_accuracy_solution(x, modes, y, test_modes) == nearest_centroid_accuracy(
        x, modes, y, test_modes)


def test_pca_2d_finds_the_spread_direction():
    g = torch.Generator().manual_seed(1)
    points = torch.randn(300, 1, generator=g) * torch.tensor([[0.0, 5.0, 0.0]]) + 0.1 * torch.randn(
        300, 3, generator=g)
    projected = pca_2d(points)
    assert projected.shape == (300, 2)
    assert projected[:, 0].std() > 10 * projected[:, 1].std()
    assert torch.allclose(projected.abs()[:, 0], (points[:, 1] - points[:, 1].mean()).abs(), atol=0.5)
    with pytest.raises(ValueError, match="no training task"):
        nearest_centroid_accuracy(x := torch.randn(4, 2), torch.tensor([0, 0, 2, 2]), x, torch.zeros(4).long())


def test_stored_cells_match_the_registry():
    check_stored_exercise_cells(CHAPTER, SETUP)


def test_the_notebook_embeds_the_cells():
    check_notebook_embeds_cells(CHAPTER)


def test_multimodal_static_twin_draws_every_learner_and_refuses_bad_input():
    from mlcourse import widgets

    torch.manual_seed(0)
    learners = {"MAML": MAML(MLP([1, 16, 1], film=True), F.mse_loss, 0.01, 2),
                "Multi-MAML": MultiMAML(MLP([1, 16, 1]), F.mse_loss, 2, 0.01, 2),
                "MMAML": MMAML(MLP([1, 16, 1], film=True), F.mse_loss, "set", 0.01, 2)}
    for family in ("sinusoid", "line"):
        fig = widgets.draw_multimodal_adaptation(learners, ("sinusoid", "line"), family, inner_steps=3)
        assert len(fig.axes[0].lines) == 3 + 1   # each learner, and the truth
    with pytest.raises(ValueError, match="family='tanh' is not one the learners were trained on"):
        widgets.draw_multimodal_adaptation(learners, ("sinusoid", "line"), "tanh")
    assert widgets.multimodal_playground({2: (("sinusoid", "line"), learners)}) is not None


def test_image_modes_transform_each_task_by_its_mode():
    class Base:
        def sample(self, meta_batch, generator=None):
            x = torch.rand(meta_batch, 3, 1, 4, 4, generator=generator)
            labels = torch.arange(3).repeat(meta_batch, 1)
            return TaskBatch(x, labels, x + 0.0, labels)

    sampler = ImageModes(Base())
    g = torch.Generator().manual_seed(2)
    batch = sampler.sample(6, g)
    plain = Base().sample(6, torch.Generator().manual_seed(2))
    inverted = batch.mode == 1
    assert torch.equal(torch.bincount(batch.mode), torch.tensor([3, 3]))
    assert torch.allclose(batch.support_x[inverted], 1 - plain.support_x[inverted])
    assert torch.equal(batch.support_x[~inverted], plain.support_x[~inverted])
    with pytest.raises(ValueError, match="image mode 'rotated' is unknown"):
        ImageModes(Base(), ("original", "rotated"))
