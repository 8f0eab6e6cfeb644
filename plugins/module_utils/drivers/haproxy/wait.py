# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Waiting on servers: poll until every one of them is where it should be, with a last look at the
deadline; and the words a timeout uses for a server that is not there yet.

lb_member waits on one server, lb_step on all the servers of a phase at once; both through
:func:`wait_servers`, whose ``read`` gives the states of a poll (one server's, or a whole backend's
in the same two round trips).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.state import ServerState

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], None]


def poll_until(
    read: Callable[[], T],
    done: Callable[[T], bool],
    timeout: float,
    poll_interval: float,
    clock: Clock,
    sleep: Sleep,
) -> tuple[bool, float, T]:
    """Read until ``done(seen)`` or the deadline: (done, seconds waited, the last thing read).

    The last poll happens at the deadline, so a timeout never ends without a final look.
    """
    started = clock()
    deadline = started + timeout
    while True:
        seen = read()
        now = clock()
        if done(seen):
            return True, now - started, seen
        if now >= deadline:
            return False, now - started, seen
        sleep(min(poll_interval, deadline - now))


def reusing(first: T | None, read: Callable[[], T]) -> Callable[[], T]:
    """``read``, except that the first call gives ``first`` (a read no command has made stale)."""
    pending = [] if first is None else [first]
    return lambda: pending.pop() if pending else read()


def is_up(state: ServerState) -> bool:
    """In rotation: READY and UP (or STARTING, UP during slowstart)."""
    return state.in_rotation


def is_idle(state: ServerState) -> bool:
    """No session left: none being served, none queued for the server."""
    return state.sessions == 0


@dataclass(frozen=True)
class Waited:
    """How a wait ended: the last states seen, the servers not there yet, the last finished checks."""

    done: bool
    elapsed: float
    states: dict[str, ServerState]
    pending: list[str]
    checked: dict[str, ServerState]  # per server, the last poll that saw a finished health check


def wait_servers(
    read: Callable[[], Mapping[str, ServerState]],
    names: Sequence[str],
    arrived: Callable[[ServerState], bool],
    timeout: float,
    poll_interval: float,
    clock: Clock,
    sleep: Sleep,
) -> Waited:
    """Poll ``read`` until ``arrived(state)`` holds for every server of ``names``.

    A poll that sees a health check in progress ("* L7STS", code 0) does not replace the last
    finished one in ``checked``: a timeout tells what the check said, not that it was running.
    """
    checked: dict[str, ServerState] = {}

    def done(states: Mapping[str, ServerState]) -> bool:
        for name in names:
            status = states[name].check_status
            if status and not status.startswith("*"):
                checked[name] = states[name]
        return all(arrived(states[name]) for name in names)

    finished, elapsed, states = poll_until(read, done, timeout, poll_interval, clock, sleep)
    pending = [name for name in names if not arrived(states[name])]
    return Waited(finished, elapsed, dict(states), pending, checked)


def health_detail(last: ServerState, checked: ServerState | None) -> str:
    """Why a server is not UP: its states and its last finished health check."""
    told = checked or last
    check = told.check_status or "no check result"
    detail = f" ({told.last_check})" if told.last_check else ""
    return f"operational {last.operational}, admin {last.admin}, last health check {check}{detail}"


def sessions_detail(state: ServerState) -> str:
    """What keeps a server from being idle."""
    return f"{state.current_sessions} session(s) and {state.queued_sessions} queued"
