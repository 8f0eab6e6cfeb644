# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One rule per fact: what a version, a Berth name, a node name, a libvirt name and an interface
name may look like.

The spec parser, the role preflights (through modules and filters) and the drivers all call these,
so a value the spec accepts is never refused later, and the other way round. Each checker returns
``None`` when the value is fine, or the phrase that says what was expected.
"""

from __future__ import annotations

import re

# a release version: v2, 1.4.0, 2026.11.1-rc1 ... never a path, never a space, never a moving name
# such as "latest" (an artifact is built once per version and never changes)
VERSION_MAX = 64
VERSION_RE = re.compile(r"^v?[0-9][A-Za-z0-9._-]{0,62}$")
VERSION_EXPECTED = (
    "a version such as v2, 1.4.0 or 2.0.0-rc1 (a digit, or 'v' and a digit, then letters, digits, "
    "'.', '_' or '-'; at most 64 characters)"
)

# services, machines, load balancers, datacenters, artifacts, environments in the topology spec
NAME_MAX = 32
NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$")
NAME_EXPECTED = "a name of lowercase letters, digits and '-' (max 32, starting with a letter)"

# a node Berth makes (nspawn machine, VM hostname): one DNS label
DNS_LABEL_MAX = 63
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

# libvirt domains, pools, networks and volumes
LIBVIRT_NAME_MAX = 63
LIBVIRT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

# Linux network interface names (IFNAMSIZ - 1)
IFNAME_MAX = 15
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
RESERVED_IFNAMES = ("lo", "all", "default")

# network namespaces (a file name under /run/netns)
NETNS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def version_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"expected {VERSION_EXPECTED} as a string"
    if not VERSION_RE.match(value):
        return f"expected {VERSION_EXPECTED}, got {value!r}"
    return None


def name_problem(value: object) -> str | None:
    if not isinstance(value, str) or not NAME_RE.match(value):
        return f"expected {NAME_EXPECTED}, got {value!r}"
    return None


def node_name_problem(value: str) -> str | None:
    if len(value) > DNS_LABEL_MAX:
        return (
            f"{value!r} is {len(value)} characters: a node name is one DNS label of at most {DNS_LABEL_MAX}"
        )
    if not DNS_LABEL_RE.match(value):
        return (
            f"{value!r} is not a DNS label "
            "(lowercase letters, digits and '-', not starting or ending with '-')"
        )
    return None


def libvirt_name_problem(value: str) -> str | None:
    if LIBVIRT_NAME_RE.match(value):
        return None
    return (
        f"{value!r} must be 1-{LIBVIRT_NAME_MAX} letters, digits, '.', '_' or '-', "
        "starting with a letter or digit"
    )


def ifname_problem(value: str) -> str | None:
    if len(value) > IFNAME_MAX:
        return f"{value!r} is {len(value)} characters; Linux allows at most {IFNAME_MAX}"
    if not IFNAME_RE.match(value) or value in RESERVED_IFNAMES:
        reserved = ", ".join(repr(name) for name in RESERVED_IFNAMES)
        return f"{value!r} must match {IFNAME_RE.pattern} and not be {reserved}"
    return None


def netns_problem(value: str) -> str | None:
    if NETNS_RE.match(value):
        return None
    return f"{value!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


def ifname_problems(name: str, what: str) -> list[str]:
    """``[]`` or the one problem with an interface name, prefixed with what it names."""
    problem = ifname_problem(name)
    return [f"{what} {problem}"] if problem else []
