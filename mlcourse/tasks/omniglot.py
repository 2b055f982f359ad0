"""Omniglot few-shot classification tasks, as in the MAML paper, and Lake's 20 one-shot runs.

Omniglot (Lake et al., 2015) has 1,623 handwritten characters from 50 alphabets, each drawn once
by 20 different people.  The official release splits it into two archives: ``images_background``
(30 alphabets, 964 characters) and ``images_evaluation`` (20 alphabets, 659 characters).

Preprocessing (done once per machine and cached, see :func:`load_omniglot`): every 105x105 one-bit
drawing is resized to 28x28 with PIL's antialiasing LANCZOS filter and inverted, so strokes are
near 1 and the background is 0.

Protocols (``Omniglot(protocol=...)``):

* ``"maml"`` -- the protocol of Finn et al. (2017), following Santoro et al. (2016): all 1,623
  characters are shuffled with a fixed seed; the first 1,200 are for meta-training (the last
  ``num_val_characters`` of those form the ``"val"`` split, the rest ``"train"``) and the remaining
  423 are ``"test"``.
* ``"lake"`` -- ``"train"``/``"val"`` come from the 964 background characters (validation carved
  off the same way), ``"test"`` is the 659 evaluation characters, so the test alphabets are never
  seen in meta-training.  This is the setting of :class:`OmniglotRuns`.

In both protocols each character yields four classes, its drawings rotated by 0, 90, 180 and 270
degrees (``torch.rot90``); the four rotations of a character always stay in the same split, so no
two splits share a character.  An N-way task draws N distinct classes of one split and, for each,
``shots + queries`` distinct drawings out of its 20.

:class:`OmniglotRuns` gives the 20 runs of Lake's original 20-way one-shot benchmark
(``all_runs.zip``), with the same preprocessing.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
import zipfile
from pathlib import Path

import torch

from ..utils import check_int
from .base import TaskBatch, check_episode, episode_indices, episodes_from

__all__ = [
    "ARCHIVES",
    "DRAWINGS_PER_CHARACTER",
    "IMAGE_SIZE",
    "Omniglot",
    "OmniglotRuns",
    "cache_dir",
    "data_root",
    "download_omniglot",
    "load_omniglot",
    "split_indices",
]

#: The two image archives, in the order their characters are numbered, with their character counts.
ARCHIVES = {"images_background": 964, "images_evaluation": 659}
#: Each character is drawn by 20 people.
DRAWINGS_PER_CHARACTER = 20
#: Side of the preprocessed images.
IMAGE_SIZE = 28
RUNS_ARCHIVE = "all_runs"
NUM_RUNS = 20
RUN_WAYS = 20

_BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
URLS = {
    "images_background": _BASE_URL + "images_background.zip",
    "images_evaluation": _BASE_URL + "images_evaluation.zip",
    "all_runs": _BASE_URL + "one-shot-classification/all_runs.zip",
}

SPLITS = ("train", "val", "test")
PROTOCOLS = ("maml", "lake")
#: Seed of the fixed character permutation behind the splits (same on every machine).
SPLIT_SEED = 1623
# Bump when the decoded format or preprocessing changes, so stale cache files are not used.
_CACHE_VERSION = 1

_FIX = (
    "set MLCOURSE_DATA to a folder holding omniglot/images_background.zip and "
    "omniglot/images_evaluation.zip, or run: python -m mlcourse download omniglot --root DIR"
)


# --------------------------------------------------------------------------------------------
# Locations


def data_root(root=None) -> Path:
    """The data root: ``root`` if given, else ``$MLCOURSE_DATA``, else ``<user cache>/mlcourse/data``.

    Datasets live in subfolders of it (``<root>/omniglot/``, ``<root>/miniimagenet/``). It may be
    read-only when the archives are already there.
    """
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("MLCOURSE_DATA")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("mlcourse")) / "data"


def cache_dir() -> Path:
    """Where decoded tensors are cached: ``$MLCOURSE_CACHE``, else ``<user cache>/mlcourse``."""
    env = os.environ.get("MLCOURSE_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("mlcourse"))


# --------------------------------------------------------------------------------------------
# Download


def _download(name: str, folder: Path) -> Path:
    """Fetch archive ``name`` into ``folder`` (atomically: a partial download never looks done)."""
    from torchvision.datasets.utils import download_url

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{name}.zip"
    part = folder / f"{name}.zip.part"
    # No md5: the official archives and repacked copies differ; counts are checked after decoding.
    download_url(URLS[name], str(folder), filename=part.name, md5=None)
    if not zipfile.is_zipfile(part):
        part.unlink(missing_ok=True)
        raise OSError(f"downloaded {URLS[name]} but it is not a zip archive")
    os.replace(part, final)
    return final


def _archive_path(name: str, root, download: bool) -> Path:
    """Path of ``<root>/omniglot/<name>.zip``, downloading it if missing and allowed."""
    folder = data_root(root) / "omniglot"
    path = folder / f"{name}.zip"
    if path.is_file():
        return path
    reason = "download=False"
    if download:
        try:
            return _download(name, folder)
        except Exception as exc:  # no network, read-only folder, HTTP error, ...
            reason = f"download failed: {type(exc).__name__}: {exc}"
    expected = ", ".join(f"{n}.zip" for n in (*ARCHIVES, RUNS_ARCHIVE))
    raise FileNotFoundError(
        f"Omniglot archive {path.name} not found in {folder} ({reason}). Expected there: "
        f"{expected} (all_runs.zip only for OmniglotRuns). To fix: {_FIX}"
    )


def download_omniglot(root=None) -> Path:
    """Download the missing Omniglot archives (both image archives and ``all_runs.zip``).

    They go to ``<root>/omniglot/`` (``root`` resolved by :func:`data_root`); archives already
    there are kept. Returns that folder. Raises FileNotFoundError if a download fails.
    """
    for name in (*ARCHIVES, RUNS_ARCHIVE):
        _archive_path(name, root, download=True)
    return data_root(root) / "omniglot"


# --------------------------------------------------------------------------------------------
# Decoding


def _decode_png(data: bytes):
    """One PNG (bytes) -> 28x28 uint8 numpy array, strokes bright (255) on a black background."""
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        # Mode "1" images are only resized with NEAREST by PIL, so go through greyscale first.
        small = im.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return np.array(ImageOps.invert(small), dtype=np.uint8)


def _png_members(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The archive's PNG members sorted by path (macOS resource-fork entries skipped)."""
    members = [
        i for i in zf.infolist()
        if i.filename.lower().endswith(".png") and "__MACOSX" not in i.filename
        and not i.filename.rsplit("/", 1)[-1].startswith("._")
    ]
    return sorted(members, key=lambda i: i.filename)


