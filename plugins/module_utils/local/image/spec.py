# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a base image is: the caller's spec (whose content-changing inputs make the image id), where
the image lives, and what a run reports.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common import command
from ansible_collections.berth.fleet.plugins.module_utils.common.command import CommandResult, Runner

# Bump whenever customise_rootfs() or the debootstrap invocation changes what ends up in an image.
RECIPE_VERSION = 3

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
    # an execution node installs ansible-runner into a virtual environment (roles/execution_node)
    "python3-venv",
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
    # database members (docs/databases.md): PostgreSQL run by Patroni, etcd as Patroni's store;
    # baked in like HAProxy (lab hosts have no route to a mirror), started only where a role says.
    # Patroni 3.0 talks to etcd's v3 gateway itself: it needs python3-etcd (its DNS helpers) and
    # urllib3. The sample service connects with psycopg2.
    "postgresql-15",
    "patroni",
    "python3-etcd",
    "python3-urllib3",
    "python3-psycopg2",
    "etcd-server",
    # every node's firewall, generated from the placement
    "nftables",
)

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,47}$")
_SUITE_RE = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


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
