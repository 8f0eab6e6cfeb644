# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Storage pools: a ``dir`` pool defined, built, started and autostarted, or removed with its volumes."""

from __future__ import annotations

import functools
import os
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.changes import Changes, Outcome
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.connection import Manager
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.errors import (
    LibvirtError,
    no_stray_libvirt_errors,
    translated,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.storage import (
    PoolSpec,
    meaningful_pool,
    pool_xml,
)


class PoolManager(Manager):
    @no_stray_libvirt_errors
    def ensure(self, spec: PoolSpec, state: str, check_mode: bool, force: bool = False) -> Outcome:
        changes = Changes(check_mode)
        pool = self.connection.find_pool(spec.name)
        before = self._summary(pool)
        if state == "absent":
            if pool is not None:
                self._remove(pool, force, changes)
            after: dict[str, Any] = {"state": "absent"}
        else:
            self._present(pool, spec, changes)
            after = {
                "state": "running",
                "type": "dir",
                "path": os.path.normpath(spec.path or ""),
                "autostart": spec.autostart,
            }
        return changes.outcome(spec.name, after["state"], before, after, {"path": after.get("path")})

    def _summary(self, pool: Any) -> dict[str, Any]:
        return self.summary("storage pool", pool, meaningful_pool)

    def _present(self, pool: Any, spec: PoolSpec, changes: Changes) -> None:
        where = f"storage pool {spec.name!r} on {self.uri}"
        if pool is None:

            def create() -> None:
                with translated(f"cannot create {where}"):
                    created = self.conn.storagePoolDefineXML(pool_xml(spec), 0)
                    created.build(0)
                    created.create(0)
                    created.setAutostart(int(spec.autostart))

            changes.apply(f"define, build and start pool {spec.name} at {spec.path}", create)
            return
        current = self._summary(pool)
        wanted = os.path.normpath(spec.path or "")
        if current["type"] != "dir" or current["path"] != wanted:
            raise LibvirtError(
                f"{where} is a {current['type']} pool at {current['path']}, not a dir pool at {wanted}; "
                "remove it first (state=absent) to move it"
            )
        with translated(f"cannot start {where}"):
            if current["state"] != "running":
                changes.apply(f"start pool {spec.name}", lambda: pool.create(0))
            if current["autostart"] != spec.autostart:
                changes.apply(
                    f"set autostart={spec.autostart} on pool {spec.name}",
                    lambda: pool.setAutostart(int(spec.autostart)),
                )

    def _remove(self, pool: Any, force: bool, changes: Changes) -> None:
        name = pool.name()
        where = f"storage pool {name!r} on {self.uri}"
        with translated(f"cannot remove {where}"):
            if not pool.isActive():
                # Its volumes can only be listed while it runs.
                changes.apply(f"start pool {name} to list its volumes", lambda: pool.create(0))
            volumes = pool.listAllVolumes(0) if pool.isActive() else []
            if not pool.isActive() and not force:
                changes.warnings.append(
                    f"check mode: {where} is stopped, so its volumes cannot be listed; "
                    "removing it fails if it holds any (unless force: true)"
                )
            if volumes and not force:
                names = sorted(volume.name() for volume in volumes)
                shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
                raise LibvirtError(
                    f"{where} still holds {len(names)} volume(s) ({shown}); "
                    "remove them first or set force: true to delete them with the pool"
                )
            for volume in volumes:
                changes.apply(f"delete volume {volume.name()}", functools.partial(volume.delete, 0))
            if pool.isActive() or changes.check_mode:
                changes.apply(f"stop pool {name}", pool.destroy)
            changes.apply(f"delete the directory of pool {name}", lambda: pool.delete(0))
            changes.apply(f"undefine pool {name}", pool.undefine)
