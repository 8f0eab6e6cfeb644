"""The journal follows a running rollout from its step events (what the action plugins record)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.planner import report
from ansible_collections.berth.fleet.plugins.module_utils.planner.journal import (
    JournalError,
    journal_path,
    journal_started,
    load,
    parts_lock,
    save,
    wait_for_earlier_parts,
)
from ansible_collections.berth.fleet.plugins.module_utils.planner.progress import (
    next_move,
    record_cycle,
    record_traffic,
    run_started,
)
from ansible_collections.berth.fleet.plugins.module_utils.planner.rollout import Member, plan_rollout

LBS = ["lb-dc1", "lb-dc2"]


def started(batch_size: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    members = [Member(f"catalog-{n}", f"dc{2 - n % 2}", n, "v1", True) for n in range(1, 5)]
    plan = plan_rollout("catalog", members, "v2", 2, batch_size=batch_size)
    steps = [step.as_dict() for step in plan.steps]
    versions = {m.name: "v1" for m in members}
    journal = journal_started({}, "catalog", "v2", versions, plan.batches)
    return run_started(journal, steps, LBS), steps


def traffic(
    journal: dict[str, Any], step: int, at: float, ready: float = 0.5, drain: float = 2.0
) -> dict[str, Any]:
    for lb in LBS:
        journal = record_traffic(journal, step, lb, at, {"ready_wait": ready, "drain_wait": drain})
    return journal


def test_a_batch_is_done_once_it_is_back_everywhere_and_the_last_step_completes() -> None:
    journal, steps = started()
    assert len(steps) == 3 and steps[0]["cycle"] == ["catalog-1", "catalog-2"]
    journal = traffic(journal, 0, at=100.0, ready=0.0, drain=3.2)
    for host in steps[0]["cycle"]:
        journal = record_cycle(journal, 0, host, {"risen_after": 0.8, "seconds": 1.5})
    assert journal["batches_done"] == [] and journal["status"] == "running"  # not back in rotation yet
    journal = record_traffic(journal, 1, "lb-dc1", 105.0, {"ready_wait": 0.6, "drain_wait": 2.5})
    assert journal["batches_done"] == []  # one LB has it back, the other not yet
    journal = record_traffic(journal, 1, "lb-dc2", 105.0, {"ready_wait": 0.7, "drain_wait": 2.4})
    assert journal["batches_done"] == [
        {
            "hosts": ["catalog-1", "catalog-2"],
            "seconds": 5.7,
            "drain_wait": 3.2,
            "risen_after": 0.8,
            "ready_wait": 0.7,
            "overlapped": False,
            "run": 1,
        }
    ]
    for host in steps[1]["cycle"]:
        journal = record_cycle(journal, 1, host, {"risen_after": 0.9, "seconds": 1.2})
    journal = traffic(journal, 2, at=110.0)
    assert journal["status"] == "complete" and len(journal["batches_done"]) == 2


def test_a_failed_cycle_halts_the_journal_with_where_and_why() -> None:
    journal, _steps = started()
    journal = traffic(journal, 0, at=1.0)
    journal = record_cycle(journal, 0, "catalog-1", {"risen_after": 0.5})
    journal = record_cycle(
        journal,
        0,
        "catalog-2",
        {"failed": True, "msg": "HTTP 503 3 times", "reverted": True, "reverted_healthy": True},
    )
    assert (journal["status"], journal["halted_at"], journal["reason"]) == (
        "halted",
        "catalog-2",
        "HTTP 503 3 times",
    )
    journal = traffic(journal, 1, at=5.0)  # the reverted batch is put back
    assert journal["status"] == "halted" and journal["batches_done"] == []


def test_early_drains_are_recorded_and_a_rerun_keeps_the_batches_it_finished() -> None:
    journal, steps = started(batch_size=1)
    assert steps[0]["early"] == ["catalog-2"]
    journal = traffic(journal, 0, at=0.0)
    journal = record_cycle(journal, 0, "catalog-1", {"risen_after": 0.4})
    journal = traffic(journal, 1, at=3.0)
    journal = record_cycle(journal, 1, "catalog-2", {"risen_after": 0.4})
    journal = traffic(journal, 2, at=6.0)
    assert [b["overlapped"] for b in journal["batches_done"]] == [False, True]
    # interrupted here; the rerun plans what is left and keeps what was done
    rerun = run_started(
        journal_started(journal, "catalog", "v2", {}, [["catalog-3"], ["catalog-4"]]), steps, LBS
    )
    assert rerun["run"]["id"] == 2 and len(rerun["batches_done"]) == 2
    rerun = traffic(rerun, 0, at=20.0)
    assert len(rerun["batches_done"]) == 2 and rerun["status"] == "running"


def test_a_load_balancer_that_fails_its_step_halts_the_rollout() -> None:
    journal, _steps = started()
    journal = record_traffic(journal, 0, "lb-dc1", 1.0, {"drain_wait": 2.0})
    journal = record_traffic(
        journal, 0, "lb-dc2", 1.0, {"failed": True, "msg": "catalog-1 still has 2 sessions"}
    )
    assert (journal["status"], journal["halted_at"]) == ("halted", "lb-dc2")
    unreachable = record_cycle(started()[0], 0, "catalog-1", {"unreachable": True, "msg": "ssh: no route"})
    assert unreachable["status"] == "halted" and unreachable["reason"] == "ssh: no route"


def test_the_halt_state_names_the_first_failure_and_who_stays_out() -> None:
    from ansible_collections.berth.fleet.plugins.module_utils.planner.progress import halt_state

    ok = {"catalog-1": {"changed": True}, "catalog-2": {"skipped": True}}
    assert halt_state({}, ["catalog-1", "catalog-2"], ok) == {}
    failed = {
        "catalog-1": {
            "failed": True,
            "msg": "v3 failed",
            "reverted": True,
            "reverted_healthy": True,
            "version": "v2",
        },
        "catalog-2": {
            "failed": True,
            "msg": "no previous release",
            "reverted": False,
            "reverted_healthy": False,
        },
    }
    halt = halt_state({}, ["catalog-1", "catalog-2"], failed)
    assert halt == {
        "host": "catalog-1",
        "reason": "v3 failed",
        "keep_out": ["catalog-2"],
        "outcome": [
            "catalog-1 is back on v2 and in rotation",
            "catalog-2 had no previous release to go back to and stays out of rotation",
        ],
    }
    later = halt_state(halt, ["lb-dc1"], {"lb-dc1": {"unreachable": True}})
    assert later["reason"] == "v3 failed" and later["keep_out"] == ["catalog-2", "lb-dc1"]


def test_without_load_balancers_the_rollout_completes_when_every_instance_is_cycled() -> None:
    journal, steps = started()
    journal = run_started(journal, steps, [])
    for host in steps[0]["cycle"]:
        journal = record_cycle(journal, 0, host, {"risen_after": 0.5})
    assert journal["status"] == "running"
    for host in steps[1]["cycle"]:
        journal = record_cycle(journal, 1, host, {"risen_after": 0.5})
    assert journal["status"] == "complete"


def test_the_journal_keeps_the_parts_of_a_step_in_order() -> None:
    from ansible_collections.berth.fleet.plugins.module_utils.planner.progress import gate

    journal, steps = started()
    assert gate(journal, 0, "traffic") == (journal, "")  # the first step waits for nothing
    # an instance is cycled only once every LB drained its batch
    journal = record_traffic(journal, 0, "lb-dc1", 1.0, {"drain_wait": 2.0})
    gated, why = gate(journal, 0, "cycle")
    assert "lb-dc2 did not report draining the batch" in why
    assert gated["status"] == "halted" and gated["halted_at"] == "lb-dc2"
    journal = record_traffic(journal, 0, "lb-dc2", 1.0, {"drain_wait": 2.0})
    assert gate(journal, 0, "cycle")[1] == ""
    # the next LB step waits for every instance of this one
    journal = record_cycle(journal, 0, steps[0]["cycle"][0], {"risen_after": 0.5})
    gated, why = gate(journal, 1, "traffic")
    silent = steps[0]["cycle"][1]
    assert why.startswith(f"step 2 cannot start: {silent} did not report the step before")
    # the silent instance stays out of rotation: nobody knows what state it was left in
    assert gated["halt"]["keep_out"] == [silent]
    journal = record_cycle(journal, 0, silent, {"risen_after": 0.5})
    assert gate(journal, 1, "traffic")[1] == ""


def test_after_a_halt_only_the_recovery_runs_and_a_new_run_forgets_the_halt() -> None:
    from ansible_collections.berth.fleet.plugins.module_utils.planner.progress import gate

    journal, steps = started()
    assert gate(journal, 3, "traffic", recover=True)[1] == "the rollout did not halt: nothing to put back"
    journal = traffic(journal, 0, at=1.0)
    first, second = steps[0]["cycle"]
    journal = record_cycle(journal, 0, first, {"risen_after": 0.5})
    journal = record_cycle(
        journal, 0, second, {"failed": True, "msg": "HTTP 503", "reverted": True, "reverted_healthy": False}
    )
    assert gate(journal, 1, "traffic")[1] == f"the rollout halted at {second}: HTTP 503"
    assert gate(journal, 1, "cycle")[1].startswith("the rollout halted")
    recovering, why = gate(journal, 3, "traffic", recover=True)
    assert why == "" and recovering["halt"]["keep_out"] == [second]
    assert recovering["halt"]["outcome"] == [
        f"{second} had no previous release to go back to and stays out of rotation"
    ]
    rerun = run_started(journal_started(journal, "catalog", "v2", {}, [[second]]), steps, LBS)
    assert "halt" not in rerun and rerun["status"] == "running"


def test_a_batch_drained_early_counts_its_drain_from_the_early_start() -> None:
    from ansible_collections.berth.fleet.plugins.module_utils.planner.progress import record_early_drain

    journal, steps = started()
    for lb in LBS:  # drained while the release installed, 2.5 s before the step
        journal = record_early_drain(journal, 0, lb, 97.5, {"changed": True})
    journal = record_traffic(journal, 0, "lb-dc1", 100.0, {"drain_wait": 1.5})  # still draining: exact
    journal = record_traffic(journal, 0, "lb-dc2", 100.0, {"drain_wait": 0.0})  # idle already: unknown
    assert gate(journal, 0, "cycle")[1] == ""  # the early drain is not the step: the step still ran
    for host in steps[0]["cycle"]:
        journal = record_cycle(journal, 0, host, {"risen_after": 0.5})
    journal = traffic(journal, 1, at=105.0, ready=0.5)
    (batch,) = journal["batches_done"]
    assert batch["drain_wait"] == 4.0  # 2.5 s before the step + 1.5 s in it
    assert batch["seconds"] == 8.0  # from the early drain to back in rotation everywhere


def gate(journal: dict[str, Any], step: int, kind: str) -> tuple[dict[str, Any], str]:
    from ansible_collections.berth.fleet.plugins.module_utils.planner.progress import gate as journal_gate

    return journal_gate(journal, step, kind)


def moves(journal: dict[str, Any], hosts: list[str]) -> tuple[dict[str, Any], dict[str, tuple[str, int]]]:
    """Every host asks in turn, as the rollout_steps actions do under the journal's lock."""
    seen = {}
    for host in hosts:
        journal, move, step = next_move(journal, host)
        seen[host] = (move, step)
    return journal, seen


