# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The action side of a rollout step: on the controller, ask the service's rollout journal whether
this part of the step may run (the journal keeps the parts in order and knows a halt); run the
step's module where it belongs (an LB, a node); then record the outcome in the journal."""

from __future__ import annotations

import time
from typing import Any

from ansible.errors import AnsibleConnectionFailure
from ansible.plugins.action import ActionBase

from ansible_collections.berth.fleet.plugins.module_utils.planner.journal import JournalError
from ansible_collections.berth.fleet.plugins.module_utils.planner.report import gate_step, record_step

JOURNAL_FAULTS = (JournalError, KeyError, TypeError, ValueError)


class StepAction(ActionBase):
    MODULE = ""
    KIND = ""

    def keep_out(self, module_args: dict[str, Any], hosts: list[str]) -> dict[str, Any]:
        """The module's arguments once ``hosts`` must stay out of rotation (after a halt)."""
        return module_args

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        module_args = dict(self._task.args)
        journal = module_args.pop("journal", None)
        who = task_vars["inventory_hostname"]
        recording = bool(journal) and not self._task.check_mode
        if recording:
            try:
                why, keep_out = gate_step(journal, self.KIND)
            except JOURNAL_FAULTS as exc:
                return {**result, "failed": True, "msg": f"the rollout journal cannot be read: {exc}"}
            if why:
                return {**result, "skipped": True, "skip_reason": why, "msg": why}
            module_args = self.keep_out(module_args, keep_out)
        started = time.time()
        try:
            result.update(self._execute_module(self.MODULE, module_args=module_args, task_vars=task_vars))
        except AnsibleConnectionFailure as exc:
            if recording:  # the journal learns it too, then Ansible reports the host unreachable
                self._record(journal, who, started, {"unreachable": True, "msg": str(exc)})
            raise
        if recording and not result.get("skipped"):
            failure = self._record(journal, who, started, result)
            if failure:
                result["failed"] = True
                result["msg"] = f"{result.get('msg', 'done')}; and the journal could not record it: {failure}"
        return result

    def _record(self, journal: Any, who: str, started: float, result: dict[str, Any]) -> str:
        try:
            record_step(journal, self.KIND, who, started, result)
        except JOURNAL_FAULTS as exc:
            return str(exc)
        return ""
