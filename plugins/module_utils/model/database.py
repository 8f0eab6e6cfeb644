# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A service's database (issue 14): what the service needs, and how each environment provides it.

A database belongs to its service, never to an instance: every instance of the service shares it,
and no other service may use it. The service declares that it has one (its name, the database's
and its owner role's, defaults to the service's, ``-`` made ``_``)::

    services:
      orders:
        ...
        database: {name: orders}

and every environment decides how it is provided, per service::

    environment:
      databases:
        shared: {members: 1, resources: {vcpus: 1, memory_mib: 512}}   # the shared cluster
        dcs: {members: 3}                 # etcd, Patroni's store (default: 1, or 3 with failover)
      services:
        orders:
          instances: 4
          database: {mode: dedicated, replicas: 2, resources: {vcpus: 1, memory_mib: 512}}
        catalog:
          instances: 4
          database: {mode: shared}

``shared``: one logical database and one owner role per service on the environment's shared
PostgreSQL cluster (``environment.databases.shared``: its members, a primary and replicas, on
machines of their own). ``dedicated``: the service's own primary and ``replicas`` replicas on
machines of their own, placed by the same spread rules as instances. Either way Patroni runs the
cluster (failover) with etcd as its store. Every value is checked here, before anything is touched.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.model.reader import Reader, describe
from ansible_collections.berth.fleet.plugins.module_utils.model.topology import (
    DATABASE_MODES,
    DEFAULT_DB_RESOURCES,
    DatabaseCluster,
    DatabaseEstate,
    DatabaseNeed,
    DatabasePlan,
    Resources,
    SharedCluster,
    Topology,
    dotted,
)

# PostgreSQL's unquoted identifiers, lower case (a role and a database Berth names itself)
IDENTIFIER_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
RESERVED = ("postgres", "template0", "template1", "replicator", "rewind", "berth")
DCS_MEMBERS = (1, 3, 5)
POSTGRESQL_PORT = 5432
ETCD_CLIENT_PORT = 2379
DCS_RESOURCES = Resources(vcpus=1, memory_mib=128)
SHARED_CLUSTER = "shared-db"
DCS_CLUSTER = "dcs"

ResourcesParser = Callable[[Any, str], Resources]


def default_database_name(service: str) -> str:
    return service.replace("-", "_")


def parse_need(reader: Reader, raw: Any, key: str, service: str) -> DatabaseNeed:
    """``services.<service>.database``: a mapping (``{}`` takes every default)."""
    body = reader.mapping(raw, key)
    reader.keys(body, key, (), ("name",))
    name = body.get("name", default_database_name(service))
    name_key = dotted(key, "name")
    if not isinstance(name, str) or not IDENTIFIER_RE.match(name):
        raise reader.fail(
            name_key,
            "expected a PostgreSQL name: lower-case letters, digits and '_', a letter or '_' first, "
            f"at most 63 characters, got {describe(name)}",
        )
    if name in RESERVED:
        raise reader.fail(
            name_key, f"expected a name of the service's own, got {name!r}: Berth uses it itself"
        )
    return DatabaseNeed(name)


def parse_plan(
    reader: Reader, raw: Any, key: str, need: DatabaseNeed | None, service: str, resources: ResourcesParser
) -> DatabasePlan:
    """``environment.services.<service>.database``, for a service that declared a database."""
    if need is None:
        raise reader.fail(
            key,
            f"{service} declares no database: give services.{service}.database (its name) first, "
            "or drop this",
        )
    body = reader.mapping(raw, key)
    reader.keys(body, key, ("mode",), ("replicas", "resources"))
    mode = reader.choice(body["mode"], dotted(key, "mode"), DATABASE_MODES)
    if mode == "shared":
        for setting in ("replicas", "resources"):
            if setting in body:
                raise reader.fail(
                    dotted(key, setting),
                    "a shared database lives on the shared cluster: its replicas and resources are "
                    "environment.databases.shared's (members, resources)",
                )
        return DatabasePlan("shared")
    return DatabasePlan(
        "dedicated",
        replicas=reader.integer(body.get("replicas", 0), dotted(key, "replicas"), 0, 8),
        resources=resources(body["resources"], dotted(key, "resources"))
        if "resources" in body
        else DEFAULT_DB_RESOURCES,
    )


