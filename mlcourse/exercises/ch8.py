"""Exercises of chapter 8 (MMAML): a FiLM layer on vectors and on images, softmax (attention)
modulation, and the nearest-centroid accuracy that tells whether task embeddings separate modes.

Each exercise has a reference solution (``*_solution``, the text the notebook's solution cell
shows), an independent reference used by its check (broadcasting written out channel by
channel, an explicit exponential sum, a double loop over tasks and modes), and ``check_*(fn)``.
"""
from __future__ import annotations

import torch

from .checking import Case, Exercise, exercise, randn

EXERCISES: dict[str, Exercise] = {}  # filled by the @exercise declarations below, in order


# ---------------------------------------------------------------------------------------------
# 8.1 A FiLM layer

def film_solution(h, gamma, beta):
    """Feature-wise linear modulation: gamma * h + beta, channel by channel.

    ``h`` is (N, C) (a hidden layer of an MLP) or (N, C, H, W) (a conv feature map);
    ``gamma`` and ``beta`` are (C,). Channel c of every example (and every pixel) is
    scaled by gamma[c] and shifted by beta[c]. Returns a tensor shaped like h.
    """
    shape = (1, -1) + (1,) * (h.dim() - 2)
    return h * gamma.view(shape) + beta.view(shape)


def _reference_film(h, gamma, beta):
    out = h.clone()
    for c in range(h.shape[1]):
        out[:, c] = gamma[c] * h[:, c] + beta[c]
    return out


@exercise(EXERCISES, "8.1", "a FiLM layer", film_solution)
def check_film(g):
    r"""Check ``film(h, gamma, beta)`` on vectors and on images, channel by channel (exercise 8.1).

    Write `film(h, gamma, beta)`: the FiLM modulation $\gamma \odot h + \beta$ that MMAML
    applies after each block of the task network, for `h` of shape (N, C) (an MLP's hidden
    layer) or (N, C, H, W) (a conv net's feature map), with one $\gamma_c$ and one $\beta_c$
    per channel $c$: every example and every pixel of channel $c$ gets the same scale and
    shift.
    """
    for shape in [(4, 3), (2, 3, 5, 5), (1, 6), (2, 4, 4, 4)]:
        h, gamma, beta = randn(*shape, g=g), randn(shape[1], g=g), randn(shape[1], g=g)
        mistakes = [("you applied beta as a scale and gamma as a shift: FiLM is gamma * h + beta.",
                     _reference_film(h, beta, gamma)),
                    ("the shift is added after scaling, not before: gamma * h + beta, not "
                     "gamma * (h + beta).", _reference_film(h, gamma, gamma * beta))]
        if len(shape) == 4 and shape[1] == shape[3] == shape[2]:
            mistakes.append(("you modulated the last axis (width): the channels are axis 1 of "
                             "(N, C, H, W).", h * gamma + beta))
        yield Case((h, gamma, beta), _reference_film(h, gamma, beta), about=f"h of shape {shape}",
                   mistakes=mistakes)


# ---------------------------------------------------------------------------------------------
# 8.2 Softmax (attention) modulation

def softmax_modulation_solution(logits):
    """The scale of MMAML's softmax modulation: gamma = C * softmax(logits) over the
    C channels.

    ``logits`` is (C,), the generator's output for one block. The factor C makes
    uniform attention (equal logits) the identity, gamma = 1. Returns gamma, (C,).
    """
    return logits.shape[0] * torch.softmax(logits, dim=0)


def _reference_softmax_modulation(logits):
    weights = torch.exp(logits - logits.max())
    return len(logits) * weights / weights.sum()


