# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Guest images for VMs and emulated bare metal: the lab's base rootfs as a bootable disk.

A guest image is three files next to a manifest: ``disk.qcow2`` (an ext4 filesystem made from the
base rootfs with ``mkfs.ext4 -d``, no partition table), and the controller's Debian kernel with a
small initramfs (virtio and ext4 drivers only) for direct kernel boot. cloud-init (NoCloud) inside
gives each VM its hostname, addresses, authorized key and Berth-generated SSH host key from a
per-VM seed, so the host key is known before the first SSH connection.

Like the base image, a guest image is addressed by a hash of its inputs (the base image id, the
kernel version, the initramfs module list and this recipe's version) and built in a ``.partial``
directory that is renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common import command
from ansible_collections.berth.fleet.plugins.module_utils.common.command import Runner, subprocess_runner
from ansible_collections.berth.fleet.plugins.module_utils.common.fs import FileLock, sha256_file

# Bump whenever customise_guest() or the disk/initramfs recipe changes what ends up in an image.
GUEST_RECIPE_VERSION = 1

# What the guest kernel needs before the root filesystem is mounted (there is no /lib/modules in
# the guest: everything it ever loads comes from the initramfs).
INITRAMFS_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "virtio_console",
    "ext4",
    "iso9660",  # the NoCloud seed
    # ACPI power button -> input event -> systemd-logind powers off: libvirt's graceful shutdown
    "button",
    "evdev",
)

ROOT_LABEL = "berth-root"
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0 quiet"

CLOUD_CFG = """\
# Berth guest: a NoCloud seed only, and only the modules a Berth VM needs (boot time under TCG).
datasource_list: [ NoCloud ]
cloud_init_modules: [seed_random, bootcmd, write_files, growpart, resizefs, set_hostname,
                     update_hostname, update_etc_hosts, users_groups, ssh]
cloud_config_modules: [runcmd]
cloud_final_modules: [scripts_per_once, scripts_user, final_message]
"""

# Berth addresses guests statically: without this networkd keeps each link "configuring" for ~12 s
# waiting for an IPv6 router advertisement, and network-online.target (hence cloud-init and
# sshd) waits with it. cloud-init names the seed's interfaces eth0.. (set-name), one drop-in each.
NO_RA_DROP_IN = (
    "[Network]\n# Berth: static addresses, no router advertisements to wait for\nIPv6AcceptRA=no\n"
)
NIC_NAMES = tuple(f"eth{index}" for index in range(4))

FSTAB = f"LABEL={ROOT_LABEL} / ext4 defaults,errors=remount-ro 0 1\n"
UNITS_TO_DISABLE: tuple[str, ...] = ("e2scrub_reap.service", "e2scrub_all.timer")

_KERNEL_RE = re.compile(r"^vmlinuz-(\d+\.\d+\.\d+[\w.+-]*)$")
_HASH_CHUNK = 1 << 20


class GuestImageError(Exception):
    """Anything that stops a guest image from being built, verified or removed."""


def _run_checked(runner: Runner, argv: Sequence[str]) -> command.CommandResult:
    return command.run_checked(runner, argv, GuestImageError, tail_lines=15)


