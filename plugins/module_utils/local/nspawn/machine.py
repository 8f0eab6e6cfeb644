# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Local lab hosts: systemd-nspawn machines booted from a shared read-only base image.

Each machine is a per-host overlayfs (lower: the base rootfs, upper/work under the machine's own
directory) booted by ``systemd-nspawn --boot`` inside the lab network namespace, detached from the
caller and recorded in a state file. Berth writes every per-machine file into the upper layer: the
hostname, a systemd-networkd config for ``host0``, a fresh ed25519 SSH host key and root's
authorized_keys.

systemd is not PID 1 on the machines this runs on, so nspawn cannot register a scope and ignores
``--property=``. Each machine therefore gets its own cgroup in every hierarchy Berth uses, created
directly in cgroupfs under the caller's cgroup; resource limits are written there and the nspawn
process joins them before it execs. A separate cgroup per machine also stops two machines' systemd
instances from sharing one ``payload`` cgroup, which is what nspawn does when started from the root.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.command import (
    CommandResult,
    Runner,
    subprocess_runner,
)
from ansible_collections.berth.fleet.plugins.module_utils.common.fs import FileLock
from ansible_collections.berth.fleet.plugins.module_utils.common.netns import netns_path
from ansible_collections.berth.fleet.plugins.module_utils.common.procfs import (
    ProcStat,
    mount_points,
    parse_proc_stat,
)
from ansible_collections.berth.fleet.plugins.module_utils.common.rules import (
    ifname_problems as validate_ifname,
)

DEFAULT_MACHINES_DIR = Path("/var/lib/berth/machines")
STATES = ("running", "stopped", "present", "absent")
CPU_PERIOD_US = 100_000
MIN_MEMORY_MIB = 32
MAX_CPU_QUOTA = 100 * 1024

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_PUBKEY_RE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-\S+) [A-Za-z0-9+/=]+( .*)?$")
_V1_CONTROLLERS = frozenset(
    {
        *("blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "hugetlb", "memory", "misc"),
        *("net_cls", "net_prio", "perf_event", "pids", "rdma"),
    }
)


class NspawnError(Exception):
    """Anything that stops a machine from being validated, created, started, stopped or removed."""


# --- the machine's configuration ----------------------------------------------------------------


@dataclass(frozen=True)
class MachineConfig:
    """Everything that defines a machine; recorded in machine.json when it is created."""

    name: str
    hostname: str
    rootfs: str
    namespace: str
    bridge: str
    address: str  # with prefix, e.g. 10.77.1.10/24
    gateway: str | None
    authorized_key: str
    cpu_quota: int | None = None  # percent of one CPU
    memory_max: int | None = None  # MiB

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.address).ip)

    def summary(self, state: str) -> dict[str, Any]:
        return {
            "state": state,
            "hostname": self.hostname,
            "address": self.address,
            "gateway": self.gateway,
            "bridge": self.bridge,
            "namespace": self.namespace,
            "cpu_quota": self.cpu_quota,
            "memory_max": self.memory_max,
        }

    def boot_relevant(self) -> tuple[Any, ...]:
        """Fields that only take effect when the machine boots (a running machine is restarted)."""
        return (self.hostname, self.namespace, self.bridge, self.address, self.gateway)


