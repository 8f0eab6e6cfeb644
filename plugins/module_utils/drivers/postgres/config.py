# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The files that make a node a member: etcd's environment file (Debian's ``etcd.service`` reads
``/etc/default/etcd``) and Patroni's ``/etc/patroni/config.yml`` (Debian's ``patroni.service``).

Everything comes from the inventory's view of the member (``berth_member_spec``, the etcd
members, the environment's name) and the vault's passwords (``berth_db_passwords``): nothing is
read from the node, so what a rerun writes is byte for byte what the first run wrote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

POSTGRESQL_BIN_DIR = "/usr/lib/postgresql/15/bin"
DATA_ROOT = "/var/lib/postgresql/15"
ETCD_DATA_DIR = "/var/lib/etcd/berth"
PATRONI_CONFIG = "/etc/patroni/config.yml"
ETCD_ENVIRONMENT = "/etc/default/etcd"

# Failover timing (Patroni's defaults are 30 / 10 / 10): the leader key lives ttl seconds, the
# HA loop runs every loop_wait, a DCS or PostgreSQL call is retried for retry_timeout. Patroni 3.2
# refuses loop_wait + 2 * retry_timeout > ttl; 3.0.2 (Debian bookworm's) does not check it, so
# Berth does (check_timing).
TTL = 20
LOOP_WAIT = 5
RETRY_TIMEOUT = 5
# a replica further behind than this may not be promoted (bytes)
MAXIMUM_LAG_ON_FAILOVER = 1 << 20
# synchronous replication needs a standby to fall back on when the synchronous one stops
SYNCHRONOUS_MIN_MEMBERS = 3

# the vault's berth_db_passwords: these keys, and one per owner role under "owners"
SYSTEM_PASSWORDS = ("postgres", "replicator", "rewind", "patroni_api")


class ConfigError(Exception):
    """A member that cannot be configured from what was given (names the variable and key)."""


def check_timing(ttl: int = TTL, loop_wait: int = LOOP_WAIT, retry_timeout: int = RETRY_TIMEOUT) -> None:
    if loop_wait + 2 * retry_timeout > ttl:
        raise ConfigError(
            f"Patroni timing: loop_wait ({loop_wait}) + 2 * retry_timeout ({retry_timeout}) must not "
            f"exceed ttl ({ttl}), or a leader may lose its key while it still retries"
        )


def password_problems(passwords: Any, owner_roles: Sequence[str], system: bool = True) -> list[str]:
    """What is missing or malformed in ``berth_db_passwords`` (the vault's), by key; never a value.
    ``system``: the cluster's own roles' too (a member needs them; an instance only its owner's)."""
    if not isinstance(passwords, Mapping):
        return [
            "berth_db_passwords: expected a mapping (from the vault: postgres, replicator, rewind, "
            f"patroni_api, owners.<role>), got {type(passwords).__name__}"
        ]
    problems = []
    wanted = [(key, passwords.get(key)) for key in SYSTEM_PASSWORDS] if system else []
    owners = passwords.get("owners", {})
    if not isinstance(owners, Mapping):
        problems.append("berth_db_passwords.owners: expected a mapping of owner role to password")
        owners = {}
    wanted += [(f"owners.{role}", owners.get(role)) for role in owner_roles]
    for key, value in wanted:
        if not isinstance(value, str) or not value:
            problems.append(f"berth_db_passwords.{key}: expected a password (a non-empty string)")
        elif len(value) < 12:
            problems.append(f"berth_db_passwords.{key}: expected at least 12 characters")
        elif any(ch in value for ch in "\n\r\0'\\"):
            problems.append(
                f"berth_db_passwords.{key}: expected no newline, NUL, quote or backslash (it goes into "
                "connection strings)"
            )
    return problems


def _require(passwords: Mapping[str, Any], owner_roles: Sequence[str]) -> None:
    problems = password_problems(passwords, owner_roles)
    if problems:
        raise ConfigError("; ".join(problems))


