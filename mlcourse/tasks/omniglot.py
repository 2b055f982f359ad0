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

import contextlib
import hashlib
import http.client
import io
import os
import re
import time
import urllib.error
import urllib.request
import uuid
import warnings
import zipfile
import zlib
from pathlib import Path

import torch

from ..utils import check_int
from .base import TaskBatch, check_episode, episode_indices, episodes_from

__all__ = [
    "ARCHIVES",
    "BASE_URL",
    "DataError",
    "DRAWINGS_PER_CHARACTER",
    "IMAGE_SIZE",
    "Omniglot",
    "OmniglotRuns",
    "archive_url",
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

#: Where the archives are downloaded from; the environment variable ``MLCOURSE_OMNIGLOT_URL``
#: (see :func:`archive_url`) overrides it, e.g. with a mirror.
BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
URL_ENV = "MLCOURSE_OMNIGLOT_URL"
#: Each archive's path below the base URL.
ARCHIVE_FILES = {
    "images_background": "images_background.zip",
    "images_evaluation": "images_evaluation.zip",
    "all_runs": "one-shot-classification/all_runs.zip",
}
#: The page to fetch the archives from by hand.
MANUAL_URL = "https://github.com/brendenlake/omniglot/tree/master/python"
#: Download defaults: seconds to wait for each read, attempts per archive, first pause between them.
DOWNLOAD_TIMEOUT = 30.0
DOWNLOAD_TRIES = 3
DOWNLOAD_BACKOFF = 2.0

SPLITS = ("train", "val", "test")
PROTOCOLS = ("maml", "lake")
#: Seed of the fixed character permutation behind the splits (same on every machine).
SPLIT_SEED = 1623
# Bump when the decoded format or preprocessing changes, so stale cache files are not used.
# (2: the cache carries a SHA-256 of its content.)
_CACHE_VERSION = 2


class DataError(ValueError):
    """A data file is damaged or is not the file it should be.

    The message is one line: the file, what is wrong with it and what to do.
    """


def _manual_route(folder: Path) -> str:
    names = ", ".join(f"{n}.zip" for n in (*ARCHIVES, RUNS_ARCHIVE))
    return (f"download {names} by hand from {MANUAL_URL} (all_runs.zip is in its "
            f"one-shot-classification/ folder) and put them in {folder}/")


def _damaged(path: Path, problem: str) -> DataError:
    """The error for a bad archive ``<root>/omniglot/<name>.zip``: ``problem`` says what is wrong."""
    return DataError(
        f"{path} {problem}. Delete it and download it again "
        f"(python -m mlcourse download omniglot --root {path.parent.parent}), "
        f"or fetch it by hand from {MANUAL_URL}"
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


def archive_url(name: str) -> str:
    """URL of archive ``name``: below ``$MLCOURSE_OMNIGLOT_URL`` if set, else below :data:`BASE_URL`."""
    base = os.environ.get(URL_ENV) or BASE_URL
    return base.rstrip("/") + "/" + ARCHIVE_FILES[name]


def _fetch(url: str, dest: Path, timeout: float, desc: str, progress: bool) -> None:
    """One attempt: stream ``url`` into ``dest`` (overwritten) with a progress bar."""
    from tqdm.auto import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "mlcourse"})
    # The timeout bounds the connection and every read, so a stalled server cannot hang us.
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        length = response.headers.get("Content-Length", "")
        expected = int(length) if length.isdigit() else None
        received = 0
        with tqdm(total=expected, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                  disable=not progress) as bar:
            while chunk := response.read(1 << 16):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    # http.client returns a short body without complaint when the connection drops early.
    if expected is not None and received != expected:
        raise OSError(f"incomplete transfer: got {received} of {expected} bytes")


