# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sample service's own database (issue 14): a small table, written through the write DSN
(the cluster's primary, through the load balancer) and read through the read DSN (its replicas).

The instance config says where (``database``: ``name``, ``role``, ``write`` and ``read`` host and
port, ``password_file``). The password is read from its file at every new connection, never from
the config and never logged. Each request thread keeps one connection per DSN.

- A read that meets a broken connection (a replica that stopped, a member whose role changed and
  whose session the load balancer shut) is tried again on a new connection, up to
  ``len(READ_RETRY_DELAYS_S)`` more times over ~3 s: a read changes nothing, so trying it again is
  safe, and the load balancer's checks drop a stopped member within ~1.5 s (docs/databases.md).
- A write is never tried again here: the client hears 503 and decides (an acknowledged write is
  one that answered 200, after its commit).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import psycopg2
    import psycopg2.errors

    HAS_PSYCOPG2 = True
except ImportError:  # the service runs without a database when its config names none
    psycopg2 = None
    HAS_PSYCOPG2 = False

CONNECT_TIMEOUT_S = 3
# waits before each further attempt of a read whose connection broke
READ_RETRY_DELAYS_S = (0.25, 0.5, 1.0, 1.5)
MAX_KEY = 128
MAX_VALUE = 4096
# the table is the release's migrations' (migrations/001_items.expand.sql and later): the service
# never makes or changes it itself
WRITES = {
    1: (
        "INSERT INTO items (key, value, written_by, version) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value,"
        " written_by = EXCLUDED.written_by, version = EXCLUDED.version, written_at = now()"
        " RETURNING host(inet_server_addr())"
    ),
    2: (
        "INSERT INTO items (key, value, written_by, version, note) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, written_by = EXCLUDED.written_by,"
        " version = EXCLUDED.version, note = EXCLUDED.note, written_at = now()"
        " RETURNING host(inet_server_addr())"
    ),
}


class StoreConfigError(Exception):
    """The config's database section is malformed (names the key)."""


class StoreError(Exception):
    """The database could not answer (the message names the DSN, never the password)."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True)
class StoreConfig:
    name: str
    role: str
    write: Endpoint
    read: Endpoint
    password_file: str


def parse_store_config(raw: Any, where: str) -> StoreConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise StoreConfigError(f"config {where}: database: expected an object")

    def text(key: str) -> str:
        value = raw.get(key)
        if not isinstance(value, str) or not value:
            raise StoreConfigError(f"config {where}: database.{key}: expected a non-empty string")
        return value

    def endpoint(key: str) -> Endpoint:
        value = raw.get(key)
        if not isinstance(value, dict):
            raise StoreConfigError(f"config {where}: database.{key}: expected {{host, port}}")
        host, port = value.get("host"), value.get("port")
        if not isinstance(host, str) or not host:
            raise StoreConfigError(f"config {where}: database.{key}.host: expected an address")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise StoreConfigError(f"config {where}: database.{key}.port: expected an integer 1..65535")
        return Endpoint(host, port)

    return StoreConfig(text("name"), text("role"), endpoint("write"), endpoint("read"), text("password_file"))


Connect = Callable[..., Any]


class Store:
    def __init__(
        self,
        config: StoreConfig,
        instance: str,
        version: str,
        connect: Connect | None = None,
        schema: int = 1,
    ) -> None:
        if connect is None and not HAS_PSYCOPG2:
            raise StoreConfigError("the config names a database, and psycopg2 (python3-psycopg2) is missing")
        if schema not in WRITES:
            raise StoreConfigError(f"build flag db_schema: expected one of {sorted(WRITES)}, got {schema!r}")
        self.schema = schema
        self.config = config
        self.instance = instance
        self.version = version
        self._connect_fn = connect or psycopg2.connect
        self._local = threading.local()

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (psycopg2.Error,) if HAS_PSYCOPG2 else (Exception,)

    def _connect(self, which: str) -> Any:
        endpoint = self.config.write if which == "write" else self.config.read
        try:
            password = Path(self.config.password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise StoreError(f"cannot read the database password file: {exc.strerror or exc}") from None
        try:
            conn = self._connect_fn(
                host=endpoint.host,
                port=endpoint.port,
                dbname=self.config.name,
                user=self.config.role,
                password=password,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name=self.instance,
            )
        except self._errors() as exc:
            raise StoreError(f"{which} {endpoint.host}:{endpoint.port}: {_first_line(exc)}") from None
        conn.autocommit = which == "read"
        return conn

    def _conn(self, which: str, fresh: bool = False) -> Any:
        conns = self._local.__dict__.setdefault("conns", {})
        if fresh and which in conns:
            _close(conns.pop(which))
        if which not in conns:
            conns[which] = self._connect(which)
        return conns[which]

    def _drop(self, which: str) -> None:
        conns = self._local.__dict__.setdefault("conns", {})
        if which in conns:
            _close(conns.pop(which))

    def write(self, key: str, value: str) -> dict[str, Any]:
        _check(key, value)
        conn = self._conn("write")
        try:
            row: tuple[str, ...] = (key, value, self.instance, self.version)
            if self.schema == 2:
                row = (*row, f"written by {self.instance} ({self.version})")
            with conn.cursor() as cur:
                cur.execute(WRITES[self.schema], row)
                server = cur.fetchone()[0]
            conn.commit()  # with a synchronous standby, this returns once the standby has it
        except self._errors() as exc:
            self._drop("write")
            raise StoreError(f"write: {_first_line(exc)}") from None
        return {"key": key, "stored": True, "server": server}

    def read(self, key: str, which: str = "read") -> dict[str, Any] | None:
        _check(key, "")
        attempts = len(READ_RETRY_DELAYS_S) + 1
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                time.sleep(READ_RETRY_DELAYS_S[attempt - 2])
            try:
                conn = self._conn(which, fresh=attempt > 1)
                with conn.cursor() as cur:
                    cur.execute(
                        "SELECT value, written_by, version, host(inet_server_addr())"
                        " FROM items WHERE key = %s",
                        (key,),
                    )
                    row = cur.fetchone()
                if which == "write":
                    conn.rollback()
                break
            except self._errors() as exc:
                if HAS_PSYCOPG2 and isinstance(exc, psycopg2.errors.UndefinedTable):
                    self._drop(which)
                    return None  # nothing was ever written
                self._drop(which)
                if attempt == attempts:
                    raise StoreError(f"read: {_first_line(exc)}") from None
            except StoreError:
                if attempt == attempts:
                    raise
        if row is None:
            return None
        return {"key": key, "value": row[0], "written_by": row[1], "version": row[2], "server": row[3]}


def _check(key: str, value: str) -> None:
    if not key or len(key) > MAX_KEY or not key.isprintable():
        raise ValueError(f"key: expected 1..{MAX_KEY} printable characters")
    if len(value) > MAX_VALUE:
        raise ValueError(f"value: expected at most {MAX_VALUE} characters")


def _close(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # a broken connection may fail to close: it is gone either way
        return


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
