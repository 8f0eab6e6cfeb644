# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Versioned service artifacts: ``<name>-<version>.tar.gz`` and its ``.sha256``, built once.

A version is *immutable*: once ``<name>-<version>`` exists, a build whose content differs is refused
unless forced. Content is compared member by member (the manifest of :mod:`.render`), not by the
compressed bytes, so a different zlib on the controller never makes an unchanged artifact look
changed.

Files appear atomically (temporary file + rename), the ``.sha256`` last: when the checksum file
exists it describes the tarball next to it. :func:`.verify.verify_artifact` checks that on any host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ansible_collections.berth.fleet.plugins.module_utils.common.fs import (
    FileLock,
    atomic_write,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.render import (
    FILE_MODE,
    ManifestRow,
    Member,
    Rendering,
    collect_members,
    read_manifest,
    render_artifact,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.spec import (
    ArtifactError,
    ArtifactSpec,
    render_build_info,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.verify import (
    checksum_line,
    parse_checksum_line,
    sha256_file,
)


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
        members = collect_members(self.spec.source, render_build_info(self.spec), self.spec.migrations)
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
