# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: nodes
short_description: The unique nodes (VMs, nspawn machines, metal hosts) behind a list of Berth hosts
version_added: 0.1.0
author:
  - Berth maintainers (@berth)
description:
  - Several inventory hosts can share one node (colocated instances). Returns each node once, with
    its datacenter, machine, substrate, address, prefix, gateway, lab bridge, the hosts it carries,
    and the summed C(vcpus) and C(memory_mib) of the service instances on it (0 for load balancers),
    their cgroup C(limits) (C(cpu_quota_percent), C(memory_max_mib)) and the C(size) the node must be
    made as (at least C(minimum); a lab's emulated bare-metal host is its declared hardware).
  - The same file provides C(domain_nodes), used as
    C(hostvars | berth.fleet.domain_nodes(groups, berth_lab, minimum=...)), which returns the nodes that
    are libvirt domains (every VM, and in a lab the domains playing its bare metal),
    C(cgroup_limits), used as C(berth_service_spec.resources | berth.fleet.cgroup_limits), the limits
    of one instance, and C(metal_lifecycle), used as C(berth_state_dir | berth.fleet.metal_lifecycle(host)),
    which returns a bare-metal host's lifecycle state from Berth's record, or C(new).
options:
  _input:
    description: C(hostvars).
    type: dict
    required: true
  hosts:
    description: Hosts of a C(berth.fleet.topology) inventory.
    type: list
    elements: str
    required: true
  minimum:
    description: The smallest node to make (C(vcpus), C(memory_mib), C(disk_gib)); only affects C(size).
    type: dict
"""

EXAMPLES = r"""
- name: Create every local node once
  berth.fleet.nspawn_host:
    name: "{{ item.name }}"
    address: "{{ item.address }}/{{ item.prefix }}"
  loop: "{{ hostvars | berth.fleet.nodes(groups['substrate_local']) }}"
"""

RETURN = r"""
_value:
  description: One dictionary per node.
  type: list
  elements: dict
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.berth.fleet.plugins.module_utils.drivers.metal.lifecycle import (
    MetalError,
    MetalStore,
)
from ansible_collections.berth.fleet.plugins.module_utils.model.nodes import (
    cgroup_limits,
    domain_nodes,
    nodes,
)


def metal_lifecycle(state_dir: str, host: str) -> str:
    """Where a bare-metal host is in its lifecycle, from Berth's record: a state, or "new"."""
    try:
        record = MetalStore(state_dir).load(host)
    except MetalError as exc:
        raise AnsibleFilterError(str(exc)) from None
    return "new" if record is None else str(record.state)


def instance_limits(resources):
    """The cgroup limits of one instance's resources (``vcpus``, ``memory_mib``)."""
    return cgroup_limits(int(resources["vcpus"]), int(resources["memory_mib"]))


class FilterModule:
    def filters(self):
        return {
            "nodes": nodes,
            "domain_nodes": domain_nodes,
            "metal_lifecycle": metal_lifecycle,
            "cgroup_limits": instance_limits,
        }
