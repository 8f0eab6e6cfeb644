# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt networks: a bridge onto a host bridge, or an isolated bridge libvirt creates.

A running network that differs from the request is only redefined and restarted when allowed: every
VM on it loses its link meanwhile.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.rules import ifname_problems
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.changes import Changes, Outcome
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.connection import Manager
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.errors import (
    LibvirtError,
    name_problems,
    no_stray_libvirt_errors,
    refuse_invalid,
    translated,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.xmlutil import (
    parse_xml,
    serialize,
    sub,
    text_of,
)

NETWORK_MODES = ("bridge", "isolated")


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    mode: str
    bridge: str

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> NetworkSpec | None:
        """None for state=absent, which needs nothing but the name."""
        name = str(params["name"])
        problems = name_problems(name, "name")
        spec = None
        if params.get("state", "present") == "present":
            spec = cls(name=name, mode=str(params.get("mode") or ""), bridge=str(params.get("bridge") or ""))
            if spec.mode not in NETWORK_MODES:
                problems.append(f"mode must be one of {', '.join(NETWORK_MODES)}")
            if not spec.bridge:
                problems.append("bridge is required")
            else:
                problems.extend(ifname_problems(spec.bridge, "bridge"))
        refuse_invalid("network", name, problems)
        return spec


def network_xml(spec: NetworkSpec, existing: str | None = None) -> str:
    """The network's definition; from ``existing`` it keeps what libvirt assigned (uuid, bridge MAC)."""
    root = ET.Element("network")
    sub(root, "name", spec.name)
    old = parse_xml(existing, f"network {spec.name!r}") if existing else None
    if old is not None and text_of(old.find("uuid")):
        sub(root, "uuid", text_of(old.find("uuid")))
    if spec.mode == "bridge":
        sub(root, "forward", mode="bridge")
        sub(root, "bridge", name=spec.bridge)
    else:
        sub(root, "bridge", name=spec.bridge, stp="on", delay="0")
        # the MAC libvirt gave the bridge it created (absent when the network was a bridge/NAT one)
        old_mac = None if old is None or old.find("forward") is not None else old.find("mac")
        if old_mac is not None:
            root.append(old_mac)
    return serialize(root)


def meaningful_network(xml: str) -> dict[str, Any]:
    root = parse_xml(xml, "a network")
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


class NetworkManager(Manager):
    @no_stray_libvirt_errors
    def ensure(
        self, name: str, spec: NetworkSpec | None, check_mode: bool, restart_allowed: bool = False
    ) -> Outcome:
        changes = Changes(check_mode)
        network = self.connection.find_network(name)
        before = self._summary(network)
        with translated(f"cannot change network {name!r} on {self.uri}"):
            if spec is None:
                if network is not None:
                    if network.isActive():
                        changes.apply(f"stop network {name}", network.destroy)
                    changes.apply(f"undefine network {name}", network.undefine)
                after: dict[str, Any] = {"state": "absent"}
            else:
                self._present(network, spec, before, changes, restart_allowed)
                after = {"state": "running", **meaningful_network(network_xml(spec)), "autostart": True}
        return changes.outcome(name, after["state"], before, after, {"bridge": after.get("bridge")})

    def _summary(self, network: Any) -> dict[str, Any]:
        return self.summary("network", network, meaningful_network)

    def _present(
        self,
        network: Any,
        spec: NetworkSpec,
        before: dict[str, Any],
        changes: Changes,
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
