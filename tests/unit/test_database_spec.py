"""A service's database in the spec (model/database.py, issue 14): what the service declares, how
each environment provides it, where its members are placed (placement.py) and what the inventory
then tells every host. The refusals of bad settings are in the malformed-spec corpus
(test_malformed_specs.py)."""

from __future__ import annotations

from typing import Any

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.model.inventory import (
    build_inventory,
    load_placement,
)
from ansible_collections.berth.fleet.plugins.module_utils.model.nodes import nodes
from ansible_collections.berth.fleet.plugins.module_utils.model.topology import (
    DatabasePlan,
    Resources,
    SpecError,
)
from tests.unit.specs import spec


def with_databases(**changes: Any) -> dict[str, Any]:
    return spec(
        **{
            "services.orders.database": {},
            "services.catalog.database": {"name": "catalog_items"},
            "environment.services.orders.database": {
                "mode": "dedicated",
                "replicas": 2,
                "resources": {"vcpus": 2, "memory_mib": 1024},
            },
            "environment.services.catalog.database": {"mode": "shared"},
            "environment.databases": {"shared": {"members": 2}},
            **changes,
        }
    )


def test_each_service_gets_its_own_database_the_way_its_environment_says() -> None:
    placement = load_placement(with_databases(), "test.berth.yml")
    topology = placement.topology
    orders, catalog = topology.policies["orders"].database, topology.policies["catalog"].database
    assert orders == DatabasePlan("dedicated", replicas=2, resources=Resources(2, 1024))
    assert orders is not None and orders.members == 3
    assert catalog == DatabasePlan("shared") and catalog.members == 0  # its members are the shared cluster's
    assert topology.databases.shared is not None and topology.databases.shared.members == 2
    assert topology.databases.dcs_members == 3  # failover (replicas) needs an etcd majority: 3 by default

    inventory = build_inventory(placement)
    assert inventory.group_vars["all"]["berth_databases"] == {
        "shared": {"members": 2, "resources": {"vcpus": 1, "memory_mib": 512}},
        "dcs": {"members": 3},
    }
    assert inventory.group_vars["svc_orders"]["berth_service_spec"]["database"] == {
        "name": "orders",
        "mode": "dedicated",
        "replicas": 2,
        "resources": {"vcpus": 2, "memory_mib": 1024},
    }
    assert inventory.group_vars["svc_catalog"]["berth_service_spec"]["database"] == {
        "name": "catalog_items",
        "mode": "shared",
    }


def test_a_laptop_shares_one_node_and_a_service_without_a_database_has_none() -> None:
    dev = spec(
        **{
            "services.orders.database": {},
            "environment.services.orders.database": {"mode": "shared"},
            "environment.databases": {"shared": {"members": 1}},
        }
    )
    topology = load_placement(dev, "dev.berth.yml").topology
    assert topology.databases.dcs_members == 1  # nothing fails over: one etcd member is enough
    assert topology.policies["catalog"].database is None
    inventory = build_inventory(load_placement(dev, "dev.berth.yml"))
    assert inventory.group_vars["svc_catalog"]["berth_service_spec"]["database"] is None
    plain = load_placement(spec(), "plain.berth.yml").topology
    assert plain.databases.shared is None and plain.databases.dcs_members == 1


def test_every_member_gets_a_node_of_its_own_spread_across_the_datacenters() -> None:
    placement = load_placement(with_databases(), "test.berth.yml")
    members = {m.name: m for m in placement.members}
    assert sorted(members) == sorted(
        ["orders-db-1", "orders-db-2", "orders-db-3", "shared-db-1", "shared-db-2", "dcs-1", "dcs-2", "dcs-3"]
    )
    for cluster in ("orders-db", "shared-db", "dcs"):
        mine = [m for m in placement.members if m.cluster == cluster]
        dcs = [m.dc for m in mine]
        assert max(dcs.count(dc) for dc in set(dcs)) - min(dcs.count(dc) for dc in ("dc1", "dc2")) <= 1, mine
        assert len({m.machine for m in mine}) == len(mine), f"two members of {cluster} on one machine"
    nodes = [i.node for i in placement.instances] + [m.node for m in placement.members]
    addresses = [i.address for i in placement.instances] + [m.address for m in placement.members]
    assert len(set(nodes)) == len(nodes) and len(set(addresses)) == len(addresses)
    assert members["orders-db-1"].node == "test-orders-db-1" and members["orders-db-1"].port == 5432
    assert members["dcs-1"].port == 2379 and members["dcs-1"].kind == "dcs"
    # the instances are where they were without any database: a cluster never moves an instance
    plain = load_placement(spec(), "plain.berth.yml")
    assert [(i.name, i.node, i.address) for i in plain.instances] == [
        (i.name, i.node, i.address) for i in placement.instances
    ]


