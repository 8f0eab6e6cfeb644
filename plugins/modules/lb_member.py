#!/usr/bin/python
# Copyright: Berth maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lb_member
short_description: Take an HAProxy backend server in or out of rotation through the Runtime API
version_added: "0.1.0"
description:
  - Sets a backend server's admin state (READY, DRAIN, MAINT) or weight through HAProxy's Runtime API
    on a unix socket, and waits, polling every O(poll_interval) seconds, until the change has taken
    effect for traffic.
  - Correct from every starting state. O(state=drain) returns at once for a server without sessions,
    which is what a DOWN server normally is. A server already in MAINT is already out of rotation, so
    O(state=drain) reports it unchanged and B(leaves it in MAINT) (still waiting for sessions that are
    left, if any).
  - O(state=drain) waits for the sessions still bound to the server (being served or queued for it)
    to end, whatever its health. A server that its health check marked DOWN can still be finishing
    requests, and stopping it would cut them.
  - O(state=ready) from MAINT brings the server back DOWN, so that HAProxy sends it traffic only after
    C(rise) fresh successful health checks. HAProxy itself would mark it UP at once, trusting the
    last check result from before the maintenance.
  - Runs on the load balancer (delegate to it) with the system Python; needs no Python packages.
extends_documentation_fragment:
  - berth.fleet.haproxy_runtime
options:
  server:
    description: Name of the server in O(backend).
    type: str
    required: true
  state:
    description:
      - V(ready) puts the server in rotation (admin READY) and, with O(wait), waits until HAProxy
        reports it UP, which its health check decides.
      - V(drain) stops new connections (admin DRAIN; health checks continue) and, with O(wait), waits
        until no session is left.
      - V(maint) takes the server out completely (admin MAINT; health checks stop) and, with O(wait),
        waits until no session is left, or cuts them with O(shutdown_sessions).
      - V(weight) sets the weight to O(weight) and leaves the admin state alone.
    type: str
    required: true
    choices: [ready, drain, maint, weight]
  weight:
    description: Weight to set, with O(state=weight) only. V(0) keeps the server from new traffic.
    type: int
  wait:
    description: Wait for the change to take effect (see O(state)). Never in check mode.
    type: bool
    default: true
  drain_timeout:
    description:
      - Seconds to wait for the last session with O(state=drain) or O(state=maint). When they run
        out the task fails and names how many sessions are left; the server keeps its new state.
    type: float
    default: 300
  ready_timeout:
    description:
      - Seconds to wait for the server to be UP with O(state=ready). When they run out the task fails
        and names the last health check result (for example C(L7STS 503)).
    type: float
    default: 60
  poll_interval:
    description: Seconds between two looks at the server while waiting; more than 0, at most 0.25.
    type: float
    default: 0.1
  shutdown_sessions:
    description: With O(state=maint), cut the sessions still open on the server instead of waiting for them.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reports in RV(after) and RV(actions) what would change; changes nothing and does not wait.
  diff_mode:
    support: full
    description: Shows the admin state and the weight before and after.
  idempotent:
    support: full
    description: A server already in the requested admin state or weight is reported unchanged.
notes:
  - C(changed) is true only when the admin state or the weight was changed, or sessions were cut.
  - A server whose maintenance is inherited (C(track)) or comes from a failed address resolution cannot
    be made READY through the Runtime API; the task fails and says why.
  - O(state=weight) is refused by HAProxy for backends with a static algorithm (C(static-rr),
    C(first)) unless the weight is 0 or the configured one.
seealso:
  - name: HAProxy management guide, Runtime API
    description: The C(set server) and C(show servers state) commands this module uses.
    link: https://docs.haproxy.org/2.6/management.html#9.3
author:
  - Berth maintainers (@berth)
"""

EXAMPLES = r"""
- name: Drain the instance on every load balancer before stopping it
  berth.fleet.lb_member:
    backend: orders
    server: "{{ inventory_hostname }}"
    state: drain
    drain_timeout: 120
  delegate_to: "{{ item }}"
  loop: "{{ groups['lb'] }}"
  become: true

- name: Put it back in rotation on every load balancer, once its health check passes
  berth.fleet.lb_member:
    backend: orders
    server: "{{ inventory_hostname }}"
    state: ready
    ready_timeout: 30
  delegate_to: "{{ item }}"
  loop: "{{ groups['lb'] }}"
  become: true

- name: Take a server out for good, cutting what is left after the drain
  berth.fleet.lb_member:
    socket: /run/haproxy/admin.sock
    backend: orders
    server: orders-3
    state: maint
    shutdown_sessions: true

- name: Send a canary a tenth of the traffic of its peers
  berth.fleet.lb_member:
    backend: orders
    server: orders-canary
    state: weight
    weight: 10
"""

RETURN = r"""
before:
  description: The server as HAProxy reported it before the task.
  returned: always
  type: dict
  contains:
    backend:
      description: Backend name.
      type: str
    server:
      description: Server name.
      type: str
    admin:
      description: Admin state, V(ready), V(drain) or V(maint).
      type: str
    operational:
      description: V(UP), V(DOWN), V(NOLB), V(STARTING) (UP during slowstart) or V(MAINT).
      type: str
    current_sessions:
      description: Sessions being served by the server.
      type: int
    queued_sessions:
      description: Sessions queued for this server.
      type: int
    weight:
      description: The weight set by configuration or O(weight) (not the effective one).
      type: int
    check_status:
      description: Last health check status and code, for example V(L7OK 200) or V(L7STS 503).
      type: str
    last_check:
      description: HAProxy's description of the last health check.
      type: str
    checks_enabled:
      description: Whether health checks are enabled for the server.
      type: bool
  sample:
    backend: orders
    server: orders-1
    admin: ready
    operational: UP
    current_sessions: 3
    queued_sessions: 0
    weight: 1
    check_status: L7OK 200
    last_check: Layer7 check passed
    checks_enabled: true
after:
  description:
    - The server after the task and its wait; in check mode, what HAProxy would show right after the
      change. Same keys as RV(before).
  returned: always
  type: dict
waited:
  description: Seconds spent waiting for sessions to end or for the server to be UP.
  returned: always
  type: float
  sample: 2.013
actions:
  description: Runtime API changes made (or in check mode that would be made), in order.
  returned: always
  type: list
  elements: str
  sample: [set admin drain]
note:
  description: Why nothing was changed where one might expect a change.
  returned: when relevant
  type: str
  sample: "already in MAINT, which is out of rotation too: left in MAINT"
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.member import apply_request
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.plan import MemberRequest
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import HaproxyError


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "socket": {"type": "path", "default": "/run/haproxy/admin.sock"},
            "backend": {"type": "str", "required": True},
            "server": {"type": "str", "required": True},
            "state": {"type": "str", "required": True, "choices": ["ready", "drain", "maint", "weight"]},
            "weight": {"type": "int"},
            "wait": {"type": "bool", "default": True},
            "drain_timeout": {"type": "float", "default": 300},
            "ready_timeout": {"type": "float", "default": 60},
            "poll_interval": {"type": "float", "default": 0.1},
            "shutdown_sessions": {"type": "bool", "default": False},
        },
        required_if=[("state", "weight", ("weight",))],
        supports_check_mode=True,
    )
    try:
        request = MemberRequest.from_params(module.params)
        result = apply_request(request, module.check_mode).as_dict()
    except HaproxyError as exc:
        module.fail_json(msg=str(exc), exception=traceback.format_exc(), **exc.details)
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
