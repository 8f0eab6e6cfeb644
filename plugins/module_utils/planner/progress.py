# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The progress of a running rollout, recorded in its journal as its steps happen.

A rollout runs as the plan's traffic steps (``planner.rollout.Step``): each is one call per load
balancer (ready the previous batch, drain this one, wait) and then one call per instance of the
batch (stop, switch, start, gate). Each of those calls reports one *event* into the journal as it
finishes (the action plugins of ``lb_step`` and ``instance_cycle`` do it on the controller, so
recording costs no module run):

    journal["run"] = {"steps": [...], "lbs": [...],
                      "events": {"<step>": {"traffic": {lb: {...}}, "cycle": {host: {...}}}}}

From the events, ``settle`` derives what the journal has always said: a batch is *done* once every
LB reported the step that drained it, every instance of it was cycled, and every LB reported the
step that put it back (``batches_done`` with its wall time and where the time went); the rollout
is ``complete`` once every LB reported the last step, and ``halted`` (where, and why) as soon as an
instance step failed. Pure: the journal in, the journal out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def run_started(journal: Mapping[str, Any], steps: list[dict[str, Any]], lbs: list[str]) -> dict[str, Any]:
    """The journal with a fresh run of ``steps`` across the load balancers ``lbs`` (a rerun of an
    unfinished rollout is a new run: the batches earlier runs finished stay in ``batches_done``)."""
    earlier = [int(b.get("run", 0)) for b in journal.get("batches_done", [])]
    number = max([int((journal.get("run") or {}).get("id", 0)), *earlier]) + 1
    fresh = {key: value for key, value in journal.items() if key not in ("halt", "halted_at", "reason")}
    return {**fresh, "run": {"id": number, "steps": steps, "lbs": sorted(lbs), "events": {}}}


def record_traffic(
    journal: Mapping[str, Any], step: int, lb: str, started: float, result: Mapping[str, Any]
) -> dict[str, Any]:
    """One load balancer finished traffic step ``step`` (``result``: lb_step's return)."""
    event = {
        "started": round(started, 3),
        "ready_wait": round(float(result.get("ready_wait") or 0.0), 3),
        "drain_wait": round(float(result.get("drain_wait") or 0.0), 3),
        "failed": bool(result.get("failed")),
    }
    journal = _with_event(journal, step, "traffic", lb, event)
    if event["failed"]:
        journal = _halted(journal, lb, result)
    return settle(journal)


def record_early_drain(
    journal: Mapping[str, Any], step: int, lb: str, started: float, result: Mapping[str, Any]
) -> dict[str, Any]:
    """One load balancer set ``step``'s batch to DRAIN ahead of the step, without waiting (deploy.yml
    does it for the first batch while the release installs). Not the step itself: that still runs
    and waits; this only says since when the batch has been draining."""
    event = {"started": round(started, 3), "failed": bool(result.get("failed"))}
    return settle(_with_event(journal, step, "early", lb, event))


