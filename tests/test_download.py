"""``darklens download`` against a local HTTP server (loopback only, no internet)."""

from __future__ import annotations

import io
import stat
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from darklens.cli import main
from darklens.data import download as dl
from darklens.errors import DarklensError

# --------------------------------------------------------------------------- fixtures


def npy_bytes(seed: int) -> bytes:
    """A distinct, non-constant (1, 8, 8) float32 image in [0, 1] (Common Test file layout)."""
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(seed).random((1, 8, 8), dtype=np.float32))
    return buf.getvalue()


def make_zip(entries: dict[str, bytes], special: list[zipfile.ZipInfo] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for info in special:
            zf.writestr(info, b"payload")
    return buf.getvalue()


def common_test_entries(prefix: str = "dataset/") -> dict[str, bytes]:
    """2 train + 1 val image per class under a wrapper folder, like the Common Test zip."""
    entries, seed = {}, 0
    for split, n in (("train", 2), ("val", 1)):
        for cls in ("no", "sphere", "vort"):
            for i in range(1, n + 1):
                entries[f"{prefix}{split}/{cls}/{i}.npy"] = npy_bytes(seed)
                seed += 1
    return entries


class FileServer:
    """Serves ``files[path]`` with Range support; ``modes[path]`` changes the behaviour."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.ranges: list[str | None] = []  # the Range header of every request, in order
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                server.ranges.append(self.headers.get("Range"))
                data = server.files.get(self.path)
                mode = server.modes.get(self.path, "range")
                if data is None:
                    self.send_error(404)
                    return
                if mode == "html":
                    body = b"<!DOCTYPE html><html>quota exceeded</html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and mode in ("range", "drop"):
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:  # mode "norange" ignores Range like many simple servers
                    self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if mode == "drop":  # announce everything, send up to the middle, hang up
                    self.wfile.write(data[start:max(start, len(data) // 2)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Downloads and packed arrays go to tmp; retries do not sleep."""
    monkeypatch.setenv("DARKLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dl, "RETRY_BACKOFF_S", 0.0)
    return tmp_path / "cache"


def leftovers(parent: Path) -> list[str]:
    """Hidden staging/trash folders that a failed extraction must not leave behind."""
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def assert_one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# --------------------------------------------------------------------------- good paths


def test_url_good_zip_unpacks_and_reports_counts(server, tmp_path, capsys):
    entries = common_test_entries()
    server.files["/dataset.zip"] = make_zip(entries)
    out = tmp_path / "data"
    assert main(["download", f"{server.url}/dataset.zip", "--out", str(out)]) == 0
    # the wrapper folder "dataset/" is dropped: out/train, out/val as `darklens inspect` expects
    for name, data in entries.items():
        assert (out / name.removeprefix("dataset/")).read_bytes() == data
    assert sorted(p.name for p in out.iterdir()) == ["train", "val"]
    report = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in report.splitlines() if line.split()}
    assert rows["train"] == ["2", "2", "2", "6"] and rows["val"] == ["1", "1", "1", "3"]
    assert "problems: none" in report
    cached = list((tmp_path / "cache" / "downloads").iterdir())
    assert [p.suffix for p in cached] == [".zip"]  # complete file, no .part left


def test_local_zip_and_cli_error_is_one_line(tmp_path, capsys):
    archive = tmp_path / "mine.zip"
    archive.write_bytes(make_zip(common_test_entries(prefix="")))
    out = tmp_path / "out"
    assert main(["download", str(archive), "--out", str(out)]) == 0
    assert (out / "val" / "vort" / "1.npy").is_file()
    capsys.readouterr()
    # non-empty --out without --force: exit 2, one stderr line, nothing touched
    assert main(["download", str(archive), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err and err.startswith("darklens: error:")


def test_force_replaces_archive_entries_keeps_others(tmp_path, server):
    server.files["/d.zip"] = make_zip(common_test_entries())
    out = tmp_path / "out"
    (out / "train" / "no").mkdir(parents=True)
    (out / "train" / "no" / "stale.npy").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DarklensError) as e:
        dl.download(f"{server.url}/d.zip", out=out, force=False)
    assert "not empty" in assert_one_line(e)
    assert server.ranges == []  # refused before any network traffic
    assert dl.download(f"{server.url}/d.zip", out=out, force=True) == 0
    assert not (out / "train" / "no" / "stale.npy").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "train" / "no" / "1.npy").is_file()
    assert leftovers(tmp_path) == []


def test_named_dataset_uses_gdown_into_split_folders(tmp_path, monkeypatch, capsys):
    import gdown

    calls = []

    def fake_gdown(**kw):
        calls.append(kw)
        split = "train" if kw["id"] == dl.DATASETS["model-i"][0].drive_id else "test"
        n = 2 if split == "train" else 1
        entries = {f"Model_I/{c}/{i}.npy": npy_bytes(hash((split, c, i)) % 1000)
                   for c in ("no_sub", "cdm", "axion") for i in range(n)}
        Path(kw["output"]).write_bytes(make_zip(entries))
        return kw["output"]

    monkeypatch.setattr(gdown, "download", fake_gdown)
    out = tmp_path / "m1"
    assert dl.download("Model-I", out=out) == 0
    assert [c["id"] for c in calls] == ["1QMVLpqag6S9JWqzmGM_pK4C0F1eBVIfV",
                                        "1rUAKLLS3p9jDaL9R9m84JVKvMcUuVsO1"]
    assert all(c["resume"] for c in calls)
    assert sorted(p.name for p in (out / "train").iterdir()) == ["axion", "cdm", "no_sub"]
    assert len(list((out / "test" / "cdm").iterdir())) == 1
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()
            if line.split()}
    assert rows["train"] == ["2", "2", "2", "6"] and rows["test"] == ["1", "1", "1", "3"]
    # a second run finds both archives in the cache and never calls gdown
    assert dl.download("model-i", out=tmp_path / "again") == 0
    assert len(calls) == 2


