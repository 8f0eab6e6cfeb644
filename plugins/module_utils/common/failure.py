# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How a controller-only module fails, whether it runs as a module or in the controller's process
(``plugins/plugin_utils/controller_action.py``): its ``run(params, check_mode)`` raises
``ModuleFailure``, and ``exit_module`` turns the outcome into the module's exit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ModuleFailure(Exception):
    """A module's failure: ``msg`` plus any result fields to return with it."""

    def __init__(self, msg: str, **fields: Any) -> None:
        super().__init__(msg)
        self.fields = fields


def exit_module(module: Any, run: Callable[[dict[str, Any], bool], dict[str, Any]]) -> None:
    """``module.exit_json`` with ``run``'s result, or ``fail_json`` with its failure."""
    try:
        result = run(module.params, module.check_mode)
    except ModuleFailure as failure:
        module.fail_json(msg=str(failure), **failure.fields)
    module.exit_json(**result)
