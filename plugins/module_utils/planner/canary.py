# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Canary: what a deploy of a canary service does, the weights of a step, and the analysis verdicts.

A canary service has its stable instances (the ones in rotation), one canary instance and, unless
``baseline: false``, one baseline instance - on machines of their own, all in the service's one
backend. A canary release installs the new version on the canary and restarts the baseline on the
current one at the same moment (so the analysis compares two fresh processes, Kayenta's method),
then runs the steps of ``strategy.canary.steps``: a weight step gives the canary (and the baseline)
that share of the requests on every load balancer; a pause waits, or stops the run until the
operator resumes; an analysis takes measurements of what the load balancers counted for the canary
and the baseline and judges them. A failed analysis aborts at once (the canary's weight 0 before
anything else); an inconclusive one pauses - no data, or too little, is never a pass - and is a
failure if it is inconclusive again after a resume. After the last step the stable instances roll
to the new version with the engine's batches, then the canary and the baseline retire.

The canary record, ``<state_dir>/rollouts/<service>.canary.json``, keeps where a canary stands
(``status``, the next ``step``), what each step did and why a canary paused or aborted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.fs import (
    JsonFileError,
    read_json_object,
    write_json_object,
)

RUNNING, PAUSED, PROMOTING, ABORTING = "running", "paused", "promoting", "aborting"
PROMOTED, ABORTED = "promoted", "aborted"
ACTIVE = (RUNNING, PAUSED, PROMOTING, ABORTING)
ACTIONS = ("", "resume", "promote", "abort")
MAX_WEIGHT = 256  # HAProxy's largest server weight
KEEP_HISTORY = 200

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


class CanaryError(ValueError):
    """A canary deploy that cannot go ahead; nothing was changed."""


# --- the record -----------------------------------------------------------------------------------


def record_path(state_dir: str, service: str) -> Path:
    return Path(state_dir) / "rollouts" / f"{service}.canary.json"


def read_record(state_dir: str, service: str) -> dict[str, Any]:
    path = record_path(state_dir, service)
    try:
        record = read_json_object(path, "a canary record")
    except JsonFileError as exc:
        raise CanaryError(str(exc)) from None
    if record is not None and not isinstance(record.get("history", []), list):
        raise CanaryError(f"{path} is not a canary record: its history is not a list")
    return record or {}


def write_record(state_dir: str, service: str, record: Mapping[str, Any]) -> dict[str, Any]:
    body = dict(record)
    body["history"] = list(body.get("history", []))[-KEEP_HISTORY:]
    body["updated_at"] = time.time()
    write_json_object(record_path(state_dir, service), body)
    return body


def new_record(service: str, target: str, stable: str, steps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "service": service,
        "target": target,
        "stable": stable,
        "status": RUNNING,
        "step": 0,
        "steps": [dict(step) for step in steps],
        "share": 0,
        "started_at": time.time(),
        "reason": "",
        "inconclusive_step": -1,
        "history": [],
    }


# --- the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CanaryPlan:
    # roll: the engine rolls the stable instances, no canary (a first deploy, a repair, a reconcile);
    # start: a new canary; continue: the steps from `step` (a resume, or a rerun after an interruption);
    # promote: the stable instances roll to the target, then the canary retires; abort: it retires
    mode: str
    target: str
    stable: str
    step: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "target": self.target,
            "stable": self.stable,
            "step": self.step,
            "reason": self.reason,
        }


def _where(record: Mapping[str, Any]) -> str:
    steps = record.get("steps") or []
    return (
        f"a canary of {record.get('target')} (beside {record.get('stable')}) is {record.get('status')} "
        f"at step {int(record.get('step', 0)) + 1} of {len(steps)}"
        + (f" ({record['reason']})" if record.get("reason") else "")
    )


