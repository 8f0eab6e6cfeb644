# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: ssh_targets
short_description: How ssh reaches some inventory hosts, from their Ansible connection variables
version_added: 0.3.0
author:
  - Berth maintainers (@berth)
description:
  - For each host, the C(name), C(address) (C(ansible_host)), C(port), C(user), C(private_key)
    (C(ansible_ssh_private_key_file)) and C(args) (C(ansible_ssh_common_args) and
    C(ansible_ssh_extra_args), split as a shell would) that Ansible's ssh connection uses - the
    input of M(berth.fleet.lb_traffic), which forwards each load balancer's Runtime API socket to
    the controller with them (so host keys are checked exactly as for Ansible).
  - A host whose C(ansible_connection) is not ssh is refused, naming it.
options:
  _input:
    description: C(hostvars).
    type: dict
    required: true
  hosts:
    description: The hosts.
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: The load balancers, as ssh reaches them
  ansible.builtin.debug:
    msg: "{{ hostvars | berth.fleet.ssh_targets(groups['lb']) }}"
"""

RETURN = r"""
_value:
  description: One dict per host with name, address, port, user, private_key and args.
  type: list
  elements: dict
"""

from dataclasses import asdict

from ansible.errors import AnsibleFilterError

from ansible_collections.berth.fleet.plugins.module_utils.common.sshforward import ForwardError, SshTarget


def ssh_targets(hostvars, hosts):
    try:
        return [
            {**asdict(target), "args": list(target.args)}
            for target in (SshTarget.from_hostvars(str(host), hostvars[host]) for host in hosts)
        ]
    except ForwardError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self):
        return {"ssh_targets": ssh_targets}
