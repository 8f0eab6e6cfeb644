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
    the C(__rollout_current) version the rollout role queried, and whether every load balancer's
    C(__rollout_lb) state has the instance in rotation.
  - The same file provides C(rollout_halt), used as
    C(previous | berth.fleet.rollout_halt(hosts, hostvars, 'registered_var')) between the phases of
    the rolling steps, which returns C({}) while every host's registered step result succeeded, else
    the first C(reason) and the hosts that must C(keep_out) of rotation.
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
    desired_version,
    journal_batch_done,
    journal_started,
    waits,
)
from ansible_collections.berth.fleet.plugins.module_utils.planner.progress import halt_state
from ansible_collections.berth.fleet.plugins.module_utils.planner.rollout import members_from_inventory


def rollout_batch_done(journal, hosts, seconds, drained, gates, ups):
    return journal_batch_done(
        journal,
        list(hosts),
        float(seconds),
        drain_waits=waits(drained, "waited"),
        risen_after=waits(gates, "risen_after"),
        ready_waits=waits(ups, "waited"),
    )


def rollout_desired_version(journal, inventory_version, service):
    try:
        return desired_version(journal or {}, str(inventory_version), str(service))
    except JournalError as exc:
        raise AnsibleFilterError(str(exc)) from None


def rollout_halt(previous, hosts, hostvars, result_var):
    """The halt state after a phase of the rolling steps, from each host's registered ``result_var``."""
    results = {host: hostvars[host].get(result_var) for host in hosts}
    return halt_state(previous or {}, list(hosts), results)


class FilterModule:
    def filters(self):
        return {
            "rollout_members": members_from_inventory,
            "rollout_journal_started": journal_started,
            "rollout_journal_batch_done": rollout_batch_done,
            "rollout_desired_version": rollout_desired_version,
            "rollout_halt": rollout_halt,
        }
