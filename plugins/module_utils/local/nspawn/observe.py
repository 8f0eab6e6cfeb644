# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a machine is now, read from its records, the mount table and /proc; and what a run reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.config import (
    MachineConfig,
    MachinePaths,
    RunState,
    config_from_json,
)
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.errors import NspawnError
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.overlay import MachineOverlay
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.proc import MachineProcs


@dataclass
class Observed:
    exists: bool
    config: MachineConfig | None = None
    run: RunState | None = None  # set only when the recorded process is alive and is ours
    stale_run: RunState | None = None  # recorded but dead (or no longer ours)
    mounted: bool = False
    host_key: str | None = None

    @property
    def state(self) -> str:
        if not self.exists:
            return "absent"
        return "running" if self.run else "stopped"

    def summary(self) -> dict[str, Any]:
        if self.config is None:
            return {"state": "absent"}
        return self.config.summary(self.state)


def observe_machine(paths: MachinePaths, overlay: MachineOverlay, procs: MachineProcs) -> Observed:
    """The machine as it is: its record, host key, mount, and whether its recorded nspawn is ours."""
    if not paths.config.is_file():
        return Observed(exists=False, mounted=overlay.is_mounted())
    try:
        config = config_from_json(paths.config.read_text())
    except (OSError, ValueError, TypeError) as exc:
        raise NspawnError(f"unreadable machine record {paths.config}: {exc}") from exc
    observed = Observed(exists=True, config=config, mounted=overlay.is_mounted())
    if paths.host_key_pub.is_file():
        observed.host_key = " ".join(paths.host_key_pub.read_text().split()[:2])
    if paths.state.is_file():
        try:
            run = RunState.from_json(paths.state.read_text())
        except (OSError, ValueError, KeyError) as exc:
            raise NspawnError(f"unreadable state file {paths.state}: {exc}") from exc
        if procs.is_ours(run.pid, run.start_ticks):
            observed.run = run
        else:
            observed.stale_run = run
    return observed


@dataclass
class MachineResult:
    changed: bool
    name: str
    state: str
    actions: list[str]
    before: dict[str, Any]
    after: dict[str, Any]
    config: MachineConfig | None
    paths: MachinePaths
    pid: int | None = None
    host_key: str | None = None
    ready_seconds: float | None = None
    memory_bytes: int | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        address = self.config.ip if self.config and self.config.address else None
        host_key = self.host_key
        return {
            "changed": self.changed,
            "name": self.name,
            "state": self.state,
            "actions": self.actions,
            "pid": self.pid,
            "address": address,
            "interface": self.config.address if self.config else None,
            "hostname": self.config.hostname if self.config else None,
            "host_key": host_key,
            "known_hosts_line": f"{address} {host_key}" if address and host_key else None,
            "machine_dir": str(self.paths.root),
            "console_log": str(self.paths.log),
            "ready_seconds": self.ready_seconds,
            "memory_bytes": self.memory_bytes,
            "diff": {"before": self.before, "after": self.after},
        }
