"""Chapter 6's graded exercises, as tests/test_exercises.py tests those of chapters 1-5: every
check passes its reference solution and explains planted mistakes, reports stubs, exceptions and
non-functions; the references agree with the package (mlcourse.svgd, BMAML's chaser loss); the
stored notebook cells match the registry and the chapter notebook embeds them."""
import json
import math
from pathlib import Path

import nbformat
import torch
import torch.nn.functional as F

from mlcourse.algorithms.bmaml import chaser_loss
from mlcourse.exercises import ALL, ch6, exercises_for
from mlcourse.exercises.cells import NOTEBOOKS, chapter_cells
from mlcourse.exercises.checking import random_spd
from mlcourse.svgd import rbf_kernel, svgd_direction

from _helpers import check_stored_exercise_cells  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETUP = {"math": math, "torch": torch, "F": F}  # names every chapter's setup cell defines
CELLS = ROOT / "notebooks" / "_exercise_cells"
CHAPTER = 6


def _no_stopgrad(theta, score_train, score_all, eps, n, s, h):
    theta = theta.detach().requires_grad_()
    follower = theta
    for _ in range(n):
        follower = follower + eps * svgd_direction(follower, score_train(follower), h)
    leader = follower                                  # still attached: the planted mistake
    for _ in range(s):
        leader = leader + eps * svgd_direction(leader, score_all(leader), h)
    return torch.autograd.grad(((follower - leader) ** 2).sum(), theta)[0]


def _driving_only(x, scores, h, eps):
    return x + eps * rbf_kernel(x, h) @ scores / x.shape[0]


# id -> [(a wrong answer, a phrase its diagnosis must contain)]
PLANTED = {
    "6.1": [(lambda x, h: (torch.exp(-torch.cdist(x, x) ** 2 / (2 * h)),
                           ch6.rbf_repulsion_solution(x, h)[1]), "divides by 2h"),
            (lambda x, h: (ch6.rbf_repulsion_solution(x, h)[0], -ch6.rbf_repulsion_solution(x, h)[1]),
             "wrong sign"),
            (lambda x, h: (ch6.rbf_repulsion_solution(x, h)[0],
                           x.shape[0] * ch6.rbf_repulsion_solution(x, h)[1]), "averages it")],
    "6.2": [(_driving_only, "no repulsive term"),
            (lambda x, s, h, eps: x + eps * s, "plain gradient ascent"),
            (lambda x, s, h, eps: (ch6.svgd_step_solution(x, s, h, eps) - x) / eps, "not the moved")],
    "6.3": [(_no_stopgrad, "flows through the leader"),
            (lambda *args: -ch6.chaser_gradient_solution(*args), "sign error")],
}


# Each check against its solution, its planted mistakes and stubs: tests/test_exercises.py
# (its parametrisation covers every chapter, this one's PLANTED included).
def test_registry_has_chapter_6():
    exercises = exercises_for(CHAPTER)
    assert len(exercises) >= 2 and set(PLANTED) == {ex.id for ex in exercises}
    assert NOTEBOOKS[CHAPTER] == "06_bmaml.ipynb"
    for ex in exercises:
        assert ALL[ex.id] is ex and ex.points >= 1
        assert ex.check.__name__ == f"check_{ex.function_name}"
        assert ex.solution.__name__ == f"{ex.function_name}_solution"
        assert getattr(ch6, ex.check.__name__) is ex.check


def test_chaser_gradient_matches_the_package_loss():
    """The solution's gradient equals autograd on mlcourse's chaser_loss with a constant leader."""
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(3, 2, generator=g, dtype=torch.float64)
    p, mean = random_spd(2, 0.5, 2.0, g), torch.randn(2, generator=g, dtype=torch.float64)

    def score(x):
        return -(x - mean) @ p

    ours = ch6.chaser_gradient_solution(theta, score, score, 0.1, 2, 1, 1.0)
    t = theta.clone().requires_grad_()
    follower = t
    for _ in range(2):
        follower = follower + 0.1 * svgd_direction(follower, score(follower), 1.0)
    leader = follower.detach() + 0.1 * svgd_direction(follower.detach(), score(follower.detach()), 1.0)
    loss = chaser_loss({"w": follower}, {"w": torch.tensor(leader.tolist(), dtype=torch.float64)})
    torch.testing.assert_close(ours, torch.autograd.grad(loss, t)[0])


# ---------------------------------------------------------------------------------------------
# The notebook cells

def test_stored_cells_match_the_registry():
    if CHAPTER == 6:  # the cells must also be valid nbformat cells
        for cell in json.loads((CELLS / f"ch{CHAPTER}.json").read_text()):
            nbformat.validate(nbformat.v4.new_notebook(cells=[nbformat.from_dict(cell)]))
    check_stored_exercise_cells(CHAPTER, SETUP)


def test_the_notebook_embeds_the_cells():
    """Every generated cell is in notebooks/06_bmaml.ipynb with its source and tags."""
    nb = nbformat.read(str(ROOT / "notebooks" / NOTEBOOKS[CHAPTER]), as_version=4)
    cells = {c.get("id"): c for c in nb.cells}
    for cell in chapter_cells(CHAPTER):
        assert cell["id"] in cells, cell["id"]
        mine = cells[cell["id"]]
        assert mine.cell_type == cell["cell_type"]
        assert mine.source == "".join(cell["source"]), cell["id"]
        assert mine.metadata.get("tags", []) == cell["metadata"].get("tags", [])
