#!/usr/bin/python
# Copyright: Berth maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lab_bmc
short_description: Run the emulated BMC of a lab's bare-metal host (a sushy-tools Redfish emulator)
version_added: "0.2.0"
description:
  - A lab has no physical machines. Each bare-metal host of a lab topology is played by a libvirt
    domain that nobody but its BMC powers on, and its BMC is a C(sushy-emulator) process serving exactly
    that domain, on the loopback address and port of the host's O(address), with HTTP basic auth.
  - V(running) starts the emulator unless Berth's record says it already runs with the same domain,
    address and credentials; a different configuration restarts it. The password is stored only as a
    bcrypt hash in a 0600 htpasswd file under O(base_dir)/<name>/.
  - V(stopped) stops only an emulator whose pid and start time Berth recorded, and removes its files.
  - For the local lab only; a real estate has real BMCs.
options:
  name:
    description: The bare-metal host (the topology's machine name).
    type: str
    required: true
  domain:
    description: The libvirt domain that plays the host. Required with O(state=running).
    type: str
  address:
    description: The BMC URL, C(http://127.0.0.1:<port>). Required with O(state=running).
    type: str
  username:
    description: BMC user. Required with O(state=running).
    type: str
  password:
    description: BMC password. Required with O(state=running).
    type: str
  uri:
    description: libvirt URI of the emulated host's domain.
    type: str
    default: qemu:///system
  base_dir:
    description: Where each emulator keeps its configuration, htpasswd, log and Berth's record.
    type: path
    default: /run/berth/bmc
  state:
    description: Whether the emulated BMC runs.
    type: str
    choices: [running, stopped]
    default: running
  timeout:
    description: Seconds to wait for the emulator to answer, or to stop.
    type: float
    default: 30
attributes:
  check_mode:
    support: full
    description: Reports whether the emulator would be started, restarted or stopped; does none of it.
  diff_mode:
    support: none
    description: RV(bmc) tells what runs.
  idempotent:
    support: full
    description: An emulator already running with the same configuration is left as it is.
notes:
  - Needs C(sushy-tools) (and C(bcrypt), which it brings) in the controller's Python.
author:
  - Berth maintainers (@berth)
"""

EXAMPLES = r"""
- name: Emulated BMC of a lab bare-metal host
  berth.fleet.lab_bmc:
    name: lab-bm-dc1
    domain: lab-metal-lab-bm-dc1
    address: http://127.0.0.1:8201
    username: berth
    password: "{{ vault_bmc_password_dc1 }}"
"""

RETURN = r"""
bmc:
  description: The host, its BMC address, the domain, the Redfish system id it serves and the emulator's pid.
  returned: always
  type: dict
"""

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.local.labbmc import BmcSpec, LabBmc, LabBmcError


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "domain": {"type": "str"},
            "address": {"type": "str"},
            "username": {"type": "str"},
            "password": {"type": "str", "no_log": True},
            "uri": {"type": "str", "default": "qemu:///system"},
            "base_dir": {"type": "path", "default": "/run/berth/bmc"},
            "state": {"type": "str", "choices": ["running", "stopped"], "default": "running"},
            "timeout": {"type": "float", "default": 30},
        },
        required_if=[("state", "running", ["domain", "address", "username", "password"])],
        supports_check_mode=True,
    )
    params = module.params
    spec = BmcSpec(
        name=params["name"],
        domain=params["domain"] or "",
        address=params["address"] or "",
        username=params["username"] or "",
        password=params["password"] or "",
        uri=params["uri"],
        base_dir=Path(params["base_dir"]),
    )
    bmc = LabBmc(spec)
    try:
        if params["state"] == "running":
            changed, status = bmc.running(module.check_mode, params["timeout"])
        else:
            changed, status = bmc.stopped(module.check_mode, params["timeout"])
    except (LabBmcError, OSError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=changed, bmc=status)


if __name__ == "__main__":
    main()
