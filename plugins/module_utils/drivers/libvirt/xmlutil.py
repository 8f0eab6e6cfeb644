# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading and writing libvirt XML: parsing with a clear error, scaled integers, building elements.

(Not named ``xml.py``: a module that shadows the standard library's ``xml`` is a trap for whoever
runs a file of this folder directly.)
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.errors import LibvirtError

GIB = 1024**3
MIB = 1024**2
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


def parse_xml(xml: str, what: str) -> ET.Element:
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


def text_of(element: ET.Element | None) -> str | None:
    return None if element is None or element.text is None else element.text.strip()


def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    child = ET.SubElement(parent, tag, attrs)
    if text is not None:
        child.text = text
    return child


def serialize(root: ET.Element) -> str:
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"
