"""Tests of mlcourse.tasks.miniimagenet: the shipped splits, and sampling on generated images."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from mlcourse.tasks.base import TaskBatch
from mlcourse.tasks.miniimagenet import MiniImageNet, read_split

NUM_CLASSES, PER_CLASS = 6, 8


def _colour(c: int, j: int) -> tuple[int, int, int]:
    """Class c has its own (red, green); the blue channel numbers the image within the class."""
    return (40 * c + 10, 250 - 40 * c, 20 * j + 5)


@pytest.fixture
def fake(tmp_path):
    """A root with 6 classes x 8 tiny solid-colour images, and the CSV listing them."""
    images = tmp_path / "root" / "miniimagenet" / "images"
    images.mkdir(parents=True)
    rows = ["filename,label"]
    for c in range(NUM_CLASSES):
        for j in range(PER_CLASS):
            name = f"n{c:08d}{j:08d}.png"
            im = Image.new("RGB", (12, 10), _colour(c, j))
            if c == NUM_CLASSES - 1:  # one greyscale class: must come out with 3 equal channels
                im = Image.new("L", (12, 10), 30 * j + 10)
            im.save(images / name)
            rows.append(f"{name},n{c:08d}")
    csv = tmp_path / "split.csv"
    csv.write_text("\n".join(rows) + "\n")
    return tmp_path / "root", csv


# ------------------------------------------------------------------ shipped splits


def test_shipped_splits():
    splits = {s: read_split(s) for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 64, "val": 16, "test": 20}
    for classes in splits.values():
        for label, files in classes.items():
            assert len(files) == 600 and len(set(files)) == 600
            assert all(f.startswith(label) and f.endswith(".jpg") for f in files)
    labels = [set(v) for v in splits.values()]
    assert not (labels[0] & labels[1]) and not (labels[0] & labels[2]) and not (labels[1] & labels[2])
    with pytest.raises(ValueError, match="split='trian' is not known"):
        read_split("trian")


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        MiniImageNet(5, 1, 15, split="test", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "miniimagenet" / "images") in msg
    assert "Ravi" in msg and "MLCOURSE_DATA" in msg


def test_missing_files(tmp_path):
    images = tmp_path / "miniimagenet" / "images"
    images.mkdir(parents=True)
    first = next(iter(read_split("val").values()))[0]
    Image.new("RGB", (4, 4)).save(images / first, format="JPEG")
    with pytest.raises(FileNotFoundError, match=r"9599 of the 9600 images listed in the shipped val\.csv are missing"):
        MiniImageNet(5, 1, 15, split="val", root=tmp_path)


# ------------------------------------------------------------------ sampling on generated images


def test_sample_shapes_and_colours(fake):
    root, csv = fake
    ways, shots, queries, T = 3, 2, 3, 5
    ds = MiniImageNet(ways, shots, queries, root=root, image_size=8, split_csv=csv)
    assert ds.num_classes == NUM_CLASSES and ds.class_names[0] == "n00000000"
    g = torch.Generator().manual_seed(0)
    batch = ds.sample(T, generator=g)
    assert isinstance(batch, TaskBatch)
    sx, sy, qx, qy = batch
    assert sx.shape == (T, ways * shots, 3, 8, 8) and qx.shape == (T, ways * queries, 3, 8, 8)
    assert sx.dtype == qx.dtype == torch.float32 and sy.dtype == qy.dtype == torch.int64
    assert 0 <= float(sx.min()) and float(qx.max()) <= 1
    classes, draws = ds.sample_indices(T, generator=torch.Generator().manual_seed(0))
    for t in range(T):
        assert torch.equal(torch.bincount(sy[t], minlength=ways), torch.full((ways,), shots))
        assert torch.equal(torch.bincount(qy[t], minlength=ways), torch.full((ways,), queries))
        assert len(set(classes[t].tolist())) == ways
        for i in range(ways):
            c = int(classes[t, i])
            imgs = torch.cat([sx[t][sy[t] == i], qx[t][qy[t] == i]])  # (shots+queries, 3, 8, 8)
            assert len(set(draws[t, i].tolist())) == shots + queries
            for img, j in zip(imgs, draws[t, i].tolist()):
                if c == NUM_CLASSES - 1:
                    want = torch.full((3,), (30 * j + 10) / 255)
                else:
                    want = torch.tensor(_colour(c, j), dtype=torch.float32) / 255
                assert torch.allclose(img, want[:, None, None].expand(3, 8, 8), atol=1.5 / 255)
    # Classes are decoded lazily, on first use.
    assert set(ds._cache) == set(classes.flatten().tolist())


def test_labels_map_to_class_colour(fake):
    """Without peeking at the draw: each label's images share one (red, green) = one class."""
    root, csv = fake
    ds = MiniImageNet(4, 1, 2, root=root, image_size=6, split_csv=csv)
    b = ds.sample(8, generator=torch.Generator().manual_seed(3))
    for t in range(8):
        seen = set()
        for i in range(4):
            x = torch.cat([b.support_x[t][b.support_y[t] == i], b.query_x[t][b.query_y[t] == i]])
            rgb = [tuple((x[k, :, 0, 0] * 255).round().int().tolist()) for k in range(len(x))]
            rg = {"grey" if r == g == b else (r, g) for r, g, b in rgb}
            assert len(rg) == 1
            seen |= rg
        assert len(seen) == 4  # four different classes


