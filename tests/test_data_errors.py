"""Bad networks and bad files end in one clear error (or a warning and a repair), never a hang.

Omniglot downloads run against local HTTP servers on 127.0.0.1 (a stalled one, a truncating one,
a flaky one, a good one). Archive and cache errors use small fake archives: they test the error
handling, not the data. Last, the shape and dtype checks of ``TaskBatch``.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mlcourse.tasks import omniglot as om
from mlcourse.tasks.base import TaskBatch

from _helpers import fake_archive

NAMES = ("images_background", "images_evaluation", "all_runs")


# ------------------------------------------------------------------ helpers


@pytest.fixture
def fake_root(tmp_path, monkeypatch) -> Path:
    """A data root with two tiny image archives (3 + 2 characters) and an empty private cache."""
    root = tmp_path / "root"
    (root / "omniglot").mkdir(parents=True)
    monkeypatch.setenv("MLCOURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(om, "ARCHIVES", {"images_background": 3, "images_evaluation": 2})
    fake_archive(root / "omniglot" / "images_background.zip", "images_background",
                  {"A/character01": 20, "A/character02": 20, "B/character01": 20})
    fake_archive(root / "omniglot" / "images_evaluation.zip", "images_evaluation",
                  {"C/character01": 20, "D/character01": 20}, seed=1)
    return root


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _http_server(handler):
    """A threaded HTTP server on 127.0.0.1; yields its base URL (ending in '/')."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _stalled_server(lifetime: float = 15.0):
    """Accepts connections and never answers; stops by itself after ``lifetime`` seconds."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    stop, held = threading.Event(), []

    def serve():
        deadline = time.monotonic() + lifetime
        while not stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])
        for conn in held:
            conn.close()
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        stop.set()
        thread.join(timeout=5)


def _serve_dir(tmp_path: Path) -> Path:
    """A folder laid out like the official repository's python/ folder, with small real zips."""
    srv = tmp_path / "srv"
    (srv / "one-shot-classification").mkdir(parents=True)
    fake_archive(srv / "images_background.zip", "images_background", {"A/character01": 2})
    fake_archive(srv / "images_evaluation.zip", "images_evaluation", {"B/character01": 2}, seed=1)
    fake_archive(srv / "one-shot-classification" / "all_runs.zip", "run01", {"training/x": 2}, seed=2)
    return srv


# ------------------------------------------------------------------ downloads


def test_stalled_download_fails_fast_and_names_the_url(tmp_path, monkeypatch):
    root = tmp_path / "root"
    with _stalled_server() as url:
        monkeypatch.setenv("MLCOURSE_OMNIGLOT_URL", url)
        start = time.monotonic()
        with pytest.raises(FileNotFoundError) as err:
            om.download_omniglot(root, timeout=0.5, tries=2, backoff=0.1, progress=False)
        elapsed = time.monotonic() - start
    assert elapsed < 5, f"took {elapsed:.1f} s"
    msg = str(err.value)
    assert f"{url}images_background.zip" in msg and "2 tries" in msg and "\n" not in msg
    # The manual route, not the command that just failed.
    assert "python -m mlcourse download" not in msg
    folder = root / "omniglot"
    assert str(folder) in msg and "images_evaluation.zip" in msg and "all_runs.zip" in msg
    assert "github.com/brendenlake/omniglot" in msg
    # Nothing that looks like data is left behind.
    assert not folder.exists() and not list(tmp_path.rglob("*.part"))


def test_download_from_local_server_lands_complete(tmp_path, monkeypatch):
    srv = _serve_dir(tmp_path)
    with _http_server(functools.partial(_Quiet, directory=str(srv))) as url:
        monkeypatch.setenv("MLCOURSE_OMNIGLOT_URL", url)
        assert om.archive_url("all_runs") == url + "one-shot-classification/all_runs.zip"
        folder = om.download_omniglot(tmp_path / "root", timeout=5, tries=1, progress=False)
    assert folder == tmp_path / "root" / "omniglot"
    assert sorted(p.name for p in folder.iterdir()) == [f"{n}.zip" for n in sorted(NAMES)]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["omniglot"]  # no temporary files
    for name, rel in om.ARCHIVE_FILES.items():
        assert (folder / f"{name}.zip").read_bytes() == (srv / rel).read_bytes()


def test_default_url_is_the_official_repository(monkeypatch):
    monkeypatch.delenv("MLCOURSE_OMNIGLOT_URL", raising=False)
    assert om.archive_url("images_background") == om.BASE_URL + "images_background.zip"
    assert "brendenlake/omniglot" in om.BASE_URL


