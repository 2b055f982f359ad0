"""Every committed reference run loads, and a fresh evaluation agrees with its recorded result."""
import json

import pytest
import torch

from mlcourse import reference
from mlcourse.train import CheckpointError

RUNS = reference.names()


def test_the_folder_holds_reference_runs():
    assert RUNS, f"no reference runs (NAME.pt beside NAME.json) in {reference.folder()}"


@pytest.mark.parametrize("name", RUNS)
def test_reference_run_reevaluates_within_its_recorded_interval(name):
    result = reference.reevaluate(name, device="cpu")
    recorded = result["recorded"]
    scale = 100.0 if recorded["metric"] == "accuracy_percent" else 1.0
    fresh = scale * result["mean"]
    assert abs(fresh - recorded["mean"]) <= recorded["ci95"], (name, fresh, recorded)


@pytest.mark.parametrize("name", RUNS)
def test_reference_record_says_how_it_was_made(name):
    rec = reference.record(name)
    for key in ("command", "budget", "iterations", "meta_batch", "hardware", "train_seconds", "seed",
                "settings", "test_tasks"):
        assert key in rec, (name, key)
    assert rec["command"].startswith("python -m mlcourse reproduce ")
    assert f"--checkpoint reference_runs/{name}.pt" in rec["command"]


def test_a_checkpoint_from_another_run_is_refused(tmp_path):
    name = RUNS[0]
    rec = reference.record(name)
    rec["settings"] = {**rec["settings"], "seed": rec["settings"]["seed"] + 1}
    (tmp_path / f"{name}.json").write_text(json.dumps(rec))
    (tmp_path / f"{name}.pt").write_bytes((reference.folder() / f"{name}.pt").read_bytes())
    with pytest.raises(CheckpointError, match="not made by the run"):
        reference.load(name, where=tmp_path, device="cpu")


def test_a_damaged_checkpoint_names_the_file(tmp_path):
    name = RUNS[0]
    (tmp_path / f"{name}.json").write_text((reference.folder() / f"{name}.json").read_text())
    (tmp_path / f"{name}.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"{name}.pt cannot be read"):
        reference.load(name, where=tmp_path, device="cpu")
