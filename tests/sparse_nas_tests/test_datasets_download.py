"""Downloads with checksums, against a local HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import re
import shutil
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sparse_nas.datasets import (
    DatasetConfig,
    DatasetCorruptError,
    DatasetDownloadError,
    DatasetError,
    dataset_info,
    download_dataset,
    load_dataset,
)
from sparse_nas.datasets._download import (
    ArchiveMember,
    Checksum,
    FilesDownload,
    RemoteFile,
    Sha256ListDownload,
    TarArchiveDownload,
)

SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
MNIST_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output clean."""

    def do_GET(self) -> None:
        self.server.requested.append(self.path)  # type: ignore[attr-defined]
        super().do_GET()


@dataclass
class Server:
    url: str
    root: Path
    requested: list[str]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A static file server for files the test writes under ``root``."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.requested = []  # type: ignore[attr-defined]
    # A short poll interval makes shutdown() return quickly at teardown.
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_port}", root, httpd.requested)  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".download-")]


# --- single files ---------------------------------------------------------------------


def test_files_are_verified_placed_and_not_fetched_twice(server: Server, data_dir: Path) -> None:
    payloads = {"a.bin": b"alpha" * 1000, "sub dir/b.bin": b"beta"}
    for name, payload in payloads.items():
        (server.root / name).parent.mkdir(exist_ok=True)
        (server.root / name).write_bytes(payload)
    download = FilesDownload(
        "https://example.invalid/",
        (
            RemoteFile("a.bin", "set/a.bin", Checksum("sha256", sha256(payloads["a.bin"]))),
            RemoteFile("sub dir/b.bin", "set/b.bin", Checksum("md5", md5(payloads["sub dir/b.bin"]))),
        ),
    )
    placed = download.fetch(data_dir, server.url, timeout_s=5)
    assert placed == [data_dir / "set" / "a.bin", data_dir / "set" / "b.bin"]
    assert placed[0].read_bytes() == payloads["a.bin"]
    assert placed[1].read_bytes() == payloads["sub dir/b.bin"]
    assert server.requested == ["/a.bin", "/sub%20dir/b.bin"]
    assert leftovers(data_dir) == []
    assert download.fetch(data_dir, server.url, timeout_s=5) == placed
    assert len(server.requested) == 2, "verified files are not fetched again"


def test_checksum_mismatch_deletes_the_file_and_names_url_and_checksums(
    server: Server, data_dir: Path
) -> None:
    (server.root / "a.bin").write_bytes(b"tampered")
    expected = md5(b"original")
    download = FilesDownload("unused", (RemoteFile("a.bin", "a.bin", Checksum("md5", expected)),))
    with pytest.raises(DatasetCorruptError) as caught:
        download.fetch(data_dir, server.url, timeout_s=5)
    message = str(caught.value)
    assert f"{server.url}/a.bin" in message
    assert f"expected md5 {expected}" in message and f"got {md5(b'tampered')}" in message
    assert not (data_dir / "a.bin").exists()
    assert leftovers(data_dir) == []


def test_download_dataset_checks_the_published_mnist_checksums(
    server: Server, data_dir: Path
) -> None:
    for name in MNIST_FILES:
        (server.root / name).write_bytes(b"not the original " + name.encode())
    with pytest.raises(DatasetCorruptError) as caught:
        download_dataset("mnist", data_dir, base_url=server.url, timeout_s=5)
    message = str(caught.value)
    assert f"{server.url}/train-images-idx3-ubyte.gz" in message
    assert "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609" in message
    assert sha256(b"not the original train-images-idx3-ubyte.gz") in message
    assert list((data_dir / "mnist").iterdir()) == []


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"no MNIST originals in {SHARED_MNIST}")
def test_download_dataset_fetches_mnist_from_a_mirror(server: Server, data_dir: Path) -> None:
    for name in MNIST_FILES:
        shutil.copyfile(SHARED_MNIST / name, server.root / name)
    placed = download_dataset("mnist", data_dir, base_url=server.url + "/", timeout_s=30)
    assert placed == [data_dir / "mnist" / name for name in MNIST_FILES]
    splits = load_dataset(DatasetConfig("mnist", train_subset=100), data_dir)
    assert len(splits.test) == 10_000


def test_http_error_is_a_download_error_naming_the_url(server: Server, data_dir: Path) -> None:
    with pytest.raises(DatasetDownloadError, match=f"{server.url}/t.*404"):
        download_dataset("fashion_mnist", data_dir, base_url=server.url, timeout_s=5)
    assert leftovers(data_dir) == []


def test_unreachable_host_is_a_download_error(data_dir: Path) -> None:
    with pytest.raises(DatasetDownloadError, match=re.escape("could not download http://127.0.0.1:9/")):
        download_dataset("mnist", data_dir, base_url="http://127.0.0.1:9", timeout_s=5)


# --- archives -------------------------------------------------------------------------


def make_tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


MEMBERS = {"pack/a.bin": b"A" * 300, "pack/b.bin": b"B" * 7, "pack/readme.html": b"<p>"}


def tar_download(archive: bytes, member_md5: dict[str, str] | None = None) -> TarArchiveDownload:
    digests = member_md5 or {name: md5(MEMBERS[name]) for name in ("pack/a.bin", "pack/b.bin")}
    return TarArchiveDownload(
        "unused",
        RemoteFile("pack.tar.gz", "pack.tar.gz", Checksum("md5", md5(archive))),
        tuple(
            ArchiveMember(name, f"out/{Path(name).name}", Checksum("md5", digest))
            for name, digest in digests.items()
        ),
    )


