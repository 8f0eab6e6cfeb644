"""The rollout report (planner/timeline.py): a journal as the engine records it and the samples a
sampler took of every LB, on one timeline."""

from __future__ import annotations

from typing import Any

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.planner.journal import journal_started
from ansible_collections.berth.fleet.plugins.module_utils.planner.progress import (
    claim_sampler,
    record_cycle,
    record_early_drain,
    record_traffic,
    run_started,
)
from ansible_collections.berth.fleet.plugins.module_utils.planner.rollout import Member, plan_rollout
from ansible_collections.berth.fleet.plugins.module_utils.planner.timeline import build_report

LBS = ["lb-dc1", "lb-dc2"]
T = 1_700_000_000.0  # the controller's clock when the rollout began
RATE = 200  # requests/s through each LB


def journal_of(max_unavailable: int = 1, batch_size: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    members = [Member(f"catalog-{n}", f"dc{2 - n % 2}", n, "v1", True) for n in (1, 2)]
    plan = plan_rollout("catalog", members, "v2", max_unavailable, batch_size=batch_size)
    steps = [step.as_dict() for step in plan.steps]
    journal = journal_started({}, "catalog", "v2", {m.name: "v1" for m in members}, plan.batches)
    return run_started(journal, steps, LBS), steps


def traffic(journal: dict[str, Any], step: int, at: float, ready: float, drain: float) -> dict[str, Any]:
    for lb in LBS:
        journal = record_traffic(journal, step, lb, T + at, {"ready_wait": ready, "drain_wait": drain})
    return journal


def cycle(
    journal: dict[str, Any], step: int, host: str, at: float, until: float, **result: Any
) -> dict[str, Any]:
    outcome = {"risen_after": 0.9, "seconds": round(until - at - 0.2, 3), "waited": 1.5, **result}
    return record_cycle(journal, step, host, outcome, (T + at, T + until))


def complete_rollout() -> dict[str, Any]:
    """catalog-1 then catalog-2, one per batch; the first batch drained early, before the tasks began."""
    journal, steps = journal_of()
    assert [s["cycle"] for s in steps] == [["catalog-1"], ["catalog-2"], []]
    for lb in LBS:
        journal = record_early_drain(journal, 0, lb, T, {})
    journal, _mine = claim_sampler(journal, "catalog-1", T + 1.0)
    journal = traffic(journal, 0, at=2.0, ready=0.0, drain=1.0)  # catalog-1 idle at 3.0
    journal = cycle(journal, 0, "catalog-1", at=3.1, until=5.1)
    journal = traffic(journal, 1, at=5.2, ready=0.5, drain=2.0)  # catalog-1 UP at 5.7, catalog-2 idle at 7.7
    journal = cycle(journal, 1, "catalog-2", at=7.8, until=9.8)
    journal = traffic(journal, 2, at=9.9, ready=0.6, drain=0.0)  # catalog-2 UP at 10.5
    assert journal["status"] == "complete"
    return journal


def samples(start: float = 1.0, end: float = 11.0, interval: float = 0.25) -> list[dict[str, Any]]:
    """What one LB answered every ``interval`` s: RATE requests/s, both servers UP but the one drained."""
    taken = []
    for k in range(round((end - start) / interval) + 1):
        at = start + k * interval
        out = {"catalog-1"} if 2.0 <= at < 5.7 else {"catalog-2"} if 5.7 <= at < 10.5 else set()
        up = [h for h in ("catalog-1", "catalog-2") if h not in out]
        taken.append({"t": T + at, "requests": round(RATE * at), "errors_5xx": 0, "up": up, "servers": {}})
    return taken


def report_of(
    journal: dict[str, Any], taken: dict[str, list[dict[str, Any]]] | None = None
) -> dict[str, Any]:
    return build_report(journal, taken or {lb: samples() for lb in LBS}, 0.25)


def test_times_are_from_the_first_event_and_the_run_is_described() -> None:
    report = report_of(complete_rollout())
    assert report["started_at"] == T  # the early drain, before the sampler's first read at 1.0
    assert report["samples"]["lb-dc1"][0]["t"] == 1.0
    assert report["seconds"] == 10.5  # catalog-2 UP again on every LB
    assert (report["service"], report["target"], report["status"], report["run"]) == (
        "catalog",
        "v2",
        "complete",
        1,
    )
    assert report["sampler"] == "catalog-1" and report["lbs"] == LBS
    assert report["warnings"] == []


def test_requests_per_second_from_the_counters_increase() -> None:
    series = report_of(complete_rollout())["series"]["lb-dc1"]
    assert series["t"][:3] == [1.0, 1.25, 1.5]
    assert series["requests_per_s"][0] is None  # no interval before the first read
    assert set(series["requests_per_s"][1:]) == {RATE}
    assert set(series["errors_5xx_per_s"][1:]) == {0}


def test_servers_up_follow_the_batches() -> None:
    report = report_of(complete_rollout())
    up = dict(zip(report["series"]["lb-dc2"]["t"], report["series"]["lb-dc2"]["servers_up"], strict=True))
    assert (up[1.75], up[2.0], up[5.5], up[5.75], up[10.25], up[10.5]) == (2, 1, 1, 1, 1, 2)
    assert report["totals"]["lb-dc2"] == {"requests": 2000, "errors_5xx": 0, "fewest_up": 1, "most_up": 2}


def test_a_5xx_delta_is_an_error_rate_at_its_read_and_counted() -> None:
    taken = samples()
    for sample in taken[20:]:  # 2 errors between the reads at 5.75 and 6.0
        sample["errors_5xx"] = 2
    report = report_of(complete_rollout(), {"lb-dc1": taken, "lb-dc2": samples()})
    series = report["series"]["lb-dc1"]
    rates = dict(zip(series["t"], series["errors_5xx_per_s"], strict=True))
    assert rates[6.0] == 8.0 and rates[5.75] == 0 and rates[6.25] == 0
    assert report["totals"]["lb-dc1"]["errors_5xx"] == 2 and report["totals"]["lb-dc2"]["errors_5xx"] == 0


def test_a_failed_read_is_a_gap_never_a_guess() -> None:
    taken = samples()
    taken[8] = {"t": taken[8]["t"], "error": "HAProxy did not answer 'show stat 3 6 -1' within 1 s"}
    report = report_of(complete_rollout(), {"lb-dc1": taken, "lb-dc2": samples()})
    series = report["series"]["lb-dc1"]
    assert series["t"][8] == 3.0
    assert (series["requests_per_s"][8], series["servers_up"][8]) == (None, None)
    assert series["requests_per_s"][9] == RATE  # over the 0.5 s since the last good read
    assert report["coverage"]["lb-dc1"] == {
        "first": 1.0,
        "last": 11.0,
        "reads": 41,
        "failed": 1,
        "max_gap": 0.5,
    }
    assert report["coverage"]["lb-dc2"]["max_gap"] == 0.25 and report["coverage"]["lb-dc2"]["failed"] == 0
    assert report["samples"]["lb-dc1"][8]["error"].startswith("HAProxy did not answer")


def test_a_long_silence_and_a_counter_that_went_back_are_warned_about() -> None:
    taken = samples()
    del taken[10:14]  # no read for 1.25 s
    for sample in taken[20:]:  # HAProxy restarted: its counters start again from 0
        sample["requests"] -= 1500
    report = report_of(complete_rollout(), {"lb-dc1": taken, "lb-dc2": samples()})
    series = report["series"]["lb-dc1"]
    assert series["requests_per_s"][10] == RATE  # an average over the silence, still the truth
    assert series["requests_per_s"][20] is None  # no rate across the restart
    assert report["warnings"] == [
        "lb-dc1: no good read for 1.25 s before 4.50 s",
        "lb-dc1: the counters went back at 7.00 s (HAProxy restarted?): no rate for the 0.25 s before",
    ]
    # what went through: everything but the 0.25 s across the restart
    assert report["totals"]["lb-dc1"]["requests"] == 2000 - 50


def test_an_lb_that_was_never_read_is_said() -> None:
    report = report_of(complete_rollout(), {"lb-dc1": samples()})
    assert report["lbs"] == LBS and report["samples"]["lb-dc2"] == []
    assert report["coverage"]["lb-dc2"]["first"] is None
    assert "lb-dc2: no sample was taken" in report["warnings"]


def test_batches_on_the_timeline_with_the_journals_figures() -> None:
    journal = complete_rollout()
    first, second = report_of(journal)["batches"]
    assert first["hosts"] == ["catalog-1"] and second["hosts"] == ["catalog-2"]
    assert (first["drain_started"], first["drained"]) == (0.0, 3.0)  # the early drain, then idle
    assert (first["cycle_started"], first["cycle_ended"], first["back"]) == (3.1, 5.1, 5.7)
    assert first["ready_started"] == 5.2
    assert first["cycles"]["catalog-1"] == {
        "started": 3.1,
        "ended": 5.1,
        "seconds": 1.8,
        "gate": 1.5,
        "risen_after": 0.9,
        "failed": False,
        "reverted": False,
    }
    assert (second["drain_started"], second["drained"], second["back"]) == (5.7, 7.7, 10.5)  # after the ready
    for batch, done in zip((first, second), journal["batches_done"], strict=True):
        assert batch["finished"] and not batch["failed"]
        for key in ("seconds", "drain_wait", "risen_after", "ready_wait"):
            assert batch[key] == done[key], key
    assert first["drain_wait"] == 3.0  # from the early drain to the end of the step's wait


def test_steps_with_what_each_lb_reported() -> None:
    steps = report_of(complete_rollout())["steps"]
    assert [(s["step"], s["started"], s["ended"]) for s in steps] == [
        (1, 2.0, 3.0),
        (2, 5.2, 7.7),
        (3, 9.9, 10.5),
    ]
    assert steps[1]["lbs"]["lb-dc2"] == {
        "started": 5.2,
        "ready_wait": 0.5,
        "drain_wait": 2.0,
        "failed": False,
    }
    assert (steps[1]["ready"], steps[1]["drain"], steps[1]["cycle"]) == (
        ["catalog-1"],
        ["catalog-2"],
        ["catalog-2"],
    )


def test_a_batch_drained_early_in_the_step_before_began_to_drain_there() -> None:
    journal, steps = journal_of(max_unavailable=2, batch_size=1)
    assert steps[0]["early"] == ["catalog-2"]  # drained in step 1 with catalog-1
    journal = traffic(journal, 0, at=2.0, ready=0.0, drain=1.0)
    journal = cycle(journal, 0, "catalog-1", at=3.1, until=5.1)
    journal = traffic(journal, 1, at=5.2, ready=0.5, drain=0.0)
    second = report_of(journal, {lb: samples(0.0, 6.0) for lb in LBS})["batches"][1]
    assert second["drain_started"] == 2.0 and second["drained"] == 5.7
    assert not second["finished"] and second["back"] is None and second["seconds"] is None


def test_a_halted_rollout_says_where_and_why_and_its_batch_is_unfinished() -> None:
    journal, _steps = journal_of()
    journal = traffic(journal, 0, at=0.0, ready=0.0, drain=1.0)
    journal = cycle(journal, 0, "catalog-1", at=1.1, until=4.0, failed=True, msg="v3 failed its health gate")
    report = report_of(journal, {lb: samples(0.0, 5.0) for lb in LBS})
    assert report["status"] == "halted"
    assert (report["halted_at"], report["reason"]) == ("catalog-1", "v3 failed its health gate")
    (batch,) = report["batches"][:1]
    assert batch["failed"] and not batch["finished"] and batch["back"] is None
    assert batch["drain_wait"] == 1.0 and batch["risen_after"] == 0.9


def test_a_journal_of_before_the_report_places_no_cycle() -> None:
    """Cycle events recorded without their span (journals written before the report existed)."""
    journal, _steps = journal_of()
    journal = traffic(journal, 0, at=0.0, ready=0.0, drain=1.0)
    journal = record_cycle(journal, 0, "catalog-1", {"risen_after": 0.9, "seconds": 1.0})
    batch = report_of(journal)["batches"][0]
    assert batch["cycle_started"] is None and batch["cycles"]["catalog-1"]["started"] is None
    assert batch["drained"] == 1.0


def test_one_sampler_per_run() -> None:
    journal, _steps = journal_of()
    claimed, mine = claim_sampler(journal, "catalog-2", T)
    assert mine and claimed["run"]["sampler"] == {"host": "catalog-2", "started": T}
    again, mine = claim_sampler(claimed, "catalog-1", T + 1)
    assert not mine and again == claimed
    rerun = run_started({**claimed, "status": "running"}, claimed["run"]["steps"], LBS)
    assert claim_sampler(rerun, "catalog-1", T + 2)[1]  # a new run, a new sampler


@pytest.mark.parametrize("status", ["complete", "halted"])
def test_nothing_to_sample_once_the_run_ended(status: str) -> None:
    journal, _steps = journal_of()
    assert claim_sampler({**journal, "status": status}, "catalog-1", T) == (
        {**journal, "status": status},
        False,
    )
    assert claim_sampler({}, "catalog-1", T) == ({}, False)
