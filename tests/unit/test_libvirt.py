"""The libvirt layer against libvirt's test driver, fakes where the test driver has no implementation
(stream upload, resize), and the four modules run through ``ansible`` for argument validation, errors,
check mode and one idempotent run.

Each test gets its own ``test:///<tmp>/node.xml``: ``test:///default`` is shared by every connection
of a process for as long as one of them (or an object of it) is alive.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import libvirt
import pytest

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.domain import VmRequest, stable_mac
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.domain_xml import (
    DomainPaths,
    changed_fields,
    meaningful,
    merge_libvirt_assigned,
    render_domain_xml,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.errors import LibvirtError
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.hypervisor import Hypervisor
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.network import (
    NetworkSpec,
    meaningful_network,
    network_xml,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.storage import (
    PoolSpec,
    VolumeSpec,
    format_for,
    inspect_image,
    parse_qcow2_header,
    volume_xml,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.volumes import (
    UPLOAD_CHUNK,
    stream_upload,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.xmlutil import GIB, MIB

ROOT = Path(__file__).resolve().parents[2]
SECRET = "-----BEGIN OPENSSH PRIVATE KEY-----SECRET"


class Uploads:
    """Stands in for the virStream upload, which the test driver does not implement."""

    def __init__(self) -> None:
        self.done: list[tuple[str, bytes]] = []
        self.fail = False

    def __call__(self, _conn: Any, volume: Any, source: BinaryIO, length: int) -> None:
        if self.fail:
            raise libvirt.libvirtError("stream broke")
        data = source.read()
        assert len(data) == length
        self.done.append((volume.name(), data))

    @property
    def names(self) -> list[str]:
        return [name for name, _data in self.done]


@pytest.fixture
def uploads() -> Uploads:
    return Uploads()


# What test:///default has: a NAT network with DHCP, and a running domain Berth did not define.
BASE_NODE = """<node>
  <network>
    <name>default</name>
    <forward mode='nat'/>
    <bridge name='virbr0' stp='on' delay='0'/>
    <ip address='192.168.122.1' netmask='255.255.255.0'><dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp></ip>
  </network>
  <domain type='test'>
    <name>test</name>
    <memory>8388608</memory>
    <vcpu>2</vcpu>
    <os><type arch='i686'>hvm</type><boot dev='hd'/></os>
  </domain>
