"""The first cell of every chapter (notebooks/_setup_cell.py) and what it calls (mlcourse.notebook).

* The repository URL is set once, in _config.yml (`repository: url:`). The two copies that cannot
  read it at run time, ``mlcourse.notebook.REPOSITORY_URL`` and the pip source in the setup cell,
  must equal it, and no other file may spell it out.
* The cell, run by a Python that cannot import mlcourse (a fresh virtual environment, as in a
  fresh Colab runtime), installs the package with pip and prints the budget line. The test installs
  from a copy of this checkout (MLCOURSE_INSTALL_SOURCE), offline: pip gets --no-deps and
  --no-index, and the environment sees torch and the rest of the dependencies of .venv, but not
  its editable mlcourse.
* setup() sets 150-dpi figures, reads the budget, picks the device, and in Colab only fetches the
  data sets a chapter names.
"""
from __future__ import annotations

import ast
import io
import json
import os
import re
import shutil
import site
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

import mlcourse
import mlcourse.notebook as notebook

ROOT = Path(__file__).resolve().parents[1]
CELL = ROOT / "notebooks" / "_setup_cell.py"


def _config_url() -> str:
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def _cell_text() -> str:
    return CELL.read_text()


# -- one setting for the repository URL -----------------------------------------------------------
def test_repository_url_is_the_one_in_config():
    url = _config_url()
    assert notebook.REPOSITORY_URL == url, "mlcourse/notebook.py REPOSITORY_URL differs from _config.yml"
    assert f'"mlcourse @ git+{url}"' in _cell_text(), "the setup cell installs from another repository"


def _repository_files() -> list[Path]:
    """Files git tracks or would track (untracked but not ignored); read-only git."""
    try:
        proc = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                              cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in proc.stdout.decode().split("\0") if name and (ROOT / name).is_file()]


def test_no_other_file_spells_out_the_repository():
    """Only _config.yml, the two tested copies and the chapters' first cells name the repository."""
    url = _config_url()
    slug = re.escape(url.split("://", 1)[-1].split("/", 1)[-1].removesuffix(".git"))  # owner/repo
    pattern = re.compile(rf"github(?:\.com)?/{slug}(?![\w.-])")
    allowed = {ROOT / "_config.yml", ROOT / "mlcourse" / "notebook.py", CELL}
    offenders = []
    for path in _repository_files():
        if path in allowed or path.suffix in (".png", ".jpg", ".pt", ".zip", ".gz"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if path.suffix == ".ipynb":
            cells = json.loads(text)["cells"]
            first_code = next((i for i, c in enumerate(cells) if c["cell_type"] == "code"), None)
            for i, cell in enumerate(cells):
                if i != first_code and pattern.search("".join(cell["source"])):
                    offenders.append(f"{path.relative_to(ROOT)} (cell {i})")
        elif pattern.search(text):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, ("the repository URL is set in _config.yml (repository: url:); these files "
                           "repeat it (use the {{ repository_url }} substitution in pages):\n" + "\n".join(offenders))


# -- the cell's text ------------------------------------------------------------------------------
def test_setup_cell_is_short_and_valid_python():
    text = _cell_text()
    lines = text.rstrip("\n").split("\n")
    assert len(lines) < 15, f"{len(lines)} lines"
    assert all(len(line) <= 88 for line in lines), [line for line in lines if len(line) > 88]
    ast.parse(text)
    assert notebook.INSTALL_SOURCE_ENV in text
    assert re.search(r"^budget, device = mlcourse\.notebook\.setup\(data=.*\)$", lines[-1]), lines[-1]


def _first_code_cell(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


def test_chapters_start_with_the_setup_cell():
    """Once one chapter uses the cell, all do, as in notebooks/_setup_cell.py (only `data=` may differ)."""
    chapters = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    using = [p for p in chapters if "mlcourse.notebook.setup(" in _first_code_cell(p)]
    if not using:
        pytest.skip("no chapter starts with notebooks/_setup_cell.py yet: paste it as each first code cell")
    template = re.sub(r"setup\(data=.*\)", "setup(data=...)", _cell_text().strip())
    for path in chapters:
        cell = re.sub(r"setup\(data=.*\)", "setup(data=...)", _first_code_cell(path).strip())
        assert cell == template, f"{path.name}: its first code cell is not notebooks/_setup_cell.py"


# -- setup() in this process ----------------------------------------------------------------------
@pytest.fixture
def restored_rc():
    import matplotlib

    with matplotlib.rc_context():
        yield matplotlib


def test_setup_returns_budget_and_device_and_prints_one_line(restored_rc, monkeypatch, capsys):
    monkeypatch.setenv("MLCOURSE_BUDGET", "smoke")
    budget, device = notebook.setup()
    out = capsys.readouterr().out
    assert budget == mlcourse.get_budget("smoke")
    assert device == mlcourse.default_device()
    import torch

    assert out == f"budget: smoke   device: {device}   torch {torch.__version__}\n"
    assert notebook.setup(quiet=True).budget.name == "smoke"
    assert capsys.readouterr().out == ""


def test_setup_makes_figures_sharp(restored_rc):
    from IPython.core.pylabtools import print_figure
    import matplotlib.pyplot as plt

    notebook.setup(quiet=True)
    assert restored_rc.rcParams["savefig.dpi"] >= 150 and restored_rc.rcParams["figure.dpi"] >= 150
    fig, ax = plt.subplots()  # the default size, 6.4 x 4.8 inches
    ax.plot([0, 1], [0, 1])
    ax.set_xlabel("x")
    try:
        stored = print_figure(fig, "png")  # what Jupyter's inline backend stores in the notebook
        saved = io.BytesIO()
        fig.savefig(saved, format="png")
    finally:
        plt.close(fig)
    for png in (stored, saved.getvalue()):
        width = int.from_bytes(png[16:20], "big")  # the IHDR chunk
        assert width >= 800, width


def test_setup_rejects_an_unknown_budget_or_data_set(restored_rc, monkeypatch):
    with pytest.raises(ValueError, match="imagenet"):
        notebook.setup(data=("imagenet",), quiet=True)
    monkeypatch.setenv("MLCOURSE_BUDGET", "huge")
    with pytest.raises(ValueError, match="huge"):
        notebook.setup(quiet=True)


def test_setup_fetches_omniglot_in_colab_only(restored_rc, monkeypatch):
    import mlcourse.tasks.omniglot as omniglot

    calls = []
    monkeypatch.setattr(omniglot, "download_omniglot", lambda root=None: calls.append(root))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    notebook.setup(data=("omniglot",), quiet=True)
    assert calls == [], "outside Colab the loader downloads on first use; setup() fetches nothing"
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    notebook.setup(quiet=True)
    assert calls == [], "a chapter that names no data set gets none"
    notebook.setup(data=("omniglot",), quiet=True)
    assert calls == [None], "in Colab, setup(data=('omniglot',)) downloads with the package's loader"


# -- the cell in a fresh environment without mlcourse ---------------------------------------------
def _dependencies_without_mlcourse(target: Path) -> Path:
    """A folder of links to everything this environment's site-packages holds but mlcourse.

    Added to a fresh venv by a path line in a .pth file, it gives torch, numpy, matplotlib, pip and
    setuptools without copying them. Path lines do not run the .pth files inside the folder, and
    the editable install's own .pth and finder, and mlcourse's dist-info, are not linked at all.
    """
    target.mkdir()
    for folder in site.getsitepackages():
        for entry in Path(folder).iterdir():
            name = entry.name.lower()
            if (name.startswith(("mlcourse", "__editable__", "__pycache__")) or name.endswith(".pth")
                    or (target / entry.name).exists()):
                continue
            (target / entry.name).symlink_to(entry)
    return target


def _fresh_venv(tmp_path: Path) -> Path:
    venv_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv_dir)], check=True, timeout=120)
    python = venv_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = _dependencies_without_mlcourse(tmp_path / "deps")
    Path(purelib, "mlcourse_test_dependencies.pth").write_text(f"{deps}\n")
    return python


