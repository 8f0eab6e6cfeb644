#!/usr/bin/python
# Copyright: Berth maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lab_network
short_description: Ensure the local lab network (a namespace with one routed bridge per data center)
version_added: "0.1.0"
description:
  - Ensures one named network namespace containing one Linux bridge per data center, each with a
    gateway address, with loopback up and IPv4 forwarding on inside the namespace so that data
    centers route to each other.
  - Nothing is routed out of the machine; no veth to the root namespace and no NAT are ever created.
    Processes reach the lab by entering the namespace (C(nsenter --net=/run/netns/<namespace>)).
  - O(state=absent) deletes the namespace and everything in it.
options:
  namespace:
    description: Name of the network namespace (C(/run/netns/<namespace>)).
    type: str
    default: berth-lab
  bridges:
    description: One bridge per data center.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Bridge name, at most 15 characters.
        type: str
        required: true
      address:
        description: Gateway address with prefix, for example V(10.77.1.1/24).
        type: str
        required: true
  state:
    description: Whether the namespace should exist.
    type: str
    choices: [present, absent]
    default: present
  purge:
    description: Delete bridges in the namespace that are not listed in O(bridges).
    type: bool
    default: true
  force:
    description:
      - Delete bridges (O(purge)) or the namespace (O(state=absent)) even while machines are attached
        to them. Without it such a change fails and names the attached interfaces.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Lists in RV(actions) what would be done; changes nothing.
  diff_mode:
    support: full
    description: Shows the namespace state, each bridge's address and IP forwarding before and after.
  idempotent:
    support: full
    description: A network already as declared is left untouched.
notes:
  - Needs root and iproute2.
author:
  - Berth maintainers (@berth)
"""

EXAMPLES = r"""
- name: Two data centers in one lab namespace
  berth.fleet.lab_network:
    namespace: berth-lab
    bridges:
      - {name: bl-dc1, address: 10.77.1.1/24}
      - {name: bl-dc2, address: 10.77.2.1/24}

- name: Remove the lab network
  berth.fleet.lab_network:
    namespace: berth-lab
    state: absent
"""

RETURN = r"""
namespace:
  description: The namespace name.
  returned: always
  type: str
  sample: berth-lab
netns_path:
  description: Path to pass to C(nsenter --net=).
  returned: always
  type: str
  sample: /run/netns/berth-lab
bridges:
  description: Bridge name to address, as it is after the run.
  returned: always
  type: dict
  sample: {bl-dc1: 10.77.1.1/24}
actions:
  description: What was (or in check mode would be) done, in order.
  returned: always
  type: list
  elements: str
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.local.labnet import (
    LabNetError,
    LabNetwork,
    LabNetworkSpec,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "namespace": {"type": "str", "default": "berth-lab"},
            "bridges": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": {
                    "name": {"type": "str", "required": True},
                    "address": {"type": "str", "required": True},
                },
            },
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "purge": {"type": "bool", "default": True},
            "force": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    try:
        spec = LabNetworkSpec.from_params(module.params)
        result = LabNetwork(spec).ensure(module.check_mode).as_dict()
    except LabNetError as exc:
        module.fail_json(msg=str(exc), exception=traceback.format_exc())
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
