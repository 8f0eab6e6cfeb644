# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Versioned service artifacts: ``<name>-<version>.tar.gz`` and its ``.sha256``, built once.

An artifact is a service's source directory plus a generated ``version.json`` (artifact name,
version, build flags), under a top directory ``<name>-<version>/``. It is *reproducible*: entries
are sorted, owners, modes and timestamps are normalised and the gzip header carries neither a name
nor a time, so the same inputs give the same bytes on the same toolchain.

A version is *immutable*: once ``<name>-<version>`` exists, a build whose content differs is refused
unless forced. Content is compared member by member (names, types, modes, owners, times, data
digests), not by the compressed bytes, so a different zlib on the controller never makes an
unchanged artifact look changed.

Files appear atomically (temporary file + rename), the ``.sha256`` last: when the checksum file
exists it describes the tarball next to it. :func:`verify_artifact` checks that on any host.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import io
import json
import math
import os
import re
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ansible_collections.berth.fleet.plugins.module_utils.common import fs
from ansible_collections.berth.fleet.plugins.module_utils.common.fs import (
    FileLock,
    atomic_write,
    sha256_stream,
)
from ansible_collections.berth.fleet.plugins.module_utils.common.rules import (
    VERSION_EXPECTED,
    name_problem,
    version_problem,
)

ARTIFACT_SUFFIX = ".tar.gz"
CHECKSUM_SUFFIX = ".sha256"
BUILD_INFO_FILE = "version.json"
BUILD_INFO_FORMAT = 1
# A source directory's release definitions are build inputs, not content: were they packed, adding v4
# would change the content of v1.
RELEASE_DEFINITIONS_FILE = "versions.yml"

ENTRY_MTIME = 0
ENTRY_UID = ENTRY_GID = 0
ENTRY_OWNER_NAME = "root"
DIR_MODE = 0o755
FILE_MODE = 0o644
EXECUTABLE_MODE = 0o755
GZIP_LEVEL = 9

_FLAG_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_CHECKSUM_LINE_RE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")

ManifestRow = tuple[str, str, int, int, int, str, str, int, int, str]


class ArtifactError(Exception):
    """Anything that stops an artifact from being built, verified or removed."""


