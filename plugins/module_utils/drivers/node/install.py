# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Everything an instance needs on its node before a rollout cycles it, in one run: the service
user, the verified artifact, its release staged beside the current one, and the instance's files
(config, systemd unit). Nothing here touches the running process.

The artifact crosses the wire only when the node lacks it: a first call without ``upload`` answers
``needs_package`` (and changes nothing) when the release is not staged and the node holds no copy
with the right checksum; the caller (the action plugin of ``instance_install``) then transfers it
and calls again with ``upload``. Runs on the node (stdlib only).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.command import (
    Runner,
    run_checked,
    subprocess_runner,
)
from ansible_collections.berth.fleet.plugins.module_utils.common.fs import atomic_write, sha256_file
from ansible_collections.berth.fleet.plugins.module_utils.drivers.node.release import (
    ReleaseError,
    ReleaseManager,
    ReleaseRequest,
    read_marker,
)

# a system user name as useradd takes it (Debian's NAME_REGEX, without the trailing '$')
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


class InstallError(Exception):
    """An instance that cannot be installed; the message says what and where."""


@dataclass(frozen=True)
class InstanceFile:
    path: Path
    content: str
    mode: int
    owner: str = "root"
    group: str = "root"
    # a password file: written like any other, never shown (its diff says only that it changed)
    secret: bool = field(default=False)


@dataclass(frozen=True)
class InstallRequest:
    release: ReleaseRequest  # state "present"; its package is where the node keeps the artifact
    user: str
    files: tuple[InstanceFile, ...] = ()
    upload: Path | None = None  # where the controller put the artifact for this run

    def validate(self) -> None:
        problems = []
        if self.release.state != "present":
            problems.append("the release is staged (state present), never switched, by an install")
        if self.release.package is None or not self.release.package.is_absolute():
            problems.append(f"package must be an absolute path on the node, got {self.release.package}")
        if not self.release.sha256:
            problems.append("sha256 is required: an artifact is installed only once verified")
        if not USER_RE.match(self.user):
            problems.append(f"user {self.user!r} is not a system user name (lowercase, at most 32)")
        for item in self.files:
            if not item.path.is_absolute():
                problems.append(f"file {item.path} must be an absolute path")
            if not 0 <= item.mode <= 0o7777:
                problems.append(f"file {item.path}: mode {item.mode:o} is not a file mode")
        paths = [item.path for item in self.files]
        if len(set(paths)) != len(paths):
            problems.append("files: each path once")
        if problems:
            raise InstallError("; ".join(problems))
        try:
            self.release.validate()
        except ReleaseError as exc:
            raise InstallError(str(exc)) from None


@dataclass
class InstallResult:
    changed: bool = False
    needs_package: bool = False
    actions: list[str] = field(default_factory=list)
    diff: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "needs_package": self.needs_package,
            "actions": self.actions,
            "diff": self.diff,
        }


