"""Who reaches a database, and how (model/dbaccess.py, issue 14): the endpoints every load balancer
fronts, the DSN parts every instance is told, and every member's pg_hba, all from the placement."""

from __future__ import annotations

import ipaddress
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.model import dbaccess
from ansible_collections.berth.fleet.plugins.module_utils.model.inventory import (
    build_inventory,
    load_placement,
)
from tests.unit.test_database_spec import with_databases


def inventory() -> Any:
    return build_inventory(load_placement(with_databases(), "test.berth.yml"))


def test_every_cluster_has_a_write_and_a_read_port_on_every_lb_in_a_stable_order() -> None:
    endpoints = inventory().group_vars["all"]["berth_db_endpoints"]
    assert [(e["cluster"], e["write_port"], e["read_port"]) for e in endpoints] == [
        ("orders-db", 15432, 15433),
        ("shared-db", 15434, 15435),
    ]
    orders = endpoints[0]
    assert [m["name"] for m in orders["members"]] == ["orders-db-1", "orders-db-2", "orders-db-3"]
    assert {(m["port"], m["api_port"]) for m in orders["members"]} == {(5432, 8008)}
    assert orders["owners"] == ["orders"] and orders["replicas"] and orders["read_lag_bytes"] == 1 << 20
    etcd = inventory().group_vars["all"]["berth_dcs_members"]
    assert [(m["name"], m["client_port"], m["peer_port"]) for m in etcd] == [
        ("dcs-1", 2379, 2380),
        ("dcs-2", 2379, 2380),
        ("dcs-3", 2379, 2380),
    ]


def test_an_instance_reaches_its_own_database_through_the_lb_of_its_datacenter() -> None:
    data = inventory()
    lbs = {h: v for h, v in data.hosts.items() if v["berth_role"] == "lb"}
    for host_vars in data.hosts.values():
        if host_vars.get("berth_service") == "orders":
            db = host_vars["berth_database"]
            assert (db["cluster"], db["name"], db["role"]) == ("orders-db", "orders", "orders")
            lb = lbs[db["lb"]]
            # its own DC's LB; dc2 has none in this spec, so the other DC's
            assert lb["berth_dc"] == host_vars["berth_dc"] or host_vars["berth_dc"] == "dc2"
            assert db["write"] == {"host": lb["berth_address"], "port": 15432}
            assert db["read"] == {"host": lb["berth_address"], "port": 15433}
            assert "password" not in str(db)  # the vault's, never the inventory's
        if host_vars.get("berth_service") == "catalog":
            db = host_vars["berth_database"]
            assert (db["cluster"], db["name"]) == ("shared-db", "catalog_items")
            assert db["write"]["port"] == 15434 and db["read"]["port"] == 15435


def test_a_cluster_without_replicas_reads_from_its_primary() -> None:
    one = load_placement(
        with_databases(**{"environment.databases": {"shared": {"members": 1}}}), "test.berth.yml"
    )
    catalog = next(i for i in one.instances if i.service == "catalog")
    db = dbaccess.instance_database(one, catalog)
    assert db is not None and db["read"] == db["write"] and db["write"]["port"] == 15434


def test_pg_hba_lets_each_owner_in_to_its_own_database_only_and_replication_only_between_peers() -> None:
    data = inventory()
    access = data.hosts["shared-db-1"]["berth_member_spec"]["access"]
    hba = access["hba"]
    lbs = sorted(v["berth_address"] for v in data.hosts.values() if v["berth_role"] == "lb")
    catalog = sorted(v["berth_address"] for v in data.hosts.values() if v.get("berth_service") == "catalog")
    peers = sorted(data.hosts[m]["berth_address"] for m in ("shared-db-1", "shared-db-2"))
    assert hba[0] == "local all postgres peer"
    for peer in peers:
        assert f"host replication replicator {peer}/32 scram-sha-256" in hba
    owner_rows = [line.split() for line in hba if line.split()[1] == "catalog_items"]
    assert {row[2] for row in owner_rows} == {"catalog_items"}  # its own role, nobody else's
    sources = {row[3] for row in owner_rows}
    assert sources == {"127.0.0.1/32", *(f"{a}/32" for a in lbs + catalog)}
    # nothing for orders on the shared cluster, and no line that matches every database and user
    assert not [line for line in hba if "orders" in line]
    assert not [line for line in hba if line.split()[1:3] == ["all", "all"]]
    for line in hba:
        fields = line.split()
        if fields[0] == "host":
            assert ipaddress.ip_network(fields[3]).prefixlen == 32 and fields[4] == "scram-sha-256"
    assert access["owners"] == [
        {
            "service": "catalog",
            "database": "catalog_items",
            "role": "catalog_items",
            "from": [f"{a}/32" for a in catalog],
        }
    ] or sorted(access["owners"][0]["from"]) == sorted(f"{a}/32" for a in catalog)
    assert [p["name"] for p in access["peers"]] == ["shared-db-1", "shared-db-2"]
    orders_hba = data.hosts["orders-db-1"]["berth_member_spec"]["access"]["hba"]
    assert not [line for line in orders_hba if "catalog" in line]
