"""Network least privilege from the placement (model/firewall.py, issue 14): what every node of the
lab's shape accepts, and from whom. (The role that applies it with nft is not built yet.)"""

from __future__ import annotations

from pathlib import Path

import yaml

from ansible_collections.berth.fleet.plugins.module_utils.model.firewall import (
    lab_controllers,
    node_rules,
    render_nft,
)
from ansible_collections.berth.fleet.plugins.module_utils.model.inventory import load_placement

ROOT = Path(__file__).resolve().parents[2]


def lab() -> tuple[object, dict[str, object], list[str]]:
    raw = yaml.safe_load((ROOT / "inventories" / "lab" / "topology.berth.yml").read_text())
    placement = load_placement(raw, "inventories/lab/topology.berth.yml")
    controllers = lab_controllers(placement)
    return placement, node_rules(placement, controllers), controllers


def addresses(placement: object, **match: str) -> set[str]:
    found = set()
    for instance in placement.instances:  # type: ignore[attr-defined]
        if all(getattr(instance, k) == v for k, v in match.items()):
            found.add(f"{instance.address}/32")
    return found


def test_every_node_takes_ssh_only_from_the_controllers_and_the_execution_nodes() -> None:
    rules, controllers = lab()[1:]
    assert controllers == ["10.70.1.1/32", "10.70.2.1/32"]
    executors = {"10.70.1.3/32", "10.70.2.3/32"}
    assert len(rules) == 23
    for host, node in rules.items():
        ssh = node.ports()[22]  # type: ignore[attr-defined]
        if host.startswith("exec-"):
            assert set(ssh) == set(controllers)
        else:
            assert set(ssh) == set(controllers) | executors, host


def test_a_service_port_only_from_the_lbs_and_the_controllers() -> None:
    rules, controllers = lab()[1:]
    lbs = {"10.70.1.2/32", "10.70.2.2/32"}
    catalog = rules["catalog-1"].ports()  # type: ignore[attr-defined]
    assert set(catalog) == {22, 8080}
    assert set(catalog[8080]) == lbs | set(controllers)


def test_an_lb_serves_users_from_anywhere_and_each_database_endpoint_only_to_its_owners() -> None:
    placement, rules, controllers = lab()
    lb = rules["lb-dc1"].ports()  # type: ignore[attr-defined]
    assert lb[8080] == () and lb[8090] == () and lb[8070] == ()  # users
    assert set(lb[18090]) == set(controllers)  # orders' preview: smoke checks only
    orders = addresses(placement, service="orders")
    catalog = addresses(placement, service="catalog")
    assert set(lb[15432]) == orders and set(lb[15433]) == orders  # orders-db write and read
    assert set(lb[15434]) == catalog  # the shared cluster (one member: no read port)
    assert 15435 not in lb
    assert not orders & catalog


def test_a_database_port_only_from_its_lbs_its_peers_and_its_owners() -> None:
    placement, rules, controllers = lab()
    members = {f"{m.address}/32" for m in placement.members if m.cluster == "orders-db"}  # type: ignore[attr-defined]
    orders_db = rules["orders-db-1"].ports()  # type: ignore[attr-defined]
    lbs = {"10.70.1.2/32", "10.70.2.2/32"}
    assert set(orders_db[5432]) == lbs | members | addresses(placement, service="orders")
    assert not set(orders_db[5432]) & addresses(placement, service="catalog")
    assert set(orders_db[8008]) == lbs | members | set(controllers)
    dcs = rules["dcs-1"].ports()  # type: ignore[attr-defined]
    databases = {f"{m.address}/32" for m in placement.members if m.kind == "database"}  # type: ignore[attr-defined]
    etcd = {f"{m.address}/32" for m in placement.members if m.cluster == "dcs"}  # type: ignore[attr-defined]
    assert set(dcs[2379]) == databases | etcd | set(controllers) and set(dcs[2380]) == etcd


def test_the_ruleset_drops_everything_else_and_replaces_berths_table_as_a_whole() -> None:
    rules = lab()[1]
    text = render_nft(rules["catalog-1"])  # type: ignore[arg-type]
    assert "policy drop;" in text and "ct state established,related accept" in text
    assert text.count("table inet berth") == 3 and "delete table inet berth" in text
    assert "tcp dport 8080 accept" in text and "ip saddr { 10.70.1.2/32, 10.70.2.2/32" in text
    assert render_nft(rules["catalog-1"]) == text  # the same placement, the same bytes  # type: ignore[arg-type]