def plan_canary(
    record: Mapping[str, Any],
    target: str,
    explicit: bool,
    action: str,
    stable_versions: Mapping[str, str],
    verb: str = "deploy",
) -> CanaryPlan:
    """What a deploy (or a reconcile) of a canary service does now."""
    if action not in ACTIONS:
        raise CanaryError(f"action: expected one of resume, promote, abort, got {action!r}")
    active = record.get("status") in ACTIVE
    versions = {v for v in stable_versions.values() if v}
    if verb == "reconcile":
        if action:
            raise CanaryError(f"action={action} is for a deploy of the service, not a reconcile")
        note = f"; {_where(record)}: a reconcile repairs the stable instances only" if active else ""
        return CanaryPlan(
            "roll", target, _one(versions), 0, f"a reconcile repairs the stable instances{note}"
        )
    if verb == "rollback":
        if action:
            raise CanaryError(f"action={action} is for a deploy of the service, not a rollback")
        if active:
            return CanaryPlan(
                "abort",
                str(record["target"]),
                str(record.get("stable", "")),
                int(record.get("step", 0)),
                "rolled back: the canary retires",
            )
        return CanaryPlan(
            "roll", target, _one(versions), 0, f"a rollback rolls every stable instance to {target}"
        )
    if active:
        if explicit and target != record.get("target"):
            raise CanaryError(
                f"{_where(record)}: a deploy of {target} has to wait; finish it first with "
                "-e action=promote or -e action=abort (or resume it)"
            )
        target, stable, step = (
            str(record["target"]),
            str(record.get("stable", "")),
            int(record.get("step", 0)),
        )
        status = record["status"]
        if action == "abort" or (status == ABORTING and action != "promote"):
            return CanaryPlan(
                "abort", target, stable, step, "aborted by the operator" if action else record["reason"]
            )
        if action == "promote" or status == PROMOTING:
            why = "promoted by the operator" if action == "promote" else "every step passed"
            return CanaryPlan("promote", target, stable, step, why)
        if status == PAUSED and action != "resume":
            raise CanaryError(
                f"{_where(record)}: say what to do with -e action=resume (run the steps from there), "
                "-e action=promote (roll the rest now) or -e action=abort (retire the canary)"
            )
        return CanaryPlan("continue", target, stable, step, "resumed" if action else "the steps go on")
    if action:
        last = (
            f"the last one, of {record.get('target')}, was {record.get('status')}"
            if record
            else "none ever ran"
        )
        raise CanaryError(f"action={action}: no canary of this service is in progress ({last})")
    if not versions:
        return CanaryPlan(
            "roll", target, "", 0, "a first deploy: nothing runs yet that a canary could be compared with"
        )
    if versions == {target}:
        return CanaryPlan(
            "roll", target, target, 0, f"every stable instance runs {target}: a repair in place"
        )
    if len(versions) > 1:
        if target in versions:
            return CanaryPlan(
                "roll",
                target,
                _one(versions - {target}),
                0,
                f"a rollout to {target} did not finish: it goes on",
            )
        raise CanaryError(
            f"the stable instances run {', '.join(sorted(versions))}: a canary needs one version to compare "
            f"{target} with; finish the rollout to one of them first (deploy it again)"
        )
    stable = versions.pop()
    return CanaryPlan("start", target, stable, 0, f"a canary of {target} beside {stable}")


def _one(versions: set[str]) -> str:
    return sorted(versions)[0] if len(versions) == 1 else ""


# --- weights --------------------------------------------------------------------------------------


def step_weights(share: int, stable: Sequence[str], canary: str, baseline: str) -> dict[str, int]:
    """HAProxy weights that give the canary (and the baseline, when there is one) ``share`` % of the
    requests of every load balancer, the stable instances the rest in equal parts; the largest
    weight is 256, HAProxy's most. ``share`` 0: the canary and the baseline get none."""
    parts = 2 if baseline else 1
    if not stable or not 0 <= share * parts < 100:
        raise CanaryError(f"no weights give a canary {share} % beside {len(stable)} stable instance(s)")
    each = (100 - share * parts) / len(stable)
    scale = MAX_WEIGHT / max(each, share)
    weights = {name: max(1, round(each * scale)) for name in stable}
    weights[canary] = round(share * scale) if share else 0
    if baseline:
        weights[baseline] = weights[canary]
    return weights


def share_of(weights: Mapping[str, int], server: str) -> float:
    """The share (0-1) of the requests a server gets from these weights."""
    total = sum(weights.values())
    return weights.get(server, 0) / total if total else 0.0


# --- the analysis ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """What every load balancer counted for one server during a measurement."""

    requests: int
    errors: int
    response_ms: float  # the mean of the LBs' rtime, weighted by their requests; 0 without any

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "response_ms": round(self.response_ms, 1),
        }


def sample(first: Mapping[str, Sequence[float]], last: Mapping[str, Sequence[float]]) -> Sample:
    """What the LBs counted between two reads of ``(requests, errors, rtime)`` per LB (one that
    restarted in between: what it counted since)."""
    requests = errors = 0
    weighted = 0.0
    for lb, (now_requests, now_errors, rtime) in last.items():
        before = first.get(lb, (0, 0, 0))
        restarted = now_requests < before[0] or now_errors < before[1]
        grown = int(now_requests if restarted else now_requests - before[0])
        requests += grown
        errors += int(now_errors if restarted else now_errors - before[1])
        weighted += grown * rtime
    return Sample(requests, errors, weighted / requests if requests else 0.0)


