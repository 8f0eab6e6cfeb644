# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's hypervisor: libvirtd (and virtlogd) running inside the lab's network namespace.

A domain's bridge interface lands in libvirtd's own network namespace, so the lab's VMs only reach
the lab's bridges when libvirtd runs in the lab namespace. There is one libvirtd per machine (its
sockets and state live under /run/libvirt), so: if none runs, Berth starts one inside the lab
namespace and records that it did (pid and start time); if one runs in the lab namespace, it is
used as is; if one runs anywhere else, nothing is touched and the error says so. Stopping only ever
stops a daemon that Berth's record says Berth started, and only once it has no running domain.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.command import Runner, subprocess_runner
from ansible_collections.berth.fleet.plugins.module_utils.common.netns import netns_path
from ansible_collections.berth.fleet.plugins.module_utils.common.procfs import parse_proc_stat

DAEMONS = ("virtlogd", "libvirtd")  # start order; stop in reverse
RECORD_DIR = Path("/run/berth")
RUN_DIR = Path("/run")


class LabVirtError(Exception):
    """Anything that stops the lab's libvirtd from being checked, started or stopped."""


@dataclass(frozen=True)
class Daemon:
    name: str
    pid: int
    start_time: str  # field 22 of /proc/<pid>/stat: tells a pid apart from a reused one
    netns: int  # inode of its network namespace

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "start_time": self.start_time}


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


class LabLibvirtd:
    def __init__(
        self,
        namespace: str,
        runner: Runner = subprocess_runner,
        proc: Path = Path("/proc"),
        run_dir: Path = RUN_DIR,
        record_dir: Path = RECORD_DIR,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespace = namespace
        self.runner = runner
        self.proc = proc
        self.run_dir = run_dir
        self.record_path = record_dir / "lab-libvirtd.json"
        self.sleep = sleep
        self.clock = clock

    # --- observe

    def daemon(self, name: str) -> Daemon | None:
        text = _read(self.run_dir / f"{name}.pid")
        if not text or not text.strip().isdigit():
            return None
        pid = int(text.strip())
        stat = _read(self.proc / str(pid) / "stat")
        comm = (_read(self.proc / str(pid) / "comm") or "").strip()
        if stat is None or comm != name:
            return None  # a stale pid file
        start_time = str(parse_proc_stat(stat).start_ticks)
        try:
            netns = os.stat(self.proc / str(pid) / "ns/net").st_ino
        except OSError:
            return None
        return Daemon(name, pid, start_time, netns)

    def lab_netns(self) -> int:
        try:
            return os.stat(netns_path(self.namespace)).st_ino
        except OSError:
            raise LabVirtError(
                f"lab namespace {self.namespace} does not exist: create the lab network first "
                "(berth.fleet.lab_network, run by provision.yml)"
            ) from None

    def record(self) -> dict[str, Any]:
        text = _read(self.record_path)
        try:
            return json.loads(text) if text else {}
        except ValueError:
            return {}

    def started_by_berth(self, daemon: Daemon) -> bool:
        mine = self.record().get("daemons", {}).get(daemon.name, {})
        return bool(mine) and (mine.get("pid"), mine.get("start_time")) == (daemon.pid, daemon.start_time)

    def status(self) -> dict[str, Any]:
        daemons = {name: self.daemon(name) for name in DAEMONS}
        return {
            name: dict(daemon.as_dict(), berth_started=self.started_by_berth(daemon)) if daemon else None
            for name, daemon in daemons.items()
        }

    # --- running

    def running(self, check_mode: bool, timeout: float = 30) -> tuple[bool, dict[str, Any]]:
        if check_mode and not netns_path(self.namespace).exists():
            return True, self.status()  # the lab network is not there yet: provision would create both
        lab = self.lab_netns()
        to_start = []
        for name in DAEMONS:
            daemon = self.daemon(name)
            if daemon is None:
                to_start.append(name)
            elif daemon.netns != lab:
                raise LabVirtError(
                    f"{name} (pid {daemon.pid}) is already running outside the lab namespace "
                    f"{self.namespace}: a VM's interface would land in that daemon's network namespace, "
                    f"not on the lab's bridges. Stop it (kill {daemon.pid}) and run provision again; "
                    "Berth then starts it inside the lab"
                )
        if not to_start or check_mode:
            return bool(to_start), self.status()
        started: dict[str, Any] = dict(self.record().get("daemons", {}))
        for name in to_start:
            result = self.runner(["nsenter", f"--net={netns_path(self.namespace)}", name, "-d"])
            if result.rc != 0:
                raise LabVirtError(f"could not start {name} in {self.namespace}: {result.stderr.strip()}")
            daemon = self._wait_for(name, timeout)
            started[name] = daemon.as_dict()
            self._write_record({"namespace": self.namespace, "daemons": started})
        self._wait_for_socket(timeout)
        return True, self.status()

    def _wait_for(self, name: str, timeout: float) -> Daemon:
        deadline = self.clock() + timeout
        while True:
            daemon = self.daemon(name)
            if daemon is not None:
                return daemon
            if self.clock() >= deadline:
                raise LabVirtError(f"{name} did not write {self.run_dir}/{name}.pid within {timeout:g} s")
            self.sleep(0.1)

    def _wait_for_socket(self, timeout: float) -> None:
        deadline = self.clock() + timeout
        while self.runner(["virsh", "-c", "qemu:///system", "uri"]).rc != 0:
            if self.clock() >= deadline:
                raise LabVirtError(f"libvirtd did not answer on qemu:///system within {timeout:g} s")
            self.sleep(0.2)

    def _write_record(self, record: dict[str, Any]) -> None:
        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.record_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, self.record_path)

    # --- stopped

    def stopped(self, check_mode: bool, timeout: float = 30) -> tuple[bool, dict[str, Any]]:
        ours = [
            daemon
            for name in reversed(DAEMONS)
            if (daemon := self.daemon(name)) is not None and self.started_by_berth(daemon)
        ]
        if not ours:
            if not check_mode:
                self.record_path.unlink(missing_ok=True)
            return False, self.status()
        if any(daemon.name == "libvirtd" for daemon in ours):
            running = self.runner(["virsh", "-c", "qemu:///system", "list", "--name"])
            names = [line for line in running.stdout.splitlines() if line.strip()]
            if running.rc != 0:
                raise LabVirtError(
                    f"cannot list libvirtd's domains ({running.stderr.strip()}); libvirtd was left running"
                )
            if names:
                raise LabVirtError(
                    f"libvirtd still runs domain(s) {', '.join(names)}: destroy them first "
                    "(playbooks/destroy.yml does); libvirtd was left running"
                )
        if check_mode:
            return True, self.status()
        for daemon in ours:
            os.kill(daemon.pid, signal.SIGTERM)
            deadline = self.clock() + timeout
            while self.daemon(daemon.name) == daemon:
                if self.clock() >= deadline:
                    os.kill(daemon.pid, signal.SIGKILL)
                    break
                self.sleep(0.1)
        self.record_path.unlink(missing_ok=True)
        return True, self.status()
