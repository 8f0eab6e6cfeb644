# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""From a placement to Ansible inventory content (hosts, groups, variables).

Kept free of Ansible's inventory classes so it is unit-testable and so the inventory plugin's
``parse()`` stays a few lines: it only copies this structure into Ansible's inventory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.model import dbaccess, statedir
from ansible_collections.berth.fleet.plugins.module_utils.model.names import (
    colour_backend,
    colour_group,
    group_name,
    instance_groups,
    lb_groups,
    lb_node,
    lb_substrate,
    libvirt_network,
    member_groups,
    track_group,
)
from ansible_collections.berth.fleet.plugins.module_utils.model.placement import place
from ansible_collections.berth.fleet.plugins.module_utils.model.source import AsWritten
from ansible_collections.berth.fleet.plugins.module_utils.model.spec import parse_topology
from ansible_collections.berth.fleet.plugins.module_utils.model.topology import (
    Instance,
    Machine,
    Member,
    Placement,
    Topology,
    VirtSettings,
)

DEFAULT_STATE_DIR = "/var/lib/berth"


@dataclass
class InventoryData:
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    group_vars: dict[str, dict[str, Any]] = field(default_factory=dict)

    def service_vars(self, host_vars: dict[str, Any]) -> dict[str, Any]:
        """The variables a host gets from its service group (none for load balancers)."""
        service = host_vars.get("berth_service")
        return self.group_vars.get(group_name("svc", service), {}) if service else {}

    def add(self, host: str, host_vars: dict[str, Any], groups: list[str]) -> None:
        self.hosts[host] = host_vars
        for group in groups:
            self.groups.setdefault(group, []).append(host)


def load_placement(raw: Any, source: str, written: AsWritten | None = None) -> Placement:
    """Validate the raw spec and place it (every derived name checked); raises SpecError."""
    return place(parse_topology(raw, source, written))


def build_inventory(placement: Placement, state_dir: str = DEFAULT_STATE_DIR) -> InventoryData:
    topology = placement.topology
    data = InventoryData()
    data.group_vars["all"] = {
        "berth_environment": topology.environment,
        "berth_colocation": topology.colocation,
        "berth_datacenters": _datacenters(topology),
        "berth_state_dir": str(statedir.environment_dir(state_dir, topology.environment)),
        # the one fact that says "this environment is a local lab on this machine": roles branch on it
        "berth_lab": bool(topology.lab_namespace),
        "berth_lab_namespace": topology.lab_namespace,
        "berth_lab_bridges": _lab_bridges(topology),
        # the environment's database estate: the shared cluster, Patroni's store (issue 14)
        "berth_databases": topology.databases.as_dict(),
        # what every load balancer fronts of them (two ports per cluster) and etcd's members
        "berth_db_endpoints": dbaccess.lb_clusters(placement),
        "berth_dcs_members": dbaccess.dcs_members(placement),
    }
    # a service's descriptor sits on its group, so each host carries only its own service's
    for service_name, descriptor in _services(topology).items():
        data.group_vars[group_name("svc", service_name)] = {"berth_service_spec": descriptor}
    for instance in placement.instances:
        machine = topology.machine(instance.machine)
        instance_vars = _instance_vars(topology, instance, machine)
        database = dbaccess.instance_database(placement, instance)
        if database is not None:
            instance_vars["berth_database"] = database
        data.add(instance.name, instance_vars, instance_groups(topology, instance))
    for member in placement.members:
        machine = topology.machine(member.machine)
        data.add(
            member.name, _member_vars(topology, placement, member, machine), member_groups(topology, member)
        )
    for lb in placement.loadbalancers():
        carrier = topology.carrier(lb)
        host_vars: dict[str, Any] = {
            "ansible_host": str(lb.address),
            "berth_role": lb.role,
            "berth_dc": lb.dc,
            "berth_address": str(lb.address),
            "berth_machine": lb.machine,
            "berth_substrate": lb_substrate(topology, lb),
            "berth_node": lb_node(topology, lb),
        }
        if carrier is not None and carrier.virt is not None:
            host_vars["berth_hypervisor"] = _hypervisor_vars(topology, carrier, carrier.virt)
        data.add(lb.name, host_vars, lb_groups(topology, lb))
    if topology.lab_namespace:
        for host_vars in data.hosts.values():
            host_vars.update(_lab_connection(topology, state_dir, host_vars["berth_dc"]))
    else:
        # Nodes Berth makes (VMs, bare metal) have host keys Berth generated and recorded in its own
        # known_hosts: SSH must check against that file, strictly. Other hosts are the user's.
        for host_vars in data.hosts.values():
            if host_vars.get("berth_substrate") in ("vm", "metal"):
                host_vars["ansible_ssh_common_args"] = (
                    f"-o UserKnownHostsFile={statedir.known_hosts(state_dir, topology.environment)} "
                    "-o StrictHostKeyChecking=yes"
                )
    return data


