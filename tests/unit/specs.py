"""Builders of raw topology specs for tests (the shape of a *.berth.yml file)."""

from __future__ import annotations

import copy
from typing import Any

BASE: dict[str, Any] = {
    "plugin": "berth.fleet.topology",
    "estate": {
        "datacenters": {
            "dc1": {
                "address_pool": {"cidr": "10.90.1.0/24", "start": "10.90.1.16"},
                "hypervisors": {
                    "hv-a": {
                        "uri": "qemu:///system",
                        "capacity": {"vcpus": 8, "memory_mib": 8192},
                        "bridge": "br0",
                    },
                    "hv-b": {
                        "uri": "qemu:///system",
                        "capacity": {"vcpus": 8, "memory_mib": 8192},
                        "bridge": "br0",
                    },
                },
                "loadbalancers": {"lb-dc1": {"address": "10.90.1.2"}},
            },
            "dc2": {
                "address_pool": {"cidr": "10.90.2.0/24", "start": "10.90.2.16"},
                "hypervisors": {
                    "hv-c": {
                        "uri": "qemu:///system",
                        "capacity": {"vcpus": 8, "memory_mib": 8192},
                        "bridge": "br0",
                    },
                    "hv-d": {
                        "uri": "qemu:///system",
                        "capacity": {"vcpus": 8, "memory_mib": 8192},
                        "bridge": "br0",
                    },
                },
            },
        }
    },
    "services": {
        "catalog": {
            "artifact": "catalog",
            "version": "v1",
            "port": 8080,
            "health": {"path": "/health", "status": 200},
            "resources": {"vcpus": 1, "memory_mib": 512},
            "substrate": "vm",
        },
        "orders": {
            "artifact": "orders",
            "version": "v1",
            "port": 8090,
            "health": {"path": "/health"},
            "resources": {"vcpus": 1, "memory_mib": 512},
            "substrate": "vm",
        },
    },
    "environment": {
        "name": "test",
        "spread": {"max_skew": 1, "when_unsatisfiable": "fail"},
        "max_unavailable": 1,
        "services": {"catalog": {"instances": 4}, "orders": {"instances": 2}},
    },
}


def spec(**changes: Any) -> dict[str, Any]:
    """A copy of BASE with dotted-path changes applied: spec(**{"environment.name": "x"})."""
    raw = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return raw


DELETE = object()
