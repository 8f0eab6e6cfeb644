# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parallel run's copies of user requests: how HAProxy hands them over, and how they are read.

HAProxy 2.6 cannot mirror a request. It can log one, and a log line is the one thing it sends
without ever waiting: to a UNIX datagram socket, non-blocking, a line the socket cannot take is
dropped and counted (``DroppedLogs`` in ``show info``). So a frontend in parallel run logs each
sampled request of an allowed method as one JSON object - method, target, headers, and the body
when methods with a body are allowed - to the socket of ``berth-mirror`` (``daemon.py``) on the
same host, which replays it off the users' path. The user's request goes on to the trusted
backend exactly as before; nothing in it waits for the mirror, and a mirror that is down or slow
costs HAProxy a failed ``sendto`` per copy.

``frontend_lines`` is the one place the HAProxy side is written; ``parse_copy`` the one place it
is read.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass

BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")
# a log line is written after the response, when the request itself is gone: what the copy needs
# is kept in variables of the transaction as the request arrives (only for a request copied)
COPIED = "txn.berth_copy"
KEPT = (("method", "method"), ("target", "url"), ("headers", "req.hdrs"))
BODY_KEPT = ("body", "req.body,base64")
# request headers that belong to one connection, never replayed
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "expect",
    }
)
MAX_LINE = 65535  # the longest log line HAProxy sends (its `len` limit)


class CopyError(ValueError):
    """A line that is not a copy of a request; the message says why."""


@dataclass(frozen=True)
class Copy:
    """One user request, as the mirror replays it."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    def replayed_headers(self) -> dict[str, str]:
        """The headers sent with a replay: the user's, less those of their connection."""
        kept: dict[str, str] = {}
        for name, value in self.headers:
            if name.lower() not in HOP_BY_HOP:
                kept[name] = value
        return kept


def frontend_lines(
    socket: str, sample: float, methods: Sequence[str], *, timeout_ms: int = 5000
) -> list[str]:
    """The lines a frontend in parallel run gets: whether a request is copied (an allowed method,
    and inside the sample: ``rand(1000)``), what of it is kept for its log line, its own log target
    (the mirror's socket, in place of the global log) and format, and the rule that keeps every
    request that is not copied out of it."""
    if not methods:
        raise CopyError("a parallel run copies at least one method")
    with_body = any(m in BODY_METHODS for m in methods)
    kept = [*KEPT, BODY_KEPT] if with_body else list(KEPT)
    condition = "{ method " + " ".join(methods) + " }"
    permille = round(sample * 1000)
    if permille < 1000:
        condition += " { rand(1000) lt " + str(permille) + " }"
    lines = ["no log", f"log unix@{socket} len {MAX_LINE} format raw local0 info"]
    if with_body:  # the body must be all there before it can be kept (users' POSTs wait for it)
        lines += ["option http-buffer-request", f"timeout http-request {timeout_ms}"]
    lines.append(f"http-request set-var({COPIED}) bool(true) if {condition}")
    copied = "{ var(" + COPIED + ") -m bool }"
    lines += [f"http-request set-var(txn.berth_{name}) {fetch} if {copied}" for name, fetch in kept]
    fields = ",".join(f'"{name}":"%[var(txn.berth_{name}),json(utf8s)]"' for name, _fetch in kept)
    lines.append("log-format '{" + fields + "}'")
    lines.append(f"http-request set-log-level silent unless {copied}")
    return lines


def parse_copy(line: bytes | str) -> Copy:
    """A log line as a ``Copy``; ``CopyError`` for anything else (a truncated line among them)."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    try:
        raw = json.loads(text.strip())
    except ValueError:
        raise CopyError(f"not a JSON object (truncated at {MAX_LINE} bytes?): {text[:80]!r}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("method"), str) or not raw["method"]:
        raise CopyError(f"no method in {text[:80]!r}")
    target = raw.get("target")
    if not isinstance(target, str) or not target.startswith("/"):
        raise CopyError(f"the target is not a path: {text[:80]!r}")
    headers = []
    for row in str(raw.get("headers", "")).split("\r\n"):
        name, colon, value = row.partition(":")
        if colon and name.strip():
            headers.append((name.strip(), value.strip()))
    body = b""
    if raw.get("body"):
        try:
            body = base64.b64decode(str(raw["body"]), validate=True)
        except (binascii.Error, ValueError):
            raise CopyError(f"the body is not base64: {text[:80]!r}") from None
    return Copy(str(raw["method"]).upper(), target, tuple(headers), body)
