# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rollout report: what every load balancer saw during one run of a rollout, and the run's
batches, on one timeline.

``build_report`` takes the journal (after the run) and the samples a sampler took of every LB's
counters of the service's backend while it ran (``drivers.haproxy.counters``: cumulative
``requests`` and ``errors_5xx``, the servers ``up``; or an ``error`` when a read failed), each
stamped with the controller's clock (``t``, epoch seconds, the clock the journal's events use).
It returns the report the rollout writes next to the journal (``<service>.report.json``), every
time in seconds from the report's start (``started_at``, the earliest sample or event):

- ``samples``: per LB, what each read gave;
- ``series``: per LB, what the page plots: requests/s and 5xx/s (the counters' increase over the
  time since the previous good read), servers UP. A failed read is a gap (``None``), never a
  guess; a counter that went back (HAProxy restarted) is a gap too, with a warning;
- ``coverage``: per LB, the first and last good read and the longest time between two good ones;
- ``steps`` and ``batches``: from the journal's events: when each batch began to drain, was
  drained, was cycled (and how long its health gate took), and was UP again on every LB, with the
  journal's own figures (``batches_done``) where the batch finished.

Pure: data in, data out.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.planner import progress

REPORT_VERSION = 1


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def report_start(journal: Mapping[str, Any], samples: Mapping[str, Sequence[Mapping[str, Any]]]) -> float:
    """The report's zero: the earliest sample or event of the run (the early drain of the first
    batch is recorded before any instance's task starts, so before the sampler)."""
    run = journal.get("run") or {}
    times = [float(s["t"]) for taken in samples.values() for s in taken]
    sampler = run.get("sampler") or {}
    if "started" in sampler:
        times.append(float(sampler["started"]))
    for at in (run.get("events") or {}).values():
        for kind in ("early", "traffic", "cycle"):
            times += [float(event["started"]) for event in at.get(kind, {}).values() if "started" in event]
    return min(times) if times else 0.0


def rates(samples: Sequence[Mapping[str, Any]], interval: float) -> tuple[dict[str, list[Any]], list[str]]:
    """What the page plots for one LB, one point per sample (``t`` relative), and warnings."""
    series: dict[str, list[Any]] = {"t": [], "requests_per_s": [], "errors_5xx_per_s": [], "servers_up": []}
    warnings: list[str] = []
    previous: Mapping[str, Any] | None = None
    for sample in samples:
        series["t"].append(sample["t"])
        if "error" in sample:
            series["requests_per_s"].append(None)
            series["errors_5xx_per_s"].append(None)
            series["servers_up"].append(None)
            continue
        series["servers_up"].append(len(sample["up"]))
        per_s: tuple[float | None, float | None] = (None, None)
        if previous is not None:
            seconds = float(sample["t"]) - float(previous["t"])
            requests = int(sample["requests"]) - int(previous["requests"])
            errors = int(sample["errors_5xx"]) - int(previous["errors_5xx"])
            if requests < 0 or errors < 0:
                warnings.append(
                    f"the counters went back at {sample['t']:.2f} s (HAProxy restarted?): no rate for "
                    f"the {seconds:.2f} s before"
                )
            elif seconds > 0:
                per_s = (round(requests / seconds, 2), round(errors / seconds, 2))
            if seconds > 2 * interval:
                warnings.append(f"no good read for {seconds:.2f} s before {sample['t']:.2f} s")
        series["requests_per_s"].append(per_s[0])
        series["errors_5xx_per_s"].append(per_s[1])
        previous = sample
    return series, warnings


