"""Chapter 11's comparison: every method of the recipe table on the same benchmarks, one JSON per row.

    python -m mlcourse compare --budget default                      # everything, into compare_results/default/
    python -m mlcourse compare --budget smoke --methods maml,fomaml --benchmarks sinusoid omniglot_5w1s

The benchmarks (:data:`SETTINGS`) are the sinusoid (query MSE after the row's own test-time steps,
K = 5 and 10) and Omniglot (accuracy, 5-way and 20-way, 1 and 5 shots). Each row is one recipe
(method, benchmark, ways) at one K, trained and scored by :func:`mlcourse.cli.run_record` (the
code behind ``python -m mlcourse reproduce``, so a row here and a reproduced row are the same
numbers); to its record :func:`compute_row` adds the time and peak memory of one meta-iteration
of the row's training shapes (:func:`mlcourse.profiling.measure`, each in a fresh process: on the
CPU the rise of the peak resident size, see :data:`CPU_MEMORY_ENV`; on a GPU
``torch.cuda.max_memory_allocated``), the published figure and the reference run's.

Rows are written atomically to ``OUT/METHOD_SETTING.json`` (e.g. ``maml_omniglot_5w1s.json``).
A row already on disk with the same settings (:func:`identity`) is not computed again, so an
interrupted comparison resumes where it stopped; one with other settings, or a damaged file, is
reported in one line and left alone (``force`` recomputes). A method with no recipe row for a
benchmark (e.g. one that has only Omniglot rows, on the sinusoid) is listed as skipped.

:func:`load_table` reads a folder back into one list of rows for the notebook;
:func:`markdown_table` and :func:`html_table` render it, :func:`accuracy_vs_time` and
:func:`accuracy_vs_memory` plot it, :func:`pareto_front` and :func:`leaders` read it. The table the
book shows is committed in ``reference_runs/comparison/<budget>/`` (:func:`committed_folder`).
"""
from __future__ import annotations

import functools
import html
import json
import os
import re
import shlex
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .budget import Budget, get_budget
from .published import published
from .recipes import METHODS, RECIPES, Recipe
from .train import CheckpointError
from .utils import default_device

#: Chapter 11's benchmarks: setting name -> (benchmark, ways, shots); ways None for regression.
SETTINGS = {
    "sinusoid_5s": ("sinusoid", None, 5),
    "sinusoid_10s": ("sinusoid", None, 10),
    "omniglot_5w1s": ("omniglot", 5, 1),
    "omniglot_5w5s": ("omniglot", 5, 5),
    "omniglot_20w1s": ("omniglot", 20, 1),
    "omniglot_20w5s": ("omniglot", 20, 5),
}
BENCHMARKS = tuple(dict.fromkeys(b for b, _, _ in SETTINGS.values()))  # names that select all their settings
DEFAULT_OUT = "compare_results"
PROTOCOL = "maml"  # Omniglot's split of characters (the MAML paper's)
# On the CPU, glibc keeps freed memory for reuse, so the resident size after a warm-up run hides what the next
# one needs, and before the warm-up it counts libtorch's code pages as they are first touched (150 MB for a
# 1-40-40-1 MLP). Memory is therefore measured in a process of its own in which allocations of 64 KiB or more are
# mapped and unmapped one by one (glibc's M_MMAP_THRESHOLD): the rise of the peak resident size over one
# meta-iteration after a warm-up is then the peak of its large live tensors. That process would time the
# iteration slower (a system call per large tensor), so the time comes from an ordinary one.
CPU_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024), "MALLOC_TRIM_THRESHOLD_": "0"}
CPU_MEMORY_KIND = "peak RSS increase over one meta-iteration after a warm-up, allocations >= 64 KiB unmapped when freed"
CHECKPOINT_EVERY = 250


def setting_label(setting: str) -> str:
    """``"omniglot_5w1s"`` -> ``"Omniglot 5-way 1-shot"``; ``"sinusoid_5s"`` -> ``"sinusoid K=5"``."""
    benchmark, ways, shots = SETTINGS[setting]
    return f"sinusoid K={shots}" if ways is None else f"Omniglot {ways}-way {shots}-shot"


