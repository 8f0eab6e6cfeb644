#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: lb_analysis
short_description: Judge a backend from every load balancer's own counters over an analysis window
version_added: "0.4.0"
author:
  - Berth maintainers (@berth)
description:
  - Reads the HTTP request and 5xx counters of O(backend) (HAProxy's own 503s included) on B(every)
    load balancer of O(lbs) at the start and every O(interval) seconds for O(window) seconds, from
    the controller (the Runtime API sockets are forwarded as for M(berth.fleet.lb_traffic)), and
    sums what they counted.
  - Fails as soon as the window holds at least O(min_requests) requests of which more than
    O(max_error_rate) failed. Passes only at the end of a window with at least O(min_requests)
    requests within the rate. Fewer requests are inconclusive, never a pass - the window is run
    again (counting from the start), at most O(inconclusive_limit) more times, then inconclusive
    fails the task too.
  - The task's result says the verdict (RV(verdict)) either way; a caller that switches back on a
    failure reads C(verdict.reason).
extends_documentation_fragment:
  - berth.fleet.haproxy_runtime
  - berth.fleet.lb_targets
options:
  backend:
    description: The backend to judge.
    type: str
    required: true
  window:
    description: Seconds of one window.
    type: float
    required: true
  interval:
    description: Seconds between two reads.
    type: float
    default: 1
  max_error_rate:
    description: The largest share of failed requests (0 to 1) that passes.
    type: float
    required: true
  min_requests:
    description: Requests a verdict needs.
    type: int
    required: true
  inconclusive_limit:
    description: How many more windows an inconclusive one may run before inconclusive fails.
    type: int
    default: 2
  revert:
    description:
      - What to switch back to when the verdict is not a pass, at once and in this task (no task
        in between while users meet the failing release) - C(map), C(routes) and C(expect) as for
        M(berth.fleet.lb_route). The result's RV(switched_back) says how it went.
    type: dict
attributes:
  action:
    support: full
    description: Runs in the controller's process (its action plugin), not as a module run.
  check_mode:
    support: partial
    description: An analysis reads live traffic; in check mode it says it would run and reads nothing.
    details: In check mode no load balancer is read and no verdict is given (the task is skipped).
  diff_mode:
    support: none
    description: Changes nothing.
  idempotent:
    support: full
    description: Reads only.
seealso:
  - module: berth.fleet.lb_route
"""

EXAMPLES = r"""
- name: The new colour on every LB for 10 s, at most 1 % failed of at least 20 requests
  berth.fleet.lb_analysis:
    lbs: "{{ hostvars | berth.fleet.ssh_targets(groups['lb']) }}"
    backend: be_orders_green
    window: 10
    max_error_rate: 0.01
    min_requests: 20
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
verdict:
  description: C(status) (pass, fail or inconclusive), C(requests), C(errors), C(error_rate) and C(reason).
  returned: always
  type: dict
windows:
  description: How many windows ran.
  returned: always
  type: int
seconds:
  description: How long the analysis took.
  returned: always
  type: float
switched_back:
  description:
    - With O(revert), after a verdict other than pass - C(changed), C(disagreed_for), or C(failed), C(msg).
  returned: when switched back
  type: dict
"""

import time
from collections.abc import Callable
from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.common.failure import ModuleFailure, exit_module
from ansible_collections.berth.fleet.plugins.module_utils.common.sshforward import (
    FORWARD_ARGS,
    ForwardError,
    forwards_of,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.counters import read_counters
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.routes import (
    forwarded_target,
    switch_routes,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import (
    HaproxyError,
    Transport,
    UnixSocketTransport,
)
from ansible_collections.berth.fleet.plugins.module_utils.planner.analysis import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    Counts,
    grown,
    judge,
)

ARGUMENT_SPEC: dict[str, Any] = {
    **FORWARD_ARGS,
    "socket": {"type": "path", "default": "/run/haproxy/admin.sock"},
    "backend": {"type": "str", "required": True},
    "window": {"type": "float", "required": True},
    "interval": {"type": "float", "default": 1},
    "max_error_rate": {"type": "float", "required": True},
    "min_requests": {"type": "int", "required": True},
    "inconclusive_limit": {"type": "int", "default": 2},
    "revert": {"type": "dict"},
}
REQUIRED_IF: list[tuple[str, Any, list[str]]] = []


def _problems(params: dict[str, Any]) -> list[str]:
    found = []
    if not 0 < params["window"] <= 86400:
        found.append(f"window: expected seconds between 0 and 86400, got {params['window']}")
    if not 0 < params["interval"] <= params["window"]:
        found.append(f"interval: expected seconds between 0 and the window, got {params['interval']}")
    if not 0 <= params["max_error_rate"] <= 1:
        found.append(f"max_error_rate: expected a rate from 0 to 1, got {params['max_error_rate']}")
    if params["min_requests"] < 1:
        found.append(f"min_requests: expected at least 1, got {params['min_requests']}")
    if not 0 <= params["inconclusive_limit"] <= 100:
        found.append(f"inconclusive_limit: expected 0 to 100, got {params['inconclusive_limit']}")
    return found


def analyse(
    transports: dict[str, Transport],
    params: dict[str, Any],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    revert: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    backend = params["backend"]
    ids: dict[str, int | None] = dict.fromkeys(transports)

    def read() -> dict[str, Counts]:
        seen = {}
        for name, transport in transports.items():
            counters = read_counters(transport, backend, ids[name])
            ids[name] = counters.backend_id
            seen[name] = Counts(counters.requests, counters.errors_5xx)
        return seen

    started = clock()
    first = read()
    windows = 0
    verdict = None
    while windows <= params["inconclusive_limit"]:
        windows += 1
        window_end = started + windows * params["window"]
        while True:
            now = clock()
            sleep(max(0.0, min(params["interval"], window_end - now)))
            over = clock() >= window_end
            verdict = judge(grown(first, read()), params["max_error_rate"], params["min_requests"], over)
            if verdict.status == FAIL or over:
                break
        if verdict.status in (PASS, FAIL):
            break
    if verdict is None:  # the loop runs at least once
        raise ModuleFailure(f"{backend}: no verdict")
    result = {
        "changed": False,
        "verdict": verdict.as_dict(),
        "windows": windows,
        "seconds": round(clock() - started, 2),
    }
    if verdict.status == INCONCLUSIVE:
        result["verdict"]["reason"] = (
            f"inconclusive after {windows} window(s) of {params['window']:g} s: {verdict.reason}; "
            "no data is never a pass"
        )
    if verdict.status != PASS:
        message = f"{backend}: {verdict.status}: {result['verdict']['reason']}"
        if revert is not None:
            back = result["switched_back"] = revert()
            message += (
                f"; the switch back failed: {back['msg']}"
                if back.get("failed")
                else f"; every load balancer switched back (they differed for {back['disagreed_for']} s)"
            )
        raise ModuleFailure(message, **result)
    return result


def _reverter(forwards: list[Any], revert: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    def switch_back() -> dict[str, Any]:
        targets = [forwarded_target(f) for f in forwards]
        try:
            outcome = switch_routes(
                targets,
                str(revert["map"]),
                {str(k): str(v) for k, v in dict(revert["routes"]).items()},
                expect={str(k): str(v) for k, v in dict(revert["expect"]).items()}
                if revert.get("expect")
                else None,
            )
        except HaproxyError as exc:
            return {"failed": True, "msg": str(exc), **exc.details}
        return {"changed": outcome.changed, "disagreed_for": outcome.disagreed_for}

    return switch_back


def run(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    problems = _problems(params)
    revert = params["revert"]
    if revert is not None and (not revert.get("map") or not isinstance(revert.get("routes"), dict)):
        problems.append("revert: expected map (a path) and routes (key: backend), and optionally expect")
    if problems:
        raise ModuleFailure("; ".join(problems))
    if check_mode:
        return {
            "changed": False,
            "skipped": True,
            "msg": "check mode: the analysis reads live traffic, not run",
        }
    forwards = forwards_of(params["lbs"], params["socket"], params["persist"])
    try:
        for forward in forwards:
            forward.ensure()
        transports: dict[str, Transport] = {
            forward.target.name: UnixSocketTransport(str(forward.local_path)) for forward in forwards
        }
        revert = _reverter(forwards, params["revert"]) if params["revert"] else None
        return analyse(transports, params, revert=revert)
    except (ForwardError, HaproxyError) as exc:
        raise ModuleFailure(
            f"{params['backend']}: the analysis could not read the load balancers: {exc}"
        ) from None


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, supports_check_mode=True)
    exit_module(module, run)


if __name__ == "__main__":
    main()
