# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A service's migrations on its database (psycopg2): the ledger of what ran, and running one.

The ledger is a table of the service's own database, ``berth_migrations`` (id, phase, sha256, the
version that ran it, when), made on first use. Each migration runs in one transaction with its
ledger row, under an advisory lock, so two runners never run one twice and a migration that fails
leaves neither its changes nor its row. Which migrations run is ``planner/migrations.py``'s call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

try:
    import psycopg2

    HAS_PSYCOPG2 = True
except ImportError:  # an instance node has it (python3-psycopg2 in the base image)
    psycopg2 = None
    HAS_PSYCOPG2 = False

LEDGER_DDL = (
    "CREATE TABLE IF NOT EXISTS berth_migrations ("
    " id text PRIMARY KEY, phase text NOT NULL, sha256 text NOT NULL,"
    " version text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
)
# one number for every runner of this database: pg_advisory_xact_lock serialises them
LOCK_KEY = 0x62657274  # "bert"


class MigrateError(Exception):
    """The database refused a migration or could not be reached (never says a password)."""


@dataclass(frozen=True)
class Endpoint:
    host: str  # one address, or several separated by commas (libpq's multi-host form)
    port: int
    database: str
    user: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Step:
    id: str
    phase: str
    sha256: str
    sql: str = field(repr=False)


Connect = Callable[..., Any]


def _connect(endpoint: Endpoint) -> Any:
    if not HAS_PSYCOPG2:
        raise MigrateError("psycopg2 is missing on this host (python3-psycopg2)")
    try:
        return psycopg2.connect(
            host=endpoint.host,
            port=endpoint.port,
            dbname=endpoint.database,
            user=endpoint.user,
            password=endpoint.password,
            connect_timeout=5,
            # several hosts (a cluster's members): libpq takes the one that accepts writes
            target_session_attrs="read-write",
            application_name="berth-migrate",
        )
    except psycopg2.Error as exc:
        raise MigrateError(f"{endpoint.host}:{endpoint.port}/{endpoint.database}: {_line(exc)}") from None


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Migrator:
    def __init__(self, endpoint: Endpoint, connect: Callable[[Endpoint], Any] = _connect) -> None:
        self.endpoint = endpoint
        self.conn = connect(endpoint)

    def close(self) -> None:
        self.conn.close()

    def ledger(self, create: bool) -> list[dict[str, str]]:
        """What ran, oldest first; ``create`` makes the table when it is missing."""
        try:
            with self.conn.cursor() as cur:
                if create:
                    cur.execute(LEDGER_DDL)
                else:
                    cur.execute("SELECT to_regclass('berth_migrations') IS NOT NULL")
                    if not cur.fetchone()[0]:
                        self.conn.rollback()
                        return []
                cur.execute(
                    "SELECT id, phase, sha256, version, to_char(applied_at AT TIME ZONE 'UTC',"
                    ' \'YYYY-MM-DD"T"HH24:MI:SS"Z"\') FROM berth_migrations ORDER BY applied_at, id'
                )
                rows = cur.fetchall()
            self.conn.commit()
        except Exception as exc:
            self.conn.rollback()
            raise MigrateError(f"the ledger: {_line(exc)}") from None
        return [{"id": r[0], "phase": r[1], "sha256": r[2], "version": r[3], "at": r[4]} for r in rows]

    def run(self, steps: Sequence[Step], version: str) -> list[str]:
        """Run each step in a transaction of its own with its ledger row; the ids that ran."""
        done = []
        for step in steps:
            try:
                with self.conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                    cur.execute("SELECT 1 FROM berth_migrations WHERE id = %s", (step.id,))
                    if cur.fetchone() is not None:  # another runner ran it meanwhile
                        self.conn.rollback()
                        continue
                    cur.execute(step.sql)
                    cur.execute(
                        "INSERT INTO berth_migrations (id, phase, sha256, version) VALUES (%s, %s, %s, %s)",
                        (step.id, step.phase, step.sha256, version),
                    )
                self.conn.commit()
            except Exception as exc:
                self.conn.rollback()
                raise MigrateError(
                    f"migration {step.id} ({step.phase}) failed and was undone: {_line(exc)}"
                ) from None
            done.append(step.id)
        return done
