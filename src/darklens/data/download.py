"""``darklens download``: fetch a public DeepLense dataset and unpack it safely.

Sources: a dataset NAME from :data:`DATASETS` (Google Drive, fetched with gdown like the
notebook did), any http(s) URL (standard library, HTTP Range resume) or a local ``.zip``.

Where files go: archives are downloaded into ``$DARKLENS_CACHE/downloads`` (default
``~/.cache/darklens/downloads``, beside the packed-array cache), never into ``--out``. The
cache outlives a failed or refused extraction, so running the same command again resumes or reuses
the download instead of fetching a gigabyte twice; delete the folder to reclaim the space. A
download in progress is named ``FILE.part`` (gdown: ``FILE<random>.part``) and is renamed to
``FILE`` (``os.replace``) only once its size matched Content-Length, so a killed download never
leaves a file that looks finished.

Extraction (zip-slip checks, staging, ``--force``) is :mod:`darklens.data.unzip`.
"""

from __future__ import annotations

import glob
import http.client
import inspect
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from tqdm.auto import tqdm

from darklens import __version__
from darklens.data.unzip import OFFLINE_HINT, one_line, unpack
from darklens.errors import DarklensError

__all__ = [
    "DATASETS", "OFFLINE_HINT", "RemoteFile", "cache_dir", "download", "fetch_drive", "fetch_url",
    "unpack",
]

