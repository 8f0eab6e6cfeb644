#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: instance_cycle
short_description: One instance step in one run - stop, switch to a staged release, start, health gate, revert
version_added: 0.2.0
author:
  - Berth maintainers (@berth)
description:
  - The whole instance step of a rollout, on the instance's node. Stops the unit (systemd sends
    SIGTERM and waits while the service drains its in-flight requests), points the instance's
    C(current) link at the staged release O(version) (see M(berth.fleet.release)), runs
    C(systemctl daemon-reload) (the unit file may have changed), starts the unit and waits for the
    health gate (the policy of M(berth.fleet.health_gate)).
  - An instance that is already on O(version), active, whose unit file is unchanged since systemd
    loaded it, and that passes a quick gate - O(health.rise) passing checks in a row within
    max(2, 4 x O(health.rise) x O(health.interval)) seconds, without O(health.min_healthy_time) -
    is left alone (C(changed=false)). An unchanged instance failing the quick gate is restarted.
  - A release that does not start or fails its gate is switched back to the release this run
    replaced (C(previous)), started and gated again, and the task B(fails) either way; RV(reverted)
    and RV(reverted_healthy) say where the instance was left. With nothing to go back to (a first
    deploy, or O(version) was already current before the run) the unit is stopped again and the
    instance stays out.
  - The release must be staged already (M(berth.fleet.release) with
    O(berth.fleet.release#module:state=present)); if it is not, the task fails before stopping anything.
  - Every step is timed (RV(stop_seconds), RV(start_seconds), RV(risen_after), RV(waited), RV(seconds)).
extends_documentation_fragment:
  - berth.fleet.release
options:
  version:
    description: The staged release version to run.
    type: str
    required: true
  unit:
    description: The instance's systemd service unit, for example C(berth-catalog-2.service).
    type: str
    required: true
  health:
    description: The health gate (the same policy as M(berth.fleet.health_gate)).
    type: dict
    required: true
    suboptions:
      url:
        description: Health URL, checked from the node, for example V(http://127.0.0.1:8080/health).
        type: str
        required: true
      expect_status:
        description: HTTP status of a passing check.
        type: int
        default: 200
      rise:
        description: Consecutive passing checks needed.
        type: int
        default: 3
      fall:
        description:
          - Consecutive definite failures (an HTTP answer with another status) that fail the gate at
            once; a refused connection is not one. V(0) waits for the deadline.
        type: int
        default: 3
      interval:
        description: Seconds between checks (at most 5).
        type: float
        default: 0.25
      min_healthy_time:
        description: Seconds a started release must stay healthy after rising.
        type: float
        default: 2
      timeout:
        description: The deadline, in seconds, for a started release that does not answer yet.
        type: float
        default: 90
  revert_on_failure:
    description:
      - Switch back to the release this run replaced when the new one fails to start or fails its
        gate. With V(false) a failing release is left as it is (running, on O(version)) for inspection.
    type: bool
    default: true
  restart:
    description:
      - Stop and start the instance even when it is already on O(version), active and healthy (a
        fresh process - the baseline of a canary starts at the same moment as the canary).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description:
      - Stops, switches and starts nothing; reports what would be done. Runs the quick gate of an
        unchanged instance (it only observes). Fails only for what would certainly fail (the release
        is not staged, the unit does not exist).
  diff_mode:
    support: full
    description: The current version and the unit's state before and after.
  idempotent:
    support: full
    description: An instance on O(version), active and healthy is not touched.
notes:
  - Runs C(systemctl) on the node, so it needs root (O(ignore:become=true)).
seealso:
  - module: berth.fleet.release
  - module: berth.fleet.health_gate
"""

EXAMPLES = r"""
- name: Take the instance to v2 (stop, switch, start, gate; revert on failure)
  berth.fleet.instance_cycle:
    instance: catalog-2
    artifact: catalog
    version: v2
    unit: berth-catalog-2.service
    health:
      url: "http://127.0.0.1:{{ berth_port }}/health"
      rise: 3
      fall: 3
      min_healthy_time: 2
      timeout: 90
  become: true
  register: cycle
"""

RETURN = r"""
version:
  description: The version the instance's current link points at afterwards (the previous one after a revert).
  returned: always
  type: str
  sample: v2
previous:
  description: The version of the instance's previous release afterwards, if any.
  returned: always
  type: str
  sample: v1
why:
  description: Why the instance was cycled; empty when it was left alone.
  returned: always
  type: str
  sample: current is v1, not v2
actions:
  description: What was (or in check mode would be) done, in order.
  returned: always
  type: list
  elements: str
  sample:
    - stop berth-catalog-2.service
    - switch catalog-2 current to v2
    - daemon-reload
    - start berth-catalog-2.service
    - health gate passed after 2.31 s
stop_seconds:
  description: Seconds the stop took (the drain); null when the unit was not stopped.
  returned: always
  type: float
start_seconds:
  description: Seconds C(systemctl start) took; null when nothing was started.
  returned: always
  type: float
risen_after:
  description: Seconds from the first check to the rise-th passing check in a row; null when the gate failed.
  returned: always
  type: float
waited:
  description: Seconds the health gate took (to open, or to fail); for an unchanged instance, its quick gate.
  returned: always
  type: float
seconds:
  description: Seconds the whole run took.
  returned: always
  type: float
gate:
  description:
    - The last gate of O(version) - C(healthy), C(seconds), C(risen_after), C(checks), C(failures), C(error).
  returned: always
  type: dict
reverted:
  description: Whether current was switched back to the previous release.
  returned: always
  type: bool
reverted_healthy:
  description: Whether the reverted release passed its gate; null when nothing was reverted.
  returned: always
  type: bool
revert:
  description:
    - The revert's timings and gate (C(stop_seconds), C(start_seconds), C(healthy), C(error) ...);
      empty when nothing was reverted.
  returned: always
  type: dict
"""

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.common.command import subprocess_runner
from ansible_collections.berth.fleet.plugins.module_utils.common.systemd import Systemctl
from ansible_collections.berth.fleet.plugins.module_utils.drivers.node.cycle import (
    CycleError,
    CycleRequest,
    InstanceCycle,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.node.health import GatePolicy

HEALTH_OPTIONS = {
    "url": {"type": "str", "required": True},
    "expect_status": {"type": "int", "default": 200},
    "rise": {"type": "int", "default": 3},
    "fall": {"type": "int", "default": 3},
    "interval": {"type": "float", "default": 0.25},
    "min_healthy_time": {"type": "float", "default": 2.0},
    "timeout": {"type": "float", "default": 90.0},
}


# also validated on the controller by rollout_steps' action before a rollout's first step
ARGUMENT_SPEC = {
    "instance": {"type": "str", "required": True},
    "artifact": {"type": "str", "required": True},
    "version": {"type": "str", "required": True},
    "root": {"type": "path", "default": "/opt/berth"},
    "unit": {"type": "str", "required": True},
    "health": {"type": "dict", "required": True, "options": HEALTH_OPTIONS},
    "revert_on_failure": {"type": "bool", "default": True},
    "restart": {"type": "bool", "default": False},
}


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    request = CycleRequest(
        instance=params["instance"],
        artifact=params["artifact"],
        version=params["version"],
        root=Path(params["root"]),
        unit=params["unit"],
        health=GatePolicy(**params["health"]),
        revert_on_failure=params["revert_on_failure"],
        restart=params["restart"],
    )
    systemctl = Systemctl(subprocess_runner, module.get_bin_path("systemctl", required=True))
    try:
        result = InstanceCycle(request, module.check_mode, systemctl).run()
    except CycleError as exc:
        module.fail_json(msg=str(exc), **exc.result.as_dict())
    module.exit_json(**result.as_dict())


if __name__ == "__main__":
    main()
