#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: lb_route
short_description: Switch which backend a service's frontends use, on every load balancer at once
version_added: "0.4.0"
author:
  - Berth maintainers (@berth)
description:
  - A blue-green service's frontends choose their backend from an HAProxy map (one file per
    service, keys C(live) and C(preview)). O(action=switch) replaces that map on B(every) load
    balancer of O(lbs) with O(routes) in one step, from the controller - the runtime map with the
    Runtime API's C(prepare map), C(add map) and C(commit map) (atomic on each load balancer), the
    commits on all load balancers at the same moment, each read back with C(show map), and the map
    file written on each (HAProxy reads the file again on a reload or restart, so it keeps the
    switch).
  - If any part fails on any load balancer, every load balancer is put back to the map it had, and
    the task fails saying so. With O(expect), a load balancer whose map is neither O(expect) nor
    O(routes) refuses the switch before anything changes (someone else switched meanwhile).
  - O(action=show) reads the map of every load balancer.
  - Reaches each load balancer's Runtime API socket as M(berth.fleet.lb_traffic) does (an OpenSSH
    forward with the host's own Ansible connection settings, host keys checked); the map file is
    written over the same connection.
extends_documentation_fragment:
  - berth.fleet.lb_targets
options:
  socket:
    description: Path of the HAProxy stats socket on the load balancers, configured with C(level admin).
    type: path
    default: /run/haproxy/admin.sock
  action:
    description: V(switch) sets O(routes) everywhere; V(show) reads the map of every load balancer.
    type: str
    choices: [switch, show]
    default: switch
  map:
    description: The map file on the load balancers (as named in C(haproxy.cfg)).
    type: path
    required: true
  routes:
    description: The whole map to set, key to backend (C(live) and C(preview) for Berth's frontends).
    type: dict
  expect:
    description: The map every load balancer must have now for the switch to go ahead (or O(routes) already).
    type: dict
  serving:
    description:
      - A backend that must have at least one server in rotation on every load balancer for the
        switch to go ahead (the one O(routes) sends users to).
    type: str
    default: ""
attributes:
  action:
    support: full
    description: Runs in the controller's process (its action plugin), not as a module run.
  check_mode:
    support: full
    description: Reads every load balancer's map and says which would change; sends no command.
  diff_mode:
    support: full
    description: Each load balancer's map before and after.
  idempotent:
    support: full
    description: Load balancers that already route as asked are left alone.
seealso:
  - module: berth.fleet.lb_traffic
"""

EXAMPLES = r"""
- name: Every LB sends orders' users to green, its preview to blue
  berth.fleet.lb_route:
    lbs: "{{ hostvars | berth.fleet.ssh_targets(groups['lb']) }}"
    map: /etc/haproxy/berth-routes/orders.map
    routes: {live: be_orders_green, preview: be_orders_blue}
    expect: {live: be_orders_blue, preview: be_orders_green}
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
lbs:
  description: Per load balancer, C(before) and C(after) (its map) and C(committed_at) (epoch seconds).
  returned: always
  type: dict
disagreed_for:
  description: Seconds between the first and the last load balancer's commit (the only time they differ).
  returned: always
  type: float
undone:
  description: Load balancers put back after a failed switch.
  returned: on failure
  type: list
  elements: str
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.common.failure import ModuleFailure, exit_module
from ansible_collections.berth.fleet.plugins.module_utils.common.sshforward import (
    FORWARD_ARGS,
    ForwardError,
    forwards_of,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.routes import (
    SwitchError,
    entries_problem,
    forwarded_target,
    read_map,
    switch_routes,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import (
    HaproxyError,
)

ARGUMENT_SPEC: dict[str, Any] = {
    **FORWARD_ARGS,
    "action": {"type": "str", "choices": ["switch", "show"], "default": "switch"},
    "socket": {"type": "path", "default": "/run/haproxy/admin.sock"},
    "map": {"type": "path", "required": True},
    "routes": {"type": "dict"},
    "expect": {"type": "dict"},
    "serving": {"type": "str", "default": ""},
}
REQUIRED_IF: list[tuple[str, Any, list[str]]] = [("action", "switch", ["routes"])]


def run(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    for option in ("routes", "expect"):
        if params[option] is not None:
            problem = entries_problem({str(k): str(v) for k, v in params[option].items()})
            if problem:
                raise ModuleFailure(f"{option}: {problem}")
    forwards = forwards_of(params["lbs"], params["socket"], params["persist"])
    unreachable = []
    for forward in forwards:
        try:
            forward.ensure()
        except ForwardError as exc:
            unreachable.append(str(exc))
    if unreachable:
        raise ModuleFailure("nothing was switched: " + "; ".join(unreachable))
    targets = [forwarded_target(forward) for forward in forwards]
    path = params["map"]
    try:
        if params["action"] == "show":
            return {
                "changed": False,
                "lbs": {t.name: {"before": read_map(t.transport, path)} for t in targets},
                "disagreed_for": 0.0,
            }
        routes = {str(k): str(v) for k, v in params["routes"].items()}
        expect = {str(k): str(v) for k, v in params["expect"].items()} if params["expect"] else None
        outcome = switch_routes(targets, path, routes, check_mode, expect, serving=params["serving"])
    except SwitchError as exc:
        raise ModuleFailure(str(exc), **exc.details) from None
    except HaproxyError as exc:
        raise ModuleFailure(f"nothing was switched: {exc}") from None
    return {
        "changed": outcome.changed,
        "lbs": {
            name: {
                "before": outcome.before[name],
                "after": outcome.after[name],
                "committed_at": outcome.committed_at.get(name),
            }
            for name in outcome.before
        },
        "disagreed_for": outcome.disagreed_for,
        "diff": {"before": outcome.before, "after": outcome.after},
    }


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, supports_check_mode=True)
    exit_module(module, run)


if __name__ == "__main__":
    main()
