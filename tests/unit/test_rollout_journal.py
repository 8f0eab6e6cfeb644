"""The rollout journal: transitions, timings, and the versions rollback and reconcile choose.

The module tests run the real ``berth.fleet.rollout_journal`` module through ansible against a
state directory of their own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.planner.journal import (
    JournalError,
    desired_version,
    journal_path,
    journal_started,
    load,
    parts_lock,
    rivals,
    rollback_version,
    save,
    wait_for_earlier_parts,
)
from tests.modules import run_module

ROOT = Path(__file__).resolve().parents[2]


def test_journal_keeps_where_an_unfinished_rollout_started() -> None:
    first = journal_started(
        {}, "catalog", "v2", {"catalog-1": "v1", "catalog-2": "v1"}, [["catalog-1"], ["catalog-2"]]
    )
    assert first["from"] == {"catalog-1": "v1", "catalog-2": "v1"} and first["status"] == "running"
    batch = {
        "hosts": ["catalog-1"],
        "seconds": 12.35,
        "drain_wait": 3.2,
        "risen_after": 0.56,
        "ready_wait": 0.1,
    }
    done = {**first, "batches_done": [batch]}  # as the steps' reports leave it (planner/progress.py)
    # interrupted, rerun: catalog-1 is on v2 already, but the rollout started from v1
    again = journal_started(done, "catalog", "v2", {"catalog-1": "v2", "catalog-2": "v1"}, [["catalog-2"]])
    assert again["from"]["catalog-1"] == "v1" and len(again["batches_done"]) == 1
    # the same target after it finished is a repair: where the estate came from stays, for rollback
    complete = {**done, "status": "complete"}
    repair = journal_started(complete, "catalog", "v2", {"catalog-1": "", "catalog-2": "v2"}, [["catalog-1"]])
    assert repair["from"] == first["from"] and repair["batches_done"] == [] and repair["repair"] is True
    # a new target starts from what runs now
    fresh = journal_started(complete, "catalog", "v3", {"catalog-1": "v2", "catalog-2": "v2"}, [])
    assert fresh["from"] == {"catalog-1": "v2", "catalog-2": "v2"} and fresh["batches_done"] == []
    assert "repair" not in fresh


@pytest.mark.parametrize(
    ("journal", "expected"),
    [
        ({}, ("v1", "no rollout recorded: the inventory's version")),
        (
            {"status": "complete", "target": "v2", "from": {"a": "v1"}},
            ("v2", "the target of the last finished rollout"),
        ),
        (
            {"status": "halted", "target": "v3", "from": {"a": "v2", "b": "v2", "c": ""}},
            ("v2", "the rollout to v3 halted and was reverted: the version that ran before it"),
        ),
    ],
)
def test_reconcile_converges_to_what_the_last_rollout_left(
    journal: dict[str, Any], expected: tuple[str, str]
) -> None:
    assert desired_version(journal, "v1", "catalog") == {"version": expected[0], "why": expected[1]}


@pytest.mark.parametrize(
    ("journal", "message"),
    [
        (
            {"status": "running", "target": "v2", "from": {"a": "v1"}},
            "the rollout of catalog to v2 is unfinished (status running): finish it "
            "(playbooks/deploy.yml -e service=catalog -e version=v2) or return "
            "(playbooks/rollback.yml -e service=catalog); reconcile does not choose for you",
        ),
        (
            {"status": "halted", "target": "v3", "from": {"a": "v1", "b": "v2"}},
            "the rollout of catalog to v3 halted, and before it the instances ran v1, v2: no single version",
        ),
    ],
)
def test_reconcile_leaves_an_unfinished_rollout_to_the_operator(
    journal: dict[str, Any], message: str
) -> None:
    with pytest.raises(JournalError) as error:
        desired_version(journal, "v1", "catalog")
    assert str(error.value).startswith(message)


def test_rollback_returns_to_the_one_earlier_revision(tmp_path: Path) -> None:
    path = str(journal_path(tmp_path, "catalog"))
    assert rollback_version({"from": {"a": "v1", "b": "v1", "c": ""}}, "catalog", path) == "v1"
    with pytest.raises(
        JournalError, match=r"no rollout of 'catalog' is recorded in .*/rollouts/catalog\.json"
    ):
        rollback_version({}, "catalog", path)
    with pytest.raises(JournalError, match="no single earlier revision to return to"):
        rollback_version({"from": {"a": "v1", "b": "v2"}}, "catalog", path)


def test_the_journal_lives_in_one_place_and_is_written_atomically(tmp_path: Path) -> None:
    path = journal_path(tmp_path, "catalog")
    assert path == tmp_path / "rollouts" / "catalog.json"
    assert load(path) == {}
    save(path, {"service": "catalog", "status": "running"})
    assert load(path) == {"service": "catalog", "status": "running"}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert [p.name for p in path.parent.iterdir()] == ["catalog.json"]  # no temporary file left
    path.write_text("{not json")
    with pytest.raises(JournalError, match=r"catalog\.json is not JSON"):
        load(path)
    with pytest.raises(JournalError, match="service: expected a name"):
        journal_path(tmp_path, "../etc")


def journal_module(state_dir: Path, *args: str, check: bool = False) -> dict[str, Any]:
    """The module's real main(), run as Ansible runs it; ``args`` are key=value (JSON for lists/dicts)."""
    params: dict[str, Any] = {"state_dir": str(state_dir)}
    for arg in args:
        key, value = arg.split("=", 1)
        params[key] = json.loads(value) if value[:1] in "[{" else value
    return run_module("rollout_journal", params, check=check, diff=check)