@dataclass(frozen=True)
class GuestSpec:
    base_image_dir: Path  # a base image directory (rootfs/ + manifest.json) from base_image
    kernel_version: str = ""  # "" = the newest /boot/vmlinuz-* that has its /lib/modules
    boot_dir: Path = Path("/boot")
    modules_dir: Path = Path("/lib/modules")

    @property
    def base_manifest(self) -> dict[str, Any]:
        path = self.base_image_dir / "manifest.json"
        try:
            manifest: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise GuestImageError(
                f"base image {self.base_image_dir} has no manifest.json: build it with berth.fleet.base_image"
            ) from None
        except (OSError, ValueError) as exc:
            raise GuestImageError(f"unreadable base image manifest {path}: {exc}") from exc
        return manifest

    def kernel(self) -> str:
        if self.kernel_version:
            if not (self.boot_dir / f"vmlinuz-{self.kernel_version}").is_file():
                raise GuestImageError(
                    f"kernel_version {self.kernel_version!r}: {self.boot_dir}/vmlinuz-{self.kernel_version} "
                    "does not exist (apt-get install linux-image-amd64 on the controller)"
                )
            return self.kernel_version
        versions = sorted(
            (
                match.group(1)
                for entry in (self.boot_dir.iterdir() if self.boot_dir.is_dir() else ())
                if (match := _KERNEL_RE.match(entry.name)) and (self.modules_dir / match.group(1)).is_dir()
            ),
            key=_version_key,
        )
        if not versions:
            raise GuestImageError(
                f"no Debian kernel on the controller ({self.boot_dir}/vmlinuz-* with {self.modules_dir}/*): "
                "apt-get install linux-image-amd64 initramfs-tools"
            )
        return versions[-1]

    def inputs(self) -> dict[str, Any]:
        base = self.base_manifest
        return {
            "base_image_id": base.get("image_id", ""),
            "base_checksum": base.get("checksum", ""),
            "kernel_version": self.kernel(),
            "initramfs_modules": list(INITRAMFS_MODULES),
            "cmdline": KERNEL_CMDLINE,
            "recipe_version": GUEST_RECIPE_VERSION,
        }

    def guest_id(self, inputs: dict[str, Any]) -> str:
        canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def guest_dir(self, guest_id: str) -> Path:
        return self.base_image_dir.parent / f"{self.base_image_dir.name}-guest-{guest_id}"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def customise_guest(rootfs: Path, runner: Runner) -> None:
    """Turn a copy of the base rootfs into a VM root: cloud-init on, one disk, no RA waits."""
    (rootfs / "etc/cloud/cloud-init.disabled").unlink(missing_ok=True)
    cloud_cfg = rootfs / "etc/cloud/cloud.cfg.d/90-berth.cfg"
    cloud_cfg.parent.mkdir(parents=True, exist_ok=True)
    cloud_cfg.write_text(CLOUD_CFG)
    (rootfs / "etc/fstab").write_text(FSTAB)
    for nic in NIC_NAMES:
        drop_in = rootfs / f"etc/systemd/network/10-cloud-init-{nic}.network.d/50-berth-no-ra.conf"
        drop_in.parent.mkdir(parents=True, exist_ok=True)
        drop_in.write_text(NO_RA_DROP_IN)
    _run_checked(runner, ["systemctl", f"--root={rootfs}", "disable", *UNITS_TO_DISABLE])


def initramfs_conf(conf_dir: Path) -> None:
    """A mkinitramfs configuration directory: only the listed modules, nothing from the host."""
    for sub in ("conf.d", "hooks", "scripts"):
        (conf_dir / sub).mkdir(parents=True, exist_ok=True)
    (conf_dir / "initramfs.conf").write_text("MODULES=list\nBUSYBOX=auto\nCOMPRESS=gzip\nRUNSIZE=10%\n")
    (conf_dir / "modules").write_text("".join(f"{module}\n" for module in INITRAMFS_MODULES))


