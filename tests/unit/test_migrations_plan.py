"""Expand/contract rules (planner/migrations.py, issue 14): what runs, and what is refused."""

from __future__ import annotations

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.planner.migrations import (
    Applied,
    Migration,
    MigrationError,
    contract_refusal,
    parse_ledger,
    parse_migrations,
    pending,
    rollback_refusal,
)

V1 = (Migration("001_items", "expand", "a" * 64),)
V2 = (*V1, Migration("002_note", "expand", "b" * 64), Migration("003_note_required", "contract", "c" * 64))


def ran(*migrations: Migration, version: str = "v2") -> tuple[Applied, ...]:
    return tuple(Applied(m.id, m.phase, m.sha256, version, "2026-12-04T22:00:00Z") for m in migrations)


def test_expand_runs_what_the_ledger_does_not_hold_yet_in_order_and_only_once() -> None:
    assert [m.id for m in pending(V2, (), "expand")] == ["001_items", "002_note"]
    assert [m.id for m in pending(V2, ran(V1[0], version="v1"), "expand")] == ["002_note"]
    assert pending(V2, ran(*V2[:2]), "expand") == []


def test_contract_needs_every_expand_of_its_release_first() -> None:
    with pytest.raises(MigrationError, match=r"expand migration\(s\) 002_note have not run"):
        pending(V2, ran(V1[0]), "contract")
    assert [m.id for m in pending(V2, ran(*V2[:2]), "contract")] == ["003_note_required"]
    assert pending(V2, ran(*V2), "contract") == []


def test_a_migration_edited_after_it_ran_is_refused() -> None:
    edited = (Migration("001_items", "expand", "f" * 64),)
    with pytest.raises(MigrationError, match="001_items changed since v1 ran it"):
        pending(edited, ran(V1[0], version="v1"), "expand")


def test_contract_is_refused_while_another_version_is_in_rotation_on_any_lb() -> None:
    mixed = {
        "lb-dc1": {"catalog-1": "v2", "catalog-3": "v2"},
        "lb-dc2": {"catalog-2": "v1", "catalog-4": "v2"},
    }
    refusal = contract_refusal("v2", mixed)
    assert (
        refusal is not None
        and "catalog-2 (v1) on lb-dc2" in refusal
        and "finish the rollout to v2" in refusal
    )
    assert contract_refusal("v2", {"lb-dc1": {"catalog-1": "v2"}, "lb-dc2": {"catalog-2": "v2"}}) is None


def test_rollback_is_refused_once_a_contract_ran_that_the_target_does_not_carry() -> None:
    refusal = rollback_refusal("v1", V1, ran(*V2))
    assert refusal is not None and refusal.startswith(
        "rollback of v1 refused: contract migration(s) 003_note_required (run by v2"
    )
    assert "roll forward" in refusal
    assert str(rollback_refusal("v1", V1, ran(*V2), verb="deploy")).startswith("deploy of v1 refused")
    assert rollback_refusal("v1", V1, ran(*V2[:2])) is None  # only expands ran: v1 ignores them
    assert rollback_refusal("v3", V2, ran(*V2)) is None  # a release that carries the contract


def test_what_version_json_and_the_ledger_say_is_checked() -> None:
    assert parse_migrations(None, "catalog-v1") == ()
    assert parse_migrations([m.as_dict() for m in V2], "catalog-v2") == V2
    with pytest.raises(
        MigrationError, match=r"catalog-v2: migrations\[0\].phase: expected expand or contract"
    ):
        parse_migrations([{"id": "001", "phase": "forward", "sha256": "x"}], "catalog-v2")
    with pytest.raises(MigrationError, match="expected id, phase and sha256"):
        parse_migrations([{"id": "001"}], "catalog-v2")
    assert parse_ledger([a.as_dict() for a in ran(*V1)]) == ran(*V1)


def test_migrations_run_from_the_first_instance_the_query_reached() -> None:
    from ansible_collections.berth.fleet.plugins.module_utils.planner.migrations import runner

    db = {"name": "catalog"}
    hostvars = {
        "catalog-1": {"berth_database": db, "__rollout_release": {"unreachable": True}},
        "catalog-2": {"berth_database": db, "__rollout_release": {"current": "v1"}},
        "catalog-3": {"berth_database": db},
    }
    assert runner(hostvars, ["catalog-3", "catalog-2", "catalog-1"]) == "catalog-2"
    assert runner({h: {"berth_database": db} for h in hostvars}, ["catalog-2", "catalog-1"]) == "catalog-1"
    assert runner({"payments-1": {}}, ["payments-1"]) == "" and runner({}, []) == ""