</node>
"""


@pytest.fixture
def uri(tmp_path: Path) -> str:
    node = tmp_path / "node.xml"
    node.write_text(BASE_NODE)
    return f"test://{node}"


@pytest.fixture
def hv(uri: str, uploads: Uploads) -> Iterator[Hypervisor]:
    with Hypervisor(uri, uploader=uploads) as hypervisor:
        yield hypervisor


@pytest.fixture
def lab(hv: Hypervisor) -> Hypervisor:
    """A pool 'berth' with a 2 GiB qcow2 base, a kernel and an initrd; an isolated network 'dc1'."""
    hv.ensure_pool(PoolSpec("berth", "/srv/berth"), "present", check_mode=False)
    pool = hv.find_pool("berth")
    pool.createXML(volume_xml("base.qcow2", 2 * GIB, "qcow2"), 0)
    pool.createXML(volume_xml("vmlinuz", 8 * MIB, "raw"), 0)
    pool.createXML(volume_xml("initrd.img", 16 * MIB, "raw"), 0)
    hv.ensure_network("dc1", NetworkSpec("dc1", "isolated", "bl-dc1"), check_mode=False)
    return hv


def vm_params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "name": "web-1",
        "state": "running",
        "domain_type": "qemu",
        "tcg_cache_mib": 128,
        "vcpus": 1,
        "memory_mib": 512,
        "disk": {"pool": "berth", "base_volume": "base.qcow2", "size_gib": 4},
        "boot": {
            "kernel_volume": "vmlinuz",
            "initrd_volume": "initrd.img",
            "cmdline": "root=/dev/vda console=ttyS0",
        },
        "networks": [{"network": "dc1", "mac": None}],
        "cloud_init": {
            "meta_data": {"instance-id": "web-1-v1"},
            "user_data": f"#cloud-config\nssh_keys:\n  ed25519_private: {SECRET}\n",
            "network_config": None,
        },
        "autostart": None,
        "restart_allowed": False,
        "shutdown_timeout": 60,
    }
    params.update(overrides)
    return params


def ensure(hv: Hypervisor, check_mode: bool = False, **overrides: Any) -> Any:
    return hv.ensure_vm(VmRequest.from_params(vm_params(**overrides)), check_mode)


def volumes(hv: Hypervisor, pool: str = "berth") -> list[str]:
    return sorted(volume.name() for volume in hv.find_pool(pool).listAllVolumes(0))


# --- connection and errors ----------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["test:///nonexistent/node.xml", "bogus:///system"])
def test_an_unreachable_uri_is_one_clear_error(uri: str) -> None:
    with pytest.raises(LibvirtError, match=rf"^cannot connect to libvirt at {re.escape(uri)}: \S"):
        Hypervisor(uri).connect()


def test_libvirt_errors_are_translated_and_name_the_object(hv: Hypervisor) -> None:
    hv.ensure_pool(PoolSpec("berth", "/srv/berth"), "present", check_mode=False)
    pool = hv.find_pool("berth")
    with pytest.raises(LibvirtError, match=rf"^cannot create volume 'x' in pool 'berth' on {hv.uri}: "):
        hv.upload_volume(pool, "berth", "x", "raw", -1, io.BytesIO(b""), 0)


# --- pools --------------------------------------------------------------------------------------


def test_pool_is_defined_built_started_and_then_left_alone(hv: Hypervisor) -> None:
    spec = PoolSpec("berth", "/srv/berth/")
    checked = hv.ensure_pool(spec, "present", check_mode=True)
    assert checked.changed and hv.find_pool("berth") is None
    created = hv.ensure_pool(spec, "present", check_mode=False)
    assert created.changed and created.facts["path"] == "/srv/berth"
    pool = hv.find_pool("berth")
    assert pool.isActive() and pool.autostart()
    again = hv.ensure_pool(spec, "present", check_mode=False)
    assert not again.changed and again.before == again.after
    off = hv.ensure_pool(PoolSpec("berth", "/srv/berth", autostart=False), "present", check_mode=False)
    assert off.actions == ["set autostart=False on pool berth"] and not pool.autostart()


def test_pool_is_started_when_stopped(hv: Hypervisor) -> None:
    hv.ensure_pool(PoolSpec("berth", "/srv/berth"), "present", check_mode=False)
    hv.find_pool("berth").destroy()
    outcome = hv.ensure_pool(PoolSpec("berth", "/srv/berth"), "present", check_mode=False)
    assert outcome.actions == ["start pool berth"] and hv.find_pool("berth").isActive()


def test_pool_at_another_path_is_not_moved(hv: Hypervisor) -> None:
    hv.ensure_pool(PoolSpec("berth", "/srv/berth"), "present", check_mode=False)
    with pytest.raises(LibvirtError, match="is a dir pool at /srv/berth, not a dir pool at /srv/other"):
        hv.ensure_pool(PoolSpec("berth", "/srv/other"), "present", check_mode=False)


def test_removing_a_pool_with_volumes_needs_force(hv: Hypervisor) -> None:
    hv.ensure_pool(PoolSpec("berth", "/srv/berth"), "present", check_mode=False)
    hv.find_pool("berth").createXML(volume_xml("base.qcow2", GIB, "qcow2"), 0)
    with pytest.raises(LibvirtError, match=r"still holds 1 volume\(s\) \(base.qcow2\); .*force: true"):
        hv.ensure_pool(PoolSpec("berth", None), "absent", check_mode=False)
    checked = hv.ensure_pool(PoolSpec("berth", None), "absent", check_mode=True, force=True)
    assert "delete volume base.qcow2" in checked.actions and volumes(hv) == ["base.qcow2"]
    removed = hv.ensure_pool(PoolSpec("berth", None), "absent", check_mode=False, force=True)
    assert removed.state == "absent" and hv.find_pool("berth") is None
    assert not hv.ensure_pool(PoolSpec("berth", None), "absent", check_mode=False).changed


def test_pool_parameters_are_validated() -> None:
    with pytest.raises(LibvirtError, match="path is required"):
        PoolSpec.from_params({"name": "berth", "path": None, "autostart": True, "state": "present"})
    with pytest.raises(LibvirtError, match="path must be absolute"):
        PoolSpec.from_params({"name": "berth", "path": "pool", "autostart": True, "state": "present"})


# --- networks -----------------------------------------------------------------------------------


def test_network_xml_for_both_modes() -> None:
    bridged = ET.fromstring(network_xml(NetworkSpec("berth-dc1", "bridge", "br-dc1")))
    assert bridged.find("forward").get("mode") == "bridge"  # type: ignore[union-attr]
    assert bridged.find("bridge").get("name") == "br-dc1"  # type: ignore[union-attr]
    isolated = ET.fromstring(network_xml(NetworkSpec("lab", "isolated", "bl-dc1")))
    assert isolated.find("forward") is None and isolated.find("ip") is None
    assert meaningful_network(network_xml(NetworkSpec("lab", "isolated", "bl-dc1"))) == {
        "mode": "isolated",
        "bridge": "bl-dc1",
        "addresses": [],
        "dhcp": False,
    }


def test_network_is_created_running_with_autostart_and_then_left_alone(hv: Hypervisor) -> None:
    spec = NetworkSpec("dc1", "isolated", "bl-dc1")
    assert hv.ensure_network("dc1", spec, check_mode=True).changed and hv.find_network("dc1") is None
    assert hv.ensure_network("dc1", spec, check_mode=False).changed
    network = hv.find_network("dc1")
    assert network.isActive() and network.autostart()
    again = hv.ensure_network("dc1", spec, check_mode=False)
    assert not again.changed and again.facts == {"bridge": "bl-dc1"}


def test_a_changed_running_network_restarts_only_when_allowed(hv: Hypervisor) -> None:
    spec = NetworkSpec("default", "isolated", "bl-lab")
    with pytest.raises(
        LibvirtError, match=r"mode: 'nat' -> 'isolated'; bridge: 'virbr0' -> 'bl-lab'.*restart_allowed"
    ):
        hv.ensure_network("default", spec, check_mode=False)
    checked = hv.ensure_network("default", spec, check_mode=True, restart_allowed=True)
    assert [action.split(" (")[0] for action in checked.actions] == [
        "redefine network default",
        "restart network default",
        "set autostart on network default",
    ]
    assert meaningful_network(hv.find_network("default").XMLDesc(0))["mode"] == "nat"
    restarted = hv.ensure_network("default", spec, check_mode=False, restart_allowed=True)
    assert restarted.actions == checked.actions and hv.find_network("default").isActive()
    # (the test driver does not swap in a running network's new definition on restart; libvirtd does)


def test_a_changed_stopped_network_is_redefined_without_a_restart(hv: Hypervisor) -> None:
    hv.find_network("default").destroy()
    spec = NetworkSpec("default", "bridge", "br-dc1")
    outcome = hv.ensure_network("default", spec, check_mode=False)
    assert [action.split(" (")[0] for action in outcome.actions] == [
        "redefine network default",
        "start network default",
        "set autostart on network default",
    ]
    network = hv.find_network("default")
    assert (
        meaningful_network(network.XMLDesc(0)) == meaningful_network(network_xml(spec)) and network.isActive()
    )
    assert not hv.ensure_network("default", spec, check_mode=False).changed


def test_network_removal(hv: Hypervisor) -> None:
    assert hv.ensure_network("default", None, check_mode=True).actions == [
        "stop network default",
        "undefine network default",
    ]
    assert hv.find_network("default") is not None
    hv.ensure_network("default", None, check_mode=False)
    assert hv.find_network("default") is None
    assert not hv.ensure_network("default", None, check_mode=False).changed


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"mode": "nat", "bridge": "br0"}, "mode must be one of"),
        ({"mode": "bridge", "bridge": None}, "bridge is required"),
        ({"mode": "bridge", "bridge": "a-very-long-bridge"}, "at most 15"),
    ],
)
def test_network_parameters_are_validated(params: dict[str, Any], fragment: str) -> None:
    with pytest.raises(LibvirtError, match=fragment):
        NetworkSpec.from_params({"name": "dc1", "state": "present", **params})


# --- volumes ------------------------------------------------------------------------------------


def qcow2_header(virtual_size: int, backing: bool = False, version: int = 3) -> bytes:
    return struct.pack(">4sIQIIQ", b"QFI\xfb", version, 512 if backing else 0, 0, 16, virtual_size) + bytes(
        480
    )


def test_qcow2_header_gives_the_virtual_size() -> None:
    assert parse_qcow2_header(qcow2_header(10 * GIB)) == (10 * GIB, False)
    assert parse_qcow2_header(qcow2_header(GIB, backing=True)) == (GIB, True)
    with pytest.raises(ValueError, match="magic"):
        parse_qcow2_header(b"\0" * 64)
    with pytest.raises(ValueError, match="version 1"):
        parse_qcow2_header(qcow2_header(GIB, version=1))


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img to make a real qcow2")
def test_qcow2_header_of_a_real_image(tmp_path: Path) -> None:
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "3G"], check=True)
    found = inspect_image(str(image), "qcow2")
    assert found.capacity == 3 * GIB and found.size == image.stat().st_size


def test_image_formats_are_checked(tmp_path: Path) -> None:
    qcow2 = tmp_path / "disk.img"
    qcow2.write_bytes(qcow2_header(GIB))
    raw = tmp_path / "vmlinuz"
    raw.write_bytes(b"kernel" * 100)
    assert format_for("x.qcow2", None) == "qcow2" and format_for("x.img", None) == "raw"
    assert format_for("x.img", "qcow2") == "qcow2"
    assert inspect_image(str(raw), "raw").capacity == 600
    with pytest.raises(LibvirtError, match="is a qcow2 image; upload it with format qcow2"):
        inspect_image(str(qcow2), "raw")
    with pytest.raises(LibvirtError, match="cannot be uploaded as qcow2: not a qcow2 image"):
        inspect_image(str(raw), "qcow2")
    overlay = tmp_path / "overlay.qcow2"
    overlay.write_bytes(qcow2_header(GIB, backing=True))
    with pytest.raises(LibvirtError, match="overlay with a backing file"):
        inspect_image(str(overlay), "qcow2")
    with pytest.raises(LibvirtError, match="cannot read"):
        inspect_image(str(tmp_path / "missing"), "raw")


class FakeStream:
    def __init__(self, accept: int) -> None:
        self.accept = accept  # bytes taken per send(), to exercise partial writes
        self.received = bytearray()
        self.sends = 0
        self.finished = self.aborted = False

    def send(self, data: bytes) -> int:
        self.sends += 1
        taken = data[: self.accept]
        self.received += taken
        return len(taken)

    def finish(self) -> None:
        self.finished = True

    def abort(self) -> None:
        self.aborted = True


class FakeConn:
    def __init__(self, stream: FakeStream) -> None:
        self.stream = stream

    def newStream(self, flags: int) -> FakeStream:
        return self.stream


class FakeVolume:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[int, int]] = []
        self.fail = fail

    def upload(self, stream: FakeStream, offset: int, length: int, flags: int) -> None:
        if self.fail:
            raise libvirt.libvirtError("pool is full")
        self.calls.append((offset, length))


def test_stream_upload_sends_4_mib_chunks_and_finishes() -> None:
    data = bytes(range(256)) * (UPLOAD_CHUNK // 256 * 2 + 3)  # two chunks and a bit
    stream, volume = FakeStream(accept=UPLOAD_CHUNK), FakeVolume()
    stream_upload(FakeConn(stream), volume, io.BytesIO(data), len(data))
    assert volume.calls == [(0, len(data))]
    assert bytes(stream.received) == data and stream.sends == 3 and stream.finished


def test_stream_upload_resends_what_a_partial_write_left() -> None:
    stream = FakeStream(accept=1000)
    stream_upload(FakeConn(stream), FakeVolume(), io.BytesIO(b"x" * 2500), 2500)
    assert stream.sends == 3 and len(stream.received) == 2500


def test_stream_upload_aborts_the_stream_on_error() -> None:
    stream = FakeStream(accept=10)
    with pytest.raises(libvirt.libvirtError):
        stream_upload(FakeConn(stream), FakeVolume(fail=True), io.BytesIO(b"x"), 1)
    assert stream.aborted and not stream.finished


def test_volume_upload_creates_sized_volume_once(hv: Hypervisor, uploads: Uploads, tmp_path: Path) -> None:
    hv.ensure_pool(PoolSpec("berth", "/srv/berth"), "present", check_mode=False)
    image = tmp_path / "berth-base-1.qcow2"
    image.write_bytes(qcow2_header(3 * GIB) + b"clusters")
    spec = VolumeSpec("berth", "berth-base-1.qcow2", str(image))
    checked = hv.ensure_volume_upload(spec, "present", check_mode=True)
    assert checked.changed and checked.facts["path"] == "/srv/berth/berth-base-1.qcow2"
    assert volumes(hv) == [] and uploads.done == []
    outcome = hv.ensure_volume_upload(spec, "present", check_mode=False)
    assert outcome.facts == {"path": "/srv/berth/berth-base-1.qcow2", "format": "qcow2", "capacity": 3 * GIB}
    assert uploads.done == [("berth-base-1.qcow2", image.read_bytes())]
    info = hv.volume_info(hv.find_volume(hv.find_pool("berth"), "berth-base-1.qcow2"))
    assert (info.format, info.capacity) == ("qcow2", 3 * GIB)
    image.unlink()  # present means exists: the source is not even read again
    again = hv.ensure_volume_upload(spec, "present", check_mode=False)
    assert (
        not again.changed
        and again.facts["path"] == "/srv/berth/berth-base-1.qcow2"
        and len(uploads.done) == 1
    )


def test_volume_force_uploads_again(hv: Hypervisor, uploads: Uploads, tmp_path: Path) -> None:
    hv.ensure_pool(PoolSpec("berth", "/srv/berth"), "present", check_mode=False)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k" * 1000)
    hv.ensure_volume_upload(VolumeSpec("berth", "vmlinuz", str(kernel)), "present", check_mode=False)
    outcome = hv.ensure_volume_upload(
        VolumeSpec("berth", "vmlinuz", str(kernel), force=True), "present", False
    )
    assert outcome.actions[0] == "delete volume vmlinuz to upload it again"
    assert uploads.names == ["vmlinuz", "vmlinuz"] and outcome.facts["capacity"] == 1000


def test_a_failed_upload_leaves_no_volume(hv: Hypervisor, uploads: Uploads, tmp_path: Path) -> None:
    hv.ensure_pool(PoolSpec("berth", "/srv/berth"), "present", check_mode=False)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    uploads.fail = True
    with pytest.raises(
        LibvirtError,
        match=r"^cannot upload into volume 'vmlinuz' in pool 'berth' on test://\S+: stream broke$",
    ):
        hv.ensure_volume_upload(VolumeSpec("berth", "vmlinuz", str(kernel)), "present", check_mode=False)
    assert volumes(hv) == []


def test_volume_prerequisites(hv: Hypervisor, tmp_path: Path) -> None:
    spec = VolumeSpec("berth", "vmlinuz", str(tmp_path / "missing"))
    with pytest.raises(LibvirtError, match=rf"^storage pool 'berth' does not exist on {hv.uri}$"):
        hv.ensure_volume_upload(spec, "present", check_mode=False)
    checked = hv.ensure_volume_upload(spec, "present", check_mode=True)
    assert checked.changed and "check mode: storage pool 'berth' does not exist" in checked.warnings[0]
    hv.ensure_pool(PoolSpec("berth", "/srv/berth"), "present", check_mode=False)
    with pytest.raises(LibvirtError, match=r"src .*missing does not exist on the controller"):
        hv.ensure_volume_upload(spec, "present", check_mode=False)


def test_volume_removal(hv: Hypervisor) -> None:
    assert not hv.ensure_volume_upload(
        VolumeSpec("berth", "x"), "absent", check_mode=False
    ).changed  # no pool
    hv.ensure_pool(PoolSpec("berth", "/srv/berth"), "present", check_mode=False)
    hv.find_pool("berth").createXML(volume_xml("x", 10, "raw"), 0)
    assert hv.ensure_volume_upload(VolumeSpec("berth", "x"), "absent", check_mode=True).changed
    assert volumes(hv) == ["x"]
    assert hv.ensure_volume_upload(VolumeSpec("berth", "x"), "absent", check_mode=False).changed
    assert volumes(hv) == []


# --- VMs: the definition ------------------------------------------------------------------------


def test_macs_are_stable_distinct_and_overridable() -> None:
    assert stable_mac("web-1", 0) == stable_mac("web-1", 0)
    assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", stable_mac("web-1", 0))
    assert len({stable_mac("web-1", 11), stable_mac("web-11", 1), stable_mac("web-1", 0)}) == 3
    request = VmRequest.from_params(
        vm_params(networks=[{"network": "a", "mac": "52:54:00:AA:BB:CC"}, {"network": "b"}])
    )
    assert request.spec is not None
    assert [nic.mac for nic in request.spec.nics] == ["52:54:00:aa:bb:cc", stable_mac("web-1", 1)]


def rendered(**overrides: Any) -> ET.Element:
    request = VmRequest.from_params(vm_params(**overrides))
    assert request.spec is not None
    paths = DomainPaths(
        overlay="/p/web-1.qcow2", seed="/p/web-1-seed.iso", kernel="/p/vmlinuz", initrd="/p/initrd.img"
    )
    return ET.fromstring(render_domain_xml(request.spec, paths, seed_sha256="ab" * 32))


def test_the_rendered_domain() -> None:
    root = rendered()
    assert root.get("type") == "qemu"
    tb_cache = root.find("features/tcg/tb-cache")
    assert tb_cache is not None and (tb_cache.get("unit"), tb_cache.text) == ("MiB", "128")
    assert root.find("features/acpi") is not None and root.findtext("on_crash") == "restart"
    assert (
        root.findtext("os/kernel") == "/p/vmlinuz"
        and root.findtext("os/cmdline") == "root=/dev/vda console=ttyS0"
    )
    seed_disk = root.findall("devices/disk")[1]
    assert seed_disk.find("readonly") is not None and seed_disk.find("target").get("dev") == "vdb"  # type: ignore[union-attr]
    assert root.find("devices/serial").get("type") == "pty" and root.find("devices/console") is not None  # type: ignore[union-attr]
    assert root.findtext("devices/rng/backend") == "/dev/urandom"
    seed = root.find("metadata/{https://berth.dev/xmlns/vm/1}vm/{https://berth.dev/xmlns/vm/1}seed")
    assert seed is not None and seed.get("sha256") == "ab" * 32
    assert SECRET not in ET.tostring(root, encoding="unicode")


def test_without_boot_the_vm_boots_from_its_disk_and_kvm_passes_the_host_cpu() -> None:
    root = rendered(boot=None, domain_type="kvm", tcg_cache_mib=None)
    assert root.find("os/boot").get("dev") == "hd" and root.find("os/kernel") is None  # type: ignore[union-attr]
    assert root.find("cpu").get("mode") == "host-passthrough" and root.find("features/tcg") is None  # type: ignore[union-attr]


def test_meaningful_ignores_what_libvirt_adds_and_units() -> None:
    desired = ET.tostring(rendered(), encoding="unicode")
    live = desired.replace('<memory unit="MiB">512</memory>', "<memory unit='KiB'>524288</memory>")
    live = live.replace('<tb-cache unit="MiB">128</tb-cache>', "<tb-cache unit='KiB'>131072</tb-cache>")
    live = live.replace(
        '<model type="virtio" />', "<model type='virtio'/><target dev='vnet3'/><alias name='net0'/>"
    )
    live = live.replace("<vcpu>1</vcpu>", "<vcpu placement='static'>1</vcpu><uuid>x</uuid>")
    assert live != desired and meaningful(live) == meaningful(desired)
    assert changed_fields(
        meaningful(desired), meaningful(live.replace("<vcpu placement='static'>1", "<vcpu>2"))
    ) == ["vcpus"]


def test_redefinition_keeps_what_libvirt_assigned() -> None:
    desired = ET.tostring(rendered(), encoding="unicode")
    existing = ET.fromstring(desired)
    ET.SubElement(existing, "uuid").text = "6be2f1b7-c19c-4117-95b6-bddd9fa3b4a8"
    existing.find("os/type").set("machine", "pc-i440fx-7.2")  # type: ignore[union-attr]
    devices = existing.find("devices")
    assert devices is not None
    ET.SubElement(devices.find("interface"), "address", type="pci", slot="0x03")  # type: ignore[arg-type]
    ET.SubElement(devices, "controller", type="usb")
    merged = ET.fromstring(merge_libvirt_assigned(desired, ET.tostring(existing, encoding="unicode")))
    assert merged.findtext("uuid") == "6be2f1b7-c19c-4117-95b6-bddd9fa3b4a8"
    assert merged.find("os/type").get("machine") == "pc-i440fx-7.2"  # type: ignore[union-attr]
    assert merged.find("devices/interface/address").get("slot") == "0x03"  # type: ignore[union-attr]
    assert merged.find("devices/controller") is not None
    assert meaningful(ET.tostring(merged, encoding="unicode")) == meaningful(desired)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"domain_type": "kvm"}, "tcg_cache_mib applies only to domain_type qemu"),
        ({"vcpus": None}, "disk, vcpus and memory_mib go together"),
        (
            {"disk": {"pool": "berth", "base_volume": None, "size_gib": None}},
            "disk needs pool, base_volume and size_gib",
        ),
        ({"memory_mib": 16}, "memory_mib must be at least 64"),
        ({"vcpus": 0}, "vcpus must be at least 1"),
        ({"disk": {"pool": "berth", "base_volume": "b", "size_gib": 0}}, "size_gib must be at least 1"),
        ({"networks": [{"network": "a", "mac": "52:54:00:zz:00:01"}]}, "is not a MAC address"),
        ({"networks": [{"network": "a", "mac": "01:00:5e:00:00:01"}]}, "multicast"),
        (
            {
                "networks": [
                    {"network": "a", "mac": "52:54:00:00:00:01"},
                    {"network": "b", "mac": "52:54:00:00:00:01"},
                ]
            },
            "same mac",
        ),
        ({"name": "web 1"}, "name 'web 1'"),
        ({"shutdown_timeout": -1}, "shutdown_timeout"),
    ],
)
def test_vm_parameters_are_validated(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(LibvirtError, match=rf"^invalid parameters for VM .*{re.escape(fragment)}"):
        VmRequest.from_params(vm_params(**overrides))


# --- VMs: converging ----------------------------------------------------------------------------


def test_check_mode_reports_a_new_vm_and_touches_nothing(lab: Hypervisor, uploads: Uploads) -> None:
    outcome = ensure(lab, check_mode=True)
    assert outcome.changed and outcome.before == {"state": "absent"}
    assert [action.split(" (")[0] for action in outcome.actions] == [
        "create disk web-1.qcow2",
        "upload cloud-init seed web-1-seed.iso",
        "define VM web-1",
        "set autostart=True on VM web-1",
        "start VM web-1",
    ]
    assert outcome.after["root_disk"]["size_gib"] == 4 and outcome.after["vcpus"] == 1
    assert lab.find_domain("web-1") is None and uploads.done == []
    assert volumes(lab) == ["base.qcow2", "initrd.img", "vmlinuz"]


def test_a_vm_is_created_running_and_a_second_run_changes_nothing(lab: Hypervisor, uploads: Uploads) -> None:
    created = ensure(lab)
    assert created.changed and created.state == "running" and not created.facts["restart_required"]
    domain = lab.find_domain("web-1")
    assert domain.isActive() and domain.autostart()
    overlay = lab.volume_info(lab.find_volume(lab.find_pool("berth"), "web-1.qcow2"))
    assert (overlay.format, overlay.capacity, overlay.backing) == ("qcow2", 4 * GIB, "/srv/berth/base.qcow2")
    assert uploads.names == ["web-1-seed.iso"]
    assert created.facts["macs"] == [stable_mac("web-1", 0)]
    state = meaningful(domain.XMLDesc(0))
    assert state["seed_sha256"] == created.facts["seed_sha256"] and state["tcg_cache_mib"] == 128
    assert state["boot"] == {
        "kernel": "/srv/berth/vmlinuz",
        "initrd": "/srv/berth/initrd.img",
        "cmdline": "root=/dev/vda console=ttyS0",
    }
    again = ensure(lab)
    assert not again.changed and again.warnings == [] and uploads.names == ["web-1-seed.iso"]
    assert again.before == again.after
    assert SECRET not in json.dumps(created.as_dict()) + json.dumps(again.as_dict())


def test_a_changed_seed_is_uploaded_again_and_waits_for_a_restart(lab: Hypervisor, uploads: Uploads) -> None:
    first = ensure(lab)
    cloud_init = {
        "meta_data": {"instance-id": "web-1-v2"},
        "user_data": "#cloud-config\n",
        "network_config": {"version": 2},
    }
    changed = ensure(lab, cloud_init=cloud_init)
    assert [action.split(" (")[0] for action in changed.actions] == [
        "upload cloud-init seed web-1-seed.iso",
        "redefine VM web-1",
    ]
    assert changed.facts["restart_required"] and changed.facts["seed_sha256"] != first.facts["seed_sha256"]
    assert "cloud-init seed changed" in changed.warnings[0]
    assert changed.before["seed_sha256"] == first.facts["seed_sha256"]
    assert changed.after["seed_sha256"] == changed.facts["seed_sha256"]
    same = ensure(lab, cloud_init=cloud_init)
    assert not same.changed and same.facts["restart_required"]  # still waiting, said again
    assert uploads.names == ["web-1-seed.iso", "web-1-seed.iso"]


def test_a_running_vm_is_restarted_only_when_allowed(lab: Hypervisor) -> None:
    ensure(lab)
    pending = ensure(lab, vcpus=2, memory_mib=1024)
    assert pending.actions == ["redefine VM web-1 (vcpus, memory)"] and pending.facts["restart_required"]
    assert "runs with an older definition (vcpus, memory changed)" in pending.warnings[0]
    domain = lab.find_domain("web-1")
    assert meaningful(domain.XMLDesc(0))["vcpus"] == 1  # live: unchanged
    assert meaningful(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))["vcpus"] == 2  # persistent: updated
    restarted = ensure(lab, vcpus=2, memory_mib=1024, restart_allowed=True)
    assert (
        restarted.actions == ["restart VM web-1 (vcpus, memory changed)"]
        and not restarted.facts["restart_required"]
    )
    assert meaningful(domain.XMLDesc(0))["vcpus"] == 2 and domain.isActive()
    assert not ensure(lab, vcpus=2, memory_mib=1024).changed


def test_redefinition_keeps_the_uuid(lab: Hypervisor) -> None:
    ensure(lab)
    uuid = lab.find_domain("web-1").UUIDString()
    ensure(lab, networks=[{"network": "dc1", "mac": None}, {"network": "dc1", "mac": None}], state="stopped")
    domain = lab.find_domain("web-1")
    assert domain.UUIDString() == uuid and len(meaningful(domain.XMLDesc(0))["interfaces"]) == 2


def test_a_stopped_vm_is_redefined_without_warnings_and_started_later(lab: Hypervisor) -> None:
    ensure(lab, state="stopped")
    domain = lab.find_domain("web-1")
    assert not domain.isActive()
    changed = ensure(lab, state="stopped", vcpus=2)
    assert changed.actions == ["redefine VM web-1 (vcpus)"] and not changed.warnings
    started = ensure(lab, vcpus=2)
    assert started.actions == ["start VM web-1"] and domain.isActive()


def test_present_defines_and_never_touches_the_power_state(lab: Hypervisor) -> None:
    """The lab's emulated metal: Berth defines the machine, its BMC owns the power button."""
    created = ensure(lab, state="present", autostart=False)
    assert created.actions[-1] == "define VM web-1" and not any("start" in a for a in created.actions)
    domain = lab.find_domain("web-1")
    assert not domain.isActive()
    assert ensure(lab, state="present", autostart=False).actions == []
    domain.create()  # the BMC powers it on
    changed = ensure(lab, state="present", autostart=False, vcpus=2)
    assert changed.actions == ["redefine VM web-1 (vcpus)"] and domain.isActive()
    assert ensure(lab, state="present", autostart=False, vcpus=2).actions == []
    assert domain.isActive()


