# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: placement_table
short_description: Render the placement of a Berth environment as a text table
version_added: 0.1.0
author:
  - Berth maintainers (@berth)
description:
  - Turns the hosts of a C(berth.fleet.topology) inventory into a table of instance, datacenter,
    machine, node, address and port, one row per host, sorted by datacenter and machine.
options:
  _input:
    description: C(hostvars).
    type: dict
    required: true
  hosts:
    description: The hosts to show, for example C(groups['instances'] + groups['lb']).
    type: list
    elements: str
    required: true
  title:
    description: First line of the table.
    type: str
    default: placement
"""

EXAMPLES = r"""
- name: Show where every instance landed
  ansible.builtin.debug:
    msg: "{{ hostvars | berth.fleet.placement_table(groups['instances'], title='prod') }}"
"""

RETURN = r"""
_value:
  description: The table, one line per host.
  type: str
"""

from ansible_collections.berth.fleet.plugins.module_utils.model.report import placement_rows, render_table


def placement_table(hostvars, hosts, title="placement"):
    return render_table(title, placement_rows(hosts, hostvars))


class FilterModule:
    def filters(self):
        return {"placement_table": placement_table}
