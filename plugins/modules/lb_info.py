#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: lb_info
short_description: Read the state of every server of HAProxy backends through the Runtime API
version_added: 0.1.0
author:
  - Berth maintainers (@berth)
description:
  - Returns, per backend and server, the admin state (ready, drain, maint), the operational state
    (UP, DOWN, ...), current sessions, weight, last health check and whether the server is in
    rotation. Used by the rollout preflight to know what is already down before touching anything.
options:
  socket:
    description: HAProxy's Runtime API socket.
    type: path
    default: /run/haproxy/admin.sock
  backends:
    description: Backends to read.
    type: list
    elements: str
    required: true
attributes:
  check_mode:
    support: full
    description: Only reads.
  diff_mode:
    support: none
    description: Only reads.
  idempotent:
    support: full
    description: Only reads.
"""

EXAMPLES = r"""
- name: What every load balancer sees of catalog
  berth.fleet.lb_info:
    backends: [be_catalog]
  delegate_to: "{{ item }}"
  loop: "{{ groups['lb'] }}"
  register: lb_state
"""

RETURN = r"""
servers:
  description:
    - backend -> server -> state (admin, operational, current_sessions, weight, check_status,
      in_rotation, ...).
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import (
    HaproxyError,
    UnixSocketTransport,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.state import read_servers


def main():
    module = AnsibleModule(
        argument_spec={
            "socket": {"type": "path", "default": "/run/haproxy/admin.sock"},
            "backends": {"type": "list", "elements": "str", "required": True},
        },
        supports_check_mode=True,
    )
    transport = UnixSocketTransport(module.params["socket"])
    servers = {}
    try:
        for backend in module.params["backends"]:
            # every server of the backend in two round trips (show servers state, show stat), not 1 + 2N
            servers[backend] = {
                name: dict(state.as_dict(), in_rotation=state.in_rotation)
                for name, state in read_servers(transport, backend).items()
            }
    except HaproxyError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, servers=servers)


if __name__ == "__main__":
    main()
