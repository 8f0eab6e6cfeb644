"""The canary planner (planner/canary.py): what a deploy does, the weights, the verdicts, the steps.

The steps run here against fakes of the load balancers (weights and counters); the integration
test (tests/integration/test_rollout_canary.py) runs them against real HAProxy under load."""

from __future__ import annotations

from typing import Any

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.planner.canary import (
    ABORTING,
    PAUSED,
    PROMOTING,
    CanaryError,
    Sample,
    StepRunner,
    judge_run,
    measure,
    new_record,
    plan_canary,
    read_record,
    sample,
    share_of,
    step_weights,
    write_record,
)

STABLE = {"payments-1": "v1", "payments-2": "v1"}
ANALYSIS = {
    "interval": 1,
    "count": 3,
    "min_requests": 20,
    "failure_limit": 0,
    "inconclusive_limit": 0,
    "metrics": [
        {"metric": "error_rate", "pass": 0.01, "fail": 0.02},
        {"metric": "error_rate_vs_baseline", "pass": 0.02, "fail": 0.02},
    ],
}
STEPS = [{"weight": 10}, {"analysis": ANALYSIS}, {"weight": 30}, {"analysis": ANALYSIS}]


def active(status: str, step: int = 1, **extra: Any) -> dict[str, Any]:
    record = new_record("payments", "v2", "v1", STEPS)
    record.update(status=status, step=step, **extra)
    return record


def test_a_new_version_starts_a_canary_beside_the_one_the_stable_instances_run() -> None:
    plan = plan_canary({}, "v2", True, "", STABLE)
    assert (plan.mode, plan.target, plan.stable, plan.step) == ("start", "v2", "v1", 0)


@pytest.mark.parametrize(
    ("versions", "target", "reason"),
    [
        ({"payments-1": "", "payments-2": ""}, "v1", "a first deploy"),
        (STABLE, "v1", "every stable instance runs v1: a repair in place"),
        ({"payments-1": "v2", "payments-2": "v1"}, "v2", "a rollout to v2 did not finish"),
    ],
)
def test_nothing_to_compare_with_or_nothing_new_is_a_plain_roll(
    versions: dict[str, str], target: str, reason: str
) -> None:
    plan = plan_canary({}, target, True, "", versions)
    assert plan.mode == "roll" and reason in plan.reason


def test_mixed_stable_versions_refuse_a_canary_of_a_third() -> None:
    with pytest.raises(CanaryError, match="the stable instances run v1, v2: a canary needs one version"):
        plan_canary({}, "v3", True, "", {"payments-1": "v1", "payments-2": "v2"})


def test_a_paused_canary_waits_for_the_operator() -> None:
    record = active(PAUSED, reason="step 2 (analysis) inconclusive: too few requests")
    with pytest.raises(CanaryError, match=r"is paused at step 2 of 4 .* -e action=resume"):
        plan_canary(record, "v1", False, "", STABLE)
    assert plan_canary(record, "v1", False, "resume", STABLE).mode == "continue"
    promote = plan_canary(record, "v1", False, "promote", STABLE)
    assert (promote.mode, promote.target) == ("promote", "v2")  # the canary's version, not the spec's
    assert plan_canary(record, "v1", False, "abort", STABLE).mode == "abort"


def test_a_deploy_of_another_version_waits_for_the_active_canary() -> None:
    with pytest.raises(CanaryError, match="a deploy of v3 has to wait"):
        plan_canary(active("running"), "v3", True, "", STABLE)


def test_an_interrupted_run_goes_on_from_its_step() -> None:
    plan = plan_canary(active("running", step=3), "v1", False, "", STABLE)
    assert (plan.mode, plan.step) == ("continue", 3)
    assert plan_canary(active(PROMOTING, step=4), "v1", False, "", STABLE).mode == "promote"
    assert plan_canary(active(ABORTING, reason="failed"), "v1", False, "", STABLE).mode == "abort"


def test_an_action_without_a_canary_is_refused() -> None:
    with pytest.raises(CanaryError, match="action=resume: no canary of this service is in progress"):
        plan_canary({"target": "v2", "status": "promoted"}, "v2", False, "resume", STABLE)


def test_a_rollback_aborts_an_active_canary_and_otherwise_rolls() -> None:
    assert plan_canary(active(PAUSED), "v0", True, "", STABLE, verb="rollback").mode == "abort"
    assert plan_canary({}, "v0", True, "", STABLE, verb="rollback").mode == "roll"
    assert plan_canary(active(PAUSED), "v1", False, "", STABLE, verb="reconcile").mode == "roll"


@pytest.mark.parametrize("share", [5, 10, 25, 49])
def test_weights_give_the_canary_and_the_baseline_their_share(share: int) -> None:
    weights = step_weights(share, ["payments-1", "payments-2"], "payments-3", "payments-4")
    assert max(weights.values()) <= 256
    assert share_of(weights, "payments-3") == pytest.approx(share / 100, abs=0.01)
    assert weights["payments-3"] == weights["payments-4"]


def test_weights_without_a_baseline_and_share_zero() -> None:
    weights = step_weights(60, ["a", "b", "c"], "canary", "")
    assert set(weights) == {"a", "b", "c", "canary"}
    assert share_of(weights, "canary") == pytest.approx(0.6, abs=0.01)
    assert step_weights(0, ["a"], "canary", "b")["canary"] == 0
    with pytest.raises(CanaryError):
        step_weights(50, ["a"], "canary", "b")  # canary and baseline would take everything


