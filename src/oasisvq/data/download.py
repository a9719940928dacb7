"""Fetching the OASIS archives from their official source, and unpacking them safely.

``download_oasis("oasis1", Path("data/oasis"))`` downloads the OASIS-1
cross-sectional disc archives from the NRG server, resuming interrupted
transfers with HTTP range requests, and extracts the processed images the
``prepare`` step needs.

Every file is streamed to ``NAME.part`` and renamed to ``NAME`` only after it is
complete and verified: a known checksum must match, otherwise its size and
sha256 are recorded in ``oasisvq-manifest.json`` in the target folder. A file
named in that manifest is never downloaded again.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from oasisvq.errors import ConfigError, DataError

NRG_BASE_URL = "https://download.nrg.wustl.edu/data/"
OASIS_FILES_URL = "https://www.oasis-brains.org/files/"
MANIFEST_NAME = "oasisvq-manifest.json"
CHUNK_BYTES = 1 << 20
USER_AGENT = "oasisvq-downloader"

#: Checksums published for the archives: ``name -> (algorithm, hex digest)``.
#: disc 1 is the archive the MONAI OASIS tutorial verifies.
KNOWN_CHECKSUMS: dict[str, tuple[str, str]] = {
    "oasis_cross-sectional_disc1.tar.gz": ("md5", "c83e216ef8654a7cc9e2a30a4cdbe0cc"),
}

_FILTER_ERROR = getattr(tarfile, "FilterError", ())  # Python without extraction filters

#: Archive members the ``prepare`` step reads (with ``only_needed``).
NEEDED_PATTERNS = (
    "*/T88_111/*_masked_gfc.hdr",
    "*/T88_111/*_masked_gfc.img",
    "*/FSL_SEG/*_fseg.hdr",
    "*/FSL_SEG/*_fseg.img",
)


@dataclass(frozen=True)
class DatasetSpec:
    """The files of one OASIS release."""

    archive: str  # archive file name, ``{n}`` is the disc / part number
    count: int  # number of discs / parts
    metadata: str  # clinical table


DATASETS: dict[str, DatasetSpec] = {
    "oasis1": DatasetSpec("oasis_cross-sectional_disc{n}.tar.gz", 12, "oasis_cross-sectional.csv"),
    "oasis2": DatasetSpec("OAS2_RAW_PART{n}.tar.gz", 2, "oasis_longitudinal_demographics.xlsx"),
}


class DownloadError(DataError):
    """A download or extraction failed. ``str()`` is one line: the URL or file, and why."""

    def __init__(self, where: object, reason: str) -> None:
        self.where = str(where)
        super().__init__(where, reason)


class _RetryableError(DownloadError):
    """A transient failure (dropped connection, timeout, 502/503/504): worth resuming."""


# --------------------------------------------------------------------------- options


def parse_discs(text: str, count: int = 12) -> list[int]:
    """Parse a disc selection such as ``"1-3,5"`` into ``[1, 2, 3, 5]`` (sorted, unique)."""
    discs: set[int] = set()
    for part in text.replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ConfigError(f"discs {text!r}: expected numbers and ranges such as '1-3,5'")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if not 1 <= first <= last <= count:
            raise ConfigError(f"discs {text!r}: {part!r} is not a range within 1-{count}")
        discs.update(range(first, last + 1))
    return sorted(discs)


def archive_names(dataset: str, discs: list[int] | None = None) -> list[str]:
    """File names of the archives of ``dataset`` (all discs when ``discs`` is None)."""
    spec = dataset_spec(dataset)
    chosen = discs if discs is not None else list(range(1, spec.count + 1))
    bad = [n for n in chosen if not 1 <= n <= spec.count]
    if bad:
        raise ConfigError(f"{dataset} has discs 1-{spec.count}; got {bad}")
    return [spec.archive.format(n=n) for n in chosen]


def dataset_spec(dataset: str) -> DatasetSpec:
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    return DATASETS[dataset]


def is_needed_member(name: str) -> bool:
    """True for the processed T88 images and FSL tissue segmentations."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in NEEDED_PATTERNS)