def test_the_module_walks_a_rollout_through_its_states(tmp_path: Path) -> None:
    started = journal_module(
        tmp_path,
        "service=catalog",
        "action=start",
        "target=v2",
        'versions={"catalog-1": "v1", "catalog-2": "v1"}',
        'batches=[["catalog-1"], ["catalog-2"]]',
    )
    assert started.get("changed") is True, started
    assert started["journal"]["status"] == "running" and started["journal"]["from"]["catalog-1"] == "v1"
    again = journal_module(
        tmp_path,
        "service=catalog",
        "action=start",
        "target=v2",
        'versions={"catalog-1": "v1", "catalog-2": "v1"}',
        'batches=[["catalog-1"], ["catalog-2"]]',
    )
    assert again["changed"] is False  # the same rollout recorded the same way
    # --check --diff shows the change and writes nothing
    path = tmp_path / "rollouts" / "catalog.json"
    before = path.read_text()
    checked = journal_module(
        tmp_path,
        "service=catalog",
        "action=start",
        "target=v3",
        'versions={"catalog-1": "v1", "catalog-2": "v1"}',
        'batches=[["catalog-1", "catalog-2"]]',
        check=True,
    )
    assert checked["changed"] is True and '"target": "v3"' in checked["diff"]["after"]
    assert path.read_text() == before
    # halted in the first batch (the steps' reports say so: planner/progress.py)
    save(path, {**load(path), "status": "halted", "halted_at": "catalog-1", "reason": "gate"})
    back = journal_module(tmp_path, "service=catalog", "action=rollback_version")
    assert (back["changed"], back["version"]) == (False, "v1")
    desired = journal_module(tmp_path, "service=catalog", "action=desired_version", "inventory_version=v9")
    assert desired["version"] == "v1" and "halted and was reverted" in desired["why"], desired


def test_the_module_refuses_bad_input_and_changes_nothing(tmp_path: Path) -> None:
    missing = journal_module(tmp_path, "service=catalog", "action=start", "target=v2")
    assert missing.get("failed") and "versions" in missing["msg"] and "batches" in missing["msg"], missing
    bad_name = journal_module(tmp_path, "service=../x", "action=read")
    assert bad_name.get("failed") and "service: expected a name" in bad_name["msg"]
    nothing = journal_module(tmp_path, "service=catalog", "action=rollback_version")
    assert nothing.get("failed") and "no rollout of 'catalog' is recorded" in nothing["msg"]
    assert not (tmp_path / "rollouts").exists()


# --- a run scoped to a datacenter (a per-DC reconcile job) --------------------------------------


