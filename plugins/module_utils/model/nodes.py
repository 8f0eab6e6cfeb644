# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nodes behind an inventory: one VM / nspawn machine per node, whatever shares it.

Several inventory hosts can share one node (colocated instances in CI); provisioning must create
each node once, sized for everything on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def nodes(hostvars: Mapping[str, Mapping[str, Any]], hosts: Sequence[str]) -> list[dict[str, Any]]:
    """Unique nodes of the given hosts, in host order, with the resources of all they carry."""
    by_name: dict[str, dict[str, Any]] = {}
    for host in hosts:
        host_vars = hostvars[host]
        name = str(host_vars["berth_node"])
        datacenter = host_vars["berth_datacenters"][host_vars["berth_dc"]]
        node = by_name.setdefault(
            name,
            {
                "name": name,
                "hosts": [],
                "dc": host_vars["berth_dc"],
                "machine": host_vars.get("berth_machine", ""),
                "substrate": host_vars.get("berth_substrate", ""),
                "address": host_vars["berth_address"],
                "prefix": datacenter["prefix"],
                "gateway": datacenter["gateway"],
                "bridge": host_vars.get("berth_bridge", ""),
                "hypervisor": host_vars.get("berth_hypervisor"),
                # never the BMC: its password reference would be resolved wherever a node is shown
                "metal": host_vars.get("berth_metal"),
                "vcpus": 0,
                "memory_mib": 0,
                "disk_gib": 0,
            },
        )
        node["hosts"].append(host)
        resources = host_vars.get("berth_service_spec", {}).get("resources")
        if resources:  # load balancers carry no service: no limits
            node["vcpus"] += resources["vcpus"]
            node["memory_mib"] += resources["memory_mib"]
            # colocated instances share one root disk: the largest request sizes it
            node["disk_gib"] = max(node["disk_gib"], resources.get("disk_gib", 0))
    return list(by_name.values())


def domain_nodes(
    hostvars: Mapping[str, Mapping[str, Any]], groups: Mapping[str, Sequence[str]], lab_namespace: str
) -> list[dict[str, Any]]:
    """The nodes that are libvirt domains: every VM, and in a lab the domains playing its bare metal."""
    hosts = list(groups.get("substrate_vm", []))
    if lab_namespace:
        hosts += list(groups.get("substrate_metal", []))
    return nodes(hostvars, hosts)