@exercise(EXERCISES, "8.2", "softmax modulation", softmax_modulation_solution)
def check_softmax_modulation(g):
    r"""Check ``softmax_modulation(logits)`` against an explicit exponential sum (exercise 8.2).

    Write `softmax_modulation(logits)`: MMAML's attention-style modulation scales channel
    $c$ of a block by $\gamma_c = C\,\mathrm{softmax}(\ell)_c$, where $\ell$ are the
    generator's $C$ outputs. The channels compete for a fixed total scale $C$; with equal
    logits every $\gamma_c = 1$ and the block is unchanged.
    """
    for size, scale in [(4, 1.0), (7, 3.0), (1, 1.0), (5, 50.0)]:
        logits = scale * randn(size, g=g)
        yield Case((logits,), _reference_softmax_modulation(logits), about=f"C={size}, logits of scale {scale}",
                   mistakes=[("the factor C is missing: softmax alone sums to 1, so an untrained "
                              "modulator would shrink every channel by 1/C.",
                              _reference_softmax_modulation(logits) / size),
                             ("you used the logits' negatives: softmax(l) favours the largest "
                              "logit.", _reference_softmax_modulation(-logits))])


# ---------------------------------------------------------------------------------------------
# 8.3 Do the task embeddings separate the modes?

def nearest_centroid_accuracy_solution(train_embeddings, train_modes, test_embeddings,
                                       test_modes):
    """The share of test tasks whose embedding lies closest to the mean embedding
    (centroid) of their own mode, the centroids taken over the training tasks.

    ``*_embeddings`` are (tasks, D); ``*_modes`` are (tasks,) int64 in 0..M-1, and
    every mode occurs among the training tasks. Distances are Euclidean. Returns a
    float in [0, 1].
    """
    modes = int(train_modes.max()) + 1
    centroids = torch.stack([train_embeddings[train_modes == m].mean(0)
                             for m in range(modes)])
    nearest = torch.cdist(test_embeddings, centroids).argmin(1)
    return (nearest == test_modes).double().mean().item()


def _reference_accuracy(train_x, train_m, test_x, test_m, use_test_centroids=False, farthest=False):
    source_x, source_m = (test_x, test_m) if use_test_centroids else (train_x, train_m)
    modes = sorted(set(train_m.tolist()))
    correct = 0
    for x, m in zip(test_x, test_m):
        distance = {}
        for k in modes:
            members = [e for e, mode in zip(source_x, source_m) if mode == k]
            centroid = sum(members) / len(members)
            distance[k] = float(((x - centroid) ** 2).sum())
        pick = (max if farthest else min)(distance, key=distance.get)
        correct += int(pick == int(m))
    return correct / len(test_m)


@exercise(EXERCISES, "8.3", "do the embeddings separate the modes?", nearest_centroid_accuracy_solution,
          rtol=1e-9)
def check_nearest_centroid_accuracy(g):
    r"""Check ``nearest_centroid_accuracy(...)`` against a loop over tasks and modes (exercise 8.3).

    Write `nearest_centroid_accuracy(train_embeddings, train_modes, test_embeddings,
    test_modes)`: average the training tasks' embeddings of each mode (a centroid per mode),
    give each test task the mode of its nearest centroid, and return the share of test tasks
    given their true mode. Section 8.5 uses it to ask whether MMAML's task encoder tells the
    function families apart without being told them (and section 8.6 whether the modulation
    tells the image modes apart).
    """
    for modes, dim, spread in [(2, 3, 3.0), (3, 5, 3.5), (5, 4, 2.5)]:
        centres = 3 * randn(modes, dim, g=g)
        train_m = torch.arange(40) % modes
        test_m = torch.randint(modes, (30,), generator=g)
        train_x = centres[train_m] + spread * randn(40, dim, g=g)
        test_x = centres[test_m] + spread * randn(30, dim, g=g)
        args = (train_x, train_m, test_x, test_m)
        yield Case(args, _reference_accuracy(*args), about=f"{modes} modes in {dim}-D", mistakes=[
            ("the centroids must come from the training tasks; you computed them on the test tasks.",
             _reference_accuracy(*args, use_test_centroids=True)),
            ("you picked the farthest centroid: the predicted mode is the one at the smallest distance.",
             _reference_accuracy(*args, farthest=True)),
        ])
