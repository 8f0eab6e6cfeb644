#!/usr/bin/python
# Copyright: Berth maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nspawn_host
short_description: Ensure one local lab host (a systemd-nspawn machine on a lab bridge)
version_added: "0.1.0"
description:
  - Ensures one systemd-nspawn machine booted from a shared base rootfs (see
    M(berth.fleet.base_image)) through its own overlayfs, attached to a data-center bridge inside
    the lab network namespace (see M(berth.fleet.lab_network)).
  - On creation Berth writes into the machine's upper layer its hostname, a systemd-networkd config
    with the static address and gateway for C(host0), root's C(authorized_keys), and a fresh ed25519
    SSH host key generated on the controller. The host key survives restarts and is replaced only
    when the machine is recreated.
  - The machine runs as a detached C(systemd-nspawn) process whose PID is recorded under
    O(machines_dir)/<name>/. Berth only ever signals a process after checking that it is still the
    nspawn it started for this machine.
  - Changing the address, gateway, hostname or bridge of a running machine restarts it; changing
    the limits of a running machine applies them live.
options:
  name:
    description: Machine name (1-64 lowercase letters, digits and C(-)).
    type: str
    required: true
  state:
    description:
      - V(running) creates the machine if needed, boots it and (with O(wait)) waits until SSH is ready.
      - V(stopped) and V(present) create it if needed and make sure it is not running.
      - V(absent) stops it and removes its directory, overlay and host key.
    type: str
    choices: [running, stopped, present, absent]
    default: running
  rootfs:
    description:
      - The base image rootfs, read-only lower layer (the C(rootfs) returned by M(berth.fleet.base_image)).
      - Required to create a machine; a machine cannot move to another rootfs without being recreated.
    type: path
  namespace:
    description:
      - The lab network namespace (see M(berth.fleet.lab_network)). Required to create a machine;
        an existing machine keeps its namespace when this is omitted.
    type: str
  bridge:
    description: The data-center bridge inside O(namespace). Required to create a machine.
    type: str
  address:
    description:
      - Static address with prefix on C(host0), for example V(10.77.1.10/24).
      - Required to create a machine.
    type: str
  gateway:
    description: Default gateway, normally the bridge address.
    type: str
  hostname:
    description: Hostname; defaults to O(name).
    type: str
  authorized_key:
    description: OpenSSH public key allowed to log in as root. Required to create a machine.
    type: str
  cpu_quota:
    description:
      - CPU limit in percent of one CPU (V(50) = half a core, V(150) = one and a half). Applied as a
        cgroup CFS quota on the machine's own cgroup, live if the machine is running.
      - Omitted keeps the machine's current limit; V(0) removes it.
    type: int
  memory_max:
    description:
      - Memory limit in MiB for the whole machine (at least 32), applied live if it is running.
      - Omitted keeps the machine's current limit; V(0) removes it.
    type: int
  binds:
    description:
      - Host paths bound read-write into the machine at the same path (C(systemd-nspawn --bind)),
        such as the environment's state directory for an execution node, so that jobs run there
        share the rollout journal with the controller. Each must exist on the host.
      - Takes effect when the machine boots (a running machine is restarted). Omitted keeps what the
        machine has; V([]) removes them.
    type: list
    elements: path
  machines_dir:
    description: Where machines keep their overlay, host key, console log and state.
    type: path
    default: /var/lib/berth/machines
  wait:
    description: With O(state=running), wait until sshd listens in the machine and its address is up.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait for SSH readiness.
    type: int
    default: 60
  stop_timeout:
    description: Seconds to wait for a clean power-off before the machine is killed.
    type: int
    default: 30
attributes:
  check_mode:
    support: full
    description: Lists in RV(actions) what would be done; creates, starts and stops nothing.
  diff_mode:
    support: full
    description: Shows state, hostname, address, gateway, bridge, namespace and limits before and after.
  idempotent:
    support: full
    description: A machine already in the requested state and configuration is left untouched.