def test_power_state_alone_for_an_existing_vm(lab: Hypervisor) -> None:
    ensure(lab, autostart=False)
    stop = lab.ensure_vm(VmRequest.from_params({"name": "web-1", "state": "stopped"}), check_mode=False)
    assert stop.actions == ["shut down VM web-1"] and not lab.find_domain("web-1").isActive()
    assert stop.after["vcpus"] == 1 and stop.facts["macs"] == [stable_mac("web-1", 0)]
    assert not lab.find_domain("web-1").autostart()  # omitted autostart keeps the setting
    start = lab.ensure_vm(VmRequest.from_params({"name": "web-1", "state": "running"}), check_mode=False)
    assert start.actions == ["start VM web-1"]
    lab.find_domain("web-1").suspend()
    resumed = lab.ensure_vm(VmRequest.from_params({"name": "web-1"}), check_mode=False)
    assert resumed.actions == ["resume VM web-1"]
    with pytest.raises(
        LibvirtError, match=r"^VM 'web-2' does not exist on test://\S+; defining it needs disk"
    ):
        lab.ensure_vm(VmRequest.from_params({"name": "web-2"}), check_mode=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"disk": {"pool": "nope", "base_volume": "base.qcow2", "size_gib": 4}},
            "storage pool 'nope' does not exist on <uri>",
        ),
        (
            {"disk": {"pool": "berth", "base_volume": "x.qcow2", "size_gib": 4}},
            "base volume 'x.qcow2' not found in pool 'berth' on <uri>",
        ),
        ({"networks": [{"network": "berth-dc9"}]}, "network 'berth-dc9' does not exist on <uri>"),
        (
            {"boot": {"kernel_volume": "bzImage"}},
            "kernel volume 'bzImage' not found in pool 'berth' on <uri>",
        ),
        (
            {"boot": {"kernel_volume": "vmlinuz", "initrd_volume": "initrd-x"}},
            "initrd volume 'initrd-x' not found in pool 'berth' on <uri>",
        ),
        (
            {"disk": {"pool": "berth", "base_volume": "base.qcow2", "size_gib": 1}},
            "disk.size_gib 1 is smaller than base volume 'base.qcow2' (2.00 GiB)",
        ),
    ],
)
def test_missing_prerequisites_fail_before_anything_changes(
    lab: Hypervisor, uploads: Uploads, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(LibvirtError, match=f"^{re.escape(message.replace('<uri>', lab.uri))}$"):
        ensure(lab, **overrides)
    assert lab.find_domain("web-1") is None and uploads.done == []
    assert volumes(lab) == ["base.qcow2", "initrd.img", "vmlinuz"]


def test_check_mode_warns_about_what_an_earlier_task_would_create(lab: Hypervisor) -> None:
    outcome = ensure(lab, check_mode=True, disk={"pool": "berth", "base_volume": "berth-base-2.qcow2", "size_gib": 4},
                     networks=[{"network": "berth-dc9"}])  # fmt: skip
    assert outcome.changed
    assert [warning.split(";")[0] for warning in outcome.warnings] == [
        f"check mode: base volume 'berth-base-2.qcow2' not found in pool 'berth' on {lab.uri}",
        f"check mode: network 'berth-dc9' does not exist on {lab.uri}",
    ]


def test_the_disk_is_never_shrunk_nor_moved_to_another_base(lab: Hypervisor) -> None:
    ensure(lab)
    with pytest.raises(LibvirtError, match="is 4 GiB; shrinking it to 3 GiB would destroy data"):
        ensure(lab, disk={"pool": "berth", "base_volume": "base.qcow2", "size_gib": 3})
    lab.find_pool("berth").createXML(volume_xml("base-2.qcow2", GIB, "qcow2"), 0)
    # a newer guest image: the existing disk (what the VM wrote) stays on its base, with a warning
    kept = ensure(lab, disk={"pool": "berth", "base_volume": "base-2.qcow2", "size_gib": 4})
    assert not kept.changed
    assert kept.warnings == [
        "the disk of VM 'web-1' (web-1.qcow2) stays on its base /srv/berth/base.qcow2; new VMs get base "
        "volume 'base-2.qcow2'. Remove the VM (state=absent) and create it again to move it"
    ]


def test_growing_the_disk_resizes_the_overlay(lab: Hypervisor) -> None:
    ensure(lab, state="stopped")
    bigger = {"pool": "berth", "base_volume": "base.qcow2", "size_gib": 8}
    checked = ensure(lab, check_mode=True, state="stopped", disk=bigger)
    assert checked.actions == ["grow disk web-1.qcow2 from 4 to 8 GiB"]
    assert checked.before["root_disk"]["size_gib"] == 4 and checked.after["root_disk"]["size_gib"] == 8
    # the test driver cannot resize: what matters here is that the request reaches libvirt, translated
    with pytest.raises(
        LibvirtError,
        match=r"^cannot grow disk 'web-1.qcow2' of VM 'web-1' on test://\S+: .*virStorageVolResize",
    ):
        ensure(lab, state="stopped", disk=bigger)
    ensure(lab)
    with pytest.raises(
        LibvirtError, match="virDomainBlockResize"
    ):  # running: through qemu, not behind its back
        ensure(lab, disk=bigger)


def test_a_domain_berth_did_not_define_is_left_alone(lab: Hypervisor) -> None:
    with pytest.raises(LibvirtError, match=r"^VM 'test' on test://\S+ was not defined by Berth"):
        ensure(lab, name="test")
    with pytest.raises(
        LibvirtError, match=r"^VM 'test' on test://\S+ was not defined by Berth.*refusing to remove"
    ):
        ensure(lab, name="test", state="absent")
    assert lab.find_domain("test") is not None


def test_absent_removes_the_vm_and_only_its_own_volumes(lab: Hypervisor) -> None:
    ensure(lab)
    lab.find_pool("berth").createXML(volume_xml("web-10.qcow2", GIB, "qcow2"), 0)
    request = VmRequest.from_params({"name": "web-1", "state": "absent"})
    checked = lab.ensure_vm(request, check_mode=True)
    assert checked.actions == [
        "destroy VM web-1",
        "undefine VM web-1",
        "delete volume web-1-seed.iso",
        "delete volume web-1.qcow2",
    ]
    assert (
        checked.before["volumes"] == ["web-1-seed.iso", "web-1.qcow2"]
        and lab.find_domain("web-1") is not None
    )
    removed = lab.ensure_vm(request, check_mode=False)
    assert removed.changed and removed.after == {"state": "absent"}
    assert lab.find_domain("web-1") is None
    assert volumes(lab) == ["base.qcow2", "initrd.img", "vmlinuz", "web-10.qcow2"]
    assert not lab.ensure_vm(request, check_mode=False).changed


def test_absent_finds_leftover_volumes_in_the_given_pool(lab: Hypervisor) -> None:
    lab.find_pool("berth").createXML(volume_xml("web-1.qcow2", 4 * GIB, "qcow2"), 0)  # a half-finished create
    outcome = lab.ensure_vm(
        VmRequest.from_params({"name": "web-1", "state": "absent", "disk": {"pool": "berth"}}),
        check_mode=False,
    )
    assert outcome.actions == ["delete volume web-1.qcow2"]
    assert volumes(lab) == ["base.qcow2", "initrd.img", "vmlinuz"]


class SlowDomain:
    """A guest that ignores ACPI shutdown: it must be destroyed after the timeout."""

    def __init__(self) -> None:
        self.active = True
        self.calls: list[str] = []

    def name(self) -> str:
        return "slow"

    def shutdown(self) -> None:
        self.calls.append("shutdown")

    def isActive(self) -> bool:
        return self.active

    def destroy(self) -> None:
        self.calls.append("destroy")
        self.active = False


def test_graceful_shutdown_falls_back_to_destroy_after_the_timeout() -> None:
    now = [0.0]
    hypervisor = Hypervisor(
        "test:///default", sleep=lambda seconds: now.__setitem__(0, now[0] + seconds), clock=lambda: now[0]
    )
    domain = SlowDomain()
    hypervisor._shutdown(domain, timeout=5)
    assert domain.calls == ["shutdown", "destroy"] and now[0] == 5.0


# --- the modules, run by ansible ----------------------------------------------------------------


def run_module(module: str, args: dict[str, Any], *flags: str) -> tuple[str, dict[str, Any], str]:
    """Run one berth.fleet module on localhost; (status, result, stdout + stderr)."""
    completed = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible"), "localhost", "-i", "localhost,", "-c", "local",
            "-e", f"ansible_python_interpreter={sys.executable}",
            "-m", f"berth.fleet.{module}", "-a", json.dumps(args), *flags,
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
             "ANSIBLE_NOCOLOR": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )  # fmt: skip
    output = completed.stdout + completed.stderr
    match = re.search(r"^localhost \| (\S+) => (\{.*)", completed.stdout, re.MULTILINE | re.DOTALL)
    assert match, output
    return match.group(1), json.loads(match.group(2)), output


