"""``python -m mlcourse compare``: one JSON per row, resumable, with clear messages; the chapter 11 table."""
import json
import os
import shutil

import matplotlib
import pytest

from mlcourse import cli, compare, recipes, reference

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
