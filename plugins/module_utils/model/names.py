# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every name Berth derives from a placed spec, and the rule that none of them collides.

* Inventory hosts (instances ``<service>-<n>``, load balancers) and groups share Ansible's one
  namespace: a host named like another host or like a group takes its place or breaks the group.
* Nodes (``<env>-<service>-<n>``, ``<env>-<machine>`` when colocated, ``<env>-<lb>``, bare-metal
  hosts, existing load balancers) are host names on the network and machine names to libvirt and
  nspawn: unique, one DNS label of at most 63 characters.
* A datacenter's libvirt network, ``berth-<env>-<dc>``, is a libvirt name.

The inventory (`inventory.py`) uses these same functions, so what is checked is what is built.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ansible_collections.berth.fleet.plugins.module_utils.common.rules import (
    libvirt_name_problem,
    node_name_problem,
)
from ansible_collections.berth.fleet.plugins.module_utils.model.topology import (
    Instance,
    LoadBalancer,
    Member,
    Placement,
    SpecError,
    Topology,
)

_UNSAFE_GROUP_CHARS = re.compile(r"[^A-Za-z0-9_]")
BUILTIN_GROUPS = {
    "all": "Ansible's built-in group all",
    "ungrouped": "Ansible's built-in group ungrouped",
    "instances": "the inventory group of every instance",
    "lb": "the inventory group of every load balancer",
    "execution_nodes": "the inventory group of every execution node",
    "databases": "the inventory group of every database member",
    "dcs": "the inventory group of every etcd member (Patroni's store)",
}
LB_SUBSTRATE = {"hypervisor": "vm", "local": "local"}


def group_name(prefix: str, name: str) -> str:
    """A valid Ansible group name: `dc-1` under prefix `dc` becomes `dc_dc_1`."""
    return f"{prefix}_{_UNSAFE_GROUP_CHARS.sub('_', name)}"


def colour_group(service: str, colour: str) -> str:
    """The inventory group of one colour of a blue-green service: ``colour_orders_green``."""
    return group_name("colour", f"{service}_{colour}")


def colour_backend(service: str, colour: str) -> str:
    """The HAProxy backend of one colour of a blue-green service: ``be_orders_green``."""
    return f"be_{service}_{colour}"


def track_group(service: str, track: str) -> str:
    """The inventory group of one track of a canary service: ``track_payments_canary``."""
    return group_name("track", f"{service}_{track}")


def instance_groups(topology: Topology, instance: Instance) -> list[str]:
    colour = [colour_group(instance.service, instance.colour)] if instance.colour else []
    if instance.track:
        colour.append(track_group(instance.service, instance.track))
    return [
        group_name("env", topology.environment),
        "instances",
        group_name("svc", instance.service),
        group_name("dc", instance.dc),
        group_name("machine", instance.machine),
        group_name("substrate", topology.service(instance.service).substrate),
        *colour,
    ]


def db_group(cluster: str) -> str:
    """The inventory group of one database cluster's members: ``db_orders_db``, ``db_shared_db``."""
    return group_name("db", cluster)


def member_groups(topology: Topology, member: Member) -> list[str]:
    """A database member is in ``databases`` and its cluster's group; an etcd member in ``dcs``;
    both in their DC's, machine's and substrate's groups (provision makes their nodes)."""
    role = ["databases", db_group(member.cluster)] if member.kind == "database" else ["dcs"]
    return [
        group_name("env", topology.environment),
        *role,
        group_name("dc", member.dc),
        group_name("machine", member.machine),
        group_name("substrate", member.substrate),
    ]


def lb_substrate(topology: Topology, lb: LoadBalancer) -> str:
    """What carries a load balancer: a VM, an nspawn machine, or an existing host of the user's."""
    carrier = topology.carrier(lb)
    return LB_SUBSTRATE[carrier.kind] if carrier else "existing"


def lb_groups(topology: Topology, lb: LoadBalancer) -> list[str]:
    """A load balancer is in ``lb`` and ``lb_<dc>``; an execution node in ``execution_nodes`` and
    ``execution_<dc>`` (the hosts of the DC's AWX instance group)."""
    role_groups = (
        ["lb", group_name("lb", lb.dc)]
        if lb.role == "lb"
        else [
            "execution_nodes",
            group_name("execution", lb.dc),
        ]
    )
    groups = [group_name("env", topology.environment), *role_groups, group_name("dc", lb.dc)]
    if lb.machine:
        groups += [group_name("machine", lb.machine), group_name("substrate", lb_substrate(topology, lb))]
    return groups


def node_name(topology: Topology, name: str) -> str:
    """A node Berth makes: an instance's (`prod-catalog-2`), a colocated machine's, an LB's."""
    return f"{topology.environment}-{name}"


def lb_node(topology: Topology, lb: LoadBalancer) -> str:
    """The node Berth makes for a load balancer on a machine; an existing one is its own node."""
    return node_name(topology, lb.name) if lb.machine else lb.name


