# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An artifact's bytes and content: the members from a source tree, the tarball, its manifest.

An artifact is *reproducible*: entries are sorted, owners, modes and timestamps are normalised and
the gzip header carries neither a name nor a time, so the same inputs give the same bytes on the
same toolchain. Its *content* is the manifest (names, types, modes, owners, times, data digests),
which the builder compares rather than the compressed bytes, so a different zlib on the controller
never makes an unchanged artifact look changed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ansible_collections.berth.fleet.plugins.module_utils.common.fs import sha256_stream
from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.spec import (
    BUILD_INFO_FILE,
    MIGRATIONS_DIR,
    RELEASE_DEFINITIONS_FILE,
    ArtifactError,
)

ENTRY_MTIME = 0
ENTRY_UID = ENTRY_GID = 0
ENTRY_OWNER_NAME = "root"
DIR_MODE = 0o755
FILE_MODE = 0o644
EXECUTABLE_MODE = 0o755
GZIP_LEVEL = 9

ManifestRow = tuple[str, str, int, int, int, str, str, int, int, str]


# --- what goes in ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One archive entry, relative to the top directory ('' is the top directory itself)."""

    rel: str
    is_dir: bool
    mode: int
    source: Path | None = None
    data: bytes | None = None

    @property
    def sort_key(self) -> list[str]:
        # by path components: a directory always comes right before its content
        return self.rel.split("/") if self.rel else []


def _excluded(rel: str, name: str) -> bool:
    return (
        name.startswith(".")
        or name == "__pycache__"
        or name.endswith((".pyc", ".pyo"))
        or rel == RELEASE_DEFINITIONS_FILE
        # packed only as the version lists them (collect_members' migrations)
        or rel == MIGRATIONS_DIR
        or rel.startswith(MIGRATIONS_DIR + "/")
    )


def collect_members(source: Path, build_info: bytes, migrations: tuple[str, ...] = ()) -> list[Member]:
    """The archive's entries from a source tree, sorted, plus the generated build info and the
    migrations the version lists (``migrations/<file>``).

    Symlinks and special files are refused: they would not mean the same thing on every host.
    """
    members = [Member("", True, DIR_MODE)]
    for rel, st, path in _walk(source):
        if stat.S_ISDIR(st.st_mode):
            members.append(Member(rel, True, DIR_MODE))
        elif stat.S_ISREG(st.st_mode):
            if rel == BUILD_INFO_FILE:
                raise ArtifactError(
                    f"source: {path} must not exist: {BUILD_INFO_FILE} is generated into the artifact"
                )
            mode = EXECUTABLE_MODE if st.st_mode & stat.S_IXUSR else FILE_MODE
            members.append(Member(rel, False, mode, source=path))
        elif stat.S_ISLNK(st.st_mode):
            raise ArtifactError(f"source: {path} is a symlink: artifacts hold regular files only")
        else:
            raise ArtifactError(f"source: {path} is not a regular file or directory")
    if not any(not member.is_dir for member in members):
        raise ArtifactError(f"source: {source} holds no files")
    members.append(Member(BUILD_INFO_FILE, False, FILE_MODE, data=build_info))
    if migrations:
        members.append(Member(MIGRATIONS_DIR, True, DIR_MODE))
        for name in migrations:
            members.append(
                Member(f"{MIGRATIONS_DIR}/{name}", False, FILE_MODE, source=source / MIGRATIONS_DIR / name)
            )
    return sorted(members, key=lambda member: member.sort_key)


def _walk(root: Path, rel: str = "") -> Iterator[tuple[str, os.stat_result, Path]]:
    directory = root / rel if rel else root
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda entry: entry.name)
        for entry in entries:
            entry_rel = f"{rel}/{entry.name}" if rel else entry.name
            if _excluded(entry_rel, entry.name):
                continue
            st = entry.stat(follow_symlinks=False)
            yield entry_rel, st, Path(entry.path)
            if stat.S_ISDIR(st.st_mode):
                yield from _walk(root, entry_rel)
    except OSError as exc:
        raise ArtifactError(f"source: cannot read {exc.filename or directory}: {exc.strerror}") from exc


# --- rendering -------------------------------------------------------------------------------------


class _DigestWriter(io.RawIOBase):
    """Counts and hashes what passes through, then hands it on (or drops it: a check-mode dry run)."""

    def __init__(self, sink: IO[bytes] | None = None) -> None:
        super().__init__()
        self._sink = sink
        self._digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._digest.update(chunk)
        self.size += len(chunk)
        if self._sink is not None:
            self._sink.write(chunk)
        return len(chunk)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


@dataclass(frozen=True)
class Rendering:
    """What an artifact is: the tarball's digest and size, and its content manifest."""

    sha256: str
    size: int
    manifest: tuple[ManifestRow, ...]

    @property
    def files(self) -> list[str]:
        return [row[0] for row in self.manifest]


def manifest_row(info: tarfile.TarInfo, data_sha256: str) -> ManifestRow:
    if info.isdir():
        kind = "dir"
    elif info.isreg():
        kind = "file"
    else:
        kind = f"type {info.type!r}"
    return (
        info.name,
        kind,
        info.mode & 0o7777,
        info.uid,
        info.gid,
        info.uname,
        info.gname,
        int(info.mtime),
        info.size,
        data_sha256,
    )


def _tarinfo(name: str, member: Member, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if member.is_dir else tarfile.REGTYPE
    info.mode = member.mode
    info.size = size
    info.mtime = ENTRY_MTIME
    info.uid, info.gid = ENTRY_UID, ENTRY_GID
    info.uname = info.gname = ENTRY_OWNER_NAME
    return info


def render_artifact(stem: str, members: list[Member], sink: IO[bytes] | None) -> Rendering:
    """Write the gzip'd tarball to ``sink`` (None: only compute what it would be)."""
    counted = _DigestWriter(sink)
    rows: list[ManifestRow] = []
    try:
        # no file name and time 0 in the gzip header: both would make equal content differ
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=counted, compresslevel=GZIP_LEVEL, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar,
        ):
            for member in members:
                name = f"{stem}/{member.rel}" if member.rel else stem
                data = b"" if member.is_dir else _member_data(member)
                info = _tarinfo(name, member, len(data))
                tar.addfile(info, None if member.is_dir else io.BytesIO(data))
                rows.append(manifest_row(info, "" if member.is_dir else hashlib.sha256(data).hexdigest()))
    except (OSError, tarfile.TarError) as exc:
        raise ArtifactError(f"cannot write the artifact {stem}: {exc}") from exc
    return Rendering(counted.hexdigest(), counted.size, tuple(rows))


def _member_data(member: Member) -> bytes:
    if member.data is not None:
        return member.data
    if member.source is None:
        raise ArtifactError(f"internal: member {member.rel!r} has no content")
    try:
        return member.source.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"source: cannot read {member.source}: {exc.strerror}") from exc


def read_manifest(path: Path) -> tuple[ManifestRow, ...]:
    """The content manifest of an existing tarball (the same rows render_artifact records)."""
    rows: list[ManifestRow] = []
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for info in tar:
                data_sha256 = ""
                if info.isreg():
                    handle = tar.extractfile(info)
                    data_sha256 = sha256_stream(handle) if handle is not None else ""
                rows.append(manifest_row(info, data_sha256))
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        raise ArtifactError(f"{path}: not a readable gzip'd tarball: {exc}") from exc
    return tuple(rows)
