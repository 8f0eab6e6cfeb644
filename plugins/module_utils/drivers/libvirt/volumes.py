# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Volumes uploaded from a disk image on the controller, and the upload the VM seed uses too.

Images are uploaded with a virStream (``stream_upload``), so nothing is ever copied to a hypervisor
by other means.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, BinaryIO

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.changes import Changes, Outcome
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.connection import (
    Connection,
    Manager,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.errors import (
    Conn,
    LibvirtError,
    libvirt,
    no_stray_libvirt_errors,
    translated,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.storage import (
    ImageFile,
    VolumeInfo,
    VolumeSpec,
    format_for,
    inspect_image,
    volume_xml,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.xmlutil import MIB

UPLOAD_CHUNK = 4 * MIB

Uploader = Callable[[Conn, Any, BinaryIO, int], None]


def stream_upload(conn: Conn, volume: Any, source: BinaryIO, length: int) -> None:
    """Upload ``length`` bytes from ``source`` into ``volume`` in 4 MiB chunks over a virStream."""
    stream = conn.newStream(0)
    try:
        volume.upload(stream, 0, length, 0)
        while chunk := source.read(UPLOAD_CHUNK):
            view = memoryview(chunk)
            while view:
                sent = stream.send(bytes(view))
                if sent < 0:
                    raise LibvirtError("the upload stream refused data")
                view = view[sent:]
        stream.finish()
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):  # the original error says why
            stream.abort()
        raise


def volume_summary(info: VolumeInfo | None) -> dict[str, Any]:
    if info is None:
        return {"state": "absent"}
    return {"state": "present", "path": info.path, "format": info.format, "capacity": info.capacity}


class VolumeManager(Manager):
    def __init__(self, connection: Connection, uploader: Uploader = stream_upload) -> None:
        super().__init__(connection)
        self.uploader = uploader

    @no_stray_libvirt_errors
    def ensure_upload(self, spec: VolumeSpec, state: str, check_mode: bool) -> Outcome:
        changes = Changes(check_mode)
        where = f"volume {spec.name!r} in pool {spec.pool!r} on {self.uri}"
        connection = self.connection
        if state == "absent":
            pool = connection.find_pool(spec.pool)
            pool = None if pool is None else connection.active_pool(spec.pool, changes)
        else:
            pool = connection.active_pool(spec.pool, changes)
        volume = None if pool is None else connection.find_volume(pool, spec.name)
        info = None if volume is None else connection.volume_info(volume)
        before = volume_summary(info)
        if state == "absent":
            if volume is not None:
                changes.apply(f"delete volume {spec.name}", lambda: self.delete(volume, where))
            return changes.outcome(spec.name, "absent", before, {"state": "absent"}, {"path": None})
        if info is not None and not spec.force:
            # Names are content-addressed by the caller: an existing volume holds this content.
            facts = {"path": info.path, "format": info.format, "capacity": info.capacity}
            return Outcome(spec.name, "present", before, before, [], changes.warnings, facts)
        image = self._local_image(spec, changes)
        if volume is not None:
            changes.apply(f"delete volume {spec.name} to upload it again", lambda: self.delete(volume, where))
        fmt = image.format if image else format_for(spec.src or "", spec.format)
        capacity = image.capacity if image else None
        path = os.path.join(connection.pool_path(pool), spec.name) if pool is not None else None
        changes.apply(
            f"upload {spec.src} ({fmt}) to volume {spec.name}", lambda: self._upload_image(pool, spec, image)
        )
        if not check_mode:
            path = connection.volume_info(connection.find_volume(pool, spec.name)).path
        facts = {"path": path, "format": fmt, "capacity": capacity}
        return changes.outcome(spec.name, "present", before, {"state": "present", **facts}, facts)

    def _local_image(self, spec: VolumeSpec, changes: Changes) -> ImageFile | None:
        src = spec.src or ""
        if not os.path.isfile(src):
            changes.missing(f"src {src} does not exist on the controller")
            return None
        return inspect_image(src, format_for(src, spec.format))

    def _upload_image(self, pool: Any, spec: VolumeSpec, image: ImageFile | None) -> None:
        if image is None:  # only in check mode, where nothing is uploaded
            raise LibvirtError(f"{spec.src} cannot be uploaded: it does not exist")
        with open(image.path, "rb") as source:
            self.upload(pool, spec.pool, spec.name, image.format, image.capacity, source, image.size)

    def upload(
        self, pool: Any, pool_name: str, name: str, fmt: str, capacity: int, source: BinaryIO, length: int
    ) -> None:
        """Create volume ``name`` and fill it from ``source``; a failed upload leaves no volume behind."""
        where = f"volume {name!r} in pool {pool_name!r} on {self.uri}"
        with translated(f"cannot create {where}"):
            volume = pool.createXML(volume_xml(name, capacity, fmt), 0)
        try:
            with translated(f"cannot upload into {where}"):
                self.uploader(self.conn, volume, source, length)
        except LibvirtError:
            with contextlib.suppress(libvirt.libvirtError):  # the upload error is the one worth reporting
                volume.delete(0)
            raise

    def delete(self, volume: Any, where: str) -> None:
        with translated(f"cannot delete {where}"):
            volume.delete(0)
