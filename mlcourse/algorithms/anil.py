"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio and Vinyals, 2020): MAML that adapts only the head."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..functional import Params, inner_loop
from .maml import MAML


def head_parameter_names(model: nn.Module, head: str | None = None) -> list[str]:
    """The names of the parameters of module ``head`` of ``model`` (None: the last module holding
    parameters of its own, e.g. the conv net's ``head`` or the MLP's last linear layer)."""
    owners = {name: m for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    if head is None:
        head = list(owners)[-1]
    if head not in owners:
        raise ValueError(f"head={head!r} is not a module of the model holding parameters: allowed "
                         f"{', '.join(map(repr, owners))}")
    return [f"{head}.{k}" if head else k for k, p in owners[head].named_parameters(recurse=False) if p.requires_grad]


class ANIL(MAML):
    """ANIL: MAML's meta-objective, but the inner loop adapts only the network's head; the body (every
    other layer) is used as theta gives it.

    Adaptation (sec. 4):     phi_i = (theta_body, U^k(theta_head))   U: gradient steps on the support loss
                                                                       with respect to the head alone
    Meta-objective (eq. 3):  min_theta mean_i L_i^test(phi_i), theta = (theta_body, theta_head)

    The body still gets a meta-gradient (through the query loss, and through the head's inner gradients,
    which depend on the body's features), but its Hessian blocks never enter the inner loop: cheaper
    than MAML, and the paper finds it about as accurate (feature reuse). The inner loop is the package's
    (:func:`mlcourse.functional.inner_loop`), run on the head's parameters only.

    Args:
        model, loss_fn, inner_lr, inner_steps, first_order, eval_inner_steps: as for :class:`MAML`.
        head: the name of the module adapted in the inner loop (None: the last one holding parameters).
        vectorise, chunk_size, transductive: see :class:`MetaLearner`.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, inner_lr: float, inner_steps: int = 1,
                 first_order: bool = False, eval_inner_steps: int | None = None, head: str | None = None,
                 vectorise="auto", chunk_size: int | None = None, transductive: bool = True):
        super().__init__(model, loss_fn, inner_lr, inner_steps, first_order, eval_inner_steps, vectorise,
                         chunk_size, transductive)
        self.head = head_parameter_names(model, head)

    def inner_update(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, steps: int,
                     *extra: torch.Tensor) -> Params:
        """(theta_body, U^k(theta_head)): the body's entries are theta's own tensors."""
        body = {k: v for k, v in params.items() if k not in self.head}
        head = {k: params[k] for k in self.head}
        head = inner_loop(lambda h: self.support_loss({**body, **h}, support_x, support_y), head, self.inner_lr,
                          steps, self.first_order, self.vectorised)
        return {**body, **head}
