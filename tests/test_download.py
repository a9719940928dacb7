"""``oasisvq.data.download`` against a loopback HTTP server (127.0.0.1 only).

The server serves small archives built here in the exact OASIS-1 folder layout
and can simulate failures: a connection dropped mid-transfer, 404 and 500.
No test reaches the internet.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import re
import shutil
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from oasisvq.cli import main
from oasisvq.data import download as D
from oasisvq.data.download import DownloadError, download_oasis, parse_discs, safe_extract

DISC = "oasis_cross-sectional_disc{}.tar.gz"
SHAPE = (20, 24, 18)


# --------------------------------------------------------------------------- fake OASIS data


def _analyze(path: Path, data: np.ndarray) -> None:
    """Write an Analyze 7.5 ``.hdr``/``.img`` pair."""
    img = nib.AnalyzeImage(data, None)
    img.header.set_zooms((1.0, 1.0, 1.0))
    nib.save(img, str(path))


def write_session(disc_dir: Path, subject: int, visit: int = 1) -> None:
    """One OASIS-1 session with the real file names (small volumes)."""
    sid = f"OAS1_{subject:04d}_MR{visit}"
    session = disc_dir / sid
    t88 = session / "PROCESSED" / "MPRAGE" / "T88_111"
    seg = session / "FSL_SEG"
    raw = session / "RAW"
    for folder in (t88, seg, raw):
        folder.mkdir(parents=True)
    rng = np.random.default_rng(subject)
    x, y, z = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    brain = ((x - 10) / 7) ** 2 + ((y - 12) / 9) ** 2 + ((z - 9) / 6) ** 2 < 1
    head = rng.uniform(200, 800, SHAPE).astype(np.int16)
    stem = f"{sid}_mpr_n4_anon_111_t88"
    _analyze(t88 / f"{stem}_gfc", head)
    _analyze(t88 / f"{stem}_masked_gfc", np.where(brain, head, 0).astype(np.int16))
    _analyze(seg / f"{stem}_masked_gfc_fseg", np.where(brain, 1 + (head % 3), 0).astype(np.uint8))
    _analyze(raw / f"{sid}_mpr-1_anon", head)
    (t88 / f"{stem}_masked_gfc_tra_90.gif").write_bytes(b"GIF89a")
    (session / f"{sid}.txt").write_text(f"SESSION ID: {sid}\n")


def build_disc(tmp: Path, disc: int, subjects: list[int]) -> bytes:
    """A ``.tar.gz`` holding ``disc<N>/OAS1_xxxx_MR1/...`` like the real discs."""
    root = tmp / f"build{disc}"
    for subject in subjects:
        write_session(root / f"disc{disc}", subject)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(root / f"disc{disc}", arcname=f"disc{disc}")
    return buf.getvalue()


def tar_bytes(members: list[tuple[str, str, str]]) -> bytes:
    """An uncompressed tar of ``(kind, name, content_or_link)`` members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for kind, name, value in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value.encode()))
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = value
                tar.addfile(info)
    return buf.getvalue()


@pytest.fixture(scope="module")
def discs(tmp_path_factory) -> dict[int, bytes]:
    tmp = tmp_path_factory.mktemp("discs")
    return {1: build_disc(tmp, 1, [1, 2]), 2: build_disc(tmp, 2, [3])}


# --------------------------------------------------------------------------- loopback server


class FakeServer:
    """``http.server`` in a thread on 127.0.0.1 with Range support and failure injection."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.failures: dict[str, list[tuple[str, int]]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, prefix: str = "") -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{prefix}"

    def fail(self, path: str, kind: str, value: int) -> None:
        """Next request for ``path``: ``("drop", n_bytes)`` or ``("status", code)``."""
        self.failures.setdefault(path, []).append((kind, value))

    def requests_for(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.requests if p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.lstrip("/")
                server.requests.append((path, self.headers.get("Range")))
                pending = server.failures.get(path)
                kind, value = pending.pop(0) if pending else ("", 0)
                if kind == "status":
                    self.send_error(value)
                elif path not in server.files:
                    self.send_error(404)
                else:
                    self._send(server.files[path], drop_after=value if kind == "drop" else None)

            def _send(self, data: bytes, drop_after: int | None) -> None:
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                start = int(match.group(1)) if match else 0
                if start >= len(data) and match:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = data[start:]
                self.send_response(206 if match else 200)
                if match:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if drop_after is None:
                    self.wfile.write(body)
                    return
                self.wfile.write(body[:drop_after])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

        return Handler


@pytest.fixture
def server():
    srv = FakeServer()
    yield srv
    srv.close()


@pytest.fixture
def served(server, discs, monkeypatch) -> FakeServer:
    """Discs 1 and 2 plus the clinical table; disc 1's known md5 is that of the fake disc."""
    server.files["data/" + DISC.format(1)] = discs[1]
    server.files["data/" + DISC.format(2)] = discs[2]
    server.files["files/oasis_cross-sectional.csv"] = b"ID,M/F,Hand,Age,Educ,SES,MMSE,CDR\n"
    monkeypatch.setitem(
        D.KNOWN_CHECKSUMS, DISC.format(1), ("md5", hashlib.md5(discs[1]).hexdigest())
    )
    monkeypatch.setattr(D.time, "sleep", lambda s: None)
    return server


