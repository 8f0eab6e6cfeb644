# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What /proc says about Berth's machines: is a recorded PID still our nspawn, which process is the
container's PID 1, is the overlay mounted, and is sshd up inside the machine.

Stat lines and mount tables are parsed by ``common.procfs``; the parsers here read what only
nspawn machines need (a cmdline, a network namespace's TCP and FIB tables).
"""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

from ansible_collections.berth.fleet.plugins.module_utils.common.procfs import (
    ProcStat,
    mount_points,
    read_proc_stat,
)


def is_our_nspawn(cmdline: bytes, name: str) -> bool:
    argv = [part.decode(errors="replace") for part in cmdline.split(b"\0") if part]
    return bool(argv) and os.path.basename(argv[0]) == "systemd-nspawn" and f"--machine={name}" in argv


def listening_ports(proc_net_tcp: str) -> set[int]:
    """Ports in LISTEN state from a /proc/<pid>/net/tcp or tcp6 table."""
    ports: set[int] = set()
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A":
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def local_ipv4_addresses(fib_trie: str) -> set[str]:
    """Addresses configured on the machine, from /proc/<pid>/net/fib_trie (the '/32 host LOCAL' leaves)."""
    addresses: set[str] = set()
    last: str | None = None
    for line in fib_trie.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--") or stripped.startswith("+--"):
            last = stripped[3:].strip().split()[0]
        elif "/32 host LOCAL" in stripped and last is not None:
            addresses.add(last)
    return addresses


class MachineProcs:
    """One machine's processes as the host's /proc shows them (``proc`` is a fake /proc in tests)."""

    def __init__(self, name: str, proc: Path = Path("/proc")) -> None:
        self.name = name
        self.proc = proc

    def stat(self, pid: int) -> ProcStat | None:
        return read_proc_stat(pid, self.proc)

    def mount_points(self) -> set[str]:
        return set(mount_points(Path(self.proc, "self/mountinfo").read_text()))

    def is_ours(self, pid: int, start_ticks: int) -> bool:
        """Alive, not a zombie, started when we recorded, and still our machine's nspawn."""
        proc_stat = self.stat(pid)
        if proc_stat is None or proc_stat.state in ("Z", "X") or proc_stat.start_ticks != start_ticks:
            return False
        try:
            cmdline = Path(self.proc, str(pid), "cmdline").read_bytes()
        except OSError:
            return False
        return is_our_nspawn(cmdline, self.name)

    def children(self, pid: int) -> list[int]:
        children_file = Path(self.proc, str(pid), "task", str(pid), "children")
        try:
            return [int(child) for child in children_file.read_text().split()]
        except OSError:
            return []

    def container_leader(self, pid: int) -> int | None:
        """The machine's PID 1 as the host sees it: nspawn's child."""
        children = self.children(pid)
        return children[0] if children else None

    def still_same(self, pid: int, start_ticks: int, parent: int) -> bool:
        """The process started at start_ticks, still a child of parent (or reparented to init)."""
        proc_stat = self.stat(pid)
        if proc_stat is None:
            return False
        return proc_stat.start_ticks == start_ticks and proc_stat.ppid in (parent, 1)

    def wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc_stat = self.stat(pid)
            if proc_stat is None or proc_stat.state in ("Z", "X"):
                return True
            time.sleep(0.05)
        return False

    def sshd_ready(self, pid: int, address: str) -> bool:
        """sshd listens in the machine of nspawn ``pid`` and its ``address`` (with prefix) is configured."""
        leader = self.container_leader(pid)
        if leader is None:
            return False
        net = Path(self.proc, str(leader), "net")
        try:
            ports = listening_ports((net / "tcp").read_text()) | listening_ports((net / "tcp6").read_text())
            addresses = local_ipv4_addresses((net / "fib_trie").read_text())
        except OSError:
            return False
        interface = ipaddress.ip_interface(address)
        if interface.version == 6:
            return 22 in ports
        return 22 in ports and str(interface.ip) in addresses
