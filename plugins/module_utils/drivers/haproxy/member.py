# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A backend server's place in rotation: change it through HAProxy's Runtime API, then wait.

:class:`HaproxyServer` reads a server's state (:mod:`.state`), applies a plan (:mod:`.plan`) with
Runtime API commands and waits for the result; :func:`apply_request` is lb_member's whole job.

HAProxy 2.6 facts this relies on (checked against Debian's 2.6.12):

- Leaving MAINT puts a health-checked server straight back UP (check health reset to ``rise``,
  stale check result kept) before any new check has run: a broken release would take traffic until
  ``fall`` checks fail. ``set server health down`` is ignored while in MAINT. So ``ready`` from
  MAINT goes MAINT -> DRAIN -> health down -> READY (:func:`.plan.admin_steps`): the server is DOWN
  when it re-enters rotation and HAProxy only sends it traffic after ``rise`` fresh successful checks.
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
    admin_steps,
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
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.wait import (
    Waited,
    health_detail,
    is_idle,
    is_up,
    poll_until,
    reusing,
    sessions_detail,
    wait_servers,
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

    def change_admin(self, before: ServerState, admin: str) -> list[str]:
        """Take the server from ``before`` to ``admin``; the actions done (READY from MAINT: three)."""
        actions: list[str] = []
        for argument, action in admin_steps(before, admin):
            self.command(f"set server {self.name} {argument}")
            actions.append(action)
        return actions

    # waiting

    def wait_until(
        self, predicate: Callable[[ServerState], bool], timeout: float, poll_interval: float
    ) -> float:
        """Poll until ``predicate(state)``; return the seconds waited or raise HaproxyTimeout."""
        done, elapsed, state = poll_until(
            self.get_state, predicate, timeout, poll_interval, self.clock, self.sleep
        )
        if not done:
            raise HaproxyTimeout(f"{self.name}: timed out after {elapsed:.2f} s", state, elapsed)
        return elapsed

    def wait_for_no_sessions(self, timeout: float, poll_interval: float) -> float:
        return self._wait_for("no_sessions", timeout, poll_interval).elapsed

    def wait_for_up(self, timeout: float, poll_interval: float) -> float:
        return self._wait_for("up", timeout, poll_interval).elapsed

    def _wait_for(
        self, wait_for: str, timeout: float, poll_interval: float, first: ServerState | None = None
    ) -> Waited:
        """Wait until the server has no session left (``no_sessions``) or is ``up``, or raise
        HaproxyTimeout saying why not; ``first``, a state read since the last command, is the first poll.
        """
        read = reusing(first, self.get_state)
        arrived = is_idle if wait_for == "no_sessions" else is_up
        waited = wait_servers(
            lambda: {self.server: read()},
            [self.server],
            arrived,
            timeout,
            poll_interval,
            self.clock,
            self.sleep,
        )
        if waited.done:
            return waited
        last = waited.states[self.server]
        if wait_for == "no_sessions":
            message = (
                f"{self.name} still has {sessions_detail(last)} after {waited.elapsed:.1f} s "
                f"(drain_timeout {timeout:g} s); it stays {last.admin.upper()}. "
                "Raise drain_timeout, or use state=maint with shutdown_sessions=true to cut them"
            )
        else:
            message = (
                f"{self.name} is not UP after {waited.elapsed:.1f} s (ready_timeout {timeout:g} s): "
                f"{health_detail(last, waited.checked.get(self.server))}. "
                "It stays READY: HAProxy sends it traffic as soon as its checks pass"
            )
        raise HaproxyTimeout(message, last, waited.elapsed)

    # the whole job

    def apply(self, request: MemberRequest, check_mode: bool) -> Outcome:
        before = self.get_state()
        plan = plan_change(before, request)
        if check_mode:
            return Outcome(plan.changed, before, predict(before, plan), 0.0, plan.describe(), plan.note)
        actions: list[str] = []
        changed = False
        latest: ServerState | None = before  # the newest state read; None once a command made it stale
        try:
            if plan.weight is not None:
                self.set_weight(plan.weight)
                actions.append(f"set weight {plan.weight}")
                changed, latest = True, None
            if plan.admin is not None:
                actions.extend(self.change_admin(before, plan.admin))
                changed, latest = True, self.get_state()
                verify_admin(latest, plan.admin)
            if (
                request.state == "maint"
                and request.shutdown_sessions
                and (latest or self.get_state()).sessions
            ):
                self.shutdown_sessions()
                actions.append("shutdown sessions")
                changed, latest = True, None
            waited = 0.0
            if plan.wait_for is not None:
                timeout = request.drain_timeout if plan.wait_for == "no_sessions" else request.ready_timeout
                done = self._wait_for(plan.wait_for, timeout, request.poll_interval, latest)
                waited, latest = done.elapsed, done.states[self.server]
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
        return Outcome(changed, before, latest or self.get_state(), waited, actions, plan.note)


def verify_admin(state: ServerState, admin: str) -> None:
    """Fail when HAProxy accepted an admin change that did not happen (a maintenance it cannot clear)."""
    if state.admin != admin:
        reasons = ", ".join(state.admin_reasons) or "none"
        raise HaproxyError(
            f"HAProxy accepted the change but {state.backend}/{state.server} is still {state.admin.upper()} "
            f"(admin flags 0x{state.admin_flags:02x}: {reasons}); the Runtime API only clears forced "
            "states: change the tracked server or the configuration instead"
        )


def apply_request(request: MemberRequest, check_mode: bool, transport: Transport | None = None) -> Outcome:
    """The module's whole job: connect to ``request.socket`` (unless a transport is given) and apply."""
    manager = HaproxyServer(transport or UnixSocketTransport(request.socket), request.backend, request.server)
    return manager.apply(request, check_mode)