def node_xml(tmp_path: Path, domain_xml: str = "", extra_volumes: str = "") -> str:
    """A test-driver node: pool 'berth' with a base, kernel and initrd, an isolated network 'dc1'."""
    node = tmp_path / "node.xml"
    node.write_text(f"""<node>
  <network><name>dc1</name><bridge name='bl-dc1' stp='on' delay='0'/></network>
  <pool type='dir'>
    <name>berth</name>
    <target><path>/srv/berth</path></target>
    <volume type='file'><name>base.qcow2</name><capacity unit='GiB'>2</capacity><target><format type='qcow2'/></target></volume>
    <volume type='file'><name>vmlinuz</name><capacity>1000</capacity><target><format type='raw'/></target></volume>
    <volume type='file'><name>initrd.img</name><capacity>1000</capacity><target><format type='raw'/></target></volume>
    {extra_volumes}
  </pool>
  {domain_xml}
</node>
""")
    return f"test://{node}"


def module_args(uri: str, **overrides: Any) -> dict[str, Any]:
    args = {key: value for key, value in vm_params(**overrides).items() if value is not None}
    args["uri"] = uri
    return args


def test_module_check_mode_reports_and_hides_user_data(tmp_path: Path) -> None:
    uri = node_xml(tmp_path)
    status, result, output = run_module("libvirt_vm", module_args(uri, cloud_init={
        "meta_data": {"local-hostname": "web-1"}, "user_data": f"#cloud-config\n# {SECRET}\n",
        "network_config": {"version": 2}}), "--check", "--diff")  # fmt: skip
    assert status == "CHANGED", output
    assert result["name"] == "web-1" and result["macs"] == [stable_mac("web-1", 0)]  # not masked by no_log
    assert "define VM web-1" in result["actions"] and re.fullmatch(r"[0-9a-f]{64}", result["seed_sha256"])
    assert SECRET not in output


