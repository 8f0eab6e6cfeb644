#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: lb_config
short_description: Converge a load balancer's HAProxy files and service in one run, and report its servers
version_added: 0.3.0
author:
  - Berth maintainers (@berth)
description:
  - Compares the files the controller rendered (O(config), the HAProxy configuration, and O(files),
    for example the systemd drop-in and helper that keep server state across reloads) with what is
    on the load balancer, and only where something differs validates the new configuration with
    C(haproxy -c) before it replaces the running one, writes the changed files atomically, reloads
    systemd when a file under C(/etc/systemd/) changed, and starts and enables HAProxy or reloads it
    (seamlessly) when its configuration changed.
  - With O(backends), also returns every server of those backends as M(berth.fleet.lb_info) does,
    after the change, so one module run is the whole look at a load balancer.
  - Runs on the load balancer with the system Python; needs no Python packages.
options:
  socket:
    description: The HAProxy stats socket, to read O(backends) from.
    type: path
    default: /run/haproxy/admin.sock
  config:
    description: The HAProxy configuration, C(path) and rendered C(content) (mode 0644).
    type: dict
    required: true
  files:
    description:
      - Other files to keep as given, each with C(path), C(content) and C(mode) (an octal string, C('0644')).
    type: list
    elements: dict
    default: []
  initial_files:
    description:
      - Files written only where they do not exist yet, each with C(path), C(content) and C(mode)
        - state that is HAProxy's to change afterwards, such as the route maps of blue-green
        services (M(berth.fleet.lb_route) switches them); never compared or overwritten.
    type: list
    elements: dict
    default: []
  maps:
    description: Map files whose runtime entries to return (C(show map)), in RV(maps).
    type: list
    elements: path
    default: []
  service:
    description: The HAProxy systemd unit.
    type: str
    default: haproxy.service
  backends:
    description: Backends whose servers to return.
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: full
    description: Validates a changed configuration and reports what would be written, started or reloaded.
  diff_mode:
    support: full
    description: Each changed file before and after.
  idempotent:
    support: full
    description: Files that match and a running, enabled HAProxy are left alone.
"""

EXAMPLES = r"""
- name: HAProxy configured from the placement
  berth.fleet.lb_config:
    config:
      path: /etc/haproxy/haproxy.cfg
      content: "{{ lookup('ansible.builtin.template', 'haproxy.cfg.j2') }}"
    backends: [be_catalog]
"""

RETURN = r"""
written:
  description: The files that were (or in check mode would be) written.
  returned: success
  type: list
  elements: str
actions:
  description: What was done to the service (C(daemon-reload), C(start haproxy.service), C(reload ...)).
  returned: success
  type: list
  elements: str
servers:
  description: Per backend of O(backends), every server's state, as M(berth.fleet.lb_info) returns it.
  returned: success
  type: dict
maps:
  description: Per map file of O(maps), its runtime entries (key to value).
  returned: success
  type: dict
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.common.command import subprocess_runner
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.config import (
    ConfigRequest,
    LoadBalancerConfig,
    ManagedFile,
    read_after_checks,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.routes import read_map
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import (
    HaproxyError,
    UnixSocketTransport,
)


def managed(raw: dict[str, Any], what: str, module: AnsibleModule) -> ManagedFile:
    try:
        mode = int(str(raw.get("mode", "0644")), 8)
        return ManagedFile(str(raw["path"]), str(raw["content"]), mode)
    except (KeyError, ValueError) as exc:
        module.fail_json(msg=f"{what}: expected path, content and an octal mode ({exc})")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "socket": {"type": "path", "default": "/run/haproxy/admin.sock"},
            "config": {"type": "dict", "required": True},
            "files": {"type": "list", "elements": "dict", "default": []},
            "initial_files": {"type": "list", "elements": "dict", "default": []},
            "maps": {"type": "list", "elements": "path", "default": []},
            "service": {"type": "str", "default": "haproxy.service"},
            "backends": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    params = module.params
    request = ConfigRequest(
        config=managed(params["config"], "config", module),
        files=tuple(managed(raw, f"files[{i}]", module) for i, raw in enumerate(params["files"])),
        initial=tuple(
            managed(raw, f"initial_files[{i}]", module) for i, raw in enumerate(params["initial_files"])
        ),
        service=params["service"],
        haproxy=module.get_bin_path("haproxy") or "haproxy",
    )
    try:
        outcome = LoadBalancerConfig(request, subprocess_runner, module.check_mode).apply()
    except HaproxyError as exc:
        module.fail_json(msg=str(exc))
    transport = UnixSocketTransport(params["socket"])
    servers: dict[str, Any] = {}
    maps: dict[str, Any] = {}
    try:
        for path in params["maps"]:
            maps[path] = read_map(transport, path)
        # after a start or reload, new servers count as UP until their first check: wait for it
        seen = read_after_checks(transport, params["backends"])
        for backend, states in seen.items():
            servers[backend] = {
                name: dict(state.as_dict(), in_rotation=state.in_rotation) for name, state in states.items()
            }
    except HaproxyError as exc:
        if not module.check_mode:
            module.fail_json(msg=str(exc))
        # in check mode HAProxy may not run yet (it would be started): nothing is in rotation
        module.warn(f"cannot read the load balancer's servers yet: {exc}")
        servers = {backend: {} for backend in params["backends"]}
        maps = {path: {} for path in params["maps"]}
    result: dict[str, Any] = dict(outcome.as_dict(), servers=servers, maps=maps)
    if module._diff:
        result["diff"] = outcome.diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
