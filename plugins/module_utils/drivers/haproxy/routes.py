# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which backend a frontend sends its requests to: an HAProxy map, read and replaced at runtime.

A blue-green service's frontends pick their backend from a map (``use_backend
%[str(live),map(<file>,<default>)]``), one file per service with the keys ``live`` and
``preview``. :func:`replace_map` replaces the whole map in one atomic step with the Runtime API's
versioned commands (``prepare map`` → ``add map @<version>`` → ``commit map @<version>``): no
request ever sees half a switch. HAProxy reads the file again on every reload, so the file must
say what the runtime says (:func:`render_map`, written in the same step by the caller).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from ansible_collections.berth.fleet.plugins.module_utils.common.sshforward import SocketForward
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import (
    HaproxyError,
    Transport,
    UnixSocketTransport,
    refusal,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.state import read_servers

T = TypeVar("T")

# a map key or value Berth writes: one token, no spaces (HAProxy's map files split on whitespace)
TOKEN_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_VERSION_RE = re.compile(r"New version created:\s*(\d+)")
_ENTRY_RE = re.compile(r"^0x[0-9a-fA-F]+\s+(\S+)\s+(\S+)\s*$")


def entries_problem(entries: Mapping[str, str]) -> str | None:
    if not entries:
        return "expected at least one route (key: backend)"
    for key, value in entries.items():
        for what, token in (("key", key), ("backend", value)):
            if not TOKEN_RE.match(str(token)):
                return (
                    f"route {key!r}: the {what} must be one token of letters, digits, '_', '.', ':' "
                    f"or '-', got {token!r}"
                )
    return None


def parse_map(text: str) -> dict[str, str]:
    """The entries of ``show map <file>`` (lines ``0x55d0... key value``)."""
    found = {}
    for line in text.splitlines():
        match = _ENTRY_RE.match(line.strip())
        if match:
            found[match.group(1)] = match.group(2)
        elif line.strip() and not line.startswith("#"):
            raise HaproxyError(f"unexpected line in a map listing: {line.strip()!r}")
    return found


def read_map(transport: Transport, path: str) -> dict[str, str]:
    answer = transport(f"show map {path}")
    try:
        return parse_map(answer)
    except HaproxyError:
        raise HaproxyError(f"show map {path}: {refusal(answer)[:300]}") from None


def replace_map(transport: Transport, path: str, entries: Mapping[str, str]) -> None:
    """Every entry of the map at ``path`` replaced by ``entries``, in one commit."""
    problem = entries_problem(entries)
    if problem:
        raise HaproxyError(problem)
    answer = transport(f"prepare map {path}")
    match = _VERSION_RE.search(answer)
    if not match:
        raise HaproxyError(f"prepare map {path}: {answer.strip() or 'no answer'}")
    version = match.group(1)
    for key, value in sorted(entries.items()):
        answer = transport(f"add map @{version} {path} {key} {value}")
        if answer.strip():
            raise HaproxyError(f"add map @{version} {path} {key} {value}: {answer.strip()}")
    answer = transport(f"commit map @{version} {path}")
    if answer.strip():
        raise HaproxyError(f"commit map @{version} {path}: {answer.strip()}")


def render_map(entries: Mapping[str, str]) -> str:
    """The map file that says what the runtime map says."""
    lines = [f"{key} {value}" for key, value in sorted(entries.items())]
    return "# Managed by Berth: the backend each frontend of the service uses (docs/strategies.md)\n" + (
        "\n".join(lines) + "\n"
    )


# --- one switch on every load balancer ----------------------------------------------------------


@dataclass(frozen=True)
class RouteTarget:
    """One load balancer: its Runtime API and a way to write a file on it."""

    name: str
    transport: Transport
    write: Callable[[str, str], None]  # (path, content), atomically


def forwarded_target(forward: SocketForward) -> RouteTarget:
    """A load balancer reached from the controller: its forwarded Runtime API socket, and files
    written over the same OpenSSH master."""
    return RouteTarget(forward.target.name, UnixSocketTransport(str(forward.local_path)), forward.write_file)


@dataclass
class SwitchOutcome:
    changed: bool = False
    before: dict[str, dict[str, str]] = field(default_factory=dict)
    after: dict[str, dict[str, str]] = field(default_factory=dict)
    committed_at: dict[str, float] = field(default_factory=dict)
    undone: list[str] = field(default_factory=list)

    @property
    def disagreed_for(self) -> float:
        """From the first load balancer's commit to the last one's: the only time they differ."""
        moments = list(self.committed_at.values())
        return round(max(moments) - min(moments), 4) if len(moments) > 1 else 0.0


class SwitchError(HaproxyError):
    pass


def _each(targets: Sequence[RouteTarget], work: Callable[[RouteTarget], T]) -> dict[str, T | Exception]:
    """``work`` on every target at once; an exception is its answer."""

    def guarded(target: RouteTarget) -> T | Exception:
        try:
            return work(target)
        except Exception as exc:  # any LB's failure (a forward's own error too) is undone
            return exc

    with ThreadPoolExecutor(max_workers=max(len(targets), 1)) as pool:
        return dict(zip((t.name for t in targets), pool.map(guarded, targets), strict=True))


def switch_routes(
    targets: Sequence[RouteTarget],
    path: str,
    routes: Mapping[str, str],
    check_mode: bool = False,
    expect: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
    serving: str = "",
) -> SwitchOutcome:
    """Every load balancer's map at ``path`` to ``routes``, at the same moment, runtime and file.

    Read on every LB first (a map that differs from ``expect`` on any LB, other than already being
    ``routes``, refuses the switch before anything changes, and so does a ``serving`` backend with
    no server in rotation on some LB: users are never sent to nothing); then committed on every LB at once,
    read back with ``show map``, and the file written on every LB. If any of that fails on any LB,
    every LB is put back to what it had and the error says so.
    """
    problem = entries_problem(routes)
    if problem:
        raise SwitchError(problem)
    outcome = SwitchOutcome()
    read = _each(targets, lambda t: read_map(t.transport, path))
    failed = {name: answer for name, answer in read.items() if isinstance(answer, Exception)}
    if failed:
        raise SwitchError(
            "nothing was switched: " + "; ".join(f"{name}: {exc}" for name, exc in failed.items())
        )
    outcome.before = {name: dict(answer) for name, answer in read.items() if isinstance(answer, dict)}
    want = dict(routes)
    if expect is not None:
        stray = {n: m for n, m in outcome.before.items() if m not in (dict(expect), want)}
        if stray:
            raise SwitchError(
                "nothing was switched: "
                + "; ".join(
                    f"{name} routes {_show(m)}, expected {_show(expect)}" for name, m in stray.items()
                )
            )
    if serving:
        up = _each(
            targets, lambda t: [n for n, s in read_servers(t.transport, serving).items() if s.in_rotation]
        )
        empty = [name for name, answer in up.items() if isinstance(answer, Exception) or not answer]
        if empty:
            raise SwitchError(
                f"nothing was switched: {serving} has no server in rotation on {', '.join(empty)}"
                + "".join(f" ({answer})" for answer in up.values() if isinstance(answer, Exception))
            )
    moving = [t for t in targets if outcome.before[t.name] != want]
    outcome.after = {
        name: (want if any(t.name == name for t in moving) else m) for name, m in outcome.before.items()
    }
    if not moving:
        return outcome
    outcome.changed = True
    if check_mode:
        return outcome

    def commit(target: RouteTarget) -> float:
        replace_map(target.transport, path, want)
        return clock()

    written: list[str] = []

    def verify_and_persist(target: RouteTarget) -> None:
        seen = read_map(target.transport, path)
        if seen != want:
            raise SwitchError(f"show map says {_show(seen)} after the commit of {_show(want)}")
        target.write(path, render_map(want))
        written.append(target.name)

    committed = _each(moving, commit)
    outcome.committed_at = {n: t for n, t in committed.items() if isinstance(t, float)}
    errors = {n: e for n, e in committed.items() if isinstance(e, Exception)}
    if not errors:
        persisted = _each([t for t in moving if t.name in outcome.committed_at], verify_and_persist)
        errors = {n: e for n, e in persisted.items() if isinstance(e, Exception)}
    if errors:
        _undo(moving, path, outcome, set(written))
        raise SwitchError(
            "the switch failed on "
            + "; ".join(f"{name}: {exc}" for name, exc in errors.items())
            + f"; every load balancer was put back ({', '.join(outcome.undone) or 'none had changed'})",
            undone=outcome.undone,
        )
    return outcome


def _undo(moving: Sequence[RouteTarget], path: str, outcome: SwitchOutcome, written: set[str]) -> None:
    """Every LB that may have changed back to its map before, runtime and file (a commit that
    answered an error may still have happened: each LB is read, not assumed)."""

    def back(target: RouteTarget) -> None:
        before = outcome.before[target.name]
        if read_map(target.transport, path) != before:
            replace_map(target.transport, path, before)
        if target.name in written:
            target.write(path, render_map(before))

    undone = _each(list(moving), back)
    outcome.undone = [n for n, answer in undone.items() if not isinstance(answer, Exception)]
    still = {n: a for n, a in undone.items() if isinstance(a, Exception)}
    if still:
        raise SwitchError(
            "the switch failed and could not be undone on "
            + "; ".join(f"{name}: {exc}" for name, exc in still.items())
            + f" (put back: {', '.join(outcome.undone) or 'none'}): the load balancers disagree, run the "
            "switch again or set the map by hand",
            undone=outcome.undone,
        )


def _show(entries: Mapping[str, str]) -> str:
    return ", ".join(f"{k} -> {v}" for k, v in sorted(entries.items())) or "nothing"