@dataclass(frozen=True)
class Measurement:
    status: str
    values: dict[str, float]
    reason: str
    canary: Sample
    baseline: Sample | None

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": self.status,
            "values": {k: round(v, 4) for k, v in self.values.items()},
            "reason": self.reason,
            "canary": self.canary.as_dict(),
        }
        if self.baseline is not None:
            body["baseline"] = self.baseline.as_dict()
        return body


def _value(metric: str, canary: Sample, baseline: Sample | None) -> float:
    if metric == "error_rate":
        return canary.error_rate
    if metric == "response_time":
        return canary.response_ms
    if baseline is None:  # the spec refuses a _vs_baseline metric without a baseline
        raise CanaryError(f"{metric} needs a baseline, and this canary has none")
    if metric == "error_rate_vs_baseline":
        return canary.error_rate - baseline.error_rate
    return canary.response_ms / baseline.response_ms if baseline.response_ms else float("inf")


def measure(analysis: Mapping[str, Any], canary: Sample, baseline: Sample | None) -> Measurement:
    """One measurement judged: failed if any metric fails; inconclusive if the canary (or, for a
    metric against the baseline, the baseline) had fewer than ``min_requests`` requests, or a
    value lies between pass and fail; passed otherwise."""
    minimum = int(analysis["min_requests"])
    metrics = list(analysis["metrics"])
    needs_baseline = any(str(m["metric"]).endswith("_vs_baseline") for m in metrics)
    short = [
        f"{who} had {seen.requests} request(s), fewer than the {minimum} a verdict needs"
        for who, seen in (("the canary", canary), ("the baseline", baseline if needs_baseline else None))
        if seen is not None and seen.requests < minimum
    ]
    if short:
        return Measurement(INCONCLUSIVE, {}, "; ".join(short), canary, baseline)
    values, failed, unsure = {}, [], []
    for metric in metrics:
        name = str(metric["metric"])
        value = values[name] = _value(name, canary, baseline)
        if value > float(metric["fail"]):
            failed.append(f"{name} {value:.4g} > {float(metric['fail']):g}")
        elif value > float(metric["pass"]):
            unsure.append(
                f"{name} {value:.4g} between pass {float(metric['pass']):g} "
                f"and fail {float(metric['fail']):g}"
            )
    counts = f"canary {canary.errors} of {canary.requests} failed" + (
        f", baseline {baseline.errors} of {baseline.requests}" if baseline is not None else ""
    )
    if failed:
        return Measurement(FAIL, values, f"{'; '.join(failed)} ({counts})", canary, baseline)
    if unsure:
        return Measurement(INCONCLUSIVE, values, f"{'; '.join(unsure)} ({counts})", canary, baseline)
    return Measurement(PASS, values, counts, canary, baseline)


def judge_run(analysis: Mapping[str, Any], measurements: Sequence[Measurement]) -> tuple[str, str]:
    """The analysis so far: ``fail`` as soon as more than failure_limit measurements failed,
    ``inconclusive`` as soon as more than inconclusive_limit were inconclusive, ``pass`` once all
    ``count`` are taken within both limits (the spec makes that at least one pass), else ``running``."""
    failed = [m for m in measurements if m.status == FAIL]
    unsure = [m for m in measurements if m.status == INCONCLUSIVE]
    if len(failed) > int(analysis["failure_limit"]):
        return FAIL, f"{len(failed)} of {len(measurements)} measurement(s) failed: {failed[-1].reason}"
    if len(unsure) > int(analysis["inconclusive_limit"]):
        return INCONCLUSIVE, (
            f"{len(unsure)} of {len(measurements)} measurement(s) inconclusive: {unsure[-1].reason}; "
            "no data is never a pass"
        )
    if len(measurements) >= int(analysis["count"]):
        return (
            PASS,
            f"{len(measurements) - len(failed) - len(unsure)} of {len(measurements)} measurement(s) passed",
        )
    return "running", ""


# --- the steps ------------------------------------------------------------------------------------

Reads = Mapping[str, Mapping[str, Sequence[float]]]  # track -> LB -> (requests, errors, rtime)