def _lab_bridges(topology: Topology) -> list[dict[str, str]]:
    """The lab's datacenter bridges, each holding its DC's gateway address."""
    if not topology.lab_namespace:
        return []
    return [
        {
            "name": statedir.bridge_name(dc.name),
            "address": f"{dc.pool.gateway}/{dc.pool.network.prefixlen}",
        }
        for dc in topology.datacenters
    ]


def _lab_connection(topology: Topology, state_dir: str, dc: str) -> dict[str, Any]:
    """How the controller reaches a node inside the lab namespace: SSH through the namespace."""
    env = topology.environment
    return {
        "berth_bridge": statedir.bridge_name(dc),
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(statedir.operator_key(state_dir, env)),
        "ansible_ssh_common_args": statedir.ssh_common_args(state_dir, env, topology.lab_namespace),
        # labs reuse addresses in different namespaces: never share an SSH master across environments
        "ansible_control_path": f"%(directory)s/{env}-%%C",
    }


def _instance_vars(topology: Topology, instance: Instance, machine: Machine) -> dict[str, Any]:
    service = topology.service(instance.service)
    host_vars: dict[str, Any] = {
        "ansible_host": str(instance.address),
        "berth_role": "instance",
        "berth_service": instance.service,
        "berth_instance": instance.ordinal,
        "berth_dc": instance.dc,
        "berth_machine": instance.machine,
        "berth_machine_kind": instance.machine_kind,
        "berth_substrate": service.substrate,
        "berth_node": instance.node,
        "berth_address": str(instance.address),
        "berth_port": instance.port,
    }
    if instance.colour:
        host_vars["berth_colour"] = instance.colour
    if instance.track:
        host_vars["berth_track"] = instance.track
    return {**host_vars, **_machine_vars(topology, machine)}


def _machine_vars(topology: Topology, machine: Machine) -> dict[str, Any]:
    """What a host placed on ``machine`` needs of it: its hypervisor, or its bare-metal host and BMC."""
    host_vars: dict[str, Any] = {}
    if machine.virt is not None:
        host_vars["berth_hypervisor"] = _hypervisor_vars(topology, machine, machine.virt)
    if machine.kind == "metal":
        host_vars["berth_metal"] = {
            "name": machine.name,
            "hardware": machine.capacity.sizes(),
        }
        if topology.lab_namespace:
            # a lab has no physical machines: a libvirt domain behind an emulated BMC plays each one
            host_vars["berth_hypervisor"] = _lab_metal_emulation(topology, machine)
    if machine.bmc is not None:
        host_vars["berth_bmc"] = _bmc_vars(machine)
    return host_vars


def _bmc_vars(machine: Machine) -> dict[str, Any]:
    bmc = machine.bmc
    if bmc is None:
        return {}
    return {
        "address": bmc.address,
        "username": bmc.username,
        "password": bmc.password,  # a vault reference, resolved only where it is used
        "driver": bmc.driver,
        "verify_tls": bmc.verify_tls,
        "ca_path": bmc.ca_path,
    }


