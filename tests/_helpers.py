"""Helpers the tests share: a model's parameters as one flat vector (finite differences), and small
Omniglot archives in the official layout (data loading and its errors)."""
import io
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def flat_params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def set_flat(model, flat):
    i = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(flat[i:i + p.numel()].view_as(p))
            i += p.numel()


def fake_archive(path: Path, top: str, chars: dict, seed: int = 0):
    """A small zip in the official layout; chars maps 'alphabet/characterNN' -> number of drawings."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w") as zf:
        for c, n in chars.items():
            for j in range(n):
                bits = rng.random((105, 105)) > 0.1  # white background, black strokes
                buf = io.BytesIO()
                Image.fromarray(bits).convert("1").save(buf, format="PNG")
                zf.writestr(f"{top}/{c}/{j:04d}_{j + 1:02d}.png", buf.getvalue())


def sinusoid_batch(tasks=3, shots=5, queries=7, seed=0):
    """A float64 meta-batch of sinusoid tasks."""
    from mlcourse.tasks import Sinusoid, TaskBatch

    batch = Sinusoid(shots, queries).sample(tasks, generator=torch.Generator().manual_seed(seed))
    return TaskBatch(*(t.double() for t in batch))


def small_mlp(seed=0):
    """A 1-8-8-1 float64 MLP, seeded."""
    from mlcourse.nn import MLP

    torch.manual_seed(seed)
    return MLP([1, 8, 8, 1]).double()


def small_convnet(seed=0):
    """A 3-way conv net with 2 blocks of 4 channels, float64, seeded."""
    from mlcourse.nn import ConvNet

    torch.manual_seed(seed)
    return ConvNet(ways=3, hidden=4, blocks=2).double()


def image_task(ways=3, shots=2, size=12, seed=0):
    """Random float64 images and their labels 0..ways-1, shots each."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(ways * shots, 1, size, size, generator=g, dtype=torch.float64)
    return x, torch.arange(ways).repeat_interleave(shots)


def check_stored_exercise_cells(chapter, setup):
    """notebooks/_exercise_cells/chN.json equals the registry's cells, its lines fit 88 columns,
    and every stored solution passes its own check (run in ``setup``'s namespace)."""
    import json

    from mlcourse.exercises import exercises_for
    from mlcourse.exercises.cells import chapter_cells, solution_source

    cells = Path(__file__).resolve().parents[1] / "notebooks" / "_exercise_cells"
    stored = json.loads((cells / f"ch{chapter}.json").read_text())
    assert stored == chapter_cells(chapter), "regenerate: python -m mlcourse.exercises.cells"
    by_id = {c["id"]: c for c in stored}
    for cell in stored:
        for line in "".join(cell["source"]).splitlines():
            assert len(line) <= 88, (cell["id"], line)
    for ex in exercises_for(chapter):
        solution = by_id[f"{ex.label}-solution"]
        assert "".join(solution["source"]) == solution_source(ex).rstrip("\n")
        namespace = dict(setup)
        exec("".join(solution["source"]), namespace)
        assert ex.check(namespace[ex.function_name], verbose=False).passed


def image_batch(tasks=2, ways=3, shots=2, queries=2, size=12, seed=0):
    """A float64 meta-batch of random image tasks, labels 0..ways-1 class-major."""
    from mlcourse.tasks import TaskBatch

    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(tasks, ways * shots, 1, size, size, generator=g, dtype=torch.float64)
    qx = torch.rand(tasks, ways * queries, 1, size, size, generator=g, dtype=torch.float64)
    sy = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    qy = torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1)
    return TaskBatch(sx, sy, qx, qy)


def model_grads(alg, batch):
    """The meta-gradient of the model's parameters, as one flat vector."""
    _, grads = alg.meta_gradient(batch)
    return torch.cat([grads[k].flatten() for k, _ in alg.model.named_parameters()])


def check_notebook_embeds_cells(chapter):
    """The chapter's notebook holds its exercise cells exactly as the registry writes them."""
    import nbformat

    from mlcourse.exercises.cells import NOTEBOOKS, chapter_cells

    path = Path(__file__).resolve().parents[1] / "notebooks" / NOTEBOOKS[chapter]
    cells = {c.get("id"): c for c in nbformat.read(str(path), as_version=4).cells}
    for cell in chapter_cells(chapter):
        mine = cells[cell["id"]]
        assert mine.cell_type == cell["cell_type"] and mine.source == "".join(cell["source"])
        assert mine.metadata.get("tags", []) == cell["metadata"].get("tags", [])


def check_directional_finite_differences(alg, batch, eps=1e-7, trials=3, seed=1):
    """The meta-gradient of every meta-parameter against central differences of ``meta_loss`` along
    ``trials`` random directions (float64); the parameters are restored. Returns the gradients."""
    named = alg.named_parameters()
    _, grads = alg.meta_gradient(batch)
    assert set(grads) == {k for k, _ in named}
    flat = torch.cat([grads[k].flatten() for k, _ in named])
    base = [p.detach().clone() for _, p in named]
    g = torch.Generator().manual_seed(seed)
    for _ in range(trials):
        direction = torch.randn(flat.numel(), generator=g, dtype=torch.float64)
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                i = 0
                for (_, p), b in zip(named, base):
                    p.copy_(b + sign * eps * direction[i:i + p.numel()].view_as(p))
                    i += p.numel()
            values.append(alg.meta_loss(batch).item())
        numeric = (values[0] - values[1]) / (2 * eps)
        assert abs(numeric - flat @ direction) <= 1e-6 * max(1.0, abs(numeric)), (numeric, (flat @ direction).item())
    with torch.no_grad():
        for (_, p), b in zip(named, base):
            p.copy_(b)
    return grads


def check_exercise_registry(chapter: int, module, planted: dict, notebook: str):
    """A chapter's exercises are registered once, under the ids of ``planted``, in its module, and
    the chapter's notebook is the one the cells generator writes into."""
    from mlcourse.exercises import ALL, exercises_for
    from mlcourse.exercises.cells import NOTEBOOKS

    exercises = exercises_for(chapter)
    assert set(planted) == {ex.id for ex in exercises}
    assert NOTEBOOKS[chapter] == notebook
    for ex in exercises:
        assert ALL[ex.id] is ex and getattr(module, ex.check.__name__) is ex.check


def check_planted_mistakes(ex_id: str, planted: dict):
    """Exercise ``ex_id``'s check passes its solution and explains each planted mistake."""
    from mlcourse.exercises import ALL

    ex = ALL[ex_id]
    assert ex.check(ex.solution, verbose=False).passed
    for wrong, phrase in planted[ex_id]:
        result = ex.check(wrong, verbose=False)
        assert not result.passed and phrase in result.message, result.message