def _check_zip(path: Path) -> None:
    """Raise OSError unless ``path`` is a zip archive whose members all pass their CRC check."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise OSError(f"the file received is not a valid zip archive ({exc})") from exc
    if bad is not None:
        raise OSError(f"the file received is damaged (bad CRC in {bad})")


def _download(name: str, folder: Path, timeout: float | None = None, tries: int | None = None,
              backoff: float | None = None, progress: bool = True) -> Path:
    """Fetch archive ``name`` to ``folder/<name>.zip``; raise OSError naming the URL if every try fails.

    ``timeout``, ``tries`` and ``backoff`` default to ``DOWNLOAD_TIMEOUT``, ``DOWNLOAD_TRIES`` and
    ``DOWNLOAD_BACKOFF``; the pause before retry ``i`` is ``backoff * 2**(i-1)`` seconds. HTTP 4xx
    errors are not retried. The bytes go to a hidden temporary file beside ``folder``, moved into
    place (``os.replace``) only when complete and a valid zip, so a failed or interrupted download
    leaves nothing that looks like data (nor any folder it created).
    """
    timeout = DOWNLOAD_TIMEOUT if timeout is None else timeout
    tries = check_int("tries", DOWNLOAD_TRIES if tries is None else tries, 1)
    backoff = DOWNLOAD_BACKOFF if backoff is None else backoff
    url = archive_url(name)
    parent = folder.parent
    created = [p for p in (parent, *parent.parents) if not p.exists()]  # deepest first
    # A unique hidden name (not mkstemp, whose 0600 mode would keep a shared folder's archives private).
    tmp = parent / f".omniglot-{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.zip.part"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, tries + 1):
            try:
                _fetch(url, tmp, timeout, f"{name}.zip", progress)
                _check_zip(tmp)
                break
            except (OSError, http.client.HTTPException) as exc:
                client_error = isinstance(exc, urllib.error.HTTPError) and exc.code < 500
                if attempt == tries or client_error:
                    count = "1 try" if attempt == 1 else f"{attempt} tries"
                    raise OSError(f"could not download {url} after {count} "
                                  f"(last error {type(exc).__name__}: {exc})") from exc
                time.sleep(backoff * 2 ** (attempt - 1))
        folder.mkdir(exist_ok=True)
        final = folder / f"{name}.zip"
        os.replace(tmp, final)
        return final
    except BaseException:  # also on Ctrl-C: leave no partial file and no empty folders
        tmp.unlink(missing_ok=True)
        for path in created:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


def _archive_path(name: str, root, download: bool, **download_options) -> Path:
    """Path of ``<root>/omniglot/<name>.zip``, downloading it if missing and allowed.

    Raises FileNotFoundError with what to do when the archive is missing (and the download failed).
    """
    folder = data_root(root) / "omniglot"
    path = folder / f"{name}.zip"
    if path.is_file():
        return path
    if download:
        try:
            return _download(name, folder, **download_options)
        except OSError as exc:  # no network, stalled server, HTTP error, read-only folder, ...
            # Not "run the download command": that is what just failed.
            raise FileNotFoundError(
                f"Omniglot archive {path.name} is not in {folder}, and downloading it failed: {exc}. "
                f"To fix: {_manual_route(folder)}, or set MLCOURSE_DATA to a folder whose omniglot/ "
                f"subfolder holds them"
            ) from exc
    raise FileNotFoundError(
        f"Omniglot archive {path.name} not found in {folder} (download=False). To fix: run "
        f"python -m mlcourse download omniglot --root {data_root(root)}, or {_manual_route(folder)}, "
        f"or set MLCOURSE_DATA to a folder whose omniglot/ subfolder holds them"
    )


def download_omniglot(root=None, *, timeout: float | None = None, tries: int | None = None,
                      backoff: float | None = None, progress: bool = True) -> Path:
    """Download the missing Omniglot archives (both image archives and ``all_runs.zip``).

    They go to ``<root>/omniglot/`` (``root`` resolved by :func:`data_root`); archives already
    there are kept. Returns that folder. ``timeout`` (seconds per read), ``tries`` and ``backoff``
    default to ``DOWNLOAD_TIMEOUT``, ``DOWNLOAD_TRIES`` and ``DOWNLOAD_BACKOFF``. The source is
    :func:`archive_url` (``$MLCOURSE_OMNIGLOT_URL`` overrides it). Raises FileNotFoundError, naming
    the URL and where to put the files by hand, if a download fails.
    """
    options = dict(timeout=timeout, tries=tries, backoff=backoff, progress=progress)
    for name in (*ARCHIVES, RUNS_ARCHIVE):
        _archive_path(name, root, download=True, **options)
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


@contextlib.contextmanager
def _open_zip(path: Path):
    """``zipfile.ZipFile(path)``, a damaged file raising DataError instead."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise _damaged(path, f"is not a valid zip archive ({exc})") from exc
    with zf:
        yield zf


