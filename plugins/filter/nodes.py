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
    and the summed C(vcpus) and C(memory_mib) of the service instances on it (0 for load balancers).
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

from ansible_collections.berth.fleet.plugins.module_utils._nodes import nodes


class FilterModule:
    def filters(self):
        return {"nodes": nodes}
