# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Base images for local lab hosts: a debootstrap'd Debian rootfs, built once and cached.

An image is addressed by a hash of its inputs (suite, variant, package set, recipe version), so the
same inputs always name the same directory and a rebuild is never needed to know whether an image
exists. A build happens in a ``.partial`` sibling directory that is renamed into place only once it
is complete: an interrupted build never leaves something that looks like an image.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common import command
from ansible_collections.berth.fleet.plugins.module_utils.common.command import (
    CommandResult,
    Runner,
    subprocess_runner,
)
from ansible_collections.berth.fleet.plugins.module_utils.common.fs import FileLock
from ansible_collections.berth.fleet.plugins.module_utils.common.procfs import (
    mount_points,
    unescape_mountinfo,
)

# Bump whenever customise_rootfs() or the debootstrap invocation changes what ends up in an image.
RECIPE_VERSION = 2

DEFAULT_IMAGES_DIR = Path("/var/lib/berth/images")
DEFAULT_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"

BASE_PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "iproute2",
    "iputils-ping",
    "curl",
    "ca-certificates",
    "sudo",
    "haproxy",
    "socat",
    "procps",
    "less",
    # VMs and emulated metal boot this same rootfs (berth.fleet.guest_image): cloud-init reads their
    # NoCloud seed, udev brings up their devices. Both stay inert in nspawn machines.
    "cloud-init",
    # provides a virtual package that cloud-init needs; debootstrap resolves only real packages
    "python3-cffi-backend",
    "udev",
)

# Lab hosts have no route to any mirror: periodic apt jobs would only fail. HAProxy is baked in so
# that roles need no network, but only hosts that a role makes a load balancer should run it.
UNITS_TO_ENABLE: tuple[str, ...] = ("systemd-networkd.service", "ssh.service")
UNITS_TO_DISABLE: tuple[str, ...] = ("apt-daily.timer", "apt-daily-upgrade.timer", "haproxy.service")