def disk_bytes(rootfs_bytes: int) -> int:
    """Filesystem size for a rootfs: room for the journal and a little more, in whole 64 MiB units.

    cloud-init's resizefs grows it to the VM's disk on first boot.
    """
    unit = 64 << 20
    wanted = int(rootfs_bytes * 1.3) + (256 << 20)
    return -(-wanted // unit) * unit


def tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


@dataclass
class GuestResult:
    changed: bool
    guest_id: str
    guest_dir: str
    disk: str
    kernel: str
    initrd: str
    cmdline: str
    inputs: dict[str, Any]
    manifest: dict[str, Any] = field(default_factory=dict)
    built: bool = False
    build_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class GuestImageBuilder:
    def __init__(self, spec: GuestSpec, runner: Runner = subprocess_runner, check_mode: bool = False) -> None:
        self.spec = spec
        self.runner = runner
        if check_mode and not (spec.base_image_dir / "manifest.json").exists():
            # --check on a fresh machine: the base image would be built first; nothing to name yet
            self.inputs: dict[str, Any] = {}
            self.guest_id = ""
        else:
            self.inputs = spec.inputs()
            self.guest_id = spec.guest_id(self.inputs)
        self.guest_dir = spec.guest_dir(self.guest_id)

    def _result(self, changed: bool) -> GuestResult:
        return GuestResult(
            changed=changed,
            guest_id=self.guest_id,
            guest_dir=str(self.guest_dir),
            disk=str(self.guest_dir / "disk.qcow2"),
            kernel=str(self.guest_dir / "vmlinuz"),
            initrd=str(self.guest_dir / "initrd.img"),
            cmdline=KERNEL_CMDLINE,
            inputs=self.inputs,
        )

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            manifest: dict[str, Any] = json.loads((self.guest_dir / "manifest.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise GuestImageError(f"unreadable guest manifest in {self.guest_dir}: {exc}") from exc
        return manifest

    def ensure(self, state: str, check_mode: bool, verify: bool = False) -> GuestResult:
        try:
            if state == "absent":
                return self.absent(check_mode)
            return self.present(check_mode, verify)
        except OSError as exc:
            raise GuestImageError(f"guest image {self.guest_dir}: {exc}") from exc

    def present(self, check_mode: bool, verify: bool) -> GuestResult:
        if self.guest_id == "":
            return self._result(changed=True)  # check mode before the base image exists
        manifest = self.read_manifest()
        if manifest is not None and manifest.get("guest_id") == self.guest_id:
            if verify:
                self._verify(manifest)
            result = self._result(changed=False)
            result.manifest = manifest
            return result
        if check_mode:
            return self._result(changed=True)
        self._preflight()
        lock = self.guest_dir.parent / f".{self.guest_dir.name}.lock"
        with FileLock(lock):
            manifest = self.read_manifest()
            if manifest is not None and manifest.get("guest_id") == self.guest_id:
                result = self._result(changed=False)
                result.manifest = manifest
                return result
            return self._build()

    def absent(self, check_mode: bool) -> GuestResult:
        partial = self._partial()
        if not self.guest_dir.exists() and not partial.exists():
            return self._result(changed=False)
        if not check_mode:
            shutil.rmtree(self.guest_dir, ignore_errors=True)
            shutil.rmtree(partial, ignore_errors=True)
        return self._result(changed=True)

    def _partial(self) -> Path:
        return self.guest_dir.parent / f".{self.guest_dir.name}.partial"

    def _verify(self, manifest: dict[str, Any]) -> None:
        for name, expected in manifest.get("files", {}).items():
            actual = sha256_file(self.guest_dir / name)
            if actual != expected.get("sha256"):
                raise GuestImageError(
                    f"guest image file {self.guest_dir / name} does not match its manifest "
                    f"(manifest {expected.get('sha256')}, content {actual}); remove the directory to rebuild"
                )

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise GuestImageError("building a guest image needs root (it copies a rootfs with device nodes)")
        for tool in ("mkfs.ext4", "qemu-img", "mkinitramfs", "systemctl"):
            if shutil.which(tool) is None:
                raise GuestImageError(
                    f"{tool} is not installed on the controller "
                    "(apt-get install e2fsprogs qemu-utils initramfs-tools systemd)"
                )
        if not (self.spec.base_image_dir / "rootfs").is_dir():
            raise GuestImageError(f"base image {self.spec.base_image_dir} has no rootfs/")

    def _build(self) -> GuestResult:
        started = time.monotonic()
        partial = self._partial()
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        kernel_version = self.inputs["kernel_version"]
        try:
            rootfs = partial / "rootfs"
            _run_checked(
                self.runner,
                ["cp", "-a", "--reflink=auto", str(self.spec.base_image_dir / "rootfs"), str(rootfs)],
            )
            customise_guest(rootfs, self.runner)
            raw = partial / "disk.raw"
            with raw.open("wb") as handle:
                handle.truncate(disk_bytes(tree_bytes(rootfs)))
            _run_checked(
                self.runner, ["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-d", str(rootfs), str(raw)]
            )
            shutil.rmtree(rootfs)
            _run_checked(
                self.runner,
                [
                    "qemu-img",
                    "convert",
                    "-q",
                    "-f",
                    "raw",
                    "-O",
                    "qcow2",
                    str(raw),
                    str(partial / "disk.qcow2"),
                ],
            )
            raw.unlink()
            conf = partial / "initramfs"
            initramfs_conf(conf)
            _run_checked(
                self.runner,
                ["mkinitramfs", "-d", str(conf), "-o", str(partial / "initrd.img"), kernel_version],
            )
            shutil.rmtree(conf)
            shutil.copyfile(self.spec.boot_dir / f"vmlinuz-{kernel_version}", partial / "vmlinuz")
            files = {
                name: {"sha256": sha256_file(partial / name), "bytes": (partial / name).stat().st_size}
                for name in ("disk.qcow2", "vmlinuz", "initrd.img")
            }
            build_seconds = round(time.monotonic() - started, 1)
            manifest = {
                "guest_id": self.guest_id,
                "inputs": self.inputs,
                "files": files,
                "cmdline": KERNEL_CMDLINE,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": build_seconds,
            }
            (partial / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            os.sync()
            shutil.rmtree(self.guest_dir, ignore_errors=True)
            os.rename(partial, self.guest_dir)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        result = self._result(changed=True)
        result.manifest = manifest
        result.built = True
        result.build_seconds = build_seconds
        return result


def volume_names(guest_id: str) -> dict[str, str]:
    """Content-addressed names of the guest image's volumes in a hypervisor's storage pool."""
    return {
        "disk": f"berth-guest-{guest_id}.qcow2",
        "kernel": f"berth-guest-{guest_id}.vmlinuz",
        "initrd": f"berth-guest-{guest_id}.initrd",
    }


def guest_seed(
    node: Mapping[str, Any],
    mac: str,
    host_key_private: str,
    host_key_public: str,
    authorized_keys: Sequence[str],
) -> dict[str, Any]:
    """The NoCloud seed of one VM: hostname, static address, operator keys and its own host key.

    ``node`` is an entry of the ``berth.fleet.nodes`` filter (name, address, prefix, gateway). The
    host key is Berth's, generated on the controller before the VM exists, so the controller knows
    it before the first SSH connection and host key checking stays on.
    """
    keys = [key.strip() for key in authorized_keys if key and key.strip()]
    if not keys:
        raise GuestImageError(f"VM {node['name']}: no authorized key for root: nobody could log in")
    if "PRIVATE KEY" not in host_key_private:
        raise GuestImageError(f"VM {node['name']}: the host key is not an OpenSSH private key")
    user_data = {
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        # Ansible's file lookup strips the final newline, without which OpenSSH refuses the key
        "ssh_keys": {
            "ed25519_private": host_key_private.rstrip("\n") + "\n",
            "ed25519_public": host_key_public.strip(),
        },
        "disable_root": False,
        "users": [{"name": "root", "ssh_authorized_keys": keys}],
        "preserve_hostname": False,
        "hostname": node["name"],
        "fqdn": node["name"],
    }
    network_config = {
        "version": 2,
        "ethernets": {
            "eth0": {
                "match": {"macaddress": mac},
                "set-name": "eth0",
                "addresses": [f"{node['address']}/{node['prefix']}"],
                "routes": [{"to": "0.0.0.0/0", "via": node["gateway"]}],
            }
        },
    }
    rendered = "#cloud-config\n" + json.dumps(user_data, indent=2, sort_keys=True) + "\n"
    # cloud-init applies a seed once per instance-id: a changed seed (a new operator key, a new
    # address) gets a new id, so the VM applies it at its next boot.
    digest = hashlib.sha256((rendered + json.dumps(network_config, sort_keys=True)).encode()).hexdigest()
    return {
        "meta_data": {"instance-id": f"{node['name']}-{digest[:12]}", "local-hostname": node["name"]},
        "user_data": rendered,
        "network_config": network_config,
    }