def test_module_is_idempotent_on_an_existing_vm(tmp_path: Path) -> None:
    # test:// state lives as long as one connection: describe the finished VM in the node file
    request = VmRequest.from_params(vm_params(cloud_init=None))
    assert request.spec is not None
    paths = DomainPaths("/srv/berth/web-1.qcow2", kernel="/srv/berth/vmlinuz", initrd="/srv/berth/initrd.img")
    overlay = ("<volume type='file'><name>web-1.qcow2</name><capacity unit='GiB'>4</capacity><target><format type='qcow2'/>"
               "</target><backingStore><path>/srv/berth/base.qcow2</path><format type='qcow2'/></backingStore></volume>")  # fmt: skip
    uri = node_xml(tmp_path, render_domain_xml(request.spec, paths), overlay)
    status, result, output = run_module(
        "libvirt_vm", module_args(uri, cloud_init=None, autostart=False), "--diff"
    )
    assert status == "SUCCESS" and result["changed"] is False and result["actions"] == [], output
    status, result, output = run_module(
        "libvirt_vm", module_args(uri, cloud_init=None, autostart=False, vcpus=2)
    )
    assert status == "CHANGED" and result["restart_required"] is True, output
    assert "runs with an older definition (vcpus changed)" in output


@pytest.mark.parametrize(
    ("module", "args", "message"),
    [
        ("libvirt_vm", {"domain_type": "kvm"}, "invalid parameters for VM 'web-1': tcg_cache_mib applies only to domain_type qemu"),
        ("libvirt_vm", {"uri": "test:///nonexistent/node.xml"}, "cannot connect to libvirt at test:///nonexistent/node.xml: "),
        ("libvirt_vm", {"disk": {"pool": "berth", "base_volume": "nope.qcow2", "size_gib": 4}},
         "base volume 'nope.qcow2' not found in pool 'berth' on test:///"),
    ],
)  # fmt: skip
def test_module_errors_are_one_clear_message(
    tmp_path: Path, module: str, args: dict[str, Any], message: str
) -> None:
    uri = node_xml(tmp_path)
    status, result, output = run_module(module, {**module_args(uri, cloud_init=None), **args})
    assert status == "FAILED!" and result["msg"].startswith(message), output


