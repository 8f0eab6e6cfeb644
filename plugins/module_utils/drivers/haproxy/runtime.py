# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HAProxy's Runtime API on a unix socket: the transport, its errors and the text of its answers.

This runs on the load balancer itself with the system Python: standard library only. The transport
(one command in, the whole answer out) is injected everywhere else, so the parsing, planning and
waiting are unit-tested without HAProxy.

HAProxy 2.6 facts this relies on (checked against Debian's 2.6.12):

- ``show servers state <backend>`` gives the admin bit field, the operational state, the user
  weight and the backend/server ids; ``show stat <be_id> 4 <srv_id>`` gives exactly that server's
  row (sessions, queue, last health check), ``show stat <be_id> 4 -1`` the rows of every server of
  the backend. Ids rather than names: ``show stat`` reads a numeric first argument as an id, so a
  backend named ``123`` would be ambiguous.
- A command that succeeds answers an empty line; a refused one answers a sentence
  ("No such server.", "Permission denied", ...).
"""

from __future__ import annotations

import csv
import io
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_SOCKET = "/run/haproxy/admin.sock"


class HaproxyError(Exception):
    """Anything that stops a server from being read or changed through the Runtime API.

    ``details`` carries what the caller should still report on failure (before/after/waited/changed).
    """

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details: dict[str, Any] = details


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


# --- answers ------------------------------------------------------------------------------------


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
    initial_weight: int = -1  # srv_iweight: the configured weight (-1: not in the answer)


def refusal(answer: str) -> str:
    """An answer on one line (HAProxy's refusals are sentences, sometimes over several lines)."""
    return " ".join(answer.split())


def parse_servers_state(text: str, backend: str) -> dict[str, ServersStateRow]:
    """Rows of ``show servers state <backend>`` by server name."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or lines[0].strip() != "1":
        message = refusal(text)
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
                initial_weight=int(record.get("srv_iweight", -1)),
            )
        except (KeyError, ValueError) as exc:
            raise HaproxyError(f"cannot read 'show servers state {backend}' line {line!r}: {exc}") from None
        rows[row.server] = row
    return rows


def parse_stat_csv(text: str) -> list[dict[str, str]]:
    """Rows of ``show stat`` (CSV whose header line starts with '# ')."""
    if not text.startswith("# pxname,"):
        raise HaproxyError(f"unexpected answer to 'show stat': {refusal(text)[:300]!r}")
    reader = csv.DictReader(io.StringIO(text[2:]))
    return [row for row in reader if row.get("pxname")]
