# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""lb_step: one load balancer's whole traffic step for a batch, every server of a phase together.

(1) every ``ready`` server back in rotation, as lb_member ``state=ready`` does it (from MAINT through
DRAIN and ``health down``, so fresh checks decide); (2) wait until every one of them is UP and in
rotation; (3) every ``drain`` server to DRAIN (one in MAINT stays in MAINT); (4) wait until no
``wait_drained`` server holds a session. No drain command is sent before (2) is over.

Each poll reads the whole backend in two round trips (:func:`.state.read_servers`), whatever the
number of servers; a poll that follows no command reuses the last read instead of asking again. The
first read after commands also checks that HAProxy did change the admin states it accepted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.member import (
    HaproxyServer,
    verify_admin,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.plan import (
    MemberRequest,
    Plan,
    admin_steps,
    name_problem,
    plan_change,
    poll_interval_problem,
    predict,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import (
    DEFAULT_SOCKET,
    HaproxyError,
    Transport,
    UnixSocketTransport,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.state import (
    ServerState,
    read_servers,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.wait import (
    Waited,
    health_detail,
    is_idle,
    is_up,
    reusing,
    sessions_detail,
    wait_servers,
)

# a wait longer than this says what it waits for, and again after as long
PROGRESS_EVERY = 2.0

# --- the request --------------------------------------------------------------------------------


def _names(value: Iterable[Any] | None) -> tuple[str, ...]:
    """Server names in the order given, each once."""
    return tuple(dict.fromkeys(str(name) for name in value or ()))


@dataclass(frozen=True)
class StepRequest:
    """Validated lb_step parameters: everything is checked before the socket is touched."""

    socket: str
    backend: str
    ready: tuple[str, ...] = ()
    drain: tuple[str, ...] = ()
    wait_drained: tuple[str, ...] = ()
    ready_timeout: float = 60.0
    drain_timeout: float = 300.0
    poll_interval: float = 0.1

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> StepRequest:
        drain = _names(params.get("drain"))
        wait_drained = params.get("wait_drained")
        request = cls(
            socket=str(params.get("socket") or DEFAULT_SOCKET),
            backend=str(params["backend"]),
            ready=_names(params.get("ready")),
            drain=drain,
            wait_drained=drain if wait_drained is None else _names(wait_drained),
            ready_timeout=float(params.get("ready_timeout", 60.0)),
            drain_timeout=float(params.get("drain_timeout", 300.0)),
            poll_interval=float(params.get("poll_interval", 0.1)),
        )
        problems = request.problems()
        if problems:
            raise HaproxyError("invalid parameters: " + "; ".join(problems))
        return request

    @property
    def lists(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return (("ready", self.ready), ("drain", self.drain), ("wait_drained", self.wait_drained))

    def problems(self) -> list[str]:
        problems: list[str] = []
        if not self.socket.strip():
            problems.append("socket must be a path")
        problem = name_problem("backend", self.backend)
        if problem:
            problems.append(problem)
        for what, names in self.lists:
            for name in names:
                problem = name_problem("server", name)
                if problem:
                    problems.append(f"{what}: {problem}")
        both = [name for name in self.ready if name in self.drain]
        if both:
            problems.append(f"a server cannot be both in ready and in drain: {', '.join(both)}")
        outside = [name for name in self.wait_drained if name not in self.drain]
        if outside:
            problems.append(
                "wait_drained names servers that drain does not (a server left in rotation keeps "
                f"getting sessions): {', '.join(outside)}"
            )
        problem = poll_interval_problem(self.poll_interval)
        if problem:
            problems.append(problem)
        for what, value in (("ready_timeout", self.ready_timeout), ("drain_timeout", self.drain_timeout)):
            if not value > 0:
                problems.append(f"{what} must be > 0, not {value:g}")
        return problems

    def unknown(self, servers: Sequence[str]) -> str | None:
        """Why some named servers are not in ``servers`` (the backend's), or None."""
        missing: dict[str, list[str]] = {}
        for what, names in self.lists:
            for name in names:
                if name not in servers:
                    missing.setdefault(name, []).append(what)
        if not missing:
            return None
        named = ", ".join(f"{name!r} ({', '.join(whats)})" for name, whats in missing.items())
        return f"backend {self.backend!r} has no server {named}; its servers: {', '.join(servers) or 'none'}"


# --- the plan (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One server's admin change and the Runtime API commands that make it."""

    server: str
    admin: str
    commands: tuple[str, ...]


def plan_admin(
    backend: str, states: dict[str, ServerState], names: Sequence[str], state: str
) -> list[Change]:
    """What lb_member ``state=<state>`` would change on each server of ``names``; never more."""
    changes: list[Change] = []
    for name in names:
        before = states[name]
        admin = plan_change(before, MemberRequest(socket="", backend=backend, server=name, state=state)).admin
        if admin is not None:
            commands = tuple(
                f"set server {backend}/{name} {argument}" for argument, _why in admin_steps(before, admin)
            )
            changes.append(Change(name, admin, commands))
    return changes


# --- the step -----------------------------------------------------------------------------------


class LbStep:
    """The four phases against one HAProxy; what was done is kept for the result, even on failure."""

    def __init__(
        self,
        request: StepRequest,
        transport: Transport,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        said: Callable[[str], None] | None = None,
    ) -> None:
        self.request = request
        self.transport = transport
        self.clock = clock
        self.sleep = sleep
        self.said = said  # told what a long wait waits for, every PROGRESS_EVERY seconds
        self.before: dict[str, ServerState] = {}
        self.latest: dict[str, ServerState] = {}
        self.fresh = False  # whether `latest` was read after the last command
        self.unverified: list[Change] = []
        self.commands: list[str] = []
        self.changed = False
        self.ready_wait = 0.0
        self.drain_wait = 0.0

    def run(self, check_mode: bool) -> dict[str, Any]:
        self.before = self.read()
        if check_mode:
            return self.predict()
        try:
            self.put_in_rotation()
            self.take_out_of_rotation()
            if not self.fresh:
                self.read()
        except HaproxyError as exc:
            exc.details.update(self.result())
            raise
        return self.result()

    def read(self) -> dict[str, ServerState]:
        """One poll: the whole backend; the named servers must be in it, changes must have happened."""
        states = read_servers(self.transport, self.request.backend)
        problem = self.request.unknown(list(states))
        if problem:
            raise HaproxyError(problem)
        self.latest, self.fresh = states, True
        for change in self.unverified:
            verify_admin(states[change.server], change.admin)
        self.unverified = []
        return states

    def send(self, changes: list[Change]) -> None:
        for change in changes:
            server = HaproxyServer(self.transport, self.request.backend, change.server)
            for command in change.commands:
                self.commands.append(command)
                server.command(command)
                self.changed = True
            self.fresh = False
            self.unverified.append(change)

    def wait(self, names: Sequence[str], arrived: Callable[[ServerState], bool], timeout: float) -> Waited:
        read = reusing(self.latest if self.fresh else None, self.read)
        if self.said is not None:
            read = self.telling(read, names, arrived)
        return wait_servers(
            read,
            names,
            arrived,
            timeout,
            self.request.poll_interval,
            self.clock,
            self.sleep,
        )

    def telling(
        self,
        read: Callable[[], dict[str, ServerState]],
        names: Sequence[str],
        arrived: Callable[[ServerState], bool],
    ) -> Callable[[], dict[str, ServerState]]:
        """``read``, and every PROGRESS_EVERY seconds of the wait a line on the servers not there yet
        (``catalog-3 holds 2 session(s): waiting for them to end, 2.4 s``)."""
        said, started = self.said, self.clock()
        told = [started]
        waiting_for = "UP" if arrived is is_up else "idle"

        def read_and_tell() -> dict[str, ServerState]:
            states = read()
            now = self.clock()
            pending = [name for name in names if not arrived(states[name])]
            if said is not None and pending and now - told[0] >= PROGRESS_EVERY:
                told[0] = now
                if waiting_for == "idle":
                    detail = ", ".join(f"{name} holds {states[name].sessions} session(s)" for name in pending)
                    said(f"{detail}: waiting for them to end, {now - started:.1f} s")
                else:
                    detail = ", ".join(f"{name} is {states[name].operational}" for name in pending)
                    said(f"{detail}: waiting for UP, {now - started:.1f} s")
            return states

        return read_and_tell

    def put_in_rotation(self) -> None:
        request = self.request
        if not request.ready:
            return
        self.send(plan_admin(request.backend, self.latest, request.ready, "ready"))
        waited = self.wait(request.ready, is_up, request.ready_timeout)
        self.ready_wait = waited.elapsed
        if not waited.done:
            servers = "; ".join(
                f"{request.backend}/{name}: {health_detail(waited.states[name], waited.checked.get(name))}"
                for name in waited.pending
            )
            untouched = " The drain servers were not touched." if request.drain else ""
            raise HaproxyError(
                f"{len(waited.pending)} of {len(request.ready)} ready server(s) not UP after "
                f"{waited.elapsed:.1f} s (ready_timeout {request.ready_timeout:g} s): {servers}. "
                f"They stay READY: HAProxy sends them traffic as soon as their checks pass.{untouched}"
            )

    def take_out_of_rotation(self) -> None:
        request = self.request
        self.send(plan_admin(request.backend, self.latest, request.drain, "drain"))
        if not request.wait_drained:
            return
        waited = self.wait(request.wait_drained, is_idle, request.drain_timeout)
        self.drain_wait = waited.elapsed
        if not waited.done:
            servers = "; ".join(
                f"{request.backend}/{name} {sessions_detail(waited.states[name])} "
                f"({waited.states[name].admin.upper()})"
                for name in waited.pending
            )
            raise HaproxyError(
                f"{len(waited.pending)} of {len(request.wait_drained)} drained server(s) still hold "
                f"sessions after {waited.elapsed:.1f} s (drain_timeout {request.drain_timeout:g} s): "
                f"{servers}. They keep their admin state. Raise drain_timeout, or cut the sessions "
                "(lb_member state=maint shutdown_sessions=true)"
            )

    def predict(self) -> dict[str, Any]:
        """Check mode: the commands the step would send and the states right after them; no wait."""
        request = self.request
        changes = plan_admin(request.backend, self.before, request.ready, "ready")
        changes += plan_admin(request.backend, self.before, request.drain, "drain")
        self.latest = dict(self.before)
        for change in changes:
            self.latest[change.server] = predict(self.before[change.server], Plan(admin=change.admin))
            self.commands.extend(change.commands)
        self.changed = bool(changes)
        return self.result()

    def result(self) -> dict[str, Any]:
        named = self.request.ready + self.request.drain
        return {
            "changed": self.changed,
            "servers": {name: state.brief() for name, state in self.latest.items()},
            "ready_wait": round(self.ready_wait, 3),
            "drain_wait": round(self.drain_wait, 3),
            "commands": list(self.commands),
            "diff": {
                when: {name: {"admin": states[name].admin} for name in named if name in states}
                for when, states in (("before", self.before), ("after", self.latest))
            },
        }


def run_step(
    request: StepRequest,
    check_mode: bool,
    transport: Transport | None = None,
    said: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The module's whole job: connect to ``request.socket`` (unless a transport is given) and step;
    ``said`` hears what a long wait waits for."""
    return LbStep(request, transport or UnixSocketTransport(request.socket), said=said).run(check_mode)
