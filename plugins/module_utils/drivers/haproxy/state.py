# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a backend server is, as HAProxy's Runtime API tells it: admin and operational state, weight,
sessions, last health check.

A state is built from two answers: the server's line of ``show servers state <backend>`` and its
row of ``show stat``. Both answers cover a whole backend, so :func:`build_states` pairs any number
of servers at once: :func:`read_servers` reads every server of a backend (or one) in two round trips,
whatever their number; :func:`read_server` is its one-server case.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import (
    HaproxyError,
    ServersStateRow,
    Transport,
    parse_servers_state,
    parse_stat_csv,
)

ADMIN_STATES = ("ready", "drain", "maint")
MAX_WEIGHT = 256

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

    def brief(self) -> dict[str, Any]:
        """What lb_step returns of a server: its place in rotation and what is still bound to it."""
        return {
            "admin": self.admin,
            "operational": self.operational,
            "in_rotation": self.in_rotation,
            "sessions": self.sessions,
        }

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


def build_states(
    backend: str, rows: Mapping[str, ServersStateRow], stat_rows: list[dict[str, str]]
) -> dict[str, ServerState]:
    """The state of each server of ``rows`` (by name) that ``stat_rows`` has a row for in ``backend``.

    One ``show servers state <backend>`` and one ``show stat`` answer give every server of a backend.
    """
    states: dict[str, ServerState] = {}
    for stat_row in stat_rows:
        name = stat_row.get("svname")
        if stat_row.get("pxname") == backend and name is not None and name in rows and name not in states:
            states[name] = build_state(rows[name], stat_row)
    return states


def read_servers(transport: Transport, backend: str, server: str | None = None) -> dict[str, ServerState]:
    """Every server of ``backend`` by name, in the backend's order (or only ``server``): two round trips.

    ``show servers state <backend>`` gives the backend's id, then ``show stat <be_id> 4 -1`` every
    server row of that backend at once (``show stat <be_id> 4 <srv_id>`` the one row of ``server``).
    """
    rows = parse_servers_state(transport(f"show servers state {backend}"), backend)
    if server is not None:
        row = rows.get(server)
        if row is None:
            known = ", ".join(sorted(rows)) or "none"
            raise HaproxyError(f"backend {backend!r} has no server {server!r} (servers: {known})")
        rows = {server: row}
    if not rows:
        return {}
    first = next(iter(rows.values()))
    server_id = first.server_id if server is not None else -1
    states = build_states(
        backend, rows, parse_stat_csv(transport(f"show stat {first.backend_id} 4 {server_id}"))
    )
    missing = [name for name in rows if name not in states]
    if missing:
        names = ", ".join(f"{backend}/{name}" for name in missing)
        raise HaproxyError(f"'show stat' has no row for {names} (server removed meanwhile?)")
    return {name: states[name] for name in rows}


def read_server(transport: Transport, backend: str, server: str) -> ServerState:
    """One server's state: its backend's ``show servers state``, then that server's ``show stat`` row."""
    return read_servers(transport, backend, server)[server]
