# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: mirror_frontend
short_description: The HAProxy lines of a frontend whose service is in parallel run
version_added: 0.5.0
author:
  - Berth maintainers (@berth)
description:
  - For a service with a C(parallel_run) (its C(berth_service_spec.parallel_run)), the lines its
    user frontend gets so that HAProxy logs a copy of each sampled request of an allowed method to
    the socket of the service's C(berth-mirror) on the same load balancer, without ever waiting for
    it; an empty list for a service without one.
  - The same file provides C(mirror_files), used as C(python | berth.fleet.mirror_files), which
    returns the files C(berth-mirror) runs from (C(path), C(content), C(mode)) on a load balancer
    whose interpreter is C(python) - its systemd unit, and the modules it needs, from this
    collection's module_utils.
  - And C(parallel_targets), used as
    C(groups['lb'] | berth.fleet.parallel_targets(hostvars, trusted, candidates)) (C(trusted) and
    C(candidates) inventory hosts), which returns per load balancer the C(primary),
    C(secondary) and C(candidate) (C(address:port)) its mirror compares, turning through the lists
    so that the load balancers spread the copies; and C(parallel_results), used as
    C(hostvars | berth.fleet.parallel_results(groups['lb'], 'rollout_parallel')), which returns per
    load balancer the C(found) of its registered M(berth.fleet.parallel_run) found (C({}) where it
    has none).
options:
  _input:
    description: The service's C(berth_service_spec.parallel_run) (may be null).
    type: dict
    required: true
  service:
    description: The service.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: The copy lines of orders' frontend
  ansible.builtin.debug:
    msg: "{{ berth_service_spec.parallel_run | berth.fleet.mirror_frontend('orders') }}"
"""

RETURN = r"""
_value:
  description: HAProxy configuration lines, without indentation.
  type: list
  elements: str
"""

import os

from ansible.errors import AnsibleFilterError

from ansible_collections.berth.fleet.plugins.module_utils.drivers.mirror.copies import (
    CopyError,
    frontend_lines,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.mirror.daemon import (
    shipped_files,
    socket_for,
)
from ansible_collections.berth.fleet.plugins.module_utils.planner.parallel import ParallelError, plan_targets

MODULE_UTILS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "module_utils")


def mirror_frontend(parallel_run, service):
    if not parallel_run:
        return []
    try:
        return frontend_lines(
            socket_for(service),
            float(parallel_run.get("sample", 1)),
            list(parallel_run.get("methods") or ["GET", "HEAD"]),
        )
    except (CopyError, TypeError, ValueError) as exc:
        raise AnsibleFilterError(f"mirror_frontend: {exc}") from None


def mirror_files(python):
    try:
        return shipped_files(os.path.normpath(MODULE_UTILS), python)
    except OSError as exc:
        raise AnsibleFilterError(f"mirror_files: {exc}") from None


def _address(hostvars, host):
    values = hostvars[host]
    return f"{values.get('ansible_host') or host}:{values['berth_port']}"


def parallel_targets(lbs, hostvars, trusted, candidates):
    try:
        return plan_targets(
            list(lbs),
            [_address(hostvars, host) for host in sorted(trusted)],
            [_address(hostvars, host) for host in sorted(candidates)],
        )
    except (ParallelError, KeyError) as exc:
        raise AnsibleFilterError(f"parallel_targets: {exc}") from None


def parallel_results(hostvars, lbs, registered):
    found = {}
    for lb in lbs:
        result = hostvars[lb].get(registered) or {}
        found[lb] = dict(result.get("found") or {}) if isinstance(result, dict) else {}
    return found


class FilterModule:
    def filters(self):
        return {
            "mirror_frontend": mirror_frontend,
            "mirror_files": mirror_files,
            "parallel_targets": parallel_targets,
            "parallel_results": parallel_results,
        }
