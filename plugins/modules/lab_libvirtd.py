#!/usr/bin/python
# Copyright: Berth maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lab_libvirtd
short_description: Run the lab's libvirtd inside the lab network namespace
version_added: "0.2.0"
description:
  - A VM's bridge interface lands in libvirtd's own network namespace, so lab VMs only reach the
    lab's bridges when libvirtd runs inside the lab namespace.
  - V(running) starts C(virtlogd) and C(libvirtd) with C(nsenter --net=/run/netns/<namespace>) when
    they are not running, records their pid and start time in C(/run/berth/lab-libvirtd.json), and
    waits until C(qemu:///system) answers. A daemon already running inside the lab namespace is
    used as is. A daemon running anywhere else is left alone and the module fails, saying so.
  - V(stopped) stops only daemons that the record says Berth started (same pid and start time), and
    refuses while libvirtd still runs a domain.
  - Real hypervisors run libvirtd under systemd; this module is for the local lab only.
options:
  namespace:
    description: The lab's network namespace (C(berth_lab_namespace) of the topology inventory).
    type: str
    required: true
  state:
    description: Whether Berth's lab libvirtd should run.
    type: str
    choices: [running, stopped]
    default: running
  timeout:
    description: Seconds to wait for a daemon to start or stop.
    type: float
    default: 30
attributes:
  check_mode:
    support: full
    description: Reports whether a daemon would be started or stopped; starts or stops nothing.
  diff_mode:
    support: none
    description: RV(daemons) tells what runs.
  idempotent:
    support: full
    description: A daemon already running in the lab namespace is left as it is.
notes:
  - Needs root. Kills only processes whose pid and start time Berth recorded when it started them.
author:
  - Berth maintainers (@berth)
"""

EXAMPLES = r"""
- name: The lab's libvirtd, inside the lab namespace
  berth.fleet.lab_libvirtd:
    namespace: "{{ berth_lab_namespace }}"
"""

RETURN = r"""
daemons:
  description:
    - C(virtlogd) and C(libvirtd) as found after the run (pid, start time, whether Berth started it),
      or null when not running.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.local.labvirt import LabLibvirtd, LabVirtError


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "namespace": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["running", "stopped"], "default": "running"},
            "timeout": {"type": "float", "default": 30},
        },
        supports_check_mode=True,
    )
    lab = LabLibvirtd(module.params["namespace"])
    try:
        if module.params["state"] == "running":
            changed, daemons = lab.running(module.check_mode, module.params["timeout"])
        else:
            changed, daemons = lab.stopped(module.check_mode, module.params["timeout"])
    except (LabVirtError, OSError) as exc:
        module.fail_json(msg=str(exc), daemons=lab.status())
    module.exit_json(changed=changed, daemons=daemons)


if __name__ == "__main__":
    main()
