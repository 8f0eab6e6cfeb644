# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A machine's nspawn process: started detached in its own cgroups, stopped, cleaned up after.

``systemd-nspawn --boot`` runs inside the lab network namespace, detached from the caller, and is
recorded in ``state.json`` with its start time. A recorded PID is only ever signalled after /proc
confirms it is still that nspawn (same start time, same machine in its cmdline): a PID that was
recycled by another process is never touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence

from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.argv import nspawn_argv
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.cgroups import (
    MachineCgroups,
    remove_cgroups,
)
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.config import (
    MachineConfig,
    MachineRequest,
    RunState,
)
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.errors import NspawnError
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.overlay import MachineOverlay
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.proc import MachineProcs


class NspawnProcess:
    """Starts and stops one machine's nspawn; what it did goes to ``actions`` and ``warnings``."""

    def __init__(
        self,
        request: MachineRequest,
        overlay: MachineOverlay,
        procs: MachineProcs,
        cgroups: MachineCgroups,
        actions: list[str],
        warnings: list[str],
    ) -> None:
        self.request = request
        self.paths = overlay.paths  # the overlay owns the machine's directory
        self.overlay = overlay
        self.procs = procs
        self.cgroups = cgroups
        self.actions = actions
        self.warnings = warnings

    # start ------------------------------------------------------------------------------------

    def start(self, config: MachineConfig) -> None:
        paths = self.paths
        self.overlay.mount(config.rootfs)
        cgroups = self.cgroups.planned(config.name)
        if "systemd" not in cgroups:
            raise NspawnError("no name=systemd or cgroup2 hierarchy is mounted: systemd-nspawn cannot run")
        try:
            self.cgroups.create(cgroups)
            self.cgroups.set_limits(cgroups, config.cpu_quota, config.memory_max)
            procs_files = [os.path.join(path, "cgroup.procs") for path in sorted(set(cgroups.values()))]
            child = self._spawn(nspawn_argv(config, paths.merged), procs_files)
        except BaseException:
            remove_cgroups(sorted(set(cgroups.values())))
            self.overlay.umount()
            raise
        proc_stat = self.procs.stat(child.pid)
        run = RunState(
            pid=child.pid,
            start_ticks=proc_stat.start_ticks if proc_stat else -1,
            cgroups=dict(cgroups),
            started_at=time.time(),
        )
        paths.state.write_text(run.to_json())
        self._await_container(child, run)
        self.actions.append(f"started nspawn pid {child.pid}")

    def _await_container(self, child: subprocess.Popen[bytes], run: RunState, timeout: float = 15.0) -> None:
        """Wait until nspawn has forked the container's PID 1, or report why it exited.

        Until the child has exec'd (python -> nsenter -> systemd-nspawn) its cmdline is not yet
        nspawn's, so the child handle, not /proc, tells a slow start from a dead one.
        """
        deadline = time.monotonic() + timeout
        while True:
            returncode = child.poll()
            if returncode is not None:
                self.finish_stop(run)
                raise NspawnError(f"systemd-nspawn exited ({returncode}) at start:\n{self.log_tail()}")
            if (
                self.procs.is_ours(run.pid, run.start_ticks)
                and self.procs.container_leader(run.pid) is not None
            ):
                return
            if time.monotonic() > deadline:
                self.stop(run)
                raise NspawnError(f"no container after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.02)

    def _spawn(self, argv: Sequence[str], procs_files: Sequence[str]) -> subprocess.Popen[bytes]:
        def join_cgroups() -> None:
            # Runs in the child before exec, so nspawn and everything it forks start in these cgroups.
            own_pid = str(os.getpid())
            for procs in procs_files:
                with open(procs, "w") as handle:
                    handle.write(own_pid)

        with open(self.paths.log, "ab") as log:
            log.write(f"--- berth: starting {self.request.name} at {time.ctime()}\n".encode())
            log.flush()
            child = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                # The module process is single-threaded, so preexec_fn is safe here.
                preexec_fn=join_cgroups,
            )
        return child

    # stop -------------------------------------------------------------------------------------

    def stop(self, run: RunState) -> None:
        """SIGTERM our nspawn (it powers the container off), SIGKILL after stop_timeout, then clean up."""
        procs = self.procs
        leader = procs.container_leader(run.pid)
        leader_stat = procs.stat(leader) if leader else None
        if procs.is_ours(run.pid, run.start_ticks):
            os.kill(run.pid, signal.SIGTERM)
            if not procs.wait_gone(run.pid, self.request.stop_timeout):
                self.warnings.append(
                    f"machine {self.request.name} did not power off in {self.request.stop_timeout}s; killed"
                )
                if procs.is_ours(run.pid, run.start_ticks):
                    os.kill(run.pid, signal.SIGKILL)
                # The container's PID 1 is nspawn's child: killing it takes down its whole PID namespace.
                if leader and leader_stat and procs.still_same(leader, leader_stat.start_ticks, run.pid):
                    os.kill(leader, signal.SIGKILL)
                procs.wait_gone(run.pid, 10)
                if leader:
                    procs.wait_gone(leader, 10)
        self.finish_stop(run)

    def finish_stop(self, run: RunState | None) -> None:
        self.overlay.umount()
        leftovers = remove_cgroups(sorted(set(run.cgroups.values())) if run else [])
        if leftovers:
            self.warnings.append(f"cgroups not removed (still busy): {', '.join(leftovers)}")
        self.paths.state.unlink(missing_ok=True)

    def cleanup_stale(self, stale: RunState | None) -> None:
        """Clean up after a machine that died (``stale``: its last recorded run, if observed)."""
        if stale is None and self.paths.state.is_file():
            try:
                stale = RunState.from_json(self.paths.state.read_text())
            except (OSError, ValueError, KeyError):
                stale = None
        if stale is not None and self.procs.is_ours(stale.pid, stale.start_ticks):
            self.stop(stale)
            return
        self.overlay.umount()
        remove_cgroups(sorted(set(self.cgroups.of(stale.cgroups if stale else None).values())))
        self.paths.state.unlink(missing_ok=True)

    # readiness --------------------------------------------------------------------------------

    def wait_ready(self, run: RunState, config: MachineConfig) -> float:
        """Wait until sshd listens in the machine and its address is configured; return seconds waited."""
        started = time.monotonic()
        deadline = started + self.request.wait_timeout
        while time.monotonic() < deadline:
            if not self.procs.is_ours(run.pid, run.start_ticks):
                self.finish_stop(run)
                raise NspawnError(f"machine {config.name} stopped while booting:\n{self.log_tail()}")
            if self.procs.sshd_ready(run.pid, config.address):
                return round(time.monotonic() - started, 2)
            time.sleep(0.1)
        raise NspawnError(
            f"machine {config.name} was not SSH-ready (sshd listening on {config.ip}) within "
            f"{self.request.wait_timeout}s; console log {self.paths.log}:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.paths.log.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return boot_hint(text) + "\n".join(text.splitlines()[-lines:])


def boot_hint(console: str) -> str:
    """What a machine's console says about the host, in words an operator can act on ('' if nothing).

    Many machines at once exhaust the host's inotify instances (every machine's systemd takes
    several; ``fs.inotify.max_user_instances`` is 128 by default): their systemd then stops at
    once with "Failed to allocate manager object: Too many open files"."""
    if "Too many open files" in console and "inotify" in console:
        try:
            with open("/proc/sys/fs/inotify/max_user_instances") as handle:
                limit = handle.read().strip()
        except OSError:
            limit = "?"
        return (
            f"the host ran out of inotify instances (fs.inotify.max_user_instances = {limit}; each "
            "machine's systemd takes several): run fewer machines, or raise it on the host, e.g. "
            "sysctl -w fs.inotify.max_user_instances=1024\n"
        )
    return ""
