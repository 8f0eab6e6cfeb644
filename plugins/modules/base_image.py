#!/usr/bin/python
# Copyright: Berth maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: base_image
short_description: Build and cache a Debian rootfs for local lab hosts
version_added: "0.1.0"
description:
  - Builds a C(debootstrap --variant=minbase) Debian rootfs with systemd, sshd, python3 and the tools
    Berth's roles need, ready to be the read-only lower layer of C(berth.fleet.nspawn_host) machines.
  - The image is named by a hash of its inputs (suite, package set, recipe version) and stored as
    O(images_dir)/<name>-<id>/rootfs next to a C(manifest.json) (inputs, installed package versions,
    a content checksum, build time).
  - A build runs in a temporary directory that is renamed into place when complete, so an interrupted
    build never leaves a half image. With the same inputs a second run changes nothing.
  - The image has an empty C(/etc/machine-id), no SSH host keys, key-only root login, systemd-networkd
    and sshd enabled, and HAProxy installed but disabled.
options:
  name:
    description: Image name; the directory is C(<name>-<id>).
    type: str
    default: bookworm-lab
  suite:
    description: Debian suite to bootstrap.
    type: str
    default: bookworm
  extra_packages:
    description: Packages to install on top of the base set.
    type: list
    elements: str
    default: []
  mirror:
    description:
      - Debian archive URL. Defaults to the Debian mirror that the controller's apt already uses
        (read from C(/etc/apt/sources.list*)), else U(http://deb.debian.org/debian).
    type: str
  images_dir:
    description: Where images are cached.
    type: path
    default: /var/lib/berth/images
  state:
    description:
      - V(present) builds the image unless it exists; V(absent) removes it (refused while a mounted
        overlay uses it).
    type: str
    choices: [present, absent]
    default: present
  force:
    description: Rebuild even if the image exists (refused while a mounted overlay uses it).
    type: bool
    default: false
  verify:
    description: Recompute the content checksum of an existing image and fail if it differs from the manifest.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reports whether the image would be built; builds nothing.
  diff_mode:
    support: none
    description: The image content is summarised by RV(checksum) and the manifest instead.
  idempotent:
    support: full
    description: With the same inputs the cached image is reused and nothing changes.
notes:
  - Needs root and C(debootstrap) on the controller. A cold build takes about a minute.
author:
  - Berth maintainers (@berth)
"""

EXAMPLES = r"""
- name: Build (or reuse) the lab base image
  berth.fleet.base_image:
    name: bookworm-lab
  register: lab_image

- name: An image with extra packages baked in
  berth.fleet.base_image:
    name: bookworm-pg
    extra_packages: [postgresql-15]
"""

RETURN = r"""
rootfs:
  description: The rootfs directory, to use as O(berth.fleet.nspawn_host#module:rootfs).
  returned: always
  type: str
  sample: /var/lib/berth/images/bookworm-lab-3f2a9c1d0b7e/rootfs
image_id:
  description: Hash of the image inputs (suite, packages, recipe version).
  returned: always
  type: str
  sample: 3f2a9c1d0b7e
image_dir:
  description: Directory holding C(rootfs) and C(manifest.json).
  returned: always
  type: str
manifest_path:
  description: Path of the manifest.
  returned: always
  type: str
inputs:
  description: What the image id is a hash of (suite, variant, package list, recipe version).
  returned: always
  type: dict
checksum:
  description: Content checksum of the rootfs (null in check mode when the image does not exist yet).
  returned: always
  type: str
  sample: sha256:7d5c...
built:
  description: Whether this run built the image.
  returned: always
  type: bool
build_seconds:
  description: Build duration, when this run built it.
  returned: always
  type: float
manifest:
  description: The manifest (inputs, packages with versions, checksum, build time).
  returned: when the image exists
  type: dict
"""

import traceback
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.local.image import (
    DEFAULT_MIRROR,
    ImageBuilder,
    ImageError,
    ImageSpec,
    find_debian_mirror,
    read_apt_sources,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "default": "bookworm-lab"},
            "suite": {"type": "str", "default": "bookworm"},
            "extra_packages": {"type": "list", "elements": "str", "default": []},
            "mirror": {"type": "str"},
            "images_dir": {"type": "path", "default": "/var/lib/berth/images"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "force": {"type": "bool", "default": False},
            "verify": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    mirror = params["mirror"] or find_debian_mirror(read_apt_sources(), params["suite"]) or DEFAULT_MIRROR
    spec = ImageSpec(
        name=params["name"],
        suite=params["suite"],
        extra_packages=tuple(params["extra_packages"]),
        mirror=mirror,
        images_dir=Path(params["images_dir"]),
    )
    builder = ImageBuilder(spec)
    try:
        spec.validate()
        result = builder.ensure(
            params["state"], module.check_mode, force=params["force"], verify=params["verify"]
        )
    except ImageError as exc:
        module.fail_json(msg=str(exc), exception=traceback.format_exc())
    module.exit_json(**result.as_dict())


if __name__ == "__main__":
    main()
