"""The prepared GPU check (benchmarks/gpu_check.py): a dry run on the CPU here, the real run on CUDA."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def run_script(*args, timeout=1200):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


def test_gpu_check_dry_run_covers_every_method(tmp_path):
    result = run_script("--dry-run", "--out", str(tmp_path / "report.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    from mlcourse.recipes import RECIPES

    wanted = {(m, b) for (m, b, w) in RECIPES if w in (None, 5)}
    assert {(r["method"], r["benchmark"]) for r in report["devices"]} == wanted
    assert all(r["max_relative_difference"] == 0.0 for r in report["devices"])  # CPU against itself
    assert "| meta-batch 2 | vmap |" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the real check runs instead")
def test_gpu_check_without_cuda_says_so():
    result = run_script()
    assert result.returncode == 2 and "no CUDA device here" in result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_check_on_cuda(tmp_path):
    result = run_script("--iterations", "50", "--out", str(tmp_path / "report.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert all(r["ok"] for r in report["devices"]), report["devices"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_maml_meta_gradient_on_cuda_equals_cpu():
    from mlcourse import recipes
    from mlcourse.tasks import Sinusoid

    batch = Sinusoid(10, 10).sample(4, torch.Generator().manual_seed(0))
    out = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        alg = recipes.build_algorithm("maml", "sinusoid", None)
        alg.model.double()
        alg.to(device)
        b = type(batch)(*(t.double() for t in batch)).to(device)
        out[device] = {k: g.cpu() for k, g in alg.meta_gradient(b)[1].items()}
    for k in out["cpu"]:
        torch.testing.assert_close(out["cuda"][k], out["cpu"][k], rtol=1e-9, atol=1e-12)
