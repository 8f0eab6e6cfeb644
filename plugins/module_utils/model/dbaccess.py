# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who reaches a database, and how (issue 14): derived from the placement, the one source of it.

- **Endpoints.** Every load balancer fronts every PostgreSQL cluster with two TCP ports: writes go
  to the member Patroni calls primary, reads are balanced over the replicas that are current
  (a cluster without replicas reads from its primary, through the write port). Cluster ``k`` (in
  ``database.clusters`` order) listens on ``ENDPOINT_BASE_PORT + 2k`` (write) and the next port
  (read).
- **An instance's database**: its service's database and owner role, through the load balancer of
  its own datacenter (the first by name; any other LB when its DC has none).
- **Access of a member** (what its ``pg_hba`` and, later, its firewall say): each owner's database
  only to its owner role, from the load balancers (HAProxy in TCP mode connects from its own
  address, so this is the address PostgreSQL sees) and from the owner's instances (a direct
  connection); replication and rewind only from the cluster's own members; the superuser only
  from the member itself and its peers. Nothing else matches, so PostgreSQL refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.model.database import (
    DCS_CLUSTER,
    ETCD_CLIENT_PORT,
    POSTGRESQL_PORT,
)
from ansible_collections.berth.fleet.plugins.module_utils.model.topology import (
    DatabaseCluster,
    Instance,
    LoadBalancer,
    Member,
    Placement,
)

ENDPOINT_BASE_PORT = 15432
PATRONI_API_PORT = 8008
ETCD_PEER_PORT = 2380
SUPERUSER = "postgres"
REPLICATION_ROLE = "replicator"
REWIND_ROLE = "rewind"
API_USER = "berth"
# A replica further behind than this (bytes of WAL) leaves the read pool (Patroni's /replica?lag=).
READ_LAG_BYTES = 1 << 20


@dataclass(frozen=True)
class Endpoint:
    """A cluster's two ports on every load balancer."""

    cluster: str
    write_port: int
    read_port: int
    replicas: bool  # False: reads go to the primary (the read port fronts it too)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "write_port": self.write_port,
            "read_port": self.read_port,
            "replicas": self.replicas,
            "read_lag_bytes": READ_LAG_BYTES,
        }


def database_clusters(placement: Placement) -> tuple[DatabaseCluster, ...]:
    return tuple(c for c in placement.clusters if c.kind == "database")


def endpoints(placement: Placement) -> dict[str, Endpoint]:
    return {
        cluster.name: Endpoint(
            cluster.name,
            ENDPOINT_BASE_PORT + 2 * index,
            ENDPOINT_BASE_PORT + 2 * index + 1,
            cluster.members > 1,
        )
        for index, cluster in enumerate(database_clusters(placement))
    }


def _lbs(placement: Placement) -> list[LoadBalancer]:
    return sorted((lb for lb in placement.loadbalancers() if lb.role == "lb"), key=lambda lb: lb.name)


def cluster_of(placement: Placement, service: str) -> DatabaseCluster | None:
    return next((c for c in database_clusters(placement) if service in c.owners), None)


def instance_database(placement: Placement, instance: Instance) -> dict[str, Any] | None:
    """What an instance is told of its service's database (no password: that is the vault's)."""
    service = placement.topology.service(instance.service)
    cluster = cluster_of(placement, instance.service)
    if service.database is None or cluster is None:
        return None
    lbs = _lbs(placement)
    if not lbs:
        return None
    lb = next((lb for lb in lbs if lb.dc == instance.dc), lbs[0])
    endpoint = endpoints(placement)[cluster.name]
    name = service.database.name
    return {
        "cluster": cluster.name,
        "name": name,
        "role": name,
        # the members themselves, for what is no instance's request path (migrations: libpq picks
        # the primary with target_session_attrs=read-write, whatever the LBs' state)
        "members": [str(m.address) for m in _members(placement, cluster.name)],
        "member_port": POSTGRESQL_PORT,
        "lb": lb.name,
        "write": {"host": str(lb.address), "port": endpoint.write_port},
        "read": {
            "host": str(lb.address),
            "port": endpoint.read_port if endpoint.replicas else endpoint.write_port,
        },
    }


def _members(placement: Placement, cluster: str) -> list[Member]:
    return [m for m in placement.members if m.cluster == cluster]


def _host(address: Any) -> str:
    return f"{address}/32"


def member_access(placement: Placement, member: Member) -> dict[str, Any]:
    """What a database member's pg_hba allows, in order (PostgreSQL takes the first line that
    matches a connection's type, database, user and address, and refuses one no line matches)."""
    cluster = next(c for c in placement.clusters if c.name == member.cluster)
    peers = [_host(m.address) for m in _members(placement, member.cluster)]
    lbs = [_host(lb.address) for lb in _lbs(placement)]
    rows: list[dict[str, str]] = [
        # Patroni and Berth's own steps on the member itself
        {"type": "local", "database": "all", "user": SUPERUSER, "address": "", "method": "peer"},
        {
            "type": "host",
            "database": "all",
            "user": SUPERUSER,
            "address": "127.0.0.1/32",
            "method": "scram-sha-256",
        },
    ]
    for peer in peers:
        rows.append(
            {
                "type": "host",
                "database": "replication",
                "user": REPLICATION_ROLE,
                "address": peer,
                "method": "scram-sha-256",
            }
        )
        rows.append(
            {
                "type": "host",
                "database": "all",
                "user": REWIND_ROLE,
                "address": peer,
                "method": "scram-sha-256",
            }
        )
        rows.append(
            {"type": "host", "database": "all", "user": SUPERUSER, "address": peer, "method": "scram-sha-256"}
        )
    owners = []
    for service_name in cluster.owners:
        need = placement.topology.service(service_name).database
        if need is None:
            continue
        instances = [_host(i.address) for i in placement.of_service(service_name)]
        owners.append({"service": service_name, "database": need.name, "role": need.name, "from": instances})
        for source in ["127.0.0.1/32", *lbs, *instances]:
            rows.append(
                {
                    "type": "host",
                    "database": need.name,
                    "user": need.name,
                    "address": source,
                    "method": "scram-sha-256",
                }
            )
    return {
        "owners": owners,
        "peers": [{"name": m.name, "address": str(m.address)} for m in _members(placement, member.cluster)],
        "lbs": [str(lb.address) for lb in _lbs(placement)],
        "hba": [_hba_line(row) for row in rows],
    }


def _hba_line(row: dict[str, str]) -> str:
    fields = [row["type"], row["database"], row["user"]]
    if row["address"]:
        fields.append(row["address"])
    fields.append(row["method"])
    return " ".join(fields)


def dcs_members(placement: Placement) -> list[dict[str, Any]]:
    return [
        {
            "name": m.name,
            "address": str(m.address),
            "client_port": ETCD_CLIENT_PORT,
            "peer_port": ETCD_PEER_PORT,
        }
        for m in _members(placement, DCS_CLUSTER)
    ]


def lb_clusters(placement: Placement) -> list[dict[str, Any]]:
    """What every load balancer fronts: each cluster's ports and members (``haproxy.cfg.j2``)."""
    found = []
    for cluster in database_clusters(placement):
        endpoint = endpoints(placement)[cluster.name]
        found.append(
            {
                **endpoint.as_dict(),
                "members": [
                    {
                        "name": m.name,
                        "address": str(m.address),
                        "port": POSTGRESQL_PORT,
                        "api_port": PATRONI_API_PORT,
                    }
                    for m in _members(placement, cluster.name)
                ],
                "owners": list(cluster.owners),
            }
        )
    return found
