"""Proto-MAML (Triantafillou et al., 2020, sec. 3): MAML whose output layer starts, for each task, as the
linear classifier equivalent to Prototypical Networks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import vmap

from ..functional import Params, forward, inner_loop
from ..tasks.base import TaskBatch
from .amortised import class_sums, support_targets
from .maml import MAML

HEAD = ("head.weight", "head.bias")  # phi's task-specific output layer, beside theta (the embedding's)


class ProtoMAML(MAML):
    """Proto-MAML: theta is an embedding network; for each task an output layer is built from the support
    set's prototypes, then every parameter (embedding and layer) takes MAML's inner steps.

    Initial head (sec. 3):   W_k = 2 c_k,  b_k = -||c_k||^2,  c_k the prototypes of f_theta (ProtoNet, eq. 1),
                             so before any step the logits are ProtoNet's -||f(x) - c_k||^2 plus ||f(x)||^2,
                             the same for every class (the same softmax)
    Adaptation:              phi_i = U^k(theta, W, b) on the support loss (MAML's inner loop)
    Meta-objective:          min_theta mean_i L_i^test(phi_i); the gradient reaches theta through the inner
                             loop and through the prototypes of the initial head

    The paper trains first-order (fo-Proto-MAML) for Meta-Dataset's cost; ``first_order`` chooses. The
    head is no meta-parameter: it is rebuilt for every task, so one model serves any N.

    Args:
        model: the embedding network f_theta (``ConvNet(None)``).
        loss_fn, inner_lr, inner_steps, first_order, eval_inner_steps, vectorise, chunk_size,
            transductive: as for :class:`MAML`.
    """

    def outputs(self, phi: Params, x: torch.Tensor) -> torch.Tensor:
        """Logits W f(x) + b of the adapted embedding and head."""
        body = {k: v for k, v in phi.items() if k not in HEAD}
        return F.linear(forward(self.model, body, x), phi["head.weight"], phi["head.bias"])

    def support_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.outputs(params, x), y)

    def initial_head(self, params: Params, support_x: torch.Tensor, targets: torch.Tensor) -> Params:
        """W_k = 2 c_k and b_k = -||c_k||^2 from the prototypes c_k of the embedded support set."""
        sums, shots = class_sums(forward(self.model, params, support_x), targets)
        prototypes = sums / shots.unsqueeze(-1)
        return {"head.weight": 2 * prototypes, "head.bias": -(prototypes ** 2).sum(-1)}

    def task_extras(self, batch: TaskBatch, steps: int) -> tuple:
        return (support_targets(batch.support_y, next(self.model.parameters()).dtype, "ProtoMAML"),)

    def inner_update(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, steps: int,
                     targets: torch.Tensor | None = None) -> Params:
        """U^k from (theta, initial head): MAML's inner loop on every parameter."""
        if targets is None:
            targets = support_targets(support_y, next(self.model.parameters()).dtype, "ProtoMAML")
        # the head is computed from theta; the inner loop's gradient is still the partial one in each entry
        # (mlcourse.functional gives every entry a node of its own on both paths)
        start = {**params, **self.initial_head(params, support_x, targets)}
        return inner_loop(lambda p: self.support_loss(p, support_x, support_y), start, self.inner_lr, steps,
                          self.first_order, self.vectorised)

    def query_outputs(self, phi: Params, support_x: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        if self.transductive:
            return self.outputs(phi, query_x)
        return vmap(lambda x: self.outputs(phi, torch.cat([support_x, x.unsqueeze(0)]))[-1])(query_x)

    def meta_loss(self, batch: TaskBatch) -> torch.Tensor:
        """MAML's mean_i L_i^test(phi_i), scored through each task's own head (``query_outputs``)."""
        theta = self.meta_parameters()
        extras = self.task_extras(batch, self.inner_steps)

        def query_loss(sx, sy, qx, qy, targets):
            return self.loss_fn(self.query_outputs(self.adapt(sx, sy, theta, None, targets), sx, qx), qy)

        return self.map_tasks(query_loss, *batch, *extras).mean()