class Installer:
    def __init__(self, request: InstallRequest, check_mode: bool, runner: Runner = subprocess_runner) -> None:
        self.request = request
        self.check_mode = check_mode
        self.runner = runner
        self.result = InstallResult()

    def run(self) -> InstallResult:
        request = self.request
        request.validate()
        package = self._package()
        staged = self._staged()
        if not staged and request.upload is None and not self._holds_artifact(package):
            if not self.check_mode:
                # nothing changed: the caller transfers the artifact and calls again
                self.result.needs_package = True
                return self.result
            self._record(
                f"copy {package.name} to {package.parent}",
                f"extract {package.name} into {request.release.release_dir}",
            )
            staged = True  # as far as a check run can tell
        self._user()
        if request.upload is not None:
            self._place_upload(package)
        if not staged:
            self._stage()
        for item in request.files:
            self._file(item)
        return self.result

    def _package(self) -> Path:
        package = self.request.release.package
        if package is None:  # validate() refused it; this keeps the type narrow
            raise InstallError("no package path")
        return package

    def _staged(self) -> bool:
        release = self.request.release
        marker = read_marker(release.release_dir)
        if marker is None:
            return False
        if marker.get("sha256") != release.sha256:
            raise InstallError(
                f"{release.release_dir} holds {release.artifact} {release.version} with sha256 "
                f"{marker.get('sha256')}, not {release.sha256}: a version is immutable; build a new one"
            )
        return True

    def _holds_artifact(self, package: Path) -> bool:
        try:
            return package.is_file() and sha256_file(package) == self.request.release.sha256
        except OSError:
            return False

    def _user(self) -> None:
        user = self.request.user
        try:
            pwd.getpwnam(user)
            return
        except KeyError:
            pass
        self._record(f"create system user {user}")
        if not self.check_mode:
            argv = ["useradd", "--system", "--user-group", "--shell", "/usr/sbin/nologin"]
            argv += ["--home-dir", "/nonexistent", "--no-create-home", user]
            run_checked(self.runner, argv, InstallError)

    def _place_upload(self, package: Path) -> None:
        upload = self.request.upload
        if upload is None:
            return
        actual = sha256_file(upload)
        if actual != self.request.release.sha256:
            raise InstallError(
                f"the artifact sent to this node has sha256 {actual}, expected "
                f"{self.request.release.sha256}: refusing to use it"
            )
        if self._holds_artifact(package):
            return
        self._record(f"copy {package.name} to {package.parent}")
        if not self.check_mode:
            _ensure_dir(package.parent)
            with open(upload, "rb") as source:
                atomic_write(package, source.read(), mode=0o644)

    def _stage(self) -> None:
        try:
            staged = ReleaseManager(self.request.release, self.check_mode).run()
        except ReleaseError as exc:
            raise InstallError(str(exc)) from None
        if staged.changed:
            self._record(*staged.actions)

    def _file(self, item: InstanceFile) -> None:
        try:
            before = item.path.read_text(encoding="utf-8")
            stat = item.path.stat()
        except FileNotFoundError:
            before, stat = None, None
        owner, group = _ids(item, allow_missing=self.check_mode)
        same_content = before == item.content
        same_meta = stat is not None and (stat.st_mode & 0o7777, stat.st_uid, stat.st_gid) == (
            item.mode,
            owner,
            group,
        )
        if same_content and same_meta:
            return
        if not same_content:
            self._record(f"write {item.path}")
            hidden = "(secret - not shown)\n"
            self.result.diff.append(
                {
                    "before_header": str(item.path),
                    "after_header": str(item.path),
                    "before": (hidden if before else "") if item.secret else before or "",
                    "after": hidden if item.secret else item.content,
                }
            )
        else:
            self._record(f"set {item.path} to {item.owner}:{item.group} {item.mode:04o}")
        if self.check_mode:
            return
        _ensure_dir(item.path.parent)
        if not same_content:
            atomic_write(item.path, item.content, mode=item.mode)
        os.chown(item.path, owner, group)
        os.chmod(item.path, item.mode)

    def _record(self, *actions: str) -> None:
        self.result.changed = True
        self.result.actions.extend(actions)


def _ensure_dir(directory: Path) -> None:
    if not directory.is_dir():
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)


def _ids(item: InstanceFile, allow_missing: bool) -> tuple[int, int]:
    """uid and gid of the file's owner and group (-1 for a user a check run has not created yet)."""
    try:
        owner = pwd.getpwnam(item.owner).pw_uid
    except KeyError:
        if not allow_missing:
            raise InstallError(f"file {item.path}: no user {item.owner!r}") from None
        owner = -1
    try:
        group = grp.getgrnam(item.group).gr_gid
    except KeyError:
        if not allow_missing:
            raise InstallError(f"file {item.path}: no group {item.group!r}") from None
        group = -1
    return owner, group


def files_from(raw: Sequence[dict[str, Any]], secret: bool = False) -> tuple[InstanceFile, ...]:
    """The module's ``files`` option (path, content, mode as octal text, owner, group), or with
    ``secret`` its ``secret_files``."""
    files = []
    for entry in raw:
        mode = str(entry.get("mode") or "0644")
        try:
            number = int(mode, 8)
        except ValueError:
            raise InstallError(f"file {entry.get('path')}: mode {mode!r} is not octal such as 0640") from None
        files.append(
            InstanceFile(
                path=Path(str(entry["path"])),
                content=str(entry["content"]),
                mode=number,
                owner=str(entry.get("owner") or "root"),
                group=str(entry.get("group") or "root"),
                secret=secret,
            )
        )
    return tuple(files)
