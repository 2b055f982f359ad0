"""Long runs never lose work nor credit the wrong result (issue 13): checkpoints record what made them,
resume only with the same settings, survive a kill during a write, and every bad file or bad
argument gives one clear line before any training."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.nn.functional as F

import mlcourse
from mlcourse import cli
from mlcourse.algorithms import MAML
from mlcourse.nn import MLP
from mlcourse.tasks import Sinusoid
from mlcourse.train import CheckpointError


def reproduce(*args):
    return cli.main(["reproduce", *args, "--budget", "smoke"])


def test_resume_with_other_settings_stops_before_training(tmp_path, capsys):
    ckpt = tmp_path / "run.pt"
    assert reproduce("maml", "sinusoid", "--shots", "5", "--iterations", "3", "--checkpoint", str(ckpt)) == 0
    before = ckpt.read_bytes()
    for other in (["fomaml", "sinusoid", "--shots", "5"], ["maml", "sinusoid", "--shots", "10"],
                  ["maml", "sinusoid", "--shots", "5", "--seed", "1"]):
        capsys.readouterr()
        code = reproduce(*other, "--iterations", "3", "--checkpoint", str(ckpt))
        err = capsys.readouterr().err
        assert code == 2 and "was made with other settings" in err and "--force-restart" in err, err
        assert err.count("\n") == 1, "one line, no traceback"
    assert "method: checkpoint 'maml', now 'fomaml'" in _error_for(["fomaml", "sinusoid", "--shots", "5"], ckpt,
                                                                   capsys)
    assert ckpt.read_bytes() == before, "a refused resume must not touch the checkpoint"
    # --force-restart starts over with the new settings
    assert reproduce("fomaml", "sinusoid", "--shots", "5", "--iterations", "3", "--checkpoint", str(ckpt),
                     "--force-restart") == 0
    assert torch.load(ckpt, weights_only=True)["settings"]["method"] == "fomaml"


def _error_for(args, ckpt, capsys):
    capsys.readouterr()
    reproduce(*args, "--iterations", "3", "--checkpoint", str(ckpt))
    return capsys.readouterr().err


def test_a_checkpoint_records_what_made_it(tmp_path):
    ckpt = tmp_path / "run.pt"
    assert reproduce("maml", "sinusoid", "--shots", "5", "--iterations", "2", "--checkpoint", str(ckpt)) == 0
    state = torch.load(ckpt, weights_only=True)
    settings = state["settings"]
    assert state["format"] == 2 and state["mlcourse"] == mlcourse.__version__
    assert {"method", "benchmark", "ways", "shots", "seed", "budget", "hyperparameters", "meta_batch"} <= set(settings)
    assert settings["hyperparameters"]["inner_lr"] == 0.01 and settings["budget"] == "smoke"


def test_an_old_checkpoint_without_settings_is_refused(tmp_path):
    ckpt = tmp_path / "old.pt"
    alg = MAML(MLP([1, 8, 1]), F.mse_loss, inner_lr=0.01)
    mlcourse.meta_train(alg, Sinusoid(5, 5), 2, 2, checkpoint=ckpt, progress=False, device="cpu")
    with pytest.raises(CheckpointError, match="records no settings"):
        mlcourse.meta_train(alg, Sinusoid(5, 5), 4, 2, checkpoint=ckpt, progress=False, device="cpu",
                            settings={"method": "maml"})


def test_out_into_a_missing_folder_is_created_before_training(tmp_path):
    out = tmp_path / "results" / "deeper" / "row.json"
    assert reproduce("fomaml", "sinusoid", "--shots", "5", "--iterations", "2", "--out", str(out)) == 0
    assert json.loads(out.read_text())["algorithm"] == "fomaml"


def test_an_unwritable_out_fails_before_training(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    started = []
    monkeypatch.setattr(mlcourse.recipes, "meta_train", lambda *a, **k: started.append(1))
    assert reproduce("fomaml", "sinusoid", "--out", str(blocker / "row.json")) == 2
    assert "cannot be written" in capsys.readouterr().err and not started


@pytest.mark.parametrize("args,message", [
    (["reptile", "omniglot", "--shots", "6"], "shots+queries=21 (shots=6, queries=15) is out of range"),
    (["maml", "omniglot", "--shots", "19"], "shots+queries=21 (shots=19, queries=2) is out of range"),
    (["maml", "sinusoid", "--iterations", "0"], "--iterations=0 is out of range: allowed >= 1"),
    (["maml", "sinusoid", "--checkpoint-every", "0"], "--checkpoint-every=0 is out of range: allowed >= 1"),
    (["maml", "sinusoid", "--meta-batch", "-2"], "--meta-batch=-2 is out of range: allowed >= 1"),
])
def test_bad_arguments_are_found_before_the_first_meta_iteration(args, message, capsys, monkeypatch):
    if "omniglot" in args and not os.environ.get("MLCOURSE_DATA"):
        pytest.skip("Omniglot archives not available (set MLCOURSE_DATA)")
    started = []
    monkeypatch.setattr(mlcourse.recipes, "meta_train", lambda *a, **k: started.append(1))
    assert reproduce(*args) == 2
    assert message in capsys.readouterr().err and not started


def test_checkpoint_interval_is_an_option(tmp_path):
    ckpt = tmp_path / "run.pt"
    assert reproduce("maml", "sinusoid", "--iterations", "7", "--checkpoint-every", "3",
                     "--checkpoint", str(ckpt)) == 0
    # the last periodic write was at 6, the final one at 7; the backup holds the one before
    assert torch.load(ckpt, weights_only=True)["iteration"] == 7
    assert torch.load(ckpt.with_name("run.pt.prev"), weights_only=True)["iteration"] == 6


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_checkpoint_gives_one_clear_line(tmp_path, capsys, damage):
    ckpt = tmp_path / "run.pt"
    assert reproduce("maml", "sinusoid", "--iterations", "2", "--checkpoint", str(ckpt)) == 0
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 3] if damage == "truncate" else os.urandom(len(data)))
    capsys.readouterr()
    assert reproduce("maml", "sinusoid", "--iterations", "4", "--checkpoint", str(ckpt)) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {ckpt} cannot be read" in err and "Delete it" in err and err.count("\n") == 1, err


def test_a_damaged_checkpoint_falls_back_to_its_backup(tmp_path):
    ckpt = tmp_path / "run.pt"
    alg = MAML(MLP([1, 8, 1]), F.mse_loss, inner_lr=0.01)
    mlcourse.meta_train(alg, Sinusoid(5, 5), 4, 2, checkpoint=ckpt, checkpoint_every=2, progress=False,
                        device="cpu", settings={"run": 1})
    ckpt.write_bytes(b"\0" * 100)
    with pytest.warns(UserWarning, match="resuming from its backup"):
        history = mlcourse.meta_train(alg, Sinusoid(5, 5), 4, 2, checkpoint=ckpt, progress=False, device="cpu",
                                      settings={"run": 1})
    assert history["iteration"][-1] == 4


KILL_SCRIPT = textwrap.dedent("""
    import sys, torch, torch.nn.functional as F
    import mlcourse
    from mlcourse.algorithms import MAML
    from mlcourse.nn import MLP
    from mlcourse.tasks import Sinusoid
    torch.manual_seed(0)
    alg = MAML(MLP([1, 64, 64, 1]), F.mse_loss, inner_lr=0.01)
    mlcourse.meta_train(alg, Sinusoid(5, 5), int(sys.argv[2]), 4, checkpoint=sys.argv[1], checkpoint_every=1,
                        progress=False, device="cpu", settings={"run": "kill-test"})
