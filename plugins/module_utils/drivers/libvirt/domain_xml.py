# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The domain XML of a VM: rendered from its spec, merged with what libvirt assigned, compared.

Idempotency compares the *meaningful* parts of a definition, parsed from its XML (never the XML
text): libvirt adds defaults, addresses and live-only elements that say nothing about what was asked
for.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.domain import BootSpec, VmSpec
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.errors import LibvirtError
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.xmlutil import (
    MIB,
    parse_xml,
    scaled_bytes,
    serialize,
    sub,
    text_of,
)

BERTH_NS = "https://berth.dev/xmlns/vm/1"


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
    sub(root, "name", spec.name)
    metadata = sub(sub(root, "metadata"), "berth:vm", **{"xmlns:berth": BERTH_NS})
    if seed_sha256:
        sub(metadata, "berth:seed", sha256=seed_sha256)
    sub(root, "memory", str(spec.memory_mib), unit="MiB")
    sub(root, "vcpu", str(spec.vcpus))
    _render_os(sub(root, "os"), spec.boot, paths)
    features = sub(root, "features")
    sub(features, "acpi")
    sub(features, "apic")
    if spec.tcg_cache_mib:
        sub(sub(features, "tcg"), "tb-cache", str(spec.tcg_cache_mib), unit="MiB")
    if spec.domain_type == "kvm":
        sub(root, "cpu", mode="host-passthrough")
    sub(root, "on_poweroff", "destroy")
    sub(root, "on_reboot", "restart")
    sub(root, "on_crash", "restart")
    _render_devices(sub(root, "devices"), spec, paths)
    return serialize(root)


def _render_os(os_element: ET.Element, boot: BootSpec | None, paths: DomainPaths) -> None:
    sub(os_element, "type", "hvm")
    if boot is None:
        sub(os_element, "boot", dev="hd")
        return
    sub(os_element, "kernel", paths.kernel or "")
    if paths.initrd:
        sub(os_element, "initrd", paths.initrd)
    if boot.cmdline:
        sub(os_element, "cmdline", boot.cmdline)


def _render_devices(devices: ET.Element, spec: VmSpec, paths: DomainPaths) -> None:
    root_disk = sub(devices, "disk", type="file", device="disk")
    sub(root_disk, "driver", name="qemu", type=paths.overlay_format, discard="unmap")
    sub(root_disk, "source", file=paths.overlay)
    sub(root_disk, "target", dev="vda", bus="virtio")
    if paths.seed:
        seed_disk = sub(devices, "disk", type="file", device="disk")
        sub(seed_disk, "driver", name="qemu", type="raw")
        sub(seed_disk, "source", file=paths.seed)
        sub(seed_disk, "target", dev="vdb", bus="virtio")
        sub(seed_disk, "readonly")
    for nic in spec.nics:
        interface = sub(devices, "interface", type="network")
        sub(interface, "mac", address=nic.mac)
        sub(interface, "source", network=nic.network)
        sub(interface, "model", type="virtio")
    sub(devices, "serial", type="pty")
    sub(devices, "console", type="pty")
    rng = sub(devices, "rng", model="virtio")
    sub(rng, "backend", "/dev/urandom", model="random")


# Devices libvirt adds by itself: kept on redefinition so that guest-visible addresses stay put.
_LIBVIRT_ADDED_DEVICES = ("controller", "memballoon", "input")


def merge_libvirt_assigned(desired_xml: str, existing_xml: str) -> str:
    """The desired definition plus what libvirt assigned to the existing one: uuid, machine type,
    device addresses and the controllers it added (so the guest's PCI layout and NIC names stay)."""
    desired = parse_xml(desired_xml, "the desired domain")
    existing = parse_xml(existing_xml, "the existing domain")
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
    return serialize(desired)


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
    root = parse_xml(xml, "a domain")
    memory = scaled_bytes(root.find("memory"), default_unit="KiB") or 0
    tb_cache = scaled_bytes(root.find("features/tcg/tb-cache"), default_unit="KiB")
    seed = root.find(f"metadata/{{{BERTH_NS}}}vm/{{{BERTH_NS}}}seed")
    return {
        "domain_type": root.get("type"),
        "vcpus": int(text_of(root.find("vcpu")) or 0),
        "memory_mib": memory // MIB,
        "tcg_cache_mib": None if tb_cache is None else tb_cache // MIB,
        "boot": _meaningful_boot(root),
        "disks": [_meaningful_disk(disk) for disk in root.findall("devices/disk")],
        "interfaces": [_meaningful_interface(nic) for nic in root.findall("devices/interface")],
        "seed_sha256": None if seed is None else seed.get("sha256"),
    }


def is_berth_domain(xml: str) -> bool:
    return parse_xml(xml, "a domain").find(f"metadata/{{{BERTH_NS}}}vm") is not None


def _meaningful_boot(root: ET.Element) -> dict[str, Any] | None:
    kernel = text_of(root.find("os/kernel"))
    if not kernel:
        return None  # boots from the first disk
    return {
        "kernel": kernel,
        "initrd": text_of(root.find("os/initrd")),
        "cmdline": text_of(root.find("os/cmdline")) or None,
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
