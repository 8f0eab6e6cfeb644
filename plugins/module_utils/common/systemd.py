# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A systemd unit on a host, through ``systemctl``: its state, stop, start, reload, enable, daemon-reload.

Every call goes through a command runner (``common.command.Runner``) so tests can fake systemctl.
Runs on the node (stdlib only).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from ansible_collections.berth.fleet.plugins.module_utils.common.command import (
    Runner,
    run_checked,
    subprocess_runner,
)

# a service unit: letters, digits, ':', '_', '.', '@' and '-', ending in .service; never a path and
# never something systemctl would read as an option
UNIT_RE = re.compile(r"^[A-Za-z0-9:_@][A-Za-z0-9:_.@-]{0,240}\.service$")
PROPERTIES = ("LoadState", "ActiveState", "SubState", "NeedDaemonReload", "UnitFileState")


class SystemdError(Exception):
    """systemctl failed, or the unit cannot be used; the message says which command and why."""


def unit_problem(unit: str) -> str | None:
    if UNIT_RE.match(unit):
        return None
    return f"unit {unit!r} is not a systemd unit name such as berth-catalog-1.service"


@dataclass(frozen=True)
class UnitState:
    unit: str
    load_state: str  # loaded, not-found, masked, bad-setting, error ...
    active_state: str  # active, inactive, failed, activating, deactivating, reloading
    sub_state: str
    need_daemon_reload: bool  # the unit file changed on disk since systemd read it
    unit_file_state: str = "enabled"  # enabled, disabled, static, ...: whether it starts at boot

    @property
    def found(self) -> bool:
        return self.load_state != "not-found"

    @property
    def needs_enable(self) -> bool:
        """A unit that would not start again after a reboot."""
        return self.unit_file_state in ("disabled", "")

    @property
    def active(self) -> bool:
        return self.active_state in ("active", "reloading")

    @property
    def stopped(self) -> bool:
        return self.active_state in ("inactive", "failed")

    def describe(self) -> str:
        return f"{self.active_state} ({self.sub_state})" if self.sub_state else self.active_state


# systemd's own lines about a unit that restarts, which say nothing of why it stopped
RESTART_NOISE = (
    "Scheduled restart job",
    "Stopped ",
    "Started ",
    "Starting ",
    "Failed with result",
    "Start request repeated",
    "Deactivated successfully",
    "Consumed ",
    "Failed to start ",
)


class Systemctl:
    """``systemctl`` for one unit at a time; each change returns the seconds it took."""

    def __init__(
        self,
        runner: Runner = subprocess_runner,
        binary: str = "systemctl",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self.binary = binary
        self.clock = clock

    def state(self, unit: str) -> UnitState:
        result = run_checked(
            self.runner,
            [self.binary, "show", f"--property={','.join(PROPERTIES)}", unit],
            SystemdError,
            tail_lines=5,
        )
        values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        return UnitState(
            unit=unit,
            load_state=values.get("LoadState", "not-found"),
            active_state=values.get("ActiveState", "inactive"),
            sub_state=values.get("SubState", ""),
            need_daemon_reload=values.get("NeedDaemonReload", "no") == "yes",
            unit_file_state=values.get("UnitFileState", ""),
        )

    def stop(self, unit: str) -> float:
        """Stops the unit; systemd sends its KillSignal and waits (TimeoutStopSec) until it exited."""
        return self._timed([self.binary, "stop", unit])

    def start(self, unit: str) -> float:
        return self._timed([self.binary, "start", unit])

    def reload(self, unit: str) -> float:
        """The unit's own ExecReload (for HAProxy: save server state, check, USR2: seamless)."""
        return self._timed([self.binary, "reload", unit])

    def enable(self, unit: str) -> float:
        """Starts the unit at boot (a node that reboots brings its instance back)."""
        return self._timed([self.binary, "enable", unit])

    def daemon_reload(self) -> float:
        return self._timed([self.binary, "daemon-reload"])

    def last_lines(self, unit: str, lines: int = 6) -> list[str]:
        """What a process that died said, best effort ([] if nothing): the last lines of the unit's
        journal that are not systemd's restart bookkeeping (a unit restarted 8 times ends in 40 such
        lines, and the reason - the process's own error, or systemd's "Failed at step ..." - is
        above them), then the journal's last two lines."""
        try:
            result = self.runner(["journalctl", "--no-pager", "-o", "cat", "-n", "300", "-u", unit])
        except OSError:
            return []
        every = [line for line in result.stdout.splitlines() if line.strip()]
        said: dict[str, int] = {}  # the process's own lines, each once, at its last place
        for place, line in enumerate(every):
            if not any(noise in line for noise in RESTART_NOISE):
                said.pop(line, None)
                said[line] = place
        kept = dict(list(said.items())[-(lines - 2) :])
        for place in range(max(len(every) - 2, 0), len(every)):
            kept.setdefault(every[place], place)
        return sorted(kept, key=kept.__getitem__)  # in the journal's order

    def _timed(self, argv: list[str]) -> float:
        started = self.clock()
        run_checked(self.runner, argv, SystemdError, tail_lines=5)
        return round(self.clock() - started, 3)
