"""The geometric picture of Reptile (Nichol et al., 2018, section 6): a 2-D toy problem.

Task i is a line in the plane, {phi : a_i . phi = b_i}, the set of its exact solutions, with the
loss L_i(phi) = (a_i . phi - b_i)^2 (a linear model without bias, one example (a_i, b_i)). Joint
training minimises sum_i L_i, which weighs each line by |a_i|^2; the point closest to all the
solution manifolds minimises sum_i dist(phi, line_i)^2 = sum_i L_i(phi) / |a_i|^2 instead.

k steps of gradient descent on L_i move phi a fraction 1 - (1 - 2 alpha |a_i|^2)^k of the way to
its projection on line i. So Reptile with k = 1 is joint training (section 3.2), and as k grows
its update tends to the mean of the projections, whose fixed point is the closest point.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import check_int, check_positive
from ..tasks.base import TaskBatch


def line_tasks(normals, offsets) -> TaskBatch:
    """One task per line a_i . phi = b_i: a single support example (x = a_i, y = b_i)."""
    a = torch.as_tensor(normals, dtype=torch.float64)
    b = torch.as_tensor(offsets, dtype=torch.float64)
    if a.dim() != 2 or a.shape[1] != 2 or b.shape != (a.shape[0],):
        raise ValueError(f"need normals of shape [n, 2] and offsets of shape [n], got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    x, y = a.unsqueeze(1), b.view(-1, 1, 1)
    return TaskBatch(x, y, x, y)


def closest_point(tasks: TaskBatch) -> torch.Tensor:
    """argmin_phi sum_i dist(phi, line_i)^2 (least squares on the normalised equations)."""
    a, b = tasks.support_x[:, 0], tasks.support_y[:, 0, 0]
    norm = a.norm(dim=1, keepdim=True)
    return torch.linalg.lstsq(a / norm, (b / norm.squeeze(1)).unsqueeze(1)).solution.squeeze(1)


def joint_minimiser(tasks: TaskBatch) -> torch.Tensor:
    """argmin_phi sum_i (a_i . phi - b_i)^2: where joint training converges."""
    a, b = tasks.support_x[:, 0], tasks.support_y[:, 0, 0]
    return torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)


def point_model(start) -> nn.Module:
    """The 2-D parameter phi as a linear model x -> x . phi (so any mlcourse algorithm can train it)."""
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(start, dtype=torch.float64).view(1, 2))
    return model


def reptile_path(tasks: TaskBatch, inner_steps: int, inner_lr: float = 0.25, outer_step_size: float = 0.5,
                 iterations: int = 200, start=(0.0, 0.0)) -> torch.Tensor:
    """The iterates of batched Reptile (all lines every iteration, constant eps): [iterations + 1, 2]."""
    from ..algorithms.reptile import Reptile

    check_int("inner_steps", inner_steps, 1)
    check_positive("outer_step_size", outer_step_size)
    model = point_model(start)
    reptile = Reptile(model, F.mse_loss, inner_lr=inner_lr, inner_steps=inner_steps)
    path = [model.weight.detach().flatten().clone()]
    for _ in range(check_int("iterations", iterations, 1)):
        _, direction = reptile.meta_gradient(tasks)
        with torch.no_grad():
            model.weight -= outer_step_size * direction["weight"]  # theta <- theta + eps (mean W - theta)
        path.append(model.weight.detach().flatten().clone())
    return torch.stack(path)
