"""The functional core every algorithm is built on.

Parameters are dicts ``{name: tensor}`` keyed like ``model.named_parameters()``; a model is run
on any such dict with ``torch.func.functional_call``. The inner loop (k steps of gradient
descent, the map U^k of the course notation) lives here once, with two interchangeable ways of
taking its gradients:

* vectorised: ``torch.func.grad`` inside ``torch.func.vmap`` over the tasks of a batch;
* per task: ``torch.autograd.grad`` in a Python loop over tasks (needed for models that use
  PyTorch's own batch norm, whose second-order gradients under vmap are inexact).

Both give the same numbers (``tests/test_maml.py`` checks it); the first is faster.

``forward`` runs the conv net of :mod:`mlcourse.nn` by an explicit function with PyTorch's fused batch
norm (:mod:`mlcourse.fastpath`: the same function, faster on the per-task path); :func:`task_gradients`
and :func:`map_tasks` can share the tasks out among threads (opt-in, :func:`set_task_workers`).
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import nn
from torch.func import functional_call, vmap

from .fastpath import get_task_workers, pure_forward, run_tasks, set_task_workers, task_workers  # noqa: F401
from .nn import has_torch_batchnorm

Params = Dict[str, torch.Tensor]


def params_of(model: nn.Module) -> Params:
    """The model's trainable parameters as a dict (the meta-parameters theta)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def forward(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Run ``model`` with ``params`` in place of its own parameters (buffers stay the model's).

    The conv net of :mod:`mlcourse.nn` runs by :func:`mlcourse.fastpath.convnet_forward` (the same
    function, with fused batch norm outside ``torch.func`` transforms); other models by ``functional_call``."""
    explicit = pure_forward(model)
    if explicit is not None:
        return explicit(model, params, x)
    return functional_call(model, params, (x,), strict=False)


# ---------------------------------------------------------------------------------------------
# Parameter-dict arithmetic (parameters, gradients and CG vectors are all dicts of tensors)

def dot(a: Params, b: Params) -> torch.Tensor:
    """<a, b> summed over every tensor of the dicts."""
    return sum((a[k] * b[k]).sum() for k in a)


def norm(a: Params) -> torch.Tensor:
    return torch.sqrt(dot(a, a))


def axpy(alpha, x: Params, y: Params) -> Params:
    """alpha * x + y."""
    return {k: alpha * x[k] + y[k] for k in y}


def flatten(a: Params) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in a.values()])


def unflatten(flat: torch.Tensor, like: Params) -> Params:
    out, i = {}, 0
    for k, v in like.items():
        out[k] = flat[i:i + v.numel()].view_as(v)
        i += v.numel()
    return out



def _grads_vectorised(loss_of: Callable[[Params], torch.Tensor], params: Params, create_graph: bool) -> Params:
    # torch.func.grad composes with the outer autograd graph, so the result stays differentiable
    # w.r.t. theta (second order); first-order callers detach it.
    return torch.func.grad(loss_of)(params)


def _grads_autograd(loss_of: Callable[[Params], torch.Tensor], params: Params, create_graph: bool) -> Params:
    with torch.enable_grad():
        # A step taken under no_grad (evaluation) leaves tensors that need re-attaching as leaves.
        # Each entry gets a node of its own (a view), so that the gradient is the partial derivative
        # in that entry even when some entries were computed from others (ProtoMAML's head from the
        # embedding's parameters), as torch.func.grad on the vectorised path takes it.
        leaves = {k: (v.view_as(v) if v.requires_grad else v.detach().requires_grad_()) for k, v in params.items()}
        loss = loss_of(leaves)
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph)
    return dict(zip(leaves.keys(), grads))


def inner_loop(loss_of, params: Params, inner_lr, inner_steps: int, first_order: bool = False,
               vectorised: bool = True, optimizer=None, state=None, return_state: bool = False):
    """U^k: ``inner_steps`` steps of gradient descent phi <- phi - alpha * grad L(phi), from ``params``.

    ``loss_of`` is the loss L(phi), or a list of ``inner_steps`` losses, step j descending the
    j-th (mini-batches, as in Reptile). ``inner_lr`` (alpha) is a float, or a dict of
    per-parameter step sizes (Meta-SGD, MAML++). With ``first_order`` the inner gradients are
    treated as constants (dphi/dtheta = I).

    ``optimizer`` replaces the plain gradient step with a functional optimiser (:class:`SGD`,
    :class:`Adam`) whose ``state`` is passed in (``None``: a fresh one) and, with
    ``return_state``, returned beside phi.
    """
    losses = list(loss_of) if isinstance(loss_of, (list, tuple)) else None
    if losses is not None and len(losses) != inner_steps:
        raise ValueError(f"got {len(losses)} step losses for inner_steps={inner_steps}: need one per step")
    grads_of = _grads_vectorised if vectorised else _grads_autograd
    create_graph = (not first_order) and torch.is_grad_enabled()
    optimizer = SGD() if optimizer is None else optimizer
    state = optimizer.init(params) if state is None else state
    phi = params
    for step in range(inner_steps):
        grads = grads_of(losses[step] if losses is not None else loss_of, phi, create_graph)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        phi, state = optimizer.step(phi, grads, state, inner_lr)
    return (phi, state) if return_state else phi


class SGD:
    """Plain gradient descent, phi <- phi - alpha * g: the inner step of MAML (eq. 1). Stateless."""

    def init(self, params: Params) -> dict:
        return {}

    def step(self, params: Params, grads: Params, state: dict, inner_lr):
        return {k: params[k] - _lr(inner_lr, k) * grads[k] for k in params}, state


class Adam:
    """Adam as a pure function of (phi, g, state), usable under vmap and inside autograd.

    The Reptile paper's inner optimiser is Adam with beta1 = 0 (no momentum), so that is the
    default. ``state`` holds the moment estimates ``m:<name>``, ``v:<name>`` and the step count
    ``t`` (a float tensor, so that it can be saved and averaged).
    """

    def __init__(self, betas=(0.0, 0.999), eps: float = 1e-8):
        beta1, beta2 = betas
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas={betas} are invalid: each must lie in [0, 1)")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def init(self, params: Params) -> dict:
        first = next(iter(params.values()))
        state = {"t": torch.zeros((), dtype=first.dtype, device=first.device)}
        for k, p in params.items():
            state["m:" + k] = torch.zeros_like(p)
            state["v:" + k] = torch.zeros_like(p)
        return state

    def step(self, params: Params, grads: Params, state: dict, inner_lr):
        t = state["t"] + 1
        new_state, new_params = {"t": t}, {}
        for k, p in params.items():
            m = self.beta1 * state["m:" + k] + (1 - self.beta1) * grads[k]
            v = self.beta2 * state["v:" + k] + (1 - self.beta2) * grads[k] ** 2
            m_hat, v_hat = m / (1 - self.beta1 ** t), v / (1 - self.beta2 ** t)  # bias correction
            new_params[k] = p - _lr(inner_lr, k) * m_hat / (v_hat.sqrt() + self.eps)
            new_state["m:" + k], new_state["v:" + k] = m, v
        return new_params, new_state


def _lr(inner_lr, name: str):
    return inner_lr[name] if isinstance(inner_lr, dict) else inner_lr


def has_convolution(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def choose_vectorised(model: nn.Module, vectorise, device=None) -> bool:
    """Resolve a ``vectorise`` option ("auto", True, False) for ``model`` on ``device``.

    "auto" takes the per-task loop for models holding PyTorch batch-norm layers (their
    second-order gradients under vmap are wrong and their running statistics are updated in
    place) and, on the CPU, for convolutional models: there vmap runs per-task weights as one
    grouped convolution over all tasks, which measured 1.6-2x slower than the loop on a 2-core
    CPU (benchmarks/README.md); the loop is also where the conv net's fused batch norm and the task
    threads apply. Everything else, and convolutions on a GPU, take vmap (for MAML on the MLP, vmap's
    place is taken by the tasks folded into the batch dimension, :mod:`mlcourse.fastpath`).
    """
    if vectorise == "auto":
        if has_torch_batchnorm(model):
            return False
        on_cpu = device is None or torch.device(device).type == "cpu"
        return not (on_cpu and has_convolution(model))
    if vectorise is True:
        if has_torch_batchnorm(model):
            raise ValueError(
                "vectorise=True is not allowed for a model with torch.nn.BatchNorm layers: "
                "second-order gradients through F.batch_norm under vmap are inexact and running "
                "statistics cannot be updated under vmap. Use vectorise='auto' (per-task path) or "
                "build the model with mlcourse.nn.BatchNorm.")
        return True
    if vectorise is False:
        return False
    raise ValueError(f"vectorise={vectorise!r} is unknown: allowed 'auto', True or False")


def map_tasks(per_task: Callable, vectorised: bool, *task_tensors: torch.Tensor, chunk_size=None,
              workers: int = 1):
    """Apply ``per_task(*tensors_of_one_task)`` to every task (dim 0) and stack the results.

    Vectorised with ``vmap`` (in chunks of ``chunk_size`` tasks if given, to bound memory) or
    as a loop over tasks, shared out among ``workers`` threads if more than 1 (``per_task`` must
    then be thread-safe: see :func:`mlcourse.fastpath.workers_for`); ``per_task`` may return a
    tensor, or tuples and dicts of tensors.
    """
    if vectorised:
        return vmap(per_task, chunk_size=chunk_size, randomness="different")(*task_tensors)
    return _stack(run_tasks(lambda i: per_task(*(t[i] for t in task_tensors)), task_tensors[0].shape[0], workers))


def task_gradients(task_loss: Callable, params: Params, *task_tensors: torch.Tensor, workers: int = 1):
    """``(mean_i L_i, {name: mean_i dL_i/d params[name]})`` with ``L_i = task_loss(*tensors of task i)``.

    The gradient of the mean of the task losses, taken task by task (each task's graph is freed before
    the next is built, so memory does not grow with the meta-batch), in ``workers`` threads if more than 1.
    Parameters no task loss depends on are left out of the dict."""
    names, leaves = list(params), list(params.values())

    def one(i):
        with torch.enable_grad():
            loss = task_loss(*(t[i] for t in task_tensors))
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return loss.detach(), grads

    results = run_tasks(one, task_tensors[0].shape[0], workers)
    n = len(results)
    total: list = [None] * len(leaves)
    for _, grads in results:  # summed in task order: the same numbers whatever the threads
        total = [t if g is None else (g if t is None else t + g) for t, g in zip(total, grads)]
    losses = torch.stack([loss for loss, _ in results])
    return losses.mean(), {k: t / n for k, t in zip(names, total) if t is not None}


def _stack(outs: list):
    """Stack a list of equally shaped results (tensors, tuples or dicts of them) along a new dim 0."""
    first = outs[0]
    if isinstance(first, dict):
        return {k: _stack([o[k] for o in outs]) for k in first}
    if isinstance(first, tuple):
        return tuple(_stack(list(o)) for o in zip(*outs))
    return torch.stack(outs)
