#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: db_cluster
short_description: What Patroni says of a database cluster, waiting until it is whole
version_added: 0.6.0
author:
  - Berth maintainers (@berth)
description:
  - Reads C(GET /cluster) from the first of O(apis) that answers (Patroni's REST API of the
    cluster's members) and, with O(timeout) above 0, polls it every second until the cluster is
    whole - one running leader, and every other member of O(members) a replica that runs or
    streams within O(max_lag) bytes of it. Fails after O(timeout) seconds saying what was missing.
  - Only observes, and C(changed) is always false - the roles are Patroni's, never Berth's.
options:
  apis:
    description: REST API base URLs, for example V(http://10.70.1.40:8008).
    type: list
    elements: str
    required: true
  members:
    description: The members the cluster should have (Patroni's member names).
    type: list
    elements: str
    required: true
  max_lag:
    description: Bytes of WAL a replica may be behind and still count.
    type: int
    default: 1048576
  timeout:
    description: Seconds to wait for a whole cluster; V(0) reads once and fails if it is not whole.
    type: float
    default: 120
attributes:
  check_mode:
    support: full
    description:
      - Reads once in check mode (it changes nothing) and reports what keeps the cluster from
        whole in C(problems) instead of failing.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
  idempotent:
    support: full
    description: Only observes.
"""

EXAMPLES = r"""
- name: Wait until orders-db is whole
  berth.fleet.db_cluster:
    apis: ["http://10.70.1.40:8008"]
    members: [orders-db-1, orders-db-2, orders-db-3]
    timeout: 120
"""

RETURN = r"""
leader:
  description: The member Patroni calls leader (the primary).
  returned: success
  type: str
replicas:
  description: The other members.
  returned: success
  type: list
  elements: str
sync_standby:
  description: The synchronous standby, if the cluster runs in synchronous mode.
  returned: success
  type: str
members:
  description: Each member's name, role, state, lag, timeline and host, as Patroni reports them.
  returned: success
  type: list
  elements: dict
problems:
  description: What keeps the cluster from whole (only in check mode; otherwise the module fails).
  returned: check mode
  type: list
  elements: str
waited:
  description: Seconds until the cluster was whole.
  returned: success
  type: float
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.drivers.postgres.cluster import (
    ClusterError,
    read_cluster,
    wait_whole,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "apis": {"type": "list", "elements": "str", "required": True},
            "members": {"type": "list", "elements": "str", "required": True},
            "max_lag": {"type": "int", "default": 1 << 20},
            "timeout": {"type": "float", "default": 120.0},
        },
        supports_check_mode=True,
    )
    params = module.params
    if not params["apis"] or params["timeout"] < 0 or params["max_lag"] < 0:
        module.fail_json(msg="apis must not be empty; timeout and max_lag must not be negative")
    if module.check_mode:
        # only a look: an estate provision has not made yet has no cluster to see
        view = read_cluster(params["apis"], params["members"], params["max_lag"])
        module.exit_json(changed=False, waited=0.0, **view.as_dict())
    try:
        view, waited = wait_whole(params["apis"], params["members"], params["max_lag"], params["timeout"])
    except ClusterError as exc:
        module.fail_json(msg=f"database cluster of {', '.join(params['members'])}: {exc}")
    module.exit_json(
        changed=False, waited=waited, **{k: v for k, v in view.as_dict().items() if k != "problems"}
    )


if __name__ == "__main__":
    main()