def test_tar_archive_members_are_verified_and_placed(server: Server, data_dir: Path) -> None:
    archive = make_tar_gz(MEMBERS)
    (server.root / "pack.tar.gz").write_bytes(archive)
    download = tar_download(archive)
    placed = download.fetch(data_dir, server.url, timeout_s=5)
    assert placed == [data_dir / "out" / "a.bin", data_dir / "out" / "b.bin"]
    assert placed[0].read_bytes() == MEMBERS["pack/a.bin"]
    assert sorted(p.name for p in data_dir.rglob("*")) == ["a.bin", "b.bin", "out"]
    assert download.fetch(data_dir, server.url, timeout_s=5) == placed
    assert len(server.requested) == 1


def test_tar_member_checksum_mismatch(server: Server, data_dir: Path) -> None:
    archive = make_tar_gz(MEMBERS)
    (server.root / "pack.tar.gz").write_bytes(archive)
    download = tar_download(archive, {"pack/a.bin": md5(b"other")})
    with pytest.raises(DatasetCorruptError) as caught:
        download.fetch(data_dir, server.url, timeout_s=5)
    message = str(caught.value)
    assert "(member pack/a.bin)" in message
    assert md5(b"other") in message and md5(MEMBERS["pack/a.bin"]) in message
    assert list(data_dir.rglob("*.bin")) == [] and leftovers(data_dir) == []
    assert not (data_dir / "pack.tar.gz").exists()


def test_tar_without_an_expected_member(server: Server, data_dir: Path) -> None:
    archive = make_tar_gz({"pack/a.bin": MEMBERS["pack/a.bin"]})
    (server.root / "pack.tar.gz").write_bytes(archive)
    with pytest.raises(DatasetCorruptError, match=re.escape("has no file 'pack/b.bin'")):
        tar_download(archive).fetch(data_dir, server.url, timeout_s=5)


def test_verified_archive_that_is_not_a_tar(server: Server, data_dir: Path) -> None:
    (server.root / "pack.tar.gz").write_bytes(b"plain text")
    with pytest.raises(DatasetCorruptError, match="cannot read the archive"):
        tar_download(b"plain text").fetch(data_dir, server.url, timeout_s=5)


def test_download_dataset_checks_the_published_cifar_checksum(
    server: Server, data_dir: Path
) -> None:
    (server.root / "cifar-10-python.tar.gz").write_bytes(make_tar_gz(MEMBERS))
    with pytest.raises(DatasetCorruptError, match="expected md5 c58f30108f718f92721af3b95e74349a"):
        download_dataset("cifar10", data_dir, base_url=server.url, timeout_s=5)
    assert list(data_dir.iterdir()) == []


# --- file sets verified by a sha256sum listing ----------------------------------------

RECORDINGS = {f"recordings/{d}_x_{t}.wav": bytes([d, t]) * 50 for d in range(2) for t in range(2)}


def listing_digest(files: dict[str, bytes]) -> str:
    """What ``sha256sum recordings/* | sha256sum`` prints, computed independently."""
    lines = [f"{sha256(data)}  {path}\n" for path, data in sorted(files.items())]
    return sha256("".join(lines).encode())


def serve(server: Server, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        (server.root / path).parent.mkdir(parents=True, exist_ok=True)
        (server.root / path).write_bytes(data)


def test_file_set_is_verified_by_its_listing(server: Server, data_dir: Path) -> None:
    serve(server, RECORDINGS)
    download = Sha256ListDownload(
        "unused", "fsdd", tuple(RECORDINGS), listing_digest(RECORDINGS), max_workers=2
    )
    placed = download.fetch(data_dir, server.url, timeout_s=5)
    assert placed == [data_dir / "fsdd" / p for p in RECORDINGS]
    assert all(p.read_bytes() == RECORDINGS[str(p.relative_to(data_dir / "fsdd"))] for p in placed)
    assert leftovers(data_dir) == []
    assert download.fetch(data_dir, server.url, timeout_s=5) == placed
    assert len(server.requested) == len(RECORDINGS)


def test_file_set_mismatch_places_nothing(server: Server, data_dir: Path) -> None:
    tampered = {**RECORDINGS, "recordings/1_x_1.wav": b"changed"}
    serve(server, tampered)
    expected = listing_digest(RECORDINGS)
    download = Sha256ListDownload("unused", "fsdd", tuple(RECORDINGS), expected)
    with pytest.raises(DatasetCorruptError) as caught:
        download.fetch(data_dir, server.url, timeout_s=5)
    message = str(caught.value)
    assert server.url in message
    assert expected in message and listing_digest(tampered) in message
    assert list((data_dir / "fsdd").rglob("*")) == []


# --- public function ------------------------------------------------------------------


def test_download_dataset_edge_cases(tmp_path: Path) -> None:
    assert download_dataset("digits", tmp_path) == []
    with pytest.raises(DatasetError, match="timeout_s"):
        download_dataset("mnist", tmp_path, timeout_s=0)
    with pytest.raises(DatasetError, match="unknown dataset"):
        download_dataset("imagenet", tmp_path)
    assert dataset_info("fsdd").downloadable


def test_file_set_with_a_missing_file_fails_and_cleans_up(server: Server, data_dir: Path) -> None:
    serve(server, {p: d for p, d in RECORDINGS.items() if p != "recordings/0_x_1.wav"})
    download = Sha256ListDownload("unused", "fsdd", tuple(RECORDINGS), listing_digest(RECORDINGS))
    with pytest.raises(DatasetDownloadError, match=re.escape(f"{server.url}/recordings/0_x_1.wav")):
        download.fetch(data_dir, server.url, timeout_s=5)
    assert list((data_dir / "fsdd").rglob("*")) == []
