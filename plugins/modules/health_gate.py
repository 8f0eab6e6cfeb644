#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: health_gate
short_description: Wait until an instance passes its health check rise times in a row and stays healthy
version_added: 0.1.0
author:
  - Berth maintainers (@berth)
description:
  - Polls an HTTP health URL every O(interval) seconds. The gate opens after O(rise) consecutive
    answers with O(expect_status) followed by O(min_healthy_time) seconds without a failure (a
    failure restarts the count). Fails after O(timeout) seconds with what the last check saw.
  - Only observes, never changes anything (C(changed) is always false). In check mode it does not wait.
options:
  url:
    description: Health URL, normally checked from the instance's own node, for example V(http://127.0.0.1:8080/health).
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
  interval:
    description: Seconds between checks (at most 5).
    type: float
    default: 0.25
  min_healthy_time:
    description: Seconds the instance must stay healthy after rising.
    type: float
    default: 2
  timeout:
    description:
      - The progress deadline, in seconds, for an instance that does not answer yet (still starting).
    type: float
    default: 60
  fall:
    description:
      - Consecutive definite failures (an HTTP answer with another status than O(expect_status)) that
        fail the gate at once, before the deadline. A connection that is refused or times out is not
        a definite failure. V(0) waits for the deadline whatever the instance answers.
    type: int
    default: 3
attributes:
  check_mode:
    support: full
    description: Does not wait in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
  idempotent:
    support: full
    description: Only observes.
"""

EXAMPLES = r"""
- name: Health gate
  berth.fleet.health_gate:
    url: "http://127.0.0.1:{{ berth_port }}{{ berth_service_spec.health.path }}"
    expect_status: "{{ berth_service_spec.health.status }}"
    rise: 3
    min_healthy_time: 2
    timeout: 60
"""

RETURN = r"""
waited:
  description: Seconds until the gate opened.
  returned: success
  type: float
risen_after:
  description: Seconds until the rise-th consecutive passing check.
  returned: success
  type: float
checks:
  description: Checks made.
  returned: success
  type: int
failures:
  description: Failing checks seen on the way.
  returned: success
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.drivers.node.health import (
    GatePolicy,
    HealthGateError,
    wait_healthy,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "expect_status": {"type": "int", "default": 200},
            "rise": {"type": "int", "default": 3},
            "interval": {"type": "float", "default": 0.25},
            "min_healthy_time": {"type": "float", "default": 2.0},
            "timeout": {"type": "float", "default": 60.0},
            "fall": {"type": "int", "default": 3},
        },
        supports_check_mode=True,
    )
    policy = GatePolicy(**module.params)
    try:
        policy.validate()
        if module.check_mode:
            module.exit_json(changed=False, msg="check mode: not waiting")
        outcome = wait_healthy(policy)
    except HealthGateError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(
        changed=False,
        waited=outcome.waited,
        risen_after=outcome.risen_after,
        checks=outcome.checks,
        failures=outcome.failures,
        history=outcome.history,
    )


if __name__ == "__main__":
    main()
