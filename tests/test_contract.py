"""Every row of the recipe table goes through the layers above the algorithms with no special case:
meta_train, evaluate, profiling and the command line. A new method is covered by adding its row."""
import json
import os

import pytest
import torch

from mlcourse import cli, profiling, recipes
from mlcourse.algorithms import MetaLearner
from mlcourse.train import evaluate, meta_train

ROWS = sorted(recipes.RECIPES.values(), key=lambda r: (r.method, r.benchmark, r.ways or 0))
HAVE_OMNIGLOT = bool(os.environ.get("MLCOURSE_DATA"))


def _ids(row):
    return f"{row.method}-{row.benchmark}" + (f"-{row.ways}way" if row.ways else "")


@pytest.mark.parametrize("row", ROWS, ids=_ids)
def test_every_row_trains_and_evaluates(row, tmp_path):
    if row.benchmark == "omniglot" and not HAVE_OMNIGLOT:
        pytest.skip("Omniglot archives not available (set MLCOURSE_DATA)")
    shots = 1
    setup = recipes.build(row.method, row.benchmark, row.ways, shots, "smoke", meta_batch=2)
    alg = setup["algorithm"]
    assert isinstance(alg, MetaLearner) and isinstance(alg, row.algorithm)
    before = [p.detach().clone() for p in alg.parameters()]
    history = meta_train(alg, setup["train"], 2, 2, outer_lr=row.outer_lr, progress=False, device="cpu",
                         checkpoint=tmp_path / "c.pt", settings=setup["settings"])
    assert len(history["loss"]) == 2 and all(torch.isfinite(torch.tensor(history["loss"])))
    assert any(not torch.equal(b, p) for b, p in zip(before, alg.parameters())), "the outer step moved nothing"
    result = evaluate(alg, setup["test"], num_tasks=4, batch_size=2)
    assert result["num_tasks"] == 4 and result["metric"] == ("accuracy" if row.benchmark == "omniglot" else "mse")
    assert alg.test_steps() == row.hyperparameters.get("eval_inner_steps", row.hyperparameters["inner_steps"])


@pytest.mark.parametrize("row", ROWS, ids=_ids)
def test_every_row_builds_for_profiling(row):
    spec = dict(algorithm=row.method, model="convnet" if row.benchmark == "omniglot" else "mlp", meta_batch=2,
                shots=10 if row.train_shots else 1, queries=1, ways=row.ways, benchmark=row.benchmark)
    alg, batch = profiling.build(spec, torch.device("cpu"))
    assert isinstance(alg, row.algorithm) and batch.num_tasks == 2
    loss, grads = alg.meta_gradient(batch)
    names = {k for k, _ in alg.named_parameters()}  # the model's, plus what the algorithm adds
    assert torch.isfinite(loss) and set(grads) <= names and grads


@pytest.mark.parametrize("method", recipes.METHODS)
def test_every_method_is_profiled_in_a_fresh_process(method):
    row = next(r for r in ROWS if r.method == method)
    spec = dict(algorithm=method, model="convnet" if row.benchmark == "omniglot" else "mlp", meta_batch=2,
                shots=10 if row.train_shots else 1, queries=1, ways=row.ways, threads=1, benchmark=row.benchmark)
    out = profiling.measure(spec, device="cpu", repeats=1)
    assert out["seconds"] > 0 and out["algorithm"] == method


@pytest.mark.parametrize("row", [r for r in ROWS if r.ways in (None, 5)], ids=_ids)
def test_every_method_reproduces_from_the_command_line(row, tmp_path, capsys):
    if row.benchmark == "omniglot" and not HAVE_OMNIGLOT:
        pytest.skip("Omniglot archives not available (set MLCOURSE_DATA)")
    out = tmp_path / "new" / "row.json"  # a folder that does not exist yet
    code = cli.main(["reproduce", row.method, row.benchmark, "--budget", "smoke", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    record = json.loads(out.read_text())
    assert record["algorithm"] == row.method and record["settings"]["hyperparameters"] == row.hyperparameters
    assert record["iterations"] == getattr(recipes.get_budget("smoke"), row.iterations)


def test_the_cli_lists_exactly_the_table_methods(capsys):
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--help"])
    text = capsys.readouterr().out
    for method in recipes.METHODS:
        assert method in text


def test_unknown_rows_name_what_exists():
    with pytest.raises(ValueError, match="method 'mamll' is unknown: allowed maml, fomaml"):
        recipes.recipe("mamll", "omniglot", 5)
    with pytest.raises(ValueError, match="reptile has no recipe for omniglot 20-way: allowed omniglot 5-way"):
        recipes.recipe("reptile", "omniglot", 20)


def test_overrides_reach_the_algorithm_and_the_checkpoint_settings():
    setup = recipes.build("maml", "sinusoid", None, 5, "smoke", inner_steps=3)
    assert setup["algorithm"].inner_steps == 3 and setup["settings"]["hyperparameters"]["inner_steps"] == 3
    with pytest.raises(TypeError):
        recipes.build("maml", "sinusoid", None, 5, "smoke", no_such_setting=1)


def test_flop_count_is_the_same_twice_and_second_order_counts_more():
    spec = dict(model="mlp", meta_batch=4, shots=5, queries=5, inner_steps=2)
    second = profiling.count_flops({**spec, "first_order": False}, device="cpu")
    first = profiling.count_flops({**spec, "first_order": True}, device="cpu")
    assert second == profiling.count_flops({**spec, "first_order": False}, device="cpu")
    assert second > first > 0  # the Hessian-vector products of the inner steps
