"""Mini-ImageNet few-shot classification tasks with the Ravi & Larochelle (2017) splits.

Mini-ImageNet (Vinyals et al., 2016) has 100 ImageNet classes with 600 images each. The splits
used by the MAML paper are those of Ravi & Larochelle: 64 classes for meta-training, 16 for
validation and 20 for testing. They ship with this package as CSV files (``filename,label``, in
``mlcourse/data/miniimagenet/``); the images themselves (several GB, ImageNet terms of use) are
not downloaded by this package: the user supplies them in ``<root>/miniimagenet/images/``, one
flat folder holding every file named in the CSVs (e.g. ``n0153282900000005.jpg``).

An N-way task draws N distinct classes of the split and, for each, ``shots + queries`` distinct
images out of its 600. Images are decoded with PIL, resized to ``image_size`` squared, and kept in
memory per class the first time a class is drawn (a fully cached training split at 84x84 takes
about 0.8 GB).
"""
from __future__ import annotations

import csv
import io
from importlib import resources
from pathlib import Path

import torch

from ..utils import check_int
from .base import TaskBatch, check_episode, episodes_from
from .omniglot import data_root

__all__ = ["MiniImageNet", "SPLITS", "read_split"]

SPLITS = ("train", "val", "test")


def _shipped_csv_text(split: str) -> str:
    return resources.files("mlcourse.data").joinpath("miniimagenet").joinpath(f"{split}.csv").read_text()