def test_other_modules_validate_arguments_and_run_in_check_mode(tmp_path: Path) -> None:
    uri = node_xml(tmp_path)
    status, result, _out = run_module("libvirt_pool", {"name": "berth2", "uri": uri})
    assert (
        status == "FAILED!" and "state is present but all of the following are missing: path" in result["msg"]
    )
    status, result, _out = run_module(
        "libvirt_pool", {"name": "berth", "uri": uri, "path": "/srv/berth", "autostart": False}
    )
    assert status == "SUCCESS" and result["path"] == "/srv/berth"
    status, result, _out = run_module(
        "libvirt_network", {"name": "dc2", "uri": uri, "mode": "isolated", "bridge": "bl-dc2"}, "--check"
    )
    assert status == "CHANGED" and result["bridge"] == "bl-dc2"
    status, result, _out = run_module(
        "libvirt_network", {"name": "dc1", "uri": uri, "mode": "bridge", "bridge": "br-dc1"}
    )
    assert status == "FAILED!" and "mode: 'isolated' -> 'bridge'" in result["msg"]
    image = tmp_path / "berth-base-9.qcow2"
    image.write_bytes(qcow2_header(3 * GIB))
    status, result, _out = run_module(
        "libvirt_volume", {"pool": "berth", "name": image.name, "src": str(image), "uri": uri}, "--check"
    )
    assert (
        status == "CHANGED" and result["path"] == f"/srv/berth/{image.name}" and result["capacity"] == 3 * GIB
    )
    status, result, _out = run_module(
        "libvirt_volume", {"pool": "berth", "name": "vmlinuz", "src": str(image), "uri": uri}
    )
    assert status == "SUCCESS" and result["path"] == "/srv/berth/vmlinuz"


def test_a_stray_libvirt_error_still_leaves_as_a_libvirt_error(
    hv: Hypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_name: str) -> None:
        raise libvirt.libvirtError("connection reset by peer")

    monkeypatch.setattr(hv, "find_domain", broken)
    with pytest.raises(
        LibvirtError, match=rf"^libvirt failed on {re.escape(hv.uri)}: connection reset by peer$"
    ):
        hv.ensure_vm(VmRequest.from_params({"name": "web-1"}), check_mode=False)
