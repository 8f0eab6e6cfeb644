# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs the lb_step module on the load balancer, then records its result in the rollout journal
on the controller (``journal`` option), so the journal costs no module run of its own."""

from __future__ import annotations

from ansible_collections.berth.fleet.plugins.plugin_utils.step_action import StepAction


class ActionModule(StepAction):
    MODULE = "berth.fleet.lb_step"
    KIND = "traffic"
