# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rules of a spec that span entries: unique names and addresses, apart pools, unique ports,
hypervisor bridges, lab bridge names.

`spec.py` runs them once every entry has parsed on its own; the names that only exist once the
spec is placed (hosts, groups, nodes) are checked by `names.py`.
"""

from __future__ import annotations

import ipaddress

from ansible_collections.berth.fleet.plugins.module_utils.model.statedir import IFNAMSIZ, bridge_name
from ansible_collections.berth.fleet.plugins.module_utils.model.topology import SpecError, Topology


def check_references(topology: Topology) -> None:
    """Raise the first SpecError among the rules between entries, in the order the spec reads."""
    _hypervisor_bridges(topology)
    _unique_names(topology)
    _unique_ports(topology)
    _apart_pools(topology)
    _fixed_addresses(topology)
    _lab_bridges(topology)


def _hypervisor_bridges(topology: Topology) -> None:
    for machine in topology.machines:
        if machine.virt is not None and not machine.virt.bridge and not topology.lab_namespace:
            raise SpecError(
                topology.source,
                f"{machine.key}.bridge",
                "is required: the host bridge that carries datacenter "
                f"{machine.dc}'s network on this hypervisor (only a lab estate defaults it to its DC bridge)",
            )


def _unique_names(topology: Topology) -> None:
    """Machines, load balancers and services share one namespace (they name hosts, nodes and groups)."""
    seen: dict[str, str] = {}
    entries: list[tuple[str, str]] = []
    for dc in topology.datacenters:
        entries += [(m.name, m.key) for m in dc.machines] + [(lb.name, lb.key) for lb in dc.loadbalancers]
    entries += [(s.name, f"services.{s.name}") for s in topology.services]
    for name, key in entries:
        if name in seen:
            raise SpecError(
                topology.source, key, f"duplicate name: {name!r} is already declared at {seen[name]}"
            )
        seen[name] = key


def _unique_ports(topology: Topology) -> None:
    ports: dict[int, str] = {}
    for service in topology.services:
        key = f"services.{service.name}"
        if service.port in ports:
            # the load balancers listen on each service's port
            raise SpecError(
                topology.source,
                f"{key}.port",
                f"expected a port no other service uses, got {service.port} (also {ports[service.port]})",
            )
        ports[service.port] = key


def _apart_pools(topology: Topology) -> None:
    for index, dc in enumerate(topology.datacenters):
        for other in topology.datacenters[:index]:
            if dc.pool.network.overlaps(other.pool.network):
                raise SpecError(
                    topology.source,
                    f"estate.datacenters.{dc.name}.address_pool.cidr",
                    f"expected a network apart from datacenter {other.name}'s {other.pool.network}, "
                    f"got {dc.pool.network}",
                )


def _fixed_addresses(topology: Topology) -> None:
    """Gateways, metal hosts and load balancers: unique, and outside the range Berth hands out."""
    seen: dict[ipaddress.IPv4Address, str] = {}
    for dc in topology.datacenters:
        fixed = [(dc.pool.gateway, f"estate.datacenters.{dc.name}.address_pool.gateway")]
        fixed += [(m.address, f"{m.key}.address") for m in dc.machines if m.address]
        fixed += [(lb.address, f"{lb.key}.address") for lb in dc.loadbalancers]
        for address, key in fixed:
            if address in seen:
                raise SpecError(
                    topology.source, key, f"duplicate address {address}: already used by {seen[address]}"
                )
            if dc.pool.start <= address <= dc.pool.end:
                raise SpecError(
                    topology.source,
                    key,
                    f"expected an address outside the allocation range {dc.pool.start}-{dc.pool.end} "
                    f"(Berth hands those out), got {address}",
                )
            seen[address] = key


def _lab_bridges(topology: Topology) -> None:
    """A lab names each datacenter's bridge after it, cut to an interface name: they must differ."""
    if not topology.lab_namespace:
        return
    bridges: dict[str, str] = {}
    for dc in topology.datacenters:
        bridge = bridge_name(dc.name)
        if bridge in bridges:
            raise SpecError(
                topology.source,
                f"estate.datacenters.{dc.name}",
                f"expected datacenter names that differ in their first {IFNAMSIZ - 3} characters "
                f"(the lab bridge {bridge!r} would also serve {bridges[bridge]})",
            )
        bridges[bridge] = dc.name