def _checkout_copy(target: Path) -> Path:
    """What pip needs to build mlcourse, copied, so that the build writes nothing in the checkout."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)
    shutil.copytree(ROOT / "mlcourse", target / "mlcourse", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def test_setup_cell_installs_mlcourse_in_a_fresh_environment(tmp_path):
    python = _fresh_venv(tmp_path)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "MLCOURSE_"))}
    env.update(MLCOURSE_BUDGET="smoke", MPLBACKEND="Agg", PIP_NO_INDEX="1", PIP_NO_DEPS="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1",
               # pip reads this variable inverted: "0" turns build isolation OFF, so the build uses
               # the setuptools the environment has instead of fetching one.
               PIP_NO_BUILD_ISOLATION="0",
               **{notebook.INSTALL_SOURCE_ENV: str(_checkout_copy(tmp_path / "src"))})
    work = tmp_path / "work"  # not the checkout: Python puts the working folder on sys.path
    work.mkdir()

    def run(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(python), "-c", code], cwd=work, env=env, capture_output=True, text=True,
                              timeout=timeout)

    before = run("import importlib.util; print(importlib.util.find_spec('mlcourse'))")
    assert before.returncode == 0 and before.stdout.strip() == "None", before.stdout + before.stderr

    cell = _cell_text() + ("import matplotlib\n"
                           "print('dpi', matplotlib.rcParams['savefig.dpi'])\n"
                           "print('imported from', mlcourse.__file__)\n")
    ran = run(cell, timeout=300)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    lines = ran.stdout.splitlines()
    assert re.fullmatch(r"budget: smoke   device: (cpu|cuda)   torch \S+", lines[0]), ran.stdout
    assert any(line.startswith("dpi ") and float(line.split()[1]) >= 150 for line in lines), ran.stdout

    after = run("import mlcourse, mlcourse.notebook; print(mlcourse.__file__)")
    assert after.returncode == 0, after.stderr[-3000:]
    installed = Path(after.stdout.strip())
    assert installed.is_relative_to(tmp_path / "venv"), f"mlcourse imported from {installed}, not the fresh venv"
    assert not installed.is_relative_to(ROOT)