def test_named_dataset_dead_link_is_one_line_with_offline_hint(tmp_path, monkeypatch):
    import gdown

    def quota(**kw):
        raise gdown.exceptions.FileURLRetrievalError(
            "Too many users have viewed or downloaded this file recently.\nPlease try later.")

    monkeypatch.setattr(gdown, "download", quota)
    with pytest.raises(DarklensError) as e:
        dl.download("common-test", out=tmp_path / "ct")
    msg = assert_one_line(e)
    assert "over its download quota" in msg and "darklens simulate" in msg
    assert "--preset model_a" in msg
    assert not (tmp_path / "ct").exists()


def test_unknown_source_lists_names(tmp_path):
    with pytest.raises(DarklensError) as e:
        dl.download("model-iv", out=tmp_path / "x")
    assert "common-test" in assert_one_line(e)
    with pytest.raises(DarklensError, match="no such file"):
        dl.download(str(tmp_path / "absent.zip"), out=tmp_path / "x")


# --------------------------------------------------------------------------- zip-slip


def _symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("dataset/train/no/link.npy")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("bad, why", [
    (zipfile.ZipInfo("../escaped.npy"), "(..)"),
    (zipfile.ZipInfo("dataset/../../escaped.npy"), "(..)"),
    (zipfile.ZipInfo("dataset\\..\\..\\escaped.npy"), "(..)"),
    (zipfile.ZipInfo("/tmp/darklens-abs-escape.npy"), "absolute path"),
    (zipfile.ZipInfo("C:/escaped.npy"), "absolute path"),
    (_symlink_entry(), "symbolic link"),
])
def test_unsafe_entries_refused_before_anything_is_written(tmp_path, server, bad, why):
    payload = make_zip(common_test_entries(), special=[bad])
    assert bad.filename in zipfile.ZipFile(io.BytesIO(payload)).namelist()  # kept verbatim
    server.files["/evil.zip"] = payload
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    with pytest.raises(DarklensError) as e:
        dl.download(f"{server.url}/evil.zip", out=out)
    msg = assert_one_line(e)
    assert why in msg and "zip-slip" in msg and repr(bad.filename) in msg
    assert not out.exists() and list(work.iterdir()) == []
    assert not (tmp_path / "escaped.npy").exists()
    assert not Path("/tmp/darklens-abs-escape.npy").exists()


