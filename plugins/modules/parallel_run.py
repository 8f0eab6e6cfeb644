#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: parallel_run
short_description: Start, judge and stop a service's parallel run on a load balancer
version_added: "0.5.0"
author:
  - Berth maintainers (@berth)
description:
  - Runs on a load balancer that the role M(berth.fleet.lb_config) configured for a service with a
    C(parallel_run) (its user frontend logs a copy of each sampled request to C(berth-mirror)).
  - O(state=started) writes this run's configuration (the trusted pair and the candidate to replay
    the copies to, and the comparison rules) and starts C(berth-mirror@<service>); a run already
    going with the same configuration is left alone.
  - O(state=finished) waits until the mirror here has judged O(min_requests) copies or
    O(max_seconds) passed, stops it, and returns what it found (RV(found)).
  - O(state=stopped) stops it now and returns what it found.
  - The user's request never waits for any of it - HAProxy hands a copy to a datagram socket and
    forgets it; what could not be handed over is counted (C(haproxy_dropped) in RV(found)), what the
    mirror's bounded queue let go too (C(dropped) in RV(found)).
options:
  service:
    description: The service in parallel run.
    type: str
    required: true
  state:
    description: What to do.
    type: str
    choices: [started, finished, stopped]
    required: true
  run_id:
    description: This run's name (results of another run are never taken for this one's).
    type: str
    default: ""
  primary:
    description: A trusted instance, C(host:port). Required with O(state=started).
    type: str
    default: ""
  secondary:
    description:
      - A second trusted instance, C(host:port) (where the two trusted answers differ is noise).
      - Required with O(state=started).
    type: str
    default: ""
  candidate:
    description: The instance of the candidate release, C(host:port). Required with O(state=started).
    type: str
    default: ""
  settings:
    description: The service's C(parallel_run) (C(berth_service_spec.parallel_run)).
    type: dict
    default: {}
  min_requests:
    description: With O(state=finished), the copies this load balancer's mirror must judge.
    type: int
    default: 0
  max_seconds:
    description: With O(state=finished), the longest wait for them.
    type: float
    default: 300
  socket:
    description: The HAProxy stats socket (for its C(DroppedLogs)).
    type: path
    default: /run/haproxy/admin.sock
attributes:
  check_mode:
    support: full
    description: Says whether it would start the mirror; judges nothing.
  diff_mode:
    support: none
    description: No diff.
  idempotent:
    support: full
    description: A run already going with the same configuration is left alone.
seealso:
  - module: berth.fleet.lb_config
"""

EXAMPLES = r"""
- name: The candidate takes copies of orders' users requests here
  berth.fleet.parallel_run:
    service: orders
    state: started
    run_id: orders-v2-1
    primary: 10.70.1.20:8090
    secondary: 10.70.2.20:8090
    candidate: 10.70.1.30:8090
    settings: "{{ berth_service_spec.parallel_run }}"

- name: Until 100 copies are judged here (at most 5 min), then stopped
  berth.fleet.parallel_run:
    service: orders
    state: finished
    run_id: orders-v2-1
    min_requests: 100
    max_seconds: 300
  register: judged
"""

RETURN = r"""
found:
  description:
    - What the mirror found here - C(requests), C(mismatches), C(mismatch_rate), C(endpoints) (per
      method and path, ids folded), C(samples) (redacted), C(dropped), C(unjudged),
      C(candidate_failures), C(haproxy_dropped) - with O(state=finished) or O(state=stopped).
  returned: with state finished or stopped
  type: dict
waited:
  description: Seconds O(state=finished) waited.
  returned: with state finished
  type: float
enough:
  description: Whether the mirror here judged O(min_requests) copies.
  returned: with state finished
  type: bool
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.common.failure import ModuleFailure, exit_module
from ansible_collections.berth.fleet.plugins.module_utils.common.systemd import Systemctl, SystemdError
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import (
    HaproxyError,
    UnixSocketTransport,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.mirror.run import (
    STATES,
    MirrorRun,
    MirrorRunError,
    RunRequest,
)

ARGUMENT_SPEC: dict[str, Any] = {
    "service": {"type": "str", "required": True},
    "state": {"type": "str", "choices": list(STATES), "required": True},
    "run_id": {"type": "str", "default": ""},
    "primary": {"type": "str", "default": ""},
    "secondary": {"type": "str", "default": ""},
    "candidate": {"type": "str", "default": ""},
    "settings": {"type": "dict", "default": {}},
    "min_requests": {"type": "int", "default": 0},
    "max_seconds": {"type": "float", "default": 300},
    "socket": {"type": "path", "default": "/run/haproxy/admin.sock"},
}


def run(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    request = RunRequest(
        service=params["service"],
        state=params["state"],
        run_id=params["run_id"],
        primary=params["primary"],
        secondary=params["secondary"],
        candidate=params["candidate"],
        settings=params["settings"] or {},
        min_requests=params["min_requests"],
        max_seconds=params["max_seconds"],
    )
    haproxy = UnixSocketTransport(params["socket"])

    def transport(command: str) -> str:
        try:
            return haproxy(command)
        except HaproxyError as exc:  # to the run, HAProxy out of reach is an OSError
            raise OSError(str(exc)) from None

    try:
        return MirrorRun(Systemctl(), transport).run(request, check_mode)
    except (MirrorRunError, SystemdError, HaproxyError, OSError, ValueError) as exc:
        raise ModuleFailure(f"{params['service']}: parallel run: {exc}") from None


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    exit_module(module, run)


if __name__ == "__main__":
    main()
