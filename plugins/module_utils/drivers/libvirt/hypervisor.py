# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A typed layer over libvirt: storage pools, networks, uploaded volumes and VMs.

Everything goes through the libvirt API of one connection, local or remote (``qemu+ssh://``): disk
images are uploaded with a virStream, overlays are created by the storage driver, so nothing is ever
copied to a hypervisor by other means. Every ``libvirt.libvirtError`` leaves this module as a
``LibvirtError`` whose message is one sentence naming the object and the URI.

Idempotency compares the *meaningful* parts of an object, parsed from its XML (never the XML text):
libvirt adds defaults, addresses and live-only elements that say nothing about what was asked for.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import re
import struct
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, Concatenate, ParamSpec, TypeVar

from ansible_collections.berth.fleet.plugins.module_utils.common.rules import (
    ifname_problems as validate_ifname,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.seed import (
    SeedError,
    build_seed_iso,
)

try:
    import libvirt  # no stubs: pyproject sets ignore_missing_imports
except ImportError:
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR = None

DEFAULT_URI = "qemu:///system"
GIB = 1024**3
MIB = 1024**2
UPLOAD_CHUNK = 4 * MIB
BERTH_NS = "https://berth.dev/xmlns/vm/1"
DOMAIN_TYPES = ("kvm", "qemu")
VM_STATES = ("running", "stopped", "present", "absent")
NETWORK_MODES = ("bridge", "isolated")
VOLUME_FORMATS = ("raw", "qcow2")
MIN_MEMORY_MIB = 64
QCOW2_MAGIC = b"QFI\xfb"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_UNITS = {
    "b": 1,
    "bytes": 1,
    "kb": 1000,
    "k": 1024,
    "kib": 1024,
    "mb": 1000**2,
    "m": MIB,
    "mib": MIB,
    "gb": 1000**3,
    "g": GIB,
    "gib": GIB,
    "tb": 1000**4,
    "t": 1024**4,
    "tib": 1024**4,
}

# Connection, stream, pool, volume, network and domain objects of the untyped libvirt bindings.
Conn = Any
_P = ParamSpec("_P")
_R = TypeVar("_R")
Uploader = Callable[[Conn, Any, BinaryIO, int], None]


class LibvirtError(Exception):
    """Anything that stops a libvirt object from being read, validated or changed."""


# --- errors and the connection ------------------------------------------------------------------


def _reason(exc: Exception) -> str:
    message = exc.get_error_message() if hasattr(exc, "get_error_message") else None
    return str(message or exc).strip().rstrip(".")


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn a libvirt error raised inside the block into ``LibvirtError("<what>: <reason>")``."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise LibvirtError(f"{what}: {_reason(exc)}") from exc


def _is_not_found(exc: Exception) -> bool:
    codes = (
        libvirt.VIR_ERR_NO_DOMAIN,
        libvirt.VIR_ERR_NO_NETWORK,
        libvirt.VIR_ERR_NO_STORAGE_POOL,
        libvirt.VIR_ERR_NO_STORAGE_VOL,
    )
    return hasattr(exc, "get_error_code") and exc.get_error_code() in codes


def _silence_libvirt(_context: object, _error: object) -> None:
    """libvirt prints every error to stderr by default; ours arrive as exceptions instead."""


def _no_stray_libvirt_errors(
    method: Callable[Concatenate[Hypervisor, _P], _R],
) -> Callable[Concatenate[Hypervisor, _P], _R]:
    """A safety net for the public operations: a libvirt error that no narrower context caught still
    leaves as a LibvirtError."""

    @functools.wraps(method)
    def wrapper(hypervisor: Hypervisor, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with translated(f"libvirt failed on {hypervisor.uri}"):
            return method(hypervisor, *args, **kwargs)

    return wrapper


@dataclass
class Outcome:
    """What an ``ensure_*`` call did (or, in check mode, would do)."""

    name: str
    state: str
    before: dict[str, Any]
    after: dict[str, Any]
    actions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.actions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "name": self.name,
            "state": self.state,
            "actions": self.actions,
            **self.facts,
            "diff": {"before": self.before, "after": self.after},
        }


class _Changes:
    """Records every mutation and performs it unless in check mode."""

    def __init__(self, check_mode: bool) -> None:
        self.check_mode = check_mode
        self.actions: list[str] = []
        self.warnings: list[str] = []

    def apply(self, description: str, action: Callable[[], object]) -> None:
        self.actions.append(description)
        if not self.check_mode:
            action()

    def missing(self, message: str) -> None:
        """A missing prerequisite: an error, except in check mode where an earlier task may create it."""
        if not self.check_mode:
            raise LibvirtError(message)
        self.warnings.append(f"check mode: {message}; assuming an earlier task creates it")


# --- parsing helpers ----------------------------------------------------------------------------


def _parse(xml: str, what: str) -> ET.Element:
    try:
        return ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LibvirtError(f"cannot parse the XML of {what}: {exc}") from exc


def scaled_bytes(element: ET.Element | None, default_unit: str = "bytes") -> int | None:
    """A libvirt scaled integer (``<memory unit='KiB'>524288</memory>``) in bytes."""
    if element is None or not (element.text or "").strip():
        return None
    unit = (element.get("unit") or default_unit).lower()
    if unit not in _UNITS:
        raise LibvirtError(f"unknown unit {unit!r} in <{element.tag}>")
    return int((element.text or "").strip()) * _UNITS[unit]


def _text(element: ET.Element | None) -> str | None:
    return None if element is None or element.text is None else element.text.strip()


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    child = ET.SubElement(parent, tag, attrs)
    if text is not None:
        child.text = text
    return child


def _tostring(root: ET.Element) -> str:
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


# --- volumes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    path: str
    format: str | None
    capacity: int
    backing: str | None = None

    @classmethod
    def from_xml(cls, xml: str) -> VolumeInfo:
        root = _parse(xml, "a storage volume")
        fmt = root.find("target/format")
        return cls(
            name=_text(root.find("name")) or "",
            path=_text(root.find("target/path")) or "",
            format=None if fmt is None else fmt.get("type"),
            capacity=scaled_bytes(root.find("capacity")) or 0,
            backing=_text(root.find("backingStore/path")),
        )


@dataclass(frozen=True)
class ImageFile:
    """A local disk image as read from its header: what a volume must hold to carry it."""

    path: str
    format: str
    size: int  # bytes in the file (what is uploaded)
    capacity: int  # the disk the guest sees: file size for raw, virtual size for qcow2


def parse_qcow2_header(header: bytes) -> tuple[int, bool]:
    """(virtual size, has a backing file) from the first 32 bytes of a qcow2 image."""
    if len(header) < 32 or header[:4] != QCOW2_MAGIC:
        raise ValueError("not a qcow2 image (no QFI\\xfb magic)")
    _magic, version, backing_offset, _backing_size, _cluster_bits, size = struct.unpack(
        ">4sIQIIQ", header[:32]
    )
    if version not in (2, 3):
        raise ValueError(f"qcow2 version {version} is not supported")
    return size, backing_offset != 0


def format_for(path: str, requested: str | None) -> str:
    if requested:
        return requested
    return "qcow2" if path.endswith(".qcow2") else "raw"


def inspect_image(path: str, fmt: str) -> ImageFile:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as image:
            header = image.read(32)
    except OSError as exc:
        raise LibvirtError(f"cannot read {path}: {exc.strerror or exc}") from exc
    looks_qcow2 = header[:4] == QCOW2_MAGIC
    if fmt == "raw":
        if looks_qcow2:
            # A raw volume holding a qcow2 image lets the guest point it at any host file.
            raise LibvirtError(f"{path} is a qcow2 image; upload it with format qcow2, not raw")
        return ImageFile(path, fmt, size, size)
    try:
        capacity, has_backing = parse_qcow2_header(header)
    except ValueError as exc:
        raise LibvirtError(f"{path} cannot be uploaded as qcow2: {exc}") from exc
    if has_backing:
        raise LibvirtError(f"{path} is a qcow2 overlay with a backing file; upload a flattened image")
    return ImageFile(path, fmt, size, capacity)


def stream_upload(conn: Conn, volume: Any, source: BinaryIO, length: int) -> None:
    """Upload ``length`` bytes from ``source`` into ``volume`` in 4 MiB chunks over a virStream."""
    stream = conn.newStream(0)
    try:
        volume.upload(stream, 0, length, 0)
        while chunk := source.read(UPLOAD_CHUNK):
            view = memoryview(chunk)
            while view:
                sent = stream.send(bytes(view))
                if sent < 0:
                    raise LibvirtError("the upload stream refused data")
                view = view[sent:]
        stream.finish()
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):  # the original error says why
            stream.abort()
        raise


def volume_xml(name: str, capacity: int, fmt: str, backing: VolumeInfo | None = None) -> str:
    root = ET.Element("volume")
    _sub(root, "name", name)
    _sub(root, "capacity", str(capacity), unit="bytes")
    _sub(root, "allocation", "0", unit="bytes")
    _sub(_sub(root, "target"), "format", type=fmt)
    if backing is not None:
        store = _sub(root, "backingStore")
        _sub(store, "path", backing.path)
        _sub(store, "format", type=backing.format or "raw")
    return _tostring(root)


@dataclass(frozen=True)
class VolumeSpec:
    pool: str
    name: str
    src: str | None = None
    format: str | None = None
    force: bool = False

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> VolumeSpec:
        spec = cls(
            pool=str(params["pool"]),
            name=str(params["name"]),
            src=params.get("src"),
            format=params.get("format"),
            force=bool(params.get("force")),
        )
        problems = [*_name_problems(spec.pool, "pool"), *_name_problems(spec.name, "name")]
        if spec.format is not None and spec.format not in VOLUME_FORMATS:
            problems.append(f"format must be one of {', '.join(VOLUME_FORMATS)}")
        if params.get("state", "present") == "present" and not spec.src:
            problems.append("src is required to upload a volume")
        if problems:
            raise LibvirtError(f"invalid parameters for volume {spec.name!r}: " + "; ".join(problems))
        return spec


def _name_problems(name: str, what: str) -> list[str]:
    if _NAME_RE.match(name):
        return []
    return [f"{what} {name!r} must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"]


# --- pools --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolSpec:
    name: str
    path: str | None
    autostart: bool = True

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PoolSpec:
        spec = cls(name=str(params["name"]), path=params.get("path"), autostart=bool(params["autostart"]))
        problems = _name_problems(spec.name, "name")
        if params.get("state", "present") == "present":
            if not spec.path:
                problems.append("path is required to create a pool")
            elif not spec.path.startswith("/"):
                problems.append(f"path must be absolute, got {spec.path!r}")
        if problems:
            raise LibvirtError(f"invalid parameters for pool {spec.name!r}: " + "; ".join(problems))
        return spec


def pool_xml(spec: PoolSpec) -> str:
    root = ET.Element("pool", type="dir")
    _sub(root, "name", spec.name)
    _sub(_sub(root, "target"), "path", os.path.normpath(spec.path or ""))
    return _tostring(root)


def meaningful_pool(xml: str) -> dict[str, Any]:
    root = _parse(xml, "a storage pool")
    path = _text(root.find("target/path"))
    return {"type": root.get("type"), "path": os.path.normpath(path) if path else None}


# --- networks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    mode: str
    bridge: str

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> NetworkSpec | None:
        """None for state=absent, which needs nothing but the name."""
        name = str(params["name"])
        problems = _name_problems(name, "name")
        spec = None
        if params.get("state", "present") == "present":
            spec = cls(name=name, mode=str(params.get("mode") or ""), bridge=str(params.get("bridge") or ""))
            if spec.mode not in NETWORK_MODES:
                problems.append(f"mode must be one of {', '.join(NETWORK_MODES)}")
            if not spec.bridge:
                problems.append("bridge is required")
            else:
                problems.extend(validate_ifname(spec.bridge, "bridge"))
        if problems:
            raise LibvirtError(f"invalid parameters for network {name!r}: " + "; ".join(problems))
        return spec


def network_xml(spec: NetworkSpec, existing: str | None = None) -> str:
    """The network's definition; from ``existing`` it keeps what libvirt assigned (uuid, bridge MAC)."""
    root = ET.Element("network")
    _sub(root, "name", spec.name)
    old = _parse(existing, f"network {spec.name!r}") if existing else None
    if old is not None and _text(old.find("uuid")):
        _sub(root, "uuid", _text(old.find("uuid")))
    if spec.mode == "bridge":
        _sub(root, "forward", mode="bridge")
        _sub(root, "bridge", name=spec.bridge)
    else:
        _sub(root, "bridge", name=spec.bridge, stp="on", delay="0")
        # the MAC libvirt gave the bridge it created (absent when the network was a bridge/NAT one)
        old_mac = None if old is None or old.find("forward") is not None else old.find("mac")
        if old_mac is not None:
            root.append(old_mac)
    return _tostring(root)


def meaningful_network(xml: str) -> dict[str, Any]:
    root = _parse(xml, "a network")
    forward = root.find("forward")
    bridge = root.find("bridge")
    addresses = [f"{ip.get('address')}/{ip.get('prefix') or ip.get('netmask')}" for ip in root.findall("ip")]
    return {
        "mode": "isolated" if forward is None else forward.get("mode", "nat"),
        "bridge": None if bridge is None else bridge.get("name"),
        "addresses": addresses,
        "dhcp": root.find("ip/dhcp") is not None,
    }


def describe_differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    return [f"{key}: {before.get(key)!r} -> {after[key]!r}" for key in after if before.get(key) != after[key]]


# --- VMs: the specification ---------------------------------------------------------------------


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
        problems = _name_problems(name, "name")
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
        if problems:
            raise LibvirtError(f"invalid parameters for VM {name!r}: " + "; ".join(problems))
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
    problems.extend(_name_problems(spec.disk.pool, "disk.pool"))
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


# --- VMs: rendering and reading the domain XML --------------------------------------------------


@dataclass(frozen=True)
class DomainPaths:
    """Host paths of the volumes a domain uses, resolved through the storage API."""

    overlay: str
    overlay_format: str = "qcow2"
    seed: str | None = None
    kernel: str | None = None
    initrd: str | None = None


def render_domain_xml(spec: VmSpec, paths: DomainPaths, seed_sha256: str | None = None) -> str:
    root = ET.Element("domain", type=spec.domain_type)
    _sub(root, "name", spec.name)
    metadata = _sub(_sub(root, "metadata"), "berth:vm", **{"xmlns:berth": BERTH_NS})
    if seed_sha256:
        _sub(metadata, "berth:seed", sha256=seed_sha256)
    _sub(root, "memory", str(spec.memory_mib), unit="MiB")
    _sub(root, "vcpu", str(spec.vcpus))
    _render_os(_sub(root, "os"), spec.boot, paths)
    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if spec.tcg_cache_mib:
        _sub(_sub(features, "tcg"), "tb-cache", str(spec.tcg_cache_mib), unit="MiB")
    if spec.domain_type == "kvm":
        _sub(root, "cpu", mode="host-passthrough")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "restart")
    _render_devices(_sub(root, "devices"), spec, paths)
    return _tostring(root)