def _cache_key(paths: dict[str, Path]) -> str:
    """Hash of every PNG's name, size and CRC (read from the zip directories; no decompression)."""
    h = hashlib.sha1(f"omniglot-v{_CACHE_VERSION}-{IMAGE_SIZE}".encode())
    for name, path in paths.items():
        with zipfile.ZipFile(path) as zf:
            h.update(name.encode())
            for info in _png_members(zf):
                h.update(f"{info.filename}:{info.file_size}:{info.CRC}\n".encode())
    return h.hexdigest()[:16]


def _group_characters(members: list[zipfile.ZipInfo]) -> dict[str, list[zipfile.ZipInfo]]:
    """``alphabet/characterNN`` -> its PNG members, from paths ``.../<alphabet>/<character>/<file>.png``."""
    chars: dict[str, list[zipfile.ZipInfo]] = {}
    for info in members:
        parts = info.filename.split("/")
        if len(parts) >= 3:
            chars.setdefault(f"{parts[-3]}/{parts[-2]}", []).append(info)
    return dict(sorted(chars.items()))


def _decode_archives(paths: dict[str, Path], progress: bool = True) -> dict:
    """Decode both archives into the cached dict (images, characters, archives)."""
    import numpy as np
    from tqdm.auto import tqdm

    plan = []  # (archive, character, members)
    for archive, path in paths.items():
        with zipfile.ZipFile(path) as zf:
            chars = _group_characters(_png_members(zf))
        expected = ARCHIVES[archive]
        bad = {c: len(m) for c, m in chars.items() if len(m) != DRAWINGS_PER_CHARACTER}
        if len(chars) != expected or bad:
            detail = f"{len(chars)} characters (expected {expected})"
            if bad:
                some = ", ".join(f"{c}: {n}" for c, n in list(bad.items())[:3])
                detail += f"; characters without {DRAWINGS_PER_CHARACTER} drawings: {some}"
            raise RuntimeError(
                f"{path} does not look like the Omniglot {archive} archive: {detail}. "
                f"Delete it and download it again (python -m mlcourse download omniglot --root DIR)."
            )
        plan.extend((archive, c, m) for c, m in chars.items())

    images = np.empty((len(plan), DRAWINGS_PER_CHARACTER, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    total = len(plan) * DRAWINGS_PER_CHARACTER
    with tqdm(total=total, desc="Decoding Omniglot (once)", unit="img", disable=not progress) as bar:
        open_zips = {a: zipfile.ZipFile(p) for a, p in paths.items()}
        try:
            for i, (archive, _, members) in enumerate(plan):
                zf = open_zips[archive]
                for j, info in enumerate(members):
                    images[i, j] = _decode_png(zf.read(info))
                bar.update(len(members))
        finally:
            for zf in open_zips.values():
                zf.close()
    return {
        "version": _CACHE_VERSION,
        "images": torch.from_numpy(images),
        "characters": [c for _, c, _ in plan],
        "archives": [a for a, _, _ in plan],
    }


def load_omniglot(root=None, download: bool = True, progress: bool = True) -> dict:
    """All 1,623 characters, decoded: a dict with

    * ``"images"``: uint8 tensor (1623, 20, 28, 28), 255 = stroke, 0 = background;
    * ``"characters"``: their names ``alphabet/characterNN`` (background archive first, then
      evaluation, each sorted by path);
    * ``"archives"``: for each character, ``"images_background"`` or ``"images_evaluation"``.

    The first call decodes the archives (a few seconds) and saves the result to
    ``cache_dir()/omniglot-28px-<key>.pt``, the key being a hash of the archives' member names,
    sizes and CRCs; later calls load that file.
    """
    paths = {name: _archive_path(name, root, download) for name in ARCHIVES}
    key = _cache_key(paths)
    cache_file = cache_dir() / f"omniglot-{IMAGE_SIZE}px-{key}.pt"
    if cache_file.is_file():
        try:
            data = torch.load(cache_file, map_location="cpu", weights_only=True)
            if data.get("version") == _CACHE_VERSION and tuple(data["images"].shape) == (
                sum(ARCHIVES.values()), DRAWINGS_PER_CHARACTER, IMAGE_SIZE, IMAGE_SIZE
            ):
                return data
        except Exception as exc:  # corrupt or truncated file: decode again
            warnings.warn(f"ignoring unreadable Omniglot cache {cache_file}: {exc}")
    data = _decode_archives(paths, progress=progress)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
        torch.save(data, tmp)
        os.replace(tmp, cache_file)
    except OSError as exc:
        warnings.warn(f"could not write the Omniglot cache {cache_file} ({exc}); it will be decoded again next time")
    return data


# --------------------------------------------------------------------------------------------
# Splits and task sampling


def split_indices(protocol: str = "maml", num_val_characters: int = 100) -> dict[str, torch.Tensor]:
    """Indices (into :func:`load_omniglot`'s character order) of the characters of each split.

    Uses a fixed permutation (``torch.randperm`` with a generator seeded with ``SPLIT_SEED``),
    so splits are the same on every machine; each split's indices are returned sorted.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} is not known: allowed {', '.join(map(repr, PROTOCOLS))}")
    n_background, n_evaluation = ARCHIVES["images_background"], ARCHIVES["images_evaluation"]
    g = torch.Generator().manual_seed(SPLIT_SEED)
    if protocol == "maml":
        n_meta_train = 1200
        check_int("num_val_characters", num_val_characters, 0, n_meta_train - 1,
                  why="characters carved from the 1200 meta-training characters")
        perm = torch.randperm(n_background + n_evaluation, generator=g)
        meta_train, test = perm[:n_meta_train], perm[n_meta_train:]
    else:
        check_int("num_val_characters", num_val_characters, 0, n_background - 1,
                  why="characters carved from the 964 background characters")
        meta_train = torch.randperm(n_background, generator=g)
        test = torch.arange(n_background, n_background + n_evaluation)
    cut = len(meta_train) - num_val_characters
    return {
        "train": meta_train[:cut].sort().values,
        "val": meta_train[cut:].sort().values,
        "test": test.sort().values,
    }


def _rotations(images: torch.Tensor) -> torch.Tensor:
    """(chars, 20, H, W) -> (chars * 4, 20, H, W): class ``4*c + k`` is character c rotated k*90 deg."""
    rotated = torch.stack([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)], dim=1)
    return rotated.reshape(-1, *images.shape[1:])


class Omniglot:
    """N-way K-shot Omniglot tasks from one split (see the module docstring for the protocols).

    Args:
        ways: classes per task (N).
        shots: support drawings per class (K).
        queries: query drawings per class; ``shots + queries <= 20``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: data root holding ``omniglot/images_background.zip`` and ``images_evaluation.zip``
            (default: see :func:`data_root`).
        download: fetch missing archives from the official repository.
        protocol: ``"maml"`` (1200/423 random character split) or ``"lake"`` (background vs
            evaluation alphabets).
        num_val_characters: meta-training characters set aside for ``"val"``.

    Attributes: ``split``, ``protocol``, ``ways``, ``shots``, ``queries``, ``characters`` (names of
    the split's characters), ``num_classes`` (4 per character), ``images`` (uint8 tensor
    (num_classes, 20, 1, 28, 28); class ``4*c + k`` is ``characters[c]`` rotated by ``k*90`` degrees
    counter-clockwise).
    """

    def __init__(self, ways: int, shots: int, queries: int, split: str = "train", root=None,
                 download: bool = True, protocol: str = "maml", num_val_characters: int = 100):
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not known: allowed {', '.join(map(repr, SPLITS))}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol={protocol!r} is not known: allowed {', '.join(map(repr, PROTOCOLS))}")
        for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
            check_int(name, value, 1)
        indices = split_indices(protocol, num_val_characters)[split]
        if len(indices) == 0:
            raise ValueError(f"the {split!r} split is empty (num_val_characters={num_val_characters})")
        num_classes = 4 * len(indices)
        check_episode(ways, shots, queries, num_classes, DRAWINGS_PER_CHARACTER, split)

        data = load_omniglot(root, download=download)
        self.split, self.protocol = split, protocol
        self.ways, self.shots, self.queries = ways, shots, queries
        self.characters: list[str] = [data["characters"][i] for i in indices.tolist()]
        self.archives: list[str] = [data["archives"][i] for i in indices.tolist()]
        self.images = _rotations(data["images"][indices]).unsqueeze(2)  # (classes, 20, 1, 28, 28)
        self.num_classes = num_classes

    def sample_indices(self, meta_batch: int, generator: torch.Generator | None = None):
        """The random draw behind :meth:`sample`: ``(classes, drawings)``.

        ``classes`` is (meta_batch, ways) int64, distinct within a task (rows of ``self.images``;
        label i of task t is class ``classes[t, i]``); ``drawings`` is (meta_batch, ways,
        shots+queries), distinct within a class, the first ``shots`` of them for the support set.
        """
        check_int("meta_batch", meta_batch, 1)
        return episode_indices(self.num_classes, DRAWINGS_PER_CHARACTER, self.ways,
                                self.shots + self.queries, meta_batch, generator)

    def sample(self, meta_batch: int, generator: torch.Generator | None = None) -> TaskBatch:
        """A TaskBatch of ``meta_batch`` tasks, float32 images in [0, 1] of shape (1, 28, 28).

        ``support_x`` is (meta_batch, ways*shots, 1, 28, 28), ``support_y`` (meta_batch, ways*shots)
        int64 in 0..ways-1, class-major (``0,..,0,1,..,1,...``); label i stands for the i-th class
        drawn, and classes are drawn in random order, so each task has its own random assignment
        of labels. The query set likewise with ``queries``. Deterministic given ``generator``
        (default: torch's global generator); same draw as :meth:`sample_indices`. On CPU.
        """
        classes, draws = self.sample_indices(meta_batch, generator)
        x = self.images[classes.unsqueeze(-1), draws]  # (T, ways, shots+queries, 1, 28, 28)
        return episodes_from(x, self.ways, self.shots, self.queries)

    def __repr__(self) -> str:
        return (f"Omniglot(split={self.split!r}, protocol={self.protocol!r}, ways={self.ways}, "
                f"shots={self.shots}, queries={self.queries}, characters={len(self.characters)}, "
                f"num_classes={self.num_classes})")


# --------------------------------------------------------------------------------------------
# Lake's one-shot runs


class OmniglotRuns:
    """The 20 runs of Lake et al.'s 20-way one-shot classification benchmark (``all_runs.zip``).

    Each run has 20 training images (one per class, from the evaluation alphabets) and 20 test
    images, each of which belongs to one of those classes (``class_labels.txt``). Images get the
    same preprocessing as :class:`Omniglot` (28x28, strokes near 1).

    Attributes: ``support_x`` (20, 20, 1, 28, 28) float32, ``support_y`` (20, 20) = 0..19 (label
    ``i`` is ``training/class{i+1:02d}.png``), ``query_x``, ``query_y`` likewise for the test items
    in file order.
    """

    def __init__(self, root=None, download: bool = True):
        path = _archive_path(RUNS_ARCHIVE, root, download)
        support = torch.empty(NUM_RUNS, RUN_WAYS, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
        query = torch.empty_like(support)
        query_y = torch.empty(NUM_RUNS, RUN_WAYS, dtype=torch.int64)
        line = re.compile(r"^\s*(?:.*/)?(run\d+)/test/item(\d+)\.png\s+(?:.*/)?(run\d+)/training/class(\d+)\.png\s*$")
        with zipfile.ZipFile(path) as zf:
            # Member names relative to the runXX/ folders (tolerating an enclosing folder).
            names = {}
            for n in zf.namelist():
                m = re.search(r"(run\d+/.*)$", n)
                if m and "__MACOSX" not in n:
                    names[m.group(1)] = n
            for r in range(NUM_RUNS):
                run = f"run{r + 1:02d}"
                try:
                    for i in range(RUN_WAYS):
                        train_png = zf.read(names[f"{run}/training/class{i + 1:02d}.png"])
                        test_png = zf.read(names[f"{run}/test/item{i + 1:02d}.png"])
                        support[r, i] = torch.from_numpy(_decode_png(train_png))
                        query[r, i] = torch.from_numpy(_decode_png(test_png))
                    text = zf.read(names[f"{run}/class_labels.txt"]).decode()
                except KeyError as exc:
                    raise RuntimeError(f"{path} does not look like Lake's all_runs.zip: missing {exc}") from None
                seen = set()
                for raw in text.splitlines():
                    if not raw.strip():
                        continue
                    m = line.match(raw)
                    if not m or m.group(1) != run or m.group(3) != run:
                        raise RuntimeError(f"{path}: unexpected line in {run}/class_labels.txt: {raw!r}")
                    item, cls = int(m.group(2)) - 1, int(m.group(4)) - 1
                    query_y[r, item] = cls
                    seen.add(item)
                if seen != set(range(RUN_WAYS)):
                    raise RuntimeError(f"{path}: {run}/class_labels.txt does not label all {RUN_WAYS} test items")
        self.support_x = support.unsqueeze(2).float().div_(255.0)
        self.query_x = query.unsqueeze(2).float().div_(255.0)
        self.support_y = torch.arange(RUN_WAYS).expand(NUM_RUNS, -1).clone()
        self.query_y = query_y

    def __len__(self) -> int:
        """Number of runs (tasks): 20."""
        return NUM_RUNS

    def batch(self) -> TaskBatch:
        """All runs as one TaskBatch of 20 tasks, each 20-way one-shot with 20 queries."""
        return TaskBatch(self.support_x.clone(), self.support_y.clone(), self.query_x.clone(), self.query_y.clone())