def test_truncated_transfer_leaves_nothing(tmp_path, monkeypatch):
    """The server promises more bytes than it sends: a failure, and no partial file or folder."""
    body = b"PK" + bytes(5000)

    class Truncating(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(2 * len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    root = tmp_path / "root"
    with _http_server(Truncating) as url:
        monkeypatch.setenv("MLCOURSE_OMNIGLOT_URL", url)
        with pytest.raises(FileNotFoundError, match=r"images_background\.zip.*incomplete"):
            om.download_omniglot(root, timeout=2, tries=2, backoff=0.01, progress=False)
    assert not (root / "omniglot").exists() and not list(tmp_path.rglob("*.part"))
    # An existing data folder is kept, with nothing added to it.
    (root / "omniglot").mkdir(parents=True)
    (root / "omniglot" / "images_background.zip").write_bytes(b"kept")
    with _http_server(Truncating) as url:
        monkeypatch.setenv("MLCOURSE_OMNIGLOT_URL", url)
        with pytest.raises(FileNotFoundError, match=r"images_evaluation\.zip"):
            om.download_omniglot(root, timeout=2, tries=1, progress=False)
    assert sorted(p.name for p in root.rglob("*")) == ["images_background.zip", "omniglot"]


def test_download_retries_after_a_server_error(tmp_path, monkeypatch):
    srv = _serve_dir(tmp_path)
    seen = []

    class Flaky(_Quiet):
        def do_GET(self):
            seen.append(self.path)
            if seen.count(self.path) == 1:  # each file fails once
                self.send_error(503)
            else:
                super().do_GET()

    with _http_server(functools.partial(Flaky, directory=str(srv))) as url:
        monkeypatch.setenv("MLCOURSE_OMNIGLOT_URL", url)
        folder = om.download_omniglot(tmp_path / "root", timeout=5, tries=2, backoff=0.01, progress=False)
    assert len(seen) == 6 and all((folder / f"{n}.zip").is_file() for n in NAMES)


def test_download_false_advice(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        om.load_omniglot(tmp_path, download=False)
    msg = str(err.value)
    assert "python -m mlcourse download omniglot" in msg and "github.com/brendenlake/omniglot" in msg
    assert str(tmp_path / "omniglot") in msg and not (tmp_path / "omniglot").exists()


# ------------------------------------------------------------------ damaged archives


def _one_line_data_error(err, path: Path):
    msg = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in msg
    assert str(path) in msg and "delete it" in msg.lower() and "github.com/brendenlake/omniglot" in msg
    return msg


def test_truncated_archive_is_a_clear_error(fake_root):
    path = fake_root / "omniglot" / "images_evaluation.zip"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(om.DataError) as err:
        om.load_omniglot(fake_root, download=False, progress=False)
    assert "not a valid zip" in _one_line_data_error(err, path)


def test_garbage_archive_is_a_clear_error(fake_root):
    path = fake_root / "omniglot" / "images_background.zip"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(om.DataError) as err:
        om.Omniglot(2, 1, 1, root=fake_root, download=False, num_val_characters=0)
    assert "not a valid zip" in _one_line_data_error(err, path)


def test_corrupt_member_is_a_clear_error(fake_root):
    """A flipped byte inside one PNG: the zip directory is intact, the member's CRC is not."""
    path = fake_root / "omniglot" / "images_background.zip"
    with zipfile.ZipFile(path) as zf:
        info = zf.infolist()[5]
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(om.DataError) as err:
        om.load_omniglot(fake_root, download=False, progress=False)
    assert info.filename in _one_line_data_error(err, path)


def test_damaged_runs_archive_is_a_clear_error(tmp_path):
    path = tmp_path / "omniglot" / "all_runs.zip"
    path.parent.mkdir()
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(om.DataError) as err:
        om.OmniglotRuns(tmp_path, download=False)
    _one_line_data_error(err, path)


def test_wrong_archive_is_a_data_error(fake_root, monkeypatch):
    monkeypatch.setattr(om, "ARCHIVES", {"images_background": 4, "images_evaluation": 2})
    with pytest.raises(om.DataError, match=r"3 characters \(expected 4\)"):
        om.load_omniglot(fake_root, download=False, progress=False)


# ------------------------------------------------------------------ the decoded cache


def _cache_file(tmp_path: Path) -> Path:
    (path,) = (tmp_path / "cache").glob("omniglot-28px-*.pt")
    return path


def test_cache_byte_flip_is_detected_and_repaired(fake_root, tmp_path):
    good = om.load_omniglot(fake_root, download=False, progress=False)
    path = _cache_file(tmp_path)
    raw = bytearray(path.read_bytes())
    at = raw.find(good["images"][2, 7].numpy().tobytes())  # some stored image, in the tensor data
    assert at > 0
    raw[at + 300] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning) as record:
        again = om.load_omniglot(fake_root, download=False, progress=False)
    mine = [w for w in record if str(path) in str(w.message)]
    assert len(mine) == 1 and "checksum" in str(mine[0].message)
    assert torch.equal(again["images"], good["images"]) and again["characters"] == good["characters"]
    # Rebuilt on disk: the next load is silent and no decoding happens.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        third = om.load_omniglot(fake_root, download=False, progress=False)
    assert torch.equal(third["images"], good["images"])


def test_truncated_cache_is_rebuilt(fake_root, tmp_path):
    good = om.load_omniglot(fake_root, download=False, progress=False)
    path = _cache_file(tmp_path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.warns(UserWarning, match="unreadable"):
        again = om.load_omniglot(fake_root, download=False, progress=False)
    assert torch.equal(again["images"], good["images"])
    assert path.stat().st_size > 5000


def test_cache_stores_a_checksum_of_its_content(fake_root, tmp_path):
    data = om.load_omniglot(fake_root, download=False, progress=False)
    saved = torch.load(_cache_file(tmp_path), weights_only=True)
    assert saved["sha256"] == om._content_hash(data["images"], data["characters"], data["archives"])
    assert saved["sha256"] != hashlib.sha256(b"").hexdigest()


def test_two_processes_build_the_cache_at_once(fake_root, tmp_path):
    script = textwrap.dedent(f"""
        import warnings
        warnings.simplefilter("error")
        import mlcourse.tasks.omniglot as om
        om.ARCHIVES = {{"images_background": 3, "images_evaluation": 2}}
        data = om.load_omniglot({str(fake_root)!r}, download=False, progress=False)
        assert data["images"].shape == (5, 20, 28, 28)
    """)
    env = {**os.environ, "MLCOURSE_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [_cache_file(tmp_path).name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        om.load_omniglot(fake_root, download=False, progress=False)


# ------------------------------------------------------------------ TaskBatch checks


def _classification(tasks=2, ways=3, shots=1, queries=2, x_shape=(1, 4, 4)):
    sx = torch.rand(tasks, ways * shots, *x_shape)
    qx = torch.rand(tasks, ways * queries, *x_shape)
    sy = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    qy = torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1)
    return [sx, sy, qx, qy]


def test_taskbatch_accepts_valid_batches():
    TaskBatch(*_classification())
    TaskBatch(*_classification(x_shape=()))  # (tasks, examples) scalar inputs
    TaskBatch(torch.rand(3, 5, 1), torch.rand(3, 5, 1), torch.rand(3, 7, 1), torch.rand(3, 7, 1))
    sx, sy, qx, qy = _classification()
    TaskBatch(sx, sy.int(), qx, qy.int())


def _replace(i, value):
    parts = _classification()
    parts[i] = value(parts[i]) if callable(value) else value
    return parts


@pytest.mark.parametrize("parts,error,match", [
    # One task passed without its task dimension: every label tensor is 1-D.
    ([torch.rand(3, 1, 4, 4), torch.arange(3), torch.rand(6, 1, 4, 4), torch.arange(3).repeat(2)],
     ValueError, r"support_y has shape \(3,\); expected \(tasks, examples\) integer labels or "
                 r"\(tasks, examples, outputs\) floats"),
    (_replace(0, torch.rand(6)), ValueError,
     r"support_x has shape \(6,\); expected \(tasks, examples, \.\.\.\)"),
    (_replace(2, lambda t: t.numpy()), TypeError, r"query_x must be a torch\.Tensor, got numpy\.ndarray"),
    (_replace(3, lambda t: t[:1]), ValueError,
     r"query_y has shape \(1, 6\); expected \(2, 6\): 2 tasks like support_x"),
    (_replace(1, lambda t: t[:, :2]), ValueError,
     r"support_y has shape \(2, 2\); expected \(2, 3\): one label per example of "
     r"support_x \(2, 3, 1, 4, 4\)"),
    (_replace(2, lambda t: t[:, :, 0]), ValueError,
     r"query_x has shape \(2, 6, 4, 4\); expected \(2, 6, 1, 4, 4\): the per-example shape of support_x"),
    (_replace(1, lambda t: t.float()), TypeError,
     r"support_y is a 2-D torch\.float32 tensor of shape \(2, 3\); expected integer labels"),
    (_replace(3, lambda t: t.unsqueeze(-1)), TypeError,
     r"query_y .* torch\.int64 .* shape \(2, 6, 1\); expected floating-point targets"),
    (_replace(3, lambda t: t.int()), TypeError,
     r"query_y has dtype torch\.int32; expected torch\.int64 like support_y"),
])
def test_taskbatch_rejects_bad_shapes_and_dtypes(parts, error, match):
    with pytest.raises(error, match=match):
        TaskBatch(*parts)


def test_taskbatch_rejects_mismatched_outputs():
    sx, qx = torch.rand(2, 3, 1), torch.rand(2, 4, 1)
    with pytest.raises(ValueError, match=r"query_y has shape \(2, 4, 2\); expected \(2, 4, 1\)"):
        TaskBatch(sx, torch.rand(2, 3, 1), qx, torch.rand(2, 4, 2))


def test_taskbatch_methods_still_work():
    batch = TaskBatch(*_classification())
    one = batch.task(1)
    assert one.num_tasks == 1 and torch.equal(one.query_y, batch.query_y[1:])
    assert batch.to("cpu").support_x.shape == (2, 3, 1, 4, 4)
    sx, sy, qx, qy = batch
    assert sy.dtype == torch.int64