def test_determinism(fake):
    root, csv = fake
    ds = MiniImageNet(2, 1, 1, root=root, image_size=4, split_csv=csv)
    a = ds.sample(3, generator=torch.Generator().manual_seed(11))
    b = ds.sample(3, generator=torch.Generator().manual_seed(11))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = ds.sample_indices(50, generator=torch.Generator().manual_seed(12))[0]
    assert not torch.equal(c, ds.sample_indices(50, generator=torch.Generator().manual_seed(11))[0])


def test_unequal_class_sizes(tmp_path, fake):
    root, csv = fake
    lines = csv.read_text().splitlines()
    small = tmp_path / "small.csv"  # class 0 keeps only 3 of its 8 images
    small.write_text("\n".join(lines[:4] + lines[1 + PER_CLASS:]) + "\n")
    with pytest.raises(ValueError, match=r"shots\+queries=4 .*allowed in 2\.\.3 \(images per class\)"):
        MiniImageNet(2, 2, 2, root=root, split_csv=small)
    ds = MiniImageNet(6, 1, 2, root=root, image_size=4, split_csv=small)
    classes, draws = ds.sample_indices(30, generator=torch.Generator().manual_seed(0))
    assert int(draws[classes == 0].max()) < 3  # never an image the class does not have


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(ways=7, shots=1, queries=1), r"ways=7 is out of range: allowed in 1\.\.6 \(classes in the 'train' split\)"),
        (dict(ways=2, shots=4, queries=5), r"shots\+queries=9 .*allowed in 2\.\.8"),
        (dict(ways=2, shots=0, queries=1), r"shots=0 is out of range"),
        (dict(ways=-1, shots=1, queries=1), r"ways=-1 is out of range"),
        (dict(ways=2, shots=1, queries=0), r"queries=0 is out of range"),
        (dict(ways=2, shots=1, queries=1, split="meta-train"), r"split='meta-train' is not known"),
        (dict(ways=2, shots=1, queries=1, image_size=0), r"image_size=0 is out of range"),
    ],
)
def test_errors(fake, kwargs, match):
    root, csv = fake
    with pytest.raises(ValueError, match=match):
        MiniImageNet(root=root, split_csv=csv, **kwargs)


def test_bad_meta_batch_and_csv(fake, tmp_path):
    root, csv = fake
    ds = MiniImageNet(2, 1, 1, root=root, split_csv=csv)
    with pytest.raises(ValueError, match=r"meta_batch=0 is out of range"):
        ds.sample(0)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na.png,x\n")
    with pytest.raises(ValueError, match="header 'filename,label'"):
        MiniImageNet(1, 1, 1, root=root, split_csv=bad)