def record_cycle(
    journal: Mapping[str, Any],
    step: int,
    host: str,
    result: Mapping[str, Any],
    span: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """One instance finished its cycle in step ``step`` (``result``: instance_cycle's return;
    ``span``: when the controller started it and heard back, for the rollout report's timeline)."""
    failed = bool(result.get("failed") or result.get("unreachable"))
    event: dict[str, Any] = {
        "risen_after": round(float(result.get("risen_after") or 0.0), 3),
        "seconds": round(float(result.get("seconds") or 0.0), 3),
        "failed": failed or bool(result.get("unreachable")),
        "reverted": bool(result.get("reverted")),
        "reverted_healthy": bool(result.get("reverted_healthy")),
    }
    if span is not None:
        event["started"], event["ended"] = round(span[0], 3), round(span[1], 3)
        event["gate"] = round(float(result.get("waited") or 0.0), 3)  # the health gate's own seconds
    journal = _with_event(journal, step, "cycle", host, event)
    if failed:
        journal = _halted(journal, host, result)
    return settle(journal)


def _halted(journal: dict[str, Any], where: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """The first failure halts the rollout (``halted_at``, ``reason``); every failure adds to
    ``halt`` (``halt_state``: what became of each failed host, who stays out of rotation)."""
    journal = {**journal, "halt": halt_state(journal.get("halt") or {}, [where], {where: result})}
    if journal.get("status") == "halted":
        return journal
    return {**journal, "status": "halted", "halted_at": where, "reason": str(result.get("msg", "?"))}


def gate(
    journal: Mapping[str, Any], step: int, kind: str, recover: bool = False
) -> tuple[dict[str, Any], str]:
    """Whether a ``kind`` part of ``step`` may run now: ``(journal, why)``, ``why`` empty to go.

    The journal is what keeps the parts of a rollout in order: a part runs only once every part it
    follows has reported success - an instance's cycle after every LB drained its batch, an LB's
    step after every LB finished the step before and every instance of that step was cycled. A
    part that finds one missing (its task failed before it could report) halts the rollout, with
    the silent hosts kept out of rotation; after a halt only the recovery (``recover``) runs.
    """
    halted = journal.get("status") == "halted"
    if recover:
        return dict(journal), "" if halted else "the rollout did not halt: nothing to put back"
    if halted:
        return dict(journal), f"the rollout halted at {journal.get('halted_at')}: {journal.get('reason')}"
    missing = _missing_before(journal.get("run") or {}, step, kind)
    if not missing:
        return dict(journal), ""
    why = (
        f"step {step + 1} cannot start: {', '.join(missing)} did not report "
        f"{'draining the batch' if kind == 'cycle' else 'the step before'} (its task failed before it could)"
    )
    gated = dict(journal)
    for host in missing:
        gated = _halted(gated, host, {"failed": True, "msg": why})
    return gated, why


MOVES = ("traffic", "cycle", "wait", "done", "halted")


def next_move(journal: Mapping[str, Any], host: str) -> tuple[dict[str, Any], str, int]:
    """What the rollout task of instance ``host`` does next: ``(journal, move, step)``.

    Every instance of a rollout runs its whole part in one task, all at once (``rollout_steps``);
    the journal is where they meet. ``move`` is one of ``MOVES``:

    - ``traffic``: step ``step``'s LB part is due and nobody runs it yet: ``host`` claims it (the
      journal returned says so) and runs it on every LB; any instance still in the run may;
    - ``cycle``: ``host``'s batch is drained everywhere: its own cycle is due;
    - ``wait``: a part of ``step`` is running elsewhere (an LB step claimed, another instance cycling);
    - ``done``: everything ``host`` waits for is done: its cycle, and the LB step that put its batch
      back (every step before that one complete);
    - ``halted``: the rollout halted; nothing more runs.

    The steps are taken strictly in order, so a part starts only once every part before it reported
    success: the same order ``gate`` keeps for parts run one task at a time.
    """
    if journal.get("status") == "halted":
        return dict(journal), "halted", -1
    run = journal.get("run") or {}
    steps, lbs, events = run.get("steps") or [], run.get("lbs") or [], run.get("events") or {}
    claims = run.get("claims") or {}
    mine = [index for index, step in enumerate(steps) if host in step["cycle"]]
    last = min(max(mine) + 1, len(steps) - 1) if mine else -1
    for index in range(last + 1):
        at = events.get(str(index), {})
        if not _all_ok(at.get("traffic", {}), lbs):
            if str(index) in claims:
                return dict(journal), "wait", index
            claimed = {**run, "claims": {**claims, str(index): host}}
            return {**journal, "run": claimed}, "traffic", index
        cycle = steps[index]["cycle"]
        if host in cycle and host not in at.get("cycle", {}):
            return dict(journal), "cycle", index
        if index < last and not _all_ok(at.get("cycle", {}), cycle):
            return dict(journal), "wait", index
    return dict(journal), "done", last


def claim_sampler(journal: Mapping[str, Any], host: str, now: float) -> tuple[dict[str, Any], bool]:
    """Whether ``host``'s rollout task samples the load balancers for the rollout report of the
    running run: the first task to ask claims it (``run["sampler"]``: who, since when) and every
    later one is told no, so one run has one sampler. Nothing to sample unless the run is running."""
    run = journal.get("run") or {}
    if journal.get("status") != "running" or not run or "sampler" in run:
        return dict(journal), False
    return {**journal, "run": {**run, "sampler": {"host": host, "started": round(now, 3)}}}, True


def _missing_before(run: Mapping[str, Any], step: int, kind: str) -> list[str]:
    """The LBs and instances whose report ``kind`` at ``step`` waits for and that have not given it."""
    steps, lbs, events = run.get("steps") or [], run.get("lbs") or [], run.get("events") or {}
    if not steps or not 0 <= step < len(steps):
        return []
    if kind == "cycle":  # the batch is drained on every LB
        needed = [("traffic", step, lb) for lb in lbs]
    elif step > 0:  # the step before is done everywhere
        needed = [("traffic", step - 1, lb) for lb in lbs]
        needed += [("cycle", step - 1, host) for host in steps[step - 1]["cycle"]]
    else:
        needed = []
    return [
        who
        for part, at, who in needed
        if (report := events.get(str(at), {}).get(part, {}).get(who)) is None or report["failed"]
    ]


def _with_event(
    journal: Mapping[str, Any], step: int, kind: str, who: str, event: dict[str, Any]
) -> dict[str, Any]:
    run = dict(journal.get("run") or {"id": 0, "steps": [], "lbs": [], "events": {}})
    events = {key: dict(value) for key, value in dict(run.get("events", {})).items()}
    at_step = {key: dict(value) for key, value in events.get(str(step), {}).items()}
    at_step[kind] = {**at_step.get(kind, {}), who: event}
    events[str(step)] = at_step
    run["events"] = events
    return {**journal, "run": run}


def settle(journal: Mapping[str, Any]) -> dict[str, Any]:
    """``batches_done`` and the status, from the events so far."""
    run = journal.get("run")
    if not run:
        return dict(journal)
    steps, lbs, events = run["steps"], run["lbs"], run["events"]
    done_here = [
        {**record, "run": run["id"]}
        for index in range(len(steps) - 1)
        if (record := _batch_record(steps, lbs, events, index)) is not None
    ]
    earlier = [b for b in journal.get("batches_done", []) if b.get("run") != run.get("id")]
    settled = {**journal, "batches_done": earlier + done_here}
    if (
        steps
        and journal.get("status") == "running"
        and all(
            _all_ok(events.get(str(index), {}).get("traffic", {}), lbs)
            and _all_ok(events.get(str(index), {}).get("cycle", {}), step["cycle"])
            for index, step in enumerate(steps)
        )
    ):
        settled["status"] = "complete"  # every step done on every LB and every instance
    return settled


def _all_ok(reports: Mapping[str, Mapping[str, Any]], expected: list[str]) -> bool:
    return all(name in reports and not reports[name]["failed"] for name in expected)


def _batch_record(
    steps: list[dict[str, Any]], lbs: list[str], events: Mapping[str, Any], index: int
) -> dict[str, Any] | None:
    """The record of the batch cycled in step ``index``, once it is back in rotation everywhere."""
    hosts = steps[index]["cycle"]
    drained = events.get(str(index), {}).get("traffic", {})
    cycled = events.get(str(index), {}).get("cycle", {})
    back = events.get(str(index + 1), {}).get("traffic", {})
    if not hosts or not _all_ok(drained, lbs) or not _all_ok(cycled, hosts) or not _all_ok(back, lbs):
        return None
    early = events.get(str(index), {}).get("early", {})
    if lbs:
        started = min(early.get(lb, drained[lb])["started"] for lb in lbs)
        seconds = max(back[lb]["started"] + back[lb]["ready_wait"] for lb in lbs) - started
    else:  # nothing to drain or ready: the batch took as long as its slowest cycle
        seconds = max(cycled[host]["seconds"] for host in hosts)
    return {
        "hosts": hosts,
        "seconds": round(seconds, 2),
        "drain_wait": round(max((drain_wait(drained[lb], early.get(lb)) for lb in lbs), default=0.0), 2),
        "risen_after": round(max(cycled[host]["risen_after"] for host in hosts), 2),
        "ready_wait": round(max((back[lb]["ready_wait"] for lb in lbs), default=0.0), 2),
        # drained early, while the batch before it was cycled: its drain wait overlapped
        "overlapped": bool(index and steps[index - 1]["early"]),
    }


def drain_wait(drained: Mapping[str, Any], early: Mapping[str, Any] | None) -> float:
    """How long the batch took to drain on one LB. Drained early (since ``early``), a batch that still
    held sessions when its step began drained from the early start to the end of the step's wait;
    one that was idle by then drained at some moment in between, unknown: its wait (about 0) is
    kept, a lower bound, so a floor computed from it is never flattered."""
    wait = float(drained["drain_wait"])
    if early is not None and not early.get("failed") and wait > 0.05:
        return wait + float(drained["started"]) - float(early["started"])
    return wait


def failures(hosts: list[str], results: Mapping[str, Any]) -> list[dict[str, str]]:
    """The hosts whose registered step result failed (or could not be reached), with why, and for
    an instance what became of it: back on its previous release and healthy, or out."""
    found = []
    for host in hosts:
        result = results.get(host) or {}
        if not (result.get("failed") or result.get("unreachable")):
            continue
        back = bool(result.get("reverted_healthy"))
        if back:
            outcome = f"{host} is back on {result.get('version')} and in rotation"
        elif result.get("unreachable"):
            outcome = f"{host} could not be reached and stays out of rotation"
        elif "reverted" in result or "gate" in result:  # an instance step
            outcome = f"{host} had no previous release to go back to and stays out of rotation"
        else:
            outcome = ""
        found.append(
            {
                "host": host,
                "msg": str(result.get("msg", "unreachable" if result.get("unreachable") else "?")),
                "back": "yes" if back else "no",
                "outcome": outcome,
            }
        )
    return found


def halt_state(previous: Mapping[str, Any], hosts: list[str], results: Mapping[str, Any]) -> dict[str, Any]:
    """Whether the rollout stops after this phase: ``{}`` to go on, else where (``host``) and why
    (``reason``) it first failed, what became of each failed instance (``outcome``) and the hosts
    that must stay out of rotation (``keep_out``: a failed instance whose revert did not come back
    healthy, an LB or instance that could not be reached)."""
    found = failures(hosts, results)
    if not found:
        return dict(previous)
    halt = dict(previous) or {"host": found[0]["host"], "reason": found[0]["msg"], "outcome": []}
    halt["keep_out"] = sorted(
        {*previous.get("keep_out", []), *(f["host"] for f in found if f["back"] == "no")}
    )
    halt["outcome"] = [*halt["outcome"], *(f["outcome"] for f in found if f["outcome"])]
    return halt
