"""The guest image: kernel discovery, the VM customisation, the NoCloud seed and the builder's bookkeeping.

cp, mkfs.ext4, qemu-img, mkinitramfs and systemctl are replaced by a fake runner that writes what the
real tools would write, so a build runs in milliseconds inside tmp_path and never needs root.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from ansible_collections.berth.fleet.plugins.module_utils.common.command import CommandResult
from ansible_collections.berth.fleet.plugins.module_utils.common.fs import sha256_file
from ansible_collections.berth.fleet.plugins.module_utils.local import guestimage as _guestimage
from ansible_collections.berth.fleet.plugins.module_utils.local.guestimage import (
    CLOUD_CFG,
    FSTAB,
    INITRAMFS_MODULES,
    KERNEL_CMDLINE,
    NIC_NAMES,
    NO_RA_DROP_IN,
    ROOT_LABEL,
    GuestImageBuilder,
    GuestImageError,
    GuestSpec,
    customise_guest,
    disk_bytes,
    guest_seed,
    initramfs_conf,
    volume_names,
)

MIB = 1 << 20
KERNEL = "6.1.0-18-amd64"
BASE_MANIFEST = {"image_id": "lab-0123456789ab", "checksum": "c" * 64}

PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey berth-host-key"
OPERATOR_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperator operator@controller"
NODE = {"name": "vm-a1", "address": "10.77.1.10", "prefix": 24, "gateway": "10.77.1.1"}
MAC = "52:54:00:12:34:56"


# --- fixtures: a fake controller (boot dir, modules dir, base image) ---------------------------------


def make_kernel(tmp_path: Path, version: str, modules: bool = True) -> None:
    boot = tmp_path / "boot"
    boot.mkdir(exist_ok=True)
    (boot / f"vmlinuz-{version}").write_bytes(f"kernel {version}".encode())
    if modules:
        (tmp_path / "modules" / version).mkdir(parents=True, exist_ok=True)


def make_base(tmp_path: Path, manifest: dict[str, Any] | None = None) -> Path:
    base = tmp_path / "images" / "lab-0123456789ab"
    rootfs = base / "rootfs"
    (rootfs / "etc/cloud").mkdir(parents=True)
    (rootfs / "etc/cloud/cloud-init.disabled").write_text("disabled by the base image\n")
    (rootfs / "etc/hostname").write_text("base\n")
    (rootfs / "etc/fstab").write_text("# empty\n")
    (rootfs / "usr/bin").mkdir(parents=True)
    (rootfs / "usr/bin/true").write_bytes(b"\x7fELF" + b"\0" * 1000)
    (base / "manifest.json").write_text(json.dumps(manifest if manifest is not None else BASE_MANIFEST))
    return base


def guest_spec(tmp_path: Path, **overrides: Any) -> GuestSpec:
    values: dict[str, Any] = {
        "base_image_dir": tmp_path / "images" / "lab-0123456789ab",
        "boot_dir": tmp_path / "boot",
        "modules_dir": tmp_path / "modules",
    }
    values.update(overrides)
    return GuestSpec(**values)


@pytest.fixture
def controller(tmp_path: Path) -> GuestSpec:
    make_kernel(tmp_path, KERNEL)
    make_base(tmp_path)
    return guest_spec(tmp_path)


class FakeTools:
    """cp -a, systemctl, mkfs.ext4, qemu-img convert and mkinitramfs, writing what the real ones write."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail  # argv[0] that exits 1
        self.disk_tree: dict[str, str] = {}  # what mkfs.ext4 -d saw: path -> text
        self.initramfs_modules = ""

    def tools(self) -> list[str]:
        return [argv[0] for argv in self.calls]

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        argv = list(argv)
        self.calls.append(argv)
        tool = argv[0]
        if tool == self.fail:
            return CommandResult(1, "", f"{tool}: simulated failure\n")
        if tool == "cp":
            assert argv[:2] == ["cp", "-a"]
            shutil.copytree(argv[-2], argv[-1], symlinks=True)
        elif tool == "systemctl":
            pass
        elif tool == "mkfs.ext4":
            source = Path(argv[argv.index("-d") + 1])
            self.disk_tree = {
                str(path.relative_to(source)): path.read_text(errors="replace")
                for path in sorted(source.rglob("*"))
                if path.is_file()
            }
            Path(argv[-1]).write_bytes(b"ext4 " + json.dumps(sorted(self.disk_tree)).encode())
        elif tool == "qemu-img":
            assert argv[1] == "convert"
            with open(argv[-2], "rb") as raw:
                head = raw.read(4096)
            Path(argv[-1]).write_bytes(b"QFI\xfb" + head)
        elif tool == "mkinitramfs":
            conf = Path(argv[argv.index("-d") + 1])
            self.initramfs_modules = (conf / "modules").read_text()
            Path(argv[argv.index("-o") + 1]).write_bytes(f"initrd for {argv[-1]}".encode())
        else:  # pragma: no cover - the builder runs nothing else
            raise AssertionError(f"unexpected command {argv}")
        return CommandResult(0, "", "")


