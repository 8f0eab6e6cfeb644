#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: canary
short_description: Plan, run and finish a canary release on every load balancer
version_added: "0.5.0"
author:
  - Berth maintainers (@berth)
description:
  - The controller's part of a canary release of a service whose strategy is C(canary)
    (docs/strategies.md). The canary record, C(<state_dir>/rollouts/<service>.canary.json), says
    where a canary stands.
  - O(action=plan) says what a deploy does now (RV(plan)) from the record, the versions the stable
    instances run and the operator's O(command); it changes nothing.
  - O(action=reset) gives the canary and the baseline weight 0 and the stable instances their
    configured weight on every load balancer (before a canary's instances start).
  - O(action=run) starts (O(mode=start)) or continues (O(mode=continue)) the steps - weight steps on
    every load balancer, pauses, analyses of the load balancers' counters - and ends when the steps
    are over (status C(promoting)), paused (C(paused)) or failed (C(aborting), and the canary's weight is
    0 on every load balancer before the task returns). O(mode=promote) and O(mode=abort) record the
    operator's decision (abort sets weight 0 at once).
  - O(action=finish) puts every weight back (canary and baseline 0) and records the outcome.
extends_documentation_fragment:
  - berth.fleet.haproxy_runtime
  - berth.fleet.lb_targets
options:
  action:
    description: What to do.
    type: str
    choices: [plan, reset, run, finish]
    required: true
  state_dir:
    description: The environment's state directory.
    type: path
    required: true
  service:
    description: The service.
    type: str
    required: true
  target:
    description: The version to release.
    type: str
  explicit:
    description:
      - Whether the operator named O(target); a deploy of another version than an active canary's is refused.
    type: bool
    default: false
  command:
    description: The operator's say over an active canary.
    type: str
    choices: ['', resume, promote, abort]
    default: ''
  verb:
    description: The playbook's verb (a reconcile repairs the stable instances only).
    type: str
    default: deploy
  stable_versions:
    description: What each stable instance runs (name to version; empty for none).
    type: dict
  steps:
    description: The service's canary steps (C(berth_service_spec.strategy.canary.steps)).
    type: list
    elements: dict
  mode:
    description: With O(action=run), the plan's mode.
    type: str
    choices: [start, continue, promote, abort]
  stable:
    description: With O(action=run) and O(mode=start), the version the stable instances run.
    type: str
  servers:
    description: C(stable) (a list), C(canary) and C(baseline) (server names; no baseline - empty).
    type: dict
  outcome:
    description: With O(action=finish), how the canary ended.
    type: str
    choices: [promoted, aborted]
  reason:
    description: With O(action=finish) or O(mode=abort), why.
    type: str
    default: ''
attributes:
  action:
    support: full
    description: Runs in the controller's process (its action plugin), not as a module run.
  check_mode:
    support: partial
    description: O(action=plan) runs in check mode; the others say what they would do and touch nothing.
    details: No load balancer is changed or read and the record is not written.
  diff_mode:
    support: none
    description: The plan says what would change.
  idempotent:
    support: partial
    description: O(action=plan) and O(action=reset) are; a run moves the canary on.
seealso:
  - module: berth.fleet.lb_analysis
"""

EXAMPLES = r"""
- name: What a deploy of payments v2 does now
  berth.fleet.canary:
    action: plan
    state_dir: "{{ berth_state_dir }}"
    service: payments
    target: v2
    stable_versions: {payments-1: v1, payments-2: v1}
    lbs: "{{ hostvars | berth.fleet.ssh_targets(groups['lb']) }}"
    backend: be_payments
    steps: "{{ berth_service_spec.strategy.canary.steps }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
plan:
  description: C(mode) (roll, start, continue, promote or abort), C(target), C(stable), C(step), C(reason).
  returned: action=plan
  type: dict
status:
  description: Where the canary stands - running, paused, promoting, aborting, promoted or aborted.
  returned: action=run or action=finish
  type: str
reason:
  description: Why it paused or aborted.
  returned: action=run or action=finish
  type: str
summary:
  description: One line per step this run took.
  returned: action=run
  type: list
  elements: str
record:
  description: The canary record after the task.
  returned: action=run or action=finish
  type: dict
weights:
  description: The weights every load balancer reports afterwards, by LB and server.
  returned: action=reset or action=finish
  type: dict
"""

import time
from collections.abc import Callable, Mapping
from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.common.failure import ModuleFailure, exit_module
from ansible_collections.berth.fleet.plugins.module_utils.common.sshforward import (
    FORWARD_ARGS,
    ForwardError,
    forwards_of,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.counters import read_counters
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import (
    HaproxyError,
    Transport,
    UnixSocketTransport,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.weights import (
    CONFIGURED,
    set_weights,
)
from ansible_collections.berth.fleet.plugins.module_utils.planner.canary import (
    ABORTING,
    PROMOTING,
    RUNNING,
    CanaryError,
    StepRunner,
    describe,
    new_record,
    plan_canary,
    read_record,
    step_weights,
    write_record,
)

ARGUMENT_SPEC: dict[str, Any] = {
    "action": {"type": "str", "choices": ["plan", "reset", "run", "finish"], "required": True},
    "state_dir": {"type": "path", "required": True},
    "service": {"type": "str", "required": True},
    "target": {"type": "str"},
    "explicit": {"type": "bool", "default": False},
    "command": {"type": "str", "choices": ["", "resume", "promote", "abort"], "default": ""},
    "verb": {"type": "str", "default": "deploy"},
    "stable_versions": {"type": "dict"},
    "steps": {"type": "list", "elements": "dict"},
    "mode": {"type": "str", "choices": ["start", "continue", "promote", "abort"]},
    "stable": {"type": "str"},
    **FORWARD_ARGS,
    "socket": {"type": "path", "default": "/run/haproxy/admin.sock"},
    "backend": {"type": "str", "required": True},
    "servers": {"type": "dict"},
    "outcome": {"type": "str", "choices": ["promoted", "aborted"]},
    "reason": {"type": "str", "default": ""},
}
REQUIRED_IF: list[tuple[str, Any, list[str]]] = [
    ("action", "plan", ["target", "stable_versions"]),
    ("action", "reset", ["servers"]),
    ("action", "run", ["mode", "servers"]),
    ("action", "finish", ["outcome", "servers"]),
]


class Servers:
    """The backend's servers by track, and the weights that give the canary a share."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        stable = raw.get("stable")
        if not isinstance(stable, list) or not stable or not raw.get("canary"):
            raise CanaryError("servers: expected stable (a list of at least one), canary and baseline")
        self.stable = [str(s) for s in stable]
        self.canary = str(raw["canary"])
        self.baseline = str(raw.get("baseline") or "")

    def weights(self, share: int) -> dict[str, int | str]:
        if share == 0:  # back to the configuration: stable as configured, canary and baseline none
            reset: dict[str, int | str] = dict.fromkeys(self.stable, CONFIGURED)
            reset.update({s: 0 for s in (self.canary, self.baseline) if s})
            return reset
        return dict(step_weights(share, self.stable, self.canary, self.baseline))


class Lbs:
    """Every load balancer's Runtime API, forwarded to the controller."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.forwards = forwards_of(params["lbs"], params["socket"], params["persist"])
        for forward in self.forwards:
            forward.ensure()
        self.transports: dict[str, Transport] = {
            f.target.name: UnixSocketTransport(str(f.local_path)) for f in self.forwards
        }
        self.backend = str(params["backend"])
        self.ids: dict[str, int | None] = dict.fromkeys(self.transports)

    def set(self, weights: Mapping[str, int | str], check_mode: bool = False) -> tuple[bool, dict[str, Any]]:
        """The weights on every LB: whether any changed, and what each reports afterwards."""
        changed, seen = False, {}
        for lb, transport in self.transports.items():
            changed_here, seen[lb] = set_weights(transport, self.backend, weights, check_mode)
            changed = changed or changed_here
        return changed, seen

    def reader(self, servers: Servers) -> Callable[[], dict[str, dict[str, tuple[int, int, int]]]]:
        tracks = {"canary": servers.canary, **({"baseline": servers.baseline} if servers.baseline else {})}

        def read() -> dict[str, dict[str, tuple[int, int, int]]]:
            seen: dict[str, dict[str, tuple[int, int, int]]] = {track: {} for track in tracks}
            for lb, transport in self.transports.items():
                counters = read_counters(transport, self.backend, self.ids[lb])
                self.ids[lb] = counters.backend_id
                by_name = {s.name: s for s in counters.servers}
                for track, server in tracks.items():
                    if server not in by_name:
                        raise HaproxyError(f"{lb}: backend {self.backend} has no server {server}")
                    row = by_name[server]
                    seen[track][lb] = (row.requests, row.errors_5xx, row.response_ms)
            return seen

        return read


def _plan(params: dict[str, Any]) -> dict[str, Any]:
    plan = plan_canary(
        read_record(params["state_dir"], params["service"]),
        params["target"],
        params["explicit"],
        params["command"],
        {str(k): str(v or "") for k, v in params["stable_versions"].items()},
        params["verb"],
    )
    return {"changed": False, "plan": plan.as_dict()}


def _run(params: dict[str, Any], servers: Servers, check_mode: bool) -> dict[str, Any]:
    state_dir, service, mode = params["state_dir"], params["service"], params["mode"]
    record = read_record(state_dir, service)
    if mode == "start":
        if not params["target"] or not params["stable"] or not params["steps"]:
            raise CanaryError("mode=start needs target, stable and steps")
        record = new_record(service, params["target"], params["stable"], params["steps"])
    elif not record:
        raise CanaryError(f"mode={mode}: no canary of {service} is on record")
    if check_mode:
        return {
            "changed": True,
            "status": record.get("status", RUNNING),
            "reason": f"check mode: would {mode}",
            "record": record,
        }
    save = _saver(state_dir, service)
    if mode in ("promote", "abort"):
        lbs = Lbs(params) if mode == "abort" else None
        if lbs is not None:
            lbs.set(servers.weights(0))
            record["share"] = 0
        record["status"] = PROMOTING if mode == "promote" else ABORTING
        record["reason"] = (
            params["reason"] or ("promoted" if mode == "promote" else "aborted") + " by the operator"
        )
        save(record)
        return {"changed": True, "status": record["status"], "reason": record["reason"], "record": record}
    record["status"] = RUNNING
    save(record)
    lbs = Lbs(params)
    runner = StepRunner(
        record=record,
        set_share=lambda share: lbs.set(servers.weights(share))[1],
        read=lbs.reader(servers),
        save=save,
    )
    seen = len(record.get("history", []))
    outcome = runner.run()
    return {"changed": True, **outcome, "summary": describe(record["history"][seen:]), "record": record}


def _saver(state_dir: str, service: str) -> Callable[[dict[str, Any]], None]:
    def save(record: dict[str, Any]) -> None:
        write_record(state_dir, service, record)

    return save


def run(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    service = params["service"]
    try:
        if params["action"] == "plan":
            return _plan(params)
        servers = Servers(params["servers"])
        if params["action"] == "run":
            return _run(params, servers, check_mode)
        if params["action"] == "reset":
            changed, weights = Lbs(params).set(servers.weights(0), check_mode)
            return {"changed": changed, "weights": weights}
        if check_mode:
            return {"changed": True, "msg": f"check mode: would record {params['outcome']}", "weights": {}}
        _changed, weights = Lbs(params).set(servers.weights(0))
        record = read_record(params["state_dir"], service)
        record.update(status=params["outcome"], share=0, finished_at=time.time())
        if params["reason"]:
            record["reason"] = params["reason"]
        write_record(params["state_dir"], service, record)
        return {
            "changed": True,
            "status": params["outcome"],
            "reason": record.get("reason", ""),
            "record": record,
            "weights": weights,
        }
    except CanaryError as exc:
        raise ModuleFailure(f"{service}: {exc}; nothing was changed") from None
    except (ForwardError, HaproxyError) as exc:
        raise ModuleFailure(f"{service}: the canary could not reach the load balancers: {exc}") from None


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, supports_check_mode=True)
    exit_module(module, run)


if __name__ == "__main__":
    main()
