#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: blue_green
short_description: Which colour of a blue-green service a deploy goes to, and the record of its switches
version_added: "0.4.0"
author:
  - Berth maintainers (@berth)
description:
  - O(action=plan) says which colour is live (every load balancer's route map must say the same)
    and which is idle - the one a deploy of O(target) goes to - with the routes before and after
    the switch. A colour that was live before and is still kept warm (its C(scale_down_delay) has
    not passed) is refused as a target for another version unless O(replace_warm); the version it
    already runs is the switch back.
  - O(action=record) appends a switch (O(switch)) to the colours record
    (C(<state_dir>/rollouts/<service>.colours.json)); the colour it left is warm for
    O(scale_down_delay) seconds.
  - O(action=retired) records that the warm colour O(colour) was retired (its instances stopped once
    its C(scale_down_delay) was over); O(action=plan) says which colour is due (C(plan.retire)).
  - O(action=previous) returns the version the colour before the last switch runs (what a
    blue-green rollback switches back to).
  - Controller only; changes nothing outside the state directory.
options:
  action:
    description: What to do.
    type: str
    choices: [plan, record, retired, previous]
    required: true
  state_dir:
    description: The environment's state directory (C(berth_state_dir)).
    type: path
    required: true
  service:
    description: The service.
    type: str
    required: true
  colours:
    description: The service's colours (C(berth_service_spec.colours)).
    type: dict
  members:
    description: Per colour, its instances as P(berth.fleet.rollout_members#filter) gives them.
    type: dict
  maps:
    description: Per load balancer, its route map of the service (C(live), C(preview)).
    type: dict
  target:
    description: The version to deploy.
    type: str
  replace_warm:
    description: Deploy onto a colour still kept warm for a switch back.
    type: bool
    default: false
  switch:
    description:
      - The switch to record - C(from), C(to), C(from_version), C(to_version), C(disagreed_for), C(reason).
    type: dict
  colour:
    description: The colour retired (O(action=retired)).
    type: str
  retire:
    description: The strategy's C(retire) - V(stop) retires a warm colour after its delay, V(keep) never.
    type: str
    choices: [stop, keep]
    default: stop
  scale_down_delay:
    description: Seconds the colour a switch left stays warm.
    type: float
    default: 0
attributes:
  action:
    support: full
    description: Runs in the controller's process (its action plugin), not as a module run.
  check_mode:
    support: full
    description: O(action=record) reports what it would record and writes nothing.
  diff_mode:
    support: none
    description: No diff.
  idempotent:
    support: partial
    description: O(action=record) appends a switch each time; the others only read.
"""

EXAMPLES = r"""
- name: Where orders v2 goes
  berth.fleet.blue_green:
    action: plan
    state_dir: "{{ berth_state_dir }}"
    service: orders
    colours: "{{ berth_service_spec.colours }}"
    members: {blue: [], green: []}
    maps: {lb-dc1: {live: be_orders_blue, preview: be_orders_green}}
    target: v2
  delegate_to: localhost
"""

RETURN = r"""
plan:
  description: live, idle, live_version, idle_version, warm, warm_until, routes_now, routes_after.
  returned: action=plan
  type: dict
record:
  description: The colours record after the switch.
  returned: action=record
  type: dict
version:
  description: The version of the colour before the last switch.
  returned: action=previous
  type: str
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.common.failure import ModuleFailure, exit_module
from ansible_collections.berth.fleet.plugins.module_utils.planner.bluegreen import (
    BlueGreenError,
    plan_colours,
    previous_version,
    read_record,
    record_retired,
    record_switch,
)

ARGUMENT_SPEC: dict[str, Any] = {
    "action": {"type": "str", "choices": ["plan", "record", "retired", "previous"], "required": True},
    "state_dir": {"type": "path", "required": True},
    "service": {"type": "str", "required": True},
    "colours": {"type": "dict"},
    "members": {"type": "dict"},
    "maps": {"type": "dict"},
    "target": {"type": "str"},
    "replace_warm": {"type": "bool", "default": False},
    "switch": {"type": "dict"},
    "scale_down_delay": {"type": "float", "default": 0},
    "colour": {"type": "str"},
    "retire": {"type": "str", "choices": ["stop", "keep"], "default": "stop"},
}
REQUIRED_IF: list[tuple[str, Any, list[str]]] = [
    ("action", "plan", ["colours", "members", "maps", "target"]),
    ("action", "record", ["switch"]),
    ("action", "retired", ["colour"]),
]


def run(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    service, state_dir = params["service"], params["state_dir"]
    try:
        if params["action"] == "previous":
            return {"changed": False, "version": previous_version(read_record(state_dir, service))}
        if params["action"] == "plan":
            colours = params["colours"] or {}
            if len(colours) != 2:
                raise BlueGreenError(
                    f"{service} is not a blue-green service (its colours: {sorted(colours)})"
                )
            plan = plan_colours(
                colours,
                params["members"],
                params["maps"],
                read_record(state_dir, service),
                params["target"],
                params["replace_warm"],
                retire=params["retire"],
            )
            return {"changed": False, "plan": plan.as_dict()}
        if params["action"] == "retired":
            if check_mode:
                return {"changed": True, "record": {"would_retire": params["colour"]}}
            return {"changed": True, "record": record_retired(state_dir, service, params["colour"])}
        switch = params["switch"]
        for key in ("from", "to"):
            if not switch.get(key):
                raise BlueGreenError(f"switch: {key} is required")
        if check_mode:
            return {"changed": True, "record": {"would_record": switch}}
        return {
            "changed": True,
            "record": record_switch(state_dir, service, switch, params["scale_down_delay"]),
        }
    except BlueGreenError as exc:
        raise ModuleFailure(f"{service}: {exc}; nothing was changed") from None


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, supports_check_mode=True)
    exit_module(module, run)


if __name__ == "__main__":
    main()