@pytest.fixture
def no_root_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GuestImageBuilder, "_preflight", lambda self: None)
    monkeypatch.setattr(_guestimage.os, "sync", lambda: None)  # no machine-wide flush for a fake build


def leftovers(spec: GuestSpec) -> list[str]:
    """Everything next to the base image apart from it and the build locks."""
    return sorted(
        path.name
        for path in spec.base_image_dir.parent.iterdir()
        if path != spec.base_image_dir and not path.name.endswith(".lock")
    )


# --- GuestSpec: the kernel and the inputs ----------------------------------------------------------


def test_kernel_is_the_newest_with_modules(tmp_path: Path) -> None:
    make_kernel(tmp_path, "6.1.0-9-amd64")
    make_kernel(tmp_path, "6.1.0-18-amd64")
    make_kernel(tmp_path, "6.10.0-1-amd64", modules=False)  # no /lib/modules: not usable
    (tmp_path / "boot" / "vmlinuz-old.bak").write_text("not a kernel name")
    (tmp_path / "boot" / "config-6.1.0-18-amd64").write_text("")
    assert guest_spec(tmp_path).kernel() == "6.1.0-18-amd64"
    make_kernel(tmp_path, "6.10.0-1-amd64")  # numeric, not lexical: 6.10 > 6.9
    make_kernel(tmp_path, "6.9.0-1-amd64")
    assert guest_spec(tmp_path).kernel() == "6.10.0-1-amd64"


def test_explicit_kernel_version(tmp_path: Path) -> None:
    make_kernel(tmp_path, "6.1.0-9-amd64")
    make_kernel(tmp_path, "6.1.0-18-amd64")
    assert guest_spec(tmp_path, kernel_version="6.1.0-9-amd64").kernel() == "6.1.0-9-amd64"


def test_missing_explicit_kernel_is_named(tmp_path: Path) -> None:
    make_kernel(tmp_path, KERNEL)
    with pytest.raises(GuestImageError, match=r"kernel_version '6\.1\.0-99-amd64'.*vmlinuz-6\.1\.0-99-amd64"):
        guest_spec(tmp_path, kernel_version="6.1.0-99-amd64").kernel()


@pytest.mark.parametrize("setup", ["no boot dir", "empty boot dir", "kernel without modules"])
def test_no_usable_kernel(tmp_path: Path, setup: str) -> None:
    if setup == "empty boot dir":
        (tmp_path / "boot").mkdir()
    elif setup == "kernel without modules":
        make_kernel(tmp_path, KERNEL, modules=False)
    with pytest.raises(GuestImageError, match=r"no Debian kernel on the controller .*boot/vmlinuz-\*"):
        guest_spec(tmp_path).kernel()


def test_inputs_and_guest_id(controller: GuestSpec) -> None:
    inputs = controller.inputs()
    assert inputs == {
        "base_image_id": BASE_MANIFEST["image_id"],
        "base_checksum": BASE_MANIFEST["checksum"],
        "kernel_version": KERNEL,
        "initramfs_modules": list(INITRAMFS_MODULES),
        "cmdline": KERNEL_CMDLINE,
        "recipe_version": _guestimage.GUEST_RECIPE_VERSION,
    }
    guest_id = controller.guest_id(inputs)
    assert re.fullmatch(r"[0-9a-f]{12}", guest_id)
    assert controller.guest_id(dict(reversed(list(inputs.items())))) == guest_id  # key order is irrelevant
    assert (
        controller.guest_dir(guest_id)
        == controller.base_image_dir.parent / f"lab-0123456789ab-guest-{guest_id}"
    )


