# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What lb_member is asked for and what it takes to get there: pure, nothing here talks to HAProxy.

:class:`MemberRequest` is the validated module parameters (everything is checked before the socket
is touched); :func:`plan_change` is the difference between a server's state and the request, never
more; :func:`predict` is the state check mode reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import (
    DEFAULT_SOCKET,
    HaproxyError,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.state import (
    MAX_WEIGHT,
    ServerState,
)

TARGET_STATES = ("ready", "drain", "maint", "weight")
MAX_POLL_INTERVAL = 0.25

# HAProxy object names: letters, digits, '-', '_', '.', ':' (and never the CLI's ';' or spaces)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")


# --- the rules (lb_step's request follows them too) ----------------------------------------------


def name_problem(what: str, name: str) -> str | None:
    """Why ``name`` cannot be the HAProxy object ``what`` (a backend, a server), or None."""
    if _NAME_RE.match(name):
        return None
    return f"{what} {name!r} is not an HAProxy name (letters, digits, '-', '_', '.', ':')"


def poll_interval_problem(poll_interval: float) -> str | None:
    if 0 < poll_interval <= MAX_POLL_INTERVAL:
        return None
    return f"poll_interval must be > 0 and <= {MAX_POLL_INTERVAL}, not {poll_interval:g}"


# --- the request --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberRequest:
    """Validated module parameters: everything is checked before the socket is touched."""

    socket: str
    backend: str
    server: str
    state: str
    weight: int | None = None
    wait: bool = True
    drain_timeout: float = 300.0
    ready_timeout: float = 60.0
    poll_interval: float = 0.1
    shutdown_sessions: bool = False

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> MemberRequest:
        weight = params.get("weight")
        request = cls(
            socket=str(params.get("socket") or DEFAULT_SOCKET),
            backend=str(params["backend"]),
            server=str(params["server"]),
            state=str(params["state"]),
            weight=None if weight is None else int(weight),
            wait=bool(params.get("wait", True)),
            drain_timeout=float(params.get("drain_timeout", 300.0)),
            ready_timeout=float(params.get("ready_timeout", 60.0)),
            poll_interval=float(params.get("poll_interval", 0.1)),
            shutdown_sessions=bool(params.get("shutdown_sessions", False)),
        )
        problems = request.problems()
        if problems:
            raise HaproxyError("invalid parameters: " + "; ".join(problems))
        return request

    def problems(self) -> list[str]:
        problems: list[str] = []
        if not self.socket.strip():
            problems.append("socket must be a path")
        for what, name in (("backend", self.backend), ("server", self.server)):
            problem = name_problem(what, name)
            if problem:
                problems.append(problem)
        if self.state not in TARGET_STATES:
            problems.append(f"state must be one of {', '.join(TARGET_STATES)}, not {self.state!r}")
        if self.state == "weight":
            if self.weight is None:
                problems.append("state=weight needs weight")
            elif not 0 <= self.weight <= MAX_WEIGHT:
                problems.append(f"weight must be between 0 and {MAX_WEIGHT}, not {self.weight}")
        elif self.weight is not None:
            problems.append(f"weight is only used with state=weight (state is {self.state})")
        if self.shutdown_sessions and self.state != "maint":
            problems.append(f"shutdown_sessions is only used with state=maint (state is {self.state})")
        problem = poll_interval_problem(self.poll_interval)
        if problem:
            problems.append(problem)
        for what, value in (("drain_timeout", self.drain_timeout), ("ready_timeout", self.ready_timeout)):
            if value < 0:
                problems.append(f"{what} must be >= 0, not {value:g}")
        return problems


# --- planning (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    admin: str | None = None  # admin state to set, None to leave it
    weight: int | None = None  # weight to set, None to leave it
    shutdown_sessions: bool = False
    wait_for: str | None = None  # "no_sessions" | "up" | None
    note: str = ""

    @property
    def changed(self) -> bool:
        return self.admin is not None or self.weight is not None or self.shutdown_sessions

    def describe(self) -> list[str]:
        """The actions the plan takes, as the module reports them (what check mode says it would do)."""
        actions: list[str] = []
        if self.weight is not None:
            actions.append(f"set weight {self.weight}")
        if self.admin is not None:
            actions.append(f"set admin {self.admin}")
        if self.shutdown_sessions:
            actions.append("shutdown sessions")
        return actions


def plan_change(before: ServerState, request: MemberRequest) -> Plan:
    """What to do to reach the request from ``before``; never more than the difference."""
    wait = request.wait
    if request.state == "weight":
        weight = request.weight if request.weight != before.weight else None
        return Plan(weight=weight)
    if request.state == "drain":
        if before.admin == "maint":
            return Plan(
                wait_for="no_sessions" if wait else None,
                note="already in MAINT, which is out of rotation too: left in MAINT",
            )
        return Plan(
            admin="drain" if before.admin != "drain" else None,
            wait_for="no_sessions" if wait else None,
        )
    if request.state == "maint":
        return Plan(
            admin="maint" if before.admin != "maint" else None,
            shutdown_sessions=request.shutdown_sessions and before.sessions > 0,
            wait_for="no_sessions" if wait else None,
        )
    return Plan(admin="ready" if before.admin != "ready" else None, wait_for="up" if wait else None)


def admin_steps(before: ServerState, admin: str) -> list[tuple[str, str]]:
    """The ``set server <backend>/<server> ...`` arguments that take ``before`` to ``admin``, in order,
    each with the action lb_member reports for it.

    READY from MAINT on a health-checked server goes through DRAIN and ``health down``: the server
    re-enters rotation DOWN and HAProxy waits for ``rise`` fresh checks (see :mod:`.member`).
    """
    if before.admin == "maint" and admin == "ready" and before.checks_enabled:
        return [
            ("state drain", "set admin drain"),
            ("health down", "set health down (fresh checks decide, not the one before MAINT)"),
            ("state ready", "set admin ready"),
        ]
    return [(f"state {admin}", f"set admin {admin}")]


def predict(before: ServerState, plan: Plan) -> ServerState:
    """The state check mode reports: what HAProxy will show right after the change, before any wait."""
    after = before
    if plan.weight is not None:
        after = replace(after, weight=plan.weight)
    if plan.admin is not None:
        if plan.admin == "maint":
            operational = "MAINT"
        elif before.admin == "maint":
            operational = "DOWN" if before.checks_enabled else "UP"
        else:
            operational = before.operational
        after = replace(after, admin=plan.admin, operational=operational)
    if plan.shutdown_sessions:
        after = replace(after, current_sessions=0, queued_sessions=0)
    return after
