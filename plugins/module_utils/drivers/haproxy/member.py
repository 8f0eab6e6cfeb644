# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A backend server's place in rotation, through HAProxy's Runtime API on a unix socket.

This runs on the load balancer itself with the system Python: standard library only. The transport
(one command in, the whole answer out) is injected, so the parsing, planning and waiting are
unit-tested without HAProxy.

HAProxy 2.6 facts this relies on (checked against Debian's 2.6.12):

- ``show servers state <backend>`` gives the admin bit field, the operational state, the user
  weight and the backend/server ids; ``show stat <be_id> 4 <srv_id>`` gives exactly that server's
  row (sessions, queue, last health check). Ids rather than names: ``show stat`` reads a numeric
  first argument as an id, so a backend named ``123`` would be ambiguous.
- Leaving MAINT puts a health-checked server straight back UP (check health reset to ``rise``,
  stale check result kept) before any new check has run: a broken release would take traffic until
  ``fall`` checks fail. ``set server health down`` is ignored while in MAINT. So ``ready`` from
  MAINT goes MAINT -> DRAIN -> health down -> READY: the server is DOWN when it re-enters rotation
  and HAProxy only sends it traffic after ``rise`` fresh successful checks.
- ``set server health down`` on a server without checks marks it DOWN for good: only used when
  health checks are enabled.
- A command that succeeds answers an empty line; a refused one answers a sentence
  ("No such server.", "Permission denied", ...).
"""

from __future__ import annotations

import csv
import io
import os
import re
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

ADMIN_STATES = ("ready", "drain", "maint")
TARGET_STATES = ("ready", "drain", "maint", "weight")
MAX_WEIGHT = 256
MAX_POLL_INTERVAL = 0.25
DEFAULT_SOCKET = "/run/haproxy/admin.sock"

# srv_admin_state bits (include/haproxy/server-t.h)
ADMF_FMAINT = 0x01  # forced (CLI) maintenance
ADMF_IMAINT = 0x02  # inherited from a tracked server
ADMF_CMAINT = 0x04  # "disabled" in the configuration (informational once FMAINT is cleared)
ADMF_FDRAIN = 0x08  # forced (CLI) drain
ADMF_IDRAIN = 0x10  # inherited drain
ADMF_RMAINT = 0x20  # address resolution failed
ADMF_HMAINT = 0x40  # FQDN set from the CLI (informational)
ADMF_MAINT = ADMF_FMAINT | ADMF_IMAINT | ADMF_RMAINT
ADMF_DRAIN = ADMF_FDRAIN | ADMF_IDRAIN

_ADMIN_FLAG_NAMES = {
    ADMF_FMAINT: "forced maintenance",
    ADMF_IMAINT: "maintenance inherited from a tracked server",
    ADMF_CMAINT: "disabled in the configuration",
    ADMF_FDRAIN: "forced drain",
    ADMF_IDRAIN: "drain inherited from a tracked server",
    ADMF_RMAINT: "maintenance after an address resolution failure",
    ADMF_HMAINT: "FQDN set at runtime",
}

# srv_op_state (enum srv_state)
_OPERATIONAL = {0: "DOWN", 1: "STARTING", 2: "UP", 3: "NOLB"}
IN_ROTATION = ("UP", "STARTING")  # STARTING is UP during slowstart, with a ramping weight

CHK_ST_ENABLED = 0x04  # srv_check_state: health checks administratively enabled

# HAProxy object names: letters, digits, '-', '_', '.', ':' (and never the CLI's ';' or spaces)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")


class HaproxyError(Exception):
    """Anything that stops a server from being read or changed through the Runtime API.

    ``details`` carries what the caller should still report on failure (before/after/waited/changed).
    """

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details: dict[str, Any] = details


class HaproxyTimeout(HaproxyError):
    """A wait ran out; ``state`` is the last state seen and ``elapsed`` how long was waited."""

    def __init__(self, message: str, state: ServerState, elapsed: float) -> None:
        super().__init__(message)
        self.state = state
        self.elapsed = elapsed


Transport = Callable[[str], str]


class UnixSocketTransport:
    """One Runtime API command per connection (non-interactive mode: HAProxy answers, then closes)."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def __call__(self, command: str) -> str:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                sock.sendall(command.encode() + b"\n")
                chunks: list[bytes] = []
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except FileNotFoundError:
            raise HaproxyError(
                f"HAProxy socket {self.path} does not exist: is HAProxy running with "
                f"'stats socket {self.path} level admin'?"
            ) from None
        except PermissionError:
            raise HaproxyError(
                f"permission denied on HAProxy socket {self.path}: run as root (become: true) "
                "or as a user the socket's mode/user/group allow"
            ) from None
        except ConnectionRefusedError:
            raise HaproxyError(self._refused_message()) from None
        except TimeoutError:
            raise HaproxyError(
                f"HAProxy did not answer {command!r} on {self.path} within {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise HaproxyError(f"cannot talk to HAProxy on {self.path}: {exc}") from None
        return b"".join(chunks).decode("utf-8", errors="replace")

    def _refused_message(self) -> str:
        try:
            is_socket = stat.S_ISSOCK(os.stat(self.path).st_mode)
        except OSError:
            is_socket = True
        if not is_socket:
            return f"{self.path} is not a unix socket (expected HAProxy's 'stats socket')"
        return f"nothing listens on HAProxy socket {self.path} (HAProxy stopped? stale socket file?)"


# --- the model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerState:
    backend: str
    server: str
    admin: str  # ready | drain | maint
    operational: str  # UP | DOWN | NOLB | STARTING | MAINT
    current_sessions: int
    queued_sessions: int
    weight: int  # the user weight (what `set server weight` sets), not the effective weight
    check_status: str  # e.g. "L7OK 200", "L7STS 503", "L4CON"; "" while checks are paused or absent
    last_check: str  # e.g. "Layer7 wrong status: Service Unavailable"
    checks_enabled: bool = True
    admin_flags: int = 0
    backend_id: int = 0
    server_id: int = 0

    @property
    def in_rotation(self) -> bool:
        """Whether HAProxy may send this server new (non-persistent) traffic."""
        return self.admin == "ready" and self.operational in IN_ROTATION

    @property
    def sessions(self) -> int:
        """Everything still bound to this server: streams being served and streams queued for it."""
        return self.current_sessions + self.queued_sessions

    @property
    def admin_reasons(self) -> list[str]:
        return [name for bit, name in _ADMIN_FLAG_NAMES.items() if self.admin_flags & bit]

    def summary(self) -> dict[str, Any]:
        """What diff shows: the two things this module changes."""
        return {"admin": self.admin, "weight": self.weight}

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for internal in ("backend_id", "server_id", "admin_flags"):
            data.pop(internal)
        return data


def admin_from_flags(flags: int) -> str:
    if flags & ADMF_MAINT:
        return "maint"
    if flags & ADMF_DRAIN:
        return "drain"
    return "ready"


def operational_from(op_state: int, flags: int) -> str:
    if flags & ADMF_MAINT:
        return "MAINT"
    return _OPERATIONAL.get(op_state, f"UNKNOWN({op_state})")


# --- parsing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServersStateRow:
    """One line of ``show servers state <backend>`` (format version 1)."""

    backend_id: int
    backend: str
    server_id: int
    server: str
    op_state: int
    admin_flags: int
    user_weight: int
    check_state: int


def _refusal(answer: str) -> str:
    return " ".join(answer.split())


def parse_servers_state(text: str, backend: str) -> dict[str, ServersStateRow]:
    """Rows of ``show servers state <backend>`` by server name."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or lines[0].strip() != "1":
        message = _refusal(text)
        if "find backend" in message or "No such" in message:
            raise HaproxyError(f"HAProxy has no backend {backend!r}")
        raise HaproxyError(f"unexpected answer to 'show servers state {backend}': {message[:300]!r}")
    if len(lines) < 2 or not lines[1].startswith("#"):
        raise HaproxyError(f"'show servers state {backend}' has no header line")
    header = lines[1].lstrip("#").split()
    rows: dict[str, ServersStateRow] = {}
    for line in lines[2:]:
        values = line.split()
        if len(values) < len(header):
            raise HaproxyError(f"short line in 'show servers state {backend}': {line!r}")
        record = {name: values[index] for index, name in enumerate(header)}
        try:
            row = ServersStateRow(
                backend_id=int(record["be_id"]),
                backend=record["be_name"],
                server_id=int(record["srv_id"]),
                server=record["srv_name"],
                op_state=int(record["srv_op_state"]),
                admin_flags=int(record["srv_admin_state"]),
                user_weight=int(record["srv_uweight"]),
                check_state=int(record["srv_check_state"]),
            )
        except (KeyError, ValueError) as exc:
            raise HaproxyError(f"cannot read 'show servers state {backend}' line {line!r}: {exc}") from None
        rows[row.server] = row
    return rows


def parse_stat_csv(text: str) -> list[dict[str, str]]:
    """Rows of ``show stat`` (CSV whose header line starts with '# ')."""
    if not text.startswith("# pxname,"):
        raise HaproxyError(f"unexpected answer to 'show stat': {_refusal(text)[:300]!r}")
    reader = csv.DictReader(io.StringIO(text[2:]))
    return [row for row in reader if row.get("pxname")]


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def describe_check(stat_row: dict[str, str]) -> tuple[str, str]:
    """(check_status, last_check) of a stat row.

    For example ("L7STS 503", "Layer7 wrong status: Service Unavailable"). While a check is running
    HAProxy prefixes the status with "* " and its code is not meaningful yet, so the code is left out.
    """
    check_status = stat_row.get("check_status", "")
    code = "" if check_status.startswith("*") else stat_row.get("check_code", "")
    status = " ".join(part for part in (check_status, code) if part)
    text = ": ".join(part for part in (stat_row.get("check_desc", ""), stat_row.get("last_chk", "")) if part)
    return status, text


def build_state(row: ServersStateRow, stat_row: dict[str, str]) -> ServerState:
    check_status, last_check = describe_check(stat_row)
    return ServerState(
        backend=row.backend,
        server=row.server,
        admin=admin_from_flags(row.admin_flags),
        operational=operational_from(row.op_state, row.admin_flags),
        current_sessions=_int(stat_row.get("scur")),
        queued_sessions=_int(stat_row.get("qcur")),
        weight=row.user_weight,
        check_status=check_status,
        last_check=last_check,
        checks_enabled=bool(row.check_state & CHK_ST_ENABLED),
        admin_flags=row.admin_flags,
        backend_id=row.backend_id,
        server_id=row.server_id,
    )


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
            if not _NAME_RE.match(name):
                problems.append(
                    f"{what} {name!r} is not an HAProxy name (letters, digits, '-', '_', '.', ':')"
                )
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
        if not 0 < self.poll_interval <= MAX_POLL_INTERVAL:
            problems.append(
                f"poll_interval must be > 0 and <= {MAX_POLL_INTERVAL}, not {self.poll_interval:g}"
            )
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


# --- the manager --------------------------------------------------------------------------------


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
        rows = parse_servers_state(self.transport(f"show servers state {self.backend}"), self.backend)
        row = rows.get(self.server)
        if row is None:
            known = ", ".join(sorted(rows)) or "none"
            raise HaproxyError(f"backend {self.backend!r} has no server {self.server!r} (servers: {known})")
        stat_rows = parse_stat_csv(self.transport(f"show stat {row.backend_id} 4 {row.server_id}"))
        for stat_row in stat_rows:
            if stat_row.get("pxname") == self.backend and stat_row.get("svname") == self.server:
                return build_state(row, stat_row)
        raise HaproxyError(f"'show stat' has no row for {self.name} (server removed meanwhile?)")

    # changing

    def command(self, command: str) -> None:
        """Run a command whose success is an empty answer; anything else is HAProxy's refusal."""
        answer = _refusal(self.transport(command))
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
            return Outcome(plan.changed, before, predict(before, plan), 0.0, self._describe(plan), plan.note)
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

    @staticmethod
    def _describe(plan: Plan) -> list[str]:
        actions: list[str] = []
        if plan.weight is not None:
            actions.append(f"set weight {plan.weight}")
        if plan.admin is not None:
            actions.append(f"set admin {plan.admin}")
        if plan.shutdown_sessions:
            actions.append("shutdown sessions")
        return actions


def apply_request(request: MemberRequest, check_mode: bool, transport: Transport | None = None) -> Outcome:
    """The module's whole job: connect to ``request.socket`` (unless a transport is given) and apply."""
    manager = HaproxyServer(transport or UnixSocketTransport(request.socket), request.backend, request.server)
    return manager.apply(request, check_mode)
