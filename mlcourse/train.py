"""Meta-training and evaluation shared by every algorithm and chapter."""
from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .utils import check_int, default_device

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
    ``inner_steps`` defaults to the algorithm's own test-time setting. It stops with
    ``FloatingPointError`` when the adapted model's outputs are not finite.
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
            if not torch.isfinite(s).all():
                raise FloatingPointError(
                    f"evaluation: the adapted model's outputs are not finite on {int((~torch.isfinite(s)).sum())} "
                    f"of tasks {done + 1}..{done + n}: the meta-parameters or the inner step size "
                    "(inner_lr) make adaptation diverge")
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


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: unreadable, or made with other settings."""


CHECKPOINT_FORMAT = 2


def _differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(wanted), key=str):
        a, b = saved.get(key, "(absent)"), wanted.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: checkpoint {a!r}, now {b!r}")
    return out


def _read_checkpoint(path: Path, device) -> dict:
    """The checkpoint at ``path``, or at its backup ``path.prev`` when ``path`` is damaged."""
    tried = []
    for candidate in (path, path.with_name(path.name + ".prev")):
        if not candidate.exists():
            continue
        try:
            state = torch.load(candidate, map_location=device, weights_only=True)
            if not isinstance(state, dict) or "model" not in state:
                raise ValueError("it holds no model state")
        except Exception as err:  # torch raises many kinds for a damaged file
            tried.append(f"{candidate} ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''})")
            continue
        if tried:
            warnings.warn(f"checkpoint {path} is damaged; resuming from its backup {candidate}", stacklevel=3)
        return state
    raise CheckpointError(f"checkpoint {path} cannot be read: {'; '.join(tried)}. Delete it to start over "
                          "(or pass --force-restart on the command line).")


def check_outer_lr_decay(decay) -> tuple:
    """``decay`` as a sorted tuple of ``(iteration, factor)``: from meta-iteration ``iteration`` on
    (counted from 0, so ``iteration`` updates come before it) the outer step size is multiplied by
    ``factor``, cumulatively. Raises a ValueError naming a bad entry and the allowed range."""
    out = []
    for entry in decay or ():
        try:
            at, factor = entry
        except (TypeError, ValueError):
            raise ValueError(f"outer_lr_decay entry {entry!r} is not a pair: allowed (iteration, factor)") from None
        if isinstance(at, bool) or not isinstance(at, int) or at < 0:
            raise ValueError(f"outer_lr_decay iteration {at!r} is out of range: allowed an integer >= 0")
        if not (isinstance(factor, (int, float)) and 0 < factor <= 1):
            raise ValueError(f"outer_lr_decay factor {factor!r} is out of range: allowed 0 < factor <= 1")
        out.append((at, float(factor)))
    if len({at for at, _ in out}) != len(out):
        raise ValueError(f"outer_lr_decay {list(decay)!r} names an iteration twice: allowed one factor per iteration")
    return tuple(sorted(out))


def decay_factor(decay, iteration: int) -> float:
    """The product of the factors of ``decay`` (see :func:`check_outer_lr_decay`) in force at ``iteration``."""
    factor = 1.0
    for at, f in decay or ():
        if iteration >= at:
            factor *= f
    return factor


def _decay_before(settings: dict | None, iteration: int) -> list:
    """The decay steps of ``settings`` that had taken effect before ``iteration`` updates were done."""
    return [list(step) for step in (settings or {}).get("outer_lr_decay") or () if step[0] < iteration]


def _check_settings(path: Path, state: dict, settings: dict | None):
    if settings is None:
        return
    saved = state.get("settings")
    if state.get("format") != CHECKPOINT_FORMAT or saved is None:
        raise CheckpointError(f"checkpoint {path} records no settings (format {state.get('format', 1)}; "
                              f"this version writes {CHECKPOINT_FORMAT}), so it cannot be told apart from another "
                              "run's: delete it or pass --force-restart to start over")
    # A step-size decay that starts at or after the checkpoint's iteration has not yet acted: the run so
    # far is exactly what the new settings would have made, so it may continue under them.
    done = state.get("iteration", 0)
    if _decay_before(saved, done) == _decay_before(settings, done):
        saved = {k: v for k, v in saved.items() if k != "outer_lr_decay"}
        settings = {k: v for k, v in settings.items() if k != "outer_lr_decay"}
    diff = _differences(saved, settings)
    if diff:
        raise CheckpointError(f"checkpoint {path} was made with other settings: {'; '.join(diff)}. Resume with "
                              "the same settings, use another --checkpoint, or pass --force-restart to start over")


def _save_checkpoint(path: Path, state: dict):
    """Write ``state`` atomically, keeping the previous checkpoint as ``path.prev`` until the new one is
    complete on disk: a kill at any moment leaves at least one whole checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if path.exists():
        os.replace(path, path.with_name(path.name + ".prev"))
    os.replace(tmp, path)


