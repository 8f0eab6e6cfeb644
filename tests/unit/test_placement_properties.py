"""Property-based tests of placement invariants (hypothesis)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ansible_collections.berth.fleet.plugins.module_utils.model.placement import place
from ansible_collections.berth.fleet.plugins.module_utils.model.spec import parse_topology
from ansible_collections.berth.fleet.plugins.module_utils.model.topology import Placement, SpecError, Topology
from tests.unit.specs import DELETE, spec

SECTION = {"vm": "hypervisors", "metal": "metal", "local": "local"}


AMPLE = {"vcpus": 4096, "memory_mib": 1 << 24}  # room for every instance of every service at once


@st.composite
def raw_specs(draw: st.DrawFn, ample: bool = False) -> dict[str, Any]:
    """Random specs; `ample`: VM and local machines only, each with room for everything."""
    kinds = ["vm", "local"] if ample else ["vm", "metal", "local"]
    substrates = draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=3))
    datacenters: dict[str, Any] = {}
    for dc_index in range(draw(st.integers(1, 3))):
        dc: dict[str, Any] = {
            "address_pool": {"cidr": f"10.{dc_index}.0.0/24", "start": f"10.{dc_index}.0.64", "block_size": 8}
        }
        for m_index in range(draw(st.integers(1, 6))):
            kind = draw(st.sampled_from(sorted(set(substrates))))
            size = (
                AMPLE
                if ample
                else {"vcpus": draw(st.integers(2, 32)), "memory_mib": draw(st.integers(2048, 32768))}
            )
            name = f"m{dc_index}-{m_index}"
            if kind == "vm":
                body: dict[str, Any] = {"uri": "qemu:///system", "capacity": size, "bridge": "br0"}
            elif kind == "local":
                body = {"capacity": size}
            else:
                body = {
                    "address": f"10.{dc_index}.0.{10 + m_index}",
                    "hardware": size,
                    "bmc": {"address": "bmc.invalid", "username": "u", "password": "{{ vault_pw }}"},
                }
            dc.setdefault(SECTION[kind], {})[name] = body
        datacenters[f"dc{dc_index + 1}"] = dc
    services: dict[str, Any] = {}
    policies: dict[str, Any] = {}
    for s_index, substrate in enumerate(substrates):
        name = f"svc{s_index}"
        services[name] = {
            "artifact": name,
            "version": "v1",
            "port": 8000 + 100 * s_index,
            "health": {"path": "/health"},
            "resources": {"vcpus": draw(st.integers(1, 4)), "memory_mib": draw(st.integers(256, 4096))},
            "substrate": substrate,
        }
        policies[name] = {"instances": draw(st.integers(0, 6))}
    return {
        "plugin": "berth.fleet.topology",
        "estate": {"datacenters": datacenters},
        "services": services,
        "environment": {
            "name": "prop",
            "colocation": draw(st.booleans()),
            "spread": {
                "max_skew": draw(st.integers(1, 2)),
                "when_unsatisfiable": draw(st.sampled_from(["fail", "schedule_anyway"])),
            },
            "max_unavailable": 1,
            "services": policies,
        },
    }


def try_place(raw: dict[str, Any]) -> tuple[Topology, Placement] | None:
    try:
        topology = parse_topology(raw, "prop.berth.yml")
        return topology, place(topology)
    except SpecError as exc:
        assert str(exc).startswith("prop.berth.yml: ")  # every refusal names the file and a key
        return None


def check_invariants(topology: Topology, placement: Placement) -> None:
    machines = {m.name: m for m in topology.machines}
    per_service = Counter(i.service for i in placement.instances)
    for service in topology.services:
        assert per_service[service.name] == topology.policies[service.name].instances
        ordinals = sorted(i.ordinal for i in placement.of_service(service.name))
        assert ordinals == list(range(1, len(ordinals) + 1))
        if topology.spread.when_unsatisfiable == "fail" and ordinals:
            in_dc = Counter(i.dc for i in placement.of_service(service.name))
            counts = [in_dc[dc.name] for dc in topology.datacenters]
            assert max(counts) - min(counts) <= topology.spread.max_skew
    used: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    on_machine: Counter[tuple[str, str]] = Counter()
    node_address: dict[str, Any] = {}
    ports: set[tuple[str, int]] = set()
    for instance in placement.instances:
        machine = machines[instance.machine]
        service = topology.service(instance.service)
        assert machine.dc == instance.dc
        assert {"vm": "hypervisor", "metal": "metal", "local": "local"}[service.substrate] == machine.kind
        used[machine.name][0] += service.resources.vcpus
        used[machine.name][1] += service.resources.memory_mib
        on_machine[(instance.service, machine.name)] += 1
        assert instance.address in topology.datacenter(instance.dc).pool.network
        assert node_address.setdefault(instance.node, instance.address) == instance.address
        assert (instance.node, instance.port) not in ports
        ports.add((instance.node, instance.port))
    for name, (vcpus, memory) in used.items():
        assert vcpus <= machines[name].capacity.vcpus
        assert memory <= machines[name].capacity.memory_mib
        if machines[name].kind == "metal":
            assert sum(c for (_service, m), c in on_machine.items() if m == name) == 1
    if not topology.colocation:
        assert all(count == 1 for count in on_machine.values())
    # distinct nodes never share an address
    assert len(set(node_address.values())) == len(node_address)
    lb_addresses = {lb.address for dc in topology.datacenters for lb in dc.loadbalancers}
    assert not lb_addresses & set(node_address.values()) or any(m.kind == "metal" for m in machines.values())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_specs())
def test_placement_invariants_hold_or_refusal_names_the_key(raw: dict[str, Any]) -> None:
    result = try_place(raw)
    if result is not None:
        check_invariants(*result)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_specs(), st.data())
def test_scaling_keeps_lower_ordinals_in_place(raw: dict[str, Any], data: st.DataObject) -> None:
    before = try_place(raw)
    assume(before is not None)
    assert before is not None
    service = data.draw(st.sampled_from(sorted(raw["services"])))
    old_count = raw["environment"]["services"][service]["instances"]
    new_count = data.draw(st.integers(0, 10))
    raw["environment"]["services"][service]["instances"] = new_count
    after = try_place(raw)
    assume(after is not None)
    assert after is not None
    check_invariants(*after)
    keep = min(old_count, new_count)
    old = {i.name: i for i in before[1].instances}
    new = {i.name: i for i in after[1].instances}
    # nothing at or below the smaller count moves, of any service
    for name, instance in old.items():
        if instance.ordinal <= keep:
            assert new[name] == instance, name
    # scaling down removes exactly the highest-numbered instances
    assert {i.ordinal for i in after[1].of_service(service)} == set(range(1, new_count + 1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_specs(ample=True), st.data())
def test_with_ample_capacity_scaling_a_service_moves_no_other_service(
    raw: dict[str, Any], data: st.DataObject
) -> None:
    """docs/placement.md: with room everywhere, every instance of every other service stays put.

    (Greedy placement by overall load broke it: scaling the first service up gave its new instance
    the emptiest machine, and a later service's instance that used to go there moved.)
    """
    assume(len(raw["services"]) >= 2)
    before = try_place(raw)
    assume(before is not None)
    assert before is not None
    service = data.draw(st.sampled_from(sorted(raw["services"])))
    old_count = raw["environment"]["services"][service]["instances"]
    raw["environment"]["services"][service]["instances"] = data.draw(st.integers(0, 8))
    after = try_place(raw)
    assume(after is not None)
    assert after is not None
    new = {i.name: i for i in after[1].instances}
    for instance in before[1].instances:
        if instance.service != service:
            assert new[instance.name] == instance, f"{instance.name} moved when {service} was scaled"
        elif instance.ordinal <= min(old_count, len(after[1].of_service(service))):
            assert new[instance.name] == instance, instance.name


@pytest.mark.parametrize(("first", "then"), [(0, 1), (1, 2)])
def test_scaling_the_first_service_up_leaves_the_second_where_it_was(first: int, then: int) -> None:
    """The counterexamples, by hand: two services on three roomy machines of one datacenter.

    Placing by overall load, catalog 0 -> 1 moved orders-1 (catalog-1 took the machine it had) and
    catalog 1 -> 2 moved orders-2.
    """
    machine = {"uri": "qemu:///system", "capacity": AMPLE, "bridge": "br0"}

    def placed(catalog: int) -> dict[str, tuple[str, Any]]:
        raw = spec(
            **{
                "estate.datacenters.dc1.hypervisors": {f"hv-{n}": machine for n in "abc"},
                "estate.datacenters.dc2": DELETE,
                "environment.services": {"catalog": {"instances": catalog}, "orders": {"instances": 2}},
            }
        )
        return {i.name: (i.machine, i.address) for i in place(parse_topology(raw, "t.berth.yml")).instances}

    before, after = placed(first), placed(then)
    assert {name: before[name] for name in ("orders-1", "orders-2")} == {
        name: after[name] for name in ("orders-1", "orders-2")
    }


@settings(max_examples=100, deadline=None)
@given(raw_specs())
def test_placement_is_deterministic(raw: dict[str, Any]) -> None:
    first, second = try_place(raw), try_place(raw)
    assert (first is None) == (second is None)
    if first and second:
        assert first[1].instances == second[1].instances


@pytest.mark.parametrize("extra", [1, 2])
def test_scale_up_from_four_keeps_the_first_four(extra: int) -> None:
    more = {"uri": "qemu:///system", "capacity": {"vcpus": 8, "memory_mib": 8192}, "bridge": "br0"}
    roomy = {"estate.datacenters.dc1.hypervisors.hv-e": more, "estate.datacenters.dc2.hypervisors.hv-f": more}
    before = place(parse_topology(spec(**roomy), "t.berth.yml")).of_service("catalog")
    bigger = spec(**roomy, **{"environment.services.catalog": {"instances": 4 + extra}})
    after = place(parse_topology(bigger, "t.berth.yml")).of_service("catalog")
    assert after[:4] == before
    assert len(after) == 4 + extra
