"""A service's database in the spec (model/database.py, issue 14): what the service declares, how
each environment provides it, and what the inventory then tells every host. The refusals are in
the malformed-spec corpus (test_malformed_specs.py)."""

from __future__ import annotations

from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.model.inventory import (
    build_inventory,
    load_placement,
)
from ansible_collections.berth.fleet.plugins.module_utils.model.topology import DatabasePlan, Resources
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
