# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The action side of a rollout step: run the step's module where it belongs (an LB, a node),
then, on the controller, record the outcome in the service's rollout journal."""

from __future__ import annotations

import time

from ansible.plugins.action import ActionBase

from ansible_collections.berth.fleet.plugins.module_utils.planner.journal import JournalError
from ansible_collections.berth.fleet.plugins.module_utils.planner.report import record_step


class StepAction(ActionBase):
    MODULE = ""
    KIND = ""

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        module_args = dict(self._task.args)
        journal = module_args.pop("journal", None)
        started = time.time()
        result.update(self._execute_module(self.MODULE, module_args=module_args, task_vars=task_vars))
        if journal and not self._task.check_mode and not result.get("skipped"):
            try:
                record_step(journal, self.KIND, task_vars["inventory_hostname"], started, result)
            except (JournalError, KeyError, TypeError, ValueError) as exc:
                result["failed"] = True
                result["msg"] = f"{result.get('msg', 'done')}; and the journal could not record it: {exc}"
        return result
