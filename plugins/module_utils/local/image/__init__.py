# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Base images for local lab hosts: a debootstrap'd Debian rootfs, built once and cached.

An image is addressed by a hash of its inputs (suite, variant, package set, recipe version), so the
same inputs always name the same directory and a rebuild is never needed to know whether an image
exists. A build happens in a ``.partial`` sibling directory that is renamed into place only once it
is complete: an interrupted build never leaves something that looks like an image.

The parts: ``spec`` (what is asked for, the image id, where it lives), ``apt`` (the controller's
mirror, a rootfs's installed packages), ``rootfs`` (debootstrap, Berth's changes, checksum, mounts)
and ``builder``. Their public names are importable from here.
"""

from __future__ import annotations

from ansible_collections.berth.fleet.plugins.module_utils.local.image.apt import (
    find_debian_mirror,
    parse_dpkg_status,
    read_apt_sources,
)
from ansible_collections.berth.fleet.plugins.module_utils.local.image.builder import ImageBuilder
from ansible_collections.berth.fleet.plugins.module_utils.local.image.rootfs import (
    SSHD_DROP_IN,
    UNITS_TO_DISABLE,
    UNITS_TO_ENABLE,
    customise_rootfs,
    debootstrap_argv,
    mounts_below,
    overlay_lowerdirs,
    systemctl_argvs,
    tree_checksum,
)
from ansible_collections.berth.fleet.plugins.module_utils.local.image.spec import (
    BASE_PACKAGES,
    DEFAULT_IMAGES_DIR,
    DEFAULT_MIRROR,
    DEFAULT_SUITE,
    RECIPE_VERSION,
    VARIANT,
    ImageError,
    ImageResult,
    ImageSpec,
    run_checked,
)

__all__ = [
    "BASE_PACKAGES",
    "DEFAULT_IMAGES_DIR",
    "DEFAULT_MIRROR",
    "DEFAULT_SUITE",
    "RECIPE_VERSION",
    "SSHD_DROP_IN",
    "UNITS_TO_DISABLE",
    "UNITS_TO_ENABLE",
    "VARIANT",
    "ImageBuilder",
    "ImageError",
    "ImageResult",
    "ImageSpec",
    "customise_rootfs",
    "debootstrap_argv",
    "find_debian_mirror",
    "mounts_below",
    "overlay_lowerdirs",
    "parse_dpkg_status",
    "read_apt_sources",
    "run_checked",
    "systemctl_argvs",
    "tree_checksum",
]