notes:
  - Needs root, C(systemd-nspawn) (systemd-container), C(nsenter), C(ssh-keygen) and overlayfs on the
    controller. Works without systemd as PID 1 (C(--register=no --keep-unit)); resource limits are
    therefore written to cgroupfs directly rather than passed as C(--property).
  - O(state=present) is the same as O(state=stopped).
author:
  - Berth maintainers (@berth)
"""

EXAMPLES = r"""
- name: Boot a web host in dc1
  berth.fleet.nspawn_host:
    name: web-1
    rootfs: "{{ lab_image.rootfs }}"
    namespace: berth-lab
    bridge: bl-dc1
    address: 10.77.1.10/24
    gateway: 10.77.1.1
    authorized_key: "{{ lookup('ansible.builtin.file', 'lab_key.pub') }}"
    memory_max: 256
    cpu_quota: 50
  register: web_1

- name: Trust its host key
  ansible.builtin.known_hosts:
    path: .lab/known_hosts
    name: "{{ web_1.address }}"
    key: "{{ web_1.known_hosts_line }}"

- name: Stop it (keeps its disk and host key)
  berth.fleet.nspawn_host:
    name: web-1
    state: stopped

- name: Remove it
  berth.fleet.nspawn_host:
    name: web-1
    state: absent
"""

RETURN = r"""
name:
  description: Machine name.
  returned: always
  type: str
state:
  description: State after the run (V(running), V(stopped) or V(absent)).
  returned: always
  type: str
pid:
  description: PID of the machine's systemd-nspawn process.
  returned: when running
  type: int
address:
  description: The machine's address, without prefix.
  returned: unless absent
  type: str
  sample: 10.77.1.10
interface:
  description: The machine's address with prefix.
  returned: unless absent
  type: str
  sample: 10.77.1.10/24
hostname:
  description: The machine's hostname.
  returned: unless absent
  type: str
host_key:
  description: The machine's SSH host public key (C(ssh-ed25519 AAAA...)); null in check mode before creation.
  returned: unless absent
  type: str
known_hosts_line:
  description: C(<address> <host_key>), ready for a known_hosts file.
  returned: unless absent
  type: str
machine_dir:
  description: The machine's directory (overlay layers, state, console log).
  returned: always
  type: str
console_log:
  description: File receiving the machine's console.
  returned: always
  type: str
ready_seconds:
  description: Seconds waited for SSH readiness in this run.
  returned: when running and O(wait=true)
  type: float
memory_bytes:
  description: Memory charged to the machine's cgroup (processes and page cache).
  returned: when running
  type: int
actions:
  description: What was (or in check mode would be) done.
  returned: always
  type: list
  elements: str
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.config import STATES, MachineRequest
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.errors import NspawnError
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.machine import NspawnMachine


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "choices": list(STATES), "default": "running"},
            "rootfs": {"type": "path"},
            "namespace": {"type": "str"},
            "bridge": {"type": "str"},
            "address": {"type": "str"},
            "gateway": {"type": "str"},
            "hostname": {"type": "str"},
            "authorized_key": {"type": "str", "no_log": False},
            "cpu_quota": {"type": "int"},
            "memory_max": {"type": "int"},
            "binds": {"type": "list", "elements": "path"},
            "machines_dir": {"type": "path", "default": "/var/lib/berth/machines"},
            "wait": {"type": "bool", "default": True},
            "wait_timeout": {"type": "int", "default": 60},
            "stop_timeout": {"type": "int", "default": 30},
        },
        supports_check_mode=True,
    )
    try:
        request = MachineRequest.from_params(module.params)
        machine = NspawnMachine(request)
        outcome = machine.ensure(module.check_mode)
    except NspawnError as exc:
        module.fail_json(msg=str(exc), exception=traceback.format_exc())
    for warning in outcome.warnings:
        module.warn(warning)
    result = outcome.as_dict()
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
