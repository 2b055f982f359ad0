"""Chapter 11 (the comparison): the graded exercises pass their solutions and explain their planted
mistakes (PLANTED below, for tests/test_exercises.py too); the exercises' answers agree with
independent computations (a simulation of the intervals' coverage, a brute-force front); the
stored notebook cells match the registry and the chapter notebook embeds them."""
import math

import pytest
import torch

from mlcourse.exercises import ch11

from _helpers import (check_exercise_registry, check_notebook_embeds_cells,  # noqa: E402
                      check_planted_mistakes, check_stored_exercise_cells)

SETUP = {"math": math, "torch": torch}
CHAPTER = 11


def _front_any_better(cost, error):
    """Dominated as soon as another method is better in one of the two (not both): too strict a front."""
    better = (cost[None, :] < cost[:, None]) | (error[None, :] < error[:, None])
    return ~better.any(dim=1)


def _front_of_dominated(cost, error):
    """The right test, with the answer's meaning inverted: True for the dominated methods."""
    out = []
    for i in range(len(cost)):
        out.append(any(bool(cost[j] <= cost[i] and error[j] <= error[i]
                            and (cost[j] < cost[i] or error[j] < error[i])) for j in range(len(cost))))
    return torch.tensor(out)


def _front_strict_both(cost, error):
    """Dominated only by a method strictly cheaper and strictly better."""
    beaten = (cost[None, :] < cost[:, None]) & (error[None, :] < error[:, None])
    return ~beaten.any(dim=1)


def _front_ties_knock_out(cost, error):
    """'No worse in both' counts as dominating, except a method against itself."""
    return torch.tensor([not any(j != i and bool(cost[j] <= cost[i] and error[j] <= error[i])
                                 for j in range(len(cost))) for i in range(len(cost))])


def _front_with_self(cost, error):
    """'No worse in both' over every j, the method itself included: nothing survives."""
    return ~((cost[None, :] <= cost[:, None]) & (error[None, :] <= error[:, None])).any(dim=1)


def _paired_population_sd(a, b):
    d = a - b
    return d.mean().item(), ch11.Z95 * math.sqrt(((d - d.mean()) ** 2).mean().item()) / math.sqrt(len(d))


# id -> [(a wrong answer, a phrase its diagnosis must contain)]
PLANTED = {
    "11.1": [(lambda ma, ca, mb, cb: (ma - mb, ca + cb), "*variances* add"),
             (lambda ma, ca, mb, cb: (mb - ma, math.sqrt(ca ** 2 + cb ** 2)), "not the other way round"),
             (lambda ma, ca, mb, cb: (ma - mb, 1.96 * math.sqrt(ca ** 2 + cb ** 2)),
              "without another factor 1.96"),
             (lambda ma, ca, mb, cb: (ma - mb, (ca + cb) / 2), "do not average the half-widths")],
    "11.2": [(lambda a, b: ((a - b).mean().item(),
                            ch11.Z95 * math.sqrt(a.var().item() / len(a) + b.var().item() / len(b))),
              "*unpaired*"),
             (_paired_population_sd, "n - 1"),
             (lambda a, b: ((a - b).mean().item(), ch11.Z95 * (a - b).std().item()),
              "divide the standard deviation by sqrt(n)"),
             (lambda a, b: ((a - b).mean().item(), ch11.Z95 * (a - b).std().item() / len(a)),
              "not by n"),
             (lambda a, b: ((a - b).mean().item(), 1.96 * (a - b).std().item() / math.sqrt(len(a))),
              "use the constant Z95")],
    "11.3": [(_front_of_dominated, "marks the dominated ones"),
             (_front_strict_both, "strictly better in *one*"),
             (_front_ties_knock_out, "do not dominate each other"),
             (_front_with_self, "not compared with itself"),
             (_front_any_better, "no worse in *both*")],
}


def test_registry_has_chapter_11():
    check_exercise_registry(CHAPTER, ch11, PLANTED, "11_comparison.ipynb")


@pytest.mark.parametrize("ex_id", list(PLANTED))
def test_checks_pass_solutions_and_explain_planted_mistakes(ex_id):
    check_planted_mistakes(ex_id, PLANTED)


def test_difference_interval_covers_the_true_difference_95_percent_of_the_time():
    """Simulate two independent means many times: the interval of exercise 11.1 covers the true
    difference about 95% of the time (the sum of half-widths, too wide, covers it about 99% of the time)."""
    g = torch.Generator().manual_seed(0)
    n, trials, sd = 50, 4000, (1.0, 1.0)
    a = torch.randn(trials, n, generator=g, dtype=torch.float64) * sd[0] + 0.3
    b = torch.randn(trials, n, generator=g, dtype=torch.float64) * sd[1]
    ci_a, ci_b = (ch11.Z95 * x.std(dim=1) / math.sqrt(n) for x in (a, b))
    covered = summed = 0
    for i in range(trials):
        diff, half = ch11.difference_interval_solution(a[i].mean().item(), ci_a[i].item(),
                                                       b[i].mean().item(), ci_b[i].item())
        covered += abs(diff - 0.3) <= half
        summed += abs(diff - 0.3) <= ci_a[i].item() + ci_b[i].item()
    assert 0.935 < covered / trials < 0.965
    assert summed / trials > 0.985


def test_paired_interval_is_narrower_when_tasks_share_difficulty():
    """With a difficulty that both methods share, the paired half-width is far below the unpaired one,
    and it still covers the true mean difference about 95% of the time."""
    g = torch.Generator().manual_seed(1)
    n, trials, covered, ratios = 100, 2000, 0, []
    for _ in range(trials):
        shared = torch.randn(n, generator=g, dtype=torch.float64)
        a = shared + 0.1 + 0.2 * torch.randn(n, generator=g, dtype=torch.float64)
        b = shared + 0.2 * torch.randn(n, generator=g, dtype=torch.float64)
        mean, half = ch11.paired_interval_solution(a, b)
        covered += abs(mean - 0.1) <= half
        ratios.append(half / ch11._unpaired(a, b)[1])
    assert 0.93 < covered / trials < 0.97
    assert max(ratios) < 0.3


def test_pareto_front_by_brute_force():
    """The vectorised front equals the double loop on random tables with ties, and a front's members
    never dominate one another."""
    g = torch.Generator().manual_seed(2)
    for _ in range(50):
        m = int(torch.randint(1, 15, (), generator=g))
        cost = torch.randint(1, 5, (m,), generator=g).double()
        error = torch.randint(1, 5, (m,), generator=g).double()
        front = ch11.pareto_front_solution(cost, error)
        assert torch.equal(front, ch11._reference_front(cost, error))
        assert front.any()  # the cheapest of the most accurate is always on it
        members = front.nonzero().flatten().tolist()
        for i in (~front).nonzero().flatten().tolist():  # every method off the front: a member beats it
            assert any(cost[j] <= cost[i] and error[j] <= error[i] and (cost[j] < cost[i] or error[j] < error[i])
                       for j in members)


def test_stored_exercise_cells_match_the_registry():
    check_stored_exercise_cells(CHAPTER, SETUP)


def test_notebook_embeds_the_exercise_cells():
    check_notebook_embeds_cells(CHAPTER)