def test_the_inventory_has_each_member_in_its_groups_with_what_provision_sizes_it_by() -> None:
    inventory = build_inventory(load_placement(with_databases(), "test.berth.yml"))
    assert sorted(inventory.groups["db_orders_db"]) == ["orders-db-1", "orders-db-2", "orders-db-3"]
    assert sorted(inventory.groups["db_shared_db"]) == ["shared-db-1", "shared-db-2"]
    assert sorted(inventory.groups["dcs"]) == ["dcs-1", "dcs-2", "dcs-3"]
    assert len(inventory.groups["databases"]) == 5
    assert not set(inventory.groups["instances"]) & set(inventory.groups["databases"])  # never rolled
    assert set(inventory.groups["databases"]) <= set(inventory.groups["substrate_vm"])  # provision makes them
    member = inventory.hosts["orders-db-2"]
    assert (member["berth_role"], member["berth_cluster"], member["berth_member"]) == (
        "database",
        "orders-db",
        2,
    )
    assert {k: v for k, v in member["berth_member_spec"].items() if k != "access"} == {
        "cluster": "orders-db",
        "kind": "database",
        "members": 3,
        "owners": ["orders"],
        "resources": {"vcpus": 2, "memory_mib": 1024},
    }
    assert inventory.hosts["shared-db-1"]["berth_member_spec"]["owners"] == ["catalog"]
    hostvars = {
        host: {**inventory.group_vars["all"], **inventory.service_vars(host_vars), **host_vars}
        for host, host_vars in inventory.hosts.items()
    }
    sized = {node["hosts"][0]: node for node in nodes(hostvars, sorted(inventory.groups["databases"]))}
    assert (sized["orders-db-1"]["vcpus"], sized["orders-db-1"]["memory_mib"]) == (2, 1024)


def test_a_cluster_the_estate_has_no_room_for_is_refused_naming_its_key() -> None:
    too_many = with_databases(
        **{"environment.services.orders.database": {"mode": "dedicated", "replicas": 4}}
    )  # 5 members, 4 machines
    with pytest.raises(SpecError) as refused:
        load_placement(too_many, "test.berth.yml")
    assert refused.value.key == "environment.services.orders.database"
    assert "the database cluster orders-db needs 5 member(s) on nodes of their own" in str(refused.value)


def test_where_instances_share_machines_a_member_still_has_a_node_and_an_address_of_its_own() -> None:
    shared_machines = spec(
        **{
            "environment.colocation": True,
            "services.orders.database": {},
            "environment.services.orders.database": {"mode": "dedicated"},
        }
    )
    placement = load_placement(shared_machines, "ci.berth.yml")
    instance_nodes = {i.node for i in placement.instances}
    assert len(instance_nodes) < len(placement.instances)  # the instances do share nodes here
    assert [m.name for m in placement.members] == ["orders-db-1", "dcs-1"]
    assert not {m.node for m in placement.members} & instance_nodes
    assert not {m.address for m in placement.members} & {i.address for i in placement.instances}


def test_a_member_named_like_another_host_is_refused_naming_both() -> None:
    clash = with_databases(
        **{
            "services.orders-db": {
                "artifact": "odb",
                "version": "v1",
                "port": 8100,
                "health": {"path": "/health"},
                "resources": {"vcpus": 1, "memory_mib": 256},
                "substrate": "vm",
            },
            "environment.services.orders-db": {"instances": 1},
        }
    )
    with pytest.raises(SpecError) as refused:
        load_placement(clash, "test.berth.yml")
    assert refused.value.key == "environment.services.orders.database"
    assert "orders-db-1" in str(refused.value) and "services.orders-db" in str(refused.value)
