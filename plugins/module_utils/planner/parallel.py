# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A parallel run across the load balancers (issue 13): who each LB's mirror compares, and the
verdict on what they all found.

Each LB mirrors its own users' requests (``drivers/mirror``). ``plan_targets`` gives each one a
primary and a secondary among the trusted instances and a candidate, turning through them so that
the LBs spread the copies; ``judge`` merges what every LB found (``common/compare.merge``) and
applies the strategy's gate; ``write_record`` keeps the last verdict of a service in
``<state_dir>/rollouts/<service>.parallel.json`` for the operator, and ``record_in_journal`` puts
its summary (``journal_entry``: the verdict, the counts per endpoint, the bounded and redacted
sampled diffs) in the rollout journal as ``parallel_run``, where the rollout report finds it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.compare import gate, merge
from ansible_collections.berth.fleet.plugins.module_utils.common.fs import write_json_object
from ansible_collections.berth.fleet.plugins.module_utils.planner import journal as rollout_journal


class ParallelError(ValueError):
    """A parallel run that cannot be planned or judged; the message says why."""


def plan_targets(
    lbs: Sequence[str], trusted: Sequence[str], candidates: Sequence[str]
) -> dict[str, dict[str, str]]:
    """Per LB: ``primary``, ``secondary`` (two different trusted instances where there are two) and
    ``candidate``, all ``host:port``, turning through the lists LB by LB."""
    if not lbs:
        raise ParallelError("a parallel run needs at least one load balancer")
    if not trusted:
        raise ParallelError("a parallel run needs a trusted instance to compare the candidate with")
    if not candidates:
        raise ParallelError("a parallel run needs a candidate instance")
    plan = {}
    for index, lb in enumerate(sorted(lbs)):
        plan[lb] = {
            "primary": trusted[index % len(trusted)],
            "secondary": trusted[(index + 1) % len(trusted)],
            "candidate": candidates[index % len(candidates)],
        }
    return plan


def judge(
    per_lb: Mapping[str, Mapping[str, Any]], min_requests: int, max_mismatch_rate: float
) -> dict[str, Any]:
    """The verdict on every LB's results: passed, the reason, the merged tally, and per LB what it
    judged (a LB whose mirror could not be read counts nothing, and says so)."""
    merged = merge(results for results in per_lb.values() if results)
    passed, reason = gate(merged, min_requests, max_mismatch_rate)
    lbs = {
        lb: {
            "requests": int(results.get("requests", 0)),
            "mismatches": int(results.get("mismatches", 0)),
            "dropped": int(results.get("dropped", 0)) + int(results.get("haproxy_dropped") or 0),
            "candidate": results.get("candidate", ""),
        }
        if results
        else {"requests": 0, "mismatches": 0, "dropped": 0, "candidate": "", "missing": True}
        for lb, results in sorted(per_lb.items())
    }
    return {
        "passed": passed,
        "reason": reason,
        "gate": {"min_requests": min_requests, "max_mismatch_rate": max_mismatch_rate},
        "tally": merged,
        "lbs": lbs,
    }


def record_path(state_dir: str, service: str) -> Path:
    return Path(state_dir) / "rollouts" / f"{service}.parallel.json"


def write_record(
    state_dir: str, service: str, run_id: str, target: str, verdict: Mapping[str, Any]
) -> dict[str, Any]:
    body = {"service": service, "run_id": run_id, "target": target, "judged_at": time.time(), **verdict}
    write_json_object(record_path(state_dir, service), body)
    return body


def journal_entry(run_id: str, target: str, verdict: Mapping[str, Any], judged_at: float) -> dict[str, Any]:
    """What the journal and the report keep of a parallel run: the verdict and its reason, the gate,
    the counts (compared, mismatched, dropped, not judged, failed at the candidate), per endpoint
    and per LB, and the sampled diffs (bounded by ``common.compare.merge``; the mirror redacted
    them before they left the LB)."""
    tally = verdict.get("tally") or {}
    return {
        "run_id": run_id,
        "target": target,
        "judged_at": round(judged_at, 3),
        "passed": bool(verdict.get("passed")),
        "reason": str(verdict.get("reason", "")),
        "gate": dict(verdict.get("gate") or {}),
        "requests": int(tally.get("requests", 0)),
        "mismatches": int(tally.get("mismatches", 0)),
        "mismatch_rate": float(tally.get("mismatch_rate", 0.0)),
        "dropped": int(tally.get("dropped", 0)) + int(tally.get("haproxy_dropped", 0)),
        "unjudged": int(tally.get("unjudged", 0)),
        "candidate_failures": int(tally.get("candidate_failures", 0)),
        "endpoints": dict(tally.get("endpoints") or {}),
        "samples": list(tally.get("samples") or []),
        "lbs": dict(verdict.get("lbs") or {}),
    }


def record_in_journal(state_dir: str, service: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """``entry`` as the journal's ``parallel_run`` (it replaces an earlier one: a rerun judges again),
    with ``rollout_run``, the id of the journal's current run (the one that deployed the candidate,
    whose report shows it). Nothing when the journal's rollout is not of the candidate's release
    (a canary starts beside the stable instances without a rollout of its own: its record's reason
    says what the gate found, the record file has the rest), or none is recorded; a rollout that
    starts later writes a journal without it. What was recorded ({}: nothing)."""
    path = rollout_journal.journal_path(state_dir, service)
    recorded: dict[str, Any] = {}

    def change(journal: dict[str, Any]) -> dict[str, Any]:
        if not journal or journal.get("target") != entry.get("target"):
            return journal
        recorded.update(entry, rollout_run=(journal.get("run") or {}).get("id"))
        return {**journal, "parallel_run": dict(recorded)}

    rollout_journal.update(path, change)
    return recorded