def parse_estate(
    reader: Reader, raw: Any, key: str, plans: Mapping[str, DatabasePlan], resources: ResourcesParser
) -> DatabaseEstate:
    """``environment.databases``, checked against what the services' plans need of it."""
    body = reader.mapping(raw if raw is not None else {}, key)
    reader.keys(body, key, (), ("shared", "dcs"))
    users = sorted(name for name, plan in plans.items() if plan.mode == "shared")
    shared: SharedCluster | None = None
    if body.get("shared") is not None:
        s_key = dotted(key, "shared")
        s_body = reader.mapping(body["shared"], s_key)
        reader.keys(s_body, s_key, ("members",), ("resources",))
        shared = SharedCluster(
            members=reader.integer(s_body["members"], dotted(s_key, "members"), 1, 9),
            resources=resources(s_body["resources"], dotted(s_key, "resources"))
            if "resources" in s_body
            else DEFAULT_DB_RESOURCES,
        )
    elif users:
        raise reader.fail(
            dotted(key, "shared"),
            f"is required: {', '.join(users)} use(s) the shared cluster (database mode shared); "
            "give its members, e.g. shared: {members: 1}",
        )
    failover = any(plan.members > 1 for plan in plans.values()) or (shared is not None and shared.members > 1)
    dcs_key = dotted(key, "dcs")
    dcs = reader.mapping(body.get("dcs", {}), dcs_key)
    reader.keys(dcs, dcs_key, (), ("members",))
    members_key = dotted(dcs_key, "members")
    members = dcs.get("members", 3 if failover else 1)
    if isinstance(members, bool) or members not in DCS_MEMBERS:
        raise reader.fail(
            members_key,
            f"expected 1, 3 or 5 etcd members (a majority must survive a loss), got {describe(members)}",
        )
    if failover and members == 1:
        raise reader.fail(
            members_key,
            "a cluster with replicas fails over through etcd: one etcd member is a single point of "
            "failure for every cluster; expected 3 or 5",
        )
    return DatabaseEstate(shared=shared, dcs_members=int(members))


def cluster_name(service: str) -> str:
    """A service's own cluster (dedicated mode): its members are ``<service>-db-<n>``."""
    return f"{service}-db"


def clusters(topology: Topology) -> tuple[DatabaseCluster, ...]:
    """The clusters the environment runs, in a stable order (the services' own in declaration
    order, then the shared one, then etcd), each with the substrate of the first service it serves
    (etcd: of the first cluster). The shared cluster is run only when a service uses it; etcd only
    when a cluster exists."""
    found: list[DatabaseCluster] = []
    shared_users: list[str] = []
    substrates = {service.name: service.substrate for service in topology.services}
    for service in topology.services:
        plan = topology.policies[service.name].database
        if plan is None:
            continue
        if plan.mode == "shared":
            shared_users.append(service.name)
            continue
        found.append(
            DatabaseCluster(
                cluster_name(service.name),
                "database",
                plan.members,
                plan.resources,
                service.substrate,
                POSTGRESQL_PORT,
                (service.name,),
                f"environment.services.{service.name}.database",
            )
        )
    shared = topology.databases.shared
    if shared is not None and shared_users:
        found.append(
            DatabaseCluster(
                SHARED_CLUSTER,
                "database",
                shared.members,
                shared.resources,
                substrates[shared_users[0]],
                POSTGRESQL_PORT,
                tuple(shared_users),
                "environment.databases.shared",
            )
        )
    if found:
        found.append(
            DatabaseCluster(
                DCS_CLUSTER,
                "dcs",
                topology.databases.dcs_members,
                DCS_RESOURCES,
                found[0].substrate,
                ETCD_CLIENT_PORT,
                (),
                "environment.databases.dcs",
            )
        )
    return tuple(found)
