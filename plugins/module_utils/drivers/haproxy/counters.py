# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A backend's own counters, as a rollout report samples them: one ``show stat`` round trip.

``show stat <be_id> 6 -1`` answers the backend's row (type 2) and the rows of all its servers
(type 4) at once: per server its status (``UP``, ``UP 1/3`` while going down, ``DRAIN``,
``MAINT``, ``DOWN``, ``no check``...) and its cumulative ``req_tot`` (HTTP requests) and
``hrsp_5xx``; the backend row has the same counters for the whole backend, including the 503s
HAProxy answers itself when no server is left. The counters are cumulative since HAProxy started
(a restart sets them back to 0): rates are differences between two reads, which is the report's
business, not this one's.

The backend is named by its id (as everywhere in this driver): ``show servers state <backend>``
says it once, and the caller passes it back in. A read whose rows are not the backend's (the
configuration was reloaded and the ids moved) asks for the id again, in the same call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import (
    HaproxyError,
    Transport,
    parse_servers_state,
    parse_stat_csv,
)

BACKEND_ROW = "BACKEND"


@dataclass(frozen=True)
class ServerCounters:
    name: str
    status: str  # show stat's status column
    requests: int  # req_tot
    errors_5xx: int  # hrsp_5xx
    response_ms: int = 0  # rtime: the mean response time of the last 1024 requests, in ms

    @property
    def in_rotation(self) -> bool:
        """Whether HAProxy sends it new requests: UP (also ``UP 1/3``, still UP while its checks
        fail), or ``no check`` (never health-checked, so always UP). DRAIN, MAINT, NOLB and DOWN
        get none."""
        return self.status == "no check" or self.status.split(" ")[0] == "UP"


@dataclass(frozen=True)
class BackendCounters:
    backend: str
    backend_id: int
    requests: int  # the backend row's req_tot
    errors_5xx: int  # the backend row's hrsp_5xx
    servers: tuple[ServerCounters, ...]

    @property
    def up(self) -> list[str]:
        """The servers in rotation, in the backend's order."""
        return [server.name for server in self.servers if server.in_rotation]

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors_5xx": self.errors_5xx,
            "up": self.up,
            "servers": {
                server.name: {
                    "status": server.status,
                    "requests": server.requests,
                    "errors_5xx": server.errors_5xx,
                }
                for server in self.servers
            },
        }


def _count(row: dict[str, str], column: str, backend: str) -> int:
    value = row.get(column) or "0"  # empty: HAProxy has not counted anything of that kind
    try:
        return int(value)
    except ValueError:
        raise HaproxyError(
            f"'show stat' of {backend}: {column} of {row.get('svname')!r} is not a number: {value!r}"
        ) from None


def counters_from_rows(backend: str, backend_id: int, rows: list[dict[str, str]]) -> BackendCounters:
    """The counters of ``backend`` from the rows of a ``show stat`` answer (other proxies' rows are
    left out). Raises ``HaproxyError`` when the answer has no row for the backend itself."""
    mine = [row for row in rows if row.get("pxname") == backend]
    totals = [row for row in mine if row.get("svname") == BACKEND_ROW]
    if not totals:
        raise HaproxyError(f"'show stat' has no BACKEND row for {backend!r}")
    servers = tuple(
        ServerCounters(
            name=str(row["svname"]),
            status=(row.get("status") or "").strip(),
            requests=_count(row, "req_tot", backend),
            errors_5xx=_count(row, "hrsp_5xx", backend),
            response_ms=_count(row, "rtime", backend),
        )
        for row in mine
        if row.get("svname") not in (BACKEND_ROW, "FRONTEND")
    )
    return BackendCounters(
        backend=backend,
        backend_id=backend_id,
        requests=_count(totals[0], "req_tot", backend),
        errors_5xx=_count(totals[0], "hrsp_5xx", backend),
        servers=servers,
    )


def backend_id_of(transport: Transport, backend: str) -> int:
    """The backend's id (``show servers state <backend>``; a backend with no server has no line
    there, and no counters worth a report)."""
    rows = parse_servers_state(transport(f"show servers state {backend}"), backend)
    if not rows:
        raise HaproxyError(f"backend {backend!r} has no servers")
    return next(iter(rows.values())).backend_id


def read_counters(transport: Transport, backend: str, backend_id: int | None = None) -> BackendCounters:
    """The backend's counters: one round trip given the ``backend_id`` of an earlier read (its
    ``backend_id``), two without it or when the id no longer names ``backend``."""
    known = backend_id is not None
    if backend_id is None:
        backend_id = backend_id_of(transport, backend)
    rows = parse_stat_csv(transport(f"show stat {backend_id} 6 -1"))
    if known and not any(row.get("pxname") == backend for row in rows):  # reloaded: the ids moved
        backend_id = backend_id_of(transport, backend)
        rows = parse_stat_csv(transport(f"show stat {backend_id} 6 -1"))
    return counters_from_rows(backend, backend_id, rows)
