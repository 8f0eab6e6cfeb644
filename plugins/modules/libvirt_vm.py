#!/usr/bin/python
# Copyright: Berth maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: libvirt_vm
short_description: Ensure one libvirt VM booting a thin overlay of a base volume, with a cloud-init seed
version_added: "0.2.0"
description:
  - Ensures one libvirt domain on the hypervisor at O(uri), talking to it only through the libvirt API
    (local or C(qemu+ssh://)); nothing is copied to the hypervisor by other means.
  - The root disk is a thin qcow2 overlay volume C(<name>.qcow2) in O(disk.pool) whose backing store
    is O(disk.base_volume). The cloud-init NoCloud seed, when O(cloud_init) is given, is built on the
    controller and uploaded as volume C(<name>-seed.iso) in the same pool, attached read-only.
  - The domain has virtio disks and NICs, a serial console on a pty, a virtio RNG fed from
    C(/dev/urandom) (guests boot much faster with entropy) and restarts after a crash.
  - Idempotency compares what the definition means (vcpus, memory, disks, networks, boot, domain
    type, TCG cache, seed digest, autostart), never the XML text. Berth owns the whole definition;
    devices added by hand are dropped when the VM is redefined, while what libvirt assigned (uuid,
    machine type, PCI addresses, controllers) is kept so that the guest's hardware layout stays put.
  - Changing the definition of a running VM updates its persistent configuration at once. The VM
    is restarted only with O(restart_allowed=true) (graceful shutdown, then destroy after
    O(shutdown_timeout)); otherwise the module reports RV(restart_required) and warns which changes
    wait for the next boot. Nothing is ever silently left undone.
  - Missing pools, volumes or networks and a disk smaller than its base are reported before anything
    is changed. In check mode a missing pool, volume or network is only a warning, since an earlier
    task of the same play may create it.
  - A domain of the same name that Berth did not define (no Berth metadata) is never redefined.
options:
  name:
    description: Domain name; also names the VM's volumes C(<name>.qcow2) and C(<name>-seed.iso).
    type: str
    required: true
  uri:
    description: libvirt connection URI of the hypervisor, for example V(qemu+ssh://root@hv1/system).
    type: str
    default: qemu:///system
  state:
    description:
      - V(running) defines the VM if needed and starts it (or resumes it when paused).
      - V(stopped) defines the VM if needed and shuts it down gracefully (destroying it after
        O(shutdown_timeout)).
      - V(present) defines (or redefines) the VM and never changes its power state - for machines
        whose power belongs to someone else, such as the lab's emulated bare metal behind a BMC.
      - V(absent) destroys and undefines the VM and deletes its own volumes, the overlay
        C(<name>.qcow2) and the seed C(<name>-seed.iso), found through its disks or in O(disk.pool).
        No other volume, and never the base volume, is touched.
      - With V(running) or V(stopped) and none of O(disk), O(vcpus) and O(memory_mib), only the power
        state (and O(autostart), when given) of an existing VM is managed.
    type: str
    choices: [running, stopped, present, absent]
    default: running
  domain_type:
    description:
      - V(kvm) for hardware virtualisation (with C(host-passthrough) CPU), V(qemu) for TCG emulation
        where KVM is not available.
    type: str
    choices: [kvm, qemu]
    default: kvm
  vcpus:
    description: Number of virtual CPUs. Required with O(disk) and O(memory_mib).
    type: int
  memory_mib:
    description: Memory in MiB (at least 64). Required with O(disk) and O(vcpus).
    type: int
  autostart:
    description:
      - Start the VM when the hypervisor boots.
      - When omitted, V(true) for a VM described by O(disk), O(vcpus) and O(memory_mib); on a
        power-state-only call the VM keeps its current setting.
    type: bool
  restart_allowed:
    description:
      - Restart a running VM whose definition changed so that the change takes effect now.
      - When V(false) the persistent definition is still updated and RV(restart_required) is V(true).
    type: bool
    default: false
  shutdown_timeout:
    description: Seconds to wait for a graceful ACPI shutdown before the VM is destroyed.
    type: int
    default: 60
  tcg_cache_mib:
    description:
      - Size of QEMU's TCG translation block cache in MiB (C(<features><tcg><tb-cache>)). QEMU's
        default costs about 1 GiB of host memory per VM; 128 is plenty for small guests.
      - Only with O(domain_type=qemu).
    type: int
  disk:
    description:
      - The root disk. Required with O(vcpus) and O(memory_mib).
      - With O(state=absent) only O(disk.pool) is used, to find volumes of a VM that is already gone.
    type: dict
    suboptions:
      pool:
        description:
          - Storage pool holding the base volume, the overlay and the seed (see M(berth.fleet.libvirt_pool)).
        type: str
        required: true
      base_volume:
        description:
          - Volume the overlay is backed by (qcow2 or raw, detected from the volume), typically uploaded with
            M(berth.fleet.libvirt_volume).
          - An existing VM keeps the disk it has when the base changes (a newer guest image), with a
            warning; to move it, remove it (O(state=absent)) and create it again.
        type: str
      size_gib:
        description:
          - Size of the root disk in GiB; at least the virtual size of the base volume.
          - Growing it resizes the overlay (live through the running VM when it runs); shrinking is refused.
        type: int
  boot:
    description:
      - Direct kernel boot from volumes in O(disk.pool). Without it the VM boots from its first disk.
    type: dict
    suboptions:
      kernel_volume:
        description: Volume holding the kernel.
        type: str
        required: true
      initrd_volume:
        description: Volume holding the initramfs.
        type: str
      cmdline:
        description: Kernel command line, for example V(root=/dev/vda console=ttyS0).
        type: str
  networks:
    description:
      - One virtio NIC per entry, in this order, on an existing libvirt network
        (see M(berth.fleet.libvirt_network)).
      - A NIC's MAC is C(52:54:00) followed by 3 bytes of the sha256 of C(<name>:<index>), the same on
        every run, unless O(networks[].mac) is given.
    type: list
    elements: dict
    default: []
    suboptions:
      network:
        description: Name of the libvirt network.
        type: str
        required: true
      mac:
        description: Explicit unicast MAC address, overriding the derived one.
        type: str
  cloud_init:
    description:
      - A cloud-init NoCloud seed (volume label C(cidata)) built on the controller, uploaded as
        C(<name>-seed.iso) and attached as a second, read-only virtio disk.
      - The whole option is C(no_log), as user-data usually carries secrets such as SSH host private keys;
        the diff and the result show only the seed's sha256. Values of O(cloud_init.meta_data) and
        O(cloud_init.network_config) (hostnames, addresses, numbers) are not secret and are not masked in
        the module's output.
      - The seed is uploaded again only when the sha256 of its files differs from the one recorded in
        the domain's metadata; a running VM sees the new seed at its next boot.
      - Removing O(cloud_init) detaches the seed; its volume stays until O(state=absent).
    type: dict
    suboptions:
      meta_data:
        description:
          - Content of C(meta-data). C(instance-id) and C(local-hostname) default to O(name).
          - cloud-init runs its per-instance modules again when C(instance-id) changes.
        type: dict
        default: {}
      user_data:
        description: Text of C(user-data), usually starting with C(#cloud-config).
        type: str
        required: true
      network_config:
        description: Content of C(network-config) (network config version 1 or 2).
        type: dict
attributes:
  check_mode:
    support: full
    description: Reads the hypervisor, builds the seed in memory, reports what would change; changes nothing.
  diff_mode:
    support: full
    description: Before and after of the meaningful parts of the definition, power state and root disk.
  idempotent:
    support: full
    description: A second run with the same parameters reports no change.
requirements:
  - libvirt-python on the controller
  - pycdlib on the controller (only with O(cloud_init))
notes:
  - The module runs on the controller. Use C(delegate_to=localhost) (or run the play on localhost)
    with an interpreter that has libvirt-python, for example
    C(ansible_python_interpreter={{ ansible_playbook_python }}).
seealso:
  - module: berth.fleet.libvirt_pool
  - module: berth.fleet.libvirt_network
  - module: berth.fleet.libvirt_volume
author:
  - Berth maintainers (@berth)
"""

EXAMPLES = r"""
- name: A web VM on the lab hypervisor (TCG, direct kernel boot from a Berth guest image)
  berth.fleet.libvirt_vm:
    name: web-1
    uri: qemu:///system
    domain_type: qemu
    tcg_cache_mib: 128
    vcpus: 1
    memory_mib: 512
    disk:
      pool: berth
      base_volume: "{{ guest.volumes.disk }}"
      size_gib: 4
    boot:
      kernel_volume: "{{ guest.volumes.kernel }}"
      initrd_volume: "{{ guest.volumes.initrd }}"
      cmdline: "{{ guest.cmdline }}"
    networks:
      - network: berth-dc1
    cloud_init:
      meta_data:
        instance-id: web-1-v1
      user_data: "{{ lookup('ansible.builtin.template', 'user-data.j2') }}"
      network_config:
        version: 2
        ethernets:
          eth0:
            match:
              macaddress: "52:54:00:12:34:56"
            addresses: [10.77.1.10/24]
  delegate_to: localhost
  register: web_1

- name: Production hypervisor over SSH; apply a new size at once
  berth.fleet.libvirt_vm:
    name: orders-3
    uri: qemu+ssh://root@hv-dc2-a/system
    vcpus: 4
    memory_mib: 8192
    disk:
      pool: berth
      base_volume: berth-base-3f2a9c.qcow2
      size_gib: 40
    networks:
      - network: berth-dc2
        mac: "52:54:00:0a:0b:0c"
    restart_allowed: true
  delegate_to: localhost

- name: Stop a VM without restating its definition
  berth.fleet.libvirt_vm:
    name: web-1
    state: stopped
  delegate_to: localhost

- name: Remove it with its overlay and seed volumes
  berth.fleet.libvirt_vm:
    name: web-1
    state: absent
    disk:
      pool: berth
  delegate_to: localhost
"""

RETURN = r"""
name:
  description: Domain name.
  returned: always
  type: str
state:
  description: The requested state (V(running), V(stopped), V(present) or V(absent)).
  returned: always
  type: str
macs:
  description: MAC addresses of the VM's NICs, in the order of O(networks).
  returned: always
  type: list
  elements: str
  sample: ["52:54:00:6d:4c:65"]
restart_required:
  description:
    - V(true) when the VM runs with an older definition than its persistent one and was not restarted
      (O(restart_allowed=false)); the change takes effect at its next boot.
  returned: always
  type: bool
seed_sha256:
  description: sha256 of the cloud-init seed's files (not of the ISO image); null without a seed.
  returned: always
  type: str
actions:
  description: What was (or in check mode would be) done.
  returned: always
  type: list
  elements: str
diff:
  description: Meaningful parts of the VM before and after (only the seed's digest, never its content).
  returned: when diff mode is on
  type: dict
"""


from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.connection import DEFAULT_URI
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.domain import (
    DOMAIN_TYPES,
    VM_STATES,
    VmRequest,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.errors import LibvirtError
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.module import run_on_hypervisor
from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.seed import PYCDLIB_IMPORT_ERROR

ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "uri": {"type": "str", "default": DEFAULT_URI},
    "state": {"type": "str", "choices": list(VM_STATES), "default": "running"},
    "domain_type": {"type": "str", "choices": list(DOMAIN_TYPES), "default": "kvm"},
    "vcpus": {"type": "int"},
    "memory_mib": {"type": "int"},
    "autostart": {"type": "bool"},
    "restart_allowed": {"type": "bool", "default": False},
    "shutdown_timeout": {"type": "int", "default": 60},
    "tcg_cache_mib": {"type": "int"},
    "disk": {
        "type": "dict",
        "options": {
            "pool": {"type": "str", "required": True},
            "base_volume": {"type": "str"},
            "size_gib": {"type": "int"},
        },
    },
    "boot": {
        "type": "dict",
        "options": {
            "kernel_volume": {"type": "str", "required": True},
            "initrd_volume": {"type": "str"},
            "cmdline": {"type": "str"},
        },
    },
    "networks": {
        "type": "list",
        "elements": "dict",
        "default": [],
        "options": {
            "network": {"type": "str", "required": True},
            "mac": {"type": "str"},
        },
    },
    "cloud_init": {
        "type": "dict",
        "no_log": True,
        "options": {
            "meta_data": {"type": "dict", "default": {}},
            "user_data": {"type": "str", "required": True},
            "network_config": {"type": "dict"},
        },
    },
}


def _scalars(value: object) -> set[str]:
    """The strings Ansible derives from a no_log value to mask them in the output."""
    if isinstance(value, dict):
        return set().union(*(_scalars(item) for item in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(_scalars(item) for item in value)) if value else set()
    if value is None or isinstance(value, bool):
        return set()
    return {str(value)} if str(value) else set()


def unmask_public_seed_values(module: AnsibleModule) -> None:
    """Keep masking user-data but not meta-data and network-config.

    Ansible masks every string and number of a no_log dict wherever it appears in the result, as a
    substring: a hostname in meta-data would blank out the VM's name, and "version: 2" in
    network-config every "2" of every MAC and digest. Only user-data holds secrets.
    """
    cloud_init = module.params.get("cloud_init") or {}
    public = _scalars(cloud_init.get("meta_data")) | _scalars(cloud_init.get("network_config"))
    module.no_log_values.difference_update(public - _scalars(cloud_init.get("user_data")))


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if module.params["cloud_init"] and PYCDLIB_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("pycdlib"), exception=PYCDLIB_IMPORT_ERROR)
    unmask_public_seed_values(module)
    try:
        request = VmRequest.from_params(module.params)
    except LibvirtError as exc:
        module.fail_json(msg=str(exc))
    run_on_hypervisor(module, lambda hypervisor: hypervisor.ensure_vm(request, module.check_mode))


if __name__ == "__main__":
    main()