""")


def test_a_kill_during_checkpoint_writes_loses_nothing(tmp_path):
    """SIGKILL a run that checkpoints every iteration at several moments (most land inside a write);
    each time the run resumes from a whole checkpoint, and the final weights equal an uninterrupted run's."""
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT)
    ckpt, total = tmp_path / "run.pt", 60
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for delay in (2.5, 3.0, 3.5):
        proc = subprocess.Popen([sys.executable, str(script), str(ckpt), str(total)], env=env)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    subprocess.run([sys.executable, str(script), str(ckpt), str(total)], env=env, check=True, timeout=300)
    straight = tmp_path / "straight.pt"
    subprocess.run([sys.executable, str(script), str(straight), str(total)], env=env, check=True, timeout=300)
    a, b = torch.load(ckpt, weights_only=True), torch.load(straight, weights_only=True)
    assert a["iteration"] == b["iteration"] == total and a["history"]["loss"] == b["history"]["loss"]
    for name in b["model"]:
        assert torch.equal(a["model"][name], b["model"][name])


class _Diverging(MAML):
    def predict(self, batch, inner_steps=None):
        return torch.full_like(batch.query_y, float("nan"))


def test_evaluation_stops_on_non_finite_outputs():
    alg = _Diverging(MLP([1, 8, 1]), F.mse_loss, inner_lr=0.01)
    with pytest.raises(FloatingPointError, match="outputs are not finite"):
        mlcourse.evaluate(alg, Sinusoid(5, 5), num_tasks=10)


def test_evaluation_shows_progress(capsys):
    alg = MAML(MLP([1, 8, 1]), F.mse_loss, inner_lr=0.01)
    mlcourse.evaluate(alg, Sinusoid(5, 5), num_tasks=10, progress=True)
    assert "evaluate" in capsys.readouterr().err


