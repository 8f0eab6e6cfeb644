# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the controller records when a rollout step reports back (used by the action plugins of
``lb_step`` and ``instance_cycle``): the step's event, into the service's journal, under its lock."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.planner import journal as rollout_journal
from ansible_collections.berth.fleet.plugins.module_utils.planner import progress

KINDS = ("traffic", "cycle", "early")


def record_step(
    where: Mapping[str, Any], kind: str, who: str, started: float, result: Mapping[str, Any]
) -> None:
    """``where`` is the task's ``journal`` option: ``state_dir``, ``service``, the ``step`` index and
    the run's ``scope`` (a datacenter, or none)."""
    if kind not in KINDS:
        raise rollout_journal.JournalError(f"unknown step kind {kind!r}")
    path = rollout_journal.where_path(where)
    step = int(where["step"])

    def change(journal: dict[str, Any]) -> dict[str, Any]:
        if problem := superseded(journal, where):
            raise rollout_journal.JournalError(f"{problem}: {who}'s report is not recorded")
        if kind == "traffic":
            return progress.record_traffic(journal, step, who, started, result)
        if kind == "early":
            return progress.record_early_drain(journal, step, who, started, result)
        return progress.record_cycle(journal, step, who, result, (started, heard))

    heard = time.time()
    rollout_journal.update(path, change)


def gate_step(where: Mapping[str, Any], kind: str) -> tuple[str, list[str]]:
    """Before a step's part runs (``progress.gate``, under the journal's lock): why it may not
    (empty: go), and the hosts that must stay out of rotation after a halt. ``where`` may say
    ``recover: true`` - the part that runs only after a halt."""
    if kind not in ("traffic", "cycle"):
        raise rollout_journal.JournalError(f"unknown step kind {kind!r}")
    path = rollout_journal.where_path(where)
    outcome: dict[str, Any] = {}

    def change(journal: dict[str, Any]) -> dict[str, Any]:
        if problem := superseded(journal, where):
            outcome["why"], outcome["keep_out"] = problem, []
            return journal
        gated, outcome["why"] = progress.gate(journal, int(where["step"]), kind, bool(where.get("recover")))
        outcome["keep_out"] = list((gated.get("halt") or {}).get("keep_out", []))
        return gated

    rollout_journal.update(path, change)
    return str(outcome["why"]), outcome["keep_out"]


def next_move(where: Mapping[str, Any], host: str) -> tuple[str, int, dict[str, Any]]:
    """``progress.next_move`` for instance ``host``, under the journal's lock (a claim is written
    before the lock is let go, so two instances never run the same LB step): ``(move, step, journal)``;
    ``superseded`` when ``where`` names a run that is no longer the journal's."""
    path = rollout_journal.where_path(where)
    outcome: dict[str, Any] = {}

    def change(journal: dict[str, Any]) -> dict[str, Any]:
        if superseded(journal, where):
            outcome["move"], outcome["step"] = "superseded", -1
            return journal
        moved, outcome["move"], outcome["step"] = progress.next_move(journal, host)
        return moved

    journal = rollout_journal.update(path, change)
    return str(outcome["move"]), int(outcome["step"]), journal


def claim_sampler(where: Mapping[str, Any], host: str) -> dict[str, Any] | None:
    """``progress.claim_sampler`` under the journal's lock: the run ``host`` is to sample (the
    journal as written, its ``run`` holding the claim), or None when another task sampled it first
    or no run is running."""
    path = rollout_journal.where_path(where)
    outcome: dict[str, bool] = {}

    def change(journal: dict[str, Any]) -> dict[str, Any]:
        claimed, outcome["mine"] = progress.claim_sampler(journal, host, time.time())
        return claimed

    journal = rollout_journal.update(path, change)
    return journal if outcome["mine"] else None


def signature(where: Mapping[str, Any]) -> tuple[int, int, int]:
    """What changes whenever the journal is written (it is replaced by a rename): a waiting
    instance reads the journal again only then."""
    path = rollout_journal.where_path(where)
    try:
        stat = path.stat()
    except OSError:
        return (0, 0, 0)
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def superseded(journal: Mapping[str, Any], where: Mapping[str, Any]) -> str:
    """Why a part of run ``where["run"]`` may no longer act (empty: it may, or ``where`` names no
    run). A deploy killed mid-rollout can leave its parts running (Ansible's workers are sessions
    of their own, so killing the playbook's process group misses them); the rerun starts a new run,
    and what the old one still does must neither move traffic nor land in the new run's events."""
    if where.get("run") is None:
        return ""
    current = (journal.get("run") or {}).get("id")
    if current == where["run"]:
        return ""
    return f"run {where['run']} of this rollout was superseded by run {current}"