#: extra attempts after an interrupted transfer (each resumes where the last one stopped)
RETRIES = 3
#: seconds before the first retry; doubles each time (tests set it to 0)
RETRY_BACKOFF_S = 1.0
#: seconds without a byte from the server before an attempt counts as interrupted
TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One archive of a known dataset.

    Attributes:
        drive_id: Google Drive file id.
        filename: name of the downloaded archive in the cache.
        subdir: folder inside ``--out`` that receives its contents ("" for ``--out`` itself).
    """

    drive_id: str
    filename: str
    subdir: str = ""


#: Public DeepLense datasets (ids from ML4SCI/DeepLense and DeepLenseSim; several are dead today).
DATASETS: dict[str, tuple[RemoteFile, ...]] = {
    "common-test": (RemoteFile("1B_UZtU4W65ZViTJsLeFfvK-xXCYUhw2A", "common-test.zip"),),
    "model-i": (
        RemoteFile("1QMVLpqag6S9JWqzmGM_pK4C0F1eBVIfV", "model-i-train.zip", "train"),
        RemoteFile("1rUAKLLS3p9jDaL9R9m84JVKvMcUuVsO1", "model-i-test.zip", "test"),
    ),
    "model-ii": (
        RemoteFile("1HYPkdtVUj9xsoGzFDxT4rhl37KmqDCg4", "model-ii-train.zip", "train"),
        RemoteFile("1PFdpqk7XOAKtg0Cnav4HTzyJiudx9dZv", "model-ii-test.zip", "test"),
    ),
    "model-iii": (
        RemoteFile("1ynKMJoEeKKJqLfuKRR1Y7rQjeBMM0w94", "model-iii-train.zip", "train"),
        RemoteFile("18BuCv40t6qmiNnhjJF1y9rqSBhBOfDon", "model-iii-test.zip", "test"),
    ),
}


class _Interrupted(Exception):
    """A transfer stopped early in a way that another (resumed) attempt may fix."""


def cache_dir() -> Path:
    """The download cache: ``$DARKLENS_CACHE/downloads`` (default ``~/.cache/darklens/...``)."""
    base = os.environ.get("DARKLENS_CACHE") or Path.home() / ".cache" / "darklens"
    return Path(base).expanduser() / "downloads"


def download(source: str, *, out: str | os.PathLike, force: bool = False) -> int:
    """Fetch ``source``, unpack it safely into ``out``, then print the ``inspect`` report.

    Args:
        source: a dataset name from :data:`DATASETS`, an http(s) URL or a local ``.zip`` path.
        out: folder to unpack into; created if missing.
        force: allow a non-empty ``out``; the archive's top-level entries replace same-named ones.

    Returns:
        0 on success.

    Raises:
        DarklensError: one line for a dead link, an interrupted download, an unsafe or corrupt
            archive, or a non-empty ``out`` without ``force``.
    """
    out_dir = Path(out).expanduser().resolve()
    _check_out_dir(out_dir, force)  # before downloading: never fetch a gigabyte to then refuse
    try:
        archives = _fetch(source)
        n_files = unpack(archives, out_dir)
    except OSError as e:  # permissions, disk full: still one line, naming the file
        where = e.filename or out_dir
        raise DarklensError(f"{where}: {e.strerror or one_line(e)}") from None
    print(f"darklens: unpacked {n_files} files into {out_dir}", file=sys.stderr)

    from darklens.data.inspect import format_report, inspect_dataset

    try:
        report = inspect_dataset(out_dir, allow_pickle=False)
    except DarklensError as e:
        raise DarklensError(f"{out_dir}: unpacked, but the dataset check failed: {e}") from None
    print(format_report(report))
    return 0


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DarklensError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise DarklensError(
            f"{out_dir}: folder is not empty; pass --force to replace the entries the archive "
            "brings (other files are kept)"
        )


def _fetch(source: str) -> list[tuple[Path, str, bool]]:
    """Resolve ``source`` to local archives: (path, subdir inside out, path is in our cache)."""
    name = source.strip().lower()
    if name in DATASETS:
        return [(fetch_drive(f.drive_id, cache_dir() / f.filename, what=name),
                 f.subdir, True) for f in DATASETS[name]]
    if re.match(r"https?://", source, flags=re.IGNORECASE):
        dest = cache_dir() / _cache_name(source)
        host = (urllib.parse.urlsplit(source).hostname or "").lower()
        if host in ("drive.google.com", "docs.google.com", "drive.usercontent.google.com"):
            return [(fetch_drive(None, dest, url=source), "", True)]
        return [(fetch_url(source, dest), "", True)]
    path = Path(source).expanduser()
    if path.is_file():
        return [(path, "", False)]
    if path.is_dir():
        raise DarklensError(f"{source}: is a folder, not an archive; darklens reads folders as "
                            f"they are (try: darklens inspect {source})")
    if path.suffix.lower() == ".zip" or os.sep in source or "/" in source:
        raise DarklensError(f"{source}: no such file")
    raise DarklensError(f"{source}: unknown dataset; expected one of {', '.join(DATASETS)}, "
                        "an http(s) URL or a .zip file")


def _cache_name(url: str) -> str:
    """A cache file name for a URL: a short hash (distinct URLs never collide) + its basename."""
    base = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base)[-80:] or "download"
    return f"{sha256(url.encode()).hexdigest()[:12]}-{base}"


def _http_problem(code: int | None) -> str:
    if code in (404, 410):
        return f"the link is dead (HTTP {code})"
    if code in (401, 403):
        return f"access denied (HTTP {code}): the link is private or over its download quota"
    if code == 429:
        return "the link is over its download quota (HTTP 429)"
    return f"the server answered HTTP {code}"


# --------------------------------------------------------------------------- plain http(s)


def fetch_url(url: str, dest: str | os.PathLike, *, retries: int | None = None,
              progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` with HTTP Range resume; ``dest`` appears only when complete.

    Bytes go to ``dest + ".part"``; an existing part is resumed with ``Range: bytes=N-`` (and
    restarted when the server ignores Range and answers 200). Up to ``retries`` interrupted
    attempts are resumed automatically; after that the part stays for the next run to resume.

    Args:
        url: http(s) URL.
        dest: final file path; returned as is when it already exists (the cache).
        retries: extra attempts after an interruption (default :data:`RETRIES`).
        progress: show a tqdm bar on stderr.

    Returns:
        ``dest`` as a Path.
    """
    dest = Path(dest)
    if dest.is_file():
        print(f"darklens: using cached {dest}", file=sys.stderr)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    retries = RETRIES if retries is None else retries
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, progress)
            break
        except _Interrupted as e:
            if attempt == retries:
                kept = part.stat().st_size if part.exists() else 0
                if kept:
                    raise DarklensError(
                        f"{url}: download interrupted ({e}) after {retries + 1} tries; {kept} "
                        f"bytes kept in {part}; run the same command again to resume") from None
                raise DarklensError(f"{url}: download failed ({e}) after {retries + 1} tries; "
                                    f"{OFFLINE_HINT}") from None
            time.sleep(RETRY_BACKOFF_S * 2**attempt)
    os.replace(part, dest)
    return dest


