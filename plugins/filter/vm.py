# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: vm_seed
short_description: The cloud-init NoCloud seed of one Berth VM
version_added: 0.2.0
author:
  - Berth maintainers (@berth)
description:
  - Builds the C(cloud_init) argument of M(berth.fleet.libvirt_vm) for a node of the
    C(berth.fleet.nodes) filter - hostname, static address on C(eth0) (matched by the VM's stable MAC),
    root's authorized keys and the VM's own SSH host key, which Berth generated beforehand.
  - The result carries a private key; pass it straight to the module, which masks it.
options:
  _input:
    description: A node from C(berth.fleet.nodes).
    type: dict
    required: true
  host_key_private:
    description: The VM's OpenSSH ed25519 private host key.
    type: str
    required: true
  host_key_public:
    description: Its public half.
    type: str
    required: true
  authorized_keys:
    description: Public keys allowed to log in as root.
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
cloud_init: >-
  {{ node | berth.fleet.vm_seed(lookup('file', key), lookup('file', key ~ '.pub'), [operator_key]) }}
"""

RETURN = r"""
_value:
  description: C(meta_data), C(user_data) (a C(#cloud-config) document) and C(network_config).
  type: dict
"""

from collections.abc import Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.domain import stable_mac
from ansible_collections.berth.fleet.plugins.module_utils.local.guestimage import GuestImageError, guest_seed


def vm_seed(
    node: Mapping[str, Any], host_key_private: str, host_key_public: str, authorized_keys: Sequence[str]
) -> dict[str, Any]:
    try:
        return guest_seed(
            node, stable_mac(node["name"], 0), host_key_private, host_key_public, authorized_keys
        )
    except GuestImageError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"vm_seed": vm_seed}