def test_instances_meet_in_the_journal_one_claims_each_lb_step_and_each_cycles_when_drained() -> None:
    journal, _steps = started()  # batches [catalog-1, catalog-2], [catalog-3, catalog-4], then ready
    hosts = ["catalog-3", "catalog-1", "catalog-2", "catalog-4"]
    journal, seen = moves(journal, hosts)
    # the first to ask claims step 1's LB part; every other instance waits for it
    assert seen == {
        "catalog-3": ("traffic", 0),
        "catalog-1": ("wait", 0),
        "catalog-2": ("wait", 0),
        "catalog-4": ("wait", 0),
    }
    assert journal["run"]["claims"] == {"0": "catalog-3"}
    journal = traffic(journal, 0, at=100.0)
    journal, seen = moves(journal, hosts)
    assert seen["catalog-1"] == ("cycle", 0) and seen["catalog-2"] == ("cycle", 0)
    assert seen["catalog-3"] == ("wait", 0) and seen["catalog-4"] == ("wait", 0)  # batch 1 is cycling
    journal = record_cycle(journal, 0, "catalog-1", {"risen_after": 0.8, "seconds": 1.2})
    assert next_move(journal, "catalog-1")[1:] == ("wait", 0)  # its batch mate is not healthy yet
    journal = record_cycle(journal, 0, "catalog-2", {"risen_after": 0.9, "seconds": 1.3})
    journal, seen = moves(journal, ["catalog-2", "catalog-1", "catalog-4"])
    assert seen == {"catalog-2": ("traffic", 1), "catalog-1": ("wait", 1), "catalog-4": ("wait", 1)}
    journal = traffic(journal, 1, at=105.0)
    # batch 1 is back everywhere: its instances are done; batch 2's cycle
    journal, seen = moves(journal, hosts)
    assert seen["catalog-1"] == ("done", 1) and seen["catalog-2"] == ("done", 1)
    assert seen["catalog-3"] == ("cycle", 1) and seen["catalog-4"] == ("cycle", 1)
    for host in ("catalog-3", "catalog-4"):
        journal = record_cycle(journal, 1, host, {"risen_after": 0.8, "seconds": 1.2})
    journal, seen = moves(journal, ["catalog-4", "catalog-3"])
    assert seen == {"catalog-4": ("traffic", 2), "catalog-3": ("wait", 2)}  # the last step: ready
    journal = traffic(journal, 2, at=110.0)
    journal, seen = moves(journal, hosts)
    assert set(seen.values()) <= {("done", 1), ("done", 2)} and journal["status"] == "complete"