def _parse_csv(text: str, source: str) -> dict[str, list[str]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != ["filename", "label"]:
        raise ValueError(f"{source}: expected the CSV header 'filename,label', got {header!r}")
    classes: dict[str, list[str]] = {}
    for lineno, row in enumerate(reader, start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise ValueError(f"{source}, line {lineno}: expected 'filename,label', got {row!r}")
        filename, label = row[0].strip(), row[1].strip()
        classes.setdefault(label, []).append(filename)
    if not classes:
        raise ValueError(f"{source}: no rows")
    return dict(sorted(classes.items()))


def read_split(split: str = "train", split_csv=None) -> dict[str, list[str]]:
    """The classes of a split: ``{label: [filename, ...]}``, labels sorted, files in CSV order.

    Reads the shipped Ravi & Larochelle CSV of ``split`` (``"train"``, ``"val"`` or ``"test"``),
    or the file ``split_csv`` if given (same ``filename,label`` format).
    """
    if split_csv is not None:
        path = Path(split_csv)
        return _parse_csv(path.read_text(), str(path))
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not known: allowed {', '.join(map(repr, SPLITS))}")
    return _parse_csv(_shipped_csv_text(split), f"mlcourse/data/miniimagenet/{split}.csv")


class MiniImageNet:
    """N-way K-shot Mini-ImageNet tasks from one split.

    Args:
        ways: classes per task (N).
        shots: support images per class (K).
        queries: query images per class; ``shots + queries`` at most the images per class (600).
        split: ``"train"`` (64 classes), ``"val"`` (16) or ``"test"`` (20).
        root: data root; images are read from ``<root>/miniimagenet/images/<filename>`` (default
            root: ``$MLCOURSE_DATA``, else the user cache folder; see ``omniglot.data_root``).
        image_size: side of the (square) images returned.
        split_csv: a ``filename,label`` CSV to use instead of the shipped one for ``split``.

    Raises FileNotFoundError if the image folder is missing or lacks any file the split lists.

    Attributes: ``split``, ``ways``, ``shots``, ``queries``, ``image_size``, ``class_names``
    (the labels, e.g. WordNet ids, sorted), ``num_classes``, ``images_dir``, ``files`` (per class,
    its file names).
    """

    def __init__(self, ways: int, shots: int, queries: int, split: str = "train", root=None,
                 image_size: int = 84, split_csv=None):
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not known: allowed {', '.join(map(repr, SPLITS))}")
        for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
            check_int(name, value, 1)
        check_int("image_size", image_size, 1)
        classes = read_split(split, split_csv)
        self.class_names: list[str] = list(classes)
        self.files: list[list[str]] = [classes[c] for c in self.class_names]
        self.num_classes = len(self.class_names)
        per_class = min(len(f) for f in self.files)
        check_episode(ways, shots, queries, self.num_classes, per_class, split, unit="images")

        self.split, self.ways, self.shots, self.queries = split, ways, shots, queries
        self.image_size = image_size
        self.images_dir = data_root(root) / "miniimagenet" / "images"
        self._check_images(split_csv)
        self._counts = torch.tensor([len(f) for f in self.files])
        self._cache: dict[int, torch.Tensor] = {}

    def _check_images(self, split_csv) -> None:
        listed = [f for files in self.files for f in files]
        where = (
            f"Put the Mini-ImageNet images (e.g. from the Ravi & Larochelle release, 84x84 JPEGs "
            f"named like {listed[0]}) all in the one folder {self.images_dir}, or point "
            f"MLCOURSE_DATA (or root=) at a folder holding miniimagenet/images/. The images "
            f"cannot be downloaded by mlcourse: you must obtain them yourself."
        )
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"Mini-ImageNet image folder not found: {self.images_dir}. {where}")
        present = {p.name for p in self.images_dir.iterdir()}
        missing = [f for f in listed if f not in present]
        if missing:
            csv_name = split_csv if split_csv is not None else f"the shipped {self.split}.csv"
            raise FileNotFoundError(
                f"{len(missing)} of the {len(listed)} images listed in {csv_name} are missing from "
                f"{self.images_dir} (e.g. {', '.join(missing[:3])}). {where}"
            )

    def _load(self, path: Path):
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (self.image_size, self.image_size):
                im = im.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
            return np.array(im, dtype=np.uint8)

    def class_images(self, c: int) -> torch.Tensor:
        """All images of class ``c`` as uint8 (n, 3, image_size, image_size), decoded on first use."""
        if c not in self._cache:
            import numpy as np

            arr = np.stack([self._load(self.images_dir / f) for f in self.files[c]])
            self._cache[c] = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
        return self._cache[c]

    def sample_indices(self, meta_batch: int, generator: torch.Generator | None = None):
        """The random draw behind :meth:`sample`: ``(classes, images)``.

        ``classes`` is (meta_batch, ways) int64, distinct within a task (indices into
        ``class_names``; label i of task t is class ``classes[t, i]``); ``images`` is (meta_batch,
        ways, shots+queries), indices into ``files[c]``, distinct within a class, the first
        ``shots`` for the support set.
        """
        check_int("meta_batch", meta_batch, 1)
        n_draw = self.shots + self.queries
        classes = torch.rand(meta_batch, self.num_classes, generator=generator).argsort(dim=1)[:, : self.ways]
        counts = self._counts[classes]  # (T, ways)
        # A random permutation per class via argsort of uniforms; slots past its count sort last.
        keys = torch.rand(meta_batch, self.ways, int(self._counts.max()), generator=generator)
        keys[torch.arange(keys.shape[-1]) >= counts.unsqueeze(-1)] = float("inf")
        return classes, keys.argsort(dim=-1)[..., :n_draw]

    def sample(self, meta_batch: int, generator: torch.Generator | None = None) -> TaskBatch:
        """A TaskBatch of ``meta_batch`` tasks, float32 images in [0, 1], (3, image_size, image_size).

        ``support_x`` is (meta_batch, ways*shots, 3, S, S), ``support_y`` (meta_batch, ways*shots)
        int64 in 0..ways-1 in class-major order; label i is the i-th class drawn (classes are drawn
        in random order). The query set likewise with ``queries``. Deterministic given
        ``generator``; same draw as :meth:`sample_indices`. Decodes classes not seen before.
        """
        classes, draws = self.sample_indices(meta_batch, generator)
        S = self.image_size
        x = torch.empty(meta_batch, self.ways, self.shots + self.queries, 3, S, S, dtype=torch.uint8)
        for t in range(meta_batch):
            for i, c in enumerate(classes[t].tolist()):
                x[t, i] = self.class_images(c)[draws[t, i]]
        return episodes_from(x, self.ways, self.shots, self.queries)

    def __repr__(self) -> str:
        return (f"MiniImageNet(split={self.split!r}, ways={self.ways}, shots={self.shots}, "
                f"queries={self.queries}, image_size={self.image_size}, num_classes={self.num_classes})")
