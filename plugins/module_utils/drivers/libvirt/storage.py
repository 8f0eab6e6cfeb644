# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Storage pools and volumes as data: their parameters, their XML, and the disk images to upload,
read from their headers. ``pools.py`` and ``volumes.py`` change them."""

from __future__ import annotations

import os
import struct
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.errors import (
    LibvirtError,
    name_problems,
    refuse_invalid,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.xmlutil import (
    parse_xml,
    scaled_bytes,
    serialize,
    sub,
    text_of,
)

VOLUME_FORMATS = ("raw", "qcow2")
QCOW2_MAGIC = b"QFI\xfb"


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
        root = parse_xml(xml, "a storage volume")
        fmt = root.find("target/format")
        return cls(
            name=text_of(root.find("name")) or "",
            path=text_of(root.find("target/path")) or "",
            format=None if fmt is None else fmt.get("type"),
            capacity=scaled_bytes(root.find("capacity")) or 0,
            backing=text_of(root.find("backingStore/path")),
        )


def volume_xml(name: str, capacity: int, fmt: str, backing: VolumeInfo | None = None) -> str:
    root = ET.Element("volume")
    sub(root, "name", name)
    sub(root, "capacity", str(capacity), unit="bytes")
    sub(root, "allocation", "0", unit="bytes")
    sub(sub(root, "target"), "format", type=fmt)
    if backing is not None:
        store = sub(root, "backingStore")
        sub(store, "path", backing.path)
        sub(store, "format", type=backing.format or "raw")
    return serialize(root)


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
        problems = [*name_problems(spec.pool, "pool"), *name_problems(spec.name, "name")]
        if spec.format is not None and spec.format not in VOLUME_FORMATS:
            problems.append(f"format must be one of {', '.join(VOLUME_FORMATS)}")
        if params.get("state", "present") == "present" and not spec.src:
            problems.append("src is required to upload a volume")
        refuse_invalid("volume", spec.name, problems)
        return spec


# --- disk images --------------------------------------------------------------------------------


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


# --- pools --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolSpec:
    name: str
    path: str | None
    autostart: bool = True

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PoolSpec:
        spec = cls(name=str(params["name"]), path=params.get("path"), autostart=bool(params["autostart"]))
        problems = name_problems(spec.name, "name")
        if params.get("state", "present") == "present":
            if not spec.path:
                problems.append("path is required to create a pool")
            elif not spec.path.startswith("/"):
                problems.append(f"path must be absolute, got {spec.path!r}")
        refuse_invalid("pool", spec.name, problems)
        return spec


def pool_xml(spec: PoolSpec) -> str:
    root = ET.Element("pool", type="dir")
    sub(root, "name", spec.name)
    sub(sub(root, "target"), "path", os.path.normpath(spec.path or ""))
    return serialize(root)


def meaningful_pool(xml: str) -> dict[str, Any]:
    root = parse_xml(xml, "a storage pool")
    path = text_of(root.find("target/path"))
    return {"type": root.get("type"), "path": os.path.normpath(path) if path else None}
