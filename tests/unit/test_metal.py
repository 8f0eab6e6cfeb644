"""The bare-metal lifecycle: allowed transitions, inspection against requirements, the JSON store."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.drivers.metal.lifecycle import (
    ALLOWED,
    STATES,
    Hardware,
    HostRecord,
    Lifecycle,
    LifecycleRequest,
    MetalError,
    MetalStore,
    Requirements,
    Transition,
    inspect,
    plan_lifecycle,
    plan_states,
)

PASSWORD = "Pw-berth-7f3c9!"
BIG = Hardware(
    cpus=16, memory_mib=65536, manufacturer="Contoso", model="3500RX", serial_number="SN1", macs=("aa",)
)
SMALL = Hardware(cpus=2, memory_mib=8192)
NEEDS = Requirements(vcpus=8, memory_mib=16384)
FACTS: dict[str, Any] = {
    "cpus": 16,
    "memory_mib": 65536,
    "manufacturer": "Contoso",
    "model": "3500RX",
    "serial_number": "SN1",
    "nics": [{"id": "1", "mac": "aa"}, {"id": "2", "mac": None}],
}


def clock() -> str:
    return "2026-11-28T09:00:00+00:00"


def record(state: str, **fields: Any) -> HostRecord:
    return HostRecord(host="metal-1", state=state, bmc="https://10.0.0.5", system_id="1", **fields)


# --- transitions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "target", "steps"),
    [
        (None, "enrolled", ["enrolled"]),
        (None, "available", ["enrolled", "inspected", "available"]),
        (None, "active", ["enrolled", "inspected", "available", "active"]),
        ("enrolled", "enrolled", []),
        ("enrolled", "active", ["inspected", "available", "active"]),
        ("inspected", "inspected", ["inspected"]),  # asking again re-inspects
        ("available", "inspected", ["inspected"]),
        ("available", "available", []),
        ("active", "available", ["available"]),
        ("active", "retired", ["retired"]),
        ("retired", "retired", []),
        ("retired", "enrolled", ["enrolled"]),
        ("failed", "enrolled", ["enrolled"]),
        ("failed", "retired", ["retired"]),
    ],
)
def test_allowed_paths(current: str | None, target: str, steps: list[str]) -> None:
    assert plan_states(current, target) == steps


@pytest.mark.parametrize(
    ("current", "target", "message"),
    [
        (
            "retired",
            "active",
            "metal-1 cannot go from retired to active: re-enroll it first (lifecycle: enrolled)",
        ),
        ("retired", "inspected", "re-enroll it first"),
        ("failed", "available", "re-enroll it first"),
        ("active", "enrolled", "only a retired or failed host is enrolled again"),
        ("available", "enrolled", "only a retired or failed host is enrolled again"),
        ("active", "inspected", "from active it can go to: available, failed, retired"),
    ],
)
def test_forbidden_paths(current: str, target: str, message: str) -> None:
    with pytest.raises(MetalError) as caught:
        plan_states(current, target, "metal-1")
    assert message in str(caught.value)


def test_every_state_has_a_row_and_failed_cannot_be_asked_for() -> None:
    assert set(ALLOWED) == {None, *STATES}
    with pytest.raises(MetalError, match="lifecycle must be one of"):
        plan_states("enrolled", "failed")


# --- inspection -------------------------------------------------------------------------------------


def test_inspection_names_what_was_required_and_what_was_reported() -> None:
    assert inspect("metal-1", BIG, NEEDS) is None
    assert inspect("metal-1", SMALL, Requirements()) is None
    assert inspect("metal-1", SMALL, NEEDS) == (
        "inspection of metal-1 failed: required 8 vcpus and 16384 MiB of memory; "
        "the BMC reported 2 CPUs and 8192 MiB of memory (short of: vcpus, memory_mib)"
    )
    assert inspect("metal-1", Hardware(cpus=16), NEEDS) == (
        "inspection of metal-1 failed: required 8 vcpus and 16384 MiB of memory; "
        "the BMC reported 16 CPUs and no memory size (short of: memory_mib)"
    )


def test_hardware_from_driver_facts() -> None:
    assert Hardware.from_facts(FACTS) == BIG


def test_requirements_are_validated() -> None:
    assert Requirements.from_params(None) == Requirements()
    with pytest.raises(MetalError, match=r"required\.vcpus must be a whole number >= 1, not 0"):
        Requirements.from_params({"vcpus": 0})


# --- planning the record ------------------------------------------------------------------------------


def test_a_new_host_walks_to_available_through_inspection() -> None:
    plan = plan_lifecycle(None, "metal-1", "available", BIG, NEEDS, "https://10.0.0.5", "1", clock)
    assert plan.changed and plan.failure is None
    assert plan.steps == ("enrolled", "inspected", "available")
    after = plan.after
    assert (after.state, after.hardware, after.bmc, after.system_id) == (
        "available",
        BIG,
        "https://10.0.0.5",
        "1",
    )
    assert [(t.from_state, t.to_state) for t in after.history] == [
        (None, "enrolled"),
        ("enrolled", "inspected"),
        ("inspected", "available"),
    ]
    assert plan.diff() == {"before": None, "after": {"state": "available", "reason": None}}


def test_a_failed_inspection_stops_at_failed_with_the_reason() -> None:
    plan = plan_lifecycle(None, "metal-1", "active", SMALL, NEEDS, now=clock)
    assert plan.failure is not None and "required 8 vcpus" in plan.failure
    assert (plan.after.state, plan.after.reason) == ("failed", plan.failure)
    assert plan.after.history[-1] == Transition("enrolled", "failed", clock(), plan.failure)
    assert plan.after.hardware == SMALL  # what was found is kept, to say why


def test_already_there_is_no_change() -> None:
    before = record("available", hardware=BIG, updated_at="yesterday")
    plan = plan_lifecycle(before, "metal-1", "available", SMALL, NEEDS, now=clock)
    assert not plan.changed and plan.after is before and plan.steps == ()


def test_re_inspection_changes_only_what_it_finds() -> None:
    before = record("inspected", hardware=BIG)
    same = plan_lifecycle(before, "metal-1", "inspected", BIG, NEEDS, "https://10.0.0.5", "1", clock)
    assert not same.changed
    more = Hardware(cpus=32, memory_mib=65536)
    different = plan_lifecycle(before, "metal-1", "inspected", more, NEEDS, "https://10.0.0.5", "1", clock)
    assert different.changed and different.after.hardware == more
    shrunk = plan_lifecycle(before, "metal-1", "inspected", SMALL, NEEDS, "https://10.0.0.5", "1", clock)
    assert shrunk.after.state == "failed"


def test_re_enrolling_forgets_the_hardware_and_the_reason() -> None:
    before = record("failed", hardware=SMALL, reason="too small")
    plan = plan_lifecycle(before, "metal-1", "enrolled", BIG, NEEDS, "https://10.0.0.6", "2", clock)
    assert (plan.after.state, plan.after.reason, plan.after.hardware) == ("enrolled", None, None)
    assert (plan.after.bmc, plan.after.system_id) == ("https://10.0.0.6", "2")


def test_history_is_bounded() -> None:
    history = tuple(Transition("active", "available", "t") for _number in range(60))
    plan = plan_lifecycle(record("available", history=history), "metal-1", "active", BIG, NEEDS, now=clock)
    assert len(plan.after.history) == 50
    assert plan.after.history[-1].to_state == "active"


# --- the store ----------------------------------------------------------------------------------------


def test_records_are_written_atomically_private_and_without_credentials(tmp_path: Path) -> None:
    store = MetalStore(tmp_path)
    plan = plan_lifecycle(None, "metal-1", "available", BIG, NEEDS, "https://10.0.0.5", "1", clock)
    path = store.save(plan.after)
    assert path == tmp_path / "metal" / "metal-1.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert os.listdir(path.parent) == ["metal-1.json"]  # no temporary file left
    assert store.load("metal-1") == plan.after
    assert PASSWORD not in path.read_text()
    assert json.loads(path.read_text())["schema"] == 1
    store.save(plan_lifecycle(plan.after, "metal-1", "active", BIG, NEEDS, now=clock).after)
    assert store.load("metal-1").state == "active"  # type: ignore[union-attr]
    assert os.listdir(path.parent) == ["metal-1.json"]


def test_a_failed_write_leaves_the_old_record_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MetalStore(tmp_path)
    store.save(record("enrolled"))

    def broken_replace(source: str, destination: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(MetalError, match=r"cannot write .*metal-1\.json: No space left on device"):
        store.save(record("inspected"))
    assert store.load("metal-1").state == "enrolled"  # type: ignore[union-attr]
    assert os.listdir(tmp_path / "metal") == ["metal-1.json"]


def test_an_unknown_host_has_no_record_and_bad_names_are_refused(tmp_path: Path) -> None:
    store = MetalStore(tmp_path)
    assert store.load("metal-9") is None
    for name in ("../etc/passwd", ".hidden", "a/b", ""):
        with pytest.raises(MetalError, match="cannot name a record"):
            store.path(name)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not JSON"),
        ("[]", "not a JSON object"),
        ('{"host": "metal-1", "state": "lost"}', "unknown state 'lost'"),
        ('{"host": "metal-2", "state": "enrolled"}', "holds the record of 'metal-2'"),
    ],
)
def test_broken_records_are_named(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "metal").mkdir(exist_ok=True)
    (tmp_path / "metal" / "metal-1.json").write_text(content)
    with pytest.raises(MetalError, match=message):
        MetalStore(tmp_path).load("metal-1")


# --- the job: prepare before the BMC is touched, commit after -----------------------------------------


def lifecycle(tmp_path: Path, target: str, **params: Any) -> Lifecycle:
    request = LifecycleRequest.from_params(
        {"lifecycle": target, "name": "metal-1", "lifecycle_dir": str(tmp_path), **params}
    )
    assert request is not None
    return Lifecycle(request, now=clock)


def test_check_mode_writes_nothing(tmp_path: Path) -> None:
    job = lifecycle(tmp_path, "available", required={"vcpus": 8})
    prepared = job.prepare(FACTS, "https://10.0.0.5", "1", check_mode=True)
    job.commit(prepared, check_mode=True)
    assert prepared.as_dict()["state"] == "available"
    assert not (tmp_path / "metal").exists()
    with pytest.raises(MetalError, match="required 64 vcpus"):
        lifecycle(tmp_path, "inspected", required={"vcpus": 64}).prepare(FACTS, "", None, check_mode=True)
    assert not (tmp_path / "metal").exists()


def test_prepare_then_commit(tmp_path: Path) -> None:
    job = lifecycle(tmp_path, "available", required={"vcpus": 8, "memory_mib": 1024})
    prepared = job.prepare(FACTS, "https://10.0.0.5", "1", check_mode=False)
    assert not (tmp_path / "metal").exists()  # nothing before the BMC part succeeded
    job.commit(prepared, check_mode=False)
    result: dict[str, Any] = {
        "changed": False,
        "diff": {"before": {"power_state": "On"}, "after": {"power_state": "On"}},
    }
    prepared.merge_into(result)
    assert result["changed"] is True
    assert result["diff"]["after"] == {
        "power_state": "On",
        "lifecycle": {"state": "available", "reason": None},
    }
    assert result["lifecycle"]["steps"] == ["enrolled", "inspected", "available"]
    assert result["lifecycle"]["hardware"]["macs"] == ["aa"]
    again = job.prepare(FACTS, "https://10.0.0.5", "1", check_mode=False)
    assert not again.plan.changed


def test_a_failed_inspection_is_recorded_then_raised(tmp_path: Path) -> None:
    with pytest.raises(MetalError) as caught:
        lifecycle(tmp_path, "active", required={"memory_mib": 131072}).prepare(
            FACTS, "", None, check_mode=False
        )
    assert caught.value.details["changed"] is True
    assert caught.value.details["lifecycle"]["state"] == "failed"
    saved = MetalStore(tmp_path).load("metal-1")
    assert saved is not None and saved.state == "failed" and "131072 MiB" in (saved.reason or "")
    with pytest.raises(MetalError, match="re-enroll it first"):
        lifecycle(tmp_path, "available").prepare(FACTS, "", None, check_mode=False)


def test_lifecycle_parameters() -> None:
    assert LifecycleRequest.from_params({"lifecycle": None}) is None
    with pytest.raises(MetalError, match=r"lifecycle needs name.*lifecycle needs lifecycle_dir"):
        LifecycleRequest.from_params({"lifecycle": "enrolled"})
    with pytest.raises(MetalError, match="cannot name a record"):
        LifecycleRequest.from_params({"lifecycle": "enrolled", "name": "../x", "lifecycle_dir": "/tmp"})


def test_the_lifecycle_filter_reads_the_record_or_says_new(tmp_path: Path) -> None:
    from ansible.errors import AnsibleFilterError

    from ansible_collections.berth.fleet.plugins.filter.nodes import metal_lifecycle

    assert metal_lifecycle(str(tmp_path), "bm-1") == "new"
    MetalStore(tmp_path).save(record("retired"))
    assert metal_lifecycle(str(tmp_path), "metal-1") == "retired"
    (tmp_path / "metal").mkdir(exist_ok=True)
    (tmp_path / "metal" / "bm-1.json").write_text("not json")
    with pytest.raises(AnsibleFilterError, match="is not JSON"):
        metal_lifecycle(str(tmp_path), "bm-1")