def test_a_halt_stops_every_instance_and_a_new_run_forgets_the_claims() -> None:
    journal, steps = started()
    journal, _move, _step = next_move(journal, "catalog-1")
    journal = traffic(journal, 0, at=100.0)
    journal = record_cycle(journal, 0, "catalog-1", {"failed": True, "msg": "gate failed", "seconds": 1})
    for host in ("catalog-1", "catalog-2", "catalog-3"):
        assert next_move(journal, host)[1:] == ("halted", -1)
    again = run_started({**journal, "status": "running"}, steps, LBS)  # as rollout_journal start does
    assert "claims" not in again["run"] and next_move(again, "catalog-2")[1:] == ("traffic", 0)


def test_without_load_balancers_the_instances_cycle_batch_after_batch() -> None:
    journal, steps = started()
    journal = run_started(journal, steps, [])
    assert next_move(journal, "catalog-3")[1:] == ("wait", 0)
    assert next_move(journal, "catalog-1")[1:] == ("cycle", 0)
    for host in steps[0]["cycle"]:
        journal = record_cycle(journal, 0, host, {"risen_after": 0.8, "seconds": 1.2})
    assert next_move(journal, "catalog-1")[1:] == ("done", 1)
    assert next_move(journal, "catalog-3")[1:] == ("cycle", 1)
    assert next_move(journal, "nobody")[1:] == ("done", -1)  # not in the plan: nothing to wait for