def test_guest_id_follows_every_input(
    tmp_path: Path, controller: GuestSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    def current() -> str:
        return controller.guest_id(controller.inputs())

    seen = {current()}
    assert current() in seen  # stable

    manifest = controller.base_image_dir / "manifest.json"
    manifest.write_text(json.dumps(dict(BASE_MANIFEST, image_id="lab-ffffffffffff")))
    seen.add(current())
    manifest.write_text(json.dumps(dict(BASE_MANIFEST, image_id="lab-ffffffffffff", checksum="d" * 64)))
    seen.add(current())
    make_kernel(tmp_path, "6.1.0-25-amd64")  # a newer kernel installed on the controller
    seen.add(current())
    monkeypatch.setattr(_guestimage, "INITRAMFS_MODULES", (*INITRAMFS_MODULES, "virtio_scsi"))
    seen.add(current())
    monkeypatch.setattr(_guestimage, "GUEST_RECIPE_VERSION", _guestimage.GUEST_RECIPE_VERSION + 1)
    seen.add(current())
    assert len(seen) == 6


def test_base_manifest_errors(tmp_path: Path) -> None:
    make_kernel(tmp_path, KERNEL)
    spec = guest_spec(tmp_path)
    with pytest.raises(
        GuestImageError, match=r"has no manifest\.json: build it with berth\.fleet\.base_image"
    ):
        spec.inputs()
    spec.base_image_dir.mkdir(parents=True)
    (spec.base_image_dir / "manifest.json").write_text("{not json")
    with pytest.raises(GuestImageError, match="unreadable base image manifest"):
        spec.inputs()


# --- what goes into the image -----------------------------------------------------------------------


def test_customise_guest(tmp_path: Path) -> None:
    rootfs = make_base(tmp_path) / "rootfs"
    tools = FakeTools()
    customise_guest(rootfs, tools)
    assert not (rootfs / "etc/cloud/cloud-init.disabled").exists()
    cloud_cfg = (rootfs / "etc/cloud/cloud.cfg.d/90-berth.cfg").read_text()
    assert cloud_cfg == CLOUD_CFG
    assert yaml.safe_load(cloud_cfg)["datasource_list"] == ["NoCloud"]
    assert (rootfs / "etc/fstab").read_text() == FSTAB
    assert FSTAB.startswith(f"LABEL={ROOT_LABEL} / ext4 ")
    assert ROOT_LABEL == "berth-root"
    assert NIC_NAMES == ("eth0", "eth1", "eth2", "eth3")
    for nic in NIC_NAMES:
        drop_in = rootfs / f"etc/systemd/network/10-cloud-init-{nic}.network.d/50-berth-no-ra.conf"
        assert drop_in.read_text() == NO_RA_DROP_IN
        assert "IPv6AcceptRA=no" in drop_in.read_text().splitlines()
    assert tools.calls == [
        ["systemctl", f"--root={rootfs}", "disable", "e2scrub_reap.service", "e2scrub_all.timer"]
    ]
    customise_guest(rootfs, tools)  # idempotent: the marker is already gone
    assert (rootfs / "etc/fstab").read_text() == FSTAB


def test_customise_guest_fails_when_systemctl_does(tmp_path: Path) -> None:
    rootfs = make_base(tmp_path) / "rootfs"
    with pytest.raises(GuestImageError, match=r"command failed \(rc=1\): systemctl"):
        customise_guest(rootfs, FakeTools(fail="systemctl"))


def test_initramfs_conf(tmp_path: Path) -> None:
    conf = tmp_path / "initramfs"
    initramfs_conf(conf)
    for sub in ("conf.d", "hooks", "scripts"):
        assert (conf / sub).is_dir()
        assert not any((conf / sub).iterdir())
    settings = dict(line.split("=", 1) for line in (conf / "initramfs.conf").read_text().splitlines())
    assert settings["MODULES"] == "list"  # only the listed modules, nothing from the host
    assert settings["COMPRESS"] == "gzip"
    assert (conf / "modules").read_text().splitlines() == list(INITRAMFS_MODULES)
    for module in ("virtio_blk", "virtio_net", "ext4", "iso9660"):
        assert module in INITRAMFS_MODULES
    initramfs_conf(conf)  # again over an existing directory
    assert (conf / "modules").read_text().splitlines() == list(INITRAMFS_MODULES)


def test_disk_bytes() -> None:
    unit = 64 * MIB
    rng = random.Random(20240601)
    sizes = sorted(
        {0, 1, 2, unit - 1, unit, unit + 1, 10**9, 5 * 1024**3}
        | {rng.randrange(0, 1 << 40) for _draw in range(300)}
        | {rng.randrange(0, 4 * unit) for _draw in range(300)}
    )
    previous = 0
    for size in sizes:
        disk = disk_bytes(size)
        assert disk % unit == 0, size
        assert disk >= size * 13 // 10 + 256 * MIB, size
        assert disk - unit < size * 13 / 10 + 256 * MIB, size  # whole units, but no more than needed
        assert disk >= previous, size  # monotonic
        previous = disk
    assert disk_bytes(0) == 256 * MIB
    assert disk_bytes(1) == 320 * MIB


def test_volume_names() -> None:
    names = volume_names("0123456789ab")
    assert names == {
        "disk": "berth-guest-0123456789ab.qcow2",
        "kernel": "berth-guest-0123456789ab.vmlinuz",
        "initrd": "berth-guest-0123456789ab.initrd",
    }
    assert set(volume_names("ba9876543210").values()).isdisjoint(names.values())


# --- GuestImageBuilder ------------------------------------------------------------------------------


def test_build_then_reuse(controller: GuestSpec, no_root_needed: None) -> None:
    tools = FakeTools()
    result = GuestImageBuilder(controller, tools).ensure("present", check_mode=False)
    assert result.changed and result.built
    assert tools.tools() == ["cp", "systemctl", "mkfs.ext4", "qemu-img", "mkinitramfs"]
    guest_id = controller.guest_id(controller.inputs())
    guest_dir = controller.guest_dir(guest_id)
    assert result.guest_id == guest_id
    assert result.guest_dir == str(guest_dir)
    assert result.disk == str(guest_dir / "disk.qcow2")
    assert result.kernel == str(guest_dir / "vmlinuz")
    assert result.initrd == str(guest_dir / "initrd.img")
    assert result.cmdline == KERNEL_CMDLINE
    assert sorted(p.name for p in guest_dir.iterdir()) == [
        "disk.qcow2",
        "initrd.img",
        "manifest.json",
        "vmlinuz",
    ]
    assert leftovers(controller) == [guest_dir.name]  # no .partial, no scratch rootfs

    # the disk was made from the customised copy; the base rootfs itself is untouched
    assert tools.disk_tree["etc/fstab"] == FSTAB
    assert "etc/cloud/cloud-init.disabled" not in tools.disk_tree
    assert "etc/cloud/cloud.cfg.d/90-berth.cfg" in tools.disk_tree
    assert (controller.base_image_dir / "rootfs/etc/cloud/cloud-init.disabled").exists()
    assert tools.initramfs_modules.splitlines() == list(INITRAMFS_MODULES)
    mkinitramfs = tools.calls[-1]
    assert mkinitramfs[-1] == KERNEL
    mkfs = tools.calls[2]
    assert mkfs[mkfs.index("-L") + 1] == ROOT_LABEL
    assert (guest_dir / "vmlinuz").read_bytes() == f"kernel {KERNEL}".encode()

    manifest = json.loads((guest_dir / "manifest.json").read_text())
    assert manifest == result.manifest
    assert manifest["guest_id"] == guest_id
    assert manifest["inputs"] == controller.inputs()
    assert manifest["cmdline"] == KERNEL_CMDLINE
    assert set(manifest["files"]) == {"disk.qcow2", "vmlinuz", "initrd.img"}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(guest_dir / name)
        assert entry["bytes"] == (guest_dir / name).stat().st_size

    again = FakeTools()
    reused = GuestImageBuilder(controller, again).ensure("present", check_mode=False)
    assert (reused.changed, reused.built, reused.build_seconds) == (False, False, None)
    assert reused.guest_id == guest_id
    assert reused.manifest == manifest
    assert again.calls == []
    checked = GuestImageBuilder(controller, again, check_mode=True).ensure("present", check_mode=True)
    assert not checked.changed
    assert again.calls == []


def test_verify_detects_a_tampered_file(controller: GuestSpec, no_root_needed: None) -> None:
    GuestImageBuilder(controller, FakeTools()).ensure("present", check_mode=False)
    builder = GuestImageBuilder(controller, FakeTools())
    assert not builder.ensure("present", check_mode=False, verify=True).changed  # intact
    (builder.guest_dir / "initrd.img").write_bytes(b"someone else's initrd")
    assert not builder.ensure("present", check_mode=False).changed  # not looked at without verify
    with pytest.raises(GuestImageError, match=r"initrd.img does not match its manifest"):
        builder.ensure("present", check_mode=False, verify=True)
    (builder.guest_dir / "initrd.img").unlink()
    with pytest.raises(
        GuestImageError, match=r"guest image .*initrd.img"
    ):  # OSError reported as GuestImageError
        builder.ensure("present", check_mode=False, verify=True)


def test_unreadable_guest_manifest(controller: GuestSpec, no_root_needed: None) -> None:
    builder = GuestImageBuilder(controller, FakeTools())
    builder.ensure("present", check_mode=False)
    (builder.guest_dir / "manifest.json").write_text("{truncated")
    with pytest.raises(GuestImageError, match="unreadable guest manifest"):
        builder.ensure("present", check_mode=False)


def test_check_mode_builds_nothing(controller: GuestSpec, no_root_needed: None) -> None:
    tools = FakeTools()
    builder = GuestImageBuilder(controller, tools, check_mode=True)
    result = builder.ensure("present", check_mode=True)
    assert result.changed and not result.built
    assert result.guest_id == controller.guest_id(controller.inputs())
    assert tools.calls == []
    assert leftovers(controller) == []


def test_check_mode_before_the_base_image_exists(tmp_path: Path, no_root_needed: None) -> None:
    make_kernel(tmp_path, KERNEL)
    spec = guest_spec(tmp_path)  # no base image directory at all
    tools = FakeTools()
    result = GuestImageBuilder(spec, tools, check_mode=True).ensure("present", check_mode=True)
    assert result.changed
    assert result.guest_id == ""
    assert result.inputs == {}
    assert tools.calls == []
    assert not (tmp_path / "images").exists()
    with pytest.raises(GuestImageError, match=r"no manifest\.json"):  # outside check mode it is an error
        GuestImageBuilder(spec, tools)


def test_absent(controller: GuestSpec, no_root_needed: None) -> None:
    builder = GuestImageBuilder(controller, FakeTools())
    builder.ensure("present", check_mode=False)
    assert builder.guest_dir.is_dir()
    assert builder.ensure("absent", check_mode=True).changed
    assert builder.guest_dir.is_dir()  # check mode removes nothing
    assert builder.ensure("absent", check_mode=False).changed
    assert not builder.guest_dir.exists()
    assert not builder.ensure("absent", check_mode=False).changed
    assert controller.base_image_dir.joinpath("rootfs/etc/hostname").exists()  # the base image stays


def test_absent_removes_a_leftover_partial(controller: GuestSpec) -> None:
    builder = GuestImageBuilder(controller, FakeTools())
    partial = builder.guest_dir.parent / f".{builder.guest_dir.name}.partial"
    (partial / "rootfs").mkdir(parents=True)
    assert builder.ensure("absent", check_mode=False).changed
    assert not partial.exists()


@pytest.mark.parametrize("failing", ["cp", "systemctl", "mkfs.ext4", "qemu-img", "mkinitramfs"])
def test_interrupted_build_leaves_nothing(controller: GuestSpec, no_root_needed: None, failing: str) -> None:
    tools = FakeTools(fail=failing)
    builder = GuestImageBuilder(controller, tools)
    with pytest.raises(GuestImageError, match=rf"command failed \(rc=1\): {re.escape(failing)}"):
        builder.ensure("present", check_mode=False)
    assert tools.tools()[-1] == failing
    assert not builder.guest_dir.exists()
    assert leftovers(controller) == []  # no .partial
    result = GuestImageBuilder(controller, FakeTools()).ensure("present", check_mode=False)
    assert result.changed and result.built  # the next run builds from scratch


def test_stale_partial_is_replaced(controller: GuestSpec, no_root_needed: None) -> None:
    builder = GuestImageBuilder(controller, FakeTools())
    partial = builder.guest_dir.parent / f".{builder.guest_dir.name}.partial"
    (partial / "junk").mkdir(parents=True)
    assert builder.ensure("present", check_mode=False).built
    assert not partial.exists()
    assert not (builder.guest_dir / "junk").exists()


def test_preflight(controller: GuestSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    builder = GuestImageBuilder(controller, FakeTools())
    monkeypatch.setattr(_guestimage.os, "geteuid", lambda: 1000)
    with pytest.raises(GuestImageError, match="needs root"):
        builder.ensure("present", check_mode=False)
    monkeypatch.setattr(_guestimage.os, "geteuid", lambda: 0)
    monkeypatch.setattr(
        _guestimage.shutil, "which", lambda tool: None if tool == "qemu-img" else f"/usr/bin/{tool}"
    )
    with pytest.raises(GuestImageError, match="qemu-img is not installed"):
        builder.ensure("present", check_mode=False)
    monkeypatch.setattr(_guestimage.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    shutil.rmtree(controller.base_image_dir / "rootfs")
    with pytest.raises(GuestImageError, match="has no rootfs/"):
        builder.ensure("present", check_mode=False)
    assert not builder.guest_dir.exists()


# --- the NoCloud seed -------------------------------------------------------------------------------


def seed(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "node": NODE,
        "mac": MAC,
        "host_key_private": PRIVATE_KEY,
        "host_key_public": PUBLIC_KEY,
        "authorized_keys": [OPERATOR_KEY],
    }
    values.update(overrides)
    return guest_seed(**values)


def user_data(result: dict[str, Any]) -> dict[str, Any]:
    assert result["user_data"].startswith("#cloud-config\n")
    loaded: dict[str, Any] = yaml.safe_load(result["user_data"])
    return loaded


@pytest.mark.parametrize(
    "private",
    [PRIVATE_KEY, PRIVATE_KEY.rstrip("\n"), PRIVATE_KEY + "\n\n"],
    ids=["one newline", "stripped by the file lookup", "extra newlines"],
)
def test_private_key_ends_with_exactly_one_newline(private: str) -> None:
    data = user_data(seed(host_key_private=private))
    assert data["ssh_keys"]["ed25519_private"] == PRIVATE_KEY
    assert data["ssh_keys"]["ed25519_private"].endswith("-----\n")
    assert not data["ssh_keys"]["ed25519_private"].endswith("\n\n")
    assert data["ssh_keys"]["ed25519_public"] == PUBLIC_KEY


def test_user_data() -> None:
    data = user_data(seed(authorized_keys=[f"  {OPERATOR_KEY}\n", "", "   ", "ssh-ed25519 AAAA second"]))
    assert data["users"] == [
        {"name": "root", "ssh_authorized_keys": [OPERATOR_KEY, "ssh-ed25519 AAAA second"]}
    ]
    assert data["ssh_deletekeys"] is True
    assert data["ssh_genkeytypes"] == []
    assert data["disable_root"] is False
    assert (data["hostname"], data["fqdn"], data["preserve_hostname"]) == ("vm-a1", "vm-a1", False)


def test_meta_data_and_instance_id() -> None:
    result = seed()
    meta = result["meta_data"]
    assert meta["local-hostname"] == "vm-a1"
    assert re.fullmatch(r"vm-a1-[0-9a-f]{12}", meta["instance-id"])
    same = {
        seed()["meta_data"]["instance-id"],
        seed(host_key_private=PRIVATE_KEY.rstrip("\n"))["meta_data"]["instance-id"],
        seed(authorized_keys=[f" {OPERATOR_KEY} ", ""])["meta_data"]["instance-id"],
        seed(node=dict(NODE))["meta_data"]["instance-id"],
    }
    assert same == {meta["instance-id"]}
    changed = [
        seed(authorized_keys=[OPERATOR_KEY, "ssh-ed25519 AAAA new-operator"]),
        seed(host_key_public=PUBLIC_KEY + "-rotated"),
        seed(host_key_private=PRIVATE_KEY.replace("b3Bl", "AAAA")),
        seed(node=dict(NODE, address="10.77.1.11")),
        seed(node=dict(NODE, prefix=25)),
        seed(node=dict(NODE, gateway="10.77.1.254")),
        seed(mac="52:54:00:12:34:57"),
    ]
    ids = [other["meta_data"]["instance-id"] for other in changed]
    assert meta["instance-id"] not in ids
    assert len(set(ids)) == len(ids)
    renamed = seed(node=dict(NODE, name="vm-b2"))["meta_data"]["instance-id"]
    assert renamed.startswith("vm-b2-")


def test_network_config() -> None:
    assert seed()["network_config"] == {
        "version": 2,
        "ethernets": {
            "eth0": {
                "match": {"macaddress": MAC},
                "set-name": "eth0",
                "addresses": ["10.77.1.10/24"],
                "routes": [{"to": "0.0.0.0/0", "via": "10.77.1.1"}],
            }
        },
    }


@pytest.mark.parametrize("keys", [[], [""], ["  ", "\n"]], ids=["none", "empty", "blank"])
def test_no_authorized_key(keys: list[str]) -> None:
    with pytest.raises(GuestImageError, match="VM vm-a1: no authorized key for root"):
        seed(authorized_keys=keys)


@pytest.mark.parametrize("private", [PUBLIC_KEY, "", "not a key"])
def test_host_key_must_be_a_private_key(private: str) -> None:
    with pytest.raises(GuestImageError, match="VM vm-a1: the host key is not an OpenSSH private key"):
        seed(host_key_private=private)