def coverage(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The first and last good read, how many reads failed and the longest time without a good one."""
    good = [float(s["t"]) for s in samples if "error" not in s]
    gaps = [b - a for a, b in itertools.pairwise(good)]
    return {
        "first": _rounded(good[0]) if good else None,
        "last": _rounded(good[-1]) if good else None,
        "reads": len(samples),
        "failed": len(samples) - len(good),
        "max_gap": _rounded(max(gaps, default=0.0)),
    }


def totals(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What went through an LB while it was sampled: the counters' increase (across a restart,
    the increases before and after it), and the fewest and most servers UP."""
    good = [s for s in samples if "error" not in s]
    requests = errors = 0
    for before, after in itertools.pairwise(good):
        more_requests = int(after["requests"]) - int(before["requests"])
        more_errors = int(after["errors_5xx"]) - int(before["errors_5xx"])
        if more_requests >= 0 and more_errors >= 0:
            requests, errors = requests + more_requests, errors + more_errors
    up = [len(s["up"]) for s in good]
    return {
        "requests": requests,
        "errors_5xx": errors,
        "fewest_up": min(up) if up else None,
        "most_up": max(up) if up else None,
    }


def _step_end(event: Mapping[str, Any]) -> float:
    return float(event["started"]) + float(event.get("ready_wait") or 0) + float(event.get("drain_wait") or 0)


def steps_of(run: Mapping[str, Any], zero: float) -> list[dict[str, Any]]:
    """Each traffic step of the run, and what each LB reported of it (times relative to ``zero``)."""
    found = []
    events = run.get("events") or {}
    for index, step in enumerate(run.get("steps") or []):
        traffic = (events.get(str(index)) or {}).get("traffic", {})
        lbs = {
            lb: {
                "started": round(float(event["started"]) - zero, 3),
                "ready_wait": event.get("ready_wait", 0.0),
                "drain_wait": event.get("drain_wait", 0.0),
                "failed": bool(event.get("failed")),
            }
            for lb, event in sorted(traffic.items())
        }
        found.append(
            {
                "step": index + 1,
                "ready": list(step.get("ready", [])),
                "drain": list(step.get("drain", [])),
                "cycle": list(step.get("cycle", [])),
                "started": min((e["started"] for e in lbs.values()), default=None),
                "ended": max((round(_step_end(e) - zero, 3) for e in traffic.values()), default=None),
                "lbs": lbs,
            }
        )
    return found


def _drain_started(
    steps: list[Mapping[str, Any]], events: Mapping[str, Any], index: int, lb: str
) -> float | None:
    """When ``lb`` stopped sending step ``index``'s batch new requests: the early drain before the
    first step, the step before (that drained it early, after its own ready), or its own step."""
    at = events.get(str(index)) or {}
    early = at.get("early", {}).get(lb)
    if early is not None and not early.get("failed"):
        return float(early["started"])
    hosts = set(steps[index].get("cycle", []))
    if index > 0 and hosts and hosts <= set(steps[index - 1].get("early", [])):
        before = (events.get(str(index - 1)) or {}).get("traffic", {}).get(lb)
        if before is not None:
            return float(before["started"]) + float(before.get("ready_wait") or 0)
    own = at.get("traffic", {}).get(lb)
    if own is None:
        return None
    return float(own["started"]) + float(own.get("ready_wait") or 0)


def batches_of(journal: Mapping[str, Any], zero: float) -> list[dict[str, Any]]:
    """Each batch of the run: when it drained, cycled and came back, and the journal's figures."""
    run = journal.get("run") or {}
    steps, lbs = list(run.get("steps") or []), list(run.get("lbs") or [])
    events = run.get("events") or {}
    done = {
        tuple(record["hosts"]): record
        for record in journal.get("batches_done", [])
        if record.get("run") == run.get("id")
    }

    def rel(value: float | None) -> float | None:
        return None if value is None else round(value - zero, 3)

    found: list[dict[str, Any]] = []
    for index, step in enumerate(steps):
        hosts = list(step.get("cycle", []))
        if not hosts:
            continue
        at = events.get(str(index)) or {}
        traffic, cycled = at.get("traffic", {}), at.get("cycle", {})
        back = (events.get(str(index + 1)) or {}).get("traffic", {})
        starts = [s for lb in lbs if (s := _drain_started(steps, events, index, lb)) is not None]
        cycle_spans = [(float(e["started"]), float(e["ended"])) for e in cycled.values() if "ended" in e]
        record = done.get(tuple(hosts))
        finished = record is not None
        if record is None:  # halted or unfinished: what the events say so far
            record = {
                "drain_wait": round(
                    max(
                        (progress.drain_wait(e, at.get("early", {}).get(lb)) for lb, e in traffic.items()),
                        default=0.0,
                    ),
                    2,
                ),
                "risen_after": round(max((float(e["risen_after"]) for e in cycled.values()), default=0.0), 2),
                "ready_wait": round(max((float(e["ready_wait"]) for e in back.values()), default=0.0), 2),
                "seconds": None,
            }
        found.append(
            {
                "batch": len(found) + 1,
                "step": index + 1,
                "hosts": hosts,
                "finished": finished,
                "failed": any(e.get("failed") for e in (*traffic.values(), *cycled.values())),
                "drain_started": rel(min(starts, default=None)),
                "drained": rel(max((_step_end(e) for e in traffic.values()), default=None)),
                "cycle_started": rel(min((a for a, _b in cycle_spans), default=None)),
                "cycle_ended": rel(max((b for _a, b in cycle_spans), default=None)),
                "cycles": {
                    host: {
                        "started": rel(float(e["started"])) if "started" in e else None,
                        "ended": rel(float(e["ended"])) if "ended" in e else None,
                        "seconds": e.get("seconds"),
                        "gate": e.get("gate"),
                        "risen_after": e.get("risen_after"),
                        "failed": bool(e.get("failed")),
                        "reverted": bool(e.get("reverted")),
                    }
                    for host, e in sorted(cycled.items())
                },
                "ready_started": rel(min((float(e["started"]) for e in back.values()), default=None)),
                "back": rel(
                    max(
                        (float(e["started"]) + float(e.get("ready_wait") or 0) for e in back.values()),
                        default=None,
                    )
                )
                if back
                else None,
                "seconds": record.get("seconds"),
                "drain_wait": record.get("drain_wait"),
                "risen_after": record.get("risen_after"),
                "ready_wait": record.get("ready_wait"),
            }
        )
    return found


def build_report(
    journal: Mapping[str, Any],
    samples: Mapping[str, Sequence[Mapping[str, Any]]],
    interval: float,
    warnings: Iterable[str] = (),
) -> dict[str, Any]:
    """The report of the journal's current run (see the module's docstring)."""
    run = journal.get("run") or {}
    zero = report_start(journal, samples)
    lbs = sorted({*(run.get("lbs") or []), *samples})
    relative = {
        lb: [{**sample, "t": round(float(sample["t"]) - zero, 3)} for sample in samples.get(lb, [])]
        for lb in lbs
    }
    said = list(warnings)
    series = {}
    for lb in lbs:
        series[lb], found = rates(relative[lb], interval)
        said += [f"{lb}: {warning}" for warning in found]
        if not relative[lb]:
            said.append(f"{lb}: no sample was taken")
    steps = steps_of(run, zero)
    ends = [s["ended"] for s in steps if s["ended"] is not None]
    batches = batches_of(journal, zero)
    ends += [b["cycle_ended"] for b in batches if b["cycle_ended"] is not None]
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "service": journal.get("service"),
        "target": journal.get("target"),
        "status": journal.get("status"),
        "run": run.get("id"),
        "sampler": (run.get("sampler") or {}).get("host"),
        "started_at": round(zero, 3),
        "started_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(zero)),
        "seconds": round(max(ends, default=0.0), 2),
        "interval": interval,
        "lbs": lbs,
        "batches": batches,
        "steps": steps,
        "coverage": {lb: coverage(relative[lb]) for lb in lbs},
        "totals": {lb: totals(relative[lb]) for lb in lbs},
        "series": series,
        "samples": relative,
        "warnings": said,
    }
    if journal.get("status") == "halted":
        report["halted_at"], report["reason"] = journal.get("halted_at"), journal.get("reason")
    if journal.get("parallel_run"):  # judged after the run (then the gate adds it to the report)
        report["parallel_run"] = journal["parallel_run"]
    return report