def test_corrupt_member_leaves_nothing_half_extracted(tmp_path):
    entries = common_test_entries()
    payload = bytearray(make_zip({k: v for k, v in entries.items()}))
    with zipfile.ZipFile(io.BytesIO(bytes(payload))) as zf:
        last = zf.infolist()[-1]
    # flip a byte inside the last member's compressed data: CRC fails after the others unpacked
    data_start = last.header_offset + 30 + len(last.filename.encode())
    payload[data_start + last.compress_size // 2] ^= 0xFF
    archive = tmp_path / "src" / "bad.zip"
    archive.parent.mkdir()
    archive.write_bytes(bytes(payload))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(DarklensError) as e:
        dl.download(str(archive), out=work / "out")
    assert "not a readable zip archive" in assert_one_line(e)
    assert list(work.iterdir()) == []
    assert archive.is_file()  # the user's own file is never deleted


# --------------------------------------------------------------------------- network failures


def test_404_is_one_line_and_leaves_nothing(tmp_path, server, isolated_cache):
    with pytest.raises(DarklensError) as e:
        dl.download(f"{server.url}/gone.zip", out=tmp_path / "out")
    msg = assert_one_line(e)
    assert "dead (HTTP 404)" in msg
    assert "darklens simulate" in msg and "--preset model_a" in msg
    assert not (tmp_path / "out").exists()
    assert list((isolated_cache / "downloads").iterdir()) == []


def test_html_quota_page_is_refused(tmp_path, server, isolated_cache):
    server.files["/q.zip"] = b"whatever"
    server.modes["/q.zip"] = "html"
    with pytest.raises(DarklensError) as e:
        dl.download(f"{server.url}/q.zip", out=tmp_path / "out")
    assert "web page" in assert_one_line(e)
    assert list((isolated_cache / "downloads").iterdir()) == []


def test_dropped_connection_keeps_part_then_resumes(tmp_path, server, isolated_cache):
    payload = make_zip(common_test_entries())
    server.files["/d.zip"] = payload
    server.modes["/d.zip"] = "drop"
    url = f"{server.url}/d.zip"
    out = tmp_path / "out"
    with pytest.raises(DarklensError) as e:
        dl.download(url, out=out)
    msg = assert_one_line(e)
    assert "interrupted" in msg and "resume" in msg
    final = isolated_cache / "downloads" / dl._cache_name(url)
    part = final.with_name(final.name + ".part")
    assert not final.exists() and not out.exists()
    assert part.read_bytes() == payload[: len(payload) // 2]
    # first try from scratch, then RETRIES resumed tries that each got nothing new
    assert server.ranges == [None] + [f"bytes={len(payload) // 2}-"] * dl.RETRIES

    server.modes["/d.zip"] = "range"  # the server recovers: the next run resumes, not restarts
    server.ranges.clear()
    assert dl.download(url, out=out) == 0
    assert server.ranges == [f"bytes={len(payload) // 2}-"]
    assert final.read_bytes() == payload and not part.exists()
    assert (out / "val" / "sphere" / "1.npy").is_file()


def test_part_left_by_a_killed_run_is_resumed_with_range(tmp_path, server, isolated_cache):
    payload = make_zip(common_test_entries())
    server.files["/d.zip"] = payload
    url = f"{server.url}/d.zip"
    part = isolated_cache / "downloads" / (dl._cache_name(url) + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(payload[:1000])  # an earlier run was killed after 1000 bytes
    assert dl.fetch_url(url, part.with_suffix("")) == part.with_suffix("")
    assert server.ranges == ["bytes=1000-"]
    assert part.with_suffix("").read_bytes() == payload


def test_server_ignoring_range_restarts_instead_of_appending(tmp_path, server, isolated_cache):
    payload = make_zip(common_test_entries())
    server.files["/d.zip"] = payload
    server.modes["/d.zip"] = "norange"
    url = f"{server.url}/d.zip"
    dest = isolated_cache / "downloads" / dl._cache_name(url)
    dest.parent.mkdir(parents=True)
    Path(str(dest) + ".part").write_bytes(b"X" * 500)  # would corrupt the file if appended to
    assert dl.fetch_url(url, dest) == dest
    assert server.ranges == ["bytes=500-"]
    assert dest.read_bytes() == payload


def test_unreachable_server_is_one_line(tmp_path, server):
    url = f"{server.url}/d.zip"
    server.close()  # nothing listens on that port any more
    with pytest.raises(DarklensError) as e:
        dl.fetch_url(url, tmp_path / "d.zip", retries=1)
    msg = assert_one_line(e)
    assert "cannot reach the server" in msg and "2 tries" in msg
    assert list(tmp_path.iterdir()) == []


def test_named_dataset_network_failures(tmp_path, monkeypatch, isolated_cache):
    import gdown
    import requests

    def unreachable(**kw):
        raise requests.ConnectionError("Failed to resolve 'drive.google.com'")

    monkeypatch.setattr(gdown, "download", unreachable)
    with pytest.raises(DarklensError) as e:
        dl.download("model-ii", out=tmp_path / "m2")
    msg = assert_one_line(e)
    assert msg.startswith("model-ii: Google Drive file 1HYPkdtVUj9xsoGzFDxT4rhl37KmqDCg4")
    assert "download failed" in msg and "darklens simulate" in msg

    def cut_midway(**kw):  # gdown leaves its partial file beside the output, then raises
        Path(kw["output"] + "abcd1234.part").write_bytes(b"PK\x03\x04partial")
        raise gdown.exceptions.DownloadError("Response ended before the announced size")

    monkeypatch.setattr(gdown, "download", cut_midway)
    with pytest.raises(DarklensError) as e:
        dl.download("common-test", out=tmp_path / "ct")
    msg = assert_one_line(e)
    assert "interrupted" in msg and "run the same command again to resume" in msg
    assert not (isolated_cache / "downloads" / "common-test.zip").exists()
    assert not (tmp_path / "ct").exists() and not (tmp_path / "m2").exists()


def test_unwritable_cache_is_one_line(tmp_path, monkeypatch, server):
    server.files["/d.zip"] = make_zip(common_test_entries())
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("DARKLENS_CACHE", str(blocker))
    with pytest.raises(DarklensError) as e:
        dl.download(f"{server.url}/d.zip", out=tmp_path / "out")
    assert str(blocker) in assert_one_line(e)
    assert not (tmp_path / "out").exists()