def etcd_environment(
    member: Mapping[str, Any], dcs_members: Sequence[Mapping[str, Any]], environment: str
) -> str:
    """``/etc/default/etcd`` of a dcs member: a new cluster of every dcs member, advertising the
    member's lab address (Patroni follows the advertised client URLs: never localhost)."""
    name = member["name"]
    me = next((m for m in dcs_members if m["name"] == name), None)
    if me is None:
        raise ConfigError(f"{name} is not an etcd member of this inventory (berth_dcs_members)")
    peer = f"http://{me['address']}:{me['peer_port']}"
    client = f"http://{me['address']}:{me['client_port']}"
    initial = ",".join(f"{m['name']}=http://{m['address']}:{m['peer_port']}" for m in dcs_members)
    values = {
        "ETCD_NAME": name,
        "ETCD_DATA_DIR": ETCD_DATA_DIR,
        "ETCD_LISTEN_PEER_URLS": peer,
        "ETCD_LISTEN_CLIENT_URLS": f"{client},http://127.0.0.1:{me['client_port']}",
        "ETCD_ADVERTISE_CLIENT_URLS": client,
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": peer,
        "ETCD_INITIAL_CLUSTER": initial,
        "ETCD_INITIAL_CLUSTER_STATE": "new",
        "ETCD_INITIAL_CLUSTER_TOKEN": f"berth-{environment}",
    }
    lines = ["# Managed by Berth (role berth.fleet.database): etcd, Patroni's store"]
    lines += [f'{key}="{value}"' for key, value in values.items()]
    return "\n".join(lines) + "\n"


def patroni_config(
    member: Mapping[str, Any],
    spec: Mapping[str, Any],
    dcs_members: Sequence[Mapping[str, Any]],
    environment: str,
    passwords: Mapping[str, Any],
) -> dict[str, Any]:
    """Patroni's configuration of one database member (``member``: name and address;
    ``spec``: its ``berth_member_spec``). Cluster-wide settings are in ``bootstrap.dcs``: Patroni
    writes them to etcd once, when it initialises the cluster, and ignores them afterwards."""
    check_timing()
    access = spec.get("access") or {}
    owner_roles = [owner["role"] for owner in access.get("owners", [])]
    _require(passwords, owner_roles)
    if not dcs_members:
        raise ConfigError(
            "berth_dcs_members: a database cluster needs etcd members (environment.databases.dcs)"
        )
    address = member["address"]
    cluster = spec["cluster"]
    synchronous = int(spec["members"]) >= SYNCHRONOUS_MIN_MEMBERS
    parameters = {
        "wal_level": "replica",
        "hot_standby": "on",
        "wal_log_hints": "on",
        "max_connections": 100,
        "max_wal_senders": 10,
        "max_replication_slots": 10,
        "wal_keep_size": "128MB",
        "password_encryption": "scram-sha-256",
    }
    dcs: dict[str, Any] = {
        "ttl": TTL,
        "loop_wait": LOOP_WAIT,
        "retry_timeout": RETRY_TIMEOUT,
        "maximum_lag_on_failover": MAXIMUM_LAG_ON_FAILOVER,
        "synchronous_mode": synchronous,
        "postgresql": {"use_pg_rewind": True, "use_slots": True, "parameters": parameters},
    }
    if synchronous:
        dcs["synchronous_node_count"] = 1
    return {
        "scope": cluster,
        "namespace": f"/berth/{environment}/",
        "name": member["name"],
        "log": {"level": "INFO"},
        "restapi": {
            "listen": f"{address}:8008",
            "connect_address": f"{address}:8008",
            # unsafe endpoints (switchover, restart, config) need it; health checks do not
            "authentication": {"username": "berth", "password": passwords["patroni_api"]},
        },
        "etcd3": {
            "protocol": "http",
            "hosts": [f"{m['address']}:{m['client_port']}" for m in dcs_members],
        },
        "bootstrap": {
            "dcs": dcs,
            "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
        },
        "postgresql": {
            "listen": f"{address},127.0.0.1:5432",
            "connect_address": f"{address}:5432",
            "data_dir": f"{DATA_ROOT}/{cluster}",
            "bin_dir": POSTGRESQL_BIN_DIR,
            "pgpass": "/var/lib/postgresql/.pgpass-patroni",
            "authentication": {
                "superuser": {"username": "postgres", "password": passwords["postgres"]},
                "replication": {"username": "replicator", "password": passwords["replicator"]},
                "rewind": {"username": "rewind", "password": passwords["rewind"]},
            },
            "parameters": {"unix_socket_directories": "/var/run/postgresql"},
            # the one place pg_hba is written: Patroni rewrites the file on every start and reload
            "pg_hba": list(access.get("hba", [])),
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
    }