# --- the request -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactSpec:
    """What the caller asks for."""

    name: str
    version: str
    dest: Path
    source: Path | None = None
    build_flags: Mapping[str, Any] = field(default_factory=dict)

    def validate(self, state: str = "present") -> None:
        if not isinstance(self.name, str) or name_problem(self.name) is not None:
            raise ArtifactError(
                f"name: {self.name!r} is not an artifact name: lowercase letters, digits and '-', "
                "starting with a letter, at most 32 characters"
            )
        if version_problem(self.version) is not None:
            raise ArtifactError(f"version: {self.version!r} is not {VERSION_EXPECTED}")
        if not self.dest.is_absolute():
            raise ArtifactError(f"dest: must be an absolute path, got {str(self.dest)!r}")
        if state == "absent":
            return
        if self.source is None:
            raise ArtifactError("source: required to build an artifact")
        if not self.source.is_absolute():
            raise ArtifactError(f"source: must be an absolute path, got {str(self.source)!r}")
        if not self.source.is_dir():
            raise ArtifactError(f"source: {self.source} is not a directory")
        validate_build_flags(self.build_flags)

    @property
    def stem(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def path(self) -> Path:
        return self.dest / f"{self.stem}{ARTIFACT_SUFFIX}"

    @property
    def checksum_path(self) -> Path:
        return self.dest / f"{self.stem}{ARTIFACT_SUFFIX}{CHECKSUM_SUFFIX}"


def validate_build_flags(flags: Any) -> None:
    if not isinstance(flags, Mapping):
        raise ArtifactError(f"build_flags: expected a mapping, got {flags!r}")
    for key, value in flags.items():
        if not isinstance(key, str) or not _FLAG_RE.match(key):
            raise ArtifactError(
                f"build_flags: {key!r} is not a flag name: lowercase letters, digits and '_', "
                "starting with a letter"
            )
        if value is not None and not isinstance(value, (str, bool, int, float)):
            raise ArtifactError(
                f"build_flags.{key}: expected a string, number, boolean or null, got {type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ArtifactError(f"build_flags.{key}: expected a finite number, got {value!r}")


def render_build_info(spec: ArtifactSpec) -> bytes:
    """The generated ``version.json``: what the service reads to know its version and flags."""
    info = {
        "format": BUILD_INFO_FORMAT,
        "artifact": spec.name,
        "version": spec.version,
        "build_flags": dict(spec.build_flags),
    }
    return (json.dumps(info, sort_keys=True, indent=2, allow_nan=False) + "\n").encode()


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
    )


def collect_members(source: Path, build_info: bytes) -> list[Member]:
    """The archive's entries from a source tree, sorted, plus the generated build info.

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


# --- checksums -------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    try:
        return fs.sha256_file(path)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read: {exc.strerror}") from exc


def checksum_line(sha256: str, filename: str) -> str:
    """One line in ``sha256sum`` format: ``sha256sum -c`` run next to the file checks it."""
    return f"{sha256}  {filename}\n"


def parse_checksum_line(text: str, where: str = "checksum") -> tuple[str, str]:
    """(hex digest, file name) from a ``sha256sum`` line; the text must hold exactly one."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ArtifactError(f"{where}: expected one '<sha256>  <file>' line, found {len(lines)}")
    match = _CHECKSUM_LINE_RE.match(lines[0].rstrip("\r"))
    if not match:
        raise ArtifactError(f"{where}: not a sha256sum line: {lines[0][:100]!r}")
    return match.group(1).lower(), match.group(2)


def verify_artifact(path: Path, checksum_path: Path | None = None) -> str:
    """Check an artifact against its ``.sha256`` file; returns the digest, raises ArtifactError.

    The checksum file must name this file (a checksum of another artifact does not vouch for it).
    """
    checksum_path = checksum_path or path.with_name(path.name + CHECKSUM_SUFFIX)
    try:
        text = checksum_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ArtifactError(f"{checksum_path}: cannot read the checksum: {reason}") from exc
    expected, named = parse_checksum_line(text, str(checksum_path))
    if named != path.name:
        raise ArtifactError(f"{checksum_path}: is the checksum of {named!r}, not of {path.name!r}")
    actual = sha256_file(path)
    if not hmac.compare_digest(actual, expected):
        raise ArtifactError(
            f"{path}: sha256 {actual} does not match {expected} in {checksum_path.name}: "
            "the artifact is corrupt or was replaced"
        )
    return actual


# --- the builder -----------------------------------------------------------------------------------


@dataclass
class ArtifactResult:
    changed: bool
    action: str
    path: str
    checksum_path: str
    sha256: str | None = None
    size: int | None = None
    files: list[str] = field(default_factory=list)
    diff: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "action": self.action,
            "path": self.path,
            "checksum_path": self.checksum_path,
            "sha256": self.sha256,
            "size": self.size,
            "files": self.files,
            "diff": self.diff,
        }


@dataclass(frozen=True)
class Existing:
    """An artifact already on disk."""

    sha256: str
    size: int
    manifest: tuple[ManifestRow, ...] | None  # None: unreadable
    checksum_text: str | None  # None: no checksum file
    unreadable_reason: str = ""

    def checksum_ok(self, filename: str) -> bool:
        if self.checksum_text is None:
            return False
        try:
            digest, named = parse_checksum_line(self.checksum_text)
        except ArtifactError:
            return False
        return named == filename and digest == self.sha256


