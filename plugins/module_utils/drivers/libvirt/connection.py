# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One libvirt connection, local or remote (``qemu+ssh://``), and the lookups every manager shares.

A lookup answers ``None`` when the object does not exist; any other libvirt error is a
``LibvirtError`` naming the object and the URI. The managers (``pools.py``, ``network.py``,
``volumes.py``, ``vm.py``) all work through one ``Connection``: ``Manager`` is their base.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Self

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.changes import Changes
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.errors import (
    HAS_LIBVIRT,
    Conn,
    LibvirtError,
    libvirt,
    reason,
    translated,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.storage import (
    VolumeInfo,
    meaningful_pool,
)

DEFAULT_URI = "qemu:///system"


def _is_not_found(exc: Exception) -> bool:
    codes = (
        libvirt.VIR_ERR_NO_DOMAIN,
        libvirt.VIR_ERR_NO_NETWORK,
        libvirt.VIR_ERR_NO_STORAGE_POOL,
        libvirt.VIR_ERR_NO_STORAGE_VOL,
    )
    return hasattr(exc, "get_error_code") and exc.get_error_code() in codes


def _silence_libvirt(_context: object, _error: object) -> None:
    """libvirt prints every error to stderr by default; ours arrive as exceptions instead."""


class Connection:
    """A libvirt connection (a context manager) with its lookups and the reads the managers share."""

    def __init__(self, uri: str = DEFAULT_URI) -> None:
        self.uri = uri
        self._conn: Conn = None

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def connect(self) -> None:
        if not HAS_LIBVIRT:
            raise LibvirtError(
                "the libvirt Python bindings (libvirt-python) are not installed on the controller"
            )
        libvirt.registerErrorHandler(_silence_libvirt, None)
        with translated(f"cannot connect to libvirt at {self.uri}"):
            self._conn = libvirt.open(self.uri)
        if self._conn is None:
            raise LibvirtError(f"cannot connect to libvirt at {self.uri}")

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):  # a dead connection has nothing to release
                self._conn.close()
            self._conn = None

    @property
    def conn(self) -> Conn:
        if self._conn is None:
            raise LibvirtError(f"not connected to libvirt at {self.uri}")
        return self._conn

    # lookups: None when the object does not exist -------------------------------------------

    def lookup(self, what: str, lookup: Callable[[], Any]) -> Any:
        try:
            return lookup()
        except libvirt.libvirtError as exc:
            if _is_not_found(exc):
                return None
            raise LibvirtError(f"cannot look up {what} on {self.uri}: {reason(exc)}") from exc

    def find_pool(self, name: str) -> Any:
        return self.lookup(f"storage pool {name!r}", lambda: self.conn.storagePoolLookupByName(name))

    def find_network(self, name: str) -> Any:
        return self.lookup(f"network {name!r}", lambda: self.conn.networkLookupByName(name))

    def find_domain(self, name: str) -> Any:
        return self.lookup(f"VM {name!r}", lambda: self.conn.lookupByName(name))

    def find_volume(self, pool: Any, name: str) -> Any:
        with translated(f"cannot use storage pool {pool.name()!r} on {self.uri}"):
            if not pool.isActive():
                return None
        return self.lookup(f"volume {name!r}", lambda: pool.storageVolLookupByName(name))

    # reads --------------------------------------------------------------------------------------

    def volume_info(self, volume: Any) -> VolumeInfo:
        with translated(f"cannot read volume {volume.name()!r} on {self.uri}"):
            return VolumeInfo.from_xml(volume.XMLDesc(0))

    def pool_path(self, pool: Any) -> str:
        with translated(f"cannot read storage pool {pool.name()!r} on {self.uri}"):
            return meaningful_pool(pool.XMLDesc(0))["path"] or ""

    def active_pool(self, name: str, changes: Changes) -> Any:
        """The pool if it exists and runs; None (check mode only) if it does not exist yet."""
        pool = self.find_pool(name)
        if pool is None:
            changes.missing(f"storage pool {name!r} does not exist on {self.uri}")
            return None
        with translated(f"cannot use storage pool {name!r} on {self.uri}"):
            if not pool.isActive():
                raise LibvirtError(f"storage pool {name!r} on {self.uri} is not running; start it first")
        return pool

    def domain_xml(self, domain: Any, inactive: bool) -> str:
        """The definition of ``domain``: the persistent one, or (``inactive=False``) the one it runs."""
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        with translated(f"cannot read VM {domain.name()!r} on {self.uri}"):
            return str(domain.XMLDesc(flags))


class Manager:
    """The base of the managers: the connection they share, whose URI every message names."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    @property
    def uri(self) -> str:
        return self.connection.uri

    @property
    def conn(self) -> Conn:
        return self.connection.conn

    def summary(self, what: str, obj: Any, meaningful: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
        """A pool or network (``what``) for the diff: running or not, what its XML says, autostart."""
        if obj is None:
            return {"state": "absent"}
        with translated(f"cannot read {what} {obj.name()!r} on {self.uri}"):
            return {
                "state": "running" if obj.isActive() else "stopped",
                **meaningful(obj.XMLDesc(0)),
                "autostart": bool(obj.autostart()),
            }
