# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rollout journal: one JSON file per service that says where its last rollout stands.

``<state_dir>/rollouts/<service>.json`` (``state_dir`` is the environment's ``berth_state_dir``),
and for a run scoped to one datacenter (a per-DC reconcile: ``scope`` is the DC)
``<service>@<scope>.json``, so that the jobs of two datacenters never meet in one file::

    {"service", "target", "status": running | halted | complete,
     "from": {instance: version it ran before}, "plan": [[batch hosts], ...],
     "batches_done": [{"hosts", "seconds", "drain_wait", "risen_after", "ready_wait"}, ...],
     "repair": true (a rerun for a finished target), "halted_at", "reason" (when halted)}

This module owns all of it: the location, reading and writing (atomically, 0600), every status
transition, the per-batch timing, and the two choices made from it: the version rollback returns
to and the version reconcile converges to. Roles and playbooks only call the ``rollout_journal``
module. Pure apart from the file it reads and writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.fs import (
    FileLock,
    JsonFileError,
    atomic_write,
    read_json_object,
)
from ansible_collections.berth.fleet.plugins.module_utils.common.rules import name_problem

STATUSES = ("running", "halted", "complete")
JOURNAL_DIR = "rollouts"


class JournalError(ValueError):
    """A journal that cannot be read or used; the message says which file and why."""


def journal_path(state_dir: str | Path, service: str, scope: str = "") -> Path:
    if (problem := name_problem(service)) is not None:
        raise JournalError(f"service: {problem}")
    if scope and (problem := name_problem(scope)) is not None:
        raise JournalError(f"scope (a datacenter): {problem}")
    return Path(state_dir) / JOURNAL_DIR / (f"{service}@{scope}.json" if scope else f"{service}.json")


def where_of(options: Mapping[str, Any]) -> dict[str, str]:
    """Which journal a task's ``journal`` option (or a sampler's config) names, as plain strings."""
    return {
        "state_dir": str(options["state_dir"]),
        "service": str(options["service"]),
        "scope": str(options.get("scope") or ""),
    }


def where_path(where: Mapping[str, Any]) -> Path:
    """The journal a task's ``journal`` option names: ``state_dir``, ``service`` and ``scope``."""
    return journal_path(str(where["state_dir"]), str(where["service"]), str(where.get("scope") or ""))


def rivals(path: Path) -> list[Path]:
    """The journals whose runs must not overlap a run of ``path``: for the service's journal, every
    scoped one (a per-DC run); for a scoped one, the service's (two DCs' scoped runs may overlap:
    they only touch instances already out of rotation, ``planner.rollout``)."""
    service, _at, scope = path.stem.partition("@")
    if scope:
        return [path.with_name(f"{service}.json")]
    return sorted(path.parent.glob(f"{service}@*.json"))


def load(path: Path) -> dict[str, Any]:
    """The journal at ``path``, or ``{}`` when no rollout was ever recorded there."""
    try:
        return read_json_object(path, "a rollout journal") or {}
    except JsonFileError as exc:
        raise JournalError(f"{exc}: fix or remove it") from None


def render(journal: Mapping[str, Any]) -> str:
    return json.dumps(journal, indent=2, sort_keys=True) + "\n"


def update(path: Path, change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Read, ``change`` and write the journal under an exclusive lock (several load balancers and
    instances report into one journal at the same moment); returns what was written."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise JournalError(f"cannot write the rollout journal {path}: {exc.strerror or exc}") from None
    with FileLock(path.with_name(f".{path.name}.lock")):
        before = load(path)
        journal = change(before)
        if journal != before:
            save(path, journal)
    return journal


def parts_lock(path: Path) -> FileLock:
    """Held (shared) by every running part of a rollout of the journal at ``path``, for as long as
    it runs (``rollout_steps``): a new run waits until no part of an earlier one runs any more."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return FileLock(path.with_name(f".{path.name}.parts"), shared=True)


def wait_for_earlier_parts(path: Path, timeout: float, said: Callable[[str], None]) -> float:
    """Before a new run starts: wait until no part of an earlier run of this journal, or of a rival
    one (``rivals``), still runs (a killed deploy leaves its parts running - Ansible's workers are
    sessions of their own - and each ends after the part it is in, up to that part's timeout; a
    per-DC reconcile of the service may be running). Returns the seconds waited."""
    started = time.monotonic()
    for journal in [path, *rivals(path)]:
        lock = journal.with_name(f".{journal.name}.parts")
        if lock.exists():
            _wait_unlocked(lock, journal == path, started, timeout, said)
    return round(time.monotonic() - started, 2)


def _wait_unlocked(
    lock: Path, own: bool, started: float, timeout: float, said: Callable[[str], None]
) -> None:
    what = "an earlier (interrupted) run of this rollout" if own else f"a run of {lock.name[1:-6]}"
    told = False
    while True:
        try:
            with FileLock(lock, wait=False):
                return
        except BlockingIOError:
            pass
        waited = time.monotonic() - started
        if waited > timeout:
            raise JournalError(
                f"the parts of {what} still run after {waited:.0f} s ({lock} is locked): is another "
                "deploy or reconcile of this service running?"
            )
        if not told:
            said(f"waiting for the parts of {what} to end")
            told = True
        time.sleep(0.1)


def save(path: Path, journal: Mapping[str, Any]) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(path, render(journal), mode=0o600)
    except OSError as exc:
        raise JournalError(f"cannot write the rollout journal {path}: {exc.strerror or exc}") from None


def journal_started(
    previous: Mapping[str, Any],
    service: str,
    target: str,
    versions_now: Mapping[str, str],
    batches: list[list[str]],
) -> dict[str, Any]:
    """The journal of a rollout that is starting.

    Where the estate came from (`from`, what rollback returns to) belongs to the rollout that
    introduced the target: a rerun of the same unfinished rollout keeps it and its finished
    batches; a run for the target of a *finished* rollout is a repair (an instance replaced or
    fallen out of rotation) and keeps `from` too, or a repaired estate could no longer roll back.
    """
    same_target = previous.get("target") == target and "from" in previous
    resumed = same_target and previous.get("status") != "complete"
    journal: dict[str, Any] = {
        "service": service,
        "target": target,
        "status": "running",
        "from": dict(previous["from"]) if same_target else dict(versions_now),
        "plan": batches,
        "batches_done": list(previous.get("batches_done", [])) if resumed else [],
    }
    if same_target and not resumed:
        journal["repair"] = True
    if previous.get("migrations"):
        journal["migrations"] = dict(previous["migrations"])  # the schema's phase outlives a rollout
    return journal


def migrations_recorded(
    journal: Mapping[str, Any], phase: str, version: str, applied: list[str], ledger: list[dict[str, Any]]
) -> dict[str, Any]:
    """The journal with the schema's phase: per phase, the release whose migrations of it ran last
    and what they were (``ledger``: every migration that has run, with the release that ran it)."""
    changed = dict(journal)
    record = dict(changed.get("migrations") or {})
    ran = [row for row in ledger if row.get("phase") == phase and row.get("version") == version]
    record[phase] = {
        "version": version,
        "applied": [str(row["id"]) for row in ran],
        "this_run": list(applied),
        "at": str(ran[-1].get("at", "")) if ran else "",
    }
    record["phase"] = "contracted" if record.get("contract", {}).get("applied") else "expanded"
    changed["migrations"] = record
    return changed


def outcome(journal: Mapping[str, Any], verb: str, service: str, path: str) -> dict[str, Any]:
    """What a verb publishes for whoever runs it next (``set_stats``: an AWX workflow's next node):
    the service, the version, how the rollout ended, its batches and failures, and the journal."""
    halt = journal.get("halt") or {}
    halted = journal.get("status") == "halted"
    where = str(halt.get("host", journal.get("halted_at", "")))
    batches = {"planned": len(journal.get("plan") or []), "done": len(journal.get("batches_done") or [])}
    return {
        "verb": verb,
        "service": service,
        "version": str(journal.get("target", "")),
        "status": str(journal.get("status", "none")) if journal else "none",
        "batches": batches,
        "failures": [{"host": where, "reason": str(journal.get("reason", ""))}] if halted else [],
        "outcome": list(halt.get("outcome", [])),
        "journal": path,
    }


def desired_version(journal: Mapping[str, Any], inventory_version: str, service: str) -> dict[str, str]:
    """The version a reconcile converges a service to, and why (from its rollout journal).

    A reconcile repairs; it never starts, finishes or undoes a rollout on its own. So the desired
    version is what the last rollout left the estate on: its target when it finished, what ran
    before it when it halted (and was reverted), the inventory's version when none is recorded.
    An unfinished rollout is the operator's call.
    """
    if not journal:
        return {"version": inventory_version, "why": "no rollout recorded: the inventory's version"}
    status, target = journal.get("status"), journal.get("target")
    if status == "complete" and target:
        return {"version": str(target), "why": "the target of the last finished rollout"}
    if status == "halted":
        earlier = sorted({str(version) for version in dict(journal.get("from", {})).values() if version})
        if len(earlier) == 1:
            return {
                "version": earlier[0],
                "why": f"the rollout to {target} halted and was reverted: the version that ran before it",
            }
        raise JournalError(
            f"the rollout of {service} to {target} halted, and before it the instances ran "
            f"{', '.join(earlier) or 'nothing'}: no single version to converge to. Deploy the one you want "
            f"(playbooks/deploy.yml -e service={service} -e version=...)"
        )
    raise JournalError(
        f"the rollout of {service} to {target} is unfinished (status {status}): finish it "
        f"(playbooks/deploy.yml -e service={service} -e version={target}) or return "
        f"(playbooks/rollback.yml -e service={service}); reconcile does not choose for you"
    )


def rollback_version(journal: Mapping[str, Any], service: str, path: str) -> str:
    """The one revision the last rollout of ``service`` started from (what rollback returns to).

    Like ``kubectl rollout undo``, a second rollback returns to the version the first one left.
    """
    if "from" not in journal:
        raise JournalError(
            f"no rollout of '{service}' is recorded in {path} (give the service with -e service=NAME)"
        )
    earlier = sorted({str(version) for version in dict(journal["from"]).values() if version})
    if len(earlier) != 1:
        raise JournalError(
            f"the last rollout of {service} started from {json.dumps(journal['from'], sort_keys=True)}: "
            "no single earlier revision to return to (deploy the version you want with playbooks/deploy.yml)"
        )
    return earlier[0]
