#!/usr/bin/python
# Copyright: Berth maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lb_step
short_description: One load balancer's traffic step for a batch of HAProxy backend servers
version_added: "0.2.0"
description:
  - Runs on the load balancer itself (one task per load balancer, all of them in parallel as hosts of
    the play) and does the whole traffic step of a rollout batch through HAProxy's Runtime API, in
    this order, every server of a phase together.
  - 1. Puts every O(ready) server in rotation, as M(berth.fleet.lb_member) with
    O(berth.fleet.lb_member#module:state=ready) does for one. From MAINT it comes back B(DOWN), so
    that HAProxy sends it traffic only after C(rise) fresh successful health checks, not on the
    strength of the check before the maintenance.
  - 2. Waits until every O(ready) server is UP and in rotation.
  - 3. Sets every O(drain) server to DRAIN (new connections stop; health checks go on). A server
    already in MAINT is already out of rotation and B(stays in MAINT).
  - 4. Waits until no O(wait_drained) server holds a session (served or queued). A DOWN server
    normally has none and does not hold the step up.
  - No drain command is sent before every O(ready) server is UP. Every poll reads the state of all the
    servers of O(backend) at once (C(show servers state) and C(show stat)), two round trips on the
    socket whatever the number of servers.
  - Everything is validated before the socket is touched, and every named server must exist in
    O(backend) before any command is sent.
  - Needs no Python packages on the load balancer (standard library only).
extends_documentation_fragment:
  - berth.fleet.haproxy_runtime
options:
  ready:
    description:
      - Servers to put in rotation (admin READY), then wait for until HAProxy reports them UP.
      - A server may not be in both O(ready) and O(drain).
    type: list
    elements: str
    default: []
  drain:
    description: Servers to take out of rotation (admin DRAIN), after every O(ready) server is UP.
    type: list
    elements: str
    default: []
  wait_drained:
    description:
      - Servers of O(drain) whose sessions must all have ended before the task returns. Defaults to
        O(drain).
      - Naming fewer lets a rollout drain its next batch early, without waiting for it yet; a later
        step names it again in O(drain) (unchanged then) and in O(wait_drained).
    type: list
    elements: str
  ready_timeout:
    description:
      - Seconds to wait for every O(ready) server to be UP. When they run out the task fails naming
        the servers still not UP and their last health check (for example C(L7STS 503)); nothing is
        drained.
    type: float
    default: 60
  drain_timeout:
    description:
      - Seconds to wait for the last session of the O(wait_drained) servers. When they run out the
        task fails naming the servers still holding sessions and how many.
    type: float
    default: 300
  poll_interval:
    description: Seconds between two looks at the backend while waiting; more than 0, at most 0.25.
    type: float
    default: 0.1
attributes:
  check_mode:
    support: full
    description: >-
      Reads the backend, reports in RV(commands), RV(servers) and the diff what would change; sends no
      command and does not wait.
  diff_mode:
    support: full
    description: Shows the admin state of every named server before and after.
  idempotent:
    support: full
    description: >-
      Servers already in the wanted admin state, already UP or already without sessions are reported
      unchanged, and no command is sent.
notes:
  - C(changed) is true only when an admin state was changed.
  - On a failure (a timeout, a refused command) the servers keep the admin state they were given; the
    result still carries RV(servers), RV(commands), RV(ready_wait) and RV(drain_wait).
  - A server whose maintenance is inherited (C(track)) or comes from a failed address resolution cannot
    be made READY through the Runtime API; the task fails and says why.
seealso:
  - module: berth.fleet.lb_member
    description: The same changes for one server, delegated to a load balancer, and weights.
  - name: HAProxy management guide, Runtime API
    description: The C(set server), C(show servers state) and C(show stat) commands this module uses.
    link: https://docs.haproxy.org/2.6/management.html#9.3
author:
  - Berth maintainers (@berth)
"""

EXAMPLES = r"""
# in a play on the load balancers (hosts: lb, become: true): every LB does the step at the same time
- name: Back in rotation batch 1, then drain batch 2
  berth.fleet.lb_step:
    backend: orders
    ready: [orders-1, orders-2]
    drain: [orders-3, orders-4]
    ready_timeout: 30
    drain_timeout: 120

- name: Drain batches 2 and 3, but return as soon as batch 2 is idle
  berth.fleet.lb_step:
    backend: orders
    drain: [orders-3, orders-4, orders-5, orders-6]
    wait_drained: [orders-3, orders-4]

- name: What the step would change, without changing it
  berth.fleet.lb_step:
    backend: orders
    ready: [orders-3, orders-4]
  check_mode: true
  diff: true
"""

RETURN = r"""
servers:
  description:
    - Every server of O(backend) after the step (the last poll); in check mode, what HAProxy would
      show right after the commands.
  returned: always
  type: dict
  contains:
    admin:
      description: Admin state, V(ready), V(drain) or V(maint).
      type: str
    operational:
      description: V(UP), V(DOWN), V(NOLB), V(STARTING) (UP during slowstart) or V(MAINT).
      type: str
    in_rotation:
      description: Whether HAProxy may send the server new traffic (READY and UP or STARTING).
      type: bool
    sessions:
      description: Sessions still bound to the server, being served or queued for it.
      type: int
  sample:
    orders-1: {admin: ready, operational: UP, in_rotation: true, sessions: 4}
    orders-3: {admin: drain, operational: UP, in_rotation: false, sessions: 0}
ready_wait:
  description: Seconds spent waiting for the O(ready) servers to be UP (phase 2).
  returned: always
  type: float
  sample: 0.204
drain_wait:
  description: Seconds spent waiting for the O(wait_drained) servers to be idle (phase 4).
  returned: always
  type: float
  sample: 1.713
commands:
  description: Runtime API commands sent (in check mode, that would be sent), in order.
  returned: always
  type: list
  elements: str
  sample:
    - set server orders/orders-1 state drain
    - set server orders/orders-1 health down
    - set server orders/orders-1 state ready
    - set server orders/orders-3 state drain
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import HaproxyError
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.step import (
    StepRequest,
    run_step,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "socket": {"type": "path", "default": "/run/haproxy/admin.sock"},
            "backend": {"type": "str", "required": True},
            "ready": {"type": "list", "elements": "str", "default": []},
            "drain": {"type": "list", "elements": "str", "default": []},
            "wait_drained": {"type": "list", "elements": "str"},
            "ready_timeout": {"type": "float", "default": 60},
            "drain_timeout": {"type": "float", "default": 300},
            "poll_interval": {"type": "float", "default": 0.1},
        },
        supports_check_mode=True,
    )
    try:
        request = StepRequest.from_params(module.params)
        result = run_step(request, module.check_mode)
    except HaproxyError as exc:
        details = dict(exc.details)
        if not module._diff:
            details.pop("diff", None)
        module.fail_json(msg=str(exc), exception=traceback.format_exc(), **details)
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
