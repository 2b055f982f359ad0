"""Meta-training and evaluation shared by every algorithm and chapter."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .utils import check_int, check_positive, default_device

Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def confidence_interval(values: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of the normal 95% interval, 1.96 * std / sqrt(n), as the papers report."""
    values = values.double().flatten()
    n = values.numel()
    if n < 2:
        raise ValueError(f"need at least 2 values for an interval, got {n}")
    return values.mean().item(), Z_95 * values.std(unbiased=True).item() / math.sqrt(n)


def task_scores(predictions: torch.Tensor, targets: torch.Tensor) -> tuple[str, torch.Tensor]:
    """Per-task accuracy (integer targets) or mean squared error (real targets)."""
    if targets.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        return "accuracy", (predictions.argmax(-1) == targets).double().mean(dim=1)
    return "mse", ((predictions - targets) ** 2).flatten(1).double().mean(dim=1)


def score_batch(algorithm, batch, inner_steps: int | None = None) -> tuple[str, torch.Tensor]:
    """Adapt to each task of ``batch`` (no outer graph) and score its query set: (metric, per-task scores)."""
    with torch.no_grad():
        predictions = algorithm.predict(batch, inner_steps=inner_steps)
    metric, scores = task_scores(predictions, batch.query_y)
    return metric, scores.cpu()


def evaluate(algorithm, sampler, num_tasks: int = 600, inner_steps: int | None = None, batch_size: int = 25,
             seed: int = 1234, device=None, progress: bool = False) -> dict:
    """Adapt to ``num_tasks`` fresh tasks and score each on its query set.

    Returns ``{"metric", "mean", "ci95", "num_tasks", "scores"}``: accuracy (fraction) or MSE,
    the mean over tasks and the half-width of its 95% interval. The tasks are drawn with a
    generator seeded by ``seed``, so every call (and every algorithm) sees the same tasks.
    """
    check_int("num_tasks", num_tasks, 2)
    check_int("batch_size", batch_size, 1)
    device = torch.device(device) if device is not None else _model_device(algorithm)
    generator = torch.Generator().manual_seed(seed)
    scores, metric, done = [], None, 0
    with tqdm(total=num_tasks, desc="evaluate", disable=not progress, leave=False) as bar:
        while done < num_tasks:
            n = min(batch_size, num_tasks - done)
            metric, s = score_batch(algorithm, sampler.sample(n, generator=generator).to(device), inner_steps)
            scores.append(s)
            done += n
            bar.update(n)
    scores = torch.cat(scores)
    mean, ci = confidence_interval(scores)
    return {"metric": metric, "mean": mean, "ci95": ci, "num_tasks": num_tasks, "scores": scores}


def _model_device(algorithm) -> torch.device:
    try:
        return next(algorithm.model.parameters()).device
    except StopIteration:
        return default_device()


def _check_finite(value: torch.Tensor, what: str, iteration: int):
    if not torch.isfinite(value).all():
        raise FloatingPointError(
            f"{what} is not finite ({value.flatten()[:1].item()}) at meta-iteration {iteration}: stopping "
            "instead of training on garbage. Try a smaller inner_lr or outer_lr.")


