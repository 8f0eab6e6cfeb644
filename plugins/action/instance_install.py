# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs instance_install on the node. An artifact of at most ``ask_above`` bytes is sent with the
call (one transfer into the task's temporary directory, ``upload``): one module run. A bigger one
is sent only when the node answers that it lacks it, and the module runs again with ``upload``."""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

MODULE = "berth.fleet.instance_install"
ASK_ABOVE = 4 << 20


class ActionModule(ActionBase):
    TRANSFERS_FILES = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        args.pop("upload", None)  # the plugin's to set, never the user's
        source = str(args.get("src") or "")
        if not os.path.isfile(source):
            raise AnsibleActionFail(f"src {source!r}: no such artifact on the controller")
        # a small artifact costs less to send than a module run asking whether to send it
        if self._task.check_mode or os.path.getsize(source) > int(args.get("ask_above", ASK_ABOVE)):
            first = self._execute_module(MODULE, module_args=args, task_vars=task_vars)
            if not first.get("needs_package") or first.get("failed"):
                result.update(first)
                return result
        remote_dir = self._make_tmp_path()
        try:
            upload = self._connection._shell.join_path(remote_dir, os.path.basename(source))
            self._transfer_file(source, upload)
            self._fixup_perms2((remote_dir, upload))
            result.update(
                self._execute_module(MODULE, module_args={**args, "upload": upload}, task_vars=task_vars)
            )
        finally:
            self._remove_tmp_path(remote_dir)
        return result
