"""Tests of mlcourse.tasks.omniglot on the real Omniglot archives.

The data root is $MLCOURSE_DATA, else ``shared/data`` beside the repository checkout. The decoded
tensors go to the normal cache (decoded once per machine), except in the caching tests.
"""
from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mlcourse.tasks import omniglot as om
from mlcourse.tasks.base import TaskBatch
from mlcourse.tasks.omniglot import Omniglot, OmniglotRuns, load_omniglot, split_indices

from _helpers import fake_archive


def _find_root() -> Path | None:
    env = os.environ.get("MLCOURSE_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    folder = root / "omniglot"
    needed = ("images_background.zip", "images_evaluation.zip", "all_runs.zip")
    return root if all((folder / n).is_file() for n in needed) else None


ROOT = _find_root()
pytestmark = pytest.mark.skipif(
    ROOT is None,
    reason="Omniglot archives not found: set MLCOURSE_DATA to a folder holding omniglot/"
    "{images_background,images_evaluation,all_runs}.zip (or put shared/data beside the checkout)",
)


@pytest.fixture(scope="module")
def data():
    return load_omniglot(ROOT, download=False)


@pytest.fixture(scope="module")
def train():
    return Omniglot(5, 1, 15, split="train", root=ROOT, download=False)


@pytest.fixture(scope="module")
def runs():
    return OmniglotRuns(ROOT, download=False)


def _png_28(png: bytes) -> torch.Tensor:
    """Independent reference of the preprocessing: 28x28 LANCZOS, inverted, in [0, 1]."""
    im = Image.open(io.BytesIO(png)).convert("L").resize((28, 28), Image.LANCZOS)
    return torch.from_numpy(255 - np.array(im, dtype=np.int64)).float() / 255


# ------------------------------------------------------------------ decoded data


def test_counts_and_order(data):
    images, chars, archives = data["images"], data["characters"], data["archives"]
    assert images.shape == (1623, 20, 28, 28) and images.dtype == torch.uint8
    assert len(chars) == len(set(chars)) == 1623
    assert archives == ["images_background"] * 964 + ["images_evaluation"] * 659
    assert chars[:964] == sorted(chars[:964]) and chars[964:] == sorted(chars[964:])
    assert chars[0] == "Alphabet_of_the_Magi/character01"
    assert all(c.count("/") == 1 and c.split("/")[1].startswith("character") for c in chars)
    assert len({c.split("/")[0] for c in chars[:964]}) == 30
    assert len({c.split("/")[0] for c in chars[964:]}) == 20


def test_preprocessing_matches_png(data):
    with zipfile.ZipFile(ROOT / "omniglot" / "images_background.zip") as zf:
        names = sorted(n for n in zf.namelist() if "/Alphabet_of_the_Magi/character01/" in n and n.endswith(".png"))
        assert len(names) == 20
        first, last = _png_28(zf.read(names[0])), _png_28(zf.read(names[-1]))
    ours = data["images"][0].float() / 255
    assert torch.allclose(ours[0], first, atol=1e-6) and torch.allclose(ours[19], last, atol=1e-6)
    # Strokes are bright on a dark background.
    x = data["images"].float() / 255
    assert x.mean() < 0.2 and (x.amax(dim=(-2, -1)) > 0.5).all()  # (Braille dots are small)
    assert (x[..., 0, :] < 0.1).float().mean() > 0.9  # image borders are background


# ------------------------------------------------------------------ splits


@pytest.mark.parametrize("protocol,sizes", [("maml", (1100, 100, 423)), ("lake", (864, 100, 659))])
def test_split_sizes_and_disjointness(data, protocol, sizes):
    idx = split_indices(protocol)
    assert tuple(len(idx[s]) for s in ("train", "val", "test")) == sizes
    sets = {s: set(v.tolist()) for s, v in idx.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sets["train"] | sets["val"] | sets["test"] == set(range(1623))
    if protocol == "lake":
        assert all(data["archives"][i] == "images_evaluation" for i in idx["test"].tolist())
        assert all(data["archives"][i] == "images_background" for i in idx["train"].tolist() + idx["val"].tolist())


def test_split_is_fixed():
    # The same on every call (and machine): a fixed seed, not the global RNG.
    torch.manual_seed(123)
    a = split_indices("maml")
    torch.manual_seed(456)
    b = split_indices("maml")
    assert all(torch.equal(a[s], b[s]) for s in a)
    # Fingerprint: a change here means the published splits moved (e.g. torch changed randperm).
    assert a["test"][:5].tolist() == [0, 4, 5, 9, 10]
    assert a["val"][:5].tolist() == [17, 25, 28, 41, 55]
    assert split_indices("maml", num_val_characters=50)["val"].numel() == 50


def test_split_datasets(train):
    assert train.num_classes == 4 * 1100 == train.images.shape[0]
    assert len(train.characters) == 1100
    assert (train.split, train.ways, train.shots, train.queries) == ("train", 5, 1, 15)
    val = Omniglot(5, 1, 1, split="val", root=ROOT, download=False)
    test = Omniglot(5, 1, 1, split="test", root=ROOT, download=False, protocol="lake")
    assert val.num_classes == 400 and len(val.characters) == 100
    assert test.num_classes == 4 * 659 and set(test.archives) == {"images_evaluation"}
    assert not set(train.characters) & set(val.characters)


def test_rotations_are_rot90(train, data):
    idx = split_indices("maml")["train"]
    imgs = train.images  # (classes, 20, 1, 28, 28)
    assert imgs.shape == (4400, 20, 1, 28, 28) and imgs.dtype == torch.uint8
    for c in (0, 1, 517, 1099):
        base = data["images"][idx[c]]
        assert torch.equal(imgs[4 * c, :, 0], base)
        for k in (1, 2, 3):
            assert torch.equal(imgs[4 * c + k, :, 0], torch.rot90(base, k, dims=(-2, -1)))
        assert not torch.equal(imgs[4 * c + 1], imgs[4 * c])


# ------------------------------------------------------------------ sampling


@pytest.mark.parametrize("ways,shots,queries", [(5, 1, 15), (20, 5, 5), (3, 19, 1)])
def test_sample_shapes_labels_and_content(ways, shots, queries):
    ds = Omniglot(ways, shots, queries, split="val", root=ROOT, download=False)
    g = torch.Generator().manual_seed(0)
    T = 6
    batch = ds.sample(T, generator=g)
    assert isinstance(batch, TaskBatch) and batch.num_tasks == T
    sx, sy, qx, qy = batch
    assert sx.shape == (T, ways * shots, 1, 28, 28) and qx.shape == (T, ways * queries, 1, 28, 28)
    assert sy.shape == (T, ways * shots) and qy.shape == (T, ways * queries)
    assert sx.dtype == qx.dtype == torch.float32 and sy.dtype == qy.dtype == torch.int64
    assert sx.device.type == "cpu"
    assert 0 <= float(sx.min()) and float(sx.max()) <= 1 and float(qx.max()) <= 1
    for t in range(T):
        assert torch.equal(torch.bincount(sy[t], minlength=ways), torch.full((ways,), shots))
        assert torch.equal(torch.bincount(qy[t], minlength=ways), torch.full((ways,), queries))
    # The draw behind the batch: distinct classes per task, distinct drawings per class,
    # and each image is the drawing it claims to be.
    classes, draws = ds.sample_indices(T, generator=torch.Generator().manual_seed(0))
    assert classes.shape == (T, ways) and draws.shape == (T, ways, shots + queries)
    for t in range(T):
        assert len(set(classes[t].tolist())) == ways
        for i in range(ways):
            assert len(set(draws[t, i].tolist())) == shots + queries
    t, i = T - 1, ways - 1
    expect = ds.images[classes[t, i], draws[t, i]].float() / 255
    got_s = sx[t][sy[t] == i]
    got_q = qx[t][qy[t] == i]
    assert torch.equal(torch.cat([got_s, got_q]), expect)


def test_labels_are_randomly_assigned(train):
    classes, _ = train.sample_indices(200, generator=torch.Generator().manual_seed(1))
    # Label 0 does not always go to, say, the smallest class index.
    first_is_min = (classes[:, 0] == classes.min(dim=1).values).float().mean()
    assert 0.05 < first_is_min < 0.5
    assert classes.min() >= 0 and classes.max() < train.num_classes


def test_determinism(train):
    a = train.sample(4, generator=torch.Generator().manual_seed(7))
    b = train.sample(4, generator=torch.Generator().manual_seed(7))
    c = train.sample(4, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.support_x, c.support_x)
    torch.manual_seed(3)
    d = train.sample(2)
    torch.manual_seed(3)
    e = train.sample(2)
    assert torch.equal(d.query_x, e.query_x)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(ways=5000, shots=1, queries=1), r"ways=5000 is out of range: allowed in 1\.\.4400 \(classes in the 'train' split\)"),
        (dict(ways=401, shots=1, queries=1, split="val"), r"ways=401 .* 1\.\.400 .*'val'"),
        (dict(ways=5, shots=10, queries=11), r"shots\+queries=21 .*allowed in 2\.\.20"),
        (dict(ways=5, shots=1, queries=20), r"queries=20 is out of range"),
        (dict(ways=0, shots=1, queries=1), r"ways=0 is out of range"),
        (dict(ways=5, shots=-1, queries=1), r"shots=-1 is out of range: allowed >= 1"),
        (dict(ways=5, shots=1, queries=0), r"queries=0 is out of range"),
        (dict(ways=5, shots=1, queries=1, split="training"), r"split='training' is not known: allowed 'train', 'val', 'test'"),
        (dict(ways=5, shots=1, queries=1, protocol="vinyals"), r"protocol='vinyals' is not known"),
        (dict(ways=5, shots=1, queries=1, num_val_characters=1200), r"num_val_characters=1200 is out of range"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Omniglot(root=ROOT, download=False, **kwargs)


def test_bad_meta_batch(train):
    for bad in (0, -3):
        with pytest.raises(ValueError, match=rf"meta_batch={bad} is out of range"):
            train.sample(bad)
    with pytest.raises(TypeError):
        train.sample(2.5)


def test_missing_root(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        Omniglot(5, 1, 1, root=tmp_path, download=False)
    msg = str(err.value)
    assert str(tmp_path / "omniglot") in msg and "images_background.zip" in msg
    assert "python -m mlcourse download omniglot" in msg and "MLCOURSE_DATA" in msg

    # download=True with a failing download (offline): still a FileNotFoundError with the fix,
    # which is the manual route, not the download command that just failed.
    def offline(name, folder, **options):
        raise OSError("no network")

    monkeypatch.setattr(om, "_download", offline)
    with pytest.raises(FileNotFoundError, match="downloading it failed: no network.*by hand") as err:
        OmniglotRuns(root=tmp_path, download=True)
    assert "python -m mlcourse download" not in str(err.value)
    monkeypatch.setenv("MLCOURSE_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        load_omniglot(download=True)


def test_download_over_http(tmp_path, monkeypatch):
    """The download code path, against a local HTTP server serving the archives."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    # Laid out like the official repository (all_runs.zip in one-shot-classification/).
    srv = tmp_path / "srv"
    (srv / "one-shot-classification").mkdir(parents=True)
    for name, rel in om.ARCHIVE_FILES.items():
        (srv / rel).symlink_to(ROOT / "omniglot" / f"{name}.zip")
    handler = functools.partial(Quiet, directory=str(srv))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MLCOURSE_OMNIGLOT_URL", f"http://127.0.0.1:{server.server_address[1]}")
        folder = om.download_omniglot(tmp_path, progress=False)
        assert folder == tmp_path / "omniglot"
        for name in ("images_background", "images_evaluation", "all_runs"):
            assert (folder / f"{name}.zip").read_bytes() == (ROOT / "omniglot" / f"{name}.zip").read_bytes()
        assert not list(tmp_path.rglob("*.part"))
        # Same archive contents -> same cache key: loads the existing cache, no decoding.
        monkeypatch.setattr(om, "_decode_archives", lambda *a, **k: pytest.fail("decoded again"))
        assert Omniglot(5, 1, 1, root=tmp_path, download=False).num_classes == 4400
        # Nothing left to download: no request is made.
        monkeypatch.setattr(om, "_download", lambda *a, **k: pytest.fail("downloaded again"))
        om.download_omniglot(tmp_path)
    finally:
        server.shutdown()
        server.server_close()


def test_data_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("MLCOURSE_DATA", str(tmp_path / "a"))
    assert om.data_root() == tmp_path / "a"
    assert om.data_root(tmp_path / "b") == tmp_path / "b"
    monkeypatch.delenv("MLCOURSE_DATA")
    assert om.data_root().name == "data" and "mlcourse" in str(om.data_root())
    monkeypatch.setenv("MLCOURSE_CACHE", str(tmp_path / "c"))
    assert om.cache_dir() == tmp_path / "c"


# ------------------------------------------------------------------ caching


def test_second_construction_is_fast(data):
    start = time.perf_counter()
    ds = Omniglot(5, 1, 1, split="test", root=ROOT, download=False)
    assert time.perf_counter() - start < 5.0  # loads the cache file, no decoding
    assert ds.num_classes == 4 * 423


def test_cache_written_and_reused(tmp_path, monkeypatch):
    root, cache = tmp_path / "root", tmp_path / "cache"
    (root / "omniglot").mkdir(parents=True)
    monkeypatch.setenv("MLCOURSE_CACHE", str(cache))
    monkeypatch.setattr(om, "ARCHIVES", {"images_background": 3, "images_evaluation": 2})
    fake_archive(root / "omniglot" / "images_background.zip", "images_background",
                  {"Beta/character01": 20, "Alpha/character02": 20, "Alpha/character01": 20})
    fake_archive(root / "omniglot" / "images_evaluation.zip", "images_evaluation",
                  {"Gamma/character01": 20, "Delta/character01": 20})

    first = load_omniglot(root, download=False, progress=False)
    files = list(cache.glob("omniglot-28px-*.pt"))
    assert len(files) == 1
    assert first["characters"] == ["Alpha/character01", "Alpha/character02", "Beta/character01",
                                   "Delta/character01", "Gamma/character01"]
    assert first["images"].shape == (5, 20, 28, 28)

    calls = []
    monkeypatch.setattr(om, "_decode_archives", lambda *a, **k: calls.append(1))
    start = time.perf_counter()
    second = load_omniglot(root, download=False, progress=False)
    assert time.perf_counter() - start < 2.0 and not calls
    assert torch.equal(first["images"], second["images"]) and first["characters"] == second["characters"]
    saved = torch.load(files[0], weights_only=True)  # plain tensors, lists and strings
    assert torch.equal(saved["images"], first["images"])


def test_wrong_counts_fail_clearly(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "omniglot").mkdir(parents=True)
    monkeypatch.setenv("MLCOURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(om, "ARCHIVES", {"images_background": 2, "images_evaluation": 1})
    fake_archive(root / "omniglot" / "images_background.zip", "images_background",
                  {"A/character01": 20, "A/character02": 19})
    fake_archive(root / "omniglot" / "images_evaluation.zip", "images_evaluation", {"B/character01": 20})
    with pytest.raises(om.DataError, match=r"A/character02: 19"):
        load_omniglot(root, download=False, progress=False)
    monkeypatch.setattr(om, "ARCHIVES", {"images_background": 964, "images_evaluation": 659})
    with pytest.raises(om.DataError, match=r"2 characters \(expected 964\)"):
        load_omniglot(root, download=False, progress=False)


# ------------------------------------------------------------------ Lake's one-shot runs


def test_runs_shapes(runs):
    assert len(runs) == 20
    b = runs.batch()
    assert b.support_x.shape == b.query_x.shape == (20, 20, 1, 28, 28)
    assert b.support_x.dtype == torch.float32 and b.query_y.dtype == b.support_y.dtype == torch.int64
    assert torch.equal(b.support_y, torch.arange(20).expand(20, 20))
    for r in range(20):  # each test item belongs to a different training class
        assert sorted(b.query_y[r].tolist()) == list(range(20))
    assert 0 <= float(b.query_x.min()) and float(b.query_x.max()) <= 1


def test_runs_labels_by_hand(runs):
    with zipfile.ZipFile(ROOT / "omniglot" / "all_runs.zip") as zf:
        lines = zf.read("run01/class_labels.txt").decode().split()
        item01 = _png_28(zf.read("run01/test/item01.png"))
        target = _png_28(zf.read(lines[1]))
        class03 = _png_28(zf.read("run01/training/class03.png"))
    assert lines[0] == "run01/test/item01.png" and lines[1] == "run01/training/class08.png"
    b = runs.batch()
    assert b.query_y[0, :4].tolist() == [7, 8, 1, 18]  # item01..04 -> class08, 09, 02, 19
    assert torch.allclose(b.query_x[0, 0, 0], item01, atol=1e-6)
    assert torch.allclose(b.support_x[0, 7, 0], target, atol=1e-6)
    assert torch.allclose(b.support_x[0, 2, 0], class03, atol=1e-6)


def test_runs_nearest_neighbour_beats_chance(runs):
    b = runs.batch()

    def one_nn(s, q):
        d = torch.cdist(q.flatten(2), s.flatten(2))
        return (d.argmin(-1) == b.query_y).float().mean().item()

    # Chance is 5%. Lake et al. (2015) report ~21.7% for pixel-space nearest neighbour.
    assert one_nn(b.support_x, b.query_x) > 0.15
    # Slight blurring makes pixel distance far more tolerant of stroke jitter.
    k = torch.exp(-((torch.arange(7) - 3.0) ** 2) / (2 * 1.5**2))
    k = (k[:, None] * k[None]) / k.sum() ** 2

    def blur(x):
        return F.conv2d(x.reshape(-1, 1, 28, 28), k[None, None], padding=3).reshape(x.shape)

    assert one_nn(blur(b.support_x), blur(b.query_x)) > 0.30
