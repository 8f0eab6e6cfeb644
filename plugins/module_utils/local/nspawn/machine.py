# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Local lab hosts: systemd-nspawn machines booted from a shared read-only base image.

Each machine is a per-host overlayfs (lower: the base rootfs, upper/work under the machine's own
directory) booted by ``systemd-nspawn --boot`` inside the lab network namespace, detached from the
caller and recorded in a state file. Berth writes every per-machine file into the upper layer: the
hostname, a systemd-networkd config for ``host0``, a fresh ed25519 SSH host key and root's
authorized_keys.

The parts: ``config`` (request, configuration, records), ``overlay`` (the machine's directory and
mount), ``cgroups`` (its own cgroup in every hierarchy, where its limits are written), ``proc``
(what /proc says about it), ``process`` (its nspawn, started and stopped) and, here, the lifecycle
that converges one machine to running, stopped/present or absent.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.command import Runner, subprocess_runner
from ansible_collections.berth.fleet.plugins.module_utils.common.fs import FileLock
from ansible_collections.berth.fleet.plugins.module_utils.common.netns import netns_path
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.cgroups import (
    Hierarchy,
    MachineCgroups,
    remove_cgroups,
)
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.config import (
    MachineConfig,
    MachinePaths,
    MachineRequest,
    RunState,
    config_to_json,
)
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.errors import NspawnError
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.observe import (
    MachineResult,
    Observed,
    observe_machine,
)
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.overlay import MachineOverlay
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.proc import MachineProcs
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.process import NspawnProcess


