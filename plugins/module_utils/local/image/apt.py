# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading apt and dpkg: the Debian mirror the controller already uses, and what a rootfs has installed."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path


def find_debian_mirror(sources: Mapping[str, str], suite: str) -> str | None:
    """The first plain Debian archive URI in apt's sources that serves ``suite``.

    ``sources`` maps a file name to its text; both one-line (``.list``) and deb822 (``.sources``)
    formats are read. Security and updates suites are not the main archive and are skipped.
    """
    for filename in sorted(sources):
        text = sources[filename]
        entries = _deb822_entries(text) if filename.endswith(".sources") else _one_line_entries(text)
        for uris, suites in entries:
            if suite not in suites:
                continue
            for uri in uris:
                if uri.rstrip("/").endswith("/debian"):
                    return uri.rstrip("/")
    return None


def _one_line_entries(text: str) -> Iterator[tuple[list[str], list[str]]]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        words = re.sub(r"\[[^]]*\]", " ", line).split()[1:]
        if len(words) >= 2:
            yield [words[0]], [words[1]]


def _deb822_entries(text: str) -> Iterator[tuple[list[str], list[str]]]:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for raw in stanza.splitlines():
            if raw.lstrip().startswith("#") or ":" not in raw or raw[:1].isspace():
                continue
            key, value = raw.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        yield fields.get("uris", "").split(), fields.get("suites", "").split()


def read_apt_sources(etc_apt: Path = Path("/etc/apt")) -> dict[str, str]:
    sources: dict[str, str] = {}
    main = etc_apt / "sources.list"
    if main.is_file():
        sources[main.name] = main.read_text(errors="replace")
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for entry in sorted(parts.iterdir()):
            if entry.suffix in (".list", ".sources") and entry.is_file():
                sources[entry.name] = entry.read_text(errors="replace")
    return sources


def parse_dpkg_status(text: str) -> dict[str, str]:
    """Installed packages and their versions from a dpkg ``status`` file."""
    installed: dict[str, str] = {}
    native_arch = _dpkg_native_arch(text)
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for raw in stanza.splitlines():
            if raw[:1].isspace() or ":" not in raw:
                continue
            key, value = raw.split(":", 1)
            fields[key] = value.strip()
        if "Package" in fields and fields.get("Status", "").endswith(" installed"):
            arch = fields.get("Architecture", "")
            name = fields["Package"]
            if arch and arch not in ("all", native_arch):
                name = f"{name}:{arch}"
            installed[name] = fields.get("Version", "")
    return dict(sorted(installed.items()))


def _dpkg_native_arch(text: str) -> str:
    # dpkg does not record the native arch in status; the arch of dpkg itself is it.
    match = re.search(r"^Package: dpkg\n(?:.+\n)*?Architecture: (\S+)", text, re.MULTILINE)
    return match.group(1) if match else ""