def _fetch_once(url: str, part: Path, progress: bool) -> None:
    """One attempt: append the missing bytes to ``part``; raise _Interrupted when incomplete."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"darklens/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:
            # Asked beyond the end: the part is complete if the server says so, else start over.
            if _content_range(e.headers.get("Content-Range"))[1] == have:
                return
            part.unlink()
            raise _Interrupted("server refused to resume (HTTP 416); restarting") from None
        if e.code >= 500:
            raise _Interrupted(f"HTTP {e.code}") from None
        _unlink_if_empty(part)
        raise DarklensError(f"{url}: {_http_problem(e.code)}; {OFFLINE_HINT}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        _unlink_if_empty(part)
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise _Interrupted(f"cannot reach the server: {one_line(reason)}") from None

    with resp:
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if have and resp.status == 206:
            start, _ = _content_range(resp.headers.get("Content-Range"))
            if start != have:
                part.unlink()
                raise _Interrupted(f"server resumed at byte {start}, not {have}; restarting")
            mode = "ab"
        else:  # 200: a fresh start, or a server that ignores Range (restart, never append)
            have, mode = 0, "wb"
            if "text/html" in resp.headers.get("Content-Type", ""):
                _unlink_if_empty(part)
                raise DarklensError(f"{url}: the server sent a web page instead of a file (dead "
                                    f"link or over quota); {OFFLINE_HINT}")
        total = have + length if length is not None else None
        if total is not None:
            free = shutil.disk_usage(part.parent).free
            if total - have > free:
                raise DarklensError(f"{part.parent}: not enough disk space ({total - have} bytes "
                                    f"needed, {free} free)")
        with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=part.name[:-5],
                                         disable=not progress or None) as bar:
            try:
                while chunk := _read(resp):
                    f.write(chunk)  # a write error (disk full) is no interruption: it propagates
                    bar.update(len(chunk))
            finally:
                f.flush()
                os.fsync(f.fileno())
    size = part.stat().st_size
    if total is not None and size > total:
        part.unlink()
        raise _Interrupted(f"received {size} bytes, more than the announced {total}; restarting")
    if total is not None and size < total:
        # http.client returns short reads at EOF silently: Content-Length is the only witness.
        raise _Interrupted(f"connection closed after {size} of {total} bytes")


def _read(resp) -> bytes:
    """The next chunk of the body; a network failure becomes _Interrupted (resumable)."""
    try:
        return resp.read(CHUNK_BYTES)
    except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
        raise _Interrupted(one_line(e)) from None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from ``bytes A-B/T`` or ``bytes */T``; None where absent."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    start, total = m.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


def _unlink_if_empty(path: Path) -> None:
    if path.exists() and path.stat().st_size == 0:
        path.unlink()


# --------------------------------------------------------------------------- Google Drive


def fetch_drive(drive_id: str | None, dest: Path, *, url: str | None = None,
                what: str = "") -> Path:
    """Download a Google Drive file with gdown (resumable, moved into place when complete).

    Args:
        drive_id: Drive file id (or None with ``url``).
        dest: final file path; returned as is when it already exists (the cache).
        url: a Drive URL instead of an id.
        what: the dataset name, for error messages.

    Returns:
        ``dest``.
    """
    if dest.is_file():
        print(f"darklens: using cached {dest}", file=sys.stderr)
        return dest
    import gdown
    import requests

    dest.parent.mkdir(parents=True, exist_ok=True)
    what = f"{what}: Google Drive file {drive_id}" if drive_id else str(url)
    kwargs = {"output": str(dest), "quiet": False, "resume": True}
    if drive_id:
        kwargs["id"] = drive_id
    else:
        kwargs["url"] = url
    accepted = inspect.signature(gdown.download).parameters
    kwargs.update({k: v for k, v in (("retries", RETRIES), ("timeout", TIMEOUT_S))
                   if k in accepted})  # newer gdown only
    retrieval_error = getattr(gdown.exceptions, "FileURLRetrievalError", ())
    download_error = getattr(gdown.exceptions, "DownloadError", retrieval_error)
    try:
        result = gdown.download(**kwargs)
    except retrieval_error as e:
        raise DarklensError(f"{what}: the link is dead, private or over its download quota "
                            f"(gdown: {one_line(e, 200)}); {OFFLINE_HINT}") from None
    except requests.HTTPError as e:
        code = e.response.status_code if e.response is not None else None
        raise DarklensError(f"{what}: {_http_problem(code)}; {OFFLINE_HINT}") from None
    except (download_error, requests.RequestException, OSError) as e:
        # gdown keeps partial bytes in DEST<8 random chars>.part and resumes from it next time
        parts = dest.parent.glob(f"{glob.escape(dest.name)}????????.part")
        if any(p.stat().st_size for p in parts):
            raise DarklensError(f"{what}: download interrupted ({one_line(e, 200)}); run the "
                                "same command again to resume") from None
        raise DarklensError(f"{what}: download failed ({one_line(e, 200)}); "
                            f"{OFFLINE_HINT}") from None
    if result is None or not dest.is_file():  # older gdown prints the problem and returns None
        raise DarklensError(f"{what}: download failed (see gdown's message above); "
                            f"{OFFLINE_HINT}")
    return dest
