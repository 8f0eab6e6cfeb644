# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs instance_install on the node; when the node answers that it lacks the artifact, sends it
(one transfer into the task's temporary directory) and runs the module again with ``upload``."""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

MODULE = "berth.fleet.instance_install"


class ActionModule(ActionBase):
    TRANSFERS_FILES = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        args.pop("upload", None)  # the plugin's to set, never the user's
        first = self._execute_module(MODULE, module_args=args, task_vars=task_vars)
        if not first.get("needs_package") or first.get("failed"):
            result.update(first)
            return result
        source = str(args.get("src") or "")
        if not os.path.isfile(source):
            raise AnsibleActionFail(f"src {source!r}: no such artifact on the controller")
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
