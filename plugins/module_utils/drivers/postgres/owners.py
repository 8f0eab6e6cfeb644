# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each service's owner role and database on its cluster's primary, idempotently.

A role's password is never read back (PostgreSQL keeps only a SCRAM verifier): whether it is
still the vault's is found by logging in with it, and only a failed login sets it again. Every
database is closed to PUBLIC: only its owner (and the superuser) may connect, whatever pg_hba says.
Runs on the primary, connecting to it over 127.0.0.1 (pg_hba lets the superuser and each owner in
from there and nowhere else on the member).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

try:
    import psycopg2
    from psycopg2 import sql

    HAS_PSYCOPG2 = True
except ImportError:  # only a database member has it (the base image's python3-psycopg2)
    psycopg2 = None
    sql = None
    HAS_PSYCOPG2 = False


class OwnersError(Exception):
    """A role or database that could not be made (never says a password)."""


@dataclass(frozen=True)
class Owner:
    role: str
    database: str
    password: str = field(repr=False)


@dataclass
class OwnersResult:
    changed: bool = False
    created_roles: list[str] = field(default_factory=list)
    passwords_set: list[str] = field(default_factory=list)
    created_databases: list[str] = field(default_factory=list)
    closed_to_public: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "created_roles": self.created_roles,
            "passwords_set": self.passwords_set,
            "created_databases": self.created_databases,
            "closed_to_public": self.closed_to_public,
        }


Connect = Callable[..., Any]


def _connect(**kwargs: Any) -> Any:
    if not HAS_PSYCOPG2:
        raise OwnersError("psycopg2 is missing on this host (python3-psycopg2): is it a database member?")
    return psycopg2.connect(connect_timeout=5, **kwargs)


def _can_log_in(connect: Connect, owner: Owner, port: int) -> bool:
    try:
        conn = connect(
            host="127.0.0.1", port=port, user=owner.role, password=owner.password, dbname=owner.database
        )
    except Exception:  # psycopg2.OperationalError: a wrong password or no such role/database
        return False
    conn.close()
    return True


def ensure_owners(
    owners: Sequence[Owner],
    superuser_password: str,
    check_mode: bool,
    port: int = 5432,
    connect: Connect = _connect,
) -> OwnersResult:
    result = OwnersResult()
    conn = connect(
        host="127.0.0.1", port=port, user="postgres", password=superuser_password, dbname="postgres"
    )
    try:
        conn.autocommit = True  # CREATE DATABASE runs outside a transaction
        with conn.cursor() as cur:
            for owner in owners:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (owner.role,))
                if cur.fetchone() is None:
                    result.created_roles.append(owner.role)
                    if not check_mode:
                        cur.execute(
                            sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(owner.role)),
                            (owner.password,),
                        )
                cur.execute("SELECT datacl::text[] FROM pg_database WHERE datname = %s", (owner.database,))
                row = cur.fetchone()
                if row is None:
                    result.created_databases.append(owner.database)
                    if not check_mode:
                        cur.execute(
                            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                                sql.Identifier(owner.database), sql.Identifier(owner.role)
                            )
                        )
                if row is None or row[0] is None or any(str(item).startswith("=") for item in row[0] or []):
                    # a NULL acl is the default one, which lets PUBLIC connect
                    result.closed_to_public.append(owner.database)
                    if not check_mode:
                        cur.execute(
                            sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(
                                sql.Identifier(owner.database)
                            )
                        )
                if owner.role not in result.created_roles and not _can_log_in(connect, owner, port):
                    result.passwords_set.append(owner.role)
                    if not check_mode:
                        cur.execute(
                            sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(owner.role)),
                            (owner.password,),
                        )
    except Exception as exc:
        if HAS_PSYCOPG2 and isinstance(exc, psycopg2.Error):
            raise OwnersError(f"PostgreSQL refused: {exc.pgerror or exc}".strip()) from None
        raise
    finally:
        conn.close()
    result.changed = bool(
        result.created_roles or result.passwords_set or result.created_databases or result.closed_to_public
    )
    return result