@dataclass(frozen=True)
class MachineRequest:
    """Module parameters; None means "keep what the machine already has" for an existing machine."""

    name: str
    state: str = "running"
    hostname: str | None = None
    rootfs: str | None = None
    namespace: str | None = None
    bridge: str | None = None
    address: str | None = None
    gateway: str | None = None
    authorized_key: str | None = None
    cpu_quota: int | None = None
    memory_max: int | None = None
    machines_dir: Path = DEFAULT_MACHINES_DIR
    wait: bool = True
    wait_timeout: float = 60.0
    stop_timeout: float = 30.0

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> MachineRequest:
        request = cls(
            name=str(params["name"]),
            state=str(params.get("state") or "running"),
            hostname=params.get("hostname"),
            rootfs=params.get("rootfs"),
            namespace=params.get("namespace"),
            bridge=params.get("bridge"),
            address=params.get("address"),
            gateway=params.get("gateway"),
            authorized_key=(params.get("authorized_key") or "").strip() or None,
            cpu_quota=params.get("cpu_quota"),
            memory_max=params.get("memory_max"),
            machines_dir=Path(params.get("machines_dir") or DEFAULT_MACHINES_DIR),
            wait=bool(params.get("wait", True)),
            wait_timeout=float(params.get("wait_timeout") or 60),
            stop_timeout=float(params.get("stop_timeout") or 30),
        )
        problems = validate_request(request)
        if problems:
            raise NspawnError(f"invalid parameters for machine {request.name!r}: " + "; ".join(problems))
        return request

    def missing_for_create(self) -> list[str]:
        return [
            param
            for param in ("rootfs", "namespace", "bridge", "address", "authorized_key")
            if getattr(self, param) is None
        ]

    def resolve(self, recorded: MachineConfig | None, strict: bool = True) -> MachineConfig:
        """The configuration to converge to: given parameters over what the machine already has.

        With strict=False (check mode) a machine that would be created may lack parameters that an
        earlier, skipped task would have produced (a key, an image path); the caller warns instead.
        """
        if recorded is None and strict and self.missing_for_create():
            raise NspawnError(
                f"machine {self.name!r} does not exist yet; creating it needs: "
                + ", ".join(self.missing_for_create())
            )
        base = recorded or MachineConfig(
            name=self.name,
            hostname=self.name,
            rootfs="",
            namespace=self.namespace or "",
            bridge="",
            address="",
            gateway=None,
            authorized_key="",
        )
        changes: dict[str, Any] = {}
        for param in ("hostname", "rootfs", "namespace", "bridge", "address", "gateway", "authorized_key"):
            value = getattr(self, param)
            if value is not None:
                changes[param] = str(Path(value)) if param == "rootfs" else value
        # Like every other parameter, an omitted limit keeps what the machine has; 0 lifts it.
        for param in ("cpu_quota", "memory_max"):
            value = getattr(self, param)
            if value is not None:
                changes[param] = value or None
        config = replace(base, **changes)
        if recorded is not None and config.rootfs != recorded.rootfs:
            raise NspawnError(
                f"machine {self.name!r} was created from {recorded.rootfs}; its upper layer cannot move to "
                f"{config.rootfs}. Recreate it (state=absent, then state=running)"
            )
        problems = validate_gateway(config)
        if problems:
            raise NspawnError(f"invalid parameters for machine {self.name!r}: " + "; ".join(problems))
        return config


def validate_request(request: MachineRequest) -> list[str]:
    problems: list[str] = []
    if not _NAME_RE.match(request.name):
        problems.append(
            f"name {request.name!r} must be 1-64 lowercase letters, digits and '-' (a valid machine name)"
        )
    if request.state not in STATES:
        problems.append(f"state must be one of {', '.join(STATES)}")
    if request.hostname is not None and not _HOSTNAME_RE.match(request.hostname):
        problems.append(f"hostname {request.hostname!r} is not a valid lowercase hostname")
    if request.namespace is not None and not re.match(
        r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", request.namespace
    ):
        problems.append(f"namespace {request.namespace!r} is not a valid network namespace name")
    if request.bridge is not None:
        problems.extend(validate_ifname(request.bridge, "bridge"))
    if request.rootfs is not None:
        if not request.rootfs.startswith("/"):
            problems.append(f"rootfs must be an absolute path, got {request.rootfs!r}")
        elif any(char in request.rootfs for char in ",:\\ "):
            problems.append(f"rootfs {request.rootfs!r} has a character overlayfs cannot take (',:\\ ')")
    if request.address is not None:
        if "/" not in request.address:
            problems.append(f"address {request.address!r} needs a prefix, e.g. 10.77.1.10/24")
        else:
            try:
                ipaddress.ip_interface(request.address)
            except ValueError as exc:
                problems.append(f"address: {exc}")
    if request.gateway is not None:
        try:
            ipaddress.ip_address(request.gateway)
        except ValueError as exc:
            problems.append(f"gateway: {exc}")
    if request.authorized_key is not None and not _PUBKEY_RE.match(request.authorized_key):
        problems.append("authorized_key must be one OpenSSH public key line: 'ssh-ed25519 AAAA... comment'")
    if request.cpu_quota is not None and not 0 <= request.cpu_quota <= MAX_CPU_QUOTA:
        # Above 100 x the host's CPUs a quota is simply not binding; it is still accepted.
        problems.append(
            f"cpu_quota is a percentage of one CPU (150 = 1.5 CPUs, 0 = no limit): 0..{MAX_CPU_QUOTA}"
        )
    memory_max = request.memory_max
    if memory_max is not None and (memory_max < 0 or 0 < memory_max < MIN_MEMORY_MIB):
        problems.append(f"memory_max is in MiB (0 = no limit); systemd needs at least {MIN_MEMORY_MIB}")
    if not request.machines_dir.is_absolute():
        problems.append("machines_dir must be an absolute path")
    if request.wait_timeout <= 0 or request.stop_timeout <= 0:
        problems.append("wait_timeout and stop_timeout must be positive")
    return problems


