# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A load balancer's files and its HAProxy service, converged in one run.

The controller renders the files (``haproxy.cfg`` from the placement, the systemd drop-in that
keeps server state across reloads, the state helper) and hands them over together; this compares
each with what is on disk and, only where something differs:

* validates a new ``haproxy.cfg`` with ``haproxy -c`` *before* it replaces the running one (a
  configuration HAProxy refuses never lands, and the old one keeps serving);
* writes every changed file atomically (temporary sibling, fsync, rename);
* reloads systemd when a unit file or drop-in under ``/etc/systemd/`` changed;
* starts (and enables) HAProxy when it is not running, or reloads it (seamless: USR2 through the
  drop-in's ExecReload, which saves the servers' runtime state first) when its configuration
  changed.

Nothing changes when everything matches: one module run is the whole check.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.command import Runner, run_checked
from ansible_collections.berth.fleet.plugins.module_utils.common.fs import atomic_write
from ansible_collections.berth.fleet.plugins.module_utils.common.systemd import Systemctl, SystemdError
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import (
    HaproxyError,
    Transport,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.state import (
    ServerState,
    read_servers,
)

SYSTEMD_DIR = "/etc/systemd/"


@dataclass(frozen=True)
class ManagedFile:
    path: str
    content: str
    mode: int = 0o644

    def problems(self, what: str) -> list[str]:
        if not os.path.isabs(self.path):
            return [f"{what}: path must be absolute, got {self.path!r}"]
        if not 0 <= self.mode <= 0o7777:
            return [f"{what}: mode must be a file mode such as 0644, got {self.mode:o}"]
        return []

    def differs(self) -> bool:
        try:
            on_disk = Path(self.path).read_text(encoding="utf-8")
            mode = Path(self.path).stat().st_mode & 0o7777
        except (FileNotFoundError, UnicodeDecodeError):
            return True
        return on_disk != self.content or mode != self.mode

    def before(self) -> str:
        try:
            return Path(self.path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return ""


@dataclass(frozen=True)
class ConfigRequest:
    config: ManagedFile  # haproxy.cfg: validated before it is written
    files: tuple[ManagedFile, ...] = ()
    service: str = "haproxy.service"
    # written only where missing: state HAProxy's runtime changes afterwards (route maps)
    initial: tuple[ManagedFile, ...] = ()
    haproxy: str = "haproxy"

    def problems(self) -> list[str]:
        found = self.config.problems("config")
        for index, managed in enumerate(self.files):
            found += managed.problems(f"files[{index}]")
        for index, managed in enumerate(self.initial):
            found += managed.problems(f"initial_files[{index}]")
        paths = [self.config.path, *(managed.path for managed in (*self.files, *self.initial))]
        if len(set(paths)) != len(paths):
            found.append(f"every file must be named once, got {', '.join(sorted(paths))}")
        return found


@dataclass
class ConfigOutcome:
    changed: bool = False
    written: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    diff: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"changed": self.changed, "written": self.written, "actions": self.actions}


class LoadBalancerConfig:
    def __init__(self, request: ConfigRequest, runner: Runner, check_mode: bool) -> None:
        self.request = request
        self.runner = runner
        self.systemctl = Systemctl(runner)
        self.check_mode = check_mode

    def apply(self) -> ConfigOutcome:
        request, outcome = self.request, ConfigOutcome()
        problems = request.problems()
        if problems:
            raise HaproxyError("; ".join(problems))
        changed = [managed for managed in (*request.files, request.config) if managed.differs()]
        for managed in changed:
            outcome.diff.append(
                {
                    "before_header": managed.path,
                    "after_header": managed.path,
                    "before": managed.before(),
                    "after": managed.content,
                }
            )
        missing = [managed for managed in request.initial if not os.path.exists(managed.path)]
        for managed in missing:
            outcome.diff.append(
                {
                    "before_header": managed.path,
                    "after_header": managed.path,
                    "before": "",
                    "after": managed.content,
                }
            )
        if missing and not self.check_mode:  # the configuration refers to them: they come first
            for managed in missing:
                Path(managed.path).parent.mkdir(parents=True, exist_ok=True)
                atomic_write(Path(managed.path), managed.content, mode=managed.mode)
        config_changed = request.config in changed
        if config_changed:
            self._validate(request.config, missing if self.check_mode else [])
        try:
            unit = self.systemctl.state(request.service)
        except SystemdError as exc:
            raise HaproxyError(str(exc)) from None
        outcome.written = [managed.path for managed in (*missing, *changed)]
        outcome.changed = bool(changed) or bool(missing) or not unit.active or unit.needs_enable
        if self.check_mode:
            outcome.actions = [f"write {managed.path}" for managed in missing] + self._plan(
                changed, unit.active, config_changed, unit.needs_enable
            )
            return outcome
        for managed in changed:  # the config last: the helper and drop-in it relies on are in place
            Path(managed.path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(Path(managed.path), managed.content, mode=managed.mode)
        try:
            if any(managed.path.startswith(SYSTEMD_DIR) for managed in changed):
                self.systemctl.daemon_reload()
                outcome.actions.append("daemon-reload")
            if unit.needs_enable:
                self.systemctl.enable(request.service)
                outcome.actions.append(f"enable {request.service}")
            if not unit.active:
                self.systemctl.start(request.service)
                outcome.actions.append(f"start {request.service}")
            elif config_changed:
                self.systemctl.reload(request.service)
                outcome.actions.append(f"reload {request.service}")
        except SystemdError as exc:
            raise HaproxyError(f"{exc} (files written: {', '.join(outcome.written) or 'none'})") from None
        return outcome

    def _plan(
        self, changed: list[ManagedFile], active: bool, config_changed: bool, enable: bool
    ) -> list[str]:
        actions = [f"write {managed.path}" for managed in changed]
        if any(managed.path.startswith(SYSTEMD_DIR) for managed in changed):
            actions.append("daemon-reload")
        if enable:
            actions.append(f"enable {self.request.service}")
        if not active:
            actions.append(f"start {self.request.service}")
        elif config_changed:
            actions.append(f"reload {self.request.service}")
        return actions

    def _validate(self, config: ManagedFile, absent: list[ManagedFile]) -> None:
        """``haproxy -c`` on the new configuration, in a temporary file beside the real one; files it
        refers to that do not exist yet (``absent``, in check mode) are checked from temporary copies."""
        directory = Path(config.path).parent
        if not directory.is_dir() and self.check_mode:
            directory = Path(tempfile.gettempdir())
        directory.mkdir(parents=True, exist_ok=True)
        fd, candidate = tempfile.mkstemp(dir=directory, prefix=".berth-check.", suffix=".cfg")
        stand_ins: list[str] = []
        content = config.content
        for managed in absent:
            stand_fd, stand_in = tempfile.mkstemp(prefix=".berth-check.", suffix=Path(managed.path).suffix)
            with os.fdopen(stand_fd, "w", encoding="utf-8") as handle:
                handle.write(managed.content)
            stand_ins.append(stand_in)
            content = content.replace(managed.path, stand_in)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content)
            run_checked(self.runner, [self.request.haproxy, "-c", "-f", candidate], HaproxyError)
        except HaproxyError as exc:
            raise HaproxyError(
                f"the new {config.path} does not pass haproxy -c, so it was not written and the running "
                f"configuration stays: {exc}"
            ) from None
        finally:
            Path(candidate).unlink(missing_ok=True)
            for stand_in in stand_ins:
                Path(stand_in).unlink(missing_ok=True)


def checked_once(state: ServerState) -> bool:
    """Whether HAProxy's view of a server rests on a health check yet: right after a start or a
    reload a new server is assumed UP (``INI``) until its first check has run."""
    status = state.check_status.lstrip("* ")
    return not state.checks_enabled or not status.startswith("INI")


def read_after_checks(
    transport: Transport,
    backends: list[str],
    timeout: float = 10.0,
    poll_interval: float = 0.1,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, dict[str, ServerState]]:
    """Every server of ``backends`` once each has had its first health check (or ``timeout`` ran out:
    then a server still unchecked is reported as not in rotation, never as UP on no evidence)."""
    deadline = clock() + timeout
    while True:
        seen = {backend: read_servers(transport, backend) for backend in backends}
        pending = [state for states in seen.values() for state in states.values() if not checked_once(state)]
        if not pending or clock() >= deadline:
            break
        sleep(poll_interval)
    for states in seen.values():
        for name, state in states.items():
            if not checked_once(state):
                states[name] = replace(state, operational="DOWN")
    return seen