def libvirt_network(topology: Topology, dc: str) -> str:
    """One libvirt network per environment and datacenter on each hypervisor (and lab metal)."""
    return f"berth-{topology.environment}-{dc}"


class _Names:
    """Names that must not repeat; a claim says who owns a name (its key in the spec and what it is)."""

    def __init__(self, source: str, expected: str) -> None:
        self.source = source
        self.expected = expected
        self.owners: dict[str, tuple[str, str]] = {}

    def claim(self, name: str, key: str, what: str) -> None:
        owner = self.owners.setdefault(name, (key, what))
        if owner != (key, what):
            where = f" ({owner[0]})" if owner[0] else ""
            raise SpecError(
                self.source, key, f"expected {self.expected}: {name!r}, {what}, is also {owner[1]}{where}"
            )


def check_generated_names(placement: Placement) -> None:
    """Raise SpecError, naming the key that caused it, where a derived name collides or is invalid."""
    topology = placement.topology
    # a member's collision is reported at the key that sized its cluster
    keys = {cluster.name: cluster.key for cluster in placement.clusters}
    members = [(member, keys[member.cluster]) for member in placement.members]
    _check_hosts_and_groups(topology, placement.instances, members)
    _check_nodes(topology, placement.instances, members)
    for dc in topology.datacenters:
        if any(m.kind == "hypervisor" or (m.kind == "metal" and topology.lab_namespace) for m in dc.machines):
            network = libvirt_network(topology, dc.name)
            problem = libvirt_name_problem(network)
            if problem is not None:
                raise SpecError(
                    topology.source,
                    f"estate.datacenters.{dc.name}",
                    "expected a shorter datacenter or environment name: the libvirt network of this "
                    f"datacenter (berth-<environment>-<datacenter>), {problem}",
                )


def _check_hosts_and_groups(
    topology: Topology, instances: tuple[Instance, ...], members: Sequence[tuple[Member, str]] = ()
) -> None:
    groups: dict[str, tuple[str, str]] = {name: ("", what) for name, what in BUILTIN_GROUPS.items()}

    def group(name: str, key: str) -> None:
        groups.setdefault(name, (key, f"an inventory group made from {key}"))

    group(group_name("env", topology.environment), "environment.name")
    for service in topology.services:  # a service with no instances still has its group
        group(group_name("svc", service.name), f"services.{service.name}")
    for instance in instances:
        for name in instance_groups(topology, instance):
            group(name, f"services.{instance.service}")
    for lb in topology.loadbalancers:
        for name in lb_groups(topology, lb):
            group(name, lb.key)
    for member, key in members:
        for name in member_groups(topology, member):
            group(name, key)
    hosts = _Names(topology.source, "a name no other inventory host or group has")
    hosts.owners.update(groups)  # groups first: a host named like one is what the user can rename
    for instance in instances:
        what = f"the inventory host of instance {instance.ordinal} of service {instance.service}"
        hosts.claim(instance.name, f"services.{instance.service}", what)
    for lb in topology.loadbalancers:
        hosts.claim(lb.name, lb.key, f"the inventory host of a {lb.what}")
    for member, key in members:
        what = f"the inventory host of member {member.ordinal} of {member.cluster}"
        hosts.claim(member.name, key, what)


def _check_nodes(
    topology: Topology, instances: tuple[Instance, ...], members: Sequence[tuple[Member, str]] = ()
) -> None:
    """Nodes Berth names are claimed before the names the user wrote, which are then what collides.

    Machines count whether or not they carry anything yet, so scaling never makes a spec invalid.
    """
    generated = [
        (i.node, f"services.{i.service}", f"the node of {i.name}, named <env>-<service>-<n>")
        for i in instances
        if i.machine_kind != "metal" and not topology.colocation
    ]
    if topology.colocation:
        generated += [
            (node_name(topology, m.name), m.key, f"the node of machine {m.name}, named <env>-<machine>")
            for m in topology.machines
            if m.kind != "metal"
        ]
    generated += [
        (m.node, key, f"the node of {m.name}, named <env>-<cluster>-<n>")
        for m, key in members
        if m.machine_kind != "metal"
    ]
    written = [
        (m.name, m.key, f"the bare-metal host {m.name}") for m in topology.machines if m.kind == "metal"
    ]
    for lb in topology.loadbalancers:
        if lb.machine:
            generated.append(
                (lb_node(topology, lb), lb.key, f"the node of {lb.what} {lb.name}, named <env>-<name>")
            )
        else:
            written.append((lb.name, lb.key, f"the existing {lb.what} host {lb.name}"))
    nodes = _Names(topology.source, "a name no other node has")
    for node, key, what in generated + written:
        problem = node_name_problem(node)
        if problem is not None:
            raise SpecError(topology.source, key, f"expected a shorter name: {what}, {problem}")
        nodes.claim(node, key, what)