@dataclass(frozen=True)
class Row:
    """One cell of the comparison: ``method`` on one setting of :data:`SETTINGS`."""

    method: str
    setting: str

    @property
    def benchmark(self) -> str:
        return SETTINGS[self.setting][0]

    @property
    def ways(self) -> int | None:
        return SETTINGS[self.setting][1]

    @property
    def shots(self) -> int:
        return SETTINGS[self.setting][2]

    @property
    def name(self) -> str:
        return f"{self.method}_{self.setting}"

    @property
    def recipe(self) -> Recipe | None:
        return RECIPES.get((self.method, self.benchmark, self.ways))


def _names(values, allowed, what: str) -> list[str]:
    """Split comma-separated names and check each against ``allowed`` (a clear error, before any work)."""
    names = [n.strip() for v in values for n in str(v).split(",") if n.strip()]
    for n in names:
        if n not in allowed:
            raise ValueError(f"{what} {n!r} is unknown: allowed {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def plan(methods=None, benchmarks=None) -> tuple[list[Row], dict[str, list[str]]]:
    """The rows to run and, for each method, the settings it has no recipe row for (skipped).

    ``methods``: names of :data:`mlcourse.recipes.METHODS` (default all); ``benchmarks``: names
    of :data:`BENCHMARKS` (all their settings) or of :data:`SETTINGS` (default all). Comma-separated
    names are split. An unknown name raises ValueError listing the allowed ones."""
    methods = _names(methods, METHODS, "method") if methods else list(METHODS)
    if benchmarks:
        chosen = set()
        for n in _names(benchmarks, (*BENCHMARKS, *SETTINGS), "benchmark"):
            chosen |= {s for s, (b, _, _) in SETTINGS.items() if n in (b, s)}
        settings = [s for s in SETTINGS if s in chosen]
    else:
        settings = list(SETTINGS)
    rows, skipped = [], {}
    for setting in settings:  # benchmark by benchmark: a notebook's table fills in that order
        for method in methods:
            row = Row(method, setting)
            if row.recipe is None:
                skipped.setdefault(method, []).append(setting)
            else:
                rows.append(row)
    return rows, skipped


def _describe(value):
    """A JSON-able description of a recipe value that stays the same from one run to the next: a class or
    function by its name, a ``functools.partial`` by its function and arguments, never a memory address."""
    if isinstance(value, functools.partial):
        return {"partial": _describe(value.func), "args": list(value.args), "keywords": dict(value.keywords)}
    if hasattr(value, "__qualname__"):
        return value.__qualname__
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


def _plain(value):
    """``value`` as JSON would give it back (tuples as lists, callables by name, see :func:`_describe`)."""
    return json.loads(json.dumps(value, default=_describe))


def identity(row: Row, budget: Budget, seed: int, device: torch.device) -> dict:
    """What makes a row's numbers: a row on disk with the same identity is not computed again.

    The recipe row (class, hyperparameters, sizes), K, the sizes the row takes from the budget
    (so that a field added to the budgets for another chapter leaves the rows on disk valid), the
    seed and the kind of device (timings from a GPU and from the CPU do not mix)."""
    recipe = {k: v for k, v in asdict(row.recipe).items() if k not in ("notes", "source")}
    recipe["algorithm"] = f"{row.recipe.algorithm.__module__}.{row.recipe.algorithm.__qualname__}"
    fields = ["eval_tasks", "timing_repeats", row.recipe.iterations]
    if isinstance(row.recipe.meta_batch, str):
        fields.append(row.recipe.meta_batch)
    if row.ways is not None:
        fields += ["omniglot_queries", "val_every", "val_tasks"]
    sizes = {"name": budget.name, **{f: getattr(budget, f) for f in dict.fromkeys(fields)}}
    return _plain({"method": row.method, "benchmark": row.benchmark, "ways": row.ways, "shots": row.shots,
                   "protocol": PROTOCOL if row.ways is not None else None, "seed": seed,
                   "budget": sizes, "device": device.type, "recipe": recipe})


def _differences(saved, wanted, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(wanted, dict):
        if prefix == "budget." and saved.get("name") != wanted.get("name"):
            return [f"budget: {saved.get('name')!r} on disk, {wanted.get('name')!r} now"]
        out = []
        for key in sorted(set(saved) | set(wanted), key=str):
            out += _differences(saved.get(key, "(absent)"), wanted.get(key, "(absent)"), f"{prefix}{key}.")
        return out
    return [] if saved == wanted else [f"{prefix.rstrip('.')}: {saved!r} on disk, {wanted!r} now"]


def check_row(path: Path, wanted: dict) -> tuple[str, str]:
    """``(state, message)`` of the JSON at ``path`` for a row of identity ``wanted``: state
    "missing", "done" (same settings), "stale" (other settings) or "corrupt"; the message is one
    line that names the file and says what to do."""
    if not path.exists():
        return "missing", ""
    try:
        record = json.loads(path.read_text())
        saved = record["compare"]["identity"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        why = type(err).__name__ if not isinstance(err, KeyError) else "no compare settings in it"
        return "corrupt", (f"{path} cannot be read as a comparison row ({why}): delete it, or pass --force "
                           "to compute the row again")
    diff = _differences(saved, wanted)
    if diff:
        more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
        return "stale", (f"{path} was made with other settings ({'; '.join(diff[:3])}{more}): pass --force to "
                         "compute it again with these, or choose another --out")
    return "done", ""


def _write_atomically(path: Path, record: dict) -> None:
    """Write ``record`` as JSON so that a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def reference_runs() -> list[dict]:
    """The records of the runs in ``reference_runs/`` (see :mod:`mlcourse.reference`), unreadable ones left out."""
    from . import reference

    where = reference.folder()
    out = []
    for name in reference.names(where) if where.is_dir() else []:
        try:
            out.append({**reference.record(name, where), "name": name})
        except ValueError:  # damaged: tests/test_reference_runs.py reports it; the table shows none
            continue
    return out


def reference_figure(row: Row, runs: list[dict] | None = None) -> dict | None:
    """The recorded figure of a reference run of the same method, benchmark, ways and K (any length,
    any meta-batch); where several match, the best (highest accuracy, lowest MSE)."""
    found = []
    for rec in reference_runs() if runs is None else runs:
        s = rec.get("settings") or {}
        if (s.get("method"), s.get("benchmark"), s.get("shots")) != (row.method, row.benchmark, row.shots):
            continue
        if row.ways is not None and (s.get("ways"), s.get("protocol", PROTOCOL)) != (row.ways, PROTOCOL):
            continue
        if rec.get("mean") is None:
            continue
        found.append({"name": rec["name"], "mean": rec["mean"], "ci95": rec.get("ci95"), "metric": rec.get("metric"),
                      "iterations": rec.get("selected_iteration") or rec.get("iterations"),
                      "meta_batch": rec.get("meta_batch"), "budget": s.get("budget"),
                      "test_tasks": rec.get("test_tasks")})
    if not found:
        return None
    sign = 1.0 if found[0]["metric"] == "mse" else -1.0  # lower MSE, higher accuracy first
    return min(found, key=lambda f: sign * f["mean"])


def row_command(row: Row, budget: Budget, seed: int, device: torch.device) -> str:
    """The command that computes this row alone (again, with ``--force``)."""
    return ("python -m mlcourse compare " + shlex.join(["--budget", budget.name, "--methods", row.method,
                                                         "--benchmarks", row.setting, "--seed", str(seed),
                                                         "--device", device.type]))


def profile_build(spec: dict, device):
    """:func:`mlcourse.profiling.build`, and with ``spec["train_ways"]`` a batch of that many classes for the
    ``spec["ways"]``-way recipe row (the row's training tasks, where they have more classes than its test tasks)."""
    from .profiling import build
    from .tasks.base import TaskBatch

    spec = dict(spec)
    train_ways = spec.pop("train_ways", None)
    algorithm, batch = build(spec, device)
    if train_ways is not None:
        t, k, q = spec["meta_batch"], spec["shots"], spec["queries"]
        labels = lambda m: torch.arange(train_ways).repeat_interleave(m).repeat(t, 1)  # noqa: E731
        batch = TaskBatch(torch.rand(t, train_ways * k, 1, 28, 28), labels(k),
                          torch.rand(t, train_ways * q, 1, 28, 28), labels(q)).to(device)
    return algorithm, batch


def compute_row(row: Row, budget: Budget, seed: int = 0, device=None, root=None, command: str | None = None,
                checkpoint=None, restart: bool = False, progress: bool = False, runs: list[dict] | None = None) -> dict:
    """Train, score and profile one row; its record (``reproduce``'s fields and the comparison's)."""
    from .cli import run_record
    from .profiling import measure

    device = torch.device(device) if device is not None else default_device()
    tic = time.perf_counter()
    command = command or row_command(row, budget, seed, device)
    record, result = run_record(row.method, row.benchmark, row.ways, row.shots, budget, command=command, seed=seed,
                                device=device, root=root, protocol=PROTOCOL, checkpoint=checkpoint,
                                checkpoint_every=CHECKPOINT_EVERY, restart=restart, progress=progress)
    # one meta-iteration of the row's training tasks: meta-batch, ways, K and queries as its sampler draws them
    train = result["train"]
    spec = dict(algorithm=row.method, model="mlp" if row.ways is None else "convnet", benchmark=row.benchmark,
                meta_batch=result["meta_batch"], shots=train.shots, queries=train.queries,
                threads=torch.get_num_threads())
    if row.ways is not None:
        spec["ways"] = row.ways
        if train.ways != row.ways:  # ProtoNets train 60-way for a 5-way test
            spec["train_ways"] = train.ways
    cost = measure(spec, device=device, repeats=budget.timing_repeats, builder=profile_build)
    if device.type == "cpu":
        with _environment(CPU_MEMORY_ENV):  # inherited by the measuring process (spawned) alone
            memory = measure(spec, device=device, repeats=1, builder=profile_build)
        peak, kind = max(0, memory["peak_bytes"]), CPU_MEMORY_KIND  # below the resolution: 0, not a negative
    else:
        peak, kind = cost["peak_bytes"], cost["memory_kind"]
    iterations = record["iterations"]
    record.update(
        ways=row.ways, setting=row.setting, row=row.name,
        seconds_per_iteration=cost["seconds"], peak_bytes=peak, memory_kind=kind,
        timing_repeats=budget.timing_repeats, profile=spec,
        train_seconds_per_iteration=record["train_seconds"] / iterations if iterations else None,
        reference=reference_figure(row, runs), reproduce_command=_reproduce_command(row, budget, seed, device),
        compare={"identity": identity(row, budget, seed, device),
                 "row_command": row_command(row, budget, seed, device)})
    record["wall_seconds"] = time.perf_counter() - tic
    return record


class _environment:
    """Set environment variables for the ``with`` block (a spawned process inherits them), then restore them."""

    def __init__(self, values: dict):
        self.values, self.saved = values, {}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _reproduce_command(row: Row, budget: Budget, seed: int, device: torch.device) -> str:
    args = ["reproduce", row.method, row.benchmark, "--shots", str(row.shots)]
    if row.ways is not None:
        args += ["--ways", str(row.ways)]
    return "python -m mlcourse " + shlex.join([*args, "--budget", budget.name, "--seed", str(seed),
                                               "--device", device.type])


def _warning_summary(caught) -> list[dict]:
    """Warnings raised while computing a row, by kind: ``{"category", "count", "first"}`` (kept in its JSON)."""
    kinds = {}
    for w in caught:
        name = w.category.__name__
        first = (str(w.message).splitlines() or [""])[0]
        entry = kinds.setdefault(name, {"category": name, "count": 0, "first": first})
        entry["count"] += 1
    return list(kinds.values())


def _check_device(device) -> torch.device:
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a device: allowed e.g. cpu, cuda, cuda:1") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for, but no CUDA device is available here: allowed cpu")
    return device


def _check_folder(out: Path) -> Path:
    """Make the output folder and prove it can be written now, not after the first long row."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder (one JSON per row goes into it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"--out {out} cannot be written ({err.strerror}): choose another folder") from None
    return out


def compare(budget: Budget | str | None = None, methods=None, benchmarks=None, out=None, seed: int = 0,
            device=None, root=None, force: bool = False, command: str | None = None, row_progress: bool = False,
            log=None) -> dict:
    """Compute every row of :func:`plan` not yet in ``out`` (default ``compare_results/<budget>``).

    Everything is checked (names, budget, device, the folder, Omniglot's data) before the first
    row. Returns a summary: ``out``, and lists of row names ``computed``, ``done`` (on disk, same
    settings), ``stale`` (other settings, left alone), ``corrupt`` (unreadable, left alone),
    ``failed`` (training diverged or raised: nothing written, tried again next time), and
    ``skipped`` ({method: settings without a recipe row}). ``log`` prints one-line messages
    (default: to stderr, above the progress bar)."""
    from tqdm.auto import tqdm

    if log is None:
        def log(message):
            tqdm.write(message, file=sys.stderr)
    budget = budget if isinstance(budget, Budget) else get_budget(budget)
    rows, skipped = plan(methods, benchmarks)
    device = _check_device(device)
    out = _check_folder(Path(out) if out is not None else Path(DEFAULT_OUT) / budget.name)
    summary = {"out": str(out), "computed": [], "done": [], "stale": [], "corrupt": [], "failed": [],
               "skipped": skipped}
    selected = {row.setting for row in rows} | {s for settings in skipped.values() for s in settings}
    for method, settings in skipped.items():
        where = "any selected benchmark" if set(settings) == selected else ", ".join(settings)
        log(f"skipped {method}: no recipe row for {where} (mlcourse/recipes.py)")
    pending = []
    for row in rows:
        path = out / f"{row.name}.json"
        state, message = ("missing", "") if force else check_row(path, identity(row, budget, seed, device))
        if state == "missing":
            pending.append(row)
        else:
            summary[state].append(row.name)
            if message:
                log(message)
    if any(row.ways is not None for row in pending):  # a missing data set is said now, not after the sinusoid rows
        from .tasks.omniglot import load_omniglot

        load_omniglot(root, progress=row_progress)
    runs = reference_runs()
    checkpoints = out / "checkpoints"
    bar = tqdm(pending, desc=f"compare ({budget.name})", unit="row", file=sys.stderr, disable=not pending)
    for row in bar:
        bar.set_postfix_str(row.name)
        if not force:  # another process on the same folder may have finished it meanwhile
            state, _ = check_row(out / f"{row.name}.json", identity(row, budget, seed, device))
            if state == "done":
                summary["done"].append(row.name)
                continue
        checkpoint = checkpoints / f"{row.name}.pt"
        checkpoints.mkdir(exist_ok=True)
        try:
            with warnings.catch_warnings(record=True) as caught:  # one line per kind, not one per iteration
                warnings.simplefilter("always")
                record = compute_row(row, budget, seed, device, root, command, checkpoint=checkpoint,
                                     restart=force, progress=row_progress, runs=runs)
        except CheckpointError as err:  # an unfinished run of this row that cannot be resumed: kept, not overwritten
            why = re.split(r"\. Resume|\. Delete|: delete", str(err))[0]  # its advice names reproduce's options
            log(f"{row.name} not run: {why}; delete it, or pass --force to start the row over")
            summary["failed"].append(row.name)
            continue
        except (ValueError, FloatingPointError, RuntimeError) as err:  # this row's recipe is wrong, it diverged
            # or broke: said in one line, and the other rows still run (data, names, folder were checked before)
            first = str(err).splitlines()[0] if str(err) else ""
            log(f"{row.name} failed ({type(err).__name__}: {first[:200]}); nothing written, it runs again next "
                f"time: {row_command(row, budget, seed, device)}")
            summary["failed"].append(row.name)
            continue
        record["warnings"] = _warning_summary(caught)
        for w in record["warnings"]:
            log(f"{row.name}: {w['count']} x {w['category']}, e.g. {w['first'][:200]}")
        record["checkpoint"] = None  # deleted below: the JSON is the result now
        _write_atomically(out / f"{row.name}.json", record)
        for stale in (checkpoint, checkpoint.with_name(checkpoint.name + ".prev")):
            stale.unlink(missing_ok=True)
        summary["computed"].append(row.name)
    bar.close()
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()
    return summary


# -- reading a folder back: the chapter's table and figures -------------------------------------------------------

def _order(row: dict):
    setting = list(SETTINGS).index(row["setting"]) if row["setting"] in SETTINGS else len(SETTINGS)
    method = METHODS.index(row["method"]) if row["method"] in METHODS else len(METHODS)
    return setting, method, row["method"]


def load_table(folder, reference: bool = True) -> list[dict]:
    """Every row JSON in ``folder`` as one flat dict per row, ordered by setting then method.

    Keys: method, setting, label, benchmark, ways, shots, metric ("accuracy_percent" or "mse"),
    mean, ci95, test_tasks, published (``{"mean", "ci95"}`` or None, looked up again in
    :mod:`mlcourse.published`), reference (a reference run's recorded figure or None; with
    ``reference`` looked up again now, so a run added since shows),
    seconds_per_iteration, peak_mb, memory_kind, device, hardware, torch, budget, seed,
    iterations, meta_batch, train_seconds, wall_seconds, path, results (the figure after each number
    of test-time steps the row was scored with, keyed by the steps as a string). A file that cannot
    be read is left out with a warning naming it."""

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of comparison rows: make it with "
                                f"`python -m mlcourse compare --out {folder}`")
    runs = reference_runs() if reference else None
    table = []
    for path in sorted(folder.glob("*.json")):
        try:
            r = json.loads(path.read_text())
            setting = r["setting"]
            entry = {"method": r["algorithm"], "setting": setting,
                     "label": setting_label(setting) if setting in SETTINGS else setting,
                     "benchmark": r["benchmark"], "ways": r.get("ways"), "shots": r["shots"], "metric": r["metric"],
                     "mean": r["mean"], "ci95": r["ci95"], "test_tasks": r["test_tasks"],
                     "published": r.get("published"),
                     "reference": r.get("reference"), "seconds_per_iteration": r["seconds_per_iteration"],
                     "peak_mb": r["peak_bytes"] / 2**20, "memory_kind": r["memory_kind"], "device": r["device"],
                     "hardware": r["hardware"], "torch": r["torch"], "budget": r["budget"]["name"], "seed": r["seed"],
                     "iterations": r["iterations"], "meta_batch": r["meta_batch"], "train_seconds": r["train_seconds"],
                     "wall_seconds": r.get("wall_seconds"), "path": str(path),
                     "results": r.get("results")}
        except (OSError, ValueError, KeyError, TypeError) as err:
            warnings.warn(f"{path} is not a readable comparison row ({type(err).__name__}: {err}): left out of the "
                          "table; delete it, or compute it again with `python -m mlcourse compare --force`",
                          stacklevel=2)
            continue
        if entry["setting"] in SETTINGS:  # a figure added (or corrected) since the row was made shows
            entry["published"] = published(entry["method"], entry["benchmark"], entry["ways"], entry["shots"])
        if runs is not None and entry["setting"] in SETTINGS:
            entry["reference"] = reference_figure(Row(entry["method"], entry["setting"]), runs) or entry["reference"]
        table.append(entry)
    return sorted(table, key=_order)


def figure(mean, ci95, metric) -> str:
    """``"94.14 ± 0.42"`` (accuracy %, two decimals) or ``"0.0141 ± 0.011"`` (MSE, three significant digits
    and two for the interval, so that an MSE of 0.001 does not print as 0.001 ± 0.000)."""
    if mean is None:
        return "—"
    if metric == "mse":
        return f"{mean:.3g}" + ("" if ci95 is None else f" ± {ci95:.2g}")
    return f"{mean:.2f}" + ("" if ci95 is None else f" ± {ci95:.2f}")


def _cells(row: dict) -> list[str]:
    from .reference import tested_at

    ref = row["reference"]
    reference = "—" if not ref else figure(ref["mean"], ref["ci95"], row["metric"])
    if ref and ref.get("iterations"):
        reference += " " + tested_at(ref["iterations"], ref["meta_batch"])
    published = row["published"] or {}
    return [row["label"], row["method"], figure(row["mean"], row["ci95"], row["metric"]),
            figure(published.get("mean"), published.get("ci95"), row["metric"]), reference,
            f"{row['seconds_per_iteration']:.3g}", f"{row['peak_mb']:.1f}"]


HEADER = ["benchmark", "method", "result (accuracy % or MSE)", "published", "reference run",
          "s / meta-iteration", "peak memory (MB)"]


def caption(rows: list[dict]) -> str:
    """Where and how the rows were made: budgets, seeds, test tasks, hardware, torch, memory measure."""
    def values(key):
        return ", ".join(str(v) for v in dict.fromkeys(r[key] for r in rows))

    return (f"budget {values('budget')}, seed {values('seed')}, {values('test_tasks')} test tasks (mean ± 95% "
            f"interval); accuracy in % (Omniglot), query MSE after adaptation (sinusoid); one meta-iteration on "
            f"{values('hardware')} (torch {values('torch')}), memory: {values('memory_kind')}")


def markdown_table(rows: list[dict], with_caption: bool = True, with_setting: bool = True) -> str:
    """The table as Markdown (what the notebook shows), with :func:`caption` above it unless told not to;
    ``with_setting=False`` leaves out the first column (for a table of one setting under its heading)."""
    from .notebook import markdown_table as render

    first = 0 if with_setting else 1
    return render(HEADER[first:], [_cells(r)[first:] for r in rows],
                  caption=caption(rows) if rows and with_caption else None)


def html_table(rows: list[dict]) -> str:
    """The table as an HTML ``<table>``."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>\n" for r in rows)
    cap = f"<caption>{html.escape(caption(rows))}</caption>" if rows else ""
    return f"<table>{cap}\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def _tradeoff(rows: list[dict], x: str, xlabel: str, settings=None, cols: int = 3):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    from .plots import grid

    settings = [s for s in (settings or SETTINGS) if any(r["setting"] == s for r in rows)]
    if not settings:
        raise ValueError("no rows to plot: load a folder written by `python -m mlcourse compare` first")
    fig, axes = grid(len(settings), cols=min(cols, len(settings)))
    colours, markers = plt.get_cmap("tab20"), "os^Dv<>"  # 20 colours, 7 markers: 140 distinct pairs
    for ax, setting in zip(axes, settings):
        chosen = sorted((r for r in rows if r["setting"] == setting), key=lambda r: r[x])
        errors = [error_of(r) for r in chosen]  # lower is better on both benchmarks
        for i, (r, y) in enumerate(zip(chosen, errors)):  # a method keeps its colour from panel to panel
            index = _order(r)[1]
            ci = r["ci95"] or 0.0
            below = min(ci, 0.999 * y)  # a log axis has no 0: a bar reaching past it is cut at the axis
            ax.errorbar(r[x], y, yerr=[[below], [ci]], fmt=markers[index % len(markers)],
                        color=colours(index % 20), capsize=3)
            # labels of neighbours in x alternate above and below their points, to overlap less
            ax.annotate(r["method"], (r[x], y), textcoords="offset points", xytext=(4, 3 if i % 2 else -10),
                        fontsize=8)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        positive = [e for e in errors if e > 0]
        if positive:
            ax.set_ylim(min(positive) / 2, max(e + (r["ci95"] or 0) for r, e in zip(chosen, errors)) * 1.5)
        values = [r[x] for r in chosen if r[x] > 0]
        if len(values) == len(chosen):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 0.02, 0.05, 0.1, ...: labels
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))       # that never run into each other
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:  # a figure below the measure's resolution is 0: linear near it, logarithmic beyond
            ax.set_xscale("symlog", linthresh=min(values) if values else 1.0)
        ax.set_xlabel(xlabel)
        mse = chosen[0]["metric"] == "mse"
        ax.set_ylabel("query MSE (lower is better)" if mse else "error % = 100 - accuracy (lower is better)")
        ax.set_title(setting_label(setting) if setting in SETTINGS else setting, fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def accuracy_vs_time(rows: list[dict], settings=None, cols: int = 3):
    """Result against seconds per meta-iteration, one point per method, a panel per setting: the error
    (query MSE, or 100 minus the accuracy in %) with its 95% interval, both axes logarithmic, so that
    98% and 99% accuracy are as far apart as 80% and 90%, and lower is better on every panel."""
    return _tradeoff(rows, "seconds_per_iteration", "seconds per meta-iteration", settings, cols)


def accuracy_vs_memory(rows: list[dict], settings=None, cols: int = 3):
    """Result against peak memory of a meta-iteration (MB), drawn as :func:`accuracy_vs_time` draws it."""
    return _tradeoff(rows, "peak_mb", "peak memory of a meta-iteration (MB)", settings, cols)


# -- reading the table: what is worth picking ---------------------------------------------------------------------

def error_of(row: dict) -> float:
    """The row's figure as an error, lower is better: the MSE, or 100 minus the accuracy in %."""
    return row["mean"] if row["metric"] == "mse" else 100.0 - row["mean"]


def pareto_front(rows: list[dict], cost: str = "seconds_per_iteration") -> list[dict]:
    """The rows of one setting that no other row dominates in ``cost`` and :func:`error_of`.

    Row i is dominated when some row j is no worse in both (``cost`` and error) and strictly better
    in one; rows with equal cost and error do not dominate each other (exercise 11.3). Returned in
    order of increasing cost."""
    if len({r["setting"] for r in rows}) > 1:
        raise ValueError("pareto_front compares the rows of one setting: select them first, e.g. "
                         "[r for r in rows if r['setting'] == 'omniglot_5w1s']")
    points = [(r[cost], error_of(r)) for r in rows]

    def dominated(i):
        ci, ei = points[i]
        return any(cj <= ci and ej <= ei and (cj < ci or ej < ei) for cj, ej in points)

    return sorted((r for i, r in enumerate(rows) if not dominated(i)), key=lambda r: (r[cost], error_of(r)))


def leaders(rows: list[dict]) -> list[dict]:
    """The rows of one setting statistically tied with its best: those whose difference from the best
    row lies within that difference's 95% interval, taken as sqrt(ci_best^2 + ci_row^2) (exercise 11.1).
    The rows of a setting are tested on the same tasks, for which a paired interval would be narrower
    (exercise 11.2); the rows keep no per-task scores, so this is the conservative, unpaired test. Best
    first (equal errors: the cheaper per meta-iteration first); a row without an interval is tied with
    no other."""
    if not rows:
        return []
    if len({r["setting"] for r in rows}) > 1:
        raise ValueError("leaders compares the rows of one setting: select them first")
    ranked = sorted(rows, key=lambda r: (error_of(r), r.get("seconds_per_iteration", 0.0)))
    best = ranked[0]

    def tied(r):
        if r is best:
            return True
        if best["ci95"] is None or r["ci95"] is None:
            return False
        return error_of(r) - error_of(best) <= (best["ci95"] ** 2 + r["ci95"] ** 2) ** 0.5

    return [r for r in ranked if tied(r)]


# -- the table the book shows ---------------------------------------------------------------------------------------

COMMITTED = "comparison"  # reference_runs/comparison/<budget>/: the rows chapter 11 shows, committed


def committed_folder(budget: str = "default", download: bool = True) -> Path:
    """The committed comparison of ``budget``: ``<reference runs>/comparison/<budget>/`` (the reference
    runs' folder, :func:`mlcourse.reference.folder`). Where it is absent (the package installed by pip,
    e.g. in Colab) its rows are downloaded from the book's repository, row by row of :func:`plan` (a row
    the repository does not have, HTTP 404, is skipped), into a ``.part`` folder renamed when all are in:
    an interrupted download leaves no half table behind."""
    from . import reference

    where = reference.folder() / COMMITTED / budget
    if where.is_dir() or not download:
        return where
    import shutil
    import urllib.error

    from .notebook import REPOSITORY_URL

    make = f"make it with `python -m mlcourse compare --budget {budget} --out {where}`"
    partial = where.with_name(where.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for row in plan()[0]:
            url = f"{REPOSITORY_URL}/raw/main/reference_runs/{COMMITTED}/{budget}/{row.name}.json"
            target = partial / f"{row.name}.json"
            try:
                reference.download(url, target)
                json.loads(target.read_text())  # a row that is not JSON fails the whole download
            except urllib.error.HTTPError as err:
                if err.code == 404:  # a row that the committed table does not have
                    continue
                raise
        if not any(partial.iterdir()):
            raise FileNotFoundError(f"the book's repository has no committed comparison for budget {budget!r}: "
                                    f"{make}")
        partial.rename(where)
    except (OSError, ValueError) as err:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(err, FileNotFoundError):
            raise
        raise FileNotFoundError(f"the committed comparison ({budget}) is not in {where} and could not be "
                                f"downloaded ({err}); set ${reference.ENV} to a folder that holds "
                                f"{COMMITTED}/{budget}/, or {make}") from None
    return where


def summary_lines(summary: dict) -> list[str]:
    """The end-of-run report, one line per kind of row."""
    lines = [f"compare: {summary['out']}: {len(summary['computed'])} computed, {len(summary['done'])} already "
             f"on disk"]
    for key, what in (("stale", "made with other settings (left alone)"), ("corrupt", "unreadable (left alone)"),
                      ("failed", "failed (nothing written)")):
        if summary[key]:
            lines.append(f"  {len(summary[key])} {what}: {', '.join(summary[key])}")
    if summary["skipped"]:
        count = sum(len(v) for v in summary["skipped"].values())
        lines.append(f"  {count} skipped (no recipe row): "
                     + "; ".join(f"{m} on {', '.join(s)}" for m, s in summary["skipped"].items()))
    return lines


def needs_attention(summary: dict) -> bool:
    return bool(summary["stale"] or summary["corrupt"] or summary["failed"])


__all__ = ["SETTINGS", "BENCHMARKS", "Row", "plan", "identity", "check_row", "compute_row", "compare", "load_table",
           "markdown_table", "html_table", "accuracy_vs_time", "accuracy_vs_memory", "reference_figure", "figure",
           "error_of", "pareto_front", "leaders", "committed_folder"]
