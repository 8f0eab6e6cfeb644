#!/usr/bin/python
# Copyright: Berth maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: guest_image
short_description: Turn a Berth base image into a bootable VM disk, kernel and initramfs
version_added: "0.2.0"
description:
  - Makes the guest image that Berth's VMs (and emulated bare metal) boot from a base image built by
    M(berth.fleet.base_image), so VMs and lab machines run the very same rootfs.
  - The disk is a qcow2 holding one ext4 filesystem (no partition table) made with C(mkfs.ext4 -d);
    cloud-init (NoCloud only) is switched on in it, and IPv6 router advertisements are off so that a
    statically addressed guest is online at once.
  - Boot is direct kernel boot with the controller's Debian kernel (package C(linux-image-amd64)) and
    a small initramfs with only the virtio, ext4 and iso9660 drivers.
  - The result lives in C(<base image dir>-guest-<id>/) with a C(manifest.json) holding each file's
    sha256. The id is a hash of the base image id and checksum, the kernel version, the initramfs
    module list and the recipe version; with the same inputs a second run changes nothing.
options:
  base_image_dir:
    description: The base image directory (the C(image_dir) that M(berth.fleet.base_image) returns).
    type: path
    required: true
  kernel_version:
    description: Kernel to boot, as in C(/boot/vmlinuz-<version>). Default is the newest installed one.
    type: str
    default: ""
  state:
    description: V(present) builds the guest image unless it exists; V(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  verify:
    description: Recompute the sha256 of every file of an existing guest image and fail on a mismatch.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reports whether the guest image would be built; builds nothing.
  diff_mode:
    support: none
    description: The image is summarised by its id and the sha256 of each file in the manifest.
  idempotent:
    support: full
    description: With the same inputs the cached guest image is reused and nothing changes.
notes:
  - Needs root, C(mkfs.ext4), C(qemu-img) and C(mkinitramfs) on the controller; a build takes 6-15 s.
author:
  - Berth maintainers (@berth)
"""

EXAMPLES = r"""
- name: Base image
  berth.fleet.base_image:
  register: base

- name: Guest image for VMs
  berth.fleet.guest_image:
    base_image_dir: "{{ base.image_dir }}"
  register: guest
"""

RETURN = r"""
guest_id:
  description: Hash of the inputs; part of the directory and of the volume names on hypervisors.
  returned: always
  type: str
guest_dir:
  description: Directory holding the guest image.
  returned: always
  type: str
disk:
  description: Path of the qcow2 root disk.
  returned: always
  type: str
kernel:
  description: Path of the kernel.
  returned: always
  type: str
initrd:
  description: Path of the initramfs.
  returned: always
  type: str
cmdline:
  description: Kernel command line the disk expects.
  returned: always
  type: str
volumes:
  description: Content-addressed names to give the disk, kernel and initrd in a storage pool.
  returned: always
  type: dict
built:
  description: Whether this run built the image.
  returned: always
  type: bool
build_seconds:
  description: Build duration, when this run built it.
  returned: always
  type: float
manifest:
  description: Inputs, files with sha256 and size, build time.
  returned: when the image exists
  type: dict
"""

import traceback
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.local.guestimage import (
    GuestImageBuilder,
    GuestImageError,
    GuestSpec,
    volume_names,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "base_image_dir": {"type": "path", "required": True},
            "kernel_version": {"type": "str", "default": ""},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "verify": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    try:
        builder = GuestImageBuilder(
            GuestSpec(base_image_dir=Path(params["base_image_dir"]), kernel_version=params["kernel_version"]),
            check_mode=module.check_mode,
        )
        result = builder.ensure(params["state"], module.check_mode, verify=params["verify"])
    except GuestImageError as exc:
        module.fail_json(msg=str(exc), exception=traceback.format_exc())
    volumes = volume_names(result.guest_id) if result.guest_id else {}
    module.exit_json(volumes=volumes, **result.as_dict())


if __name__ == "__main__":
    main()
