"""Meta-SGD (Li, Zhou, Chen and Li, 2017): learn the initialisation and a step size per parameter."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from ..functional import Params
from ..utils import check_int
from .base import MetaLearner
from .maml import MAML


class MetaSGD(MAML):
    """Meta-SGD: MAML whose inner step size is a meta-learned vector alpha, as large as theta.

    Adaptation (sec. 3, one step):   phi_i = theta - alpha ∘ grad L_i^tr(theta)   (∘: elementwise)
    Meta-objective (sec. 3):         min_{theta, alpha}  mean_i L_i^test(phi_i)

    alpha holds a step size and a direction for every parameter element (entries may turn negative);
    it is meta-learned with theta by the same outer optimiser. The paper adapts with one step; more steps
    (``inner_steps``) reuse the same alpha. MAML's meta-loss (Finn et al., eq. 3) is inherited unchanged:
    only the step size differs, so with alpha constant this is MAML (tests/test_meta_sgd.py checks it).

    Args:
        model, loss_fn: as for :class:`~mlcourse.algorithms.maml.MAML`.
        init_inner_lr: alpha's start: a number > 0 (every entry), or a pair [low, high], 0 < low <= high,
            each entry drawn uniformly from it with torch's global generator (the paper: [0.005, 0.1]).
        inner_steps: steps of adaptation in meta-training (the paper: 1).
        first_order: treat the inner gradient as a constant (alpha still gets its gradient).
        eval_inner_steps, vectorise, chunk_size, transductive: see :class:`MetaLearner`.

    The meta-parameters beyond the model's are ``alpha/<parameter name>`` in :meth:`named_parameters`
    and in :meth:`state_dict`.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, init_inner_lr: float | Sequence[float] = (0.005, 0.1),
                 inner_steps: int = 1, first_order: bool = False, eval_inner_steps: int | None = None,
                 vectorise="auto", chunk_size: int | None = None, transductive: bool = True):
        # MAML's __init__ takes one scalar step size: the shared checks are MetaLearner's
        MetaLearner.__init__(self, model, loss_fn, vectorise, chunk_size, transductive, eval_inner_steps)
        self.inner_steps = check_int("inner_steps", inner_steps, 1)
        self.first_order = bool(first_order)
        low, high = _check_init(init_inner_lr)
        self.alpha = {k: nn.Parameter(torch.empty_like(v.detach()).uniform_(low, high) if high > low
                                      else torch.full_like(v.detach(), low))
                      for k, v in self.meta_parameters().items()}
        self.meta_tensors = {f"alpha/{k}": p for k, p in self.alpha.items()}

    @property
    def inner_lr(self) -> Params:
        """alpha as the functional core's per-parameter step sizes: U(phi) = phi - alpha ∘ grad L(phi)."""
        return dict(self.alpha)


def _check_init(value) -> tuple[float, float]:
    """(low, high) from a number or a [low, high] pair, or a ValueError naming the value and the range."""
    pair = list(value) if isinstance(value, (list, tuple)) else [value, value]
    ok = (len(pair) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
          and all(math.isfinite(v) for v in pair) and 0 < pair[0] <= pair[1])
    if not ok:
        raise ValueError(f"init_inner_lr={value!r} is out of range: allowed a number > 0 or a pair [low, high] "
                         "with 0 < low <= high")
    return float(pair[0]), float(pair[1])
