"""Rollout planning: DC-aware batches, budgets, the preflight disruption check."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.berth.fleet.plugins.module_utils.planner.rollout import (
    Member,
    RolloutError,
    plan_rollout,
)


def prod(version: str = "v1", down: tuple[str, ...] = ()) -> list[Member]:
    return [
        Member(f"catalog-{n}", "dc1" if n % 2 else "dc2", n, version, f"catalog-{n}" not in down)
        for n in range(1, 5)
    ]


def test_one_at_a_time_alternates_datacenters() -> None:
    plan = plan_rollout("catalog", prod(), "v2", 1)
    assert plan.batches == [["catalog-1"], ["catalog-2"], ["catalog-3"], ["catalog-4"]]
    assert plan.serial == [1, 1, 1, 1]


def test_two_at_a_time_takes_one_per_datacenter() -> None:
    plan = plan_rollout("catalog", prod(), "v2", 2)
    assert plan.dc_budget == {"dc1": 1, "dc2": 1}
    assert plan.batches == [["catalog-1", "catalog-2"], ["catalog-3", "catalog-4"]]


def test_rerun_with_the_same_version_does_nothing() -> None:
    plan = plan_rollout("catalog", prod("v2"), "v2", 1)
    assert (
        plan.batches == [] and plan.hosts == [] and plan.up_to_date == [f"catalog-{n}" for n in range(1, 5)]
    )


def test_interrupted_rollout_continues_with_what_is_left() -> None:
    members = prod("v2")
    members[2] = Member("catalog-3", "dc1", 3, "v1", True)
    members[3] = Member("catalog-4", "dc2", 4, "v2", False)  # switched, never put back in rotation
    plan = plan_rollout("catalog", members, "v2", 1)
    assert plan.batches == [["catalog-4"], ["catalog-3"]]  # the down one first: it costs no capacity


def test_first_deploy_goes_in_one_batch() -> None:
    members = [Member(f"catalog-{n}", "dc1", n, None, False) for n in range(1, 5)]
    plan = plan_rollout("catalog", members, "v1", 1)
    assert plan.first_deploy and plan.batches == [[f"catalog-{n}" for n in range(1, 5)]]


def test_refuses_when_too_many_are_already_down() -> None:
    with pytest.raises(
        RolloutError, match=r"2 of 4 instances are already DOWN .*catalog-1, catalog-3.* minimum of 3"
    ):
        plan_rollout("catalog", prod(down=("catalog-1", "catalog-3")), "v2", 1)
    with pytest.raises(RolloutError, match="2 of 2 instances in dc1 are already DOWN"):
        plan_rollout("catalog", prod(down=("catalog-1", "catalog-3")), "v2", 2)


def test_a_pure_repair_is_not_held_to_the_budgets() -> None:
    # two of four out of rotation, both on dc1, max_unavailable 1: a rollout to a new version must
    # refuse (above), but repairing only the two that are out costs no capacity at all
    plan = plan_rollout("catalog", prod("v2", down=("catalog-1", "catalog-3")), "v2", 1)
    assert plan.repair and not plan.first_deploy and plan.batches == [["catalog-1", "catalog-3"]]
    assert plan.as_dict()["repair"] is True
    # as soon as an instance in rotation needs the change, the budgets and the refusal apply
    members = prod("v2", down=("catalog-1", "catalog-3"))
    members[1] = Member("catalog-2", "dc2", 2, "v1", True)
    with pytest.raises(RolloutError, match="2 of 4 instances are already DOWN"):
        plan_rollout("catalog", members, "v2", 1)


@pytest.mark.parametrize("bad", [0, 5])
def test_max_unavailable_must_fit(bad: int) -> None:
    with pytest.raises(RolloutError, match="must be between 1 and its 4 instances"):
        plan_rollout("catalog", prod(), "v2", bad)


# --- datacenter budgets: largest remainder ------------------------------------------------------


def estate(per_dc: dict[str, int], version: str = "v1") -> list[Member]:
    members, ordinal = [], 0
    for dc, count in per_dc.items():
        for _slot in range(count):
            ordinal += 1
            members.append(Member(f"svc-{ordinal}", dc, ordinal, version, True))
    return members


def test_forty_instances_in_four_dcs_at_a_quarter_take_ten_per_batch() -> None:
    members = estate({"dc1": 10, "dc2": 10, "dc3": 10, "dc4": 10})
    plan = plan_rollout("svc", members, "v2", 10)
    # each DC's share is 2.5: up to 3 of a DC at once, and each batch shares the 10 by what is left
    assert plan.dc_budget == {"dc1": 3, "dc2": 3, "dc3": 3, "dc4": 3}
    assert [len(batch) for batch in plan.batches] == [10, 10, 10, 10]
    dc_of = {m.name: m.dc for m in members}
    for batch in plan.batches:
        assert sorted(Counter(dc_of[name] for name in batch).values()) == [2, 2, 3, 3]


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=5),
    fraction=st.floats(min_value=0.01, max_value=1.0),
)
def test_budgets_and_batches_keep_every_invariant(sizes: list[int], fraction: float) -> None:
    members = estate({f"dc{i}": size for i, size in enumerate(sizes, 1)})
    total = len(members)
    max_unavailable = max(1, min(total, round(total * fraction)))
    plan = plan_rollout("svc", members, "v2", max_unavailable)
    per_dc = {dc: sum(1 for m in members if m.dc == dc) for dc in plan.dc_budget}
    for dc, budget in plan.dc_budget.items():
        share = max_unavailable * per_dc[dc] / total
        assert 1 <= budget <= max(1, -(-max_unavailable * per_dc[dc] // total)), (dc, budget, share)
        assert per_dc[dc] == 1 or budget < per_dc[dc]  # a DC of two or more is never emptied
    assert sum(min(b, per_dc[dc]) for dc, b in plan.dc_budget.items()) >= min(max_unavailable, len(per_dc))
    dc_of = {m.name: m.dc for m in members}
    for batch in plan.batches:
        assert 1 <= len(batch) <= max_unavailable
        for dc, budget in plan.dc_budget.items():
            assert sum(1 for name in batch if dc_of[name] == dc) <= budget
    assert sorted(plan.hosts) == sorted(m.name for m in members)  # every DC progresses to the end


# --- traffic steps: ready(n) -> UP -> drain(n+1), and the next batch drained early where it fits ---


def test_one_at_a_time_within_two_unavailable_drains_the_next_instance_early() -> None:
    plan = plan_rollout("catalog", prod(), "v2", 2, batch_size=1)
    assert plan.batches == [["catalog-1"], ["catalog-2"], ["catalog-3"], ["catalog-4"]]
    first, second = plan.steps[0], plan.steps[1]
    assert (first.ready, first.drain, first.wait_drained, first.cycle) == (
        [],
        ["catalog-1", "catalog-2"],
        ["catalog-1"],
        ["catalog-1"],
    )
    assert first.early == ["catalog-2"] and second.ready == ["catalog-1"]
    assert plan.steps[-1].ready == ["catalog-4"] and plan.steps[-1].cycle == []
    assert plan.as_dict()["overlap"] is True


def test_full_batches_leave_no_room_to_overlap() -> None:
    plan = plan_rollout("catalog", prod(), "v2", 2)
    assert [step.early for step in plan.steps] == [[], [], []]
    assert plan.as_dict()["overlap"] is False
    with pytest.raises(RolloutError, match="batch_size for catalog must be between 1 and max_unavailable 2"):
        plan_rollout("catalog", prod(), "v2", 2, batch_size=3)


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=8), min_size=1, max_size=4),
    fraction=st.floats(min_value=0.01, max_value=1.0),
    smaller=st.integers(min_value=0, max_value=3),
)
def test_every_moment_of_the_steps_keeps_the_capacity_invariant(
    sizes: list[int], fraction: float, smaller: int
) -> None:
    """Walk the steps the way the rollout runs them and check who is out of rotation at each phase."""
    members = estate({f"dc{i}": size for i, size in enumerate(sizes, 1)})
    max_unavailable = max(1, min(len(members), round(len(members) * fraction)))
    batch_size = max(1, max_unavailable - smaller)
    plan = plan_rollout("svc", members, "v2", max_unavailable, batch_size=batch_size)
    dc_of = {m.name: m.dc for m in members}
    out: set[str] = set()  # drained or being cycled: not serving
    cycled: list[str] = []
    for step in plan.steps:
        assert set(step.ready) <= out and set(step.ready) <= set(cycled)
        out -= set(step.ready)  # back in rotation and UP before anything else is drained
        out |= set(step.drain)
        assert len(out) <= max_unavailable, (step, out)
        for dc, budget in plan.dc_budget.items():
            assert sum(1 for name in out if dc_of[name] == dc) <= budget, (dc, step, out)
        assert set(step.wait_drained) == set(step.cycle) <= out
        cycled += step.cycle
    assert not out and sorted(cycled) == sorted(m.name for m in members)


# --- a run scoped to one datacenter (a per-DC reconcile) ----------------------------------------


def test_a_scoped_run_repairs_its_datacenters_instances_that_are_out_of_rotation() -> None:
    members = prod("v2", down=("catalog-1", "catalog-2", "catalog-3"))  # catalog-1, -3 in dc1
    plan = plan_rollout("catalog", members, "v2", 1, datacenter="dc1")
    assert plan.batches == [["catalog-1", "catalog-3"]] and plan.repair and not plan.first_deploy
    assert plan.hosts == ["catalog-1", "catalog-3"]  # dc2's catalog-2 is its own job's
    # (a run of the whole service would refuse: 3 down with max_unavailable 1)
    with pytest.raises(RolloutError, match="already DOWN"):
        plan_rollout("catalog", members, "v1", 1)


def test_a_scoped_run_with_nothing_to_repair_does_nothing() -> None:
    plan = plan_rollout("catalog", prod("v2", down=("catalog-2",)), "v2", 1, datacenter="dc1")
    assert plan.batches == [] and plan.up_to_date == ["catalog-1", "catalog-3"]


def test_a_scoped_run_never_takes_a_serving_instance_out_of_rotation() -> None:
    members = prod("v1", down=("catalog-1",))
    with pytest.raises(RolloutError, match=r"in dc1: catalog-3 is in rotation .* but not on v2.*one budget"):
        plan_rollout("catalog", members, "v2", 2, datacenter="dc1")


def test_a_scoped_run_in_a_datacenter_without_the_service_is_refused() -> None:
    with pytest.raises(
        RolloutError, match=r"datacenter 'dc3': catalog has no instances there .it runs in dc1, dc2"
    ):
        plan_rollout("catalog", prod(), "v2", 1, datacenter="dc3")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.booleans()), min_size=4, max_size=12),
    st.integers(min_value=1, max_value=3),
)
def test_two_scoped_runs_together_touch_only_what_is_out_of_rotation_and_each_its_own(
    states: list[tuple[bool, bool]], max_unavailable: int
) -> None:
    """Property: whatever the estate, the two DCs' scoped plans (run at the same moment) touch
    disjoint instances of their own DC, none of them in rotation, so together they take no capacity."""
    members = [
        Member(f"catalog-{n}", "dc1" if n % 2 else "dc2", n, "v2" if current else "v1", up)
        for n, (current, up) in enumerate(states, start=1)
    ]
    touched: dict[str, set[str]] = {}
    for dc in ("dc1", "dc2"):
        try:
            plan = plan_rollout("catalog", members, "v2", min(max_unavailable, len(members)), datacenter=dc)
        except RolloutError as exc:
            assert "is in rotation" in str(exc) or "are in rotation" in str(exc)
            assert any(m.up and m.version != "v2" and m.dc == dc for m in members)
            continue
        touched[dc] = set(plan.hosts)
        assert all(m.dc == dc for m in members if m.name in plan.hosts)
        assert not any(m.up for m in members if m.name in plan.hosts)
        assert len(plan.batches) <= 1
    assert not (touched.get("dc1", set()) & touched.get("dc2", set()))