@dataclass
class StepRunner:
    """Runs a canary's steps from the record's ``step`` on, saving the record after each one.

    ``set_share(share)`` gives the canary that share on every LB (and returns what it set);
    ``read()`` the LBs' counters of the canary and the baseline; ``save(record)`` persists."""

    record: dict[str, Any]
    set_share: Callable[[int], dict[str, Any]]
    read: Callable[[], Reads]
    save: Callable[[dict[str, Any]], None]
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def run(self) -> dict[str, Any]:
        steps = self.record["steps"]
        start = int(self.record["step"])
        current = _share_before(steps, start)
        if current:  # a resume, or a rerun after an interruption: the step's weight again first
            self._log(start - 1, "weight", 0.0, share=current, applied=self.set_share(current), again=True)
        for index in range(start, len(steps)):
            step = steps[index]
            began = self.clock()
            if "weight" in step:
                share = int(step["weight"])
                if share >= 100:
                    break
                applied = self.set_share(share)
                self.record["share"] = share
                self._log(index, "weight", began, share=share, applied=applied)
            elif "pause" in step:
                if step["pause"] == "until_resumed":
                    self._advance(index + 1)
                    return self._stop(
                        PAUSED, f"step {index + 1} pauses until -e action=resume (or promote, abort)"
                    )
                self.sleep(float(step["pause"]))
                self._log(index, "pause", began, seconds=float(step["pause"]))
            else:
                verdict, reason, measurements = self._analyse(step["analysis"])
                self._log(index, "analysis", began, verdict=verdict, reason=reason, measurements=measurements)
                if verdict == FAIL or (
                    verdict == INCONCLUSIVE and self.record.get("inconclusive_step") == index
                ):
                    if verdict == INCONCLUSIVE:
                        reason = f"inconclusive again after a resume, a failure: {reason}"
                    self.set_share(0)  # no request more than the evidence allows
                    self.record["share"] = 0
                    return self._stop(ABORTING, f"step {index + 1} (analysis) failed: {reason}")
                if verdict == INCONCLUSIVE:
                    self.record["inconclusive_step"] = index
                    return self._stop(PAUSED, f"step {index + 1} (analysis) inconclusive: {reason}")
                self.record["inconclusive_step"] = -1
            self._advance(index + 1)
        self._advance(len(steps))
        return self._stop(PROMOTING, "every step passed")

    def _analyse(self, analysis: Mapping[str, Any]) -> tuple[str, str, list[dict[str, Any]]]:
        taken: list[Measurement] = []
        before = self.read()
        while True:
            self.sleep(float(analysis["interval"]))
            now = self.read()
            baseline = sample(before.get("baseline", {}), now["baseline"]) if "baseline" in now else None
            taken.append(measure(analysis, sample(before["canary"], now["canary"]), baseline))
            before = now
            verdict, reason = judge_run(analysis, taken)
            if verdict != "running":
                return verdict, reason, [m.as_dict() for m in taken]

    def _advance(self, step: int) -> None:
        self.record["step"] = step
        self.save(self.record)

    def _log(self, index: int, kind: str, began: float, **details: Any) -> None:
        seconds = round(self.clock() - began, 2) if began else 0.0
        self.record.setdefault("history", []).append(
            {"step": index + 1, "kind": kind, "at": time.time(), "seconds": seconds, **details}
        )

    def _stop(self, status: str, reason: str) -> dict[str, Any]:
        self.record["status"] = status
        self.record["reason"] = reason if status != PROMOTING else ""
        self.save(self.record)
        return {
            "status": status,
            "reason": reason,
            "step": self.record["step"],
            "share": self.record["share"],
        }


def _share_before(steps: Sequence[Mapping[str, Any]], index: int) -> int:
    """The weight the steps before ``index`` left the canary at (0: none yet)."""
    shares = [int(s["weight"]) for s in steps[:index] if "weight" in s]
    return shares[-1] if shares else 0


def describe(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per step a run took, for the operator."""
    lines = []
    for entry in history:
        head = f"step {entry.get('step')} ({entry.get('kind')}, {entry.get('seconds', 0)} s)"
        if entry.get("kind") == "weight":
            again = " again, after a resume" if entry.get("again") else ""
            lines.append(f"{head}: the canary at {entry.get('share')} % on every load balancer{again}")
        elif entry.get("kind") == "pause":
            lines.append(f"{head}: waited")
        else:
            taken = entry.get("measurements") or []
            seen = ", ".join(
                f"{m['status']} ({m['canary']['errors']}/{m['canary']['requests']} failed)" for m in taken
            )
            lines.append(f"{head}: {entry.get('verdict')} - {entry.get('reason')}; measurements: {seen}")
    return lines
