# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: contract_refusal
short_description: Why a release's contract migrations may not run now (another version in rotation)
version_added: 0.6.0
author:
  - Berth maintainers (@berth)
description:
  - Used as C(in_rotation | berth.fleet.contract_refusal(version)), where C(in_rotation) is, per
    load balancer, each instance it sends requests to and the version it runs (the filter
    C(migrations_in_rotation) gives it from the deploy's query), returns the reason a contract of
    O(version) is refused, or an empty string when nothing of another version is in rotation.
  - The same file provides C(migrations_in_rotation), used as
    C(hostvars | berth.fleet.migrations_in_rotation(hosts, lbs, backends)); and
    C(rollback_refusal), used as C(ledger | berth.fleet.rollback_refusal(target, target_migrations, verb)),
    the reason a deploy or rollback (C(verb)) of C(target) is refused (a contract ran that the target
    does not carry), or an empty string; and C(migration_runner), used as
    C(hostvars | berth.fleet.migration_runner(hosts)), the instance a service's migrations run from.
options:
  _input:
    description: Per load balancer, instance to the version it runs.
    type: dict
    required: true
  version:
    description: The release whose contract would run.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Contract gate
  ansible.builtin.assert:
    that: (in_rotation | berth.fleet.contract_refusal('v2')) | length == 0
"""

RETURN = r"""
_value:
  description: The reason, or an empty string.
  type: str
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.berth.fleet.plugins.module_utils.planner import migrations


def contract_refusal(in_rotation, version):
    return migrations.contract_refusal(str(version), dict(in_rotation or {})) or ""


def migrations_in_rotation(hostvars, hosts, lbs, backends):
    return migrations.in_rotation_from_inventory(hostvars, list(hosts), list(lbs), list(backends))


def migration_runner(hostvars, hosts):
    return migrations.runner(hostvars, list(hosts or []))


def rollback_refusal(ledger, target, target_migrations, verb="rollback"):
    try:
        release = migrations.parse_migrations(list(target_migrations or []), f"release {target}")
        return (
            migrations.rollback_refusal(str(target), release, migrations.parse_ledger(ledger), str(verb))
            or ""
        )
    except (migrations.MigrationError, KeyError, TypeError) as exc:
        raise AnsibleFilterError(f"rollback_refusal: {exc}") from None


class FilterModule:
    def filters(self):
        return {
            "contract_refusal": contract_refusal,
            "migrations_in_rotation": migrations_in_rotation,
            "migration_runner": migration_runner,
            "rollback_refusal": rollback_refusal,
        }
