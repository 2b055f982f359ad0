"""``python -m mlcourse compare``: one JSON per row, resumable, with clear messages; the chapter 11 table."""
import json
import os
import shutil

import matplotlib
import pytest

from mlcourse import cli, compare, recipes, reference
from mlcourse.budget import get_budget

HAVE_OMNIGLOT = bool(os.environ.get("MLCOURSE_DATA"))
SETTINGS = ["sinusoid_5s", *(["omniglot_5w1s"] if HAVE_OMNIGLOT else [])]
ARGS = ["--budget", "smoke", "--methods", "fomaml", "--benchmarks", *SETTINGS, "--device", "cpu"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """One smoke comparison of first-order MAML (the cheapest method with both benchmarks)."""
    out = tmp_path_factory.mktemp("compare") / "rows"  # a folder that does not exist yet
    assert cli.main(["compare", *ARGS, "--out", str(out)]) == 0
    return out


def _copy(folder, tmp_path):
    target = tmp_path / "rows"
    shutil.copytree(folder, target)
    return target


def _nothing_runs(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a row was computed again")

    monkeypatch.setattr(compare, "compute_row", fail)
    monkeypatch.setattr(cli, "run", fail)


def test_rows_are_written_with_their_fields(folder):
    paths = sorted(p.name for p in folder.glob("*.json"))
    assert paths == sorted(f"fomaml_{s}.json" for s in SETTINGS)
    assert not (folder / "checkpoints").exists()  # a finished row keeps its JSON only
    budget = recipes.get_budget("smoke")
    for setting in SETTINGS:
        row = json.loads((folder / f"fomaml_{setting}.json").read_text())
        benchmark, ways, shots = compare.SETTINGS[setting]
        assert (row["algorithm"], row["benchmark"], row["ways"], row["shots"]) == ("fomaml", benchmark, ways, shots)
        assert row["budget"] == budget.as_dict() and row["seed"] == 0 and row["device"] == "cpu"
        assert row["test_tasks"] == budget.eval_tasks and row["ci95"] > 0
        assert row["seconds_per_iteration"] > 0 and row["peak_bytes"] >= 0 and "RSS" in row["memory_kind"]
        assert row["hardware"] and row["torch"] and row["wall_seconds"] >= row["seconds"] > 0
        assert row["command"].startswith("python -m mlcourse compare --budget smoke")
        assert row["settings"]["hyperparameters"] == recipes.recipe("fomaml", benchmark, ways).hyperparameters
        assert row["compare"]["identity"]["budget"]["name"] == "smoke" and isinstance(row["warnings"], list)
        if benchmark == "sinusoid":
            assert row["metric"] == "mse" and row["mean"] > 0 and row["published"] is None
            assert row["iterations"] == budget.sinusoid_iterations and set(row["results"]) == {"1", "10"}
        else:
            assert row["metric"] == "accuracy_percent" and 0 <= row["mean"] <= 100
            assert row["published"] == {"mean": 98.3, "ci95": 0.5}
            assert row["iterations"] == budget.omniglot_iterations
            if "fomaml_omniglot_5w1s" in reference.names():
                assert row["reference"]["name"] == "fomaml_omniglot_5w1s" and row["reference"]["mean"] > 90


def test_a_second_run_computes_nothing(folder, monkeypatch, capsys):
    before = {p: p.stat().st_mtime_ns for p in folder.glob("*.json")}
    _nothing_runs(monkeypatch)
    assert cli.main(["compare", *ARGS, "--out", str(folder)]) == 0
    captured = capsys.readouterr()
    assert f"0 computed, {len(SETTINGS)} already on disk" in captured.err
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*.json")} == before
    assert captured.out.count("| fomaml |") == len(SETTINGS)  # the folder's table on stdout


def test_rows_made_with_other_settings_are_left_alone_with_one_line(folder, tmp_path, monkeypatch, capsys):
    out = _copy(folder, tmp_path)
    _nothing_runs(monkeypatch)
    assert cli.main(["compare", *ARGS, "--out", str(out), "--seed", "1"]) == 1
    err = capsys.readouterr().err
    for setting in SETTINGS:
        lines = [line for line in err.splitlines() if f"fomaml_{setting}.json was made" in line]
        assert len(lines) == 1 and "seed: 0 on disk, 1 now" in lines[0] and "--force" in lines[0], err
    assert json.loads((out / "fomaml_sinusoid_5s.json").read_text())["seed"] == 0
    assert cli.main(["compare", *ARGS, "--out", str(out), "--budget", "default"]) == 1  # the last --budget wins
    err = capsys.readouterr().err
    assert "fomaml_sinusoid_5s.json was made with other settings (budget: 'smoke' on disk, 'default' now)" in err


def test_a_corrupt_row_is_named_in_one_line(folder, tmp_path, monkeypatch, capsys):
    out = _copy(folder, tmp_path)
    (out / "fomaml_sinusoid_5s.json").write_text('{"algorithm": "fomaml", "mea')  # cut short
    _nothing_runs(monkeypatch)
    assert cli.main(["compare", *ARGS, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "fomaml_sinusoid_5s.json" in line]
    assert len(lines) == 1 and "cannot be read" in lines[0] and "delete it" in lines[0] and "--force" in lines[0]
    with pytest.warns(UserWarning, match="fomaml_sinusoid_5s.json is not a readable comparison row"):
        rows = compare.load_table(out)
    assert [r["setting"] for r in rows] == SETTINGS[1:]


def test_force_computes_the_row_again(folder, tmp_path, monkeypatch):
    out = _copy(folder, tmp_path)
    record = json.loads((out / "fomaml_sinusoid_5s.json").read_text())
    calls = []

    def fake(row, *args, **kwargs):
        calls.append(row.name)
        return {**record, "mean": 123.0}

    monkeypatch.setattr(compare, "compute_row", fake)
    summary = compare.compare("smoke", ["fomaml"], ["sinusoid_5s"], out, device="cpu", force=True, log=print)
    assert calls == ["fomaml_sinusoid_5s"] and summary["computed"] == calls
    assert json.loads((out / "fomaml_sinusoid_5s.json").read_text())["mean"] == 123.0
    assert not list(out.glob(".*.tmp"))  # written atomically: no temporary file left


def test_a_row_finished_by_another_process_meanwhile_is_not_computed(tmp_path, monkeypatch):
    # two processes on one folder: the second row is written (by "the other process") while this
    # process computes the first, after it made its plan
    out = tmp_path / "rows"
    budget = get_budget("smoke")
    device = compare._check_device("cpu")
    rows, _ = compare.plan(["fomaml"], ["sinusoid_5s", "sinusoid_10s"])
    first, second = rows

    def record(row):
        return {"row": row.name, "compare": {"identity": compare.identity(row, budget, 0, device)}}

    calls = []

    def fake(row, *args, **kwargs):
        calls.append(row.name)
        (out / f"{second.name}.json").write_text(json.dumps(record(second)))
        return record(row)

    monkeypatch.setattr(compare, "compute_row", fake)
    summary = compare.compare("smoke", ["fomaml"], ["sinusoid_5s", "sinusoid_10s"], out, device="cpu",
                              log=print)
    assert calls == [first.name]
    assert summary["computed"] == [first.name] and summary["done"] == [second.name]


@pytest.mark.parametrize("args,message", [
    (["--methods", "fomaml,nope"], "method 'nope' is unknown: allowed " + ", ".join(recipes.METHODS)),
    (["--benchmarks", "omniglot_5w2s"], "benchmark 'omniglot_5w2s' is unknown: allowed sinusoid, omniglot, "
                                        "sinusoid_5s, sinusoid_10s, omniglot_5w1s"),
    (["--budget", "huge"], "budget 'huge' is unknown: allowed smoke, default, paper"),
])
def test_bad_names_are_rejected_before_any_work(args, message, tmp_path, monkeypatch, capsys):
    _nothing_runs(monkeypatch)
    out = tmp_path / "rows"
    assert cli.main(["compare", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_methods_without_a_recipe_row_are_skipped_not_failed():
    rows, skipped = compare.plan(["imaml-gd", "fomaml"], ["sinusoid", "omniglot_5w1s"])
    assert [r.name for r in rows] == ["fomaml_sinusoid_5s", "fomaml_sinusoid_10s", "imaml-gd_omniglot_5w1s",
                                      "fomaml_omniglot_5w1s"]
    assert skipped == {"imaml-gd": ["sinusoid_5s", "sinusoid_10s"]}
    every, _ = compare.plan()  # every row of the recipe table on chapter 11's settings, no other
    assert {(r.method, r.benchmark, r.ways) for r in every} == {
        k for k in recipes.RECIPES if k[1] in ("sinusoid", "omniglot")}


def test_the_table_and_figures_show_every_row(folder):
    matplotlib.use("Agg")
    rows = compare.load_table(folder)
    assert [(r["method"], r["setting"]) for r in rows] == [("fomaml", s) for s in SETTINGS]
    text = compare.markdown_table(rows)
    assert text.count("| fomaml |") == len(SETTINGS) and "budget smoke" in text
    bare = compare.markdown_table(rows[:1], with_caption=False, with_setting=False)
    assert bare.startswith("| method |") and "budget smoke" not in bare and rows[0]["label"] not in bare
    assert compare.html_table(rows).count("<tr>") == len(SETTINGS) + 1  # header and rows
    for plot in (compare.accuracy_vs_time, compare.accuracy_vs_memory):
        fig = plot(rows)
        assert len(fig.axes) == len(SETTINGS)
        assert all(len(ax.containers) == 1 for ax in fig.axes)  # one point (with its interval) per method
        matplotlib.pyplot.close(fig)


def test_an_unusable_checkpoint_of_a_row_is_reported_not_overwritten(tmp_path, capsys):
    out = tmp_path / "rows"
    damaged = out / "checkpoints" / "fomaml_sinusoid_5s.pt"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not a checkpoint")
    assert cli.main(["compare", "--budget", "smoke", "--methods", "fomaml", "--benchmarks", "sinusoid_5s",
                     "--device", "cpu", "--out", str(out)]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if "fomaml_sinusoid_5s not run" in line]
    assert len(lines) == 1 and str(damaged) in lines[0] and "--force" in lines[0], lines
    assert damaged.read_bytes() == b"not a checkpoint" and not (out / "fomaml_sinusoid_5s.json").exists()


def _row(method, mean, ci95, cost, setting="omniglot_5w1s", metric="accuracy_percent", peak_mb=None):
    return {"method": method, "setting": setting, "metric": metric, "mean": mean, "ci95": ci95,
            "seconds_per_iteration": cost, "peak_mb": cost if peak_mb is None else peak_mb}


def test_pareto_front_keeps_the_undominated_rows_cheapest_first():
    rows = [_row("a", 99.0, 0.2, 1.0), _row("b", 98.0, 0.2, 0.5), _row("c", 97.0, 0.2, 0.7),  # c: b beats it
            _row("d", 99.0, 0.2, 1.0), _row("e", 99.5, 0.2, 3.0), _row("f", 99.5, 0.2, 4.0)]  # d ties a; e beats f
    assert [r["method"] for r in compare.pareto_front(rows)] == ["b", "a", "d", "e"]
    mse = [_row("x", 0.5, 0.1, 2.0, "sinusoid_5s", "mse", peak_mb=5.0),
           _row("y", 0.9, 0.1, 1.0, "sinusoid_5s", "mse", peak_mb=1.0),
           _row("z", 1.0, 0.1, 3.0, "sinusoid_5s", "mse", peak_mb=0.5)]  # lower MSE is better
    assert [r["method"] for r in compare.pareto_front(mse)] == ["y", "x"]  # in time z is dominated
    assert [r["method"] for r in compare.pareto_front(mse, cost="peak_mb")] == ["z", "y", "x"]  # in memory not
    with pytest.raises(ValueError, match="one setting"):
        compare.pareto_front(rows + mse)


def test_pareto_front_agrees_with_the_exercise_solution():
    """The package's front (rows, used by chapter 11) and exercise 11.3's (tensors) are the same set."""
    import torch

    from mlcourse.exercises.ch11 import pareto_front_solution

    g = torch.Generator().manual_seed(3)
    for _ in range(30):
        m = int(torch.randint(1, 12, (), generator=g))
        cost = torch.randint(1, 5, (m,), generator=g).double()
        accuracy = torch.randint(90, 95, (m,), generator=g).double()
        rows = [_row(f"m{i}", accuracy[i].item(), 0.1, cost[i].item()) for i in range(m)]
        front = {r["method"] for r in compare.pareto_front(rows)}
        expected = pareto_front_solution(cost, 100 - accuracy)
        assert front == {f"m{i}" for i in range(m) if expected[i]}


def test_leaders_are_the_rows_tied_with_the_best():
    rows = [_row("a", 98.0, 0.3, 1), _row("b", 99.0, 0.3, 1), _row("c", 98.6, 0.3, 1), _row("d", 98.9, None, 1)]
    # b is best; c is 0.4 behind, within sqrt(0.3^2 + 0.3^2) = 0.42; a is 1.0 behind; d, 0.1 behind, has no
    # interval (read as 0 it would be tied)
    assert [r["method"] for r in compare.leaders(rows)] == ["b", "c"]
    assert [r["method"] for r in compare.leaders([_row("p", 99.0, None, 1), _row("q", 98.99, 0.3, 1)])] == ["p"]
    tie = [_row("dear", 99.0, 0.3, 2.0), _row("cheap", 99.0, 0.3, 1.0)]  # equal results: the cheaper first
    assert [r["method"] for r in compare.leaders(tie)] == ["cheap", "dear"]
    mse = [_row("x", 0.50, 0.05, 1, "sinusoid_5s", "mse"), _row("y", 0.45, 0.02, 1, "sinusoid_5s", "mse")]
    assert [r["method"] for r in compare.leaders(mse)] == ["y", "x"]


def test_committed_folder_is_under_the_reference_runs(tmp_path, monkeypatch):
    monkeypatch.setenv(reference.ENV, str(tmp_path))
    assert compare.committed_folder("default", download=False) == tmp_path / "comparison" / "default"
    (tmp_path / "comparison" / "smoke").mkdir(parents=True)
    assert compare.committed_folder("smoke") == tmp_path / "comparison" / "smoke"  # present: nothing fetched


COMMITTED = compare.committed_folder("default", download=False)


@pytest.mark.skipif(not COMMITTED.is_dir(), reason="no committed comparison in this checkout")
def test_the_committed_table_is_what_the_command_makes_now():
    """Every committed row was made with today's recipe row, budget sizes and seed (a change to either
    makes the row stale: regenerate it with the command in its JSON), and the table reads back whole."""
    from mlcourse.budget import get_budget

    budget = get_budget("default")
    files = sorted(COMMITTED.glob("*.json"))
    assert files
    for path in files:
        record = json.loads(path.read_text())
        row = compare.Row(record["algorithm"], record["setting"])
        assert path.name == f"{row.name}.json"
        state, message = compare.check_row(path, compare.identity(row, budget, record["seed"],
                                                                   compare.torch.device(record["device"])))
        assert state == "done", message
    assert len(compare.load_table(COMMITTED)) == len(files)


def test_committed_folder_downloads_the_rows_the_repository_has(tmp_path, monkeypatch):
    """Without the folder (pip-installed package, Colab) the rows are fetched one by one; rows the
    repository lacks are skipped, and a repository with none gives one message with the command."""
    import io
    import urllib.error
    import urllib.request

    served = {"maml_sinusoid_5s.json": {"algorithm": "maml"}, "protonet_omniglot_5w1s.json": {"x": 1}}

    def fake_urlopen(url, timeout=None):
        name = url.rsplit("/", 1)[-1]
        assert "/raw/main/reference_runs/comparison/" in url
        if name not in served:
            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)
        return io.BytesIO(json.dumps(served[name]).encode())

    monkeypatch.setenv(reference.ENV, str(tmp_path / "runs"))
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    where = compare.committed_folder("default")
    assert sorted(p.name for p in where.iterdir()) == sorted(served)
    assert json.loads((where / "maml_sinusoid_5s.json").read_text()) == {"algorithm": "maml"}
    served.clear()
    with pytest.raises(FileNotFoundError, match="python -m mlcourse compare --budget smoke"):
        compare.committed_folder("smoke")
    assert sorted(p.name for p in (tmp_path / "runs" / "comparison").iterdir()) == ["default"]


@pytest.mark.parametrize("failure", ["network", "server"])
def test_an_interrupted_download_of_the_committed_table_leaves_nothing(tmp_path, monkeypatch, failure):
    """A network error, or a server error (not a 404), after the first row: an error naming the folder, and no
    half table that a later call would take for the whole one."""
    import io
    import urllib.error
    import urllib.request

    calls = []

    def flaky_urlopen(url, timeout=None):
        calls.append(url)
        if len(calls) == 1:
            return io.BytesIO(b'{"algorithm": "maml"}')
        if failure == "network":
            raise urllib.error.URLError("connection reset")
        raise urllib.error.HTTPError(url, 503, "Service Unavailable", None, None)

    monkeypatch.setenv(reference.ENV, str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", flaky_urlopen)
    with pytest.raises(FileNotFoundError, match="could not be downloaded"):
        compare.committed_folder("default")
    assert len(calls) == 2 and not any((tmp_path / "comparison").iterdir())


def test_load_table_looks_the_published_figure_up_again(folder, tmp_path):
    """A row made before a published figure was added (or corrected) shows today's figure."""
    from mlcourse.published import published

    rows = _copy(folder, tmp_path)
    for path in rows.glob("*.json"):
        record = json.loads(path.read_text())
        record["published"] = {"mean": 1.0, "ci95": None}
        path.write_text(json.dumps(record))
    for r in compare.load_table(rows):
        assert r["published"] == published(r["method"], r["benchmark"], r["ways"], r["shots"])


def test_reference_figure_takes_the_best_of_several_runs_of_a_row():
    def run(name, mean, shots=5, metric="accuracy_percent"):
        return {"name": name, "mean": mean, "ci95": 0.1, "metric": metric, "iterations": 100, "meta_batch": 8,
                "settings": {"method": "maml", "benchmark": "omniglot", "ways": 5, "shots": shots,
                             "protocol": "maml", "budget": "default"}}

    runs = [run("maml_omniglot_5w5s", 99.16), run("maml_omniglot_5w5s_mb32", 99.40),
            run("maml_omniglot_5w1s", 99.9, shots=1)]
    assert compare.reference_figure(compare.Row("maml", "omniglot_5w5s"), runs)["name"] == "maml_omniglot_5w5s_mb32"
    assert compare.reference_figure(compare.Row("maml", "omniglot_5w5s"), runs[:1])["mean"] == 99.16
    assert compare.reference_figure(compare.Row("fomaml", "omniglot_5w5s"), runs) is None
    sinusoid = [{**run("a", 0.5, metric="mse"), "settings": {"method": "maml", "benchmark": "sinusoid", "shots": 5}},
                {**run("b", 0.3, metric="mse"), "settings": {"method": "maml", "benchmark": "sinusoid", "shots": 5}}]
    assert compare.reference_figure(compare.Row("maml", "sinusoid_5s"), sinusoid)["name"] == "b"  # lower MSE