def test_a_scoped_run_has_a_journal_of_its_own_and_rivals_the_services(tmp_path: Path) -> None:
    whole, dc1 = journal_path(tmp_path, "catalog"), journal_path(tmp_path, "catalog", "dc1")
    assert (whole.name, dc1.name) == ("catalog.json", "catalog@dc1.json")
    with pytest.raises(JournalError, match=r"scope .a datacenter.: expected a name"):
        journal_path(tmp_path, "catalog", "dc1/../x")
    dc2 = journal_path(tmp_path, "catalog", "dc2")
    for path in (dc1, dc2, journal_path(tmp_path, "orders", "dc1")):
        save(path, {"service": path.stem, "status": "complete"})
    assert rivals(whole) == [dc1, dc2]  # a run of the whole service waits for every DC's
    assert rivals(dc1) == [whole]  # a DC's waits for the whole service's, never for another DC's


def test_a_new_run_waits_for_the_parts_of_a_rival_run_and_says_so(tmp_path: Path) -> None:
    whole, dc1 = journal_path(tmp_path, "catalog"), journal_path(tmp_path, "catalog", "dc1")
    save(dc1, {"status": "running"})
    said: list[str] = []
    with parts_lock(dc1):  # a part of the dc1 job still runs
        with pytest.raises(JournalError, match=r"catalog@dc1.json still run after 0 s"):
            wait_for_earlier_parts(whole, 0.3, said.append)
        assert wait_for_earlier_parts(journal_path(tmp_path, "catalog", "dc2"), 0.3, said.append) == 0.0
    assert said == ["waiting for the parts of a run of catalog@dc1.json to end"]
    assert wait_for_earlier_parts(whole, 0.3, said.append) < 0.3  # it ended: no wait


def test_the_module_records_a_scoped_run_apart_and_refuses_a_scope_where_none_applies(
    tmp_path: Path,
) -> None:
    started = journal_module(
        tmp_path,
        "service=catalog",
        "scope=dc1",
        "action=start",
        "target=v1",
        'versions={"catalog-1": ""}',
        'batches=[["catalog-1"]]',
    )
    assert started["changed"] and started["path"].endswith("rollouts/catalog@dc1.json"), started
    assert not (tmp_path / "rollouts" / "catalog.json").exists()
    read = journal_module(tmp_path, "service=catalog", "scope=dc1")
    assert read["journal"]["target"] == "v1" and read["changed"] is False
    for action in ("rollback_version", "desired_version"):
        refused = journal_module(
            tmp_path, "service=catalog", "scope=dc1", f"action={action}", "inventory_version=v1"
        )
        assert refused.get("failed") and "reads the service's own journal" in refused["msg"], refused


def test_the_journal_records_the_schemas_phase_and_a_later_rollout_keeps_it() -> None:
    from ansible_collections.berth.fleet.plugins.module_utils.planner.journal import migrations_recorded

    ledger = [
        {"id": "001_items", "phase": "expand", "sha256": "a", "version": "v1", "at": "2026-12-04T20:00:00Z"},
        {"id": "002_note", "phase": "expand", "sha256": "b", "version": "v2", "at": "2026-12-04T21:00:00Z"},
    ]
    journal = migrations_recorded(
        {"service": "catalog", "target": "v2"}, "expand", "v2", ["002_note"], ledger
    )
    assert journal["migrations"] == {
        "expand": {
            "version": "v2",
            "applied": ["002_note"],
            "this_run": ["002_note"],
            "at": "2026-12-04T21:00:00Z",
        },
        "phase": "expanded",
    }
    ledger.append(
        {"id": "003_req", "phase": "contract", "sha256": "c", "version": "v2", "at": "2026-12-04T22:00:00Z"}
    )
    journal = migrations_recorded(journal, "contract", "v2", ["003_req"], ledger)
    assert journal["migrations"]["phase"] == "contracted"
    assert journal["migrations"]["contract"]["applied"] == ["003_req"]
    assert journal["migrations"]["expand"]["applied"] == ["002_note"]  # the earlier phase stays
    later = journal_started(
        {**journal, "status": "complete", "from": {"catalog-1": "v1"}}, "catalog", "v3", {}, []
    )
    assert later["migrations"] == journal["migrations"]
