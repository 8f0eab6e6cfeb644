#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: lb_traffic
short_description: A rollout's traffic step on every load balancer at once, from the controller
version_added: "0.3.0"
author:
  - Berth maintainers (@berth)
description:
  - The traffic step of M(berth.fleet.lb_step) - ready the previous batch and wait until it is UP,
    drain this one and wait until it holds no session - done on B(every) load balancer of O(lbs) at
    once, from the controller, in one task and no module run on any load balancer.
  - Each load balancer's HAProxy Runtime API socket (O(socket)) is forwarded to a private directory
    on the controller by an OpenSSH master (C(ssh -f -N -M -L)) with the host's own Ansible
    connection settings (O(lbs), from the P(berth.fleet.ssh_targets#filter) filter) - the same
    address, user, key and ssh arguments, so host keys are checked exactly as for Ansible. Every
    poll is then a local C(connect()). The master stays for the next step and leaves by itself
    after O(persist) idle seconds; O(action=close) ends it at once.
  - Everything is validated before any socket is touched; a load balancer that cannot be reached
    or whose step fails fails the task, naming it, while the others finish their own step.
  - With O(journal), the task first asks the rollout journal whether the step may run (see
    M(berth.fleet.rollout_journal); a halted rollout skips it) and records every load balancer's
    outcome there afterwards, as the action plugin of M(berth.fleet.lb_step) does.
extends_documentation_fragment:
  - berth.fleet.haproxy_runtime
  - berth.fleet.lb_targets
options:
  action:
    description: V(step) does the traffic step; V(close) ends the forwards of O(lbs).
    type: str
    choices: [step, close]
    default: step
  ready:
    description: Servers to put in rotation (admin READY), then wait for until every LB reports them UP.
    type: list
    elements: str
    default: []
  drain:
    description: Servers to take out of rotation (admin DRAIN), after every O(ready) server is UP.
    type: list
    elements: str
    default: []
  wait_drained:
    description: Servers of O(drain) whose sessions must all have ended. Defaults to O(drain).
    type: list
    elements: str
  ready_timeout:
    description: Seconds to wait for every O(ready) server to be UP.
    type: float
    default: 60
  drain_timeout:
    description: Seconds to wait for the last session of the O(wait_drained) servers.
    type: float
    default: 300
  poll_interval:
    description: Seconds between two reads of the backend's servers.
    type: float
    default: 0.1
  journal:
    description:
      - Where the step reports to a rollout journal - C(state_dir), C(service), C(step), and
        C(recover) for the recovery after a halt (which runs only then), or C(early) for a drain
        set ahead of its step without waiting (recorded as when the batch began to drain).
    type: dict
attributes:
  action:
    support: full
    description: Runs in the controller's process (its action plugin), not as a module run.
  check_mode:
    support: full
    description:
      - Reads every load balancer (the forwards are set up) and reports what would change; sends
        no command.
  diff_mode:
    support: full
    description: Each server's admin state before and after, per load balancer.
  idempotent:
    support: full
    description: Servers already in the asked state are left alone.
notes:
  - Needs OpenSSH on the controller and an sshd on each load balancer that allows stream-local
    forwarding (the default, C(AllowStreamLocalForwarding yes)).
seealso:
  - module: berth.fleet.lb_step
"""

EXAMPLES = r"""
- name: Catalog-1 back in rotation, catalog-2 out, on every LB at once
  berth.fleet.lb_traffic:
    lbs: "{{ hostvars | berth.fleet.ssh_targets(groups['lb']) }}"
    backend: be_catalog
    ready: [catalog-1]
    drain: [catalog-2]
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
lbs:
  description: Each load balancer's step result (as M(berth.fleet.lb_step) returns it), by name.
  returned: always
  type: dict
ready_wait:
  description: The longest wait for the O(ready) servers to be UP, across the load balancers.
  returned: always
  type: float
drain_wait:
  description: The longest wait for the O(wait_drained) servers to be idle, across the load balancers.
  returned: always
  type: float
opened:
  description: The load balancers whose forward had to be opened by this task.
  returned: always
  type: list
  elements: str
"""

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.common.failure import ModuleFailure, exit_module
from ansible_collections.berth.fleet.plugins.module_utils.common.sshforward import (
    FORWARD_ARGS,
    ForwardError,
    SocketForward,
    forwards_of,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import (
    HaproxyError,
    UnixSocketTransport,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.step import StepRequest, run_step
from ansible_collections.berth.fleet.plugins.module_utils.planner.journal import JournalError
from ansible_collections.berth.fleet.plugins.module_utils.planner.report import gate_step, record_step

Said = Callable[[str], None]
ARGUMENT_SPEC: dict[str, Any] = {
    **FORWARD_ARGS,
    "action": {"type": "str", "choices": ["step", "close"], "default": "step"},
    "socket": {"type": "path", "default": "/run/haproxy/admin.sock"},
    "backend": {"type": "str", "required": True},
    "ready": {"type": "list", "elements": "str", "default": []},
    "drain": {"type": "list", "elements": "str", "default": []},
    "wait_drained": {"type": "list", "elements": "str"},
    "ready_timeout": {"type": "float", "default": 60},
    "drain_timeout": {"type": "float", "default": 300},
    "poll_interval": {"type": "float", "default": 0.1},
    "journal": {"type": "dict"},
}
REQUIRED_IF: list[tuple[str, Any, list[str]]] = []
STEP_KEYS = (
    "socket",
    "backend",
    "ready",
    "drain",
    "wait_drained",
    "ready_timeout",
    "drain_timeout",
    "poll_interval",
)


def forwards(params: dict[str, Any]) -> list[SocketForward]:
    return forwards_of(params["lbs"], params["socket"], params["persist"])


def one_lb(
    forward: SocketForward, request: StepRequest, check_mode: bool, said: Said | None = None
) -> tuple[float, dict[str, Any], bool]:
    started = time.time()
    try:
        opened = forward.ensure()
    except ForwardError as exc:
        return started, {"failed": True, "unreachable": True, "msg": str(exc)}, False
    name = forward.target.name
    told = None if said is None else (lambda line: said(f"{name}: {line}"))
    try:
        result = run_step(request, check_mode, UnixSocketTransport(str(forward.local_path)), told)
    except HaproxyError as exc:
        result = {"failed": True, "msg": f"{forward.target.name}: {exc}", **exc.details}
    return started, result, opened


def run(params: dict[str, Any], check_mode: bool, said: Said | None = None) -> dict[str, Any]:
    """The module's job (``main`` and the action plugin share it); ``said`` hears what long waits
    wait for, per load balancer."""
    if params["action"] == "close":
        for forward in forwards(params):
            forward.close()
        return {"changed": False, "lbs": {}, "ready_wait": 0.0, "drain_wait": 0.0, "opened": []}
    step = {key: params[key] for key in STEP_KEYS}
    try:
        request = StepRequest.from_params(step)  # validated before any socket is touched
    except HaproxyError as exc:
        raise ModuleFailure(str(exc)) from None
    lbs = forwards(params)
    journal = params["journal"]
    recording = bool(journal) and not check_mode
    kind = "early" if journal and journal.get("early") else "traffic"
    if recording and kind == "traffic":
        try:
            why, keep_out = gate_step(journal, "traffic")
        except (JournalError, KeyError, TypeError, ValueError) as exc:
            raise ModuleFailure(f"the rollout journal cannot be read: {exc}") from None
        if why:
            return {"changed": False, "skipped": True, "skip_reason": why, "msg": why}
        if keep_out:  # after a halt: the hosts the journal keeps out are never readied
            request = StepRequest.from_params(
                {**step, "ready": [h for h in step["ready"] if h not in keep_out]}
            )
    with ThreadPoolExecutor(max_workers=max(len(lbs), 1)) as pool:
        outcomes = list(pool.map(lambda forward: one_lb(forward, request, check_mode, said), lbs))
    results: dict[str, Any] = {}
    for forward, (started, result, _opened) in zip(lbs, outcomes, strict=True):
        results[forward.target.name] = result
        if recording:
            try:
                record_step(journal, kind, forward.target.name, started, result)
            except (JournalError, KeyError, TypeError, ValueError) as exc:
                result.update(
                    failed=True,
                    msg=f"{result.get('msg', 'done')}; and the journal could not record it: {exc}",
                )
    failed = [name for name, result in results.items() if result.get("failed")]
    answer: dict[str, Any] = {
        "changed": any(result.get("changed") for result in results.values()),
        "lbs": results,
        "ready_wait": max((float(r.get("ready_wait") or 0) for r in results.values()), default=0.0),
        "drain_wait": max((float(r.get("drain_wait") or 0) for r in results.values()), default=0.0),
        "opened": [forward.target.name for forward, outcome in zip(lbs, outcomes, strict=True) if outcome[2]],
        "diff": {
            "before": {name: r.get("diff", {}).get("before") for name, r in results.items()},
            "after": {name: r.get("diff", {}).get("after") for name, r in results.items()},
        },
    }
    if failed:
        raise ModuleFailure("; ".join(str(results[name].get("msg")) for name in failed), **answer)
    return answer


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, supports_check_mode=True)
    exit_module(module, run)


if __name__ == "__main__":
    main()
