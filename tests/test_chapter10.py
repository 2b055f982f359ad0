"""Chapter 10 (the wider family): the graded exercises pass their solutions and explain their
planted mistakes (PLANTED below, for tests/test_exercises.py too); the exercises' references agree
with the package (ProtoNet's logits, R2-D2's ridge head, MatchingNet's probabilities); the stored
notebook cells match the registry and the chapter notebook embeds them."""
import math

import pytest
import torch
import torch.nn.functional as F

from mlcourse.algorithms import MatchingNet, ProtoNet
from mlcourse.algorithms.r2d2 import ridge_weights
from mlcourse.exercises import ch10
from mlcourse.tasks import TaskBatch

from _helpers import (check_exercise_registry, check_notebook_embeds_cells,  # noqa: E402
                      check_planted_mistakes, check_stored_exercise_cells)

SETUP = {"math": math, "torch": torch, "F": F}
CHAPTER = 10


def _distance_not_squared(support, support_y, query, ways):
    return -(-ch10.prototype_logits_solution(support, support_y, query, ways)).sqrt()


def _prototype_sums(support, support_y, query, ways):
    onehot = F.one_hot(support_y, ways).to(support.dtype)
    sums = onehot.T @ support
    return -((query.unsqueeze(1) - sums.unsqueeze(0)) ** 2).sum(-1)


def _ridge_without_lambda(X, Y, lam):
    return X.T @ torch.linalg.solve(X @ X.T, Y)


def _matching_dot(support, support_y, query, ways):
    return torch.softmax(query @ support.T, dim=1) @ F.one_hot(support_y, ways).to(support.dtype)


# id -> [(a wrong answer, a phrase its diagnosis must contain)]
PLANTED = {
    "10.1": [(lambda s, y, q, w: -ch10.prototype_logits_solution(s, y, q, w), "*minus*"),
             (_distance_not_squared, "*squared*"), (_prototype_sums, "*mean*")],
    "10.2": [(_ridge_without_lambda, "lam * I is missing"),
             (lambda X, Y, lam: ch10.ridge_head_solution(X, Y, 2 * lam), "not 2 * lam")],
    "10.3": [(_matching_dot, "cosine similarity"),
             (lambda s, y, q, w: ch10._reference_matching(s, y, q, w, over="query"), "*support*")],
}


def test_registry_has_chapter_10():
    check_exercise_registry(CHAPTER, ch10, PLANTED, "10_the_family.ipynb")


@pytest.mark.parametrize("ex_id", list(PLANTED))
def test_checks_pass_solutions_and_explain_planted_mistakes(ex_id):
    check_planted_mistakes(ex_id, PLANTED)


class _Identity(torch.nn.Module):
    """An embedding that is the input itself (one learnable scalar so that it has parameters)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x):
        return self.scale * x


def _vector_batch(ways=4, shots=3, queries=5, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(ways).repeat_interleave(shots)
    qy = torch.arange(ways).repeat_interleave(queries)
    sx = torch.randn(1, ways * shots, dim, generator=g, dtype=torch.float64)
    qx = torch.randn(1, ways * queries, dim, generator=g, dtype=torch.float64)
    return TaskBatch(sx, sy.unsqueeze(0), qx, qy.unsqueeze(0))


def test_exercise_solutions_agree_with_the_package():
    batch = _vector_batch()
    sx, sy, qx, _ = (t[0] for t in batch)
    protonet = ProtoNet(_Identity(), F.cross_entropy)
    with torch.no_grad():
        logits = protonet.predict(batch)[0]
    torch.testing.assert_close(logits, ch10.prototype_logits_solution(sx, sy, qx, 4))
    matching = MatchingNet(_Identity(), F.cross_entropy)
    with torch.no_grad():
        log_probabilities = matching.predict(batch)[0]  # the package's outputs: log P(y | x, S)
    torch.testing.assert_close(log_probabilities.exp(),
                               ch10.matching_predictions_solution(sx, sy, qx, 4))
    Y = F.one_hot(sy, 4).double()
    torch.testing.assert_close(ridge_weights(sx, Y, 0.3), ch10.ridge_head_solution(sx, Y, 0.3))


def test_stored_cells_match_the_registry():
    check_stored_exercise_cells(CHAPTER, SETUP)


def test_the_notebook_embeds_the_cells():
    check_notebook_embeds_cells(CHAPTER)