#: How meta_train chooses the parameters it leaves in the algorithm (see its docstring).
SELECT = ("last", "best_val")


def meta_train(algorithm, sampler, iterations: int, meta_batch: int, outer_lr: float = 1e-3, optimizer=None,
               val_sampler=None, val_every: int = 0, val_tasks: int = 100, val_inner_steps: int | None = None,
               checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 100, seed: int = 0,
               device=None, progress: bool = True, desc: str = "meta-train", settings: dict | None = None,
               restart: bool = False, select: str = "last", outer_lr_decay=(), time_limit: float | None = None) -> dict:
    """Outer loop: ``iterations`` meta-updates of theta, each on ``meta_batch`` fresh tasks.

    Each step asks the algorithm for ``meta_gradient(batch)`` and applies it with the
    algorithm's ``outer_optimizer(params, outer_lr)`` (MAML: Adam with step size beta =
    ``outer_lr``; Reptile: SGD) unless an ``optimizer`` is given, its step size scaled by
    ``outer_lr_factor(iteration, iterations)`` (see :class:`mlcourse.algorithms.MetaLearner`)
    and by the step decays of ``outer_lr_decay``, pairs ``(iteration, factor)`` (see
    :func:`check_outer_lr_decay`; e.g. ``[(20000, 0.1)]``: a tenth of the step from iteration 20,000).

    Every ``val_every`` iterations it evaluates on ``val_tasks`` tasks of ``val_sampler``.
    With ``checkpoint`` it saves model, optimiser, sampler-generator state, history and
    ``settings`` (what made the run) every ``checkpoint_every`` iterations and at the end, and
    resumes from that file if it exists (so a resumed run continues exactly as an uninterrupted
    one). A checkpoint whose recorded settings differ from ``settings`` raises
    :class:`CheckpointError` before any training, unless ``restart`` (start over). It stops with
    ``FloatingPointError`` on a NaN/Inf loss or gradient.

    Inside a ``torch.distributed`` process group (``python -m mlcourse reproduce ... --nproc N``)
    each process computes the meta-gradient of its share of every meta-batch and the shares are
    averaged (:mod:`mlcourse.distributed`); only rank 0 saves checkpoints and shows progress.

    ``time_limit`` (seconds of this call's training): at the first checkpoint interval (every
    ``checkpoint_every`` iterations) reached after it, training stops there, saves the checkpoint and
    returns as if ``iterations`` had been that number; the history then records
    ``stopped_at_time_limit``. The same call again resumes from the checkpoint for another
    ``time_limit`` (a session with a fixed length, e.g. on Colab, ends with a whole result).

    ``select="best_val"`` keeps a copy of the parameters at the best validation score so far
    (highest accuracy, lowest MSE; saved in the checkpoint too) and leaves the algorithm at
    them when training ends: validation-based checkpoint selection, so an over-trained or noisy
    last iterate is not what gets tested. The history then records ``selected_iteration`` and
    ``selected_val``. ``select="last"`` (default) keeps the last iterate. The choice does not
    change the training trajectory, so a checkpoint resumes under either.

    Returns the history: ``{"iteration", "loss", "val_iteration", "val_mean", "val_ci95", "seconds"}``.
    """
    check_int("iterations", iterations, 0)
    check_int("meta_batch", meta_batch, 1)
    check_int("val_every", val_every, 0)
    check_int("checkpoint_every", checkpoint_every, 1)
    if select not in SELECT:
        raise ValueError(f"select={select!r} is unknown: allowed {', '.join(map(repr, SELECT))}")
    outer_lr_decay = check_outer_lr_decay(outer_lr_decay)
    if time_limit is not None and not (isinstance(time_limit, (int, float)) and 0 <= time_limit < float("inf")):
        raise ValueError(f"time_limit={time_limit!r} is out of range: allowed a number of seconds >= 0, or None")
    if select == "best_val" and not (val_sampler is not None and val_every):
        raise ValueError("select='best_val' needs validation: pass val_sampler and val_every >= 1")
    from . import distributed

    rank, processes = distributed.world()
    if meta_batch < processes:
        raise ValueError(f"meta_batch={meta_batch} is smaller than the number of processes ({processes}): "
                         f"allowed meta_batch >= {processes}")
    device = torch.device(device) if device is not None else default_device()
    algorithm.to(device)
    if optimizer is None:
        optimizer = algorithm.outer_optimizer(algorithm.parameters(), outer_lr)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    generator = torch.Generator().manual_seed(seed)
    history = {"iteration": [], "loss": [], "val_iteration": [], "val_mean": [], "val_ci95": [], "seconds": 0.0}
    start = 0
    best = None  # {"iteration", "val_mean", "model"} at the best validation score so far
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and restart:
        for stale in (path, path.with_name(path.name + ".prev")):
            stale.unlink(missing_ok=True)
    if path is not None and (path.exists() or path.with_name(path.name + ".prev").exists()):
        state = _read_checkpoint(path, device)
        _check_settings(path, state, settings)
        algorithm.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"].cpu())  # map_location may have moved it
        history, start = state["history"], state["iteration"]
        best = state.get("best")  # checkpoints written before selection existed have none

    def save(iteration):
        if path is not None and rank == 0:
            from . import __version__

            _save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "mlcourse": __version__, "settings": settings,
                                    "model": algorithm.state_dict(), "optimizer": optimizer.state_dict(),
                                    "generator": generator.get_state(), "history": history,
                                    "iteration": iteration, "best": best})

    named = dict(algorithm.named_parameters())
    tic = started = time.perf_counter()
    done = max(iterations, start)  # where training ends, unless the time limit stops it earlier
    history.pop("stopped_at_time_limit", None)
    bar = tqdm(range(start, iterations), initial=start, total=iterations, desc=desc, disable=not progress or rank != 0)
    for it in bar:
        algorithm.model.train()
        algorithm.start_iteration(it, iterations)  # the objective's schedules (MAML++), like the step size's below
        batch = sampler.sample(meta_batch, generator=generator).to(device)
        optimizer.zero_grad(set_to_none=True)
        for group in optimizer.param_groups:  # a function of the iteration alone, so a resumed run matches
            group["lr"] = (group["initial_lr"] * algorithm.outer_lr_factor(it, iterations)
                           * decay_factor(outer_lr_decay, it))
        if processes > 1:
            mine = distributed.share(batch, rank, processes)
            loss, grads = algorithm.meta_gradient(mine)
            loss, grads = distributed.average(loss, grads, mine.num_tasks, meta_batch)
        else:
            loss, grads = algorithm.meta_gradient(batch)
        _check_finite(loss.detach(), "the meta-loss", it)
        for name, g in grads.items():
            _check_finite(g, "a meta-gradient", it)
            named[name].grad = g.detach()
        optimizer.step()
        history["iteration"].append(it + 1)
        history["loss"].append(loss.item())
        if val_sampler is not None and val_every and (it + 1) % val_every == 0:
            result = evaluate(algorithm, val_sampler, num_tasks=val_tasks, inner_steps=val_inner_steps, device=device)
            history["val_iteration"].append(it + 1)
            history["val_mean"].append(result["mean"])
            history["val_ci95"].append(result["ci95"])
            if best is None or (result["mean"] > best["val_mean"] if result["metric"] == "accuracy"
                                else result["mean"] < best["val_mean"]):
                best = {"iteration": it + 1, "val_mean": result["mean"],
                        "model": {k: v.detach().clone() for k, v in algorithm.state_dict().items()}}
            bar.set_postfix(loss=f"{loss.item():.4f}", val=f"{result['mean']:.4f}")
        elif (it + 1) % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (it + 1) % checkpoint_every == 0:
            history["seconds"] += time.perf_counter() - tic
            tic = time.perf_counter()
            save(it + 1)
            if time_limit is not None and it + 1 < iterations:
                out_of_time = time.perf_counter() - started >= time_limit
                if processes > 1:  # every rank stops at the same iteration
                    out_of_time = distributed.any_rank(out_of_time, device)
                if out_of_time:
                    done = it + 1
                    history["stopped_at_time_limit"] = done
                    break
    bar.close()
    history["seconds"] += time.perf_counter() - tic
    save(done)
    if select == "best_val" and best is not None:
        algorithm.load_state_dict(best["model"])
        history["selected_iteration"], history["selected_val"] = best["iteration"], best["val_mean"]
    elif select == "best_val":  # no validation has run yet (e.g. fewer iterations than val_every)
        history["selected_iteration"], history["selected_val"] = done, None
    return history