def _render_os(os_element: ET.Element, boot: BootSpec | None, paths: DomainPaths) -> None:
    _sub(os_element, "type", "hvm")
    if boot is None:
        _sub(os_element, "boot", dev="hd")
        return
    _sub(os_element, "kernel", paths.kernel or "")
    if paths.initrd:
        _sub(os_element, "initrd", paths.initrd)
    if boot.cmdline:
        _sub(os_element, "cmdline", boot.cmdline)


def _render_devices(devices: ET.Element, spec: VmSpec, paths: DomainPaths) -> None:
    root_disk = _sub(devices, "disk", type="file", device="disk")
    _sub(root_disk, "driver", name="qemu", type=paths.overlay_format, discard="unmap")
    _sub(root_disk, "source", file=paths.overlay)
    _sub(root_disk, "target", dev="vda", bus="virtio")
    if paths.seed:
        seed_disk = _sub(devices, "disk", type="file", device="disk")
        _sub(seed_disk, "driver", name="qemu", type="raw")
        _sub(seed_disk, "source", file=paths.seed)
        _sub(seed_disk, "target", dev="vdb", bus="virtio")
        _sub(seed_disk, "readonly")
    for nic in spec.nics:
        interface = _sub(devices, "interface", type="network")
        _sub(interface, "mac", address=nic.mac)
        _sub(interface, "source", network=nic.network)
        _sub(interface, "model", type="virtio")
    _sub(devices, "serial", type="pty")
    _sub(devices, "console", type="pty")
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")


