#!/usr/bin/python
# Copyright: Berth maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: libvirt_pool
short_description: Ensure a libvirt directory storage pool
version_added: "0.2.0"
description:
  - Ensures a C(dir) storage pool on the hypervisor at O(uri), defined, built (its directory
    created), running and, with O(autostart), started with libvirtd.
  - An existing pool at another path, or of another type, is reported and left alone; remove it
    first to move it.
  - O(state=absent) stops and undefines the pool and deletes its directory. A pool that still holds
    volumes is refused unless O(force=true), which deletes the volumes with it.
options:
  name:
    description: Pool name.
    type: str
    required: true
  uri:
    description: libvirt connection URI of the hypervisor, for example V(qemu+ssh://root@hv1/system).
    type: str
    default: qemu:///system
  path:
    description: Absolute path of the pool's directory on the hypervisor. Required with O(state=present).
    type: path
  state:
    description: Whether the pool should exist (and run) or not.
    type: str
    choices: [present, absent]
    default: present
  autostart:
    description: Start the pool when libvirtd starts.
    type: bool
    default: true
  force:
    description: With O(state=absent), delete the pool's volumes too instead of refusing.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reads the pool and reports what would change; changes nothing.
  diff_mode:
    support: full
    description: Before and after of the pool's state, type, path and autostart.
  idempotent:
    support: full
    description: A second run with the same parameters reports no change.
requirements:
  - libvirt-python on the controller
notes:
  - The module runs on the controller (C(delegate_to=localhost)) and reaches the hypervisor through O(uri).
seealso:
  - module: berth.fleet.libvirt_volume
  - module: berth.fleet.libvirt_vm
author:
  - Berth maintainers (@berth)
"""

EXAMPLES = r"""
- name: The pool holding Berth's base images and VM disks
  berth.fleet.libvirt_pool:
    name: berth
    path: /var/lib/berth/pool
    uri: qemu+ssh://root@hv-dc1-a/system
  delegate_to: localhost

- name: Remove a lab pool with whatever it still holds
  berth.fleet.libvirt_pool:
    name: berth-lab
    state: absent
    force: true
  delegate_to: localhost
"""

RETURN = r"""
name:
  description: Pool name.
  returned: always
  type: str
state:
  description: State after the run (V(running) or V(absent)).
  returned: always
  type: str
path:
  description: The pool's directory on the hypervisor.
  returned: when present
  type: str
  sample: /var/lib/berth/pool
actions:
  description: What was (or in check mode would be) done.
  returned: always
  type: list
  elements: str
diff:
  description: The pool before and after.
  returned: when diff mode is on
  type: dict
"""


from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.connection import DEFAULT_URI
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.errors import LibvirtError
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.module import run_on_hypervisor
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.storage import PoolSpec


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "uri": {"type": "str", "default": DEFAULT_URI},
            "path": {"type": "path"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "autostart": {"type": "bool", "default": True},
            "force": {"type": "bool", "default": False},
        },
        required_if=[("state", "present", ["path"])],
        supports_check_mode=True,
    )
    params = module.params
    try:
        spec = PoolSpec.from_params(params)
    except LibvirtError as exc:
        module.fail_json(msg=str(exc))
    run_on_hypervisor(
        module,
        lambda hypervisor: hypervisor.ensure_pool(
            spec, params["state"], module.check_mode, force=params["force"]
        ),
    )


if __name__ == "__main__":
    main()
