# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Releases side by side on a node, and an instance's atomic "current" switch.

Layout under ``root`` (default /opt/berth):

    releases/<artifact>-<version>/      extracted once per node, shared by colocated instances
        .berth-release.json             {"artifact", "version", "sha256"}: what was extracted
    instances/<instance>/current  -> ../../releases/<artifact>-<version>
    instances/<instance>/previous -> the release that was current before the last switch

Switching is a rename of a new symlink over the old one: atomic, so a revert is instant and a
crash never leaves an instance without a release. Runs on the node (stdlib only).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.fs import FileLock, sha256_file
from ansible_collections.berth.fleet.plugins.module_utils.common.rules import (
    VERSION_RE,
    name_problem,
    node_name_problem,
)

MARKER = ".berth-release.json"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
STATES = ("present", "current", "reverted", "query")


class ReleaseError(Exception):
    """A release that cannot be staged or switched; the message says what and where."""


@dataclass(frozen=True)
class ReleaseRequest:
    instance: str
    artifact: str
    version: str
    state: str
    package: Path | None  # the artifact tarball on the node (needed to stage)
    sha256: str | None
    root: Path

    def validate(self) -> None:
        problems = []
        # an instance is an inventory host <service>-<n>: one DNS label; an artifact a Berth name
        if node_name_problem(self.instance) is not None:
            problems.append(f"instance {self.instance!r} must be lowercase letters, digits and '-'")
        if name_problem(self.artifact) is not None:
            problems.append(f"artifact {self.artifact!r} must be lowercase letters, digits and '-'")
        if self.state not in STATES:
            problems.append(f"state must be one of {', '.join(STATES)}, got {self.state!r}")
        if self.state in ("present", "current"):
            if not VERSION_RE.match(self.version or ""):
                problems.append(f"version {self.version!r} is not a version such as v2 or 1.4.0")
            if self.sha256 is not None and not SHA256_RE.match(self.sha256):
                problems.append("sha256 must be 64 lowercase hex digits")
        if not self.root.is_absolute():
            problems.append(f"root must be an absolute path, got {self.root}")
        if problems:
            raise ReleaseError("; ".join(problems))

    @property
    def release_dir(self) -> Path:
        return self.root / "releases" / f"{self.artifact}-{self.version}"

    @property
    def instance_dir(self) -> Path:
        return self.root / "instances" / self.instance


@dataclass
class ReleaseResult:
    changed: bool = False
    current: str | None = None
    previous: str | None = None
    actions: list[str] = field(default_factory=list)
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "current": self.current,
            "previous": self.previous,
            "actions": self.actions,
            "diff": {"before": self.before, "after": self.after},
        }


