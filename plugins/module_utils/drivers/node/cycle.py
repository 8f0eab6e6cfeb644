# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One instance step of a rollout, on the instance's node, in one run.

An instance already on the version, active, with the unit file systemd runs unchanged on disk and
passing a quick health gate (``rise`` passing checks in a row, no ``min_healthy_time``, a short
deadline) is left alone. Otherwise: stop the unit (systemd sends SIGTERM and waits while the
service drains), switch ``current`` to the staged release, ``systemctl daemon-reload`` (the unit
file may have changed), start, and gate it with the full policy. A release that fails to start or
fails its gate is reverted to the release this run replaced, started and gated again; the step
fails either way, saying whether the instance is back on a healthy release. With nothing to go
back to (a first deploy, or the version was already current) the unit is stopped again: the
instance stays out. Runs on the node (stdlib only).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from ansible_collections.berth.fleet.plugins.module_utils.common.systemd import (
    Systemctl,
    SystemdError,
    UnitState,
    unit_problem,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.node.health import (
    GateOutcome,
    GatePolicy,
    HealthGateError,
    wait_healthy,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.node.release import (
    ReleaseError,
    ReleaseManager,
    ReleaseRequest,
    read_marker,
)

QUICK_GATE_MIN_SECONDS = 2.0  # the deadline of the quick gate: max(this, 4 x rise x interval)

Gate = Callable[[GatePolicy], GateOutcome]


class CycleError(Exception):
    """The step failed; the message says what, and where the instance was left. ``result`` holds
    what was done and measured up to there."""

    def __init__(self, message: str, result: CycleResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class CycleRequest:
    instance: str
    artifact: str
    version: str
    root: Path
    unit: str
    health: GatePolicy
    revert_on_failure: bool = True
    restart: bool = False  # a fresh start even when nothing changed (a canary's baseline)

    def release(self, state: str) -> ReleaseRequest:
        return ReleaseRequest(self.instance, self.artifact, self.version, state, None, None, self.root)

    def problems(self) -> list[str]:
        problems = []
        for validate in (self.release("current").validate, self.health.validate):
            try:
                validate()
            except (ReleaseError, HealthGateError) as exc:
                problems.append(str(exc))
        unit = unit_problem(self.unit)
        return problems + [unit] if unit else problems

    @property
    def quick_gate(self) -> GatePolicy:
        """The gate of an instance that looks unchanged: is it healthy now? (not: does it stay so)."""
        deadline = max(QUICK_GATE_MIN_SECONDS, 4 * self.health.rise * self.health.interval)
        return replace(self.health, min_healthy_time=0.0, timeout=min(self.health.timeout, deadline))


@dataclass
class GateReport:
    healthy: bool
    seconds: float
    risen_after: float | None = None
    checks: int | None = None
    failures: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "seconds": self.seconds,
            "risen_after": self.risen_after,
            "checks": self.checks,
            "failures": self.failures,
            "error": self.error,
        }


@dataclass
class CycleResult:
    changed: bool = False
    version: str | None = None  # what current points at afterwards
    previous: str | None = None
    why: str = ""
    actions: list[str] = field(default_factory=list)
    stop_seconds: float | None = None
    start_seconds: float | None = None
    risen_after: float | None = None
    waited: float | None = None
    seconds: float = 0.0
    gate: dict[str, Any] = field(default_factory=dict)
    reverted: bool = False
    reverted_healthy: bool | None = None
    revert: dict[str, Any] = field(default_factory=dict)
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "version": self.version,
            "previous": self.previous,
            "why": self.why,
            "actions": self.actions,
            "stop_seconds": self.stop_seconds,
            "start_seconds": self.start_seconds,
            "risen_after": self.risen_after,
            "waited": self.waited,
            "seconds": self.seconds,
            "gate": self.gate,
            "reverted": self.reverted,
            "reverted_healthy": self.reverted_healthy,
            "revert": self.revert,
            "diff": {"before": self.before, "after": self.after},
        }


class InstanceCycle:
    def __init__(
        self,
        request: CycleRequest,
        check_mode: bool = False,
        systemctl: Systemctl | None = None,
        gate: Gate = wait_healthy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.request = request
        self.check_mode = check_mode
        self.systemctl = systemctl or Systemctl()
        self.gate = gate
        self.clock = clock
        self.result = CycleResult()

    def run(self) -> CycleResult:
        """The step; raises CycleError (with the result so far) when it fails."""
        started = self.clock()
        try:
            self._run()
        except (ReleaseError, SystemdError) as exc:
            raise self._error(str(exc)) from exc
        finally:
            self.result.seconds = round(self.clock() - started, 3)
        return self.result

    def _run(self) -> None:
        request, result = self.request, self.result
        problems = request.problems()
        if problems:
            raise self._error("; ".join(problems))
        self._switch("query")
        unit = self._unit_state()
        result.before = {"current": result.version, "unit": unit.active_state}
        result.why = self._why_cycle(unit)
        if not result.why:
            result.after = dict(result.before)
            self._enable(unit)
            return
        result.changed = True
        if self.check_mode:
            if not unit.stopped:
                result.actions.append(f"stop {request.unit}")
            self._switch("current")
            result.actions += ["daemon-reload", f"start {request.unit}", f"health gate {request.health.url}"]
            result.after = {"current": request.version, "unit": "active"}
            self._enable(unit)
            return
        self._cycle(unit)
        self._enable(unit)

    def _enable(self, unit: UnitState) -> None:
        """An instance that runs also starts at boot: enabled once, on its first deploy."""
        if not unit.needs_enable:
            return
        self.result.changed = True
        if self.check_mode:
            self.result.actions.append(f"enable {self.request.unit}")
        else:
            self._do(f"enable {self.request.unit}", self.systemctl.enable, self.request.unit)

    def _unit_state(self) -> UnitState:
        unit = self.systemctl.state(self.request.unit)
        if not unit.found:
            raise self._error(
                f"unit {self.request.unit} not found: systemd has no unit file for it "
                "(write it first: berth.fleet.instance_install, roles/service_instance tasks/install.yml)"
            )
        if unit.load_state == "masked":
            raise self._error(f"unit {self.request.unit} is masked: unmask it to run the instance")
        return unit

    def _why_cycle(self, unit: UnitState) -> str:
        """Why this instance needs the step ('' when it does not); fails early when it cannot be done."""
        request, current = self.request, self.result.version
        if current != request.version:
            release_dir = request.release("current").release_dir
            if read_marker(release_dir) is None:
                raise self._error(
                    f"{request.artifact} {request.version} is not staged on this node (no release in "
                    f"{release_dir}): stage it first with berth.fleet.instance_install "
                    "(roles/service_instance tasks/install.yml); nothing was stopped"
                )
            return f"current is {current or 'not set'}, not {request.version}"
        if not unit.active:
            return f"{request.version} is current but {request.unit} is {unit.describe()}"
        if request.restart:
            return f"{request.version} is current and running: a fresh start was asked for"
        if unit.need_daemon_reload:
            return f"the unit file of {request.unit} changed since systemd loaded it"
        quick = self._gate(request.quick_gate)
        self.result.gate = quick.as_dict()
        if quick.healthy:
            self.result.risen_after, self.result.waited = quick.risen_after, quick.seconds
            return ""
        return f"{request.version} is current and running but fails its health check: {quick.error}"

    def _cycle(self, unit: UnitState) -> None:
        request, result = self.request, self.result
        replaced = result.version
        if not unit.stopped:
            try:
                result.stop_seconds = self._do(f"stop {request.unit}", self.systemctl.stop, request.unit)
            except SystemdError as exc:
                self._observe_after()
                raise self._error(f"could not stop {request.unit} (nothing was switched): {exc}") from exc
        try:
            switched = self._switch("current")
        except ReleaseError as exc:
            self._switch_failed(exc, restart=not unit.stopped)
        try:
            self._do("daemon-reload", self.systemctl.daemon_reload)
            result.start_seconds = self._do(f"start {request.unit}", self.systemctl.start, request.unit)
        except SystemdError as exc:
            failure = f"{request.version} did not start: {exc}"
        else:
            report = self._gate(request.health)
            result.gate, result.waited = report.as_dict(), report.seconds
            if report.healthy:
                result.risen_after = report.risen_after
                result.actions.append(f"health gate passed after {report.seconds} s")
                self._observe_after()
                return
            result.actions.append(f"health gate failed after {report.seconds} s")
            failure = f"{request.version} failed its health gate: {report.error}{self._died()}"
        if not request.revert_on_failure:
            self._observe_after()
            raise self._error(f"{failure}; revert_on_failure is false: left on {request.version} as it is")
        if switched and replaced is not None:
            self._revert(failure, replaced)
        nothing = (
            "it was already current before this run, so there is nothing to go back to"
            if not switched
            else "no previous release to go back to (a first deploy)"
        )
        self._stay_out(f"{failure}; {nothing}")

    def _revert(self, failure: str, previous: str) -> NoReturn:
        request, result = self.request, self.result
        revert: dict[str, Any] = {}
        try:
            revert["stop_seconds"] = self._do(f"stop {request.unit}", self.systemctl.stop, request.unit)
            result.reverted = self._switch("reverted")
            self._do("daemon-reload", self.systemctl.daemon_reload)
            revert["start_seconds"] = self._do(f"start {request.unit}", self.systemctl.start, request.unit)
        except (ReleaseError, SystemdError) as exc:
            report = GateReport(healthy=False, seconds=0.0, error=str(exc))
            verdict = f"which did not start: {exc}"
        else:
            report = self._gate(request.health)
            verb = "passed" if report.healthy else "failed"
            result.actions.append(f"health gate of {previous} {verb} after {report.seconds} s")
            verdict = (
                f"which passed its health gate (in {report.seconds} s)"
                if report.healthy
                else f"which did NOT pass its health gate either: {report.error}"
            )
        result.revert = {**revert, **report.as_dict()}
        result.reverted_healthy = report.healthy
        self._observe_after()
        if not result.reverted:
            raise self._error(f"{failure}; reverting to {previous} failed: {report.error}")
        raise self._error(f"{failure}; reverted: {request.instance} is back on {previous}, {verdict}")

    def _switch_failed(self, exc: ReleaseError, restart: bool) -> NoReturn:
        unit, message = self.request.unit, f"could not switch current to {self.request.version}: {exc}"
        if restart:
            try:
                self._do(f"start {unit}", self.systemctl.start, unit)
                message += f"; {unit} started again on {self.result.version}"
            except SystemdError as start_exc:
                message += f"; {unit} is stopped (starting it again failed: {start_exc})"
        self._observe_after()
        raise self._error(message) from exc

    def _stay_out(self, failure: str) -> NoReturn:
        unit = self.request.unit
        try:
            self._do(f"stop {unit}", self.systemctl.stop, unit)
        except SystemdError as exc:
            self._observe_after()
            raise self._error(f"{failure}; stopping {unit} again failed too: {exc}") from exc
        self._observe_after()
        raise self._error(f"{failure}: {unit} is stopped, the instance stays out")

    def _switch(self, state: str) -> bool:
        """Runs the release driver (query, current or reverted); whether it switched."""
        outcome = ReleaseManager(self.request.release(state), self.check_mode).run()
        self.result.actions += outcome.actions
        self.result.version, self.result.previous = outcome.current, outcome.previous
        return outcome.changed

    def _do(self, action: str, change: Callable[..., float], *args: str) -> float:
        self.result.actions.append(action)
        return change(*args)

    def _gate(self, policy: GatePolicy) -> GateReport:
        started = self.clock()
        try:
            outcome = self.gate(policy)
        except HealthGateError as exc:
            return GateReport(healthy=False, seconds=round(self.clock() - started, 3), error=str(exc))
        return GateReport(True, outcome.waited, outcome.risen_after, outcome.checks, outcome.failures)

    def _died(self) -> str:
        """When the unit's process is gone (it exited, it was not slow): what it said last."""
        try:
            state = self.systemctl.state(self.request.unit).active_state
        except SystemdError:
            return ""
        if state not in ("failed", "inactive"):
            return ""
        said = " | ".join(self.systemctl.last_lines(self.request.unit))
        return f"; {self.request.unit} is {state}" + (f", its last log lines: {said}" if said else "")

    def _observe_after(self) -> None:
        try:
            state = self.systemctl.state(self.request.unit).active_state
        except SystemdError as exc:
            state = f"unknown ({exc})"
        self.result.after = {"current": self.result.version, "unit": state}

    def _error(self, message: str) -> CycleError:
        return CycleError(f"{self.request.instance}: {message}", self.result)