def validate_gateway(config: MachineConfig) -> list[str]:
    if config.gateway is None or not config.address:
        return []
    interface = ipaddress.ip_interface(config.address)
    gateway = ipaddress.ip_address(config.gateway)
    if gateway not in interface.network:
        return [f"gateway {gateway} is not in the machine's subnet {interface.network}"]
    if gateway == interface.ip:
        return [f"gateway {gateway} is the machine's own address"]
    return []


# --- files Berth writes into a machine ----------------------------------------------------------


def render_network_unit(config: MachineConfig) -> str:
    lines = [
        "# Written by Berth: the machine's static address on its data-center bridge.",
        "[Match]",
        "Name=host0",
        "",
        "[Network]",
        f"Address={config.address}",
    ]
    if config.gateway:
        lines.append(f"Gateway={config.gateway}")
    lines += ["LinkLocalAddressing=no", "IPv6AcceptRA=no", ""]
    return "\n".join(lines)


def render_hosts(config: MachineConfig) -> str:
    short = config.hostname.split(".", 1)[0]
    names = config.hostname if short == config.hostname else f"{config.hostname} {short}"
    return f"127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n{config.ip}\t{names}\n"


def machine_files(config: MachineConfig) -> dict[str, tuple[str, int]]:
    """Relative path -> (content, mode) of every per-machine file except the host key."""
    return {
        "etc/hostname": (config.hostname + "\n", 0o644),
        "etc/hosts": (render_hosts(config), 0o644),
        "etc/systemd/network/10-host0.network": (render_network_unit(config), 0o644),
        "root/.ssh/authorized_keys": (config.authorized_key.strip() + "\n", 0o600),
    }


HOST_KEY = "etc/ssh/ssh_host_ed25519_key"


# --- paths and records --------------------------------------------------------------------------


@dataclass(frozen=True)
class MachinePaths:
    root: Path

    @classmethod
    def of(cls, machines_dir: Path, name: str) -> MachinePaths:
        return cls(machines_dir / name)

    @property
    def upper(self) -> Path:
        return self.root / "upper"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def config(self) -> Path:
        return self.root / "machine.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def log(self) -> Path:
        return self.root / "console.log"

    @property
    def host_key_pub(self) -> Path:
        return self.root / "ssh_host_ed25519_key.pub"


@dataclass(frozen=True)
class RunState:
    """The nspawn process Berth started: what it takes to recognise it again later."""

    pid: int
    start_ticks: int  # field 22 of /proc/<pid>/stat: tells a recycled PID from ours
    cgroups: dict[str, str]  # role -> directory, as created at start (the caller's cgroup may differ later)
    started_at: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunState:
        data = json.loads(text)
        return cls(
            pid=int(data["pid"]),
            start_ticks=int(data["start_ticks"]),
            cgroups={str(role): str(path) for role, path in dict(data.get("cgroups", {})).items()},
            started_at=float(data.get("started_at", 0.0)),
        )


def config_to_json(config: MachineConfig) -> str:
    return json.dumps(asdict(config), indent=2, sort_keys=True) + "\n"


def config_from_json(text: str) -> MachineConfig:
    data = json.loads(text)
    return MachineConfig(**{key: data.get(key) for key in MachineConfig.__dataclass_fields__})


# --- /proc parsing ------------------------------------------------------------------------------


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


# --- cgroups ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hierarchy:
    mount: str
    version: int
    controllers: frozenset[str]  # v1: mount options such as {"memory"} or {"name=systemd"}; v2: enabled ones
    own_path: str  # the caller's cgroup in this hierarchy

    def roles(self) -> set[str]:
        if self.version == 2:
            return {"unified"} | ({"memory", "cpu"} & self.controllers)
        found = set()
        if "name=systemd" in self.controllers:
            found.add("systemd")
        found |= {"memory", "cpu"} & self.controllers
        return found


