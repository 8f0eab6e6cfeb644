# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: rollout_members
short_description: Rollout members (DC, ordinal, current version, UP on every LB) from hostvars
version_added: 0.1.0
author:
  - Berth maintainers (@berth)
description:
  - Input for M(berth.fleet.rollout_plan). Reads each instance's C(berth_dc), C(berth_instance),
    the version its C(__rollout_release) query (M(berth.fleet.release) C(state=query)) found, and
    whether every load balancer's C(loadbalancer_result.servers) has the instance in rotation.
  - The same file provides C(rollout_reachable), used as
    C(hostvars | berth.fleet.rollout_reachable(hosts)), which returns the hosts whose
    C(__rollout_release) query ran and reached them; and C(rollout_outcome), used as
    C(journal | berth.fleet.rollout_outcome(verb, service, state_dir)), which returns what a verb
    publishes with C(set_stats) - C(verb), C(service), C(version), C(status), C(batches)
    (C(planned), C(done)), C(failures), C(outcome) and the C(journal) path; and C(colour_members),
    used as C(hostvars | berth.fleet.colour_members(groups, colours, lb_hosts)), which returns
    C(rollout_members) per colour of a blue-green service (C(berth_service_spec.colours)).
options:
  _input:
    description: C(hostvars).
    type: dict
    required: true
  hosts:
    description: The service's instances.
    type: list
    elements: str
    required: true
  lb_hosts:
    description: The load balancers.
    type: list
    elements: str
    required: true
  backend:
    description: The service's HAProxy backend.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Members
  ansible.builtin.set_fact:
    members: "{{ hostvars | berth.fleet.rollout_members(groups['svc_catalog'], groups['lb'], 'be_catalog') }}"
"""

RETURN = r"""
_value:
  description: One dict per instance with name, dc, ordinal, version and up.
  type: list
  elements: dict
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.berth.fleet.plugins.module_utils.planner.journal import (
    JournalError,
    journal_path,
    outcome,
)
from ansible_collections.berth.fleet.plugins.module_utils.planner.rollout import (
    members_from_inventory,
    reachable_in_inventory,
)


def rollout_outcome(journal, verb, service, state_dir, scope=""):
    """What a verb publishes with set_stats, from the rollout journal (``planner/journal.py``) of
    the run's ``scope`` (a datacenter, or none: the whole service)."""
    try:
        path = journal_path(str(state_dir), str(service), str(scope or ""))
    except JournalError as exc:
        raise AnsibleFilterError(str(exc)) from None
    return outcome(dict(journal or {}), str(verb), str(service), str(path))


def colour_members(hostvars, groups, colours, lb_hosts):
    """Per colour of a blue-green service, its instances as ``rollout_members`` gives them."""
    return {
        name: members_from_inventory(
            hostvars, list(groups.get(body["group"], [])), list(lb_hosts), body["backend"]
        )
        for name, body in dict(colours or {}).items()
    }


class FilterModule:
    def filters(self):
        return {
            "rollout_members": members_from_inventory,
            "rollout_reachable": reachable_in_inventory,
            "rollout_outcome": rollout_outcome,
            "colour_members": colour_members,
        }