# Devices libvirt adds by itself: kept on redefinition so that guest-visible addresses stay put.
_LIBVIRT_ADDED_DEVICES = ("controller", "memballoon", "input")


def merge_libvirt_assigned(desired_xml: str, existing_xml: str) -> str:
    """The desired definition plus what libvirt assigned to the existing one: uuid, machine type,
    device addresses and the controllers it added (so the guest's PCI layout and NIC names stay)."""
    desired = _parse(desired_xml, "the desired domain")
    existing = _parse(existing_xml, "the existing domain")
    uuid = existing.find("uuid")
    if uuid is not None:
        desired.insert(1, uuid)
    old_type, new_type = existing.find("os/type"), desired.find("os/type")
    if old_type is not None and new_type is not None:
        for attribute in ("arch", "machine"):
            if old_type.get(attribute):
                new_type.set(attribute, old_type.get(attribute, ""))
    devices = desired.find("devices")
    if devices is None:
        raise LibvirtError("the desired domain definition has no <devices>")
    old_devices = existing.find("devices")
    old_by_key = {_device_key(dev): dev for dev in (old_devices if old_devices is not None else [])}
    for device in devices:
        old = old_by_key.get(_device_key(device))
        address = None if old is None else old.find("address")
        if address is not None and device.find("address") is None:
            device.append(address)
    for device in old_devices if old_devices is not None else []:
        if device.tag in _LIBVIRT_ADDED_DEVICES:
            devices.append(device)
    return _tostring(desired)


def _device_key(device: ET.Element) -> tuple[str, str]:
    if device.tag == "disk":
        target = device.find("target")
        return (device.tag, "" if target is None else target.get("dev", ""))
    if device.tag == "interface":
        mac = device.find("mac")
        return (device.tag, "" if mac is None else mac.get("address", "").lower())
    return (device.tag, device.get("model", ""))


def meaningful(xml: str) -> dict[str, Any]:
    """What a domain definition says about the VM, leaving out everything libvirt adds by itself."""
    root = _parse(xml, "a domain")
    memory = scaled_bytes(root.find("memory"), default_unit="KiB") or 0
    tb_cache = scaled_bytes(root.find("features/tcg/tb-cache"), default_unit="KiB")
    seed = root.find(f"metadata/{{{BERTH_NS}}}vm/{{{BERTH_NS}}}seed")
    return {
        "domain_type": root.get("type"),
        "vcpus": int(_text(root.find("vcpu")) or 0),
        "memory_mib": memory // MIB,
        "tcg_cache_mib": None if tb_cache is None else tb_cache // MIB,
        "boot": _meaningful_boot(root),
        "disks": [_meaningful_disk(disk) for disk in root.findall("devices/disk")],
        "interfaces": [_meaningful_interface(nic) for nic in root.findall("devices/interface")],
        "seed_sha256": None if seed is None else seed.get("sha256"),
    }