def parse_cgroup_hierarchies(
    mountinfo: str, proc_self_cgroup: str, v2_controllers: Mapping[str, str] | None = None
) -> list[Hierarchy]:
    """The cgroup hierarchies mounted here and where the caller sits in each of them.

    ``v2_controllers`` maps a cgroup2 mount point to the text of the caller's ``cgroup.controllers``
    there (the controllers a child cgroup could use); it is read by the caller to keep this pure.
    """
    own: dict[frozenset[str], str] = {}
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            key = frozenset(parts[1].split(",")) if parts[1] else frozenset({"<v2>"})
            own[key] = parts[2]
    hierarchies: list[Hierarchy] = []
    for line in mountinfo.splitlines():
        if " - " not in line:
            continue
        pre, post = line.split(" - ", 1)
        post_fields = post.split(" ")
        fstype = post_fields[0]
        mount_point = pre.split(" ")[4]
        options = set(post_fields[2].split(",")) if len(post_fields) > 2 else set()
        if fstype == "cgroup":
            controllers = frozenset(
                opt for opt in options if opt in _V1_CONTROLLERS or opt.startswith("name=")
            )
            if controllers in own:
                hierarchies.append(Hierarchy(mount_point, 1, controllers, own[controllers]))
        elif fstype == "cgroup2" and frozenset({"<v2>"}) in own:
            text = (v2_controllers or {}).get(mount_point, "")
            hierarchies.append(Hierarchy(mount_point, 2, frozenset(text.split()), own[frozenset({"<v2>"})]))
    return hierarchies


def machine_cgroups(hierarchies: Sequence[Hierarchy], name: str) -> dict[str, str]:
    """Role -> cgroup directory for one machine: <mount><caller's cgroup>/berth/<name>."""
    paths: dict[str, str] = {}
    for hierarchy in hierarchies:
        directory = os.path.join(hierarchy.mount, hierarchy.own_path.lstrip("/"), "berth", name)
        for role in sorted(hierarchy.roles()):
            paths.setdefault(role, directory)
    if "systemd" not in paths and "unified" in paths:
        paths["systemd"] = paths["unified"]
    return paths


def limit_writes(
    hierarchies: Sequence[Hierarchy],
    cgroups: Mapping[str, str],
    cpu_quota: int | None,
    memory_max: int | None,
) -> list[tuple[str, str]]:
    """(file, value) pairs that set, or lift, a machine's limits in its cgroups."""
    version = {role: h.version for h in hierarchies for role in h.roles()}
    writes: list[tuple[str, str]] = []
    if "memory" in cgroups:
        directory = cgroups["memory"]
        if version.get("memory") == 2:
            value = str(memory_max * 1024 * 1024) if memory_max else "max"
            writes.append((os.path.join(directory, "memory.max"), value))
        else:
            value = str(memory_max * 1024 * 1024) if memory_max else "-1"
            writes.append((os.path.join(directory, "memory.limit_in_bytes"), value))
    elif memory_max:
        raise NspawnError("memory_max is set but no memory cgroup controller is available on this machine")
    if "cpu" in cgroups:
        directory = cgroups["cpu"]
        quota = cpu_quota * CPU_PERIOD_US // 100 if cpu_quota else None
        if version.get("cpu") == 2:
            writes.append((os.path.join(directory, "cpu.max"), f"{quota or 'max'} {CPU_PERIOD_US}"))
        else:
            writes.append((os.path.join(directory, "cpu.cfs_period_us"), str(CPU_PERIOD_US)))
            writes.append((os.path.join(directory, "cpu.cfs_quota_us"), str(quota or -1)))
    elif cpu_quota:
        raise NspawnError("cpu_quota is set but no cpu cgroup controller is available on this machine")
    return writes


def read_cgroup_limits(hierarchies: Sequence[Hierarchy], cgroups: Mapping[str, str]) -> dict[str, int | None]:
    """The limits currently written in a machine's cgroups (None: unlimited or not readable)."""
    version = {role: h.version for h in hierarchies for role in h.roles()}
    limits: dict[str, int | None] = {"cpu_quota": None, "memory_max": None}
    if "memory" in cgroups:
        name = "memory.max" if version.get("memory") == 2 else "memory.limit_in_bytes"
        raw = _read_text(os.path.join(cgroups["memory"], name)).strip()
        if raw.isdigit() and int(raw) < 1 << 50:
            limits["memory_max"] = int(raw) // (1024 * 1024)
    if "cpu" in cgroups:
        if version.get("cpu") == 2:
            raw = _read_text(os.path.join(cgroups["cpu"], "cpu.max")).split(" ")[0]
        else:
            raw = _read_text(os.path.join(cgroups["cpu"], "cpu.cfs_quota_us")).strip()
        if raw.isdigit():
            limits["cpu_quota"] = int(raw) * 100 // CPU_PERIOD_US
    return limits