def test_a_step_decay_continues_a_checkpoint_made_before_it_exactly(tmp_path, capsys):
    """A decay from iteration 3 has not acted in a 3-iteration checkpoint: resuming it under the decay
    gives, number for number, the run made with the decay from the start; a decay that would have
    acted before the checkpoint's iteration is refused with one line."""
    straight, resumed = tmp_path / "straight.json", tmp_path / "resumed.json"
    common = ["maml", "sinusoid", "--shots", "5", "--iterations", "6"]
    assert reproduce(*common, "--outer-lr-decay", "3:0.1", "--out", str(straight)) == 0
    ckpt = tmp_path / "run.pt"
    assert reproduce("maml", "sinusoid", "--shots", "5", "--iterations", "3", "--checkpoint", str(ckpt)) == 0
    assert reproduce(*common, "--outer-lr-decay", "3:0.1", "--checkpoint", str(ckpt), "--out", str(resumed)) == 0
    a, b = json.loads(straight.read_text()), json.loads(resumed.read_text())
    assert a["settings"]["outer_lr_decay"] == [[3, 0.1]] == b["settings"]["outer_lr_decay"]
    assert a["mean"] == b["mean"] and a["final_meta_loss"] == b["final_meta_loss"]
    undecayed = tmp_path / "undecayed.json"
    assert reproduce(*common, "--out", str(undecayed)) == 0
    assert json.loads(undecayed.read_text())["final_meta_loss"] != a["final_meta_loss"], "the decay did nothing"
    # the 6-iteration checkpoint ran under the decay from 3: a decay from 2 would have changed it
    capsys.readouterr()
    assert reproduce(*common, "--iterations", "8", "--outer-lr-decay", "2:0.1", "--checkpoint", str(ckpt)) == 2
    err = capsys.readouterr().err
    assert "outer_lr_decay: checkpoint [[3, 0.1]], now [[2, 0.1]]" in err and err.count("\n") == 1, err


def test_the_decay_sets_the_optimiser_step_size():
    alg = MAML(MLP([1, 8, 1]), F.mse_loss, inner_lr=0.01)
    optimizer = torch.optim.Adam(alg.parameters(), lr=1e-3)
    mlcourse.meta_train(alg, Sinusoid(5, 5), 4, 2, optimizer=optimizer, progress=False, device="cpu",
                        outer_lr_decay=[(1, 0.5), (3, 0.1)])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 * 0.1)


def test_a_decay_naming_an_iteration_twice_is_refused():
    with pytest.raises(ValueError, match="names an iteration twice"):
        mlcourse.meta_train(MAML(MLP([1, 8, 1]), F.mse_loss, inner_lr=0.01), Sinusoid(5, 5), 2, 2,
                            progress=False, device="cpu", outer_lr_decay=[(1, 0.5), (1, 0.1)])


def test_a_time_limit_stops_at_a_checkpoint_and_the_same_command_continues(tmp_path, capsys):
    """--time-limit 0 stops at the first checkpoint interval with a whole result; repeating the
    command trains the next interval; without it the run finishes exactly as a straight run."""
    ckpt, out = tmp_path / "run.pt", tmp_path / "run.json"
    args = ["maml", "sinusoid", "--shots", "5", "--iterations", "6", "--checkpoint", str(ckpt),
            "--checkpoint-every", "2", "--out", str(out)]
    for expected in (2, 4):
        capsys.readouterr()
        assert reproduce(*args, "--time-limit", "0") == 0
        record = json.loads(out.read_text())
        assert record["iterations"] == expected and record["stopped_at_time_limit"] == expected
        assert torch.load(ckpt, weights_only=True)["iteration"] == expected
        assert f"after meta-iteration {expected} of 6" in capsys.readouterr().err
    assert reproduce(*args) == 0
    finished = json.loads(out.read_text())
    assert finished["iterations"] == 6 and "stopped_at_time_limit" not in finished
    straight = tmp_path / "straight.json"
    assert reproduce("maml", "sinusoid", "--shots", "5", "--iterations", "6", "--out", str(straight)) == 0
    assert json.loads(straight.read_text())["final_meta_loss"] == finished["final_meta_loss"]
    assert json.loads(straight.read_text())["mean"] == finished["mean"]


@pytest.mark.parametrize("option, bad, message", [
    ("--outer-lr-decay", "100:1.5", "factor 1.5 is out of range: allowed 0 < factor <= 1"),
    ("--outer-lr-decay", "100:0", "factor 0.0 is out of range"),
    ("--outer-lr-decay", "-1:0.1", "iteration -1 is out of range: allowed an integer >= 0"),
    ("--outer-lr-decay", "100", "'100' is not ITERATION:FACTOR"),
    ("--outer-lr-decay", "x:0.1", "'x:0.1' is not ITERATION:FACTOR"),
    ("--time-limit", "-1", "'-1' is out of range: allowed a finite number of minutes >= 0"),
    ("--time-limit", "inf", "'inf' is out of range"),
    ("--time-limit", "soon", "'soon' is not a number of minutes")])
def test_a_bad_decay_or_time_limit_is_refused_naming_the_value(option, bad, message, capsys):
    with pytest.raises(SystemExit):
        reproduce("maml", "sinusoid", "--iterations", "2", f"{option}={bad}")
    assert message in capsys.readouterr().err


def test_meta_train_refuses_a_negative_time_limit():
    with pytest.raises(ValueError, match="time_limit=-5 is out of range"):
        mlcourse.meta_train(MAML(MLP([1, 8, 1]), F.mse_loss, inner_lr=0.01), Sinusoid(5, 5), 2, 2,
                            progress=False, device="cpu", time_limit=-5)
