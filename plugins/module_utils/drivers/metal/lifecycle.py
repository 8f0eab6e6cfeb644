# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lifecycle of a bare-metal host, persisted as one JSON file per host.

States, in the order a host normally goes through them::

    enrolled -> inspected -> available -> active -> retired
                         \\-> failed (with a reason)

Allowed single steps (``=`` is "already there": nothing changes, except that asking for
``inspected`` again re-inspects):

============  ========  =========  =========  ======  =======  ======
from \\ to     enrolled  inspected  available  active  retired  failed
============  ========  =========  =========  ======  =======  ======
(new host)    yes       .          .          .       .        .
enrolled      =         yes        .          .       yes      yes
inspected     .         yes        yes        .       yes      yes
available     .         yes        =          yes     yes      yes
active        .         .          yes        =       yes      yes
retired       yes       .          .          .       =        .
failed        yes       .          .          .       yes      =
============  ========  =========  =========  ======  =======  ======

Asking for a state further along ``enrolled -> inspected -> available -> active`` walks every step
in between (so inspection always happens before a host becomes available). Nothing ever walks
*through* ``enrolled``: a retired or failed host comes back only when asked for ``enrolled``
explicitly (re-enrolling), which forgets its inspected hardware. ``failed`` is never asked for: a
host gets there when its inspection finds less than it requires, with a reason naming both.

Records live in ``<state_dir>/metal/<host>.json`` (directory mode 0700, files 0600), written to a
temporary file in the same directory and renamed over the old one, so a reader sees the old record
or the new one, never half of one. A record holds the BMC address and the system id, never a
credential.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.fs import (
    JsonFileError,
    atomic_write,
    read_json_object,
)

STATES = ("enrolled", "inspected", "available", "active", "retired", "failed")
REQUESTABLE = ("enrolled", "inspected", "available", "active", "retired")
FORWARD = ("enrolled", "inspected", "available", "active")
NEW = None  # the "state" of a host without a record

ALLOWED: dict[str | None, frozenset[str]] = {
    NEW: frozenset({"enrolled"}),
    "enrolled": frozenset({"inspected", "retired", "failed"}),
    "inspected": frozenset({"inspected", "available", "retired", "failed"}),
    "available": frozenset({"inspected", "active", "retired", "failed"}),
    "active": frozenset({"available", "retired", "failed"}),
    "retired": frozenset({"enrolled"}),
    "failed": frozenset({"enrolled", "retired"}),
}
HISTORY_KEPT = 50
SCHEMA = 1

_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class MetalError(Exception):
    """A lifecycle change that is not allowed, an inspection that failed, or a record that cannot be kept.

    ``details`` carries what the caller should still report (lifecycle before/after, changed).
    """

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details: dict[str, Any] = details


# --- the model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hardware:
    """What inspection records about a host, as its BMC reported it."""

    cpus: int | None = None
    memory_mib: int | None = None
    manufacturer: str | None = None
    model: str | None = None
    serial_number: str | None = None
    macs: tuple[str, ...] = ()

    @classmethod
    def from_facts(cls, facts: Mapping[str, Any]) -> Hardware:
        """From the ``facts`` a host driver returns (``cpus``, ``memory_mib``, ``nics`` with ``mac``...)."""
        nics = facts.get("nics") or []
        return cls(
            cpus=facts.get("cpus"),
            memory_mib=facts.get("memory_mib"),
            manufacturer=facts.get("manufacturer"),
            model=facts.get("model"),
            serial_number=facts.get("serial_number"),
            macs=tuple(str(nic["mac"]) for nic in nics if isinstance(nic, Mapping) and nic.get("mac")),
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "macs": list(self.macs)}


@dataclass(frozen=True)
class Requirements:
    vcpus: int | None = None
    memory_mib: int | None = None

    @classmethod
    def from_params(cls, required: Mapping[str, Any] | None) -> Requirements:
        required = required or {}
        requirements = cls(vcpus=required.get("vcpus"), memory_mib=required.get("memory_mib"))
        for name, value in asdict(requirements).items():
            if value is not None and (not isinstance(value, int) or value < 1):
                raise MetalError(f"required.{name} must be a whole number >= 1, not {value!r}")
        return requirements

    def describe(self) -> str:
        parts = []
        if self.vcpus is not None:
            parts.append(f"{self.vcpus} vcpus")
        if self.memory_mib is not None:
            parts.append(f"{self.memory_mib} MiB of memory")
        return " and ".join(parts) or "nothing"

    def shortfalls(self, hardware: Hardware) -> list[str]:
        """What ``hardware`` lacks; a value the BMC did not report counts as lacking."""
        missing = []
        if self.vcpus is not None and (hardware.cpus is None or hardware.cpus < self.vcpus):
            missing.append("vcpus")
        if self.memory_mib is not None and (
            hardware.memory_mib is None or hardware.memory_mib < self.memory_mib
        ):
            missing.append("memory_mib")
        return missing


