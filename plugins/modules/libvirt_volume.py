#!/usr/bin/python
# Copyright: Berth maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: libvirt_volume
short_description: Upload a disk image, kernel or initramfs from the controller into a libvirt storage pool
version_added: "0.2.0"
description:
  - Uploads the local file O(src) into the storage pool O(pool) of the hypervisor at O(uri) as volume
    O(name), through the libvirt API (a virStream, in 4 MiB chunks); nothing is copied to the
    hypervisor by other means.
  - The volume's capacity is the file size for V(raw), and the virtual size read from the image
    header for V(qcow2). A qcow2 image with a backing file is refused (upload a flattened image), and
    so is a qcow2 image uploaded as V(raw), which would let a guest point its disk at host files.
  - B(Present means exists.) Volume names are expected to be content-addressed by the caller, for
    example C(berth-base-<imageid>.qcow2) (as M(berth.fleet.guest_image) returns them), so an existing
    volume is taken to hold the content and is not compared with O(src). Set O(force=true) to upload
    again.
options:
  name:
    description: Volume name in the pool.
    type: str
    required: true
  pool:
    description: Storage pool (see M(berth.fleet.libvirt_pool)). It must be running.
    type: str
    required: true
  uri:
    description: libvirt connection URI of the hypervisor, for example V(qemu+ssh://root@hv1/system).
    type: str
    default: qemu:///system
  src:
    description: Local file on the controller to upload. Required with O(state=present).
    type: path
  format:
    description:
      - Image format of O(src). Defaults to V(qcow2) when O(src) ends in C(.qcow2), else V(raw)
        (kernels and initramfs images are V(raw)).
    type: str
    choices: [raw, qcow2]
  state:
    description: Whether the volume should exist or not.
    type: str
    choices: [present, absent]
    default: present
  force:
    description:
      - Delete an existing volume and upload O(src) again.
      - Overlays of VMs backed by the volume then see the new content; do this only to repair a
        volume, never to change the content behind a name.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reads the pool and the image header and reports what would change; uploads nothing.
  diff_mode:
    support: full
    description: Before and after of the volume's path, format and capacity.
  idempotent:
    support: full
    description: An existing volume is left alone, so a second run reports no change.
requirements:
  - libvirt-python on the controller
notes:
  - The module runs on the controller (C(delegate_to=localhost)) and reaches the hypervisor through O(uri).
seealso:
  - module: berth.fleet.libvirt_vm
  - module: berth.fleet.guest_image
author:
  - Berth maintainers (@berth)
"""

EXAMPLES = r"""
- name: Upload the guest image's disk, kernel and initramfs
  berth.fleet.libvirt_volume:
    pool: berth
    name: "{{ guest.volumes[item] }}"
    src: "{{ guest[item] }}"
    uri: qemu+ssh://root@hv-dc1-a/system
  loop: [disk, kernel, initrd]
  delegate_to: localhost
  register: uploaded

- name: Remove an image no VM uses any more
  berth.fleet.libvirt_volume:
    pool: berth
    name: berth-base-3f2a9c.qcow2
    state: absent
  delegate_to: localhost
"""

RETURN = r"""
name:
  description: Volume name.
  returned: always
  type: str
state:
  description: State after the run (V(present) or V(absent)).
  returned: always
  type: str
path:
  description:
    - The volume's path on the hypervisor (C(vol.path())), for kernel and initrd paths and backing stores.
    - In check mode, the path the volume would get.
  returned: when present
  type: str
  sample: /var/lib/berth/pool/berth-guest-3f2a9c.vmlinuz
format:
  description: The volume's format.
  returned: when present
  type: str
capacity:
  description: The volume's capacity in bytes (the guest-visible size for qcow2).
  returned: when present
  type: int
actions:
  description: What was (or in check mode would be) done.
  returned: always
  type: list
  elements: str
diff:
  description: The volume before and after.
  returned: when diff mode is on
  type: dict
"""


from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.connection import DEFAULT_URI
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.errors import LibvirtError
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.module import run_on_hypervisor
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.storage import (
    VOLUME_FORMATS,
    VolumeSpec,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "pool": {"type": "str", "required": True},
            "uri": {"type": "str", "default": DEFAULT_URI},
            "src": {"type": "path"},
            "format": {"type": "str", "choices": list(VOLUME_FORMATS)},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "force": {"type": "bool", "default": False},
        },
        required_if=[("state", "present", ["src"])],
        supports_check_mode=True,
    )
    params = module.params
    try:
        spec = VolumeSpec.from_params(params)
    except LibvirtError as exc:
        module.fail_json(msg=str(exc))
    run_on_hypervisor(
        module, lambda hypervisor: hypervisor.ensure_volume_upload(spec, params["state"], module.check_mode)
    )


if __name__ == "__main__":
    main()
