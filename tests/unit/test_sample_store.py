"""The sample service's database part (services/sample/store.py) against a recording fake
connection (the controller's venv has no psycopg2, so the store treats any exception as the
driver's): which statement each schema writes, what a broken read does, what config it takes.
The real PostgreSQL behind it is tests/integration/test_databases.py's."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "services" / "sample"))

import store


class BrokenConnection(Exception):
    """What psycopg2 raises for a broken connection (without psycopg2 here, the store catches any)."""


class FakeCursor:
    def __init__(self, conn: FakeConn) -> None:
        self.conn = conn

    def __enter__(self) -> FakeCursor:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        if self.conn.fail:
            self.conn.fail -= 1
            raise BrokenConnection("server closed the connection unexpectedly")
        self.conn.log.append((sql, args))

    def fetchone(self) -> tuple[Any, ...]:
        return ("10.0.0.9",) if "RETURNING" in self.conn.log[-1][0] else ("v", "w", "v1", "10.0.0.8")


class FakeConn:
    def __init__(self, log: list[tuple[str, tuple[Any, ...]]], fail: int = 0) -> None:
        self.log, self.fail, self.autocommit = log, fail, False

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def commit(self) -> None:
        self.log.append(("COMMIT", ()))

    def rollback(self) -> None:
        return None

    def close(self) -> None:
        return None


def config(tmp_path: Path) -> store.StoreConfig:
    (tmp_path / "pw").write_text("secret-password\n")
    raw = {
        "name": "orders",
        "role": "orders",
        "write": {"host": "10.0.0.2", "port": 15432},
        "read": {"host": "10.0.0.2", "port": 15433},
        "password_file": str(tmp_path / "pw"),
    }
    parsed = store.parse_store_config(raw, "c.json")
    assert parsed is not None
    return parsed


def test_schema_2_writes_the_note_and_schema_1_does_not(tmp_path: Path) -> None:
    log: list[tuple[str, tuple[Any, ...]]] = []
    seen: list[dict[str, Any]] = []

    def connect(**kwargs: Any) -> FakeConn:
        seen.append(kwargs)
        return FakeConn(log)

    two = store.Store(config(tmp_path), "orders-1", "v2", connect=connect, schema=2)
    assert two.write("k", "v") == {"key": "k", "stored": True, "server": "10.0.0.9"}
    sql, args = log[0]
    assert "note" in sql and args == ("k", "v", "orders-1", "v2", "written by orders-1 (v2)")
    assert log[1] == ("COMMIT", ())
    assert seen[0]["password"] == "secret-password" and seen[0]["port"] == 15432
    one = store.Store(config(tmp_path), "orders-1", "v1", connect=connect)
    one.write("k", "v")
    assert "note" not in log[2][0] and log[2][1] == ("k", "v", "orders-1", "v1")
    with pytest.raises(store.StoreConfigError, match="db_schema"):
        store.Store(config(tmp_path), "orders-1", "v9", connect=connect, schema=7)


def test_a_read_whose_connection_broke_is_tried_again_on_a_new_one_and_a_write_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store.time, "sleep", lambda s: None)
    log: list[tuple[str, tuple[Any, ...]]] = []
    conns = iter([FakeConn(log, fail=1), FakeConn(log)])
    reader = store.Store(config(tmp_path), "orders-1", "v1", connect=lambda **kw: next(conns))
    assert reader.read("k") == {
        "key": "k",
        "value": "v",
        "written_by": "w",
        "version": "v1",
        "server": "10.0.0.8",
    }
    writer = store.Store(config(tmp_path), "orders-1", "v1", connect=lambda **kw: FakeConn(log, fail=1))
    with pytest.raises(store.StoreError, match="write: server closed the connection"):
        writer.write("k", "v")
