#!/usr/bin/python
# Copyright: Berth maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: redfish_host
short_description: Power, boot and track a bare-metal host through its BMC's Redfish API
version_added: "0.1.0"
description:
  - Reads a bare-metal host's facts from its BMC (manufacturer, model, serial number, power state,
    CPUs, memory, NICs and their MAC addresses, boot override) and returns them in RV(facts).
  - Optionally sets the boot override (O(boot_device), O(boot_mode)), inserts or ejects virtual media
    (O(virtual_media)) and sets the power state (O(power)), in that order, so that a power on or a reset
    boots from what was just set.
  - Optionally moves the host along its lifecycle (O(lifecycle)), kept as one JSON file per host under
    O(lifecycle_dir); inspection checks the hardware against O(required). The lifecycle is checked
    before anything is changed on the BMC, and recorded after.
  - Runs wherever the BMC is reachable from, usually the controller (delegated to C(localhost)).
    Needs no Python packages.
options:
  bmc:
    description:
      - Address of the BMC, as a URL without path, for example V(https://10.0.0.5) or
        V(http://127.0.0.1:8000).
    type: str
    required: true
  username:
    description: BMC account, sent with HTTP basic authentication on every request.
    type: str
  password:
    description: Password of O(username). It never appears in a result, a message or a lifecycle record.
    type: str
  validate_certs:
    description: Verify the BMC's TLS certificate. V(false) only for lab BMCs with self-signed certificates.
    type: bool
    default: true
  ca_path:
    description: PEM file of the CA that signed the BMC's certificate.
    type: path
  system_id:
    description:
      - Id of the ComputerSystem to manage, for a BMC that manages several. Not needed when it manages one.
    type: str
  timeout:
    description: Seconds to wait for each answer from the BMC.
    type: float
    default: 10
  retries:
    description:
      - How many times a request is tried again after a connection failure, HTTP 5xx or 429, waiting
        0.5 s, 1 s, 2 s... in between (or what the BMC's C(Retry-After) asks, up to 60 s).
      - Actions (POST) are only tried again when the BMC cannot have carried them out. HTTP 4xx other
        than 429 is never retried.
    type: int
    default: 3
  power:
    description:
      - V(on) powers the host on; V(off) shuts it down gracefully, then forcibly after O(graceful_timeout)
        seconds; V(reset) restarts it (forcibly when the BMC offers it), or powers it on when it is off.
      - Uses the C(ComputerSystem.Reset) types the BMC advertises, and waits until the BMC reports the
        host C(On) or C(Off), at most O(power_timeout) seconds.
    type: str
    choices: ["on", "off", reset]
  graceful_timeout:
    description:
      - Seconds O(power=off) waits for a graceful shutdown before forcing the host off; V(0) forces at once.
    type: float
    default: 60
  power_timeout:
    description: Seconds to wait for the BMC to report the wanted power state after a power action.
    type: float
    default: 120
  boot_device:
    description: Boot override target. V(pxe) is the network, V(hdd) the local disk, V(cd) the (virtual) CD.
    type: str
    choices: [pxe, hdd, cd]
  boot_mode:
    description: With O(boot_device), V(once) for the next boot only, V(persistent) for every boot.
    type: str
    choices: [once, persistent]
    default: once
  virtual_media:
    description: Virtual CD/DVD of the BMC's manager (or, on newer BMCs, of the system).
    type: dict
    suboptions:
      image:
        description: URL of the ISO image the BMC downloads, required with O(virtual_media.state=inserted).
        type: str
      state:
        description:
          - V(inserted) puts O(virtual_media.image) in (ejecting another image first).
          - V(ejected) empties the drive.
        type: str
        choices: [inserted, ejected]
        default: inserted
  name:
    description: Name of the host in the lifecycle records (its file is O(lifecycle_dir)/metal/O(name).json).
    type: str
  lifecycle:
    description:
      - Lifecycle state to bring the host to. A state further along C(enrolled), C(inspected),
        C(available), C(active) walks through those in between; C(inspected) checks O(required)
        against the BMC's facts, and a host that falls short becomes C(failed) and the task fails.
      - A C(retired) or C(failed) host comes back only through V(enrolled). V(inspected) on an
        inspected host inspects it again.
    type: str
    choices: [enrolled, inspected, available, active, retired]
  lifecycle_dir:
    description: Directory of the lifecycle records, required with O(lifecycle).
    type: path
  required:
    description: Hardware the host must have to pass inspection.
    type: dict
    suboptions:
      vcpus:
        description: Minimum logical processors (C(ProcessorSummary.LogicalProcessorCount), else C(Count)).
        type: int
      memory_mib:
        description: Minimum memory in MiB (C(MemorySummary.TotalSystemMemoryGiB) times 1024).
        type: int
attributes:
  check_mode:
    support: full
    description: Reads the BMC, reports what would change; sends no POST or PATCH and writes no record.
  diff_mode:
    support: full
    description:
      - Shows the power state, the boot override, the virtual media and the lifecycle state before and after.
  idempotent:
    support: partial
    description:
      - No reset when the host is already in the wanted power state, no PATCH when the boot override
        already matches, no media action when the image is already in.
      - O(power=reset) always restarts the host.
notes:
  - C(changed) is true when a power action, a boot override PATCH, a media action or a lifecycle change
    was made.
  - Some BMCs (and sushy-tools) report C(BootSourceOverrideEnabled=Continuous) whatever was set; the
    module then warns, and O(boot_mode=once) is set again on every run.
seealso:
  - name: DMTF Redfish specification
    description: The ComputerSystem, Reset and VirtualMedia resources this module uses.
    link: https://www.dmtf.org/standards/redfish
author:
  - Berth maintainers (@berth)
"""

EXAMPLES = r"""
- name: Read the host's facts
  berth.fleet.redfish_host:
    bmc: "https://{{ bmc_address }}"
    username: "{{ bmc_user }}"
    password: "{{ bmc_password }}"
    ca_path: /etc/berth/bmc-ca.pem
  delegate_to: localhost
  register: bmc

- name: Boot from the network once, then restart
  berth.fleet.redfish_host:
    bmc: "https://{{ bmc_address }}"
    username: "{{ bmc_user }}"
    password: "{{ bmc_password }}"
    boot_device: pxe
    boot_mode: once
    power: reset
  delegate_to: localhost

- name: Enroll and inspect, then offer the host
  berth.fleet.redfish_host:
    bmc: "https://{{ bmc_address }}"
    username: "{{ bmc_user }}"
    password: "{{ bmc_password }}"
    name: "{{ inventory_hostname }}"
    lifecycle: available
    lifecycle_dir: "{{ playbook_dir }}/../state"
    required:
      vcpus: 16
      memory_mib: 65536
  delegate_to: localhost

- name: Install from an ISO through virtual media
  berth.fleet.redfish_host:
    bmc: "https://{{ bmc_address }}"
    username: "{{ bmc_user }}"
    password: "{{ bmc_password }}"
    virtual_media:
      image: http://10.0.0.1/images/installer.iso
      state: inserted
    boot_device: cd
    power: reset
  delegate_to: localhost

- name: Shut down, forcing after two minutes, and retire
  berth.fleet.redfish_host:
    bmc: "https://{{ bmc_address }}"
    username: "{{ bmc_user }}"
    password: "{{ bmc_password }}"
    power: "off"
    graceful_timeout: 120
    name: "{{ inventory_hostname }}"
    lifecycle: retired
    lifecycle_dir: "{{ playbook_dir }}/../state"
  delegate_to: localhost
"""

RETURN = r"""
facts:
  description: The host as the BMC reports it after the task (in check mode, as it would be).
  returned: always
  type: dict
  contains:
    id:
      description: The ComputerSystem's Id.
      type: str
    uri:
      description: The ComputerSystem's path on the BMC.
      type: str
    name:
      description: The ComputerSystem's Name.
      type: str
    uuid:
      description: The ComputerSystem's UUID.
      type: str
    manufacturer:
      description: Manufacturer, when reported.
      type: str
    model:
      description: Model, when reported.
      type: str
    serial_number:
      description: Serial number, when reported.
      type: str
    power_state:
      description: V(On), V(Off), V(PoweringOn), V(PoweringOff) or V(Paused).
      type: str
    processor_count:
      description: C(ProcessorSummary.Count) (processors, often sockets).
      type: int
    logical_processor_count:
      description: C(ProcessorSummary.LogicalProcessorCount), when reported.
      type: int
    cpus:
      description:
        - Logical processors when reported, else processors; what O(required.vcpus) is checked against.
      type: int
    memory_mib:
      description: C(MemorySummary.TotalSystemMemoryGiB) in MiB.
      type: int
    nics:
      description: Ethernet interfaces, each with C(id) and C(mac) (lower case).
      type: list
      elements: dict
    boot:
      description: Boot override, with C(target), C(enabled), C(mode) and C(allowed_targets).
      type: dict
    reset_types:
      description: The C(ComputerSystem.Reset) types the BMC accepts; null when it does not say.
      type: list
      elements: str
  sample:
    id: 437XR1138R2
    uri: /redfish/v1/Systems/437XR1138R2
    name: WebFrontEnd483
    uuid: 38947555-7742-3448-3784-823347823834
    manufacturer: Contoso
    model: 3500RX
    serial_number: 437XR1138R2
    power_state: "On"
    processor_count: 2
    logical_processor_count: 16
    cpus: 16
    memory_mib: 98304
    nics: [{id: "1", mac: "12:44:6a:3b:04:11"}]
    boot: {target: Pxe, enabled: Once, mode: UEFI, allowed_targets: [None, Pxe, Cd, Hdd]}
    reset_types: ["On", ForceOff, GracefulShutdown, GracefulRestart, ForceRestart]
actions:
  description: What was done on the BMC (in check mode, what would be), in order.
  returned: always
  type: list
  elements: str
  sample: [boot override Pxe Once, ForceRestart]
waited:
  description: Seconds spent waiting for the power state.
  returned: always
  type: float
  sample: 12.4
virtual_media:
  description: The virtual CD/DVD after the task, with C(device), C(inserted) and C(image).
  returned: when O(virtual_media) is set
  type: dict
  sample: {device: Cd, inserted: true, image: "http://10.0.0.1/images/installer.iso"}
lifecycle:
  description: The host's lifecycle record after the task.
  returned: when O(lifecycle) is set
  type: dict
  contains:
    host:
      description: O(name).
      type: str
    state:
      description: The lifecycle state.
      type: str
    reason:
      description: Why the host is C(failed); null otherwise.
      type: str
    steps:
      description: The states gone through (in check mode, that would be).
      type: list
      elements: str
    hardware:
      description:
        - What inspection recorded (C(cpus), C(memory_mib), C(manufacturer), C(model), C(serial_number),
          C(macs)).
      type: dict
    path:
      description: The record's file.
      type: str
  sample:
    host: metal-1
    state: available
    reason: null
    steps: [enrolled, inspected, available]
    hardware:
      cpus: 16
      memory_mib: 98304
      manufacturer: Contoso
      model: 3500RX
      serial_number: 437XR1138R2
      macs: ["12:44:6a:3b:04:11"]
    path: /srv/berth/state/metal/metal-1.json
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.drivers.metal.lifecycle import (
    Lifecycle,
    LifecycleRequest,
    MetalError,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.errors import RedfishError
from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.host import BmcRequest, connect

ARGUMENT_SPEC = {
    "bmc": {"type": "str", "required": True},
    "username": {"type": "str"},
    "password": {"type": "str", "no_log": True},
    "validate_certs": {"type": "bool", "default": True},
    "ca_path": {"type": "path"},
    "system_id": {"type": "str"},
    "timeout": {"type": "float", "default": 10},
    "retries": {"type": "int", "default": 3},
    "power": {"type": "str", "choices": ["on", "off", "reset"]},
    "graceful_timeout": {"type": "float", "default": 60},
    "power_timeout": {"type": "float", "default": 120},
    "boot_device": {"type": "str", "choices": ["pxe", "hdd", "cd"]},
    "boot_mode": {"type": "str", "choices": ["once", "persistent"], "default": "once"},
    "virtual_media": {
        "type": "dict",
        "options": {
            "image": {"type": "str"},
            "state": {"type": "str", "choices": ["inserted", "ejected"], "default": "inserted"},
        },
        "required_if": [("state", "inserted", ("image",))],
    },
    "name": {"type": "str"},
    "lifecycle": {"type": "str", "choices": ["enrolled", "inspected", "available", "active", "retired"]},
    "lifecycle_dir": {"type": "path"},
    "required": {"type": "dict", "options": {"vcpus": {"type": "int"}, "memory_mib": {"type": "int"}}},
}


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_together=[("username", "password")],
        required_by={"lifecycle": ("name", "lifecycle_dir")},
        supports_check_mode=True,
    )
    try:
        request = BmcRequest.from_params(module.params)
        lifecycle_request = LifecycleRequest.from_params(module.params)
        host = connect(request)
        before = host.read()
        lifecycle = Lifecycle(lifecycle_request) if lifecycle_request else None
        planned = (
            lifecycle.prepare(before.as_dict(), host.bmc, before.id, module.check_mode) if lifecycle else None
        )
        outcome = host.apply(request, module.check_mode, before)
        if lifecycle and planned:
            lifecycle.commit(planned, module.check_mode)
    except (RedfishError, MetalError) as exc:
        module.fail_json(msg=str(exc), exception=traceback.format_exc(), **exc.details)
    for warning in outcome.warnings:
        module.warn(warning)
    result = outcome.as_dict()
    if planned:
        planned.merge_into(result)
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