def _member_vars(
    topology: Topology, placement: Placement, member: Member, machine: Machine
) -> dict[str, Any]:
    """A database or etcd member: where it runs, and ``berth_member_spec`` (its cluster: kind,
    members, the services it serves, each member's resources), what provision sizes its node by."""
    cluster = next(c for c in placement.clusters if c.name == member.cluster)
    host_vars: dict[str, Any] = {
        "ansible_host": str(member.address),
        "berth_role": member.kind,
        "berth_cluster": member.cluster,
        "berth_member": member.ordinal,
        "berth_dc": member.dc,
        "berth_machine": member.machine,
        "berth_machine_kind": member.machine_kind,
        "berth_substrate": member.substrate,
        "berth_node": member.node,
        "berth_address": str(member.address),
        "berth_port": member.port,
        "berth_member_spec": {
            "cluster": cluster.name,
            "kind": cluster.kind,
            "members": cluster.members,
            "owners": list(cluster.owners),
            "resources": cluster.resources.sizes(),
        },
    }
    if member.kind == "database":
        # its pg_hba, its peers (replication), the LBs that front it (dbaccess.py)
        host_vars["berth_member_spec"]["access"] = dbaccess.member_access(placement, member)
    return {**host_vars, **_machine_vars(topology, machine)}


def _hypervisor_vars(topology: Topology, machine: Machine, virt: VirtSettings) -> dict[str, Any]:
    """Everything provision needs to make a VM on this hypervisor (libvirt_vm, libvirt_network)."""
    return {
        "name": machine.name,
        "uri": machine.uri,
        "domain_type": virt.domain_type,
        "pool": virt.pool,
        "pool_path": virt.pool_path,
        "bridge": virt.bridge or statedir.bridge_name(machine.dc),
        # one libvirt network per environment and DC on each hypervisor, in bridge mode onto `bridge`
        "network": libvirt_network(topology, machine.dc),
    }


def _lab_metal_emulation(topology: Topology, machine: Machine) -> dict[str, Any]:
    """Where a lab emulates a bare-metal host: a domain on the lab's libvirtd, in the DC's network."""
    env = topology.environment
    return {
        "name": f"lab-{machine.dc}",  # one entry per DC: each DC has its own libvirt network
        "uri": "qemu:///system",
        "domain_type": "qemu",
        "pool": f"berth-{env}",
        "pool_path": f"/var/lib/berth/pools/{env}",
        "bridge": statedir.bridge_name(machine.dc),
        "network": libvirt_network(topology, machine.dc),
        "emulates": "metal",
    }


def _services(topology: Topology) -> dict[str, Any]:
    services = {}
    for service in topology.services:
        policy = topology.policies[service.name]
        services[service.name] = {
            "artifact": service.artifact,
            "version": service.version,
            "port": service.port,
            "health": {"path": service.health.path, "status": service.health.status},
            "resources": {
                "vcpus": service.resources.vcpus,
                "memory_mib": service.resources.memory_mib,
                "disk_gib": service.resources.disk_gib,
            },
            "substrate": service.substrate,
            "instances": policy.instances,
            "max_unavailable": policy.max_unavailable,
            "strategy": policy.strategy.as_dict(),
            "parallel_run": policy.parallel_run.as_dict() if policy.parallel_run else None,
            # its database: the name (its owner role's too) and how this environment provides it
            "database": {**service.database.as_dict(), **policy.database.as_dict()}
            if service.database is not None and policy.database is not None
            else None,
            # a blue-green service's two colours: each its own LB backend and inventory group
            "colours": {
                colour: {
                    "backend": colour_backend(service.name, colour),
                    "group": colour_group(service.name, colour),
                }
                for colour in policy.strategy.colours
            },
            # a canary service's tracks (stable, canary, baseline): one backend, a group each
            "tracks": {
                track: {"group": track_group(service.name, track)} for track in policy.strategy.tracks
            },
        }
    return services


def _datacenters(topology: Topology) -> dict[str, Any]:
    return {
        dc.name: {
            "cidr": str(dc.pool.network),
            "prefix": dc.pool.network.prefixlen,
            "gateway": str(dc.pool.gateway),
        }
        for dc in topology.datacenters
    }