class NspawnMachine:
    """Converges one machine to running, stopped/present or absent."""

    def __init__(
        self,
        request: MachineRequest,
        runner: Runner = subprocess_runner,
        hierarchies: Sequence[Hierarchy] | None = None,
        proc: Path = Path("/proc"),
    ) -> None:
        self.request = request
        self.runner = runner
        self.paths = MachinePaths.of(request.machines_dir, request.name)
        self.proc = proc
        self.actions: list[str] = []
        self.warnings: list[str] = []
        self.procs = MachineProcs(request.name, proc)
        self.cgroups = MachineCgroups(request.name, hierarchies)
        self.overlay = MachineOverlay(self.paths, self.procs, runner)
        self.process = NspawnProcess(
            request, self.overlay, self.procs, self.cgroups, self.actions, self.warnings
        )

    @property
    def hierarchies(self) -> list[Hierarchy]:
        return self.cgroups.hierarchies

    def observe(self) -> Observed:
        return observe_machine(self.paths, self.overlay, self.procs)

    def _is_ours(self, pid: int, start_ticks: int) -> bool:
        return self.procs.is_ours(pid, start_ticks)

    def container_leader(self, pid: int) -> int | None:
        return self.procs.container_leader(pid)

    def wait_ready(self, run: RunState, config: MachineConfig) -> float:
        return self.process.wait_ready(run, config)

    # converge ---------------------------------------------------------------------------------

    def ensure(self, check_mode: bool) -> MachineResult:
        try:
            return self._ensure(check_mode)
        except OSError as exc:
            raise NspawnError(f"machine {self.request.name}: {exc}") from exc

    def _ensure(self, check_mode: bool) -> MachineResult:
        request = self.request
        with FileLock(
            request.machines_dir, directory=True, create=not check_mode and request.state != "absent"
        ):
            observed = self.observe()
            before = observed.summary()
            if request.state == "absent":
                self._ensure_absent(observed, check_mode)
                config: MachineConfig | None = None
                after: dict[str, Any] = {"state": "absent"}
            else:
                config = request.resolve(observed.config, strict=not check_mode)
                self._preflight(config, observed, check_mode)
                self._ensure_created(config, observed, check_mode)
                if request.state == "running":
                    self._ensure_running(config, observed, check_mode)
                else:
                    self._ensure_stopped(observed, check_mode)
                after = config.summary("running" if request.state == "running" else "stopped")
        result = MachineResult(
            changed=bool(self.actions),
            name=request.name,
            state="absent" if request.state == "absent" else after["state"],
            actions=self.actions,
            before=before,
            after=after,
            config=config,
            paths=self.paths,
            warnings=self.warnings,
        )
        if check_mode or request.state == "absent":
            result.host_key = observed.host_key if request.state != "absent" else None
            result.pid = observed.run.pid if observed.run and request.state == "running" else None
            return result
        final = self.observe()
        result.host_key = final.host_key
        if request.state == "running" and config is not None:
            if final.run is None:
                raise NspawnError(f"machine {request.name} is not running after start; see {self.paths.log}")
            result.pid = final.run.pid
            if request.wait:
                result.ready_seconds = self.wait_ready(final.run, config)
            result.memory_bytes = self.cgroups.memory_usage(self.cgroups.of(final.run.cgroups))
        return result

    def _preflight(self, config: MachineConfig, observed: Observed, check_mode: bool) -> None:
        """Everything a change needs, checked before anything is touched.

        In check mode these become warnings: the image, key or network may come from earlier tasks
        that check mode did not run.
        """
        problems: list[str] = []
        if not observed.exists and self.request.missing_for_create():
            problems.append("creating the machine needs: " + ", ".join(self.request.missing_for_create()))
        starting = self.request.state == "running" and observed.run is None
        rootfs = Path(config.rootfs)
        has_init = any((rootfs / init).exists() for init in ("usr/lib/systemd/systemd", "sbin/init"))
        if (starting or not observed.exists) and not has_init:
            problems.append(f"rootfs {str(rootfs)!r} has no systemd: build it with berth.fleet.base_image")
        if starting:
            problems += [
                f"{tool} is not installed on the controller"
                for tool in ("systemd-nspawn", "nsenter", "mount", "umount")
                if shutil.which(tool) is None
            ]
            if not netns_path(config.namespace).exists():
                problems.append(
                    f"network namespace {config.namespace} does not exist (see berth.fleet.lab_network)"
                )
            elif self.runner(["ip", "-n", config.namespace, "link", "show", "dev", config.bridge]).rc != 0:
                problems.append(f"bridge {config.bridge!r} does not exist in namespace {config.namespace}")
        if not observed.exists and shutil.which("ssh-keygen") is None:
            problems.append("ssh-keygen is not installed on the controller (openssh-client)")
        if problems and not check_mode:
            raise NspawnError(f"machine {config.name}: " + "; ".join(problems))
        self.warnings.extend(problems)

    def _ensure_created(self, config: MachineConfig, observed: Observed, check_mode: bool) -> None:
        if not observed.exists:
            self.actions.append(f"create machine {config.name} (overlay over {config.rootfs}, new host key)")
            if not check_mode:
                self.overlay.create(config)
            return
        recorded = observed.config
        if recorded is None:  # exists implies a record; kept for the type checker
            raise NspawnError(f"machine {config.name} has no readable record in {self.paths.config}")
        changed = [
            key
            for key in ("hostname", "address", "gateway", "bridge", "namespace", "authorized_key")
            if getattr(recorded, key) != getattr(config, key)
        ]
        if recorded.binds != config.binds:
            self.actions.append(f"bind {', '.join(config.binds) or 'nothing'} into the machine")
        wanted_limits = {"cpu_quota": config.cpu_quota, "memory_max": config.memory_max}
        limits_changed = {"cpu_quota": recorded.cpu_quota, "memory_max": recorded.memory_max} != wanted_limits
        if observed.run is not None and not limits_changed:
            # What the kernel enforces is the truth: a limit changed behind Berth's back is drift.
            enforced = self.cgroups.enforced_limits(self.cgroups.of(observed.run.cgroups))
            limits_changed = enforced != wanted_limits
        restart = observed.run is not None and recorded.boot_relevant() != config.boot_relevant()
        if changed:
            self.actions.append(f"reconfigure {', '.join(changed)}")
        if limits_changed:
            self.actions.append(f"set limits cpu_quota={config.cpu_quota} memory_max={config.memory_max}")
        if restart:
            self.actions.append("restart to apply the new network/hostname/binds")
        if check_mode or not (changed or limits_changed or recorded != config):
            return
        if changed:
            self.overlay.write_files(config, mounted=observed.mounted)
        if limits_changed and observed.run is not None:
            cgroups = self.cgroups.of(observed.run.cgroups)
            self.cgroups.set_limits(cgroups, config.cpu_quota, config.memory_max)
        self.paths.config.write_text(config_to_json(config))
        if restart and observed.run is not None:
            self.process.stop(observed.run)
            observed.run = None
            observed.mounted = False

    def _ensure_running(self, config: MachineConfig, observed: Observed, check_mode: bool) -> None:
        if observed.run is not None:
            return
        self.actions.append(f"start machine {config.name} on {config.namespace}/{config.bridge}")
        if not check_mode:
            self.process.cleanup_stale(observed.stale_run)
            self.process.start(config)

    def _ensure_stopped(self, observed: Observed, check_mode: bool) -> None:
        if observed.run is not None:
            self.actions.append(f"stop machine {self.request.name}")
            if not check_mode:
                self.process.stop(observed.run)
        elif observed.mounted or observed.stale_run is not None:
            self.actions.append("clean up after a machine that died")
            if not check_mode:
                self.process.cleanup_stale(observed.stale_run)

    def _ensure_absent(self, observed: Observed, check_mode: bool) -> None:
        if observed.run is not None:
            self.actions.append(f"stop machine {self.request.name}")
            if not check_mode:
                self.process.stop(observed.run)
        leftover_cgroups = [
            path for path in sorted(set(self.cgroups.planned().values())) if os.path.isdir(path)
        ]
        if leftover_cgroups and not (observed.exists or self.paths.root.exists()):
            self.actions.append(f"remove leftover cgroups {', '.join(leftover_cgroups)}")
            if not check_mode:
                remove_cgroups(leftover_cgroups)
        if observed.exists or self.paths.root.exists() or observed.mounted:
            self.actions.append(f"remove {self.paths.root}")
            if not check_mode:
                self.process.cleanup_stale(observed.stale_run)
                if self.overlay.is_mounted():
                    raise NspawnError(f"{self.paths.merged} is still mounted; not removing {self.paths.root}")
                shutil.rmtree(self.paths.root)
