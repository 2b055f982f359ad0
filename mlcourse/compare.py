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
:func:`accuracy_vs_memory` plot it.
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
    """The recorded figure of a reference run of the same method, benchmark, ways and K (any length)."""
    for rec in reference_runs() if runs is None else runs:
        s = rec.get("settings") or {}
        if (s.get("method"), s.get("benchmark"), s.get("shots")) != (row.method, row.benchmark, row.shots):
            continue
        if row.ways is not None and (s.get("ways"), s.get("protocol", PROTOCOL)) != (row.ways, PROTOCOL):
            continue
        return {"name": rec["name"], "mean": rec.get("mean"), "ci95": rec.get("ci95"), "metric": rec.get("metric"),
                "iterations": rec.get("selected_iteration") or rec.get("iterations"),
                "meta_batch": rec.get("meta_batch"), "budget": s.get("budget"), "test_tasks": rec.get("test_tasks")}
    return None


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
    mean, ci95, test_tasks, published (``{"mean", "ci95"}`` or None), reference (a reference run's
    recorded figure or None; with ``reference`` looked up again now, so a run added since shows),
    seconds_per_iteration, peak_mb, memory_kind, device, hardware, torch, budget, seed,
    iterations, meta_batch, train_seconds, wall_seconds, path. A file that cannot be read is left
    out with a warning naming it."""

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
                     "wall_seconds": r.get("wall_seconds"), "path": str(path)}
        except (OSError, ValueError, KeyError, TypeError) as err:
            warnings.warn(f"{path} is not a readable comparison row ({type(err).__name__}: {err}): left out of the "
                          "table; delete it, or compute it again with `python -m mlcourse compare --force`",
                          stacklevel=2)
            continue
        if runs is not None and entry["setting"] in SETTINGS:
            entry["reference"] = reference_figure(Row(entry["method"], entry["setting"]), runs) or entry["reference"]
        table.append(entry)
    return sorted(table, key=_order)


def _figure(mean, ci95, metric) -> str:
    if mean is None:
        return "—"
    digits = 2 if metric != "mse" else 3
    return f"{mean:.{digits}f}" + ("" if ci95 is None else f" ± {ci95:.{digits}f}")


def _cells(row: dict) -> list[str]:
    ref = row["reference"]
    reference = "—" if not ref else (_figure(ref["mean"], ref["ci95"], row["metric"])
                                     + (f" ({ref['iterations']:,} it.)" if ref.get("iterations") else ""))
    published = row["published"] or {}
    return [row["label"], row["method"], _figure(row["mean"], row["ci95"], row["metric"]),
            _figure(published.get("mean"), published.get("ci95"), row["metric"]), reference,
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


def markdown_table(rows: list[dict]) -> str:
    """The table as Markdown (what the notebook shows)."""
    from .notebook import markdown_table as render

    return render(HEADER, [_cells(r) for r in rows], caption=caption(rows) if rows else None)


def html_table(rows: list[dict]) -> str:
    """The table as an HTML ``<table>``."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>\n" for r in rows)
    cap = f"<caption>{html.escape(caption(rows))}</caption>" if rows else ""
    return f"<table>{cap}\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def _tradeoff(rows: list[dict], x: str, xlabel: str, settings=None, cols: int = 3):
    import matplotlib.pyplot as plt

    from .plots import grid

    settings = [s for s in (settings or SETTINGS) if any(r["setting"] == s for r in rows)]
    if not settings:
        raise ValueError("no rows to plot: load a folder written by `python -m mlcourse compare` first")
    fig, axes = grid(len(settings), cols=min(cols, len(settings)))
    colours = plt.get_cmap("tab20")
    for ax, setting in zip(axes, settings):
        chosen = [r for r in rows if r["setting"] == setting]
        for r in chosen:  # a method keeps its colour from panel to panel
            colour = colours(_order(r)[1] % 20)
            ax.errorbar(r[x], r["mean"], yerr=r["ci95"], fmt="o", color=colour, capsize=3)
            ax.annotate(r["method"], (r[x], r["mean"]), textcoords="offset points", xytext=(4, 3), fontsize=8)
        values = [r[x] for r in chosen if r[x] > 0]
        if len(values) == len(chosen):
            ax.set_xscale("log")
        else:  # a figure below the measure's resolution is 0: linear near it, logarithmic beyond
            ax.set_xscale("symlog", linthresh=min(values) if values else 1.0)
        ax.set_xlabel(xlabel)
        mse = chosen[0]["metric"] == "mse"
        ax.set_ylabel("query MSE (lower is better)" if mse else "accuracy % (higher is better)")
        ax.set_title(setting_label(setting) if setting in SETTINGS else setting, fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def accuracy_vs_time(rows: list[dict], settings=None, cols: int = 3):
    """Result against seconds per meta-iteration (log scale), one point per method, a panel per setting."""
    return _tradeoff(rows, "seconds_per_iteration", "seconds per meta-iteration", settings, cols)


def accuracy_vs_memory(rows: list[dict], settings=None, cols: int = 3):
    """Result against peak memory of a meta-iteration (MB, log scale), one point per method, a panel per setting."""
    return _tradeoff(rows, "peak_mb", "peak memory of a meta-iteration (MB)", settings, cols)


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
           "markdown_table", "html_table", "accuracy_vs_time", "accuracy_vs_memory", "reference_figure"]
