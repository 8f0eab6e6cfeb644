#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: rollout_plan
short_description: Plan a zero-downtime rollout of one service (batches, budgets, preflight disruption check)
version_added: 0.1.0
author:
  - Berth maintainers (@berth)
description:
  - Pure planning, runs on the controller and changes nothing. Given every instance of a service
    with its datacenter, ordinal, current version and whether it is UP on every load balancer,
    returns the instances that need the target version in DC-aware batches of at most
    O(max_unavailable), or fails before anything is touched when the current state makes the
    rollout unsafe (instances already DOWN beyond a budget).
  - See docs/rollouts.md in the collection for the rules.
options:
  service:
    description: Service name.
    type: str
    required: true
  target:
    description: Version to roll out.
    type: str
    required: true
  max_unavailable:
    description: Instances that may be unavailable at once (a count; the inventory resolves percentages).
    type: int
    required: true
  batch_size:
    description:
      - Instances per batch, at most O(max_unavailable); V(0) means O(max_unavailable). A batch
        smaller than O(max_unavailable) leaves room to drain the next batch while this one is cycled.
    type: int
    default: 0
    version_added: 0.3.0
  datacenter:
    description:
      - Scopes the plan to this datacenter's instances (a per-DC reconcile, one job per DC's
        execution node). Such a plan only repairs instances already out of rotation, in one batch;
        one that would take a serving instance out of rotation is refused, since the service's
        O(max_unavailable) is one budget for all its datacenters. O(members) are still all of the
        service's instances. Empty (the default) plans for the whole service.
    type: str
    default: ""
    version_added: 0.3.0
  members:
    description: Every instance of the service.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Inventory host of the instance.
        type: str
        required: true
      dc:
        description: Its datacenter.
        type: str
        required: true
      ordinal:
        description: Its ordinal (catalog-3 is 3).
        type: int
        required: true
      version:
        description: Version its current release runs, empty when nothing is installed.
        type: str
      up:
        description: Whether it is UP and in rotation on every load balancer.
        type: bool
        required: true
attributes:
  action:
    support: full
    description:
      - Runs in the controller's process (its action plugin), not as a module run - no local Python
        process on the critical path of a rollout. It always acts on the controller.
  check_mode:
    support: full
    description: Planning changes nothing, in check mode or not.
  diff_mode:
    support: none
    description: Nothing changes.
  idempotent:
    support: full
    description: The same inputs give the same plan.
"""

EXAMPLES = r"""
- name: Plan
  berth.fleet.rollout_plan:
    service: catalog
    target: v2
    max_unavailable: 1
    members:
      - {name: catalog-1, dc: dc1, ordinal: 1, version: v1, up: true}
      - {name: catalog-2, dc: dc2, ordinal: 2, version: v1, up: true}
  register: plan
"""

RETURN = r"""
batches:
  description: Instance names per batch, in order.
  returned: success
  type: list
  elements: list
steps:
  description:
    - The traffic steps that run the batches, each a dict of C(ready) (put back in rotation and UP
      first, on every load balancer), C(drain) (then out of rotation), C(wait_drained) (then no
      session left), C(cycle) (then stopped, switched, started and gated) and C(early) (the next
      batch, drained already in this step because both fit within O(max_unavailable) and the DC
      budgets). A last step readies the last batch.
  returned: success
  type: list
  elements: dict
  version_added: 0.3.0
overlap:
  description: Whether any step drains the next batch early.
  returned: success
  type: bool
  version_added: 0.3.0
hosts:
  description: All instances to update, batch by batch.
  returned: success
  type: list
  elements: str
serial:
  description: Batch sizes, for a play's C(serial) over O(members) in C(hosts) order.
  returned: success
  type: list
  elements: int
up_to_date:
  description: Instances already on the target version and UP.
  returned: success
  type: list
  elements: str
dc_budget:
  description: Instances per datacenter that may be unavailable at once.
  returned: success
  type: dict
first_deploy:
  description: True when nothing was UP, so everything goes in one batch.
  returned: success
  type: bool
repair:
  description:
    - True when every instance to touch is already out of rotation (a reconcile, or a rerun after
      instances died). Touching them costs no capacity, so they go in one batch whatever the budgets.
  returned: success
  type: bool
  version_added: 0.2.0
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.common.failure import ModuleFailure, exit_module
from ansible_collections.berth.fleet.plugins.module_utils.planner.rollout import (
    Member,
    RolloutError,
    plan_rollout,
)

# one argument spec for both paths: this module, and its action plugin (run on the controller)
ARGUMENT_SPEC: dict[str, Any] = {
    "service": {"type": "str", "required": True},
    "target": {"type": "str", "required": True},
    "max_unavailable": {"type": "int", "required": True},
    "batch_size": {"type": "int", "default": 0},
    "datacenter": {"type": "str", "default": ""},
    "members": {
        "type": "list",
        "elements": "dict",
        "required": True,
        "options": {
            "name": {"type": "str", "required": True},
            "dc": {"type": "str", "required": True},
            "ordinal": {"type": "int", "required": True},
            "version": {"type": "str"},
            "up": {"type": "bool", "required": True},
        },
    },
}
REQUIRED_IF: list[tuple[str, Any, list[str]]] = []


def run(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    members = [
        Member(m["name"], m["dc"], m["ordinal"], m["version"] or None, m["up"]) for m in params["members"]
    ]
    try:
        plan = plan_rollout(
            params["service"],
            members,
            params["target"],
            params["max_unavailable"],
            params["batch_size"],
            params["datacenter"] or "",
        )
    except RolloutError as exc:
        raise ModuleFailure(str(exc)) from None
    return {"changed": False, **plan.as_dict()}


def main() -> None:
    exit_module(AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True), run)


if __name__ == "__main__":
    main()
