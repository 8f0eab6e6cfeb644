# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Network least privilege (issue 14), derived from the placement: what each node accepts, and from
whom. Everything not named here is dropped; established traffic, loopback and ICMP pass.

- **SSH** (22) on every node: only from the controllers and the execution nodes.
- **An instance's service port**: only from the load balancers (they route users, run the health
  checks and replay parallel-run copies) and the controllers (smoke and health checks of a deploy).
- **A load balancer**: every service's port and blue-green preview port from anywhere (users);
  its statistics from the controllers; each database cluster's write and read ports only from the
  owning services' instances.
- **A database member**: PostgreSQL (5432) from the load balancers, the cluster's own members
  (replication, rewind) and the owners' instances (direct: migrations); Patroni's REST API (8008)
  from the load balancers (their checks), the members and the controllers.
- **An etcd member**: clients (2379) from the database members, the etcd members and the
  controllers; peers (2380) from the etcd members.

Not yet applied to any node: the rules are the model (this file and its unit tests); the role that
renders them with ``nft`` is next (docs/databases.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ansible_collections.berth.fleet.plugins.module_utils.model import dbaccess
from ansible_collections.berth.fleet.plugins.module_utils.model.database import (
    DCS_CLUSTER,
    ETCD_CLIENT_PORT,
    POSTGRESQL_PORT,
)
from ansible_collections.berth.fleet.plugins.module_utils.model.topology import Placement

SSH_PORT = 22
STATS_PORT = 8404
ANYWHERE: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    port: int
    sources: tuple[str, ...]  # CIDRs; ANYWHERE (empty) for every source
    why: str


@dataclass(frozen=True)
class NodeRules:
    host: str
    rules: tuple[Rule, ...]

    def ports(self) -> dict[int, tuple[str, ...]]:
        return {rule.port: rule.sources for rule in self.rules}


def _cidr(address: object) -> str:
    return f"{address}/32"


def lab_controllers(placement: Placement) -> list[str]:
    """A lab's controller reaches its nodes from the lab namespace: the DCs' gateway addresses."""
    return [_cidr(dc.pool.gateway) for dc in placement.topology.datacenters]


def _merge(*groups: Sequence[str]) -> tuple[str, ...]:
    seen: list[str] = []
    for group in groups:
        for item in group:
            if item not in seen:
                seen.append(item)
    return tuple(seen)


def node_rules(placement: Placement, controllers: Sequence[str]) -> dict[str, NodeRules]:
    """Every node's rules, by inventory host name."""
    topology = placement.topology
    lbs = [lb for lb in placement.loadbalancers() if lb.role == "lb"]
    executors = [lb for lb in placement.loadbalancers() if lb.role != "lb"]
    lb_sources = [_cidr(lb.address) for lb in lbs]
    ssh = Rule(
        SSH_PORT,
        _merge(controllers, [_cidr(e.address) for e in executors]),
        "the controllers and execution nodes",
    )
    found: dict[str, NodeRules] = {}
    for instance in placement.instances:
        found[instance.name] = NodeRules(
            instance.name,
            (
                ssh,
                Rule(
                    instance.port, _merge(lb_sources, controllers), "its load balancers and the controllers"
                ),
            ),
        )
    lb_rules: list[Rule] = [ssh, Rule(STATS_PORT, _merge(controllers), "statistics, for the controllers")]
    for service in topology.services:
        lb_rules.append(Rule(service.port, ANYWHERE, f"{service.name}'s users"))
        blue_green = topology.policies[service.name].strategy.blue_green
        if blue_green is not None:
            lb_rules.append(
                Rule(
                    blue_green.preview_port,
                    _merge(controllers),
                    f"{service.name}'s preview, for smoke checks",
                )
            )
    for endpoint in dbaccess.lb_clusters(placement):
        owners = _merge(
            *[[_cidr(i.address) for i in placement.of_service(owner)] for owner in endpoint["owners"]]
        )
        ports = [endpoint["write_port"]] + ([endpoint["read_port"]] if endpoint["replicas"] else [])
        for port in ports:
            lb_rules.append(Rule(port, owners, f"{endpoint['cluster']}, for its owners' instances"))
    for lb in lbs:
        found[lb.name] = NodeRules(lb.name, tuple(lb_rules))
    for executor in executors:
        found[executor.name] = NodeRules(
            executor.name, (Rule(SSH_PORT, _merge(controllers), "the controllers"),)
        )
    database_members = [m for m in placement.members if m.kind == "database"]
    dcs_members = [m for m in placement.members if m.cluster == DCS_CLUSTER]
    for member in placement.members:
        peers = [_cidr(m.address) for m in placement.members if m.cluster == member.cluster]
        if member.kind == "database":
            cluster = next(c for c in placement.clusters if c.name == member.cluster)
            owned = [_cidr(i.address) for owner in cluster.owners for i in placement.of_service(owner)]
            rules = (
                ssh,
                Rule(
                    POSTGRESQL_PORT,
                    _merge(lb_sources, peers, owned),
                    "its LBs, its peers, its owners' instances",
                ),
                Rule(
                    dbaccess.PATRONI_API_PORT,
                    _merge(lb_sources, peers, controllers),
                    "its LBs' checks, its peers, the controllers",
                ),
            )
        else:
            rules = (
                ssh,
                Rule(
                    ETCD_CLIENT_PORT,
                    _merge([_cidr(m.address) for m in database_members], peers, controllers),
                    "Patroni on the database members, the etcd members, the controllers",
                ),
                Rule(
                    dbaccess.ETCD_PEER_PORT,
                    _merge([_cidr(m.address) for m in dcs_members]),
                    "the etcd members",
                ),
            )
        found[member.name] = NodeRules(member.name, rules)
    return found


def render_nft(node: NodeRules) -> str:
    """The node's ruleset for ``nft -f``: one table of Berth's own, replaced as a whole."""
    lines = [
        f"# Managed by Berth: the firewall of {node.host}, from the placement (docs/databases.md)",
        "table inet berth",
        "delete table inet berth",
        "table inet berth {",
        "    chain input {",
        "        type filter hook input priority filter; policy drop;",
        "        ct state established,related accept",
        "        ct state invalid drop",
        '        iifname "lo" accept',
        "        meta l4proto { icmp, ipv6-icmp } accept",
    ]
    for rule in node.rules:
        if rule.sources:
            lines.append(
                f"        ip saddr {{ {', '.join(rule.sources)} }} tcp dport {rule.port} accept  # {rule.why}"
            )
        else:
            lines.append(f"        tcp dport {rule.port} accept  # {rule.why}")
    lines += ["    }", "}"]
    return "\n".join(lines) + "\n"
