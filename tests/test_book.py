"""The book builds from the stored notebook outputs with no warnings (-W), as the README says."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_book_builds_without_warnings(tmp_path):
    jb = Path(sys.executable).parent / "jupyter-book"
    command = [str(jb) if jb.exists() else "jupyter-book", "build", str(ROOT), "-W", "-n", "--keep-going",
               "--path-output", str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    html = tmp_path / "_build" / "html"
    for page in ("book/intro.html", "notebooks/01_few_shot_learning.html", "notebooks/02_maml.html",
                 "notebooks/03_reptile.html", "notebooks/04_hierarchical_bayes.html",
                 "notebooks/05_imaml.html"):
        assert (html / page).exists(), page


def test_notebooks_are_stored_executed_and_light():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
        counts = [c["execution_count"] for c in code]
        assert None not in counts and counts == sorted(counts), f"{path.name}: not run top to bottom"
        assert not any(o.get("output_type") == "error" for c in code for o in c["outputs"]), path.name
        assert path.stat().st_size < 3_000_000, f"{path.name} is over 3 MB"
        first = "".join(code[0]["outputs"][0]["text"]) if code[0]["outputs"] else ""
        assert first.startswith("budget: "), f"{path.name}: the first output must say which budget produced it"


def test_stored_notebooks_hold_no_widget_state_nor_widget_progress_bars():
    """The book runs no kernel: stored widget state would show dead sliders, and tqdm widgets empty
    boxes (python -m mlcourse.notebook NOTEBOOK prepares an executed chapter)."""
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        assert "widgets" not in nb["metadata"], f"{path.name} stores widget state"
        for cell in nb["cells"]:
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                if "application/vnd.jupyter.widget-view+json" in data:
                    assert "".join(data.get("text/plain", "")).startswith("interactive("), path.name


def test_prepare_for_book_drops_progress_bars_and_keeps_playgrounds(tmp_path):
    from mlcourse.notebook import prepare_for_book

    view = "application/vnd.jupyter.widget-view+json"
    nb = {"cells": [{"cell_type": "code", "source": [], "metadata": {}, "execution_count": 1, "outputs": [
        {"output_type": "display_data", "metadata": {},
         "data": {view: {"model_id": "a"}, "text/plain": "train: 100%|##| 5/5"}},
        {"output_type": "display_data", "metadata": {},
         "data": {view: {"model_id": "b"}, "text/plain": "interactive(children=(IntSlider(value=1),))"}}]}],
        "metadata": {"widgets": {"state": {}}}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    assert prepare_for_book(path) == {"progress_bars": 1, "playgrounds": 1}
    out = json.loads(path.read_text())
    (only,) = out["cells"][0]["outputs"]
    assert view in only["data"] and only["data"]["text/plain"].startswith("interactive(")
    assert "widgets" not in out["metadata"]
