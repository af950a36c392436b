"""Fetching datasets' original files, verified by their published checksums.

Every byte that reaches its final place has been checked: a file is streamed into a
temporary file beside its target, hashed on the way, and moved into place with
:func:`os.replace` (atomic on one file system) only if its checksum matches. A mismatch
deletes the temporary file and raises :class:`DatasetCorruptError` naming the URL and
both checksums. Files already present with the right checksum are not fetched again.
"""

from __future__ import annotations

import abc
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from sparse_nas.datasets._errors import DatasetCorruptError, DatasetDownloadError, DatasetError
from sparse_nas.datasets._registry import get_entry, how_to_obtain

_CHUNK_BYTES = 1 << 20
_USER_AGENT = "sparse-nas dataset downloader (urllib)"


@dataclass(frozen=True)
class Checksum:
    """A published digest of a file.

    Attributes:
        algorithm: ``"sha256"``, or ``"md5"`` where that is all the publisher gives.
        hexdigest: Lower-case hex digest.
    """

    algorithm: Literal["sha256", "md5"]
    hexdigest: str

    def matches_file(self, path: Path) -> bool:
        """Whether ``path`` is a file with exactly this digest."""
        return path.is_file() and _file_digest(path, self.algorithm) == self.hexdigest


@dataclass(frozen=True)
class RemoteFile:
    """One published file.

    Attributes:
        relative_url: Path of the file under the download base URL.
        target: Where it goes, relative to the data directory (``/``-separated).
        checksum: Its published digest.
    """

    relative_url: str
    target: str
    checksum: Checksum


class BaseDownload(abc.ABC):
    """How to fetch and verify one dataset's original files.

    Contract: :meth:`fetch` places only verified files, each atomically; it is
    idempotent (verified files already present are kept and not fetched again); it
    raises :class:`DatasetCorruptError` on a checksum mismatch and
    :class:`DatasetDownloadError` when a URL cannot be read. Implementations are frozen
    dataclasses, so they are immutable and picklable.
    """

    default_base_url: str

    @abc.abstractmethod
    def fetch(self, data_dir: Path, base_url: str, timeout_s: float) -> list[Path]:
        """Fetch the files into ``data_dir`` from ``base_url``; return their paths."""


@dataclass(frozen=True)
class FilesDownload(BaseDownload):
    """Files published one by one, each with its own checksum (MNIST, Fashion-MNIST)."""

    default_base_url: str
    files: tuple[RemoteFile, ...]

    def fetch(self, data_dir: Path, base_url: str, timeout_s: float) -> list[Path]:
        placed = []
        for remote in self.files:
            target = data_dir / remote.target
            if not remote.checksum.matches_file(target):
                url = _join_url(base_url, remote.relative_url)
                temp, digest = _fetch_to_temp(
                    url, target.parent, remote.checksum.algorithm, timeout_s
                )
                _move_if_verified(temp, digest, remote.checksum, target, url)
            placed.append(target)
        return placed


@dataclass(frozen=True)
class ArchiveMember:
    """A file inside an archive and where it goes.

    Attributes:
        member: Its name inside the archive.
        target: Where it goes, relative to the data directory.
        checksum: Its published digest.
    """

    member: str
    target: str
    checksum: Checksum


@dataclass(frozen=True)
class TarArchiveDownload(BaseDownload):
    """One tar archive with a checksum, of which some members are kept (CIFAR-10).

    The archive is verified, then each kept member is verified on its own before it
    is moved into place; the archive itself is deleted afterwards. Members are read
    by name only, so no path in the archive can write outside the data directory.
    """

    default_base_url: str
    archive: RemoteFile
    members: tuple[ArchiveMember, ...]

    def fetch(self, data_dir: Path, base_url: str, timeout_s: float) -> list[Path]:
        targets = [data_dir / m.target for m in self.members]
        if all(m.checksum.matches_file(t) for m, t in zip(self.members, targets, strict=True)):
            return targets
        url = _join_url(base_url, self.archive.relative_url)
        archive_path = data_dir / self.archive.target
        temp, digest = _fetch_to_temp(
            url, archive_path.parent, self.archive.checksum.algorithm, timeout_s
        )
        try:
            _check_digest(temp, digest, self.archive.checksum, url)
            with tarfile.open(temp, "r:*") as tar:
                for member, target in zip(self.members, targets, strict=True):
                    self._extract(tar, member, target, url)
        except tarfile.TarError as exc:
            raise DatasetCorruptError(f"cannot read the archive from {url}: {exc}") from exc
        finally:
            temp.unlink(missing_ok=True)
        return targets

    @staticmethod
    def _extract(tar: tarfile.TarFile, member: ArchiveMember, target: Path, url: str) -> None:
        try:
            stream = tar.extractfile(member.member)
        except KeyError:
            stream = None
        if stream is None:
            raise DatasetCorruptError(f"the archive from {url} has no file {member.member!r}")
        where = f"{url} (member {member.member})"
        with stream:
            temp, digest = _write_to_temp(stream, target.parent, member.checksum.algorithm, where)
        _move_if_verified(temp, digest, member.checksum, target, where)


