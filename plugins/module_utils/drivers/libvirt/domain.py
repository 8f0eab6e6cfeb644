# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a VM is asked to be: the module parameters, validated, as a ``VmSpec`` (or only a power state).

The names of a VM's own volumes and its stable MACs are derived from its name here, so that every run
(and every tool: filters, tests) finds the same ones.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.errors import (
    name_problems,
    refuse_invalid,
)

DOMAIN_TYPES = ("kvm", "qemu")
VM_STATES = ("running", "stopped", "present", "absent")
MIN_MEMORY_MIB = 64

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class DiskSpec:
    pool: str
    base_volume: str
    size_gib: int


@dataclass(frozen=True)
class BootSpec:
    kernel_volume: str
    initrd_volume: str | None = None
    cmdline: str | None = None


@dataclass(frozen=True)
class NicSpec:
    network: str
    mac: str


@dataclass(frozen=True)
class SeedSpec:
    meta_data: Mapping[str, Any]
    user_data: str
    network_config: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class VmSpec:
    """Everything the domain definition is rendered from."""

    name: str
    domain_type: str
    vcpus: int
    memory_mib: int
    disk: DiskSpec
    nics: tuple[NicSpec, ...] = ()
    boot: BootSpec | None = None
    seed: SeedSpec | None = None
    tcg_cache_mib: int | None = None

    @property
    def overlay_volume(self) -> str:
        return overlay_volume_name(self.name)

    @property
    def seed_volume(self) -> str:
        return seed_volume_name(self.name)


@dataclass(frozen=True)
class VmRequest:
    """Module parameters. Without a spec (no disk/vcpus/memory_mib) only the power state is managed."""

    name: str
    state: str = "running"
    spec: VmSpec | None = None
    autostart: bool | None = None
    restart_allowed: bool = False
    shutdown_timeout: float = 60.0
    pool: str | None = None  # where to look for leftover volumes when removing

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> VmRequest:
        name = str(params["name"])
        state = str(params.get("state") or "running")
        problems = name_problems(name, "name")
        if state not in VM_STATES:
            problems.append(f"state must be one of {', '.join(VM_STATES)}")
        if params.get("tcg_cache_mib") is not None and params.get("domain_type", "kvm") != "qemu":
            problems.append(
                "tcg_cache_mib applies only to domain_type qemu (TCG); KVM has no translation cache"
            )
        timeout = params.get("shutdown_timeout")
        if timeout is not None and timeout < 0:
            problems.append("shutdown_timeout must be 0 or more seconds")
        spec = None
        given = [key for key in ("disk", "vcpus", "memory_mib") if params.get(key) is not None]
        if state != "absent" and given:
            if len(given) < 3:
                problems.append(
                    "disk, vcpus and memory_mib go together (all three, or none to only start/stop)"
                )
            elif any((params["disk"] or {}).get(key) is None for key in ("base_volume", "size_gib")):
                problems.append("disk needs pool, base_volume and size_gib")
            else:
                spec = _vm_spec(name, params)
                problems.extend(problem for problem in validate_vm_spec(spec) if problem not in problems)
        refuse_invalid("VM", name, problems)
        return cls(
            name=name,
            state=state,
            spec=spec,
            autostart=params.get("autostart"),
            restart_allowed=bool(params.get("restart_allowed")),
            shutdown_timeout=float(60 if timeout is None else timeout),
            pool=(params.get("disk") or {}).get("pool"),
        )


def overlay_volume_name(vm_name: str) -> str:
    return f"{vm_name}.qcow2"


def seed_volume_name(vm_name: str) -> str:
    return f"{vm_name}-seed.iso"


def stable_mac(vm_name: str, index: int) -> str:
    """52:54:00 (QEMU's prefix) + 3 bytes of sha256("<name>:<index>"): the same MAC on every run.

    The separator keeps ("web-1", 11) and ("web-11", 1) apart.
    """
    digest = hashlib.sha256(f"{vm_name}:{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{byte:02x}" for byte in digest[:3])


def _vm_spec(name: str, params: Mapping[str, Any]) -> VmSpec:
    disk, boot, seed = params["disk"], params.get("boot"), params.get("cloud_init")
    return VmSpec(
        name=name,
        domain_type=str(params.get("domain_type") or "kvm"),
        vcpus=int(params["vcpus"]),
        memory_mib=int(params["memory_mib"]),
        disk=DiskSpec(str(disk["pool"]), str(disk["base_volume"]), int(disk["size_gib"])),
        nics=tuple(
            NicSpec(network=str(nic["network"]), mac=str(nic.get("mac") or stable_mac(name, index)).lower())
            for index, nic in enumerate(params.get("networks") or [])
        ),
        boot=BootSpec(str(boot["kernel_volume"]), boot.get("initrd_volume"), boot.get("cmdline"))
        if boot
        else None,
        seed=_seed_spec(name, seed) if seed else None,
        tcg_cache_mib=params.get("tcg_cache_mib"),
    )


def _seed_spec(name: str, seed: Mapping[str, Any]) -> SeedSpec:
    meta_data = {"instance-id": name, "local-hostname": name, **(seed.get("meta_data") or {})}
    return SeedSpec(meta_data, seed.get("user_data") or "", seed.get("network_config"))


def validate_vm_spec(spec: VmSpec) -> list[str]:
    problems: list[str] = []
    if spec.domain_type not in DOMAIN_TYPES:
        problems.append(f"domain_type must be one of {', '.join(DOMAIN_TYPES)}")
    if spec.vcpus < 1:
        problems.append("vcpus must be at least 1")
    if spec.memory_mib < MIN_MEMORY_MIB:
        problems.append(f"memory_mib must be at least {MIN_MEMORY_MIB}")
    if spec.disk.size_gib < 1:
        problems.append("disk.size_gib must be at least 1")
    problems.extend(name_problems(spec.disk.pool, "disk.pool"))
    if spec.tcg_cache_mib is not None:
        if spec.domain_type != "qemu":
            problems.append(
                "tcg_cache_mib applies only to domain_type qemu (TCG); KVM has no translation cache"
            )
        elif spec.tcg_cache_mib < 1:
            problems.append("tcg_cache_mib must be at least 1")
    macs = [nic.mac for nic in spec.nics]
    for mac in macs:
        if not _MAC_RE.match(mac):
            problems.append(f"mac {mac!r} is not a MAC address like 52:54:00:12:34:56")
        elif int(mac[:2], 16) & 1:
            problems.append(f"mac {mac!r} is a multicast address")
    if len(set(macs)) != len(macs):
        problems.append("two networks have the same mac")
    if spec.boot is not None and spec.boot.cmdline and "\n" in spec.boot.cmdline:
        problems.append("boot.cmdline must be one line")
    return problems
