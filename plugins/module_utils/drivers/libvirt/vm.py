# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""VMs: defined from a spec (with their disks and seed), only powered on or off, or removed.

A domain Berth did not define (no berth metadata) is never redefined nor removed. The disks and the
seed are ``vm_disks.py``'s, the power state ``vm_power.py``'s; this file puts them in order.
"""

from __future__ import annotations

import functools
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.changes import Changes, Outcome
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.connection import (
    Connection,
    Manager,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.domain import VmRequest, VmSpec
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.domain_xml import (
    changed_fields,
    is_berth_domain,
    meaningful,
    merge_libvirt_assigned,
    render_domain_xml,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.errors import (
    LibvirtError,
    libvirt,
    no_stray_libvirt_errors,
    translated,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.vm_disks import (
    VmDisks,
    root_disk_summary,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.vm_power import (
    VmPower,
    domain_state,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.volumes import VolumeManager
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.xmlutil import GIB


class VmManager(Manager):
    def __init__(self, connection: Connection, volumes: VolumeManager, power: VmPower) -> None:
        super().__init__(connection)
        self.volumes = volumes
        self.disks = VmDisks(connection, volumes)
        self.power = power

    @no_stray_libvirt_errors
    def ensure(self, request: VmRequest, check_mode: bool) -> Outcome:
        changes = Changes(check_mode)
        domain = self.connection.find_domain(request.name)
        if request.state == "absent":
            return self._absent(request, domain, changes)
        if request.spec is None:
            if domain is None:
                raise LibvirtError(
                    f"VM {request.name!r} does not exist on {self.uri}; "
                    "defining it needs disk, vcpus and memory_mib"
                )
            return self._power_only(request, domain, changes)
        return self._present(request, request.spec, domain, changes)

    def _berth_definition(self, name: str, domain: Any, refusal: str) -> str | None:
        """The persistent definition of ``domain`` (None without a domain), which Berth must have written."""
        persistent = None if domain is None else self.connection.domain_xml(domain, inactive=True)
        if persistent is not None and not is_berth_domain(persistent):
            raise LibvirtError(
                f"VM {name!r} on {self.uri} was not defined by Berth (no berth metadata); {refusal}"
            )
        return persistent

    def _summary(self, domain: Any, persistent_xml: str | None) -> dict[str, Any]:
        if domain is None or persistent_xml is None:
            return {"state": "absent"}
        with translated(f"cannot read VM {domain.name()!r} on {self.uri}"):
            autostart = bool(domain.autostart())
            return {"state": domain_state(domain), "autostart": autostart, **meaningful(persistent_xml)}

    def _present(self, request: VmRequest, spec: VmSpec, domain: Any, changes: Changes) -> Outcome:
        persistent = self._berth_definition(spec.name, domain, "refusing to redefine it")
        plan = self.disks.plan(spec, changes)
        desired = render_domain_xml(spec, plan.paths, plan.seed_sha256)
        if persistent is not None:
            desired = merge_libvirt_assigned(desired, persistent)
        autostart = True if request.autostart is None else request.autostart
        before = self._summary(domain, persistent)
        if persistent is not None:
            before["root_disk"] = root_disk_summary(spec, plan.overlay.capacity if plan.overlay else None)
        after = {"state": request.state, "autostart": autostart, **meaningful(desired)}
        after["root_disk"] = root_disk_summary(spec, spec.disk.size_gib * GIB)

        self.disks.converge(spec, plan, domain, persistent, changes)
        current = None if persistent is None else meaningful(persistent)
        if current != meaningful(desired):
            detail = (
                "" if current is None else f" ({', '.join(changed_fields(current, meaningful(desired)))})"
            )
            verb = "define" if current is None else "redefine"
            changes.apply(f"{verb} VM {spec.name}{detail}", lambda: self._define(spec.name, desired))
            if not changes.check_mode:
                domain = self.connection.find_domain(spec.name)
        restart_required = False
        if domain is None:  # check mode: the definition above was only recorded
            if autostart:
                changes.apply(f"set autostart=True on VM {spec.name}", lambda: None)
            if request.state == "running":
                changes.apply(f"start VM {spec.name}", lambda: None)
        else:
            self.power.converge_autostart(domain, autostart, changes)
            restart_required = self.power.converge(request, domain, desired, changes)
        facts = {
            "macs": [nic.mac for nic in spec.nics],
            "restart_required": restart_required,
            "seed_sha256": plan.seed_sha256,
        }
        return changes.outcome(spec.name, request.state, before, after, facts)

    def _define(self, name: str, xml: str) -> None:
        with translated(f"cannot define VM {name!r} on {self.uri}"):
            self.conn.defineXML(xml)

    def _power_only(self, request: VmRequest, domain: Any, changes: Changes) -> Outcome:
        persistent = self.connection.domain_xml(domain, inactive=True)
        before = self._summary(domain, persistent)
        autostart = before["autostart"] if request.autostart is None else request.autostart
        self.power.converge_autostart(domain, autostart, changes)
        restart_required = self.power.converge(request, domain, persistent, changes)
        after = {**before, "state": request.state, "autostart": autostart}
        facts = {
            "macs": [nic["mac"] for nic in before["interfaces"]],
            "restart_required": restart_required,
            "seed_sha256": before["seed_sha256"],
        }
        return changes.outcome(request.name, request.state, before, after, facts)

    def _absent(self, request: VmRequest, domain: Any, changes: Changes) -> Outcome:
        persistent = self._berth_definition(
            request.name,
            domain,
            "refusing to remove it and its disks. Remove it yourself if it really is to go",
        )
        before = self._summary(domain, persistent)
        volumes = self.disks.own_volumes(request, persistent)
        if volumes:
            before["volumes"] = sorted(volume.name() for volume in volumes)
        if domain is not None:
            with translated(f"cannot remove VM {request.name!r} on {self.uri}"):
                if domain.isActive():
                    changes.apply(f"destroy VM {request.name}", domain.destroy)
                flags = (
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                )
                changes.apply(f"undefine VM {request.name}", lambda: domain.undefineFlags(flags))
        for volume in volumes:
            where = f"volume {volume.name()!r} of VM {request.name!r} on {self.uri}"
            changes.apply(
                f"delete volume {volume.name()}", functools.partial(self.volumes.delete, volume, where)
            )
        facts = {"macs": [], "restart_required": False, "seed_sha256": None}
        return changes.outcome(request.name, "absent", before, {"state": "absent"}, facts)
