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


def _gpu_check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_comparison_ignores_rounding_noise_on_gradients_that_are_zero():
    # A convolution's bias before batch norm has a gradient of exactly zero; each device returns its
    # own rounding noise there. Two such noises must not read as a difference of 100%...
    difference = _gpu_check_module().max_relative_difference
    reference = {"weight": torch.tensor([0.3, -0.4]), "bias": torch.tensor([1e-17])}
    noise = {"weight": torch.tensor([0.3, -0.4]), "bias": torch.tensor([-2e-17])}
    assert difference(reference, noise) < 1e-15
    # ...while a real difference in a small but not negligible gradient still shows, relative to it
    small = {"weight": torch.tensor([0.3, -0.4]), "bias": torch.tensor([1e-3])}
    wrong = {"weight": torch.tensor([0.3, -0.4]), "bias": torch.tensor([2e-3])}
    assert difference(small, wrong) == pytest.approx(1.0)
    assert difference(reference, {"weight": torch.tensor([0.3, -0.41]), "bias": reference["bias"]}) > 1e-3


def test_gpu_check_runs_only_the_parts_asked_for(tmp_path):
    result = run_script("--dry-run", "--parts", "2", "--out", str(tmp_path / "report.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert "vmap_vs_loop" in report and "devices" not in report and "short_run" not in report
    assert "| method | benchmark |" not in result.stdout
    bad = run_script("--dry-run", "--parts", "4")
    assert bad.returncode == 2 and "--parts='4' is out of range" in bad.stderr