def _read(zf: zipfile.ZipFile, member, path: Path) -> bytes:
    """The bytes of ``member`` of archive ``path``; a bad CRC or compressed stream raises DataError."""
    try:
        return zf.read(member)
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
        name = getattr(member, "filename", member)
        raise _damaged(path, f"is damaged: its member {name} cannot be read ({exc})") from exc


def _decode_member(zf: zipfile.ZipFile, member, path: Path):
    """:func:`_decode_png` of a member of archive ``path``, raising DataError if it is not a PNG."""
    data = _read(zf, member, path)
    try:
        return _decode_png(data)
    except Exception as exc:  # PIL raises several types for broken images
        name = getattr(member, "filename", member)
        raise _damaged(path, f"is damaged: its member {name} is not a readable PNG ({exc})") from exc


def _cache_key(paths: dict[str, Path]) -> str:
    """Hash of every PNG's name, size and CRC (read from the zip directories; no decompression)."""
    h = hashlib.sha1(f"omniglot-v{_CACHE_VERSION}-{IMAGE_SIZE}".encode())
    for name, path in paths.items():
        with _open_zip(path) as zf:
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
        with _open_zip(path) as zf:
            chars = _group_characters(_png_members(zf))
        expected = ARCHIVES[archive]
        bad = {c: len(m) for c, m in chars.items() if len(m) != DRAWINGS_PER_CHARACTER}
        if len(chars) != expected or bad:
            detail = f"{len(chars)} characters (expected {expected})"
            if bad:
                some = ", ".join(f"{c}: {n}" for c, n in list(bad.items())[:3])
                detail += f"; characters without {DRAWINGS_PER_CHARACTER} drawings: {some}"
            raise _damaged(path, f"does not look like the Omniglot {archive} archive: {detail}")
        plan.extend((archive, c, m) for c, m in chars.items())

    images = np.empty((len(plan), DRAWINGS_PER_CHARACTER, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    total = len(plan) * DRAWINGS_PER_CHARACTER
    with (tqdm(total=total, desc="Decoding Omniglot (once)", unit="img", disable=not progress) as bar,
          contextlib.ExitStack() as stack):
        open_zips = {a: stack.enter_context(_open_zip(p)) for a, p in paths.items()}
        for i, (archive, _, members) in enumerate(plan):
            for j, info in enumerate(members):
                images[i, j] = _decode_member(open_zips[archive], info, paths[archive])
            bar.update(len(members))
    return {
        "version": _CACHE_VERSION,
        "images": torch.from_numpy(images),
        "characters": [c for _, c, _ in plan],
        "archives": [a for a, _, _ in plan],
    }


def _content_hash(images: torch.Tensor, characters: list[str], archives: list[str]) -> str:
    """SHA-256 of the decoded images' bytes and of the character and archive names."""
    h = hashlib.sha256(images.contiguous().numpy())
    for names in (characters, archives):
        h.update(b"\0" + "\n".join(names).encode())
    return h.hexdigest()


def _load_cache(path: Path) -> dict | None:
    """The cached dict if current and intact; else None, after a warning if the file is damaged."""
    expected_shape = (sum(ARCHIVES.values()), DRAWINGS_PER_CHARACTER, IMAGE_SIZE, IMAGE_SIZE)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if data.get("version") != _CACHE_VERSION or tuple(data["images"].shape) != expected_shape:
            return None  # another format: replaced without fuss
        intact = data.get("sha256") == _content_hash(data["images"], data["characters"], data["archives"])
    except Exception as exc:  # truncated or otherwise unreadable
        warnings.warn(f"ignoring unreadable Omniglot cache {path} ({type(exc).__name__}: {exc}); "
                      f"rebuilding it from the archives")
        return None
    if not intact:  # torch.load does not check the bytes of tensors, so a flipped bit gets here
        warnings.warn(f"ignoring damaged Omniglot cache {path} (its checksum does not match its content); "
                      f"rebuilding it from the archives")
        return None
    return data


def load_omniglot(root=None, download: bool = True, progress: bool = True) -> dict:
    """All 1,623 characters, decoded: a dict with

    * ``"images"``: uint8 tensor (1623, 20, 28, 28), 255 = stroke, 0 = background;
    * ``"characters"``: their names ``alphabet/characterNN`` (background archive first, then
      evaluation, each sorted by path);
    * ``"archives"``: for each character, ``"images_background"`` or ``"images_evaluation"``;
    * ``"sha256"``: a checksum of the three above (and ``"version"``, of the cache format).

    The first call decodes the archives (a few seconds) and saves the result to
    ``cache_dir()/omniglot-28px-<key>.pt``, the key being a hash of the archives' member names,
    sizes and CRCs; later calls load that file, checking its checksum (a damaged file is rebuilt,
    with a warning). Processes building it at once each write a temporary file and move it into
    place atomically. A damaged archive raises :class:`DataError`.
    """
    paths = {name: _archive_path(name, root, download) for name in ARCHIVES}
    key = _cache_key(paths)
    cache_file = cache_dir() / f"omniglot-{IMAGE_SIZE}px-{key}.pt"
    if cache_file.is_file():
        data = _load_cache(cache_file)
        if data is not None:
            return data
    data = _decode_archives(paths, progress=progress)
    data["sha256"] = _content_hash(data["images"], data["characters"], data["archives"])
    tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data, tmp)
        os.replace(tmp, cache_file)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write the Omniglot cache {cache_file} ({exc}); "
                      f"it will be decoded again next time")
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
        line = re.compile(
            r"^\s*(?:.*/)?(run\d+)/test/item(\d+)\.png\s+(?:.*/)?(run\d+)/training/class(\d+)\.png\s*$"
        )
        with _open_zip(path) as zf:
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
                        train = names[f"{run}/training/class{i + 1:02d}.png"]
                        test = names[f"{run}/test/item{i + 1:02d}.png"]
                        support[r, i] = torch.from_numpy(_decode_member(zf, train, path))
                        query[r, i] = torch.from_numpy(_decode_member(zf, test, path))
                    labels = names[f"{run}/class_labels.txt"]
                except KeyError as exc:
                    raise _damaged(path, f"does not look like Lake's all_runs.zip: it lacks {exc}") from None
                text = _read(zf, labels, path).decode(errors="replace")
                seen = set()
                for raw in text.splitlines():
                    if not raw.strip():
                        continue
                    m = line.match(raw)
                    if not m or m.group(1) != run or m.group(3) != run:
                        raise _damaged(path, f"has an unexpected line in {run}/class_labels.txt: {raw!r}")
                    item, cls = int(m.group(2)) - 1, int(m.group(4)) - 1
                    query_y[r, item] = cls
                    seen.add(item)
                if seen != set(range(RUN_WAYS)):
                    raise _damaged(path, f"has a {run}/class_labels.txt that does not label all "
                                         f"{RUN_WAYS} test items")
        self.support_x = support.unsqueeze(2).float().div_(255.0)
        self.query_x = query.unsqueeze(2).float().div_(255.0)
        self.support_y = torch.arange(RUN_WAYS).expand(NUM_RUNS, -1).clone()
        self.query_y = query_y

    def __len__(self) -> int:
        """Number of runs (tasks): 20."""
        return NUM_RUNS

    def batch(self) -> TaskBatch:
        """All runs as one TaskBatch of 20 tasks, each 20-way one-shot with 20 queries."""
        return TaskBatch(self.support_x.clone(), self.support_y.clone(), self.query_x.clone(),
                         self.query_y.clone())