def test_a_part_of_a_superseded_run_can_neither_move_nor_report(tmp_path: Path) -> None:
    """A deploy killed mid-rollout leaves its parts running (Ansible's workers are sessions of their
    own); once the rerun starts a new run, the old parts stop and their reports are refused."""
    journal, steps = started()
    where = {"state_dir": str(tmp_path), "service": "catalog"}
    save(journal_path(tmp_path, "catalog"), run_started(journal, steps, LBS))  # run 2
    old = {**where, "run": 1, "step": 0}
    assert report.next_move(old, "catalog-1")[:2] == ("superseded", -1)
    assert report.gate_step(old, "cycle") == ("run 1 of this rollout was superseded by run 2", [])
    with pytest.raises(JournalError, match="superseded by run 2: catalog-1's report is not recorded"):
        report.record_step(old, "cycle", "catalog-1", 100.0, {"risen_after": 1, "seconds": 1})
    move, step, now = report.next_move({**where, "run": 2}, "catalog-1")
    assert (move, step) == ("traffic", 0) and now["run"]["claims"] == {"0": "catalog-1"}
    assert load(journal_path(tmp_path, "catalog"))["run"]["claims"] == {"0": "catalog-1"}  # written


def test_a_new_run_waits_until_no_part_of_an_earlier_run_runs(tmp_path: Path) -> None:
    path = journal_path(tmp_path, "catalog")
    said: list[str] = []
    assert wait_for_earlier_parts(path, 0.3, said.append) == 0.0  # no part ever ran
    with parts_lock(path):  # a part of the earlier run still runs (a separate open file: flock conflicts)
        with pytest.raises(
            JournalError, match=r"still run after 0 s .* another deploy or reconcile of this service"
        ):
            wait_for_earlier_parts(path, 0.3, said.append)
        with parts_lock(path):  # parts of one run share it
            pass
    assert said == ["waiting for the parts of an earlier (interrupted) run of this rollout to end"]
    assert wait_for_earlier_parts(path, 0.3, said.append) < 0.1  # it ended: go at once
