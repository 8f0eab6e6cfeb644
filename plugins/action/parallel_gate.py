# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs parallel_gate in the controller's process: the module's own argument spec and code,
no module run."""

from __future__ import annotations

from ansible_collections.berth.fleet.plugins.plugin_utils.controller_action import ControllerAction


class ActionModule(ControllerAction):
    pass
