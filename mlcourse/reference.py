"""Reference runs: committed checkpoints of longer runs, loaded and re-evaluated in seconds.

Each run in ``reference_runs/`` is ``NAME.pt`` (the checkpoint ``python -m mlcourse reproduce
... --checkpoint NAME.pt`` wrote) beside ``NAME.json`` (what that command recorded: command,
settings, hardware, wall time, seed and the test accuracy). A chapter shows three columns, the
live run at its budget, the reference run and the published figure; the middle one comes from

>>> algorithm, record = load("maml_omniglot_5w1s")         # doctest: +SKIP
>>> reevaluate("maml_omniglot_5w1s")["mean"]               # doctest: +SKIP

The folder is ``$MLCOURSE_REFERENCE_RUNS`` if set, else ``reference_runs/`` of the repository
this package runs from; where neither exists (a notebook opened in Colab with the package
installed by pip) the two files are downloaded from the book's repository into the user cache.
"""
from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import torch

from .notebook import REPOSITORY_URL
from .train import CheckpointError, _read_checkpoint, evaluate
from .utils import default_device

ENV = "MLCOURSE_REFERENCE_RUNS"
_REPO_FOLDER = Path(__file__).resolve().parent.parent / "reference_runs"


def folder() -> Path:
    """Where the reference runs are read from (see the module docstring)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    if _REPO_FOLDER.is_dir():
        return _REPO_FOLDER
    import platformdirs

    return Path(platformdirs.user_cache_dir("mlcourse")) / "reference_runs"


def names(where: Path | None = None) -> list[str]:
    """The runs present in the folder: every ``NAME`` with both ``NAME.pt`` and ``NAME.json``."""
    where = folder() if where is None else Path(where)
    return sorted(p.stem for p in where.glob("*.json") if p.with_suffix(".pt").exists())


def download(url: str, target: Path) -> None:
    """Copy ``url`` to ``target`` atomically (through ``TARGET.part``): an interrupted download
    leaves nothing that a later call would take for the whole file. Errors (``OSError``, including
    ``urllib.error.HTTPError``) are the caller's to explain."""
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            out.write(response.read())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)


def _fetch(name: str, where: Path) -> None:
    """Download ``NAME.json`` and ``NAME.pt`` from the book's repository (atomically)."""
    where.mkdir(parents=True, exist_ok=True)
    for suffix in (".json", ".pt"):
        target = where / f"{name}{suffix}"
        if target.exists():
            continue
        url = f"{REPOSITORY_URL}/raw/main/reference_runs/{name}{suffix}"
        try:
            download(url, target)
        except OSError as err:
            raise FileNotFoundError(f"reference run {name!r} is not in {where} and could not be downloaded "
                                    f"from {url} ({err}); set ${ENV} to a folder that holds it") from None


def record(name: str, where: Path | None = None) -> dict:
    """The JSON that ``reproduce`` wrote for the run ``name``."""
    where = folder() if where is None else Path(where)
    path = where / f"{name}.json"
    if not path.exists():
        _fetch(name, where)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"reference run record {path} cannot be read ({err}): restore it with "
                              "`git checkout -- reference_runs` or delete it to download it again") from None


def load(name: str, where: Path | None = None, device=None):
    """``(algorithm, record)``: the run's algorithm with the parameters its record was scored with
    (the validation-selected ones when the run used ``--select best-val``, else the last)."""
    from .recipes import build_algorithm

    where = folder() if where is None else Path(where)
    rec = record(name, where)
    path = where / f"{name}.pt"
    if not path.exists():
        _fetch(name, where)
    device = torch.device(device) if device is not None else default_device()
    settings = rec["settings"]
    algorithm = build_algorithm(settings["method"], settings["benchmark"],
                                settings["ways"] if settings["benchmark"] != "sinusoid" else None,
                                settings["seed"], **settings["hyperparameters"])
    state = _read_checkpoint(path, device)
    if state.get("settings") != settings:
        raise CheckpointError(f"checkpoint {path} was not made by the run that {path.with_suffix('.json')} "
                              "records (their settings differ): re-run the command in the JSON")
    wanted = state["model"]
    if rec.get("select") == "best-val":
        if not state.get("best"):
            raise CheckpointError(f"checkpoint {path} holds no validation-selected parameters although "
                                  f"{path.with_suffix('.json')} says --select best-val: re-run its command")
        wanted = state["best"]["model"]
    algorithm.load_state_dict(wanted)
    algorithm.to(device)
    return algorithm, rec


def reevaluate(name: str, num_tasks: int | None = None, where: Path | None = None, device=None,
               root=None, progress: bool = False, shots: int | None = None,
               transductive: bool | None = None) -> dict:
    """Evaluate the run ``name`` again on its test tasks (``num_tasks``, default as recorded):
    ``evaluate``'s result plus ``recorded`` (the JSON's mean and interval, in the JSON's units).

    ``shots`` and ``transductive`` test the same parameters in another setting (e.g. Reptile,
    trained on 10 shots, tested 5-shot or transductively); ``recorded`` then still holds the
    JSON's own figure, which was measured in the recorded setting."""
    from .recipes import test_sampler

    algorithm, rec = load(name, where, device)
    s = rec["settings"]
    ways = s["ways"] if s["benchmark"] != "sinusoid" else None
    shots = s["shots"] if shots is None else shots
    if transductive is not None:
        algorithm.transductive = transductive
    sampler = test_sampler(s["benchmark"], ways, shots, root=root, protocol=s.get("protocol", "maml"))
    result = evaluate(algorithm, sampler, num_tasks or rec["test_tasks"], device=device, progress=progress)
    result["recorded"] = {"mean": rec.get("mean"), "ci95": rec.get("ci95"), "metric": rec.get("metric")}
    return result


def tested_at(iteration: int, meta_batch: int) -> str:
    """How a table names a reference run's parameters: ``"(23,800 it. of B = 8)"``, the meta-iteration
    tested (the best validation score, or the last) and the tasks per meta-iteration."""
    return f"({iteration:,} it. of B = {meta_batch})"


def column(name: str, num_tasks: int | None = None, device=None, **setting) -> tuple[str, float | None]:
    """A chapter's "reference run" cell: ``(text, accuracy in %, or MSE)`` for the run ``name``
    re-evaluated now on ``num_tasks`` test tasks (``setting``: ``shots``, ``transductive``, see
    :func:`reevaluate`), e.g. ``"97.99 ± 0.22 (16,000 it. of B = 8)"``; or
    ``("no reference run yet", None)`` where the folder holds no such run."""
    try:
        result = reevaluate(name, num_tasks=num_tasks, device=device, **setting)
    except FileNotFoundError:
        return "no reference run yet", None
    made = record(name)
    of = tested_at(made.get("selected_iteration") or made["iterations"], made["meta_batch"])
    if result["metric"] == "mse":  # regression: the mean squared error itself
        return f"{result['mean']:.3f} ± {result['ci95']:.3f} {of}", result["mean"]
    return f"{100 * result['mean']:.2f} ± {100 * result['ci95']:.2f} {of}", 100 * result["mean"]
