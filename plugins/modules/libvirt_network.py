#!/usr/bin/python
# Copyright: Berth maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: libvirt_network
short_description: Ensure a libvirt network that attaches VMs to a bridge, routing nothing
version_added: "0.2.0"
description:
  - Ensures a libvirt network on the hypervisor at O(uri), running and started with libvirtd.
  - V(bridge) mode attaches VMs to an existing host bridge O(bridge)
    (C(<forward mode='bridge'/><bridge name='...'/>)); libvirt neither creates nor configures it.
  - V(isolated) mode has libvirt create the bridge O(bridge) with no C(<forward>), no address and no
    DHCP, so nothing is routed or NATed; VMs on it reach only each other.
  - A network whose definition differs (mode, bridge, addresses, DHCP) is redefined. A running one
    must then be restarted, which cuts its guests off until their interfaces are re-plugged (restart
    the VMs), so that happens only with O(restart_allowed=true); otherwise the module fails and says
    what differs.
options:
  name:
    description: Network name.
    type: str
    required: true
  uri:
    description: libvirt connection URI of the hypervisor, for example V(qemu+ssh://root@hv1/system).
    type: str
    default: qemu:///system
  state:
    description: Whether the network should exist (and run) or not.
    type: str
    choices: [present, absent]
    default: present
  mode:
    description: V(bridge) to use an existing host bridge, V(isolated) for a bridge libvirt creates.
    type: str
    choices: [bridge, isolated]
    default: bridge
  bridge:
    description: The Linux bridge (at most 15 characters). Required with O(state=present).
    type: str
  restart_allowed:
    description: Redefine and restart a running network whose definition differs.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reads the network and reports what would change; changes nothing.
  diff_mode:
    support: full
    description: Before and after of the network's state, mode, bridge, addresses, DHCP and autostart.
  idempotent:
    support: full
    description: A second run with the same parameters reports no change.
requirements:
  - libvirt-python on the controller
notes:
  - The module runs on the controller (C(delegate_to=localhost)) and reaches the hypervisor through O(uri).
seealso:
  - module: berth.fleet.libvirt_vm
author:
  - Berth maintainers (@berth)
"""

EXAMPLES = r"""
- name: VMs of dc1 join the data-center bridge the host already has
  berth.fleet.libvirt_network:
    name: berth-dc1
    mode: bridge
    bridge: br-dc1
    uri: qemu+ssh://root@hv-dc1-a/system
  delegate_to: localhost

- name: A lab network that reaches nothing outside its bridge
  berth.fleet.libvirt_network:
    name: berth-lab-dc1
    mode: isolated
    bridge: bl-vm-dc1
  delegate_to: localhost
"""

RETURN = r"""
name:
  description: Network name.
  returned: always
  type: str
state:
  description: State after the run (V(running) or V(absent)).
  returned: always
  type: str
bridge:
  description: The bridge VMs on this network are attached to.
  returned: when present
  type: str
actions:
  description: What was (or in check mode would be) done.
  returned: always
  type: list
  elements: str
diff:
  description: The network before and after.
  returned: when diff mode is on
  type: dict
"""


from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.connection import DEFAULT_URI
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.errors import LibvirtError
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.module import run_on_hypervisor
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.network import (
    NETWORK_MODES,
    NetworkSpec,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "uri": {"type": "str", "default": DEFAULT_URI},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "mode": {"type": "str", "choices": list(NETWORK_MODES), "default": "bridge"},
            "bridge": {"type": "str"},
            "restart_allowed": {"type": "bool", "default": False},
        },
        required_if=[("state", "present", ["bridge"])],
        supports_check_mode=True,
    )
    params = module.params
    try:
        spec = NetworkSpec.from_params(params)
    except LibvirtError as exc:
        module.fail_json(msg=str(exc))
    run_on_hypervisor(
        module,
        lambda hypervisor: hypervisor.ensure_network(
            params["name"], spec, module.check_mode, restart_allowed=params["restart_allowed"]
        ),
    )


if __name__ == "__main__":
    main()
