# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs parallel_gate in the controller's process: the module's own argument spec and code,
no module run; then adds the verdict to the report of the rollout it belongs to (its page is made
again: plotly is the controller's, never a module's)."""

from __future__ import annotations

from ansible_collections.berth.fleet.plugins.plugin_utils.controller_action import ControllerAction
from ansible_collections.berth.fleet.plugins.plugin_utils.rollout_sampler import amend_report


class ActionModule(ControllerAction):
    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        recorded = result.get("journal") or {}
        if recorded.get("rollout_run"):
            args = self._task.args
            result["report"] = amend_report(
                str(args["state_dir"]),
                str(args["service"]),
                recorded["rollout_run"],
                str(recorded["target"]),
                "parallel_run",
                recorded,
            )
        return result
