# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: patroni_config
short_description: Patroni's configuration of a database member, from the placement and the vault
version_added: 0.6.0
author:
  - Berth maintainers (@berth)
description:
  - Used as C(member | berth.fleet.patroni_config(berth_member_spec, berth_dcs_members,
    berth_environment, berth_db_passwords)), where C(member) has the member's C(name) and
    C(address), returns the member's
    C(/etc/patroni/config.yml) as a mapping (scope, REST API, etcd hosts, bootstrap settings that
    are cluster-wide, PostgreSQL's listen address, data directory, roles and pg_hba). It carries
    passwords - render it only in a C(no_log) task.
  - The same file provides C(etcd_environment), used as
    C(member | berth.fleet.etcd_environment(berth_dcs_members, berth_environment)),
    which returns the text of an etcd member's C(/etc/default/etcd); and C(db_password_problems),
    used as C(berth_db_passwords | berth.fleet.db_password_problems(specs, system=true)), which
    returns what is missing or malformed in the passwords that C(specs) need - database members'
    C(berth_member_spec) (their owners' roles, and with C(system) the cluster's own) or instances'
    C(berth_database) (their owner role) - by key, never a value.
options:
  _input:
    description: The member, C(name) and C(address).
    type: dict
    required: true
  spec:
    description: The member's C(berth_member_spec).
    type: dict
    required: true
  dcs_members:
    description: C(berth_dcs_members).
    type: list
    elements: dict
    required: true
  environment:
    description: C(berth_environment).
    type: str
    required: true
  passwords:
    description: C(berth_db_passwords) (from the vault).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Patroni's configuration
  ansible.builtin.copy:
    dest: /etc/patroni/config.yml
    content: >-
      {{ {'name': inventory_hostname, 'address': berth_address}
         | berth.fleet.patroni_config(berth_member_spec, berth_dcs_members,
                                      berth_environment, berth_db_passwords)
         | to_nice_yaml(indent=2) }}
    mode: "0600"
  no_log: true
"""

RETURN = r"""
_value:
  description: Patroni's configuration.
  type: dict
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.berth.fleet.plugins.module_utils.drivers.postgres import config


def patroni_config(member, spec, dcs_members, environment, passwords):
    try:
        return config.patroni_config(member, spec, dcs_members, environment, passwords)
    except (config.ConfigError, KeyError, TypeError) as exc:
        raise AnsibleFilterError(f"patroni_config: {exc}") from None


def etcd_environment(member, dcs_members, environment):
    try:
        return config.etcd_environment(member, dcs_members, environment)
    except (config.ConfigError, KeyError, TypeError) as exc:
        raise AnsibleFilterError(f"etcd_environment: {exc}") from None


def db_password_problems(passwords, member_specs, system=True):
    """``member_specs``: database members' ``berth_member_spec`` (their owners' roles), or instances'
    ``berth_database`` (their own role); ``system``: also the cluster's own roles' passwords."""
    roles = set()
    for spec in member_specs:
        spec = spec or {}
        roles |= {owner["role"] for owner in (spec.get("access") or {}).get("owners", [])}
        if isinstance(spec.get("role"), str):
            roles.add(spec["role"])
    if not member_specs:
        return []
    return config.password_problems(passwords, sorted(roles), system=bool(system))


def db_owner_logins(owners, passwords):
    """The owners of a member (``berth_member_spec.access.owners``) with their vault passwords."""
    try:
        return [
            {"role": o["role"], "database": o["database"], "password": passwords["owners"][o["role"]]}
            for o in owners
        ]
    except (KeyError, TypeError) as exc:
        raise AnsibleFilterError(
            f"db_owner_logins: berth_db_passwords.owners has no password for {exc}"
        ) from None


class FilterModule:
    def filters(self):
        return {
            "patroni_config": patroni_config,
            "etcd_environment": etcd_environment,
            "db_password_problems": db_password_problems,
            "db_owner_logins": db_owner_logins,
        }
