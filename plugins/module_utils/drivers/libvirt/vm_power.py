# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VM's autostart and power state: started, resumed, shut down (gracefully, then destroyed) or
restarted to pick up a new definition, which only happens when the request allows it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.changes import Changes
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.connection import (
    Connection,
    Manager,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.domain import VmRequest
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.domain_xml import (
    changed_fields,
    meaningful,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.errors import libvirt, translated


def domain_state(domain: Any) -> str:
    code = domain.state()[0]
    if code == libvirt.VIR_DOMAIN_PAUSED:
        return "paused"
    if code in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED):
        return "stopped"
    return "running"


class VmPower(Manager):
    def __init__(
        self,
        connection: Connection,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(connection)
        self.sleep = sleep
        self.clock = clock

    def converge_autostart(self, domain: Any, autostart: bool, changes: Changes) -> None:
        name = domain.name()
        with translated(f"cannot set autostart on VM {name!r} on {self.uri}"):
            if bool(domain.autostart()) != autostart:
                changes.apply(
                    f"set autostart={autostart} on VM {name}", lambda: domain.setAutostart(int(autostart))
                )

    def converge(self, request: VmRequest, domain: Any, desired: str, changes: Changes) -> bool:
        """Start, stop or restart; True when the VM runs an older definition that waits for a restart."""
        name = request.name
        if request.state == "present":
            return False  # the power state is someone else's (a BMC): never touched
        with translated(f"cannot change the power state of VM {name!r} on {self.uri}"):
            state = domain_state(domain)
            if request.state == "stopped":
                if state != "stopped":
                    changes.apply(
                        f"shut down VM {name}", lambda: self.shutdown(domain, request.shutdown_timeout)
                    )
                return False
            if state == "stopped":
                changes.apply(f"start VM {name}", domain.create)
                return False
            if state == "paused":
                changes.apply(f"resume VM {name}", domain.resume)
            pending = changed_fields(
                meaningful(self.connection.domain_xml(domain, inactive=False)), meaningful(desired)
            )
        if not pending:
            return False
        if request.restart_allowed:
            changes.apply(
                f"restart VM {name} ({', '.join(pending)} changed)", lambda: self._restart(domain, request)
            )
            return False
        changes.warnings.append(
            f"VM {name} runs with an older definition ({', '.join(pending)} changed); the new one "
            "takes effect at its next boot (set restart_allowed: true to restart it now)"
        )
        return True

    def shutdown(self, domain: Any, timeout: float) -> None:
        """Graceful ACPI shutdown, then destroy if the guest has not powered off within ``timeout``."""
        with translated(f"cannot shut down VM {domain.name()!r} on {self.uri}"):
            domain.shutdown()
            deadline = self.clock() + timeout
            while domain.isActive():
                if self.clock() >= deadline:
                    domain.destroy()
                    break
                self.sleep(0.5)

    def _restart(self, domain: Any, request: VmRequest) -> None:
        self.shutdown(domain, request.shutdown_timeout)
        with translated(f"cannot start VM {request.name!r} on {self.uri}"):
            domain.create()