@dataclass(frozen=True)
class Sha256ListDownload(BaseDownload):
    """Many files verified together by the SHA-256 of their ``sha256sum`` listing (FSDD).

    The listing is what ``sha256sum`` prints for the files, sorted by path:
    ``"<sha256>  <path>\\n"`` per file. One published digest of it pins every file
    without shipping thousands of digests. All files are fetched into a staging folder
    and the listing is checked before any file is moved into place.

    Attributes:
        default_base_url: Base URL; each file is at ``<base>/<path>``.
        target_dir: Folder under the data directory that the paths are relative to.
        paths: The files, ``/``-separated, relative to ``target_dir`` and the base URL.
        listing_sha256: SHA-256 of the listing.
        max_workers: Concurrent connections.
    """

    default_base_url: str
    target_dir: str
    paths: tuple[str, ...]
    listing_sha256: str
    max_workers: int = 8

    def fetch(self, data_dir: Path, base_url: str, timeout_s: float) -> list[Path]:
        root = data_dir / self.target_dir
        targets = [root / p for p in self.paths]
        if all(t.is_file() for t in targets) and sha256_listing(root, self.paths) == (
            self.listing_sha256
        ):
            return targets
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
        try:
            with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
                futures = [
                    pool.submit(self._fetch_one, staging, path, base_url, timeout_s)
                    for path in self.paths
                ]
                try:
                    digests = [future.result() for future in futures]
                except BaseException:
                    # One failure fails the whole set: do not fetch the rest.
                    for future in futures:
                        future.cancel()
                    raise
            listing = _listing_text(zip(self.paths, digests, strict=True))
            got = hashlib.sha256(listing.encode()).hexdigest()
            if got != self.listing_sha256:
                raise DatasetCorruptError(
                    f"checksum mismatch for the {len(self.paths)} files under {base_url}: "
                    f"expected sha256 {self.listing_sha256} of their sha256sum listing, got "
                    f"{got}; the downloaded files were deleted"
                )
            for path, target in zip(self.paths, targets, strict=True):
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / path, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return targets

    @staticmethod
    def _fetch_one(staging: Path, path: str, base_url: str, timeout_s: float) -> str:
        target = staging / path
        temp, digest = _fetch_to_temp(_join_url(base_url, path), target.parent, "sha256", timeout_s)
        os.replace(temp, target)
        return digest


def sha256_listing(root: Path, paths: tuple[str, ...] | list[str]) -> str:
    """SHA-256 of the ``sha256sum`` listing of ``paths`` under ``root`` (sorted by path)."""
    entries = [(p, _file_digest(root / p, "sha256")) for p in paths]
    return hashlib.sha256(_listing_text(entries).encode()).hexdigest()


def download_dataset(
    name: str,
    data_dir: str | os.PathLike[str],
    *,
    base_url: str | None = None,
    timeout_s: float = 60,
) -> list[Path]:
    """Fetch a dataset's original files into ``data_dir``, verifying their checksums.

    Files land where :func:`load_dataset` looks for them. Verified files already there
    are not fetched again. A dataset that needs no files (``digits``) returns ``[]``.

    Args:
        name: Registry name.
        data_dir: The data directory; created if missing.
        base_url: Replaces the publisher's base URL (a mirror, or a test server).
        timeout_s: Socket timeout of each request, in seconds.

    Returns:
        Paths of the dataset's files, all verified.

    Raises:
        DatasetError: Unknown dataset, one without a verified download, or bad timeout.
        DatasetCorruptError: A checksum mismatch (names the URL and both checksums).
        DatasetDownloadError: A URL could not be read.
    """
    entry = get_entry(name)
    if not entry.info.needs_data_dir:
        return []
    root = Path(data_dir).expanduser()
    if entry.download is None:
        raise DatasetError(
            f"dataset {name!r} has no download with published checksums; "
            f"{how_to_obtain(name, root)}"
        )
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
        raise DatasetError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    root.mkdir(parents=True, exist_ok=True)
    return entry.download.fetch(root, base_url or entry.download.default_base_url, timeout_s)


def _join_url(base_url: str, relative_url: str) -> str:
    return f"{base_url.rstrip('/')}/{urllib.parse.quote(relative_url)}"


def _listing_text(entries: Iterable[tuple[str, str]]) -> str:
    """``sha256sum`` output for ``(path, digest)`` pairs, sorted by path."""
    return "".join(f"{digest}  {path}\n" for path, digest in sorted(entries))


def _file_digest(path: Path, algorithm: str) -> str:
    with path.open("rb") as stream:
        return _hash_stream(stream, algorithm, None)


def _hash_stream(stream: IO[bytes], algorithm: str, sink: IO[bytes] | None) -> str:
    hasher = hashlib.new(algorithm, usedforsecurity=False)
    while chunk := stream.read(_CHUNK_BYTES):
        hasher.update(chunk)
        if sink is not None:
            sink.write(chunk)
    return hasher.hexdigest()


def _write_to_temp(
    stream: IO[bytes], directory: Path, algorithm: str, source: str
) -> tuple[Path, str]:
    """Copy ``stream`` into a temporary file in ``directory``; return it and its digest."""
    directory.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=directory)
    temp = Path(name)
    try:
        with os.fdopen(handle, "wb") as sink:
            digest = _hash_stream(stream, algorithm, sink)
    except (OSError, http.client.HTTPException) as exc:
        temp.unlink(missing_ok=True)
        raise DatasetDownloadError(f"could not download {source}: {exc}") from exc
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp, digest


def _fetch_to_temp(url: str, directory: Path, algorithm: str, timeout_s: float) -> tuple[Path, str]:
    """Stream ``url`` into a temporary file in ``directory``; return it and its digest."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise DatasetDownloadError(f"could not download {url}: {exc}") from exc
    with response:
        return _write_to_temp(response, directory, algorithm, url)


def _check_digest(temp: Path, digest: str, checksum: Checksum, source: str) -> None:
    if digest != checksum.hexdigest:
        temp.unlink(missing_ok=True)
        raise DatasetCorruptError(
            f"checksum mismatch for {source}: expected {checksum.algorithm} "
            f"{checksum.hexdigest}, got {digest}; the downloaded file was deleted"
        )


def _move_if_verified(
    temp: Path, digest: str, checksum: Checksum, target: Path, source: str
) -> None:
    _check_digest(temp, digest, checksum, source)
    os.replace(temp, target)