# --------------------------------------------------------------------------- manifest


class Manifest:
    """``oasisvq-manifest.json``: one entry per finished file (url, size, sha256, ...)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / MANIFEST_NAME
        self.entries: dict[str, dict] = {}
        if self.path.exists():
            try:
                self.entries = json.loads(self.path.read_text())["files"]
            except (ValueError, KeyError, TypeError) as exc:
                raise DownloadError(
                    self.path, f"unreadable manifest ({exc}); delete it to start over"
                ) from exc

    def get(self, name: str) -> dict | None:
        return self.entries.get(name)

    def put(self, name: str, entry: dict) -> None:
        self.entries[name] = entry
        self.save()

    def drop(self, name: str) -> None:
        if self.entries.pop(name, None) is not None:
            self.save()

    def save(self) -> None:
        """Write atomically: a crash leaves the old manifest or the new one."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with _disk_errors(tmp):
            tmp.write_text(json.dumps({"files": self.entries}, indent=2, sort_keys=True))
            os.replace(tmp, self.path)


# --------------------------------------------------------------------------- helpers


def _say(message: str, verbose: bool) -> None:
    if verbose:
        tqdm.write(message, file=sys.stderr)


@contextmanager
def _disk_errors(path: Path) -> Iterator[None]:
    """Turn ENOSPC and other OS write errors on ``path`` into a one-line DownloadError."""
    try:
        yield
    except TimeoutError:
        raise
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DownloadError(
                path, "disk full (no space left on device); free space and run again"
            ) from exc
        if exc.errno is None:
            raise
        raise DownloadError(path, f"cannot write ({exc.strerror})") from exc


def file_digests(path: Path, algorithms: tuple[str, ...] = ("sha256",)) -> dict[str, str]:
    """Hex digests of a file, read once."""
    hashes = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK_BYTES):
            for h in hashes.values():
                h.update(block)
    return {name: h.hexdigest() for name, h in hashes.items()}


def _join_url(base: str, name: str) -> str:
    return base if base.endswith(name) else base.rstrip("/") + "/" + name


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# --------------------------------------------------------------------------- HTTP


def _http_reason(url: str, exc: urllib.error.HTTPError) -> DownloadError:
    code = exc.code
    if code == 404:
        return DownloadError(url, "not found (HTTP 404): check the disc numbers and --base-url")
    if code in (401, 403):
        return DownloadError(url, f"access denied (HTTP {code})")
    if code in (502, 503, 504):
        return _RetryableError(url, f"server unavailable (HTTP {code} {exc.reason})")
    if code >= 500:
        return DownloadError(
            url, f"server error (HTTP {code} {exc.reason}); try again later or use a mirror"
        )
    return DownloadError(url, f"HTTP {code} {exc.reason}")


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    """GET ``url`` from byte ``offset`` on. HTTP 416 is returned as an HTTPError for the caller."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:
            raise
        raise _http_reason(url, exc) from exc
    except urllib.error.URLError as exc:
        raise DownloadError(url, f"cannot reach the server ({exc.reason})") from exc
    except TimeoutError as exc:
        raise _RetryableError(url, "timed out waiting for the server") from exc
    except (ConnectionError, http.client.HTTPException) as exc:
        raise _RetryableError(url, f"connection failed ({exc!r})") from exc


def _content_range(response: http.client.HTTPResponse) -> tuple[int, int | None] | None:
    """``(start, total)`` from a Content-Range header, or None."""
    match = re.fullmatch(
        r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", "").strip()
    )
    if not match:
        return None
    total = match.group(2)
    return int(match.group(1)), None if total == "*" else int(total)


def _range_total(exc: urllib.error.HTTPError) -> int | None:
    """The full size a 416 answer reports (``Content-Range: bytes */SIZE``)."""
    match = re.fullmatch(r"bytes \*/(\d+)", (exc.headers.get("Content-Range") or "").strip())
    return int(match.group(1)) if match else None


def _check_free_space(part: Path, needed: int) -> None:
    free = shutil.disk_usage(part.parent).free
    if needed > free:
        raise DownloadError(
            part, f"disk full: {_human(needed)} still to download but only {_human(free)} free"
        )


def _read_block(response: http.client.HTTPResponse, url: str, position: int) -> bytes:
    """The next block of the body; a dropped connection becomes a retryable DownloadError."""
    try:
        return response.read(CHUNK_BYTES)
    except (http.client.HTTPException, OSError) as exc:  # IncompleteRead, reset, timeout
        raise _RetryableError(
            url,
            f"connection dropped after {position} bytes ({type(exc).__name__}); run again to resume",
        ) from exc


def _fetch_part(url: str, part: Path, timeout: float, verbose: bool) -> None:
    """Bring ``part`` to the full size of ``url``, resuming from its current size."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:  # 416: nothing after ``offset``
        if _range_total(exc) == offset:
            return  # the previous run had finished the transfer
        _say(f"{part.name}: partial file does not match the server's; starting over", verbose)
        part.unlink()
        response = _open(url, 0, timeout)
    with response:
        if offset and response.status == 206:
            start, _ = _content_range(response) or (None, None)
            if start != offset:
                raise DownloadError(
                    url, f"server answered a resume from byte {offset} with bytes from {start}"
                )
        elif offset:
            _say(f"{part.name}: server does not support resuming; starting over", verbose)
            offset = 0
        length = response.headers.get("Content-Length")
        remaining = int(length) if length is not None else None
        _stream(response, url, part, offset, remaining, verbose)