def is_berth_domain(xml: str) -> bool:
    return _parse(xml, "a domain").find(f"metadata/{{{BERTH_NS}}}vm") is not None


def _meaningful_boot(root: ET.Element) -> dict[str, Any] | None:
    kernel = _text(root.find("os/kernel"))
    if not kernel:
        return None  # boots from the first disk
    return {
        "kernel": kernel,
        "initrd": _text(root.find("os/initrd")),
        "cmdline": _text(root.find("os/cmdline")) or None,
    }


def _meaningful_disk(disk: ET.Element) -> dict[str, Any]:
    source = disk.find("source")
    target = disk.find("target")
    driver = disk.find("driver")
    if source is None:
        location = None
    elif source.get("pool"):
        location = f"{source.get('pool')}/{source.get('volume')}"
    else:
        location = source.get("file") or source.get("dev") or source.get("name")
    return {
        "target": None if target is None else target.get("dev"),
        "source": location,
        "format": None if driver is None else driver.get("type"),
        "readonly": disk.find("readonly") is not None,
    }


def _meaningful_interface(interface: ET.Element) -> dict[str, Any]:
    source, mac, model = interface.find("source"), interface.find("mac"), interface.find("model")
    return {
        "network": None if source is None else source.get("network") or source.get("bridge"),
        "mac": None if mac is None else mac.get("address", "").lower(),
        "model": None if model is None else model.get("type"),
    }


# Keys of meaningful() in the words of a warning.
_FIELD_NAMES = {
    "domain_type": "domain type",
    "vcpus": "vcpus",
    "memory_mib": "memory",
    "tcg_cache_mib": "TCG cache",
    "boot": "kernel boot",
    "disks": "disks",
    "interfaces": "networks",
    "seed_sha256": "cloud-init seed",
}


def changed_fields(current: Mapping[str, Any], desired: Mapping[str, Any]) -> list[str]:
    return [_FIELD_NAMES.get(key, key) for key in desired if current.get(key) != desired[key]]


# --- the hypervisor -----------------------------------------------------------------------------


def _domain_state(domain: Any) -> str:
    code = domain.state()[0]
    if code == libvirt.VIR_DOMAIN_PAUSED:
        return "paused"
    if code in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED):
        return "stopped"
    return "running"


@dataclass
class _VmPlan:
    """What the hypervisor has for a VM spec, read before anything is changed."""

    paths: DomainPaths
    base: VolumeInfo | None
    overlay: VolumeInfo | None
    seed_iso: bytes | None = None
    seed_sha256: str | None = None
    seed_volume: VolumeInfo | None = None