def test_a_sample_is_what_every_lb_counted_between_two_reads() -> None:
    first = {"lb-dc1": (100, 1, 5), "lb-dc2": (50, 0, 5)}
    last = {"lb-dc1": (130, 4, 10), "lb-dc2": (20, 2, 30)}  # lb-dc2 restarted
    seen = sample(first, last)
    assert (seen.requests, seen.errors) == (50, 5)
    assert seen.response_ms == pytest.approx((30 * 10 + 20 * 30) / 50)


def test_too_few_requests_is_inconclusive_never_a_pass() -> None:
    verdict = measure(ANALYSIS, Sample(5, 0, 3), Sample(40, 0, 3))
    assert verdict.status == "inconclusive"
    assert "the canary had 5 request(s), fewer than the 20" in verdict.reason
    assert measure(ANALYSIS, Sample(40, 0, 3), Sample(3, 0, 3)).status == "inconclusive"  # nor the baseline


def test_a_measurement_fails_passes_or_lies_between() -> None:
    assert measure(ANALYSIS, Sample(100, 10, 3), Sample(100, 0, 3)).status == "fail"
    assert measure(ANALYSIS, Sample(100, 0, 3), Sample(100, 0, 3)).status == "pass"
    between = measure(ANALYSIS, Sample(1000, 15, 3), Sample(1000, 15, 3))  # 1.5 %: between pass and fail
    assert between.status == "inconclusive" and "between pass 0.01 and fail 0.02" in between.reason


def test_a_run_fails_at_once_and_passes_only_with_every_measurement() -> None:
    good, bad = (
        measure(ANALYSIS, Sample(50, 0, 3), Sample(50, 0, 3)),
        measure(ANALYSIS, Sample(50, 9, 3), Sample(50, 0, 3)),
    )
    unsure = measure(ANALYSIS, Sample(1, 0, 3), Sample(50, 0, 3))
    assert judge_run(ANALYSIS, [good, bad])[0] == "fail"
    assert judge_run(ANALYSIS, [good, good])[0] == "running"
    assert judge_run(ANALYSIS, [good, good, good])[0] == "pass"
    assert judge_run(ANALYSIS, [unsure])[0] == "inconclusive"
    assert judge_run({**ANALYSIS, "inconclusive_limit": 1}, [unsure, good])[0] == "running"


class FakeLbs:
    """Counters that grow by a fixed amount per read, and the shares set."""

    def __init__(self, canary: tuple[int, int], baseline: tuple[int, int]) -> None:
        self.per_read = {"canary": canary, "baseline": baseline}
        self.totals = {"canary": [0, 0], "baseline": [0, 0]}
        self.shares: list[int] = []

    def set_share(self, share: int) -> dict[str, Any]:
        self.shares.append(share)
        return {"lb-dc1": {"share": share}}

    def read(self) -> dict[str, dict[str, tuple[int, int, int]]]:
        out = {}
        for track, (requests, errors) in self.per_read.items():
            self.totals[track][0] += requests
            self.totals[track][1] += errors
            out[track] = {"lb-dc1": (self.totals[track][0], self.totals[track][1], 4)}
        return out


def runner(record: dict[str, Any], lbs: FakeLbs, saved: list[dict[str, Any]]) -> StepRunner:
    return StepRunner(
        record=record,
        set_share=lbs.set_share,
        read=lbs.read,
        save=lambda r: saved.append(dict(r)),
        sleep=lambda seconds: None,
    )


def test_good_steps_end_promoting() -> None:
    lbs, saved = FakeLbs((40, 0), (40, 0)), []
    outcome = runner(new_record("payments", "v2", "v1", STEPS), lbs, saved).run()
    assert outcome["status"] == PROMOTING and lbs.shares == [10, 30]
    assert saved[-1]["step"] == len(STEPS)


def test_a_bad_canary_gets_weight_0_at_once_and_aborts() -> None:
    lbs, saved = FakeLbs((40, 4), (40, 0)), []
    outcome = runner(new_record("payments", "v2", "v1", STEPS), lbs, saved).run()
    assert outcome["status"] == ABORTING and lbs.shares == [10, 0]
    assert outcome["reason"].startswith(
        "step 2 (analysis) failed: 1 of 1 measurement(s) failed: error_rate 0.1 > 0.02"
    )


def test_no_traffic_pauses_and_again_after_a_resume_aborts() -> None:
    lbs, saved = FakeLbs((0, 0), (0, 0)), []
    record = new_record("payments", "v2", "v1", STEPS)
    first = runner(record, lbs, saved).run()
    assert first["status"] == PAUSED and first["step"] == 1 and "no data is never a pass" in first["reason"]
    assert lbs.shares == [10]  # the canary keeps its weight while paused
    record["status"] = "running"
    second = runner(record, lbs, saved).run()
    assert lbs.shares == [10, 10, 0]  # the weight again on the resume, then 0
    assert second["status"] == ABORTING and "inconclusive again after a resume" in second["reason"]


def test_a_pause_until_resumed_stops_after_the_pause() -> None:
    lbs, saved = FakeLbs((40, 0), (40, 0)), []
    record = new_record("payments", "v2", "v1", [{"weight": 5}, {"pause": "until_resumed"}, {"weight": 20}])
    assert runner(record, lbs, saved).run()["status"] == PAUSED and record["step"] == 2
    assert runner(record, lbs, saved).run()["status"] == PROMOTING and lbs.shares == [5, 5, 20]


def test_the_record_round_trips(tmp_path: Any) -> None:
    record = new_record("payments", "v2", "v1", STEPS)
    write_record(str(tmp_path), "payments", record)
    assert read_record(str(tmp_path), "payments")["target"] == "v2"
    assert read_record(str(tmp_path), "nothing") == {}
    (tmp_path / "rollouts" / "bad.canary.json").write_text("[]")
    with pytest.raises(CanaryError, match="not a canary record"):
        read_record(str(tmp_path), "bad")