def read_marker(release_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((release_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def version_of_link(link: Path) -> str | None:
    """The version a current/previous link points at (from the release's marker), None if none."""
    if not link.is_symlink():
        return None
    marker = read_marker(link.resolve())
    return str(marker["version"]) if marker and "version" in marker else None


def safe_members(archive: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    """Regular files and directories that stay inside dest; anything else is refused."""
    members = []
    root = dest.resolve()
    for member in archive.getmembers():
        target = (dest / member.name).resolve()
        if member.name.startswith("/") or not (target == root or root in target.parents):
            raise ReleaseError(f"artifact member {member.name!r} would land outside {dest}")
        if not (member.isfile() or member.isdir()):
            raise ReleaseError(f"artifact member {member.name!r} is not a regular file or directory")
        member.mode = 0o755 if member.isdir() or member.mode & 0o111 else 0o644
        member.uid = member.gid = 0
        member.uname = member.gname = "root"
        members.append(member)
    return members


class ReleaseManager:
    def __init__(self, request: ReleaseRequest, check_mode: bool) -> None:
        self.request = request
        self.check_mode = check_mode
        self.result = ReleaseResult()

    @property
    def current_link(self) -> Path:
        return self.request.instance_dir / "current"

    @property
    def previous_link(self) -> Path:
        return self.request.instance_dir / "previous"

    def run(self) -> ReleaseResult:
        self.request.validate()
        self.result.current = version_of_link(self.current_link)
        self.result.previous = version_of_link(self.previous_link)
        self.result.before = {"current": self.result.current, "previous": self.result.previous}
        if self.request.state in ("present", "current"):
            self._stage()
        if self.request.state == "current":
            self._switch_to(self.request.release_dir, self.request.version)
        elif self.request.state == "reverted":
            self._revert()
        self.result.after = {"current": self.result.current, "previous": self.result.previous}
        return self.result

    def _stage(self) -> None:
        request = self.request
        if self._already_staged():
            return
        if request.package is None:
            raise ReleaseError(f"{request.artifact} {request.version} is not staged and no package was given")
        if not request.package.is_file():
            raise ReleaseError(f"artifact {request.package} does not exist on this host")
        actual = sha256_file(request.package)
        if request.sha256 and actual != request.sha256:
            raise ReleaseError(
                f"artifact {request.package} has sha256 {actual}, expected {request.sha256}: "
                "refusing to use it"
            )
        if self.check_mode:
            self._record(f"extract {request.package.name} into {request.release_dir}")
            return
        request.release_dir.parent.mkdir(parents=True, exist_ok=True)
        # Colocated instances share a node and its releases: the first to get here extracts, the
        # others wait and find it staged (both renaming into place would fail "Directory not empty").
        with FileLock(request.release_dir.parent, directory=True):
            if self._already_staged():
                return
            self._record(f"extract {request.package.name} into {request.release_dir}")
            self._extract(actual)

    def _already_staged(self) -> bool:
        request = self.request
        marker = read_marker(request.release_dir)
        if marker is None:
            return False
        if request.sha256 and marker.get("sha256") != request.sha256:
            raise ReleaseError(
                f"{request.release_dir} holds {request.artifact} {request.version} with sha256 "
                f"{marker.get('sha256')}, not {request.sha256}: a version is immutable; build a new one"
            )
        return True

    def _extract(self, sha256: str) -> None:
        request = self.request
        if request.package is None:  # _stage checked it; this keeps the type narrow
            raise ReleaseError(f"{request.artifact} {request.version}: no package to extract")
        staging = Path(
            tempfile.mkdtemp(prefix=f".{request.release_dir.name}.", dir=request.release_dir.parent)
        )
        try:
            with tarfile.open(request.package) as archive:
                archive.extractall(staging, members=safe_members(archive, staging))
            unpacked = list(staging.iterdir())
            # artifacts hold one top-level directory; its content is the release
            content = unpacked[0] if len(unpacked) == 1 and unpacked[0].is_dir() else staging
            marker_data = {"artifact": request.artifact, "version": request.version, "sha256": sha256}
            (content / MARKER).write_text(json.dumps(marker_data, sort_keys=True) + "\n")
            content.chmod(0o755)
            os.rename(content, request.release_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _switch_to(self, release_dir: Path, version: str) -> None:
        if self.current_link.is_symlink() and self.current_link.resolve() == release_dir.resolve():
            return
        self._record(f"switch {self.request.instance} current to {version}")
        old_target = os.readlink(self.current_link) if self.current_link.is_symlink() else None
        if not self.check_mode:
            self.request.instance_dir.mkdir(parents=True, exist_ok=True)
            _atomic_symlink(os.path.relpath(release_dir, self.request.instance_dir), self.current_link)
            if old_target is not None:
                _atomic_symlink(old_target, self.previous_link)
        if old_target is not None:
            self.result.previous = self.result.current
        self.result.current = version

    def _revert(self) -> None:
        if self.result.previous is None:
            raise ReleaseError(f"instance {self.request.instance} has no previous release to revert to")
        self._switch_to(self.previous_link.resolve(), self.result.previous)

    def _record(self, action: str) -> None:
        self.result.changed = True
        self.result.actions.append(action)


def _atomic_symlink(target: str, link: Path) -> None:
    temporary = link.with_name(f".{link.name}.tmp")
    if temporary.is_symlink() or temporary.exists():
        temporary.unlink()
    os.symlink(target, temporary)
    os.replace(temporary, link)


def query_command(request: ReleaseRequest) -> str:
    """A shell command that prints the markers of the instance's current and previous releases, one
    line each (``current<TAB>{json}``): what ``state=query`` reads, for a caller that reads it
    without a module run (the action plugin of ``release``). Names are validated first."""
    request.validate()
    lines = []
    for link in ("current", "previous"):
        marker = shlex.quote(str(request.instance_dir / link / MARKER))
        lines.append(f"printf '%s\\t' {link}; tr -d '\\n' 2>/dev/null < {marker}; printf '\\n'")
    return "; ".join(lines)


def parse_query(output: str) -> ReleaseResult:
    """``state=query``'s result from what ``query_command`` printed."""
    versions: dict[str, str | None] = {"current": None, "previous": None}
    for line in output.splitlines():
        link, _tab, text = line.partition("\t")
        if link in versions and text.strip():
            try:
                marker = json.loads(text)
            except ValueError:
                continue
            if isinstance(marker, dict) and "version" in marker:
                versions[link] = str(marker["version"])
    state = {"current": versions["current"], "previous": versions["previous"]}
    return ReleaseResult(
        current=state["current"], previous=state["previous"], before=state, after=dict(state)
    )
