#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: db_owners
short_description: Each service's owner role and database on its cluster's primary
version_added: 0.6.0
author:
  - Berth maintainers (@berth)
description:
  - Runs on a cluster's primary and connects to it over 127.0.0.1 as the superuser. For each of
    O(owners), it creates the login role and the database it owns when missing, closes the database
    to PUBLIC (only its owner may connect), and sets the role's password again only when a login
    with O(owners[].password) fails - a password is never read back or shown.
  - Needs psycopg2 on the host (the base image's C(python3-psycopg2)).
options:
  owners:
    description: The owner roles and their databases.
    type: list
    elements: dict
    required: true
    suboptions:
      role:
        description: The owner role (a PostgreSQL name).
        type: str
        required: true
      database:
        description: The database it owns.
        type: str
        required: true
      password:
        description: The role's password (from the vault).
        type: str
        required: true
  superuser_password:
    description: The password of C(postgres) (from the vault).
    type: str
    required: true
  port:
    description: PostgreSQL's port on the host.
    type: int
    default: 5432
attributes:
  check_mode:
    support: full
    description: Says what it would create or set, and does nothing.
  diff_mode:
    support: none
    description: No diff (a diff would show a password).
  idempotent:
    support: full
    description: A second run changes nothing.
requirements:
  - psycopg2 (python3-psycopg2) on the database member
"""

EXAMPLES = r"""
- name: Owners
  berth.fleet.db_owners:
    owners:
      - {role: orders, database: orders, password: "{{ berth_db_passwords.owners.orders }}"}
    superuser_password: "{{ berth_db_passwords.postgres }}"
  no_log: true
"""

RETURN = r"""
created_roles:
  description: Roles made.
  returned: success
  type: list
  elements: str
passwords_set:
  description: Roles whose password was set again (a login with the vault's failed).
  returned: success
  type: list
  elements: str
created_databases:
  description: Databases made.
  returned: success
  type: list
  elements: str
closed_to_public:
  description: Databases PUBLIC could connect to, now closed.
  returned: success
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.drivers.postgres.owners import (
    Owner,
    OwnersError,
    ensure_owners,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "owners": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": {
                    "role": {"type": "str", "required": True},
                    "database": {"type": "str", "required": True},
                    "password": {"type": "str", "required": True, "no_log": True},
                },
            },
            "superuser_password": {"type": "str", "required": True, "no_log": True},
            "port": {"type": "int", "default": 5432},
        },
        supports_check_mode=True,
    )
    owners = [Owner(o["role"], o["database"], o["password"]) for o in module.params["owners"]]
    try:
        result = ensure_owners(
            owners, module.params["superuser_password"], module.check_mode, module.params["port"]
        )
    except OwnersError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result.as_dict())


if __name__ == "__main__":
    main()
