# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs the lb_step module on the load balancer once the rollout journal says its step may run,
then records its result in the journal on the controller (``journal`` option), so the journal
costs no module run of its own. After a halt, hosts the journal keeps out are never readied."""

from __future__ import annotations

from typing import Any

from ansible_collections.berth.fleet.plugins.plugin_utils.step_action import StepAction


class ActionModule(StepAction):
    MODULE = "berth.fleet.lb_step"
    KIND = "traffic"

    def keep_out(self, module_args: dict[str, Any], hosts: list[str]) -> dict[str, Any]:
        return {**module_args, "ready": [h for h in module_args.get("ready") or [] if h not in hosts]}