def _read_text(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def discover_hierarchies() -> list[Hierarchy]:
    mountinfo = Path("/proc/self/mountinfo").read_text()
    own = Path("/proc/self/cgroup").read_text()
    v2: dict[str, str] = {}
    own_v2 = next((line.split(":", 2)[2] for line in own.splitlines() if line.startswith("0::")), None)
    for line in mountinfo.splitlines():
        if " - cgroup2 " in line and own_v2 is not None:
            mount_point = line.split(" ")[4]
            v2[mount_point] = _read_text(os.path.join(mount_point, own_v2.lstrip("/"), "cgroup.controllers"))
    return parse_cgroup_hierarchies(mountinfo, own, v2)


def create_cgroups(hierarchies: Sequence[Hierarchy], cgroups: Mapping[str, str]) -> None:
    for directory in sorted(set(cgroups.values())):
        os.makedirs(directory, exist_ok=True)
    for hierarchy in hierarchies:
        if hierarchy.version != 2:
            continue
        wanted = {"memory", "cpu"} & hierarchy.controllers
        if not wanted:
            continue
        # cgroup v2 hands a controller to a child only when every ancestor enables it for its children.
        berth_dir = os.path.dirname(cgroups["unified"])
        for directory in (os.path.dirname(berth_dir), berth_dir):
            try:
                with open(os.path.join(directory, "cgroup.subtree_control"), "w") as handle:
                    handle.write(" ".join(f"+{ctrl}" for ctrl in sorted(wanted)))
            except OSError as exc:
                raise NspawnError(
                    f"cannot enable {', '.join(sorted(wanted))} for child cgroups of {directory}: {exc}"
                ) from exc


def write_limits(writes: Sequence[tuple[str, str]]) -> None:
    for path, value in writes:
        try:
            with open(path, "w") as handle:
                handle.write(value)
        except OSError as exc:
            raise NspawnError(f"cannot write {value} to {path}: {exc}") from exc


def remove_cgroups(directories: Sequence[str], timeout: float = 5.0) -> list[str]:
    """Remove each cgroup tree bottom-up (and its 'berth' parent if now empty); return what remains."""
    deadline = time.monotonic() + timeout
    remaining: list[str] = []
    for top in sorted(set(directories)):
        while os.path.isdir(top):
            try:
                for current, subdirs, _files in os.walk(top, topdown=False):
                    for sub in subdirs:
                        os.rmdir(os.path.join(current, sub))
                os.rmdir(top)
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                    remaining.append(top)
                    break
                time.sleep(0.05)
        parent = os.path.dirname(top)
        if os.path.basename(parent) == "berth":
            with contextlib.suppress(OSError):
                os.rmdir(parent)
    return remaining


def memory_usage_bytes(hierarchies: Sequence[Hierarchy], cgroups: Mapping[str, str]) -> int | None:
    if "memory" not in cgroups:
        return None
    version = {role: h.version for h in hierarchies for role in h.roles()}
    name = "memory.current" if version.get("memory") == 2 else "memory.usage_in_bytes"
    raw = _read_text(os.path.join(cgroups["memory"], name)).strip()
    return int(raw) if raw.isdigit() else None


# --- commands -----------------------------------------------------------------------------------


def nspawn_argv(config: MachineConfig, merged: Path) -> list[str]:
    return [
        "nsenter",
        f"--net={netns_path(config.namespace)}",
        "systemd-nspawn",
        "--boot",
        "--register=no",
        "--keep-unit",
        "--console=passive",
        "--link-journal=no",
        "--resolv-conf=off",
        "--timezone=off",
        f"--network-bridge={config.bridge}",
        f"--machine={config.name}",
        f"--hostname={config.hostname}",
        "-D",
        str(merged),
    ]


def overlay_mount_argv(rootfs: str, paths: MachinePaths) -> list[str]:
    options = f"lowerdir={rootfs},upperdir={paths.upper},workdir={paths.work}"
    return ["mount", "-t", "overlay", "overlay", "-o", options, str(paths.merged)]


def host_key_argv(target: Path, hostname: str) -> list[str]:
    return ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{hostname}", "-f", str(target)]


# --- observed state -----------------------------------------------------------------------------


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


# --- the manager --------------------------------------------------------------------------------


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
        self._hierarchies = list(hierarchies) if hierarchies is not None else None
        self.actions: list[str] = []
        self.warnings: list[str] = []

    @property
    def hierarchies(self) -> list[Hierarchy]:
        if self._hierarchies is None:
            self._hierarchies = discover_hierarchies()
        return self._hierarchies

    # observe ----------------------------------------------------------------------------------

    def observe(self) -> Observed:
        if not self.paths.config.is_file():
            return Observed(exists=False, mounted=self._is_mounted())
        try:
            config = config_from_json(self.paths.config.read_text())
        except (OSError, ValueError, TypeError) as exc:
            raise NspawnError(f"unreadable machine record {self.paths.config}: {exc}") from exc
        observed = Observed(exists=True, config=config, mounted=self._is_mounted())
        if self.paths.host_key_pub.is_file():
            observed.host_key = " ".join(self.paths.host_key_pub.read_text().split()[:2])
        if self.paths.state.is_file():
            try:
                run = RunState.from_json(self.paths.state.read_text())
            except (OSError, ValueError, KeyError) as exc:
                raise NspawnError(f"unreadable state file {self.paths.state}: {exc}") from exc
            if self._is_ours(run.pid, run.start_ticks):
                observed.run = run
            else:
                observed.stale_run = run
        return observed

    def _is_mounted(self) -> bool:
        return str(self.paths.merged) in set(mount_points(Path(self.proc, "self/mountinfo").read_text()))

    def _proc_stat(self, pid: int) -> ProcStat | None:
        try:
            return parse_proc_stat(Path(self.proc, str(pid), "stat").read_text())
        except (OSError, IndexError, ValueError):
            return None

    def _is_ours(self, pid: int, start_ticks: int) -> bool:
        """Alive, not a zombie, started when we recorded, and still our machine's nspawn."""
        proc_stat = self._proc_stat(pid)
        if proc_stat is None or proc_stat.state in ("Z", "X") or proc_stat.start_ticks != start_ticks:
            return False
        try:
            cmdline = Path(self.proc, str(pid), "cmdline").read_bytes()
        except OSError:
            return False
        return is_our_nspawn(cmdline, self.request.name)

    def _children(self, pid: int) -> list[int]:
        children_file = Path(self.proc, str(pid), "task", str(pid), "children")
        try:
            return [int(child) for child in children_file.read_text().split()]
        except OSError:
            return []

    def container_leader(self, pid: int) -> int | None:
        """The machine's PID 1 as the host sees it: nspawn's child."""
        children = self._children(pid)
        return children[0] if children else None

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
            result.memory_bytes = memory_usage_bytes(self.hierarchies, self._cgroups_of(final.run))
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
                self._create(config)
            return
        recorded = observed.config
        if recorded is None:  # exists implies a record; kept for the type checker
            raise NspawnError(f"machine {config.name} has no readable record in {self.paths.config}")
        changed = [
            key
            for key in ("hostname", "address", "gateway", "bridge", "namespace", "authorized_key")
            if getattr(recorded, key) != getattr(config, key)
        ]
        wanted_limits = {"cpu_quota": config.cpu_quota, "memory_max": config.memory_max}
        limits_changed = {"cpu_quota": recorded.cpu_quota, "memory_max": recorded.memory_max} != wanted_limits
        if observed.run is not None and not limits_changed:
            # What the kernel enforces is the truth: a limit changed behind Berth's back is drift.
            enforced = read_cgroup_limits(self.hierarchies, self._cgroups_of(observed.run))
            limits_changed = enforced != wanted_limits
        restart = observed.run is not None and recorded.boot_relevant() != config.boot_relevant()
        if changed:
            self.actions.append(f"reconfigure {', '.join(changed)}")
        if limits_changed:
            self.actions.append(f"set limits cpu_quota={config.cpu_quota} memory_max={config.memory_max}")
        if restart:
            self.actions.append("restart to apply the new network/hostname")
        if check_mode or not (changed or limits_changed or recorded != config):
            return
        if changed:
            self._write_machine_files(config, mounted=observed.mounted)
        if limits_changed and observed.run is not None:
            cgroups = self._cgroups_of(observed.run)
            write_limits(limit_writes(self.hierarchies, cgroups, config.cpu_quota, config.memory_max))
        self.paths.config.write_text(config_to_json(config))
        if restart and observed.run is not None:
            self._stop(observed.run)
            observed.run = None
            observed.mounted = False

    def _ensure_running(self, config: MachineConfig, observed: Observed, check_mode: bool) -> None:
        if observed.run is not None:
            return
        self.actions.append(f"start machine {config.name} on {config.namespace}/{config.bridge}")
        if not check_mode:
            self._cleanup_stale(observed)
            self._start(config)

    def _ensure_stopped(self, observed: Observed, check_mode: bool) -> None:
        if observed.run is not None:
            self.actions.append(f"stop machine {self.request.name}")
            if not check_mode:
                self._stop(observed.run)
        elif observed.mounted or observed.stale_run is not None:
            self.actions.append("clean up after a machine that died")
            if not check_mode:
                self._cleanup_stale(observed)

    def _ensure_absent(self, observed: Observed, check_mode: bool) -> None:
        if observed.run is not None:
            self.actions.append(f"stop machine {self.request.name}")
            if not check_mode:
                self._stop(observed.run)
        leftover_cgroups = [
            path
            for path in sorted(set(machine_cgroups(self.hierarchies, self.request.name).values()))
            if os.path.isdir(path)
        ]
        if leftover_cgroups and not (observed.exists or self.paths.root.exists()):
            self.actions.append(f"remove leftover cgroups {', '.join(leftover_cgroups)}")
            if not check_mode:
                remove_cgroups(leftover_cgroups)
        if observed.exists or self.paths.root.exists() or observed.mounted:
            self.actions.append(f"remove {self.paths.root}")
            if not check_mode:
                self._cleanup_stale(observed)
                if self._is_mounted():
                    raise NspawnError(f"{self.paths.merged} is still mounted; not removing {self.paths.root}")
                shutil.rmtree(self.paths.root)

    # mutations --------------------------------------------------------------------------------

    def _create(self, config: MachineConfig) -> None:
        if self.paths.root.exists():
            # Left by an interrupted create (no machine.json): nothing in it is worth keeping.
            if self._is_mounted():
                self._umount()
            shutil.rmtree(self.paths.root)
        for directory in (self.paths.upper, self.paths.work, self.paths.merged):
            directory.mkdir(parents=True, mode=0o755)
        os.chmod(self.paths.root, 0o700)
        self._write_machine_files(config, mounted=False)
        self._ensure_parents(self.paths.upper, HOST_KEY, Path(config.rootfs))
        key = self.paths.upper / HOST_KEY
        result = self.runner(host_key_argv(key, config.hostname))
        if result.rc != 0:
            raise NspawnError(f"ssh-keygen failed: {result.stderr.strip()}")
        shutil.copyfile(f"{key}.pub", self.paths.host_key_pub)
        # Written last: a directory without machine.json is an unfinished create.
        self.paths.config.write_text(config_to_json(config))

    def _write_machine_files(self, config: MachineConfig, mounted: bool) -> None:
        # Overlayfs forbids touching the upper layer while it is mounted: write through the mount then.
        base = self.paths.merged if mounted else self.paths.upper
        for relative, (content, mode) in machine_files(config).items():
            self._ensure_parents(base, relative, Path(config.rootfs))
            target = base / relative
            tmp = target.with_name(f".{target.name}.berth-tmp")
            tmp.write_text(content)
            os.chmod(tmp, mode)
            os.replace(tmp, target)

    @staticmethod
    def _ensure_parents(base: Path, relative: str, lower: Path) -> None:
        """Create the parents of base/relative with the lower layer's owner and mode.

        A directory created in the upper layer replaces the metadata of the lower one in the
        merged view, so /root must stay 0700 and /etc 0755.
        """
        parts = Path(relative).parts[:-1]
        for depth in range(1, len(parts) + 1):
            rel = Path(*parts[:depth])
            target = base / rel
            if target.is_dir():
                continue
            template = lower / rel
            if template.is_dir():
                st = template.stat()
                target.mkdir(mode=stat.S_IMODE(st.st_mode))
                os.chown(target, st.st_uid, st.st_gid)
                os.chmod(target, stat.S_IMODE(st.st_mode))
            else:
                target.mkdir(mode=0o700 if rel.name == ".ssh" else 0o755)

    def _cgroups_of(self, run: RunState | None) -> dict[str, str]:
        if run is not None and run.cgroups:
            return dict(run.cgroups)
        return machine_cgroups(self.hierarchies, self.request.name)

    def _start(self, config: MachineConfig) -> None:
        paths = self.paths
        if not self._is_mounted():
            self._run_checked(overlay_mount_argv(config.rootfs, paths), "mount the machine's overlay")
        cgroups = machine_cgroups(self.hierarchies, config.name)
        if "systemd" not in cgroups:
            raise NspawnError("no name=systemd or cgroup2 hierarchy is mounted: systemd-nspawn cannot run")
        try:
            create_cgroups(self.hierarchies, cgroups)
            write_limits(limit_writes(self.hierarchies, cgroups, config.cpu_quota, config.memory_max))
            procs_files = [os.path.join(path, "cgroup.procs") for path in sorted(set(cgroups.values()))]
            child = self._spawn(nspawn_argv(config, paths.merged), procs_files)
        except BaseException:
            remove_cgroups(sorted(set(cgroups.values())))
            self._umount()
            raise
        proc_stat = self._proc_stat(child.pid)
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
                self._finish_stop(run)
                raise NspawnError(f"systemd-nspawn exited ({returncode}) at start:\n{self._log_tail()}")
            if self._is_ours(run.pid, run.start_ticks) and self.container_leader(run.pid) is not None:
                return
            if time.monotonic() > deadline:
                self._stop(run)
                raise NspawnError(f"no container after {timeout}s:\n{self._log_tail()}")
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

    def _stop(self, run: RunState) -> None:
        """SIGTERM our nspawn (it powers the container off), SIGKILL after stop_timeout, then clean up."""
        leader = self.container_leader(run.pid)
        leader_stat = self._proc_stat(leader) if leader else None
        if self._is_ours(run.pid, run.start_ticks):
            os.kill(run.pid, signal.SIGTERM)
            if not self._wait_gone(run.pid, self.request.stop_timeout):
                self.warnings.append(
                    f"machine {self.request.name} did not power off in {self.request.stop_timeout}s; killed"
                )
                if self._is_ours(run.pid, run.start_ticks):
                    os.kill(run.pid, signal.SIGKILL)
                # The container's PID 1 is nspawn's child: killing it takes down its whole PID namespace.
                if leader and leader_stat and self._still_same(leader, leader_stat.start_ticks, run.pid):
                    os.kill(leader, signal.SIGKILL)
                self._wait_gone(run.pid, 10)
                if leader:
                    self._wait_gone(leader, 10)
        self._finish_stop(run)

    def _still_same(self, pid: int, start_ticks: int, parent: int) -> bool:
        proc_stat = self._proc_stat(pid)
        if proc_stat is None:
            return False
        return proc_stat.start_ticks == start_ticks and proc_stat.ppid in (parent, 1)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc_stat = self._proc_stat(pid)
            if proc_stat is None or proc_stat.state in ("Z", "X"):
                return True
            time.sleep(0.05)
        return False

    def _finish_stop(self, run: RunState | None) -> None:
        self._umount()
        leftovers = remove_cgroups(sorted(set(run.cgroups.values())) if run else [])
        if leftovers:
            self.warnings.append(f"cgroups not removed (still busy): {', '.join(leftovers)}")
        self.paths.state.unlink(missing_ok=True)

    def _cleanup_stale(self, observed: Observed) -> None:
        stale = observed.stale_run
        if stale is None and self.paths.state.is_file():
            try:
                stale = RunState.from_json(self.paths.state.read_text())
            except (OSError, ValueError, KeyError):
                stale = None
        if stale is not None and self._is_ours(stale.pid, stale.start_ticks):
            self._stop(stale)
            return
        self._umount()
        remove_cgroups(sorted(set(self._cgroups_of(stale).values())))
        self.paths.state.unlink(missing_ok=True)

    def _umount(self) -> None:
        if not self._is_mounted():
            return
        for _attempt in range(20):
            if self.runner(["umount", str(self.paths.merged)]).rc == 0:
                return
            time.sleep(0.1)
        raise NspawnError(f"cannot unmount {self.paths.merged}: still busy")

    def _run_checked(self, argv: Sequence[str], what: str) -> CommandResult:
        result = self.runner(argv)
        if result.rc != 0:
            raise NspawnError(f"cannot {what}: {' '.join(argv)}: {result.stderr.strip()}")
        return result

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.paths.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no console log)"

    # readiness --------------------------------------------------------------------------------

    def wait_ready(self, run: RunState, config: MachineConfig) -> float:
        """Wait until sshd listens in the machine and its address is configured; return seconds waited."""
        started = time.monotonic()
        deadline = started + self.request.wait_timeout
        while time.monotonic() < deadline:
            if not self._is_ours(run.pid, run.start_ticks):
                self._finish_stop(run)
                raise NspawnError(f"machine {config.name} stopped while booting:\n{self._log_tail()}")
            if self._is_ready(run.pid, config):
                return round(time.monotonic() - started, 2)
            time.sleep(0.1)
        raise NspawnError(
            f"machine {config.name} was not SSH-ready (sshd listening on {config.ip}) within "
            f"{self.request.wait_timeout}s; console log {self.paths.log}:\n{self._log_tail()}"
        )

    def _is_ready(self, pid: int, config: MachineConfig) -> bool:
        leader = self.container_leader(pid)
        if leader is None:
            return False
        net = Path(self.proc, str(leader), "net")
        try:
            ports = listening_ports((net / "tcp").read_text()) | listening_ports((net / "tcp6").read_text())
            addresses = local_ipv4_addresses((net / "fib_trie").read_text())
        except OSError:
            return False
        if ipaddress.ip_interface(config.address).version == 6:
            return 22 in ports
        return 22 in ports and config.ip in addresses
