# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nodes behind an inventory: one VM / nspawn machine per node, whatever shares it.

Several inventory hosts can share one node (colocated instances in CI); provisioning must create
each node once, sized for everything on it. This is the one place a node's size is derived: the sum
of what its instances ask for (``vcpus``, ``memory_mib``, the largest ``disk_gib``), the cgroup limits
that ring-fence them (``limits``) and, for a domain, the machine it must be (``size``: a VM's sums
raised to the minimum a VM needs, a lab's emulated bare-metal host its declared hardware).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def cgroup_limits(vcpus: int, memory_mib: int) -> dict[str, int]:
    """What systemd / a cgroup enforces for this many vCPUs and MiB (0 means no limit)."""
    return {"cpu_quota_percent": vcpus * 100, "memory_max_mib": memory_mib}


def nodes(
    hostvars: Mapping[str, Mapping[str, Any]],
    hosts: Sequence[str],
    minimum: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Unique nodes of the given hosts, in host order, with the resources of all they carry.

    ``minimum`` (``vcpus``, ``memory_mib``, ``disk_gib``) is the smallest machine a node may be
    made as; it only affects ``size``.
    """
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
        # what the host runs: an instance its service's resources, a database or etcd member its
        # cluster's (berth_member_spec); a load balancer carries neither: no limits
        resources = (host_vars.get("berth_service_spec") or host_vars.get("berth_member_spec") or {}).get(
            "resources"
        )
        if resources:
            node["vcpus"] += resources["vcpus"]
            node["memory_mib"] += resources["memory_mib"]
            # colocated instances share one root disk: the largest request sizes it
            node["disk_gib"] = max(node["disk_gib"], resources.get("disk_gib", 0))
    for node in by_name.values():
        node["limits"] = cgroup_limits(node["vcpus"], node["memory_mib"])
        node["size"] = _size(node, minimum or {})
    return list(by_name.values())


def _size(node: Mapping[str, Any], minimum: Mapping[str, int]) -> dict[str, int]:
    hardware = (node.get("metal") or {}).get("hardware")
    if hardware:  # a bare-metal host is what it is
        vcpus, memory_mib = int(hardware["vcpus"]), int(hardware["memory_mib"])
    else:
        vcpus = max(node["vcpus"], minimum.get("vcpus", 0))
        memory_mib = max(node["memory_mib"], minimum.get("memory_mib", 0))
    return {
        "vcpus": vcpus,
        "memory_mib": memory_mib,
        "disk_gib": max(node["disk_gib"], minimum.get("disk_gib", 0)),
    }


def domain_nodes(
    hostvars: Mapping[str, Mapping[str, Any]],
    groups: Mapping[str, Sequence[str]],
    lab: bool,
    minimum: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """The nodes that are libvirt domains: every VM, and in a lab the domains playing its bare metal."""
    hosts = list(groups.get("substrate_vm", []))
    if lab:
        hosts += list(groups.get("substrate_metal", []))
    return nodes(hostvars, hosts, minimum)
