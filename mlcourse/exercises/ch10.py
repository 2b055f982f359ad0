"""Exercises of chapter 10 (the wider family): Prototypical Networks' logits, R2-D2's ridge head
through the Woodbury identity, and a Matching Network's attention over the support set.

Each exercise has a reference solution (``*_solution``, the text the notebook's solution cell
shows), an independent reference used by its check (distances by a loop over classes, the primal
d x d ridge system, attention weights by a loop over query examples), and ``check_*(fn)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .checking import Case, Exercise, exercise, randn

EXERCISES: dict[str, Exercise] = {}  # filled by the @exercise declarations below, in order


# ---------------------------------------------------------------------------------------------
# 10.1 Prototypical Networks' logits

def prototype_logits_solution(support, support_y, query, ways):
    """Prototypical Networks' logits (Snell et al., 2017, eq. 1-2).

    ``support`` is (n, d), the embedded support set; ``support_y`` (n,) its labels
    0..ways-1; ``query`` (m, d), the embedded query set. The prototype of class k is the
    mean of its support embeddings, c_k = mean{f(x_i) : y_i = k}; the logit of query j
    for class k is minus the squared Euclidean distance, -||f(x_j) - c_k||^2.
    Returns an (m, ways) tensor.
    """
    onehot = F.one_hot(support_y, ways).to(support.dtype)
    prototypes = (onehot.T @ support) / onehot.sum(0).unsqueeze(1)
    return -((query.unsqueeze(1) - prototypes.unsqueeze(0)) ** 2).sum(-1)


def _reference_prototype_logits(support, support_y, query, ways, squared=True, sign=-1.0,
                                summed=False):
    """Class by class: the prototype as a mean (or a sum), then distances query by query."""
    columns = []
    for k in range(ways):
        members = support[support_y == k]
        centre = members.sum(0) if summed else members.mean(0)
        distance = torch.linalg.vector_norm(query - centre, dim=1)
        columns.append(sign * (distance ** 2 if squared else distance))
    return torch.stack(columns, dim=1)


@exercise(EXERCISES, "10.1", "Prototypical Networks' logits", prototype_logits_solution,
          imports="import torch.nn.functional as F")
def check_prototype_logits(g):
    r"""Check ``prototype_logits(support, support_y, query, ways)`` against a loop over classes (exercise 10.1).

    Write `prototype_logits(support, support_y, query, ways)`: given the embedded support set
    `support` ($n \times d$) with labels `support_y` in $0, \dots, N-1$ and the embedded query set
    `query` ($m \times d$), return the $m \times N$ logits of Prototypical Networks,
    $-\lVert f(x_j) - c_k \rVert^2$, where the prototype $c_k$ is the **mean** of class $k$'s
    support embeddings.
    """
    for ways, shots, dim, queries in [(5, 1, 8, 6), (3, 4, 5, 7), (4, 2, 16, 3), (2, 5, 3, 9)]:
        support_y = torch.arange(ways).repeat_interleave(shots)
        support_y = support_y[torch.randperm(len(support_y), generator=g)]
        support = randn(ways * shots, dim, g=g)
        query = randn(queries, dim, g=g)
        args = (support, support_y, query, ways)
        mistakes = [
            ("the logits are *minus* the squared distances: the nearest prototype must get the "
             "largest logit.", lambda a=args: _reference_prototype_logits(*a, sign=1.0)),
            ("use the *squared* Euclidean distance, ||f(x) - c_k||^2 (the paper's choice; it "
             "makes the classifier linear in f(x)), not the distance itself.",
             lambda a=args: _reference_prototype_logits(*a, squared=False)),
        ]
        if shots > 1:
            mistakes.append(("a prototype is the *mean* of its class's support embeddings, not "
                             "their sum.", lambda a=args: _reference_prototype_logits(*a, summed=True)))
        yield Case(args, _reference_prototype_logits(*args),
                   about=f"{ways}-way {shots}-shot, d={dim}, {queries} queries", mistakes=mistakes)


# ---------------------------------------------------------------------------------------------
# 10.2 R2-D2's ridge head through the Woodbury identity

def ridge_head_solution(X, Y, lam):
    """R2-D2's ridge-regression head (Bertinetto et al., 2019), in its n x n form.

    ``X`` is (n, d), the embedded support set; ``Y`` (n, c), its targets (one-hot
    labels); ``lam`` > 0 the ridge strength. The minimiser of
    ||X W - Y||^2 + lam ||W||^2 is W = (X^T X + lam I_d)^-1 X^T Y, which by the
    Woodbury identity equals X^T (X X^T + lam I_n)^-1 Y: the second form solves an
    n x n system, cheap when the support set is smaller than the embedding.
    Returns the (d, c) matrix W.
    """
    n = X.shape[0]
    gram = X @ X.T + lam * torch.eye(n, dtype=X.dtype, device=X.device)
    return X.T @ torch.linalg.solve(gram, Y)


def _reference_ridge(X, Y, lam):
    """The primal d x d system, (X^T X + lam I) W = X^T Y."""
    d = X.shape[1]
    return torch.linalg.solve(X.T @ X + lam * torch.eye(d, dtype=X.dtype), X.T @ Y)


def _ridge_without(X, Y, lam, regulariser=True, scale=1.0):
    n = X.shape[0]
    gram = X @ X.T + (lam * scale * torch.eye(n, dtype=X.dtype) if regulariser else 0)
    return X.T @ torch.linalg.solve(gram, Y)


@exercise(EXERCISES, "10.2", "R2-D2's ridge head", ridge_head_solution, points=2)
def check_ridge_head(g):
    r"""Check ``ridge_head(X, Y, lam)`` against the primal d x d ridge system (exercise 10.2).

    Write `ridge_head(X, Y, lam)`: the weights $W$ ($d \times c$) that minimise
    $\lVert X W - Y \rVert^2 + \lambda \lVert W \rVert^2$ for the embedded support set $X$
    ($n \times d$) and its targets $Y$ ($n \times c$), computed through the Woodbury identity,
    $W = X^\top (X X^\top + \lambda I_n)^{-1} Y$: a solve of an $n \times n$ system (use
    `torch.linalg.solve`, not an explicit inverse).
    """
    for n, d, c, lam in [(5, 12, 5, 1.0), (10, 32, 5, 0.1), (4, 3, 2, 2.5), (20, 64, 20, 0.5)]:
        X = randn(n, d, g=g)
        labels = torch.randint(0, c, (n,), generator=g)
        Y = F.one_hot(labels, c).to(torch.float64)
        args = (X, Y, lam)
        mistakes = [
            ("the ridge term lam * I is missing from the n x n system: W = X^T (X X^T + lam I)^-1 Y."
             if n <= d else
             "the ridge term lam * I is missing: W = X^T (X X^T + lam I)^-1 Y.",
             lambda a=args: _ridge_without(*a, regulariser=False)),
            ("the ridge term is lam * I, not 2 * lam * I (the objective's lam ||W||^2 has no 1/2).",
             lambda a=args: _ridge_without(*a, scale=2.0)),
        ]
        if n > d:  # X X^T is singular without the ridge: the mistake above may not be finite
            mistakes = mistakes[1:]
        yield Case(args, _reference_ridge(*args), about=f"n={n} support examples, d={d}, c={c}, "
                   f"lam={lam}", mistakes=mistakes)


# ---------------------------------------------------------------------------------------------
# 10.3 A Matching Network's attention

def matching_predictions_solution(support, support_y, query, ways):
    """A Matching Network's predictions (Vinyals et al., 2016), without full context.

    ``support`` (n, d) and ``query`` (m, d) are embedded; ``support_y`` (n,) holds
    labels 0..ways-1. The attention of query j on support example i is the softmax
    over i of the cosine similarity,
    a(j, i) = exp(cos(q_j, s_i)) / sum_l exp(cos(q_j, s_l)); the prediction is the
    attention-weighted sum of the one-hot labels,
    P(y = k | x_j) = sum_i a(j, i) [y_i = k]. Returns the (m, ways) probabilities.
    """
    cosine = F.normalize(query, dim=1) @ F.normalize(support, dim=1).T
    onehot = F.one_hot(support_y, ways).to(support.dtype)
    return torch.softmax(cosine, dim=1) @ onehot


def _reference_matching(support, support_y, query, ways, similarity="cosine", over="support"):
    """Query by query: similarities to each support example, softmax, then sum per class."""
    sims = torch.empty(query.shape[0], support.shape[0], dtype=support.dtype)
    for j, q in enumerate(query):
        for i, s in enumerate(support):
            if similarity == "cosine":
                sims[j, i] = torch.dot(q, s) / (torch.linalg.vector_norm(q) * torch.linalg.vector_norm(s))
            else:
                sims[j, i] = torch.dot(q, s)
    attention = torch.softmax(sims, dim=1 if over == "support" else 0)
    out = torch.zeros(query.shape[0], ways, dtype=support.dtype)
    for i, y in enumerate(support_y.tolist()):
        out[:, y] += attention[:, i]
    return out


@exercise(EXERCISES, "10.3", "a Matching Network's attention", matching_predictions_solution,
          imports="import torch.nn.functional as F")
def check_matching_predictions(g):
    r"""Check ``matching_predictions(support, support_y, query, ways)`` query by query (exercise 10.3).

    Write `matching_predictions(support, support_y, query, ways)`: a Matching Network's class
    probabilities for each embedded query $q_j$, $P(y = k \mid x_j) = \sum_i a(j, i)\,[y_i = k]$,
    where the attention $a(j, \cdot)$ is the softmax, over the support examples $i$, of the cosine
    similarity between $q_j$ and the embedded support example $s_i$. Return an $m \times N$ tensor
    whose rows sum to 1.
    """
    for ways, shots, dim, queries in [(5, 1, 8, 6), (3, 3, 6, 4), (4, 2, 10, 5)]:
        support_y = torch.arange(ways).repeat_interleave(shots)
        support = 2.0 * randn(ways * shots, dim, g=g)
        query = 2.0 * randn(queries, dim, g=g)
        args = (support, support_y, query, ways)
        mistakes = [
            ("use the cosine similarity (dot product of unit vectors), not the raw dot product: "
             "normalise both embeddings first.",
             lambda a=args: _reference_matching(*a, similarity="dot")),
            ("the softmax runs over the *support* examples for each query (each row of attention "
             "sums to 1), not over the queries.",
             lambda a=args: _reference_matching(*a, over="query")),
        ]
        yield Case(args, _reference_matching(*args),
                   about=f"{ways}-way {shots}-shot, d={dim}, {queries} queries", mistakes=mistakes)