def meta_train(algorithm, sampler, iterations: int, meta_batch: int, outer_lr: float = 1e-3, optimizer=None,
               val_sampler=None, val_every: int = 0, val_tasks: int = 100, val_inner_steps: int | None = None,
               checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 100, seed: int = 0,
               device=None, progress: bool = True, desc: str = "meta-train") -> dict:
    """Outer loop: ``iterations`` meta-updates of theta, each on ``meta_batch`` fresh tasks.

    theta <- Adam(theta, grad_theta meta_loss) with step size beta = ``outer_lr`` (or the given
    ``optimizer``). An algorithm provides ``meta_loss(batch)`` (backpropagated here) or
    ``meta_gradient(batch) -> (loss, {name: grad})``. An algorithm with its own outer update
    (Reptile: SGD with an annealed step size) provides ``outer_optimizer(params)``, used when no
    ``optimizer`` is given (``outer_lr`` is then unused), and ``outer_lr_factor(iteration,
    iterations)``, which scales the step size of every parameter group at each iteration.

    Every ``val_every`` iterations it evaluates on ``val_tasks`` tasks of ``val_sampler``.
    With ``checkpoint`` it saves model, optimiser, sampler-generator state and history every
    ``checkpoint_every`` iterations and at the end, and resumes from that file if it exists
    (so a resumed run continues exactly as an uninterrupted one). It stops with
    ``FloatingPointError`` on a NaN/Inf loss or gradient.

    Returns the history: ``{"iteration", "loss", "val_iteration", "val_mean", "val_ci95", "seconds"}``.
    """
    check_int("iterations", iterations, 0)
    check_int("meta_batch", meta_batch, 1)
    check_int("val_every", val_every, 0)
    check_int("checkpoint_every", checkpoint_every, 1)
    device = torch.device(device) if device is not None else default_device()
    algorithm.model.to(device)
    if optimizer is None and callable(getattr(algorithm, "outer_optimizer", None)):
        optimizer = algorithm.outer_optimizer(algorithm.parameters())
    elif optimizer is None:
        optimizer = torch.optim.Adam(algorithm.parameters(), lr=check_positive("outer_lr", outer_lr))
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    lr_factor = getattr(algorithm, "outer_lr_factor", None)
    generator = torch.Generator().manual_seed(seed)
    history = {"iteration": [], "loss": [], "val_iteration": [], "val_mean": [], "val_ci95": [], "seconds": 0.0}
    start = 0
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        state = torch.load(path, map_location=device, weights_only=True)
        algorithm.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"].cpu())  # map_location may have moved it
        history, start = state["history"], state["iteration"]

    def save(iteration):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            torch.save({"model": algorithm.state_dict(), "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(), "history": history, "iteration": iteration}, tmp)
            os.replace(tmp, path)  # never leave a half-written checkpoint

    params = algorithm.parameters()
    tic = time.perf_counter()
    bar = tqdm(range(start, iterations), initial=start, total=iterations, desc=desc, disable=not progress)
    for it in bar:
        algorithm.model.train()
        batch = sampler.sample(meta_batch, generator=generator).to(device)
        optimizer.zero_grad(set_to_none=True)
        if callable(lr_factor):  # a function of the iteration alone, so a resumed run matches
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * lr_factor(it, iterations)
        if callable(getattr(algorithm, "meta_gradient", None)):
            loss, grads = algorithm.meta_gradient(batch)
            named = dict(algorithm.model.named_parameters())
            for name, g in grads.items():
                named[name].grad = g.detach()
            _check_finite(loss.detach(), "the meta-loss", it)
        else:
            loss = algorithm.meta_loss(batch)
            _check_finite(loss.detach(), "the meta-loss", it)  # before backward: no work on garbage
            loss.backward()
        for p in params:
            if p.grad is not None:
                _check_finite(p.grad, "a meta-gradient", it)
        optimizer.step()
        history["iteration"].append(it + 1)
        history["loss"].append(loss.item())
        if val_sampler is not None and val_every and (it + 1) % val_every == 0:
            result = evaluate(algorithm, val_sampler, num_tasks=val_tasks, inner_steps=val_inner_steps, device=device)
            history["val_iteration"].append(it + 1)
            history["val_mean"].append(result["mean"])
            history["val_ci95"].append(result["ci95"])
            bar.set_postfix(loss=f"{loss.item():.4f}", val=f"{result['mean']:.4f}")
        elif (it + 1) % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (it + 1) % checkpoint_every == 0:
            history["seconds"] += time.perf_counter() - tic
            tic = time.perf_counter()
            save(it + 1)
    bar.close()
    history["seconds"] += time.perf_counter() - tic
    save(max(iterations, start))
    return history
