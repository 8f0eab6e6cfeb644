# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rootfs itself: how debootstrap makes it, what Berth changes in it, its content checksum, and
what is mounted on or over it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from ansible_collections.berth.fleet.plugins.module_utils.common.command import Runner
from ansible_collections.berth.fleet.plugins.module_utils.common.procfs import (
    mount_points,
    unescape_mountinfo,
)
from ansible_collections.berth.fleet.plugins.module_utils.local.image.spec import (
    VARIANT,
    ImageSpec,
    run_checked,
)

# Lab hosts have no route to any mirror: periodic apt jobs would only fail. HAProxy is baked in so
# that roles need no network, but only hosts that a role makes a load balancer should run it.
UNITS_TO_ENABLE: tuple[str, ...] = ("systemd-networkd.service", "ssh.service")
# The same goes for the database engines: only a database member runs Patroni (which runs
# PostgreSQL itself) and only a dcs member runs etcd.
UNITS_TO_DISABLE: tuple[str, ...] = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "haproxy.service",
    "etcd.service",
    "patroni.service",
    "postgresql.service",
)

SSHD_DROP_IN = """\
# Berth lab host: key-only root login, one host key that Berth generates per machine.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""

_HASH_CHUNK = 1 << 20


def tree_checksum(root: Path) -> str:
    """A content hash of a directory tree: names, types, modes, owners, file bytes, link targets.

    Timestamps are left out on purpose: two builds with identical content hash the same.
    """
    digest = hashlib.sha256()
    for rel, st in _walk_sorted(root):
        mode = stat.S_IMODE(st.st_mode)
        kind = stat.S_IFMT(st.st_mode)
        digest.update(f"{rel}\0{kind:o}\0{mode:o}\0{st.st_uid}\0{st.st_gid}\0".encode())
        full = root / rel
        if stat.S_ISREG(st.st_mode):
            with open(full, "rb") as handle:
                while chunk := handle.read(_HASH_CHUNK):
                    digest.update(chunk)
        elif stat.S_ISLNK(st.st_mode):
            digest.update(os.readlink(full).encode())
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            digest.update(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}".encode())
        digest.update(b"\n")
    return "sha256:" + digest.hexdigest()


def _walk_sorted(root: Path, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    with os.scandir(root / rel if rel else root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        entry_rel = f"{rel}/{entry.name}" if rel else entry.name
        st = entry.stat(follow_symlinks=False)
        yield entry_rel, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_sorted(root, entry_rel)


def overlay_lowerdirs(mountinfo: str) -> list[str]:
    """Every lowerdir of every overlay mount listed in a /proc/<pid>/mountinfo text."""
    lowers: list[str] = []
    for line in mountinfo.splitlines():
        if " - overlay " not in line:
            continue
        super_options = line.split(" - ", 1)[1].split(" ", 2)[-1]
        for option in super_options.split(","):
            if option.startswith("lowerdir="):
                lowers.extend(unescape_mountinfo(part) for part in option[len("lowerdir=") :].split(":"))
    return lowers


def mounts_below(mountinfo: str, path: Path) -> list[str]:
    """Mount points at or under path, deepest first (the order to unmount them in)."""
    top = str(path).rstrip("/")
    points = mount_points(mountinfo)
    inside = {point for point in points if point == top or point.startswith(top + "/")}
    return sorted(inside, key=lambda point: (-point.count("/"), point))


def debootstrap_argv(spec: ImageSpec, target: Path) -> list[str]:
    return [
        "debootstrap",
        f"--variant={VARIANT}",
        "--components=main",
        f"--include={','.join(spec.packages)}",
        spec.suite,
        str(target),
        spec.mirror,
    ]


def systemctl_argvs(rootfs: Path) -> list[list[str]]:
    return [
        ["systemctl", f"--root={rootfs}", "enable", *UNITS_TO_ENABLE],
        ["systemctl", f"--root={rootfs}", "disable", *UNITS_TO_DISABLE],
    ]


# postgresql-common makes and would start a "15/main" cluster on port 5432 at install: on a Berth
# node only Patroni runs PostgreSQL, in a data directory of its own.
CREATECLUSTER_NO_MAIN = "create_main_cluster = false\n"


def _no_default_databases(rootfs: Path) -> None:
    """Drop the cluster postgresql-15's install made and etcd's single-member data, if any: a
    member that started with them would serve the wrong cluster."""
    conf = rootfs / "etc/postgresql-common/createcluster.conf"
    if conf.exists():
        text = conf.read_text()
        if CREATECLUSTER_NO_MAIN not in text:
            conf.write_text(text + "\n# Berth: only Patroni makes clusters\n" + CREATECLUSTER_NO_MAIN)
    for leftover in ("etc/postgresql/15/main", "var/lib/postgresql/15/main", "var/lib/etcd/default"):
        path = rootfs / leftover
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)


def customise_rootfs(rootfs: Path, runner: Runner) -> None:
    """Turn a fresh debootstrap into a lab-host base: nothing per-machine may be left in it."""
    etc = rootfs / "etc"
    # Empty, not missing: systemd then generates a fresh id on every machine's first boot.
    (etc / "machine-id").write_text("")
    dbus_id = rootfs / "var/lib/dbus/machine-id"
    if dbus_id.is_symlink() or dbus_id.exists():
        dbus_id.unlink()
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    for key in (etc / "ssh").glob("ssh_host_*"):
        key.unlink()
    drop_in = etc / "ssh/sshd_config.d/berth.conf"
    drop_in.parent.mkdir(parents=True, exist_ok=True)
    drop_in.write_text(SSHD_DROP_IN)
    # debootstrap copies these from the build machine; a lab host must not inherit them.
    (etc / "hostname").write_text("localhost\n")
    (etc / "resolv.conf").unlink(missing_ok=True)
    (etc / "resolv.conf").write_text("# Berth lab host: no DNS, the lab has no route out.\n")
    (etc / "hosts").write_text("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n")
    # nspawn machines get everything from nspawn_host; only guest images (VMs) turn cloud-init on.
    (etc / "cloud").mkdir(exist_ok=True)
    (etc / "cloud/cloud-init.disabled").write_text(
        "Berth: enabled only in guest images (berth.fleet.guest_image)\n"
    )
    _no_default_databases(rootfs)
    for argv in systemctl_argvs(rootfs):
        run_checked(runner, argv)
    for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
