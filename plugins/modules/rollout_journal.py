#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: rollout_journal
short_description: A service's rollout journal - its states, and the version rollback or reconcile picks
version_added: 0.3.0
author:
  - Berth maintainers (@berth)
description:
  - Every rollout of a service is recorded in C(<state_dir>/rollouts/<service>.json) on the
    controller - where it started from, its batches, which are done and how long each took, and
    whether it is running, halted or complete. This module is the only reader and writer of that
    file; the C(rollout) role and the C(rollback) and C(reconcile) playbooks call it.
  - C(read) returns the journal (empty when nothing was ever rolled out).
  - C(start) records a rollout that is starting; a rerun of an unfinished rollout keeps where it
    started from and the batches already done.
  - A running rollout's parts (M(berth.fleet.rollout_steps), M(berth.fleet.lb_traffic),
    M(berth.fleet.instance_cycle)) record their own outcomes; the journal derives the finished
    batches, the halt and the completion from them.
  - C(migrations) records the schema's phase - per phase, the release whose migrations ran and
    which - and C(phase) (C(expanded) or C(contracted)); a journal a later rollout starts keeps it.
  - C(rollback_version) returns the one revision the last rollout started from, or fails saying
    why there is none. C(desired_version) returns the version a reconcile converges to and why.
  - The file is written atomically with mode 0600.
options:
  state_dir:
    description: The environment's state directory on the controller (C(berth_state_dir)).
    type: path
    required: true
  service:
    description: The service whose journal this is.
    type: str
    required: true
  scope:
    description:
      - With C(read) and C(start), the datacenter a scoped run (a per-datacenter reconcile, one job
        per DC's execution node) is limited to; its journal is C(<state_dir>/rollouts/<service>@<scope>.json),
        so the jobs of two datacenters never meet in one file. C(start) waits until no part of a
        run of the service's own journal still runs (and a run of the service's journal waits for
        every scoped one). Empty (the default) is the whole service.
      - C(rollback_version) and C(desired_version) always read the service's own journal (a scoped
        run is a repair, which never changes where the service stands) and refuse a scope.
    type: str
    default: ""
    version_added: 0.3.0
  action:
    description: What to do (see the description).
    type: str
    default: read
    choices: [read, start, rollback_version, desired_version, migrations]
  target:
    description:
      - With C(start), the version being rolled out; with C(migrations), the release whose
        migrations ran.
    type: str
  phase:
    description: With C(migrations), the phase that ran (C(expand) or C(contract)).
    type: str
    choices: [expand, contract]
    version_added: 0.6.0
  applied:
    description: With C(migrations), the ids this run ran.
    type: list
    elements: str
    version_added: 0.6.0
  ledger:
    description:
      - With C(migrations), the database's ledger after the run (M(berth.fleet.db_migrate)'s C(ledger)).
    type: list
    elements: dict
    version_added: 0.6.0
  versions:
    description: With C(start), the version each instance runs now (C('') for none).
    type: dict
  batches:
    description: With C(start), the planned batches (lists of instance names).
    type: list
    elements: list
  steps:
    description:
      - With C(start), the plan's traffic steps (M(berth.fleet.rollout_plan) C(steps)). The steps'
        own parts (M(berth.fleet.rollout_steps)) then record their events
        and the journal derives the finished batches and the status from them.
    type: list
    elements: dict
    version_added: 0.3.0
  lbs:
    description: With O(steps), the load balancers every step runs on.
    type: list
    elements: str
    default: []
    version_added: 0.3.0
  inventory_version:
    description: With C(desired_version), the version the inventory's service descriptor asks for.
    type: str
attributes:
  action:
    support: full
    description:
      - Runs in the controller's process (its action plugin), not as a module run - no local Python
        process on the critical path of a rollout. It always acts on the controller.
  check_mode:
    support: full
    description: Reports what the journal would become and writes nothing.
  diff_mode:
    support: full
    description: The journal file before and after.
  idempotent:
    support: full
    description:
      - C(start) for a rollout that is already recorded the same way, and the reading actions,
        change nothing.
"""

EXAMPLES = r"""
- name: The revision to roll back to
  berth.fleet.rollout_journal:
    state_dir: "{{ berth_state_dir }}"
    service: catalog
    action: rollback_version
  register: previous
"""

RETURN = r"""
path:
  description: The journal file.
  type: str
  returned: always
