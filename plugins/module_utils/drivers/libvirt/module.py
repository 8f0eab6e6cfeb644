# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every libvirt module does around its one call: check the binding, connect, report."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.changes import Outcome
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.errors import (
    LIBVIRT_IMPORT_ERROR,
    LibvirtError,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.hypervisor import Hypervisor


def run_on_hypervisor(module: AnsibleModule, action: Callable[[Hypervisor], Outcome]) -> None:
    """Connect to ``uri``, run ``action``, exit with its outcome (the diff only under --diff)."""
    if LIBVIRT_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("libvirt-python"), exception=LIBVIRT_IMPORT_ERROR)
    try:
        with Hypervisor(module.params["uri"]) as hypervisor:
            outcome = action(hypervisor)
    except LibvirtError as exc:
        module.fail_json(msg=str(exc), exception=traceback.format_exc())
    for warning in outcome.warnings:
        module.warn(warning)
    result: dict[str, Any] = outcome.as_dict()
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)
