# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A backend server's place in rotation: change it through HAProxy's Runtime API, then wait.

:class:`HaproxyServer` reads a server's state (:mod:`.state`), applies a plan (:mod:`.plan`) with
Runtime API commands and waits for the result; :func:`apply_request` is lb_member's whole job.

HAProxy 2.6 facts this relies on (checked against Debian's 2.6.12):

- Leaving MAINT puts a health-checked server straight back UP (check health reset to ``rise``,
  stale check result kept) before any new check has run: a broken release would take traffic until
  ``fall`` checks fail. ``set server health down`` is ignored while in MAINT. So ``ready`` from
  MAINT goes MAINT -> DRAIN -> health down -> READY: the server is DOWN when it re-enters rotation
  and HAProxy only sends it traffic after ``rise`` fresh successful checks.
- ``set server health down`` on a server without checks marks it DOWN for good: only used when
  health checks are enabled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.plan import (
    MemberRequest,
    plan_change,
    predict,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import (
    HaproxyError,
    Transport,
    UnixSocketTransport,
    refusal,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.state import (
    ADMIN_STATES,
    MAX_WEIGHT,
    ServerState,
    read_server,
)


class HaproxyTimeout(HaproxyError):
    """A wait ran out; ``state`` is the last state seen and ``elapsed`` how long was waited."""

    def __init__(self, message: str, state: ServerState, elapsed: float) -> None:
        super().__init__(message)
        self.state = state
        self.elapsed = elapsed


@dataclass
class Outcome:
    changed: bool
    before: ServerState
    after: ServerState
    waited: float = 0.0
    actions: list[str] = field(default_factory=list)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "changed": self.changed,
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
            "waited": round(self.waited, 3),
            "actions": list(self.actions),
            "diff": {"before": self.before.summary(), "after": self.after.summary()},
        }
        if self.note:
            result["note"] = self.note
        return result


class HaproxyServer:
    """One backend server seen through the Runtime API: read, change, wait."""

    def __init__(
        self,
        transport: Transport,
        backend: str,
        server: str,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.transport = transport
        self.backend = backend
        self.server = server
        self.clock = clock
        self.sleep = sleep

    @property
    def name(self) -> str:
        return f"{self.backend}/{self.server}"

    # reading

    def get_state(self) -> ServerState:
        return read_server(self.transport, self.backend, self.server)

    # changing

    def command(self, command: str) -> None:
        """Run a command whose success is an empty answer; anything else is HAProxy's refusal."""
        answer = refusal(self.transport(command))
        if not answer:
            return
        hint = ""
        if "Permission denied" in answer:
            hint = " (the stats socket needs 'level admin')"
        elif answer.startswith("No such backend"):
            hint = f" (unknown backend {self.backend!r})"
        elif answer.startswith("No such server"):
            hint = f" (unknown server {self.server!r} in backend {self.backend!r})"
        raise HaproxyError(f"HAProxy refused {command!r}: {answer}{hint}")

    def set_admin(self, admin: str) -> None:
        if admin not in ADMIN_STATES:
            raise HaproxyError(f"admin state must be one of {', '.join(ADMIN_STATES)}, not {admin!r}")
        self.command(f"set server {self.name} state {admin}")

    def set_weight(self, weight: int) -> None:
        if not 0 <= weight <= MAX_WEIGHT:
            raise HaproxyError(f"weight must be between 0 and {MAX_WEIGHT}, not {weight}")
        self.command(f"set server {self.name} weight {weight}")

    def shutdown_sessions(self) -> None:
        self.command(f"shutdown sessions server {self.name}")

    def leave_maintenance(self, checks_enabled: bool) -> list[str]:
        """MAINT -> READY such that the server re-enters rotation DOWN and must pass `rise` checks."""
        if not checks_enabled:
            self.set_admin("ready")
            return ["set admin ready"]
        self.set_admin("drain")
        self.command(f"set server {self.name} health down")
        self.set_admin("ready")
        return [
            "set admin drain",
            "set health down (fresh checks decide, not the one before MAINT)",
            "set admin ready",
        ]

    # waiting

    def wait_until(
        self, predicate: Callable[[ServerState], bool], timeout: float, poll_interval: float
    ) -> float:
        """Poll until ``predicate(state)``; return the seconds waited or raise HaproxyTimeout.

        The last poll happens at the deadline, so a timeout never ends without a final look.
        """
        started = self.clock()
        deadline = started + timeout
        while True:
            state = self.get_state()
            now = self.clock()
            if predicate(state):
                return now - started
            if now >= deadline:
                raise HaproxyTimeout(
                    f"{self.name}: timed out after {now - started:.2f} s", state, now - started
                )
            self.sleep(min(poll_interval, deadline - now))

    def wait_for_no_sessions(self, timeout: float, poll_interval: float) -> float:
        try:
            return self.wait_until(lambda state: state.sessions == 0, timeout, poll_interval)
        except HaproxyTimeout as exc:
            last = exc.state
            raise HaproxyTimeout(
                f"{self.name} still has {last.current_sessions} session(s) and {last.queued_sessions} queued "
                f"after {exc.elapsed:.1f} s (drain_timeout {timeout:g} s); it stays {last.admin.upper()}. "
                "Raise drain_timeout, or use state=maint with shutdown_sessions=true to cut them",
                last,
                exc.elapsed,
            ) from None

    def wait_for_up(self, timeout: float, poll_interval: float) -> float:
        concluded: list[ServerState] = []  # polls that saw a finished check, not one in progress

        def up(state: ServerState) -> bool:
            if state.check_status and not state.check_status.startswith("*"):
                concluded.append(state)
            return state.in_rotation

        try:
            return self.wait_until(up, timeout, poll_interval)
        except HaproxyTimeout as exc:
            last = exc.state
            told = concluded[-1] if concluded else last
            check = told.check_status or "no check result"
            detail = f" ({told.last_check})" if told.last_check else ""
            raise HaproxyTimeout(
                f"{self.name} is not UP after {exc.elapsed:.1f} s (ready_timeout {timeout:g} s): "
                f"operational {last.operational}, admin {last.admin}, last health check {check}{detail}. "
                "It stays READY: HAProxy sends it traffic as soon as its checks pass",
                last,
                exc.elapsed,
            ) from None

    # the whole job

    def apply(self, request: MemberRequest, check_mode: bool) -> Outcome:
        before = self.get_state()
        plan = plan_change(before, request)
        if check_mode:
            return Outcome(plan.changed, before, predict(before, plan), 0.0, plan.describe(), plan.note)
        actions: list[str] = []
        changed = False
        try:
            if plan.weight is not None:
                self.set_weight(plan.weight)
                actions.append(f"set weight {plan.weight}")
                changed = True
            if plan.admin is not None:
                if before.admin == "maint" and plan.admin == "ready":
                    actions.extend(self.leave_maintenance(before.checks_enabled))
                else:
                    self.set_admin(plan.admin)
                    actions.append(f"set admin {plan.admin}")
                changed = True
                self._verify_admin(plan.admin)
            if request.state == "maint" and request.shutdown_sessions and self.get_state().sessions > 0:
                self.shutdown_sessions()
                actions.append("shutdown sessions")
                changed = True
            waited = 0.0
            if plan.wait_for == "no_sessions":
                waited = self.wait_for_no_sessions(request.drain_timeout, request.poll_interval)
            elif plan.wait_for == "up":
                waited = self.wait_for_up(request.ready_timeout, request.poll_interval)
        except HaproxyTimeout as exc:
            exc.details.update(
                changed=changed,
                before=before.as_dict(),
                after=exc.state.as_dict(),
                waited=round(exc.elapsed, 3),
                actions=actions,
            )
            raise
        except HaproxyError as exc:
            exc.details.update(changed=changed, before=before.as_dict(), actions=actions)
            raise
        return Outcome(changed, before, self.get_state(), waited, actions, plan.note)

    def _verify_admin(self, admin: str) -> None:
        state = self.get_state()
        if state.admin != admin:
            reasons = ", ".join(state.admin_reasons) or "none"
            raise HaproxyError(
                f"HAProxy accepted the change but {self.name} is still {state.admin.upper()} "
                f"(admin flags 0x{state.admin_flags:02x}: {reasons}); the Runtime API only clears forced "
                "states: change the tracked server or the configuration instead"
            )


def apply_request(request: MemberRequest, check_mode: bool, transport: Transport | None = None) -> Outcome:
    """The module's whole job: connect to ``request.socket`` (unless a transport is given) and apply."""
    manager = HaproxyServer(transport or UnixSocketTransport(request.socket), request.backend, request.server)
    return manager.apply(request, check_mode)
