# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The face the modules use: one connection, and its ensure_* operations, each done by the manager
of its kind (``pools.py``, ``network.py``, ``volumes.py``, ``vm.py``).

``Hypervisor`` *is* the connection the managers share, so a lookup it answers is the one they all
see.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, BinaryIO

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.changes import Outcome
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.connection import (
    DEFAULT_URI,
    Connection,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.domain import VmRequest
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.network import (
    NetworkManager,
    NetworkSpec,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.pools import PoolManager
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.storage import PoolSpec, VolumeSpec
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.vm import VmManager
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.vm_power import VmPower
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.volumes import (
    Uploader,
    VolumeManager,
    stream_upload,
)


class Hypervisor(Connection):
    """One libvirt connection and the ensure_* operations over it."""

    def __init__(
        self,
        uri: str = DEFAULT_URI,
        uploader: Uploader = stream_upload,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(uri)
        self.pools = PoolManager(self)
        self.networks = NetworkManager(self)
        self.volumes = VolumeManager(self, uploader)
        self.vms = VmManager(self, self.volumes, VmPower(self, sleep, clock))

    def ensure_pool(self, spec: PoolSpec, state: str, check_mode: bool, force: bool = False) -> Outcome:
        return self.pools.ensure(spec, state, check_mode, force)

    def ensure_network(
        self, name: str, spec: NetworkSpec | None, check_mode: bool, restart_allowed: bool = False
    ) -> Outcome:
        return self.networks.ensure(name, spec, check_mode, restart_allowed)

    def ensure_volume_upload(self, spec: VolumeSpec, state: str, check_mode: bool) -> Outcome:
        return self.volumes.ensure_upload(spec, state, check_mode)

    def upload_volume(
        self, pool: Any, pool_name: str, name: str, fmt: str, capacity: int, source: BinaryIO, length: int
    ) -> None:
        """Create volume ``name`` and fill it from ``source``; a failed upload leaves no volume behind."""
        self.volumes.upload(pool, pool_name, name, fmt, capacity, source, length)

    def ensure_vm(self, request: VmRequest, check_mode: bool) -> Outcome:
        return self.vms.ensure(request, check_mode)

    def _shutdown(self, domain: Any, timeout: float) -> None:
        """The graceful shutdown of ``vms`` (tests/unit/test_libvirt.py drives it with a fake clock)."""
        self.vms.power.shutdown(domain, timeout)
