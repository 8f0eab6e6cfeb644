#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: db_migrate
short_description: Run a release's expand or contract migrations on its service's database, once
version_added: 0.6.0
author:
  - Berth maintainers (@berth)
description:
  - Connects to the service's database as its owner role, on the primary (O(host) may name every
    member of the cluster - libpq takes the one that accepts writes) and reads the ledger of what
    ran (table C(berth_migrations), made on first use).
  - With O(phase=expand) or O(phase=contract), runs each migration of O(migrations) of that phase
    the ledger does not hold, in order, each in one transaction with its ledger row; a contract
    needs every expand of the release to have run. A migration whose sha256 differs from the
    ledger's (edited after it ran) is refused and nothing runs. With O(phase=status) it only reads.
  - Whether a contract may run now (no other version in rotation) and whether a rollback may run
    after one are the playbooks' checks (they read C(ledger)); this module runs what it is told.
options:
  host:
    description: The primary's address, or the cluster members' addresses separated by commas.
    type: str
    required: true
  port:
    description: PostgreSQL's port on them.
    type: int
    required: true
  database:
    description: The service's database.
    type: str
    required: true
  user:
    description: Its owner role.
    type: str
    required: true
  password:
    description: The owner role's password (from the vault).
    type: str
    required: true
  version:
    description: The release whose migrations these are (recorded in the ledger).
    type: str
    required: true
  phase:
    description: What to run.
    type: str
    choices: [expand, contract, status]
    required: true
  migrations:
    description: The release's migrations as M(berth.fleet.artifact_info) returns them (id, phase, sha256,
      sql).
    type: list
    elements: dict
    default: []
attributes:
  check_mode:
    support: full
    description: Reads the ledger and says what would run; runs nothing.
  diff_mode:
    support: none
    description: The ledger before and after is in the result.
  idempotent:
    support: full
    description: A migration runs once; a second run finds it in the ledger.
requirements:
  - psycopg2 (python3-psycopg2) on the host that runs it
"""

EXAMPLES = r"""
- name: Expand migrations of v2
  berth.fleet.db_migrate:
    host: "{{ berth_database.members | join(',') }}"
    port: "{{ berth_database.member_port }}"
    database: "{{ berth_database.name }}"
    user: "{{ berth_database.role }}"
    password: "{{ berth_db_passwords.owners[berth_database.role] }}"
    version: v2
    phase: expand
    migrations: "{{ rollout_artifact.migrations }}"
"""

RETURN = r"""
applied:
  description: The ids this run ran (in check mode, the ones it would run).
  returned: success
  type: list
  elements: str
ledger:
  description: What has run on the database (id, phase, sha256, version, at), oldest first, after this run.
  returned: success
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.drivers.postgres.migrate import (
    Endpoint,
    MigrateError,
    Migrator,
    Step,
)
from ansible_collections.berth.fleet.plugins.module_utils.planner.migrations import (
    MigrationError,
    parse_ledger,
    parse_migrations,
    pending,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "required": True},
            "port": {"type": "int", "required": True},
            "database": {"type": "str", "required": True},
            "user": {"type": "str", "required": True},
            "password": {"type": "str", "required": True, "no_log": True},
            "version": {"type": "str", "required": True},
            "phase": {"type": "str", "choices": ["expand", "contract", "status"], "required": True},
            "migrations": {"type": "list", "elements": "dict", "default": []},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        release = parse_migrations(p["migrations"], f"release {p['version']}")
        sql = {str(m.get("id")): str(m.get("sql", "")) for m in p["migrations"]}
        migrator = Migrator(Endpoint(p["host"], p["port"], p["database"], p["user"], p["password"]))
        try:
            ledger = migrator.ledger(create=not module.check_mode and p["phase"] != "status")
            todo = [] if p["phase"] == "status" else pending(release, parse_ledger(ledger), p["phase"])
            if module.check_mode or not todo:
                module.exit_json(changed=False, applied=[m.id for m in todo], ledger=ledger)
            applied = migrator.run([Step(m.id, m.phase, m.sha256, sql[m.id]) for m in todo], p["version"])
            ledger = migrator.ledger(create=False)
        finally:
            migrator.close()
    except (MigrateError, MigrationError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=bool(applied), applied=applied, ledger=ledger)


if __name__ == "__main__":
    main()