def _stream(
    response: http.client.HTTPResponse,
    url: str,
    part: Path,
    offset: int,
    remaining: int | None,
    verbose: bool,
) -> None:
    """Append the body of ``response`` to ``part`` (or overwrite it when ``offset`` is 0)."""
    if remaining is not None:
        _check_free_space(part, remaining)
    written = 0
    total = None if remaining is None else offset + remaining
    bar = tqdm(
        total=total,
        initial=offset,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=part.name.removesuffix(".part"),
        disable=not verbose,
        leave=True,
    )
    with bar, _disk_errors(part), open(part, "ab" if offset else "wb") as fh:
        while block := _read_block(response, url, offset + written):
            fh.write(block)
            written += len(block)
            bar.update(len(block))
    if remaining is not None and written < remaining:
        raise _RetryableError(
            url,
            f"connection dropped after {offset + written} of {total} bytes; run again to resume",
        )


# --------------------------------------------------------------------------- one file


def _verify(url: str, path: Path, checksum: tuple[str, str] | None) -> dict:
    """Hash ``path`` and compare with a known checksum. Returns the manifest entry."""
    algorithms = (
        ("sha256",) if checksum is None or checksum[0] == "sha256" else ("sha256", checksum[0])
    )
    digests = file_digests(path, algorithms)
    if checksum is not None and digests[checksum[0]] != checksum[1].lower():
        raise DownloadError(
            url,
            f"checksum mismatch: {checksum[0]} expected {checksum[1]}, got {digests[checksum[0]]}; "
            "the damaged file was removed, run again to download it again",
        )
    return {
        "url": url,
        "size": path.stat().st_size,
        "sha256": digests["sha256"],
        "checksum": None if checksum is None else f"{checksum[0]}:{checksum[1]}",
        "verified": checksum is not None,
        "completed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _is_finished(dest: Path, manifest: Manifest) -> bool:
    entry = manifest.get(dest.name)
    return dest.is_file() and entry is not None and entry.get("size") == dest.stat().st_size


def download_file(
    url: str,
    dest: Path,
    *,
    manifest: Manifest | None = None,
    checksum: tuple[str, str] | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    verbose: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``; resume, verify, then rename.

    A ``dest`` already recorded in the manifest with its size is kept as is. A
    ``dest`` present but not recorded (copied by hand) is verified and adopted.
    Dropped connections are resumed up to ``retries`` times.
    """
    manifest = manifest or Manifest(dest.parent)
    if _is_finished(dest, manifest):
        _say(f"{dest.name}: already downloaded", verbose)
        return dest
    if dest.is_file():
        try:
            manifest.put(dest.name, _verify(url, dest, checksum))
        except DownloadError as exc:
            raise DownloadError(
                dest, f"exists but is damaged ({exc.reason.split(';')[0]}); delete it and run again"
            ) from exc
        _say(f"{dest.name}: found complete, recorded in {MANIFEST_NAME}", verbose)
        return dest
    part = dest.with_name(dest.name + ".part")
    _fetch_with_retries(url, part, retries, timeout, verbose)
    try:
        entry = _verify(url, part, checksum)
    except DownloadError:
        part.unlink()
        raise
    with _disk_errors(dest):
        os.replace(part, dest)
    manifest.put(dest.name, entry)
    return dest


def _fetch_with_retries(url: str, part: Path, retries: int, timeout: float, verbose: bool) -> None:
    for attempt in range(retries + 1):
        try:
            _fetch_part(url, part, timeout, verbose)
            return
        except _RetryableError as exc:
            if attempt == retries:
                raise DownloadError(exc.where, exc.reason) from exc
            wait = min(2.0**attempt, 30.0)
            _say(f"{exc.where}: {exc.reason.split(';')[0]}; resuming in {wait:.0f} s", verbose)
            time.sleep(wait)


# --------------------------------------------------------------------------- extraction


def _unsafe_reason(member: tarfile.TarInfo, root: Path) -> str | None:
    """Why extracting ``member`` under ``root`` could write outside it (None if safe)."""
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or os.path.isabs(name):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "path with '..' leaves the target folder"
    if member.issym() or member.islnk():
        link = member.linkname
        if link.startswith(("/", "\\")) or os.path.isabs(link):
            return f"link to an absolute path ({link})"
        base = os.path.dirname(name) if member.issym() else ""
        if os.path.normpath(os.path.join(base, link)).split(os.sep)[0] == "..":
            return f"link pointing outside the target folder ({link})"
    elif not (member.isfile() or member.isdir()):
        return "special file (device, fifo)"
    real_root = os.path.realpath(root)
    path = os.path.join(root, name)
    if not _within(real_root, path):
        return "path leaves the target folder through a link"
    if member.issym() and not _within(
        real_root, os.path.join(os.path.dirname(path), member.linkname)
    ):
        return f"link pointing outside the target folder through a link ({member.linkname})"
    return None


def _within(real_root: str, path: str) -> bool:
    """True if ``path``, with every link resolved, lies in ``real_root``."""
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, root: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        tar.extract(member, root, set_attrs=False, filter="data")
    else:  # Python without extraction filters: our own checks above apply
        tar.extract(member, root, set_attrs=False)


def safe_extract(
    archive: Path, dest: Path, members_filter: Callable[[str], bool] | None = None
) -> list[Path]:
    """Extract ``archive`` into ``dest`` without ever writing outside ``dest``.

    Absolute paths, ``..`` components, links pointing outside and special files
    make the whole archive be rejected. ``members_filter(name)`` selects the
    members to extract (all when None). The archive is unpacked into a hidden
    temporary folder of ``dest`` and its top-level entries are moved into
    ``dest`` only when everything succeeded. Returns those entries.
    """
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".extract-{archive.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _extract_all(archive, tmp, members_filter)
        return _move_into(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract_all(archive: Path, root: Path, members_filter: Callable[[str], bool] | None) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar, _disk_errors(root):
            for member in tar:
                reason = _unsafe_reason(member, root)
                if reason:
                    raise DownloadError(archive, f"unsafe archive member {member.name!r}: {reason}")
                if members_filter is None or (member.isfile() and members_filter(member.name)):
                    _extract_member(tar, member, root)
    except _FILTER_ERROR as exc:
        raise DownloadError(archive, f"unsafe archive member: {exc}") from exc
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DownloadError(archive, f"truncated or corrupt archive ({exc})") from exc


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _move_into(tmp: Path, dest: Path) -> list[Path]:
    """Move the entries of ``tmp`` into ``dest``, replacing earlier copies."""
    moved = []
    for entry in sorted(tmp.iterdir()):
        target = dest / entry.name
        if entry.name == MANIFEST_NAME or entry.name.endswith((".part", ".tar.gz")):
            raise DownloadError(target, "archive would overwrite a downloaded file")
        if target.exists() or target.is_symlink():
            old = dest / f".old-{entry.name}.tmp"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(entry, target)
            _remove(old)
        else:
            os.replace(entry, target)
        moved.append(target)
    return moved


def is_extracted(name: str, dest: Path, manifest: Manifest, only_needed: bool) -> bool:
    """True if archive ``name`` was extracted into ``dest`` (as fully as asked) and its
    top-level folders are still there."""
    entry = manifest.get(name) or {}
    wanted = ("needed", "all") if only_needed else ("all",)
    entries = entry.get("extracted_entries", [])
    return entry.get("extracted") in wanted and all((dest / e).exists() for e in entries)


def extract_archive(
    archive: Path, dest: Path, manifest: Manifest, only_needed: bool, verbose: bool = True
) -> list[Path]:
    """Extract a downloaded archive once, recording the mode ("needed"/"all") in the manifest.

    A truncated or corrupt archive is removed from the manifest and from disk, so
    that the next run downloads it again.
    """
    mode = "needed" if only_needed else "all"
    entry = manifest.get(archive.name) or {}
    if is_extracted(archive.name, dest, manifest, only_needed):
        _say(f"{archive.name}: already extracted", verbose)
        return []
    _say(
        f"{archive.name}: extracting {'the needed images' if only_needed else 'everything'}",
        verbose,
    )
    try:
        moved = safe_extract(archive, dest, is_needed_member if only_needed else None)
    except DownloadError as exc:
        if "truncated or corrupt" in exc.reason:
            manifest.drop(archive.name)
            archive.unlink(missing_ok=True)
            raise DownloadError(
                exc.where, exc.reason + "; the archive was removed, run again to download it again"
            ) from exc
        raise
    manifest.put(
        archive.name, {**entry, "extracted": mode, "extracted_entries": [p.name for p in moved]}
    )
    return moved


# --------------------------------------------------------------------------- datasets


def download_oasis(
    dataset: str,
    to: Path,
    discs: list[int] | None = None,
    with_metadata: bool = False,
    base_url: str | None = None,
    meta_url: str | None = None,
    extract: bool = True,
    only_needed: bool = True,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    verbose: bool = True,
) -> list[Path]:
    """Download (and extract) an OASIS release into ``to``. Returns the downloaded files.

    dataset:       ``"oasis1"`` (12 cross-sectional discs) or ``"oasis2"`` (2 longitudinal parts)
    discs:         disc / part numbers, all when None
    with_metadata: also download the clinical table (age, sex, MMSE, CDR)
    base_url:      where the archives live (default: the NRG server)
    meta_url:      where the clinical table lives (default: oasis-brains.org/files/)
    only_needed:   extract only the T88 masked images and FSL segmentations (OASIS-1)
    """
    spec = dataset_spec(dataset)
    names = archive_names(dataset, discs)
    to = Path(to)
    with _disk_errors(to):
        to.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(to)
    base = base_url or NRG_BASE_URL
    files = []
    for name in names:
        needed = only_needed and dataset == "oasis1"
        if extract and not (to / name).exists() and is_extracted(name, to, manifest, needed):
            _say(f"{name}: already extracted (archive deleted), nothing to do", verbose)
            continue
        path = download_file(
            _join_url(base, name),
            to / name,
            manifest=manifest,
            checksum=KNOWN_CHECKSUMS.get(name),
            retries=retries,
            timeout=timeout,
            verbose=verbose,
        )
        files.append(path)
        if extract:
            extract_archive(path, to, manifest, needed, verbose)
    if with_metadata:
        url = _join_url(meta_url or OASIS_FILES_URL, spec.metadata)
        files.append(
            download_file(
                url,
                to / spec.metadata,
                manifest=manifest,
                checksum=KNOWN_CHECKSUMS.get(spec.metadata),
                retries=retries,
                timeout=timeout,
                verbose=verbose,
            )
        )
    return files