SSHD_DROP_IN = """\
# Berth lab host: key-only root login, one host key that Berth generates per machine.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,47}$")
_SUITE_RE = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_HASH_CHUNK = 1 << 20


class ImageError(Exception):
    """Anything that stops an image from being built, verified or removed."""


def run_checked(runner: Runner, argv: Sequence[str]) -> CommandResult:
    return command.run_checked(runner, argv, ImageError, tail_lines=15)


@dataclass(frozen=True)
class ImageSpec:
    """What the caller asks for. Everything that changes the rootfs content is part of the id."""

    name: str
    suite: str = DEFAULT_SUITE
    extra_packages: tuple[str, ...] = ()
    mirror: str = DEFAULT_MIRROR
    images_dir: Path = DEFAULT_IMAGES_DIR

    def validate(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ImageError(
                f"invalid image name {self.name!r}: use lowercase letters, digits, '-', '_', '.' (max 48)"
            )
        if not _SUITE_RE.match(self.suite):
            raise ImageError(f"invalid suite {self.suite!r}")
        bad = [pkg for pkg in self.extra_packages if not _PACKAGE_RE.match(pkg)]
        if bad:
            raise ImageError(f"invalid Debian package name(s): {', '.join(bad)}")
        if not re.match(r"^(https?|file)://\S+$", self.mirror):
            raise ImageError(f"mirror must be an http(s):// or file:// URL, got {self.mirror!r}")
        if not self.images_dir.is_absolute():
            raise ImageError(f"images_dir must be an absolute path, got {str(self.images_dir)!r}")

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(sorted(set(BASE_PACKAGES) | set(self.extra_packages)))

    def inputs(self) -> dict[str, Any]:
        # The mirror is a transport, not an input: the same suite from two mirrors is the same image.
        return {
            "suite": self.suite,
            "variant": VARIANT,
            "packages": list(self.packages),
            "recipe_version": RECIPE_VERSION,
        }

    @property
    def image_id(self) -> str:
        canonical = json.dumps(self.inputs(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def image_dir(self) -> Path:
        return self.images_dir / f"{self.name}-{self.image_id}"

    @property
    def rootfs(self) -> Path:
        return self.image_dir / "rootfs"

    @property
    def manifest_path(self) -> Path:
        return self.image_dir / "manifest.json"

    @property
    def partial_dir(self) -> Path:
        return self.images_dir / f".{self.image_dir.name}.partial"

    @property
    def lock_path(self) -> Path:
        return self.images_dir / f".{self.image_dir.name}.lock"


@dataclass
class ImageResult:
    changed: bool
    image_id: str
    image_dir: str
    rootfs: str
    manifest_path: str
    inputs: dict[str, Any] = field(default_factory=dict)
    checksum: str | None = None
    built: bool = False
    build_seconds: float | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "image_id": self.image_id,
            "image_dir": self.image_dir,
            "rootfs": self.rootfs,
            "manifest_path": self.manifest_path,
            "inputs": self.inputs,
            "checksum": self.checksum,
            "built": self.built,
            "build_seconds": self.build_seconds,
            "manifest": self.manifest,
        }


# --- pure helpers -------------------------------------------------------------------------------


def find_debian_mirror(sources: Mapping[str, str], suite: str) -> str | None:
    """The first plain Debian archive URI in apt's sources that serves ``suite``.

    ``sources`` maps a file name to its text; both one-line (``.list``) and deb822 (``.sources``)
    formats are read. Security and updates suites are not the main archive and are skipped.
    """
    for filename in sorted(sources):
        text = sources[filename]
        entries = _deb822_entries(text) if filename.endswith(".sources") else _one_line_entries(text)
        for uris, suites in entries:
            if suite not in suites:
                continue
            for uri in uris:
                if uri.rstrip("/").endswith("/debian"):
                    return uri.rstrip("/")
    return None


def _one_line_entries(text: str) -> Iterator[tuple[list[str], list[str]]]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        words = re.sub(r"\[[^]]*\]", " ", line).split()[1:]
        if len(words) >= 2:
            yield [words[0]], [words[1]]


def _deb822_entries(text: str) -> Iterator[tuple[list[str], list[str]]]:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for raw in stanza.splitlines():
            if raw.lstrip().startswith("#") or ":" not in raw or raw[:1].isspace():
                continue
            key, value = raw.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        yield fields.get("uris", "").split(), fields.get("suites", "").split()


def read_apt_sources(etc_apt: Path = Path("/etc/apt")) -> dict[str, str]:
    sources: dict[str, str] = {}
    main = etc_apt / "sources.list"
    if main.is_file():
        sources[main.name] = main.read_text(errors="replace")
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for entry in sorted(parts.iterdir()):
            if entry.suffix in (".list", ".sources") and entry.is_file():
                sources[entry.name] = entry.read_text(errors="replace")
    return sources


def parse_dpkg_status(text: str) -> dict[str, str]:
    """Installed packages and their versions from a dpkg ``status`` file."""
    installed: dict[str, str] = {}
    native_arch = _dpkg_native_arch(text)
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for raw in stanza.splitlines():
            if raw[:1].isspace() or ":" not in raw:
                continue
            key, value = raw.split(":", 1)
            fields[key] = value.strip()
        if "Package" in fields and fields.get("Status", "").endswith(" installed"):
            arch = fields.get("Architecture", "")
            name = fields["Package"]
            if arch and arch not in ("all", native_arch):
                name = f"{name}:{arch}"
            installed[name] = fields.get("Version", "")
    return dict(sorted(installed.items()))


def _dpkg_native_arch(text: str) -> str:
    # dpkg does not record the native arch in status; the arch of dpkg itself is it.
    match = re.search(r"^Package: dpkg\n(?:.+\n)*?Architecture: (\S+)", text, re.MULTILINE)
    return match.group(1) if match else ""


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


# --- the builder --------------------------------------------------------------------------------


class ImageBuilder:
    """Ensures one image exists (or does not), building it only when it is missing."""

    def __init__(
        self,
        spec: ImageSpec,
        runner: Runner = subprocess_runner,
        mountinfo_path: Path = Path("/proc/self/mountinfo"),
    ) -> None:
        self.spec = spec
        self.runner = runner
        self.mountinfo_path = mountinfo_path

    def _result(self, changed: bool) -> ImageResult:
        return ImageResult(
            changed=changed,
            image_id=self.spec.image_id,
            image_dir=str(self.spec.image_dir),
            rootfs=str(self.spec.rootfs),
            manifest_path=str(self.spec.manifest_path),
            inputs=self.spec.inputs(),
        )

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            manifest: dict[str, Any] = json.loads(self.spec.manifest_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ImageError(f"unreadable manifest {self.spec.manifest_path}: {exc}") from exc
        return manifest

    def exists(self) -> bool:
        manifest = self.read_manifest()
        return (
            manifest is not None
            and manifest.get("image_id") == self.spec.image_id
            and self.spec.rootfs.is_dir()
        )

    def in_use(self) -> bool:
        return str(self.spec.rootfs) in overlay_lowerdirs(self._mountinfo())

    def ensure(self, state: str, check_mode: bool, force: bool = False, verify: bool = False) -> ImageResult:
        try:
            if state == "absent":
                return self.absent(check_mode)
            return self.present(check_mode, force=force, verify=verify)
        except OSError as exc:
            raise ImageError(f"image {self.spec.image_dir}: {exc}") from exc

    def present(self, check_mode: bool, force: bool = False, verify: bool = False) -> ImageResult:
        if self.exists() and not force:
            result = self._result(changed=False)
            result.manifest = self.read_manifest() or {}
            result.checksum = result.manifest.get("checksum")
            if verify:
                actual = tree_checksum(self.spec.rootfs)
                if actual != result.checksum:
                    raise ImageError(
                        f"image {self.spec.image_dir} does not match its manifest "
                        f"(manifest {result.checksum}, content {actual}); rebuild it with force=true"
                    )
            return result
        if check_mode:
            return self._result(changed=True)
        self._preflight()
        if force and self.exists() and self.in_use():
            raise ImageError(
                f"image {self.spec.rootfs} is the lowerdir of a mounted overlay; stop its machines"
            )
        with self._locked():
            if self.exists() and not force:
                # Another build of the same image finished while we waited for the lock.
                return self.present(check_mode=False)
            return self._build()

    def absent(self, check_mode: bool) -> ImageResult:
        leftovers = self.spec.partial_dir.exists()
        if not self.spec.image_dir.exists() and not leftovers:
            return self._result(changed=False)
        if self.in_use():
            raise ImageError(
                f"image {self.spec.rootfs} is the lowerdir of a mounted overlay; stop its machines"
            )
        if not check_mode:
            self._remove_tree(self.spec.image_dir)
            self._remove_tree(self.spec.partial_dir)
            self.spec.lock_path.unlink(missing_ok=True)
        return self._result(changed=True)

    def _remove_tree(self, path: Path) -> None:
        """rmtree that first detaches what a killed debootstrap left mounted inside (proc, sys, dev binds)."""
        if not path.exists():
            return
        for point in mounts_below(self._mountinfo(), path):
            self.runner(["umount", "--lazy", point])
        still = mounts_below(self._mountinfo(), path)
        if still:
            raise ImageError(f"cannot remove {path}: still mounted inside it: {', '.join(still)}")
        shutil.rmtree(path, ignore_errors=True)

    def _mountinfo(self) -> str:
        try:
            return self.mountinfo_path.read_text()
        except OSError:
            return ""

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise ImageError("building an image needs root (debootstrap, chroot, device nodes)")
        for tool in ("debootstrap", "systemctl"):
            if shutil.which(tool) is None:
                raise ImageError(f"{tool} is not installed on the controller (apt-get install {tool})")

    def _locked(self) -> FileLock:
        self.spec.images_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(self.spec.lock_path)

    def _build(self) -> ImageResult:
        started = time.monotonic()
        partial = self.spec.partial_dir
        # A .partial directory only ever exists because an earlier build was interrupted.
        self._remove_tree(partial)
        partial.mkdir(parents=True)
        rootfs = partial / "rootfs"
        try:
            run_checked(self.runner, debootstrap_argv(self.spec, rootfs))
            customise_rootfs(rootfs, self.runner)
            packages = parse_dpkg_status((rootfs / "var/lib/dpkg/status").read_text())
            missing = [pkg for pkg in self.spec.packages if pkg not in packages]
            if missing:
                raise ImageError(f"debootstrap finished but these packages are not installed: {missing}")
            checksum = tree_checksum(rootfs)
            build_seconds = round(time.monotonic() - started, 1)
            manifest: dict[str, Any] = {
                "image_id": self.spec.image_id,
                "name": self.spec.name,
                "inputs": self.spec.inputs(),
                "mirror": self.spec.mirror,
                "packages": packages,
                "checksum": checksum,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": build_seconds,
            }
            (partial / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            os.sync()
            if self.spec.image_dir.exists():
                # force=true: keep the old image out of the way until the new one is in place.
                trash = self.spec.images_dir / f".{self.spec.image_dir.name}.old"
                self._remove_tree(trash)
                os.rename(self.spec.image_dir, trash)
                os.rename(partial, self.spec.image_dir)
                self._remove_tree(trash)
            else:
                os.rename(partial, self.spec.image_dir)
        except BaseException:
            self._remove_tree(partial)
            raise
        result = self._result(changed=True)
        result.built = True
        result.checksum = checksum
        result.manifest = manifest
        result.build_seconds = build_seconds
        return result


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
    for argv in systemctl_argvs(rootfs):
        run_checked(runner, argv)
    for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
