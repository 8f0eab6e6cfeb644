# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VM's own volumes: its root disk (a qcow2 overlay created by the storage driver over a base
volume) and its cloud-init seed, planned before anything changes, then created, grown or uploaded.

The plan also resolves the kernel, the initrd and the networks the VM needs: whatever is missing
fails the run before anything is changed (in check mode: a warning, an earlier task may create it).
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass, replace
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.changes import Changes
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.connection import (
    Connection,
    Manager,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.domain import (
    SeedSpec,
    VmRequest,
    VmSpec,
    overlay_volume_name,
    seed_volume_name,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.domain_xml import (
    DomainPaths,
    meaningful,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.errors import (
    LibvirtError,
    libvirt,
    translated,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.seed import (
    SeedError,
    build_seed_iso,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.storage import (
    VOLUME_FORMATS,
    VolumeInfo,
    volume_xml,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.volumes import VolumeManager
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.xmlutil import GIB


@dataclass
class VmPlan:
    """What the hypervisor has for a VM spec, read before anything is changed."""

    paths: DomainPaths
    base: VolumeInfo | None
    overlay: VolumeInfo | None
    seed_iso: bytes | None = None
    seed_sha256: str | None = None
    seed_volume: VolumeInfo | None = None


def check_disk(spec: VmSpec, base: VolumeInfo | None, overlay: VolumeInfo | None) -> list[str]:
    """The root disk can be built (or kept): a usable base, no shrinking; returns warnings.

    An existing disk on another base (the guest image moved on, e.g. a new kernel on the controller)
    is kept as it is, with a warning: rebasing a disk in place would lose what the VM wrote.
    """
    disk = spec.disk
    if base is not None and base.format not in VOLUME_FORMATS:
        raise LibvirtError(f"base volume {disk.base_volume!r} is {base.format}, not qcow2 or raw")
    if base is not None and disk.size_gib * GIB < base.capacity:
        raise LibvirtError(
            f"disk.size_gib {disk.size_gib} is smaller than base volume {disk.base_volume!r} "
            f"({base.capacity / GIB:.2f} GiB)"
        )
    if overlay is None:
        return []
    warnings = []
    if base is not None and overlay.backing != base.path:
        warnings.append(
            f"the disk of VM {spec.name!r} ({overlay.name}) stays on its base {overlay.backing}; new VMs get "
            f"base volume {disk.base_volume!r}. Remove the VM (state=absent) and create it again to move it"
        )
    if overlay.capacity > disk.size_gib * GIB:
        raise LibvirtError(
            f"the disk of VM {spec.name!r} is {overlay.capacity / GIB:g} GiB; shrinking it to "
            f"{disk.size_gib} GiB would destroy data, so it is refused"
        )
    return warnings


def root_disk_summary(spec: VmSpec, capacity: int | None) -> dict[str, Any]:
    return {
        "pool": spec.disk.pool,
        "volume": spec.overlay_volume,
        "base_volume": spec.disk.base_volume,
        "size_gib": None if capacity is None else round(capacity / GIB, 3),
    }


class VmDisks(Manager):
    def __init__(self, connection: Connection, volumes: VolumeManager) -> None:
        super().__init__(connection)
        self.volumes = volumes

    def plan(self, spec: VmSpec, changes: Changes) -> VmPlan:
        """Resolve every volume and network the VM needs; fail before anything changes if one is missing."""
        connection = self.connection
        disk = spec.disk
        pool = connection.active_pool(disk.pool, changes)
        pool_dir = connection.pool_path(pool) if pool is not None else f"<pool {disk.pool}>"

        def resolve(volume_name: str | None, role: str) -> str | None:
            if volume_name is None:
                return None
            volume = None if pool is None else connection.find_volume(pool, volume_name)
            if volume is not None:
                return connection.volume_info(volume).path
            if pool is not None:
                changes.missing(
                    f"{role} volume {volume_name!r} not found in pool {disk.pool!r} on {self.uri}"
                )
            return os.path.join(pool_dir, volume_name)

        base_volume = None if pool is None else connection.find_volume(pool, disk.base_volume)
        if pool is not None and base_volume is None:
            changes.missing(f"base volume {disk.base_volume!r} not found in pool {disk.pool!r} on {self.uri}")
        base = None if base_volume is None else connection.volume_info(base_volume)
        overlay_volume = None if pool is None else connection.find_volume(pool, spec.overlay_volume)
        overlay = None if overlay_volume is None else connection.volume_info(overlay_volume)
        changes.warnings.extend(check_disk(spec, base, overlay))
        for nic in spec.nics:
            if connection.find_network(nic.network) is None:
                changes.missing(f"network {nic.network!r} does not exist on {self.uri}")
        boot = spec.boot
        plan = VmPlan(
            paths=DomainPaths(
                overlay=overlay.path if overlay else os.path.join(pool_dir, spec.overlay_volume),
                kernel=resolve(boot.kernel_volume if boot else None, "kernel"),
                initrd=resolve(boot.initrd_volume if boot else None, "initrd"),
            ),
            base=base,
            overlay=overlay,
        )
        if spec.seed is not None:
            self._plan_seed(spec, spec.seed, plan, pool, pool_dir)
        return plan

    def _plan_seed(self, spec: VmSpec, seed: SeedSpec, plan: VmPlan, pool: Any, pool_dir: str) -> None:
        try:
            plan.seed_iso, plan.seed_sha256 = build_seed_iso(
                seed.meta_data, seed.user_data, seed.network_config
            )
        except SeedError as exc:
            raise LibvirtError(f"cannot build the cloud-init seed of VM {spec.name!r}: {exc}") from exc
        seed_volume = None if pool is None else self.connection.find_volume(pool, spec.seed_volume)
        plan.seed_volume = None if seed_volume is None else self.connection.volume_info(seed_volume)
        seed_path = plan.seed_volume.path if plan.seed_volume else os.path.join(pool_dir, spec.seed_volume)
        plan.paths = replace(plan.paths, seed=seed_path)

    def converge(
        self, spec: VmSpec, plan: VmPlan, domain: Any, persistent: str | None, changes: Changes
    ) -> None:
        """Create or grow the root disk, upload the seed when its content changed."""
        disk = spec.disk
        size = disk.size_gib * GIB
        if plan.overlay is None:
            changes.apply(
                f"create disk {spec.overlay_volume} ({disk.size_gib} GiB over {disk.base_volume})",
                lambda: self._create_overlay(spec, plan),
            )
        elif plan.overlay.capacity < size:
            changes.apply(
                f"grow disk {spec.overlay_volume} from {plan.overlay.capacity / GIB:g} "
                f"to {disk.size_gib} GiB",
                lambda: self._grow_overlay(spec, domain, size),
            )
        if plan.seed_iso is None:
            return
        iso = plan.seed_iso
        recorded = None if persistent is None else meaningful(persistent)["seed_sha256"]
        if plan.seed_volume is None or recorded != plan.seed_sha256:
            changes.apply(
                f"upload cloud-init seed {spec.seed_volume} (sha256 {plan.seed_sha256})",
                lambda: self._upload_seed(spec, iso),
            )

    def _create_overlay(self, spec: VmSpec, plan: VmPlan) -> None:
        pool = self.connection.find_pool(spec.disk.pool)
        if plan.base is None or pool is None:  # only in check mode, where nothing is created
            raise LibvirtError(f"base volume {spec.disk.base_volume!r} not found in pool {spec.disk.pool!r}")
        where = f"disk {spec.overlay_volume!r} in pool {spec.disk.pool!r} on {self.uri}"
        with translated(f"cannot create {where}"):
            pool.createXML(volume_xml(spec.overlay_volume, spec.disk.size_gib * GIB, "qcow2", plan.base), 0)

    def _grow_overlay(self, spec: VmSpec, domain: Any, size: int) -> None:
        where = f"disk {spec.overlay_volume!r} of VM {spec.name!r} on {self.uri}"
        with translated(f"cannot grow {where}"):
            if domain is not None and domain.isActive():
                # qemu holds the image open: resize through it, not behind its back.
                domain.blockResize("vda", size, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            else:
                pool = self.conn.storagePoolLookupByName(spec.disk.pool)
                pool.storageVolLookupByName(spec.overlay_volume).resize(size, 0)

    def _upload_seed(self, spec: VmSpec, iso: bytes) -> None:
        pool = self.connection.find_pool(spec.disk.pool)
        existing = self.connection.find_volume(pool, spec.seed_volume)
        if existing is not None:
            self.volumes.delete(
                existing, f"volume {spec.seed_volume!r} in pool {spec.disk.pool!r} on {self.uri}"
            )
        self.volumes.upload(
            pool, spec.disk.pool, spec.seed_volume, "raw", len(iso), io.BytesIO(iso), len(iso)
        )

    def own_volumes(self, request: VmRequest, persistent: str | None) -> list[Any]:
        """The VM's own volumes (overlay and seed, by name), found through its disks or in ``request.pool``.

        Other disks, the base volume above all, are never touched.
        """
        connection = self.connection
        own = {overlay_volume_name(request.name), seed_volume_name(request.name)}
        found: dict[str, Any] = {}
        for disk in meaningful(persistent)["disks"] if persistent else []:
            path = disk["source"] or ""
            volume = connection.lookup(
                f"volume at {path}", functools.partial(self.conn.storageVolLookupByPath, path)
            )
            if volume is not None and volume.name() in own:
                found[volume.key()] = volume
        pool = connection.find_pool(request.pool) if request.pool else None
        for volume_name in sorted(own) if pool is not None else []:
            volume = connection.find_volume(pool, volume_name)
            if volume is not None:
                found[volume.key()] = volume
        return [found[key] for key in sorted(found)]