def _reported(hardware: Hardware) -> str:
    cpus = "no CPU count" if hardware.cpus is None else f"{hardware.cpus} CPUs"
    memory = "no memory size" if hardware.memory_mib is None else f"{hardware.memory_mib} MiB of memory"
    return f"{cpus} and {memory}"


def inspect(host: str, hardware: Hardware, requirements: Requirements) -> str | None:
    """None when ``hardware`` meets ``requirements``, else the reason inspection fails."""
    missing = requirements.shortfalls(hardware)
    if not missing:
        return None
    return (
        f"inspection of {host} failed: required {requirements.describe()}; the BMC reported "
        f"{_reported(hardware)} (short of: {', '.join(missing)})"
    )


@dataclass(frozen=True)
class Transition:
    from_state: str | None
    to_state: str
    at: str
    reason: str | None = None


@dataclass(frozen=True)
class HostRecord:
    host: str
    state: str
    bmc: str = ""
    system_id: str | None = None
    reason: str | None = None
    hardware: Hardware | None = None
    history: tuple[Transition, ...] = ()
    updated_at: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "host": self.host,
            "state": self.state,
            "reason": self.reason,
            "bmc": self.bmc,
            "system_id": self.system_id,
            "hardware": None if self.hardware is None else self.hardware.as_dict(),
            "history": [asdict(transition) for transition in self.history],
            "updated_at": self.updated_at,
        }

    def summary(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str) -> HostRecord:
        try:
            state = str(data["state"])
            if state not in STATES:
                raise ValueError(f"unknown state {state!r}")
            hardware = data.get("hardware")
            return cls(
                host=str(data["host"]),
                state=state,
                bmc=str(data.get("bmc") or ""),
                system_id=data.get("system_id"),
                reason=data.get("reason"),
                hardware=None
                if hardware is None
                else Hardware(**{**hardware, "macs": tuple(hardware.get("macs") or ())}),
                history=tuple(Transition(**item) for item in data.get("history") or ()),
                updated_at=str(data.get("updated_at") or ""),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MetalError(f"{origin} is not a host record: {exc}") from None


# --- planning (pure) ----------------------------------------------------------------------------


def plan_states(current: str | None, target: str, host: str = "the host") -> list[str]:
    """The states to go through from ``current`` to ``target`` (empty: already there)."""
    if target not in REQUESTABLE:
        raise MetalError(f"lifecycle must be one of {', '.join(REQUESTABLE)}, not {target!r}")
    if current == target and target != "inspected":
        return []
    if target in ALLOWED[current]:
        return [target]
    if current in FORWARD and target in FORWARD and FORWARD.index(target) > FORWARD.index(current):
        return list(FORWARD[FORWARD.index(current) + 1 : FORWARD.index(target) + 1])
    if current is NEW:
        return list(FORWARD[: FORWARD.index(target) + 1]) if target in FORWARD else ["enrolled", target]
    if current in ("retired", "failed"):
        hint = "re-enroll it first (lifecycle: enrolled)"
    elif target == "enrolled":
        hint = "only a retired or failed host is enrolled again (retire it first)"
    else:
        allowed = ", ".join(sorted(ALLOWED[current])) or "nothing"
        hint = f"from {current} it can go to: {allowed}"
    raise MetalError(f"{host} cannot go from {current} to {target}: {hint}")


@dataclass(frozen=True)
class LifecyclePlan:
    before: HostRecord | None
    after: HostRecord
    steps: tuple[str, ...]
    failure: str | None = None  # set when inspection failed: ``after`` is the failed record

    @property
    def changed(self) -> bool:
        return self.before is None or self.before.as_dict() != self.after.as_dict()

    def diff(self) -> dict[str, Any]:
        return {
            "before": None if self.before is None else self.before.summary(),
            "after": self.after.summary(),
        }


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def plan_lifecycle(
    before: HostRecord | None,
    host: str,
    target: str,
    hardware: Hardware,
    requirements: Requirements,
    bmc: str = "",
    system_id: str | None = None,
    now: Callable[[], str] = utc_now,
) -> LifecyclePlan:
    """The record after walking to ``target``, inspecting on the way; ``failed`` if inspection fails."""
    steps = plan_states(None if before is None else before.state, target, host)
    if not steps:
        return LifecyclePlan(before, before or HostRecord(host, target), ())
    record = before or HostRecord(host=host, state="enrolled", bmc=bmc, system_id=system_id)
    current = None if before is None else before.state
    history = list(record.history)
    at = now()
    for step in steps:
        reason = None
        if step == "enrolled":
            record = replace(record, bmc=bmc, system_id=system_id, hardware=None)
        elif step == "inspected":
            reason = inspect(host, hardware, requirements)
            record = replace(record, hardware=hardware)
            if reason is not None:
                history.append(Transition(current, "failed", at, reason))
                failed = replace(
                    record, state="failed", reason=reason, history=tuple(history[-HISTORY_KEPT:])
                )
                return LifecyclePlan(before, replace(failed, updated_at=at), tuple(steps), reason)
        if step == "inspected" and current == "inspected" and before and before.hardware == hardware:
            continue  # a re-inspection that found the same: nothing to record
        history.append(Transition(current, step, at))
        record = replace(record, state=step, reason=None)
        current = step
    record = replace(record, history=tuple(history[-HISTORY_KEPT:]))
    if before is not None and record == replace(before, history=record.history):
        return LifecyclePlan(before, before, ())
    return LifecyclePlan(before, replace(record, updated_at=at), tuple(steps))


# --- the store ----------------------------------------------------------------------------------


class MetalStore:
    """Host records under ``<state_dir>/metal``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.directory = Path(state_dir) / "metal"

    def path(self, host: str) -> Path:
        if not _HOST_RE.match(host):
            raise MetalError(
                f"host name {host!r} cannot name a record: letters, digits, '.', '_', '-', "
                "starting with a letter or digit"
            )
        return self.directory / f"{host}.json"

    def load(self, host: str) -> HostRecord | None:
        path = self.path(host)
        try:
            data = read_json_object(path, "a host record")
        except JsonFileError as exc:
            raise MetalError(f"{exc}: fix or remove it to re-enroll {host}") from None
        if data is None:
            return None
        record = HostRecord.from_dict(data, str(path))
        if record.host != host:
            raise MetalError(f"{path} holds the record of {record.host!r}, not {host!r}")
        return record

    def save(self, record: HostRecord) -> Path:
        path = self.path(record.host)
        text = json.dumps(record.as_dict(), indent=2, sort_keys=True) + "\n"
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise MetalError(f"cannot write in {self.directory}: {exc.strerror or exc}") from None
        try:
            atomic_write(path, text, mode=0o600)
        except OSError as exc:
            raise MetalError(f"cannot write {path}: {exc.strerror or exc}") from None
        return path


# --- the whole job ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LifecycleRequest:
    host: str
    target: str
    state_dir: str
    requirements: Requirements = field(default_factory=Requirements)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> LifecycleRequest | None:
        """None when no lifecycle state is asked for."""
        target = params.get("lifecycle")
        if target is None:
            return None
        problems = []
        if target not in REQUESTABLE:
            problems.append(f"lifecycle must be one of {', '.join(REQUESTABLE)}, not {target!r}")
        if not params.get("name"):
            problems.append("lifecycle needs name (the host's name in the lifecycle records)")
        if not params.get("lifecycle_dir"):
            problems.append("lifecycle needs lifecycle_dir")
        if problems:
            raise MetalError("invalid parameters: " + "; ".join(problems))
        request = cls(
            host=str(params["name"]),
            target=str(target),
            state_dir=str(params["lifecycle_dir"]),
            requirements=Requirements.from_params(params.get("required")),
        )
        MetalStore(request.state_dir).path(request.host)  # validates the name before anything happens
        return request


@dataclass
class LifecycleOutcome:
    plan: LifecyclePlan
    path: Path

    def as_dict(self) -> dict[str, Any]:
        after = self.plan.after
        return {
            "host": after.host,
            "state": after.state,
            "reason": after.reason,
            "steps": list(self.plan.steps),
            "hardware": None if after.hardware is None else after.hardware.as_dict(),
            "path": str(self.path),
        }

    def merge_into(self, result: dict[str, Any]) -> None:
        """Add the lifecycle to a host driver's result: ``lifecycle``, ``changed`` and the diff."""
        diff = self.plan.diff()
        result["lifecycle"] = self.as_dict()
        result["changed"] = bool(result.get("changed")) or self.plan.changed
        result.setdefault("diff", {}).setdefault("before", {})["lifecycle"] = diff["before"]
        result["diff"].setdefault("after", {})["lifecycle"] = diff["after"]


class Lifecycle:
    """Prepare a host's next lifecycle state from fresh facts (failing early), then commit it."""

    def __init__(self, request: LifecycleRequest, now: Callable[[], str] = utc_now) -> None:
        self.request = request
        self.store = MetalStore(request.state_dir)
        self.now = now

    def prepare(
        self, facts: Mapping[str, Any], bmc: str, system_id: str | None, check_mode: bool
    ) -> LifecycleOutcome:
        """Plan the change; a failed inspection is recorded (unless check mode) and raised."""
        request = self.request
        before = self.store.load(request.host)
        plan = plan_lifecycle(
            before,
            request.host,
            request.target,
            Hardware.from_facts(facts),
            request.requirements,
            bmc=bmc,
            system_id=system_id,
            now=self.now,
        )
        outcome = LifecycleOutcome(plan, self.store.path(request.host))
        if plan.failure is not None:
            if not check_mode:
                self.store.save(plan.after)
            raise MetalError(
                plan.failure,
                changed=plan.changed and not check_mode,
                lifecycle=outcome.as_dict(),
                diff=plan.diff(),
            )
        return outcome

    def commit(self, outcome: LifecycleOutcome, check_mode: bool) -> None:
        if outcome.plan.changed and not check_mode:
            self.store.save(outcome.plan.after)
