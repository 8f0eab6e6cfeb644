# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-only modules run in the controller's own process.

Some of Berth's modules only ever work on the controller (the rollout plan, the journal in the
state directory, the built artifacts). Run as modules, each costs a local Python process, an
AnsiballZ payload and its imports: about half a second per task, on the critical path of every
rollout. Their action plugins run the same code in-process instead: the module file keeps the one
argument spec and a ``run(params, check_mode)`` function that its ``main()`` (a plain module run)
and this action share, so both paths validate and behave the same way.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ansible.plugins.action import ActionBase

from ansible_collections.berth.fleet.plugins.module_utils.common.failure import ModuleFailure


class ControllerAction(ActionBase):
    """The action plugin ``plugins/action/<name>.py`` of the module ``plugins/modules/<name>.py``,
    which defines ``ARGUMENT_SPEC``, ``REQUIRED_IF`` and ``run(params, check_mode)``."""

    def _module(self) -> ModuleType:
        return importlib.import_module(type(self).__module__.replace(".plugins.action.", ".plugins.modules."))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        module = self._module()
        # raises AnsibleActionFail naming the argument, as AnsibleModule would
        _validation, params = self.validate_argument_spec(
            argument_spec=dict(module.ARGUMENT_SPEC), required_if=module.REQUIRED_IF
        )
        try:
            result.update(module.run(params, bool(self._task.check_mode)))
        except ModuleFailure as failure:
            result.update(failed=True, msg=str(failure), **failure.fields)
        return result