journal:
  description: The journal after the action (C({}) when none is recorded).
  type: dict
  returned: always
version:
  description: The version chosen by C(rollback_version) or C(desired_version).
  type: str
  returned: with rollback_version and desired_version
why:
  description: Why C(desired_version) chose it.
  type: str
  returned: with desired_version
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.common.failure import ModuleFailure, exit_module
from ansible_collections.berth.fleet.plugins.module_utils.planner import journal as rollout_journal
from ansible_collections.berth.fleet.plugins.module_utils.planner import progress

# a killed deploy's parts end after the part they are in (its own timeouts bound it)
EARLIER_PARTS_TIMEOUT = 300
REQUIRED_BY_ACTION = {
    "start": ["target", "versions", "batches"],
    "migrations": ["target", "phase", "ledger"],
    "desired_version": ["inventory_version"],
}


def advance(params: dict[str, Any], before: dict[str, Any], path: str) -> dict[str, Any]:
    """The result fields of one action on the journal ``before`` (``journal`` is what it becomes)."""
    action, service = params["action"], params["service"]
    if action == "start":
        journal = rollout_journal.journal_started(
            before, service, params["target"], params["versions"], params["batches"]
        )
        if params["steps"] is not None:
            journal = progress.run_started(journal, params["steps"], params["lbs"])
        return {"journal": journal}
    if action == "migrations":
        applied = list(params["applied"] or [])
        return {
            "journal": rollout_journal.migrations_recorded(
                before, params["phase"], params["target"], applied, list(params["ledger"])
            )
        }
    if action == "rollback_version":
        return {"journal": before, "version": rollout_journal.rollback_version(before, service, path)}
    if action == "desired_version":
        return {
            "journal": before,
            **rollout_journal.desired_version(before, params["inventory_version"], service),
        }
    return {"journal": before}


# one argument spec for both paths: this module, and its action plugin (run on the controller)
ARGUMENT_SPEC: dict[str, Any] = {
    "state_dir": {"type": "path", "required": True},
    "service": {"type": "str", "required": True},
    "scope": {"type": "str", "default": ""},
    "action": {
        "type": "str",
        "default": "read",
        "choices": ["read", "start", "rollback_version", "desired_version", "migrations"],
    },
    "phase": {"type": "str", "choices": ["expand", "contract"]},
    "applied": {"type": "list", "elements": "str"},
    "ledger": {"type": "list", "elements": "dict"},
    "target": {"type": "str"},
    "versions": {"type": "dict"},
    "batches": {"type": "list", "elements": "list"},
    "steps": {"type": "list", "elements": "dict"},
    "lbs": {"type": "list", "elements": "str", "default": []},
    "inventory_version": {"type": "str"},
}
REQUIRED_IF = [("action", action, needed) for action, needed in REQUIRED_BY_ACTION.items()]


def run(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    try:
        scope = params.get("scope") or ""
        if scope and params["action"] not in ("read", "start"):
            raise rollout_journal.JournalError(
                f"scope {scope!r}: {params['action']} reads the service's own journal (a run scoped to a "
                "datacenter is a repair and never changes where the service stands); give no scope"
            )
        path = rollout_journal.journal_path(params["state_dir"], params["service"], scope)
        waited = 0.0
        if params["action"] == "start" and not check_mode:
            waited = rollout_journal.wait_for_earlier_parts(path, EARLIER_PARTS_TIMEOUT, lambda _said: None)
        before = rollout_journal.load(path)
        result = advance(params, before, str(path))
        if waited:
            result["warnings"] = [
                f"waited {waited} s for the parts of an earlier run of this rollout (or of a run of "
                "another scope of this service) to end"
            ]
    except rollout_journal.JournalError as exc:
        raise ModuleFailure(str(exc), path=params["state_dir"]) from None
    after = result["journal"]
    changed = after != before
    if changed and not check_mode:
        try:
            rollout_journal.save(path, after)
        except rollout_journal.JournalError as exc:
            raise ModuleFailure(str(exc), path=str(path)) from None
    diff = {
        "before": rollout_journal.render(before) if before else "",
        "after": rollout_journal.render(after) if after else "",
        "before_header": str(path),
        "after_header": str(path),
    }
    return {"changed": changed, "path": str(path), "diff": diff, **result}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, supports_check_mode=True)
    exit_module(module, run)


if __name__ == "__main__":
    main()