def fetch(server: FakeServer, to: Path, discs: list[int], **kw) -> list[Path]:
    kw.setdefault("retries", 0)
    return download_oasis(
        "oasis1",
        to,
        discs,
        kw.pop("with_metadata", False),
        server.url("data/"),
        server.url("files/"),
        verbose=False,
        **kw,
    )


def leftovers(folder: Path) -> list[str]:
    """Files that look like unfinished work."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".part", ".tmp")))


def manifest(folder: Path) -> dict:
    path = folder / D.MANIFEST_NAME
    return json.loads(path.read_text())["files"] if path.exists() else {}


# --------------------------------------------------------------------------- options


def test_parse_discs():
    assert parse_discs("1-3,5") == [1, 2, 3, 5]
    assert parse_discs("12") == [12]
    assert parse_discs("2,1,2") == [1, 2]
    for bad in ("0", "13", "3-1", "a", "1-", ""):
        with pytest.raises(ValueError, match="discs"):
            parse_discs(bad)


def test_archive_names():
    assert D.archive_names("oasis1", [1, 12]) == [DISC.format(1), DISC.format(12)]
    assert D.archive_names("oasis2") == ["OAS2_RAW_PART1.tar.gz", "OAS2_RAW_PART2.tar.gz"]
    with pytest.raises(ValueError, match="unknown dataset"):
        D.archive_names("oasis9")


def test_needed_members():
    assert D.is_needed_member(
        "disc1/OAS1_0001_MR1/PROCESSED/MPRAGE/T88_111/OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc.img"
    )
    assert D.is_needed_member(
        "disc1/OAS1_0001_MR1/FSL_SEG/OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc_fseg.hdr"
    )
    assert not D.is_needed_member(
        "disc1/OAS1_0001_MR1/PROCESSED/MPRAGE/T88_111/OAS1_0001_MR1_mpr_n4_anon_111_t88_gfc.img"
    )
    assert not D.is_needed_member("disc1/OAS1_0001_MR1/RAW/OAS1_0001_MR1_mpr-1_anon.img")


# --------------------------------------------------------------------------- downloads


def test_download_extracts_only_needed_and_records_manifest(served, tmp_path):
    files = fetch(served, tmp_path, [1, 2], with_metadata=True)
    assert [f.name for f in files] == [DISC.format(1), DISC.format(2), "oasis_cross-sectional.csv"]
    entries = manifest(tmp_path)
    assert entries[DISC.format(1)]["verified"] is True
    assert entries[DISC.format(1)]["extracted"] == "needed"
    assert entries[DISC.format(2)]["verified"] is False
    assert (
        entries[DISC.format(2)]["sha256"]
        == hashlib.sha256(served.files["data/" + DISC.format(2)]).hexdigest()
    )
    assert entries[DISC.format(2)]["size"] == len(served.files["data/" + DISC.format(2)])
    extracted = sorted(
        p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("disc*/**/*") if p.is_file()
    )
    assert len(extracted) == 3 * 4  # 3 sessions x (masked image + segmentation) x (.hdr + .img)
    assert all("_masked_gfc" in p and ("T88_111" in p or "FSL_SEG" in p) for p in extracted)
    assert (
        "disc2/OAS1_0003_MR1/FSL_SEG/OAS1_0003_MR1_mpr_n4_anon_111_t88_masked_gfc_fseg.img"
        in extracted
    )
    assert leftovers(tmp_path) == []


def test_rerun_downloads_nothing(served, tmp_path):
    fetch(served, tmp_path, [1, 2])
    before = len(served.requests)
    fetch(served, tmp_path, [1, 2])
    assert len(served.requests) == before
    # an extraction deleted by hand is redone from the archive, still without downloading
    shutil.rmtree(tmp_path / "disc2")
    fetch(served, tmp_path, [1, 2])
    assert len(served.requests) == before and (tmp_path / "disc2" / "OAS1_0003_MR1").is_dir()
    # archives deleted after extraction to save space are not downloaded again
    (tmp_path / DISC.format(1)).unlink()
    fetch(served, tmp_path, [1, 2])
    assert len(served.requests) == before


def test_all_files_extracts_everything(served, tmp_path):
    fetch(served, tmp_path, [2], only_needed=False)
    session = tmp_path / "disc2" / "OAS1_0003_MR1"
    assert (session / "RAW" / "OAS1_0003_MR1_mpr-1_anon.img").is_file()
    assert (session / "OAS1_0003_MR1.txt").is_file()


def test_resume_requests_only_the_remaining_bytes(served, tmp_path):
    name = DISC.format(2)
    data = served.files["data/" + name]
    cut = len(data) // 3
    served.fail("data/" + name, "drop", cut)
    with pytest.raises(DownloadError, match="connection dropped.*run again to resume") as err:
        fetch(served, tmp_path, [2])
    assert name in str(err.value) and "\n" not in str(err.value)
    assert (tmp_path / (name + ".part")).stat().st_size == cut
    assert not (tmp_path / name).exists() and name not in manifest(tmp_path)

    fetch(served, tmp_path, [2])
    assert served.requests_for("data/" + name) == [None, f"bytes={cut}-"]
    assert (tmp_path / name).read_bytes() == data
    assert leftovers(tmp_path) == []


def test_dropped_connection_is_resumed_within_a_run(served, tmp_path):
    name = DISC.format(1)
    served.fail("data/" + name, "drop", 1000)
    fetch(served, tmp_path, [1], retries=2)
    assert served.requests_for("data/" + name) == [None, "bytes=1000-"]
    assert manifest(tmp_path)[name]["verified"] is True


def test_finished_part_is_not_fetched_again(served, tmp_path):
    """A crash between the last byte and the rename: the server answers 416, no body."""
    name = DISC.format(2)
    (tmp_path / (name + ".part")).write_bytes(served.files["data/" + name])
    fetch(served, tmp_path, [2], extract=False)
    assert (tmp_path / name).is_file()
    assert served.requests_for("data/" + name) == [f"bytes={len(served.files['data/' + name])}-"]


def test_checksum_mismatch(server, discs, tmp_path):
    # the real MONAI md5 of disc 1 cannot match the small fake disc 1
    server.files["data/" + DISC.format(1)] = discs[1]
    with pytest.raises(
        DownloadError, match="checksum mismatch: md5 expected c83e216ef8654a7cc9e2a30a4cdbe0cc"
    ):
        fetch(server, tmp_path, [1])
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_missing_disc_404(served, tmp_path):
    with pytest.raises(DownloadError, match=r"disc7\.tar\.gz: not found \(HTTP 404\)"):
        fetch(served, tmp_path, [7])
    assert list(tmp_path.iterdir()) == []


def test_server_error_500(served, tmp_path):
    served.fail("data/" + DISC.format(2), "status", 500)
    with pytest.raises(DownloadError, match=r"disc2\.tar\.gz: server error \(HTTP 500"):
        fetch(served, tmp_path, [2])
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot reach the server"):
        download_oasis(
            "oasis1", tmp_path, [1], base_url=f"http://127.0.0.1:{port}/", verbose=False, retries=0
        )
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_writing(served, tmp_path, monkeypatch):
    class FullFile(io.BytesIO):
        def write(self, data) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(D, "open", lambda path, mode="r": FullFile(), raising=False)
    with pytest.raises(DownloadError, match="disk full"):
        fetch(served, tmp_path, [2])
    assert not (tmp_path / DISC.format(2)).exists() and DISC.format(2) not in manifest(tmp_path)


def test_disk_full_before_writing(served, tmp_path, monkeypatch):
    monkeypatch.setattr(
        D.shutil, "disk_usage", lambda path: D.shutil._ntuple_diskusage(10**9, 10**9, 10)
    )
    with pytest.raises(DownloadError, match=r"disk full: .* only 10 B free"):
        fetch(served, tmp_path, [2])
    assert not (tmp_path / DISC.format(2)).exists()


def test_truncated_archive_is_removed(served, tmp_path):
    name = DISC.format(2)
    served.files["data/" + name] = served.files["data/" + name][:-400]
    with pytest.raises(DownloadError, match="truncated or corrupt archive.*removed, run again"):
        fetch(served, tmp_path, [2])
    assert list(tmp_path.iterdir()) == [tmp_path / D.MANIFEST_NAME]
    assert manifest(tmp_path) == {}


def test_oasis2(server, tmp_path, monkeypatch):
    part = tar_bytes([("file", "OAS2_RAW_PART1/OAS2_0001_MR1/RAW/mpr-1.nifti.hdr", "hdr")])
    server.files["data/OAS2_RAW_PART1.tar.gz"] = part
    download_oasis("oasis2", tmp_path, [1], base_url=server.url("data/"), verbose=False)
    assert (
        tmp_path / "OAS2_RAW_PART1" / "OAS2_0001_MR1" / "RAW" / "mpr-1.nifti.hdr"
    ).read_text() == "hdr"


# --------------------------------------------------------------------------- safe extraction

MALICIOUS = {
    "dotdot": [("file", "disc1/ok.txt", "ok"), ("file", "disc1/../../evil.txt", "x")],
    "absolute": [("file", "/tmp/oasisvq-evil.txt", "x")],
    "symlink-out": [("symlink", "disc1/link", "../../outside")],
    "symlink-abs": [("symlink", "disc1/etc", "/etc")],
    "hardlink-out": [("hardlink", "disc1/hard", "../outside.txt")],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_archive_is_rejected(case, tmp_path):
    archive = tmp_path / "evil.tar"
    archive.write_bytes(tar_bytes(MALICIOUS[case]))
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match="evil.tar: unsafe archive member"):
        safe_extract(archive, dest)
    assert list(dest.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "evil.tar"]
    assert not Path("/tmp/oasisvq-evil.txt").exists()


def test_symlink_through_extracted_link_is_rejected(tmp_path):
    archive = tmp_path / "evil.tar"
    # "a/up" -> the folder itself (allowed), then "a/up/esc" -> "../outside" looks inside
    # lexically ("a/outside") but really points next to the folder
    archive.write_bytes(
        tar_bytes([("symlink", "a/up", ".."), ("symlink", "a/up/esc", "../outside")])
    )
    with pytest.raises(DownloadError, match="unsafe archive member"):
        safe_extract(archive, tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []


def test_links_inside_the_folder_are_allowed(tmp_path):
    archive = tmp_path / "ok.tar"
    archive.write_bytes(tar_bytes([("file", "d/a.txt", "a"), ("symlink", "d/b.txt", "a.txt")]))
    safe_extract(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "d" / "b.txt").read_text() == "a"


def test_malicious_archive_served(server, tmp_path):
    server.files["data/" + DISC.format(3)] = tar_bytes(MALICIOUS["dotdot"])
    with pytest.raises(DownloadError, match="unsafe archive member 'disc1/../../evil.txt'"):
        fetch(server, tmp_path / "dl", [3])
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "dl" / "disc1").exists()  # nothing half-extracted
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- command line


def _cli(argv: list[str]) -> int:
    return main(argv)


def test_cli_download(served, tmp_path, capsys):
    base = [
        "download",
        "oasis1",
        "--to",
        str(tmp_path),
        "--base-url",
        served.url("data/"),
        "--quiet",
    ]
    assert _cli([*base, "--discs", "2", "--with-metadata", "--meta-url", served.url("files/")]) == 0
    assert (tmp_path / "oasis_cross-sectional.csv").is_file()
    assert _cli([*base, "--discs", "9", "--retries", "0"]) == 3  # a DataError
    err = capsys.readouterr().err.strip()
    assert err.startswith("oasisvq download: error: http://127.0.0.1:")
    assert "disc9.tar.gz: not found (HTTP 404)" in err
    assert len(err.splitlines()) == 1
    assert _cli([*base, "--discs", "13"]) == 2
    assert "1-12" in capsys.readouterr().err


def test_download_then_prepare(served, tmp_path):
    """The extracted files are exactly what ``prepare`` needs."""
    from oasisvq.data.prepare import prepare_oasis1

    served.files["files/oasis_cross-sectional.csv"] = (
        b"ID,M/F,Hand,Age,Educ,SES,MMSE,CDR\nOAS1_0003_MR1,F,R,73,4,3,27,0.5\n"
    )
    fetch(served, tmp_path / "dl", [1, 2], with_metadata=True)
    summary = prepare_oasis1(
        tmp_path / "dl", tmp_path / "slices", size=16, fractions=(1 / 3, 1 / 3, 1 / 3)
    )
    assert summary["subjects"] == {"train": 1, "validate": 1, "test": 1}
    assert summary["slices"] == summary["seg_slices"]
    labels = (tmp_path / "slices" / "labels.csv").read_text().splitlines()
    assert any(
        line.startswith("0003,OAS1_0003_MR1,") and line.endswith(",73,F,27,0.5") for line in labels
    )
