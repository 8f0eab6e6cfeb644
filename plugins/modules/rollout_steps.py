#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: rollout_steps
short_description: One instance's whole part of a rolling upgrade, every step in one task
version_added: "0.3.0"
author:
  - Berth maintainers (@berth)
description:
  - Runs on the controller (an action plugin). Every instance of a rollout runs this task at the
    same moment; the rollout journal on the controller (M(berth.fleet.rollout_journal)) is where
    they meet and what keeps the plan's O(steps) in order.
  - Each instance waits until its batch is drained on every load balancer, then cycles itself
    (the M(berth.fleet.instance_cycle) module on its node - stop, switch, start, health gate,
    revert on a failed gate). The traffic part of each step (M(berth.fleet.lb_traffic) - ready the
    batch before, drain this one, wait, on every load balancer at once) is run by the first
    instance that finds it due; the journal records the claim first, so exactly one runs it.
  - So the next step starts the moment the last instance of a batch reports healthy, with no task,
    include or module run in between; the only module runs of the whole rollout are one cycle per
    instance.
  - A failed cycle or traffic part halts the rollout (recorded in the journal, with what became of
    the failed hosts); every other instance then stops where it is, and the caller recovers
    (C(roles/rollout/tasks/recover.yml)).
  - Needs as many forks as instances in the play, which the plan checks. An instance that waits for
    a fork could never report, and its batch would wait for it.
options:
  steps:
    description:
      - The plan's steps (M(berth.fleet.rollout_plan) C(steps)), each with C(ready), C(drain),
        C(wait_drained) and C(cycle).
    type: list
    elements: dict
    required: true
  traffic:
    description:
      - The arguments of M(berth.fleet.lb_traffic) every traffic step shares - C(lbs), C(backend),
        C(socket), C(poll_interval), C(ready_timeout), C(drain_timeout), C(persist).
        C(ready), C(drain) and C(wait_drained) come from each step.
    type: dict
    required: true
  cycle:
    description: The arguments of M(berth.fleet.instance_cycle) for this instance.
    type: dict
    required: true
  journal:
    description: The rollout's journal - C(state_dir) and C(service).
    type: dict
    required: true
  halt:
    description:
      - Why this instance cannot take part (its install failed, it could not be reached). Not empty,
        its part halts the rollout at once with this reason (recorded in the journal as this
        instance's failure, so every other instance stops and the caller recovers).
    type: str
    default: ""
attributes:
  action:
    support: full
    description: Runs on the controller; only the cycle runs as a module, on the instance's node.
  check_mode:
    support: full
    description:
      - Each instance reports what its cycle would change, and the first instance of each batch
        what that batch's traffic step would change; nothing is sent and the journal is not written.
  diff_mode:
    support: full
    description: The diffs of the cycle and of the traffic steps this instance reports.
notes:
  - Progress is printed as it happens, one line per traffic step and per cycle, with their waits.
seealso:
  - module: berth.fleet.lb_traffic
  - module: berth.fleet.instance_cycle
  - module: berth.fleet.rollout_journal
"""

EXAMPLES = r"""
- name: Every step of the plan, this instance's cycle when its batch is drained everywhere
  berth.fleet.rollout_steps:
    steps: "{{ hostvars['localhost'].rollout_plan.steps }}"
    traffic:
      lbs: "{{ hostvars | berth.fleet.ssh_targets(groups['lb']) }}"
      backend: be_catalog
    cycle:
      instance: "{{ inventory_hostname }}"
      artifact: catalog
      version: v2
      unit: "berth-{{ inventory_hostname }}.service"
      health:
        url: http://127.0.0.1:8080/health
    journal:
      state_dir: "{{ berth_state_dir }}"
      service: catalog
"""

RETURN = r"""
parts:
  description:
    - What this instance's task ran, in order - C(step), C(part) (C(traffic) or C(cycle)),
      C(seconds), C(failed) and the part's own result.
  returned: always
  type: list
  elements: dict
cycle:
  description: This instance's M(berth.fleet.instance_cycle) result; empty when it did not cycle.
  returned: always
  type: dict
waited:
  description: Seconds this instance's task spent waiting for parts run elsewhere.
  returned: always
  type: float
"""

ARGUMENT_SPEC = {
    "steps": {"type": "list", "elements": "dict", "required": True},
    "traffic": {"type": "dict", "required": True},
    "cycle": {"type": "dict", "required": True},
    "journal": {"type": "dict", "required": True},
    "halt": {"type": "str", "default": ""},
}

if __name__ == "__main__":
    from ansible.module_utils.basic import AnsibleModule

    AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True).fail_json(
        msg="berth.fleet.rollout_steps runs on the controller, through its action plugin"
    )