class ArtifactBuilder:
    """Ensures one artifact exists with the requested content (or does not exist)."""

    def __init__(self, spec: ArtifactSpec) -> None:
        self.spec = spec

    def ensure(self, state: str, check_mode: bool, force: bool = False) -> ArtifactResult:
        self.spec.validate(state)
        if state == "absent":
            return self.absent(check_mode)
        if state != "present":
            raise ArtifactError(f"state: expected present or absent, got {state!r}")
        return self.present(check_mode, force)

    # -- reading

    def get_existing(self) -> Existing | None:
        path = self.spec.path
        if not path.is_file():
            return None
        try:
            checksum_text: str | None = self.spec.checksum_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            checksum_text = None
        except (OSError, UnicodeDecodeError):
            checksum_text = ""  # present but unusable: it will be rewritten
        try:
            manifest: tuple[ManifestRow, ...] | None = read_manifest(path)
            reason = ""
        except ArtifactError as exc:
            manifest, reason = None, str(exc)
        return Existing(sha256_file(path), path.stat().st_size, manifest, checksum_text, reason)

    # -- present

    def present(self, check_mode: bool, force: bool) -> ArtifactResult:
        if self.spec.source is None:
            raise ArtifactError("source: required to build an artifact")
        members = collect_members(self.spec.source, render_build_info(self.spec))
        planned = render_artifact(self.spec.stem, members, None)
        if check_mode:
            return self._apply(self.get_existing(), planned, members, force, write=False)
        try:
            self.spec.dest.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactError(f"dest: cannot create {self.spec.dest}: {exc.strerror}") from exc
        with FileLock(self.spec.dest, directory=True):
            return self._apply(self.get_existing(), planned, members, force, write=True)

    def _apply(
        self, existing: Existing | None, planned: Rendering, members: list[Member], force: bool, write: bool
    ) -> ArtifactResult:
        filename = self.spec.path.name
        if existing is not None and existing.manifest == planned.manifest:
            # the same content: keep the file as it is, even if this zlib would compress it differently
            if existing.checksum_ok(filename):
                return self._result(False, "unchanged", existing.sha256, existing.size, planned, existing)
            if write:
                _write_atomically(self.spec.checksum_path, checksum_line(existing.sha256, filename).encode())
            return self._result(True, "checksum_written", existing.sha256, existing.size, planned, existing)
        if existing is not None and not force:
            raise ArtifactError(self._immutable_message(existing, planned))
        if write:
            self._write(planned, members)
        action = "built" if existing is None else "rebuilt"
        return self._result(True, action, planned.sha256, planned.size, planned, existing)

    def _immutable_message(self, existing: Existing, planned: Rendering) -> str:
        if existing.manifest is None:
            what = f"but cannot be read ({existing.unreadable_reason})"
        else:
            what = f"with different content (sha256 {existing.sha256}, this build would be {planned.sha256})"
        return (
            f"{self.spec.stem} already exists at {self.spec.path} {what}: a version is immutable once "
            "built. Build a new version, or set force=true to replace this one"
        )

    def _write(self, planned: Rendering, members: list[Member]) -> None:
        # Until the new tarball is in place there is no checksum file: none can vouch for the old one.
        _unlink(self.spec.checksum_path)

        def render_into(handle: IO[bytes]) -> None:
            written = render_artifact(self.spec.stem, members, handle)
            if written.sha256 != planned.sha256:
                raise ArtifactError(
                    f"{self.spec.stem}: two renderings of the same inputs differ "
                    f"({planned.sha256} then {written.sha256}): did the source change during the build?"
                )

        _write_atomically(self.spec.path, render_into)
        checksum = checksum_line(planned.sha256, self.spec.path.name)
        _write_atomically(self.spec.checksum_path, checksum.encode())

    # -- absent

    def absent(self, check_mode: bool) -> ArtifactResult:
        path, checksum_path = self.spec.path, self.spec.checksum_path
        before_sha = sha256_file(path) if path.is_file() else None
        present = [p for p in (checksum_path, path) if p.exists() or p.is_symlink()]
        if not check_mode:
            for existing_path in present:  # the checksum first: it must never outlive its tarball
                _unlink(existing_path)
        return ArtifactResult(
            changed=bool(present),
            action="removed" if present else "absent",
            path=str(path),
            checksum_path=str(checksum_path),
            diff={"before": self._diff_side(before_sha), "after": self._diff_side(None)},
        )

    # -- results

    def _diff_side(self, sha256: str | None) -> dict[str, Any]:
        return {"path": str(self.spec.path), "sha256": sha256}

    def _result(
        self,
        changed: bool,
        action: str,
        sha256: str,
        size: int,
        planned: Rendering,
        existing: Existing | None,
    ) -> ArtifactResult:
        return ArtifactResult(
            changed=changed,
            action=action,
            path=str(self.spec.path),
            checksum_path=str(self.spec.checksum_path),
            sha256=sha256,
            size=size,
            files=planned.files,
            diff={
                "before": self._diff_side(existing.sha256 if existing else None),
                "after": self._diff_side(sha256),
            },
        )


# --- files -----------------------------------------------------------------------------------------


def _write_atomically(path: Path, content: bytes | Callable[[IO[bytes]], None]) -> None:
    """Write bytes (or call ``content(handle)``) into a temporary sibling, then rename it over ``path``."""
    try:
        # hosts and the deploy role read these
        atomic_write(path, content, mode=FILE_MODE)
    except OSError as exc:
        raise ArtifactError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ArtifactError(f"cannot remove {path}: {exc.strerror}") from exc