class Hypervisor:
    """One libvirt connection and the ensure_* operations over it."""

    def __init__(
        self,
        uri: str = DEFAULT_URI,
        uploader: Uploader = stream_upload,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.uri = uri
        self.uploader = uploader
        self.sleep = sleep
        self.clock = clock
        self._conn: Conn = None

    def __enter__(self) -> Hypervisor:
        self.connect()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def connect(self) -> None:
        if not HAS_LIBVIRT:
            raise LibvirtError(
                "the libvirt Python bindings (libvirt-python) are not installed on the controller"
            )
        libvirt.registerErrorHandler(_silence_libvirt, None)
        with translated(f"cannot connect to libvirt at {self.uri}"):
            self._conn = libvirt.open(self.uri)
        if self._conn is None:
            raise LibvirtError(f"cannot connect to libvirt at {self.uri}")

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):  # a dead connection has nothing to release
                self._conn.close()
            self._conn = None

    @property
    def conn(self) -> Conn:
        if self._conn is None:
            raise LibvirtError(f"not connected to libvirt at {self.uri}")
        return self._conn

    # lookups: None when the object does not exist -------------------------------------------

    def _lookup(self, what: str, lookup: Callable[[], Any]) -> Any:
        try:
            return lookup()
        except libvirt.libvirtError as exc:
            if _is_not_found(exc):
                return None
            raise LibvirtError(f"cannot look up {what} on {self.uri}: {_reason(exc)}") from exc

    def find_pool(self, name: str) -> Any:
        return self._lookup(f"storage pool {name!r}", lambda: self.conn.storagePoolLookupByName(name))

    def find_network(self, name: str) -> Any:
        return self._lookup(f"network {name!r}", lambda: self.conn.networkLookupByName(name))

    def find_domain(self, name: str) -> Any:
        return self._lookup(f"VM {name!r}", lambda: self.conn.lookupByName(name))

    def find_volume(self, pool: Any, name: str) -> Any:
        with translated(f"cannot use storage pool {pool.name()!r} on {self.uri}"):
            if not pool.isActive():
                return None
        return self._lookup(f"volume {name!r}", lambda: pool.storageVolLookupByName(name))

    def volume_info(self, volume: Any) -> VolumeInfo:
        with translated(f"cannot read volume {volume.name()!r} on {self.uri}"):
            return VolumeInfo.from_xml(volume.XMLDesc(0))

    def pool_path(self, pool: Any) -> str:
        with translated(f"cannot read storage pool {pool.name()!r} on {self.uri}"):
            return meaningful_pool(pool.XMLDesc(0))["path"] or ""

    def _active_pool(self, name: str, changes: _Changes) -> Any:
        """The pool if it exists and runs; None (check mode only) if it does not exist yet."""
        pool = self.find_pool(name)
        if pool is None:
            changes.missing(f"storage pool {name!r} does not exist on {self.uri}")
            return None
        with translated(f"cannot use storage pool {name!r} on {self.uri}"):
            if not pool.isActive():
                raise LibvirtError(f"storage pool {name!r} on {self.uri} is not running; start it first")
        return pool

    # pools --------------------------------------------------------------------------------------

    @_no_stray_libvirt_errors
    def ensure_pool(self, spec: PoolSpec, state: str, check_mode: bool, force: bool = False) -> Outcome:
        changes = _Changes(check_mode)
        pool = self.find_pool(spec.name)
        before = self._pool_summary(pool)
        if state == "absent":
            if pool is not None:
                self._remove_pool(pool, force, changes)
            after: dict[str, Any] = {"state": "absent"}
        else:
            pool = self._present_pool(pool, spec, changes)
            after = {
                "state": "running",
                "type": "dir",
                "path": os.path.normpath(spec.path or ""),
                "autostart": spec.autostart,
            }
        return Outcome(
            spec.name,
            after["state"],
            before,
            after,
            changes.actions,
            changes.warnings,
            {"path": after.get("path")},
        )

    def _pool_summary(self, pool: Any) -> dict[str, Any]:
        if pool is None:
            return {"state": "absent"}
        with translated(f"cannot read storage pool {pool.name()!r} on {self.uri}"):
            return {
                "state": "running" if pool.isActive() else "stopped",
                **meaningful_pool(pool.XMLDesc(0)),
                "autostart": bool(pool.autostart()),
            }

    def _present_pool(self, pool: Any, spec: PoolSpec, changes: _Changes) -> Any:
        where = f"storage pool {spec.name!r} on {self.uri}"
        if pool is None:

            def create() -> None:
                with translated(f"cannot create {where}"):
                    created = self.conn.storagePoolDefineXML(pool_xml(spec), 0)
                    created.build(0)
                    created.create(0)
                    created.setAutostart(int(spec.autostart))

            changes.apply(f"define, build and start pool {spec.name} at {spec.path}", create)
            return None
        current = self._pool_summary(pool)
        wanted = os.path.normpath(spec.path or "")
        if current["type"] != "dir" or current["path"] != wanted:
            raise LibvirtError(
                f"{where} is a {current['type']} pool at {current['path']}, not a dir pool at {wanted}; "
                "remove it first (state=absent) to move it"
            )
        with translated(f"cannot start {where}"):
            if current["state"] != "running":
                changes.apply(f"start pool {spec.name}", lambda: pool.create(0))
            if current["autostart"] != spec.autostart:
                changes.apply(
                    f"set autostart={spec.autostart} on pool {spec.name}",
                    lambda: pool.setAutostart(int(spec.autostart)),
                )
        return pool

    def _remove_pool(self, pool: Any, force: bool, changes: _Changes) -> None:
        name = pool.name()
        where = f"storage pool {name!r} on {self.uri}"
        with translated(f"cannot remove {where}"):
            if not pool.isActive():
                # Its volumes can only be listed while it runs.
                changes.apply(f"start pool {name} to list its volumes", lambda: pool.create(0))
            volumes = pool.listAllVolumes(0) if pool.isActive() else []
            if not pool.isActive() and not force:
                changes.warnings.append(
                    f"check mode: {where} is stopped, so its volumes cannot be listed; "
                    "removing it fails if it holds any (unless force: true)"
                )
            if volumes and not force:
                names = sorted(volume.name() for volume in volumes)
                shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
                raise LibvirtError(
                    f"{where} still holds {len(names)} volume(s) ({shown}); "
                    "remove them first or set force: true to delete them with the pool"
                )
            for volume in volumes:
                changes.apply(f"delete volume {volume.name()}", functools.partial(volume.delete, 0))
            if pool.isActive() or changes.check_mode:
                changes.apply(f"stop pool {name}", pool.destroy)
            changes.apply(f"delete the directory of pool {name}", lambda: pool.delete(0))
            changes.apply(f"undefine pool {name}", pool.undefine)

    # networks -----------------------------------------------------------------------------------

    @_no_stray_libvirt_errors
    def ensure_network(
        self, name: str, spec: NetworkSpec | None, check_mode: bool, restart_allowed: bool = False
    ) -> Outcome:
        changes = _Changes(check_mode)
        network = self.find_network(name)
        before = self._network_summary(network)
        with translated(f"cannot change network {name!r} on {self.uri}"):
            if spec is None:
                if network is not None:
                    if network.isActive():
                        changes.apply(f"stop network {name}", network.destroy)
                    changes.apply(f"undefine network {name}", network.undefine)
                after: dict[str, Any] = {"state": "absent"}
            else:
                self._present_network(network, spec, before, changes, restart_allowed)
                after = {"state": "running", **meaningful_network(network_xml(spec)), "autostart": True}
        facts = {"bridge": after.get("bridge")}
        return Outcome(name, after["state"], before, after, changes.actions, changes.warnings, facts)

    def _network_summary(self, network: Any) -> dict[str, Any]:
        if network is None:
            return {"state": "absent"}
        with translated(f"cannot read network {network.name()!r} on {self.uri}"):
            return {
                "state": "running" if network.isActive() else "stopped",
                **meaningful_network(network.XMLDesc(0)),
                "autostart": bool(network.autostart()),
            }

    def _present_network(
        self,
        network: Any,
        spec: NetworkSpec,
        before: dict[str, Any],
        changes: _Changes,
        restart_allowed: bool,
    ) -> None:
        if network is None:

            def create() -> None:
                defined = self.conn.networkDefineXML(network_xml(spec))
                defined.create()
                defined.setAutostart(1)

            changes.apply(f"define and start network {spec.name} ({spec.mode}, bridge {spec.bridge})", create)
            return
        running = before["state"] == "running"
        differences = describe_differences(before, meaningful_network(network_xml(spec)))
        if differences:
            if running and not restart_allowed:
                raise LibvirtError(
                    f"network {spec.name!r} on {self.uri} differs from the requested definition "
                    f"({'; '.join(differences)}); set restart_allowed: true to redefine and restart it"
                )
            existing = network.XMLDesc(0)
            changes.apply(
                f"redefine network {spec.name} ({'; '.join(differences)})",
                lambda: self.conn.networkDefineXML(network_xml(spec, existing)),
            )
            if running:
                changes.apply(f"restart network {spec.name}", lambda: (network.destroy(), network.create()))
        if not running:
            changes.apply(f"start network {spec.name}", network.create)
        if not before["autostart"]:
            changes.apply(f"set autostart on network {spec.name}", lambda: network.setAutostart(1))

    # volumes ------------------------------------------------------------------------------------

    @_no_stray_libvirt_errors
    def ensure_volume_upload(self, spec: VolumeSpec, state: str, check_mode: bool) -> Outcome:
        changes = _Changes(check_mode)
        where = f"volume {spec.name!r} in pool {spec.pool!r} on {self.uri}"
        if state == "absent":
            pool = self.find_pool(spec.pool)
            pool = None if pool is None else self._active_pool(spec.pool, changes)
        else:
            pool = self._active_pool(spec.pool, changes)
        volume = None if pool is None else self.find_volume(pool, spec.name)
        info = None if volume is None else self.volume_info(volume)
        before = _volume_summary(info)
        if state == "absent":
            if volume is not None:
                changes.apply(f"delete volume {spec.name}", lambda: self._delete_volume(volume, where))
            after: dict[str, Any] = {"state": "absent"}
            return Outcome(
                spec.name, "absent", before, after, changes.actions, changes.warnings, {"path": None}
            )
        if info is not None and not spec.force:
            # Names are content-addressed by the caller: an existing volume holds this content.
            facts = {"path": info.path, "format": info.format, "capacity": info.capacity}
            return Outcome(spec.name, "present", before, before, [], changes.warnings, facts)
        image = self._local_image(spec, changes)
        if volume is not None:
            changes.apply(
                f"delete volume {spec.name} to upload it again", lambda: self._delete_volume(volume, where)
            )
        fmt = image.format if image else format_for(spec.src or "", spec.format)
        capacity = image.capacity if image else None
        path = os.path.join(self.pool_path(pool), spec.name) if pool is not None else None
        changes.apply(
            f"upload {spec.src} ({fmt}) to volume {spec.name}", lambda: self._upload_image(pool, spec, image)
        )
        if not check_mode:
            path = self.volume_info(self.find_volume(pool, spec.name)).path
        facts = {"path": path, "format": fmt, "capacity": capacity}
        after = {"state": "present", **facts}
        return Outcome(spec.name, "present", before, after, changes.actions, changes.warnings, facts)

    def _local_image(self, spec: VolumeSpec, changes: _Changes) -> ImageFile | None:
        src = spec.src or ""
        if not os.path.isfile(src):
            changes.missing(f"src {src} does not exist on the controller")
            return None
        return inspect_image(src, format_for(src, spec.format))

    def _upload_image(self, pool: Any, spec: VolumeSpec, image: ImageFile | None) -> None:
        if image is None:  # only in check mode, where nothing is uploaded
            raise LibvirtError(f"{spec.src} cannot be uploaded: it does not exist")
        with open(image.path, "rb") as source:
            self.upload_volume(pool, spec.pool, spec.name, image.format, image.capacity, source, image.size)

    def upload_volume(
        self, pool: Any, pool_name: str, name: str, fmt: str, capacity: int, source: BinaryIO, length: int
    ) -> None:
        """Create volume ``name`` and fill it from ``source``; a failed upload leaves no volume behind."""
        where = f"volume {name!r} in pool {pool_name!r} on {self.uri}"
        with translated(f"cannot create {where}"):
            volume = pool.createXML(volume_xml(name, capacity, fmt), 0)
        try:
            with translated(f"cannot upload into {where}"):
                self.uploader(self.conn, volume, source, length)
        except LibvirtError:
            with contextlib.suppress(libvirt.libvirtError):  # the upload error is the one worth reporting
                volume.delete(0)
            raise

    def _delete_volume(self, volume: Any, where: str) -> None:
        with translated(f"cannot delete {where}"):
            volume.delete(0)

    # VMs ----------------------------------------------------------------------------------------

    @_no_stray_libvirt_errors
    def ensure_vm(self, request: VmRequest, check_mode: bool) -> Outcome:
        changes = _Changes(check_mode)
        domain = self.find_domain(request.name)
        if request.state == "absent":
            return self._absent_vm(request, domain, changes)
        if request.spec is None:
            if domain is None:
                raise LibvirtError(
                    f"VM {request.name!r} does not exist on {self.uri}; "
                    "defining it needs disk, vcpus and memory_mib"
                )
            return self._power_only_vm(request, domain, changes)
        return self._present_vm(request, request.spec, domain, changes)

    def _domain_xml(self, domain: Any, inactive: bool) -> str:
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        with translated(f"cannot read VM {domain.name()!r} on {self.uri}"):
            return str(domain.XMLDesc(flags))

    def _vm_summary(self, domain: Any, persistent_xml: str | None) -> dict[str, Any]:
        if domain is None or persistent_xml is None:
            return {"state": "absent"}
        with translated(f"cannot read VM {domain.name()!r} on {self.uri}"):
            autostart = bool(domain.autostart())
            return {"state": _domain_state(domain), "autostart": autostart, **meaningful(persistent_xml)}

    def _present_vm(self, request: VmRequest, spec: VmSpec, domain: Any, changes: _Changes) -> Outcome:
        persistent = None if domain is None else self._domain_xml(domain, inactive=True)
        if persistent is not None and not is_berth_domain(persistent):
            raise LibvirtError(
                f"VM {spec.name!r} on {self.uri} was not defined by Berth (no berth metadata); "
                "refusing to redefine it"
            )
        plan = self._plan_vm(spec, changes)
        desired = render_domain_xml(spec, plan.paths, plan.seed_sha256)
        if persistent is not None:
            desired = merge_libvirt_assigned(desired, persistent)
        autostart = True if request.autostart is None else request.autostart
        before = self._vm_summary(domain, persistent)
        if persistent is not None:
            before["root_disk"] = _root_disk_summary(spec, plan.overlay.capacity if plan.overlay else None)
        after = {"state": request.state, "autostart": autostart, **meaningful(desired)}
        after["root_disk"] = _root_disk_summary(spec, spec.disk.size_gib * GIB)

        self._converge_volumes(spec, plan, domain, persistent, changes)
        current = None if persistent is None else meaningful(persistent)
        if current != meaningful(desired):
            detail = (
                "" if current is None else f" ({', '.join(changed_fields(current, meaningful(desired)))})"
            )
            verb = "define" if current is None else "redefine"
            changes.apply(f"{verb} VM {spec.name}{detail}", lambda: self._define(spec.name, desired))
            if not changes.check_mode:
                domain = self.find_domain(spec.name)
        restart_required = False
        if domain is None:  # check mode: the definition above was only recorded
            if autostart:
                changes.apply(f"set autostart=True on VM {spec.name}", lambda: None)
            if request.state == "running":
                changes.apply(f"start VM {spec.name}", lambda: None)
        else:
            self._converge_autostart(domain, autostart, changes)
            restart_required = self._converge_power(request, domain, desired, changes)
        facts = {
            "macs": [nic.mac for nic in spec.nics],
            "restart_required": restart_required,
            "seed_sha256": plan.seed_sha256,
        }
        return Outcome(spec.name, request.state, before, after, changes.actions, changes.warnings, facts)

    def _plan_vm(self, spec: VmSpec, changes: _Changes) -> _VmPlan:
        """Resolve every volume and network the VM needs; fail before anything changes if one is missing."""
        disk = spec.disk
        pool = self._active_pool(disk.pool, changes)
        pool_dir = self.pool_path(pool) if pool is not None else f"<pool {disk.pool}>"

        def resolve(volume_name: str | None, role: str) -> str | None:
            if volume_name is None:
                return None
            volume = None if pool is None else self.find_volume(pool, volume_name)
            if volume is not None:
                return self.volume_info(volume).path
            if pool is not None:
                changes.missing(
                    f"{role} volume {volume_name!r} not found in pool {disk.pool!r} on {self.uri}"
                )
            return os.path.join(pool_dir, volume_name)

        base_volume = None if pool is None else self.find_volume(pool, disk.base_volume)
        if pool is not None and base_volume is None:
            changes.missing(f"base volume {disk.base_volume!r} not found in pool {disk.pool!r} on {self.uri}")
        base = None if base_volume is None else self.volume_info(base_volume)
        overlay_volume = None if pool is None else self.find_volume(pool, spec.overlay_volume)
        overlay = None if overlay_volume is None else self.volume_info(overlay_volume)
        changes.warnings.extend(check_disk(spec, base, overlay))
        for nic in spec.nics:
            if self.find_network(nic.network) is None:
                changes.missing(f"network {nic.network!r} does not exist on {self.uri}")
        boot = spec.boot
        plan = _VmPlan(
            paths=DomainPaths(
                overlay=overlay.path if overlay else os.path.join(pool_dir, spec.overlay_volume),
                kernel=resolve(boot.kernel_volume if boot else None, "kernel"),
                initrd=resolve(boot.initrd_volume if boot else None, "initrd"),
            ),
            base=base,
            overlay=overlay,
        )
        if spec.seed is not None:
            self._plan_seed(spec, spec.seed, plan, pool, pool_dir)
        return plan

    def _plan_seed(self, spec: VmSpec, seed: SeedSpec, plan: _VmPlan, pool: Any, pool_dir: str) -> None:
        try:
            plan.seed_iso, plan.seed_sha256 = build_seed_iso(
                seed.meta_data, seed.user_data, seed.network_config
            )
        except SeedError as exc:
            raise LibvirtError(f"cannot build the cloud-init seed of VM {spec.name!r}: {exc}") from exc
        seed_volume = None if pool is None else self.find_volume(pool, spec.seed_volume)
        plan.seed_volume = None if seed_volume is None else self.volume_info(seed_volume)
        seed_path = plan.seed_volume.path if plan.seed_volume else os.path.join(pool_dir, spec.seed_volume)
        plan.paths = replace(plan.paths, seed=seed_path)

    def _converge_volumes(
        self, spec: VmSpec, plan: _VmPlan, domain: Any, persistent: str | None, changes: _Changes
    ) -> None:
        disk = spec.disk
        size = disk.size_gib * GIB
        if plan.overlay is None:
            changes.apply(
                f"create disk {spec.overlay_volume} ({disk.size_gib} GiB over {disk.base_volume})",
                lambda: self._create_overlay(spec, plan),
            )
        elif plan.overlay.capacity < size:
            changes.apply(
                f"grow disk {spec.overlay_volume} from {plan.overlay.capacity / GIB:g} "
                f"to {disk.size_gib} GiB",
                lambda: self._grow_overlay(spec, domain, size),
            )
        if plan.seed_iso is None:
            return
        iso = plan.seed_iso
        recorded = None if persistent is None else meaningful(persistent)["seed_sha256"]
        if plan.seed_volume is None or recorded != plan.seed_sha256:
            changes.apply(
                f"upload cloud-init seed {spec.seed_volume} (sha256 {plan.seed_sha256})",
                lambda: self._upload_seed(spec, iso),
            )

    def _create_overlay(self, spec: VmSpec, plan: _VmPlan) -> None:
        pool = self.find_pool(spec.disk.pool)
        if plan.base is None or pool is None:  # only in check mode, where nothing is created
            raise LibvirtError(f"base volume {spec.disk.base_volume!r} not found in pool {spec.disk.pool!r}")
        where = f"disk {spec.overlay_volume!r} in pool {spec.disk.pool!r} on {self.uri}"
        with translated(f"cannot create {where}"):
            pool.createXML(volume_xml(spec.overlay_volume, spec.disk.size_gib * GIB, "qcow2", plan.base), 0)

    def _grow_overlay(self, spec: VmSpec, domain: Any, size: int) -> None:
        where = f"disk {spec.overlay_volume!r} of VM {spec.name!r} on {self.uri}"
        with translated(f"cannot grow {where}"):
            if domain is not None and domain.isActive():
                # qemu holds the image open: resize through it, not behind its back.
                domain.blockResize("vda", size, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            else:
                pool = self.conn.storagePoolLookupByName(spec.disk.pool)
                pool.storageVolLookupByName(spec.overlay_volume).resize(size, 0)

    def _upload_seed(self, spec: VmSpec, iso: bytes) -> None:
        pool = self.find_pool(spec.disk.pool)
        existing = self.find_volume(pool, spec.seed_volume)
        if existing is not None:
            self._delete_volume(
                existing, f"volume {spec.seed_volume!r} in pool {spec.disk.pool!r} on {self.uri}"
            )
        self.upload_volume(pool, spec.disk.pool, spec.seed_volume, "raw", len(iso), io.BytesIO(iso), len(iso))

    def _define(self, name: str, xml: str) -> None:
        with translated(f"cannot define VM {name!r} on {self.uri}"):
            self.conn.defineXML(xml)

    def _converge_autostart(self, domain: Any, autostart: bool, changes: _Changes) -> None:
        name = domain.name()
        with translated(f"cannot set autostart on VM {name!r} on {self.uri}"):
            if bool(domain.autostart()) != autostart:
                changes.apply(
                    f"set autostart={autostart} on VM {name}", lambda: domain.setAutostart(int(autostart))
                )

    def _converge_power(self, request: VmRequest, domain: Any, desired: str, changes: _Changes) -> bool:
        """Start, stop or restart; True when the VM runs an older definition that waits for a restart."""
        name = request.name
        if request.state == "present":
            return False  # the power state is someone else's (a BMC): never touched
        with translated(f"cannot change the power state of VM {name!r} on {self.uri}"):
            state = _domain_state(domain)
            if request.state == "stopped":
                if state != "stopped":
                    changes.apply(
                        f"shut down VM {name}", lambda: self._shutdown(domain, request.shutdown_timeout)
                    )
                return False
            if state == "stopped":
                changes.apply(f"start VM {name}", domain.create)
                return False
            if state == "paused":
                changes.apply(f"resume VM {name}", domain.resume)
            pending = changed_fields(
                meaningful(self._domain_xml(domain, inactive=False)), meaningful(desired)
            )
        if not pending:
            return False
        if request.restart_allowed:
            changes.apply(
                f"restart VM {name} ({', '.join(pending)} changed)", lambda: self._restart(domain, request)
            )
            return False
        changes.warnings.append(
            f"VM {name} runs with an older definition ({', '.join(pending)} changed); the new one "
            "takes effect at its next boot (set restart_allowed: true to restart it now)"
        )
        return True

    def _shutdown(self, domain: Any, timeout: float) -> None:
        """Graceful ACPI shutdown, then destroy if the guest has not powered off within ``timeout``."""
        with translated(f"cannot shut down VM {domain.name()!r} on {self.uri}"):
            domain.shutdown()
            deadline = self.clock() + timeout
            while domain.isActive():
                if self.clock() >= deadline:
                    domain.destroy()
                    break
                self.sleep(0.5)

    def _restart(self, domain: Any, request: VmRequest) -> None:
        self._shutdown(domain, request.shutdown_timeout)
        with translated(f"cannot start VM {request.name!r} on {self.uri}"):
            domain.create()

    def _power_only_vm(self, request: VmRequest, domain: Any, changes: _Changes) -> Outcome:
        persistent = self._domain_xml(domain, inactive=True)
        before = self._vm_summary(domain, persistent)
        autostart = before["autostart"] if request.autostart is None else request.autostart
        self._converge_autostart(domain, autostart, changes)
        restart_required = self._converge_power(request, domain, persistent, changes)
        after = {**before, "state": request.state, "autostart": autostart}
        facts = {
            "macs": [nic["mac"] for nic in before["interfaces"]],
            "restart_required": restart_required,
            "seed_sha256": before["seed_sha256"],
        }
        return Outcome(request.name, request.state, before, after, changes.actions, changes.warnings, facts)

    def _absent_vm(self, request: VmRequest, domain: Any, changes: _Changes) -> Outcome:
        persistent = None if domain is None else self._domain_xml(domain, inactive=True)
        if persistent is not None and not is_berth_domain(persistent):
            raise LibvirtError(
                f"VM {request.name!r} on {self.uri} was not defined by Berth (no berth metadata); "
                "refusing to remove it and its disks. Remove it yourself if it really is to go"
            )
        before = self._vm_summary(domain, persistent)
        volumes = self._vm_volumes(request, persistent)
        if volumes:
            before["volumes"] = sorted(volume.name() for volume in volumes)
        if domain is not None:
            with translated(f"cannot remove VM {request.name!r} on {self.uri}"):
                if domain.isActive():
                    changes.apply(f"destroy VM {request.name}", domain.destroy)
                flags = (
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                )
                changes.apply(f"undefine VM {request.name}", lambda: domain.undefineFlags(flags))
        for volume in volumes:
            where = f"volume {volume.name()!r} of VM {request.name!r} on {self.uri}"
            changes.apply(
                f"delete volume {volume.name()}", functools.partial(self._delete_volume, volume, where)
            )
        facts = {"macs": [], "restart_required": False, "seed_sha256": None}
        return Outcome(
            request.name, "absent", before, {"state": "absent"}, changes.actions, changes.warnings, facts
        )

    def _vm_volumes(self, request: VmRequest, persistent: str | None) -> list[Any]:
        """The VM's own volumes (overlay and seed, by name), found through its disks or in ``request.pool``.

        Other disks, the base volume above all, are never touched.
        """
        own = {overlay_volume_name(request.name), seed_volume_name(request.name)}
        found: dict[str, Any] = {}
        for disk in meaningful(persistent)["disks"] if persistent else []:
            path = disk["source"] or ""
            volume = self._lookup(
                f"volume at {path}", functools.partial(self.conn.storageVolLookupByPath, path)
            )
            if volume is not None and volume.name() in own:
                found[volume.key()] = volume
        pool = self.find_pool(request.pool) if request.pool else None
        for volume_name in sorted(own) if pool is not None else []:
            volume = self.find_volume(pool, volume_name)
            if volume is not None:
                found[volume.key()] = volume
        return [found[key] for key in sorted(found)]


def check_disk(spec: VmSpec, base: VolumeInfo | None, overlay: VolumeInfo | None) -> list[str]:
    """The root disk can be built (or kept): a usable base, no shrinking; returns warnings.

    An existing disk on another base (the guest image moved on, e.g. a new kernel on the controller)
    is kept as it is, with a warning: rebasing a disk in place would lose what the VM wrote.
    """
    disk = spec.disk
    if base is not None and base.format not in VOLUME_FORMATS:
        raise LibvirtError(f"base volume {disk.base_volume!r} is {base.format}, not qcow2 or raw")
    if base is not None and disk.size_gib * GIB < base.capacity:
        raise LibvirtError(
            f"disk.size_gib {disk.size_gib} is smaller than base volume {disk.base_volume!r} "
            f"({base.capacity / GIB:.2f} GiB)"
        )
    if overlay is None:
        return []
    warnings = []
    if base is not None and overlay.backing != base.path:
        warnings.append(
            f"the disk of VM {spec.name!r} ({overlay.name}) stays on its base {overlay.backing}; new VMs get "
            f"base volume {disk.base_volume!r}. Remove the VM (state=absent) and create it again to move it"
        )
    if overlay.capacity > disk.size_gib * GIB:
        raise LibvirtError(
            f"the disk of VM {spec.name!r} is {overlay.capacity / GIB:g} GiB; shrinking it to "
            f"{disk.size_gib} GiB would destroy data, so it is refused"
        )
    return warnings


def _root_disk_summary(spec: VmSpec, capacity: int | None) -> dict[str, Any]:
    return {
        "pool": spec.disk.pool,
        "volume": spec.overlay_volume,
        "base_volume": spec.disk.base_volume,
        "size_gib": None if capacity is None else round(capacity / GIB, 3),
    }


def _volume_summary(info: VolumeInfo | None) -> dict[str, Any]:
    if info is None:
        return {"state": "absent"}
    return {"state": "present", "path": info.path, "format": info.format, "capacity": info.capacity}
