#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: parallel_gate
short_description: The verdict on a parallel run from what every load balancer's mirror found
version_added: "0.5.0"
author:
  - Berth maintainers (@berth)
description:
  - Merges the O(results) of M(berth.fleet.parallel_run) on every load balancer (per endpoint -
    requests compared, mismatches, noise; sampled differences, redacted; copies dropped) - applies
    the strategy's gate - at least O(min_requests) compared requests (fewer is never a pass) and a
    mismatch rate of at most O(max_mismatch_rate) - and records the verdict in
    C(<state_dir>/rollouts/<service>.parallel.json) (the service's last one) and, as
    C(parallel_run), in the rollout journal of the service's current rollout (the release being
    judged), whose report (C(<service>.report.json) and its page) then shows it too.
  - Fails when the gate refuses, naming the worst endpoints; RV(verdict) is returned either way.
options:
  service:
    description: The service.
    type: str
    required: true
  state_dir:
    description: Berth's state directory on the controller.
    type: path
    required: true
  run_id:
    description: The parallel run's name.
    type: str
    required: true
  target:
    description: The candidate release.
    type: str
    required: true
  results:
    description:
      - Per load balancer, the RV(berth.fleet.parallel_run#module:found) of its mirror (empty when
        it could not be read).
    type: dict
    required: true
  min_requests:
    description: Compared requests the gate needs.
    type: int
    required: true
  max_mismatch_rate:
    description: The largest share of mismatches (0 to 1) that passes.
    type: float
    required: true
attributes:
  action:
    support: full
    description: Runs in the controller's process (its action plugin), not as a module run.
  check_mode:
    support: full
    description: Judges and records nothing in check mode.
  diff_mode:
    support: none
    description: No diff.
  idempotent:
    support: none
    description: Each run records its verdict.
seealso:
  - module: berth.fleet.parallel_run
"""

EXAMPLES = r"""
- name: The gate before the switch
  berth.fleet.parallel_gate:
    service: orders
    state_dir: "{{ berth_state_dir }}"
    run_id: orders-v2-1
    target: v2
    results: "{{ dict(groups['lb'] | zip(groups['lb'] | map('extract', hostvars, ['judged', 'found']))) }}"
    min_requests: 200
    max_mismatch_rate: 0.001
"""

RETURN = r"""
verdict:
  description: C(passed), C(reason), C(gate), the merged C(tally) and per load balancer C(lbs).
  returned: always, except in check mode
  type: dict
journal:
  description:
    - The verdict's summary as recorded in the rollout journal (C(parallel_run)), with
      C(rollout_run), the journal's run it belongs to; empty when no rollout of the service is
      recorded.
  returned: always, except in check mode
  type: dict
report:
  description:
    - The rollout report's page that now shows the verdict (its action plugin renders it again);
      empty when no report of the current rollout was found.
  returned: always, except in check mode
  type: str
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.common.failure import ModuleFailure, exit_module
from ansible_collections.berth.fleet.plugins.module_utils.planner.journal import JournalError
from ansible_collections.berth.fleet.plugins.module_utils.planner.parallel import (
    journal_entry,
    judge,
    record_in_journal,
    write_record,
)

ARGUMENT_SPEC: dict[str, Any] = {
    "service": {"type": "str", "required": True},
    "state_dir": {"type": "path", "required": True},
    "run_id": {"type": "str", "required": True},
    "target": {"type": "str", "required": True},
    "results": {"type": "dict", "required": True},
    "min_requests": {"type": "int", "required": True},
    "max_mismatch_rate": {"type": "float", "required": True},
}
REQUIRED_IF: list[Any] = []


def run(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    if params["min_requests"] < 1 or not 0 <= params["max_mismatch_rate"] <= 1:
        raise ModuleFailure(
            "min_requests: expected at least 1; max_mismatch_rate: expected a share from 0 to 1"
        )
    if check_mode:
        return {"changed": False, "skipped": True, "msg": "check mode: a parallel run judges live traffic"}
    verdict = judge(params["results"], params["min_requests"], params["max_mismatch_rate"])
    try:
        record = write_record(
            params["state_dir"], params["service"], params["run_id"], params["target"], verdict
        )
        entry = journal_entry(params["run_id"], params["target"], verdict, record["judged_at"])
        recorded = record_in_journal(params["state_dir"], params["service"], entry)
    except (OSError, JournalError) as exc:
        raise ModuleFailure(
            f"{params['service']}: cannot record the parallel run: {exc}", verdict=verdict
        ) from None
    found = {"verdict": verdict, "journal": recorded, "report": ""}
    what = f"{params['service']} {params['target']}: parallel run {params['run_id']}: {verdict['reason']}"
    if not verdict["passed"]:
        raise ModuleFailure(f"{what}; the gate refuses the release", **found)
    return {"changed": False, "msg": what, **found}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    exit_module(module, run)


if __name__ == "__main__":
    main()
