# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What defines an nspawn machine: the module's request, the resolved configuration and its checks,
the files Berth writes into the machine, where the machine lives on disk, and its records
(``machine.json`` for the configuration, ``state.json`` for the nspawn process Berth started).

Everything here is pure, or reads and writes nothing but JSON text.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.rules import (
    ifname_problems as validate_ifname,
)
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.errors import NspawnError

DEFAULT_MACHINES_DIR = Path("/var/lib/berth/machines")
STATES = ("running", "stopped", "present", "absent")
MIN_MEMORY_MIB = 32
MAX_CPU_QUOTA = 100 * 1024

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_PUBKEY_RE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-\S+) [A-Za-z0-9+/=]+( .*)?$")


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
    binds: tuple[str, ...] = ()  # host paths bound at the same path inside

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
            "binds": list(self.binds),
        }

    def boot_relevant(self) -> tuple[Any, ...]:
        """Fields that only take effect when the machine boots (a running machine is restarted)."""
        return (self.hostname, self.namespace, self.bridge, self.address, self.gateway, self.binds)


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
    binds: tuple[str, ...] | None = None
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
            binds=None if params.get("binds") is None else tuple(str(b) for b in params["binds"]),
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
        if self.binds is not None:
            changes["binds"] = self.binds
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
    for bind in request.binds or ():
        if not bind.startswith("/") or any(char in bind for char in ":, "):
            problems.append(f"binds: {bind!r} must be an absolute host path without ':', ',' or spaces")
        elif not Path(bind).exists():
            problems.append(f"binds: {bind} does not exist on the host")
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
    fields = {key: data.get(key) for key in MachineConfig.__dataclass_fields__}
    fields["binds"] = tuple(data.get("binds") or ())  # machines made before binds existed have none
    return MachineConfig(**fields)
