"""The command line a researcher uses to reproduce a table row."""
import json
import os
import subprocess
import sys

import pytest


def run_cli(*args, cwd=None):
    env = dict(os.environ, MLCOURSE_BUDGET="smoke")
    return subprocess.run([sys.executable, "-m", "mlcourse", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_reproduce_sinusoid_writes_json(tmp_path):
    out = tmp_path / "row.json"
    proc = run_cli("reproduce", "fomaml", "sinusoid", "--shots", "5", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    row = json.loads(out.read_text())
    assert row["algorithm"] == "fomaml" and row["budget"]["name"] == "smoke" and row["metric"] == "mse"
    assert row["iterations"] == row["budget"]["sinusoid_iterations"]
    assert set(row["results"]) == {"1", "10"} and row["results"]["1"]["mean"] > 0


def test_reproduce_omniglot_has_published_figure(tmp_path):
    if not os.environ.get("MLCOURSE_DATA"):
        pytest.skip("Omniglot archives not available (set MLCOURSE_DATA)")
    out = tmp_path / "row.json"
    proc = run_cli("reproduce", "maml", "omniglot", "--ways", "5", "--shots", "1", "--out", str(out),
                   "--checkpoint", str(tmp_path / "ckpt.pt"))
    assert proc.returncode == 0, proc.stderr
    row = json.loads(out.read_text())
    assert row["published"] == {"mean": 98.7, "ci95": 0.4}
    assert 0 <= row["mean"] <= 100 and row["ci95"] > 0 and row["test_tasks"] == row["budget"]["eval_tasks"]
    assert (tmp_path / "ckpt.pt").exists()


@pytest.mark.parametrize("args,message", [
    (["reproduce", "maml", "sinusoid", "--budget", "huge"], "budget 'huge' is unknown: allowed smoke, default, paper"),
    (["reproduce", "maml", "omniglot", "--ways", "7"], "maml has no recipe for omniglot 7-way: allowed multimodal-2, multimodal-3, multimodal-5, omniglot 5-way, omniglot 20-way, sinusoid"),
    (["reproduce", "imaml-gd", "sinusoid"], "imaml-gd has no recipe for sinusoid: allowed omniglot 5-way"),
])
def test_bad_input_exits_with_message(args, message):
    proc = run_cli(*args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_missing_data_root_names_the_fix(tmp_path):
    env_root = tmp_path / "empty"
    env_root.mkdir()
    proc = subprocess.run([sys.executable, "-m", "mlcourse", "reproduce", "maml", "omniglot", "--data-root", str(env_root)],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, MLCOURSE_BUDGET="smoke", MLCOURSE_CACHE=str(tmp_path / "cache")))
    assert proc.returncode == 2
    # the download itself failed (no network): the advice is the manual route, not the same command again
    assert "by hand" in proc.stderr and "github.com/brendenlake/omniglot" in proc.stderr
    assert "mlcourse download" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_reproduce_reptile_omniglot_reports_the_non_transductive_row(tmp_path):
    if not os.environ.get("MLCOURSE_DATA"):
        pytest.skip("Omniglot archives not available (set MLCOURSE_DATA)")
    out = tmp_path / "row.json"
    proc = run_cli("reproduce", "reptile", "omniglot", "--shots", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    row = json.loads(out.read_text())
    assert row["published"] == {"mean": 95.39, "ci95": 0.09}
    assert row["iterations"] == row["budget"]["reptile_iterations"] and 0 <= row["mean"] <= 100
