"""A backend's counters for the rollout report (drivers/haproxy/counters.py), on the fake HAProxy of
test_haproxy.py and on answers captured from Debian's HAProxy 2.6.12."""

from __future__ import annotations

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.counters import (
    counters_from_rows,
    read_counters,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import (
    HaproxyError,
    parse_stat_csv,
)
from tests.unit.test_haproxy import STAT_HEADER, FakeHaproxy, stat_line

# `show stat 3 6 -1` on HAProxy 2.6.12 (be_app: app-1 DOWN with a check, app-2 "no check" in DRAIN;
# both requests were answered 503 by HAProxy itself): the rows and the columns that matter
CAPTURED = (
    STAT_HEADER
    + "\n"
    + stat_line("be_app", "app-1", status="DOWN", req_tot=0, hrsp_5xx=0, type=2)
    + "\n"
    + stat_line("be_app", "app-2", status="DRAIN", req_tot=0, hrsp_5xx=0, type=2)
    + "\n"
    + stat_line("be_app", "BACKEND", status="DOWN", req_tot=2, hrsp_5xx=2, type=1)
    + "\n\n"
)


@pytest.fixture
def haproxy() -> FakeHaproxy:
    fake = FakeHaproxy()
    for name in ("s1", "s2", "s3"):
        fake.add(name)
    return fake


def test_one_round_trip_once_the_backend_id_is_known(haproxy: FakeHaproxy) -> None:
    first = read_counters(haproxy, "app")
    assert haproxy.commands == ["show servers state app", "show stat 3 6 -1"]
    assert first.backend_id == 3
    haproxy.commands.clear()
    read_counters(haproxy, "app", first.backend_id)
    assert haproxy.commands == ["show stat 3 6 -1"]


def test_cumulative_counters_per_server_and_for_the_backend(haproxy: FakeHaproxy) -> None:
    haproxy.servers["s1"].requests, haproxy.servers["s1"].errors_5xx = 120, 1
    haproxy.servers["s2"].requests = 80
    haproxy.own_5xx = 3  # answered by HAProxy itself: the backend counts them, no server does
    counters = read_counters(haproxy, "app")
    assert (counters.requests, counters.errors_5xx) == (203, 4)
    assert [(s.name, s.requests, s.errors_5xx) for s in counters.servers] == [
        ("s1", 120, 1),
        ("s2", 80, 0),
        ("s3", 0, 0),
    ]
    assert counters.as_dict()["servers"]["s1"] == {"status": "UP", "requests": 120, "errors_5xx": 1}


def test_only_servers_in_rotation_are_up(haproxy: FakeHaproxy) -> None:
    haproxy.servers["s1"].admin = 0x08  # drained: UP but no new requests
    haproxy.servers["s3"].admin = 0x01  # maintenance
    haproxy.add("s4", op_state=0)  # health check failing
    haproxy.add("s5", check_state=0)  # no health check: always UP
    counters = read_counters(haproxy, "app")
    assert {s.name: s.status for s in counters.servers} == {
        "s1": "DRAIN",
        "s2": "UP",
        "s3": "MAINT",
        "s4": "DOWN",
        "s5": "no check",
    }
    assert counters.up == ["s2", "s5"]


def test_a_captured_answer() -> None:
    counters = counters_from_rows("be_app", 3, parse_stat_csv(CAPTURED))
    assert counters.up == []  # DOWN, and DRAIN
    assert (counters.requests, counters.errors_5xx) == (2, 2)


@pytest.mark.parametrize("status", ["UP 1/3", "UP", "no check"])
def test_a_server_still_up_while_its_checks_fail_is_in_rotation(status: str) -> None:
    rows = parse_stat_csv(
        STAT_HEADER + "\n" + stat_line("b", "s", status=status) + "\n" + stat_line("b", "BACKEND") + "\n"
    )
    assert counters_from_rows("b", 1, rows).up == ["s"]


@pytest.mark.parametrize("status", ["DOWN 1/2", "NOLB", "MAINT (via b/t)", "DRAIN", "MAINT(resolution)"])
def test_a_server_on_its_way_up_or_out_is_not(status: str) -> None:
    rows = parse_stat_csv(
        STAT_HEADER + "\n" + stat_line("b", "s", status=status) + "\n" + stat_line("b", "BACKEND") + "\n"
    )
    assert counters_from_rows("b", 1, rows).up == []


def test_a_reload_that_moved_the_ids_is_followed_in_the_same_read(haproxy: FakeHaproxy) -> None:
    stale = read_counters(haproxy, "app").backend_id
    haproxy.backend_id = 5  # the configuration was reloaded with a proxy before this one
    haproxy.commands.clear()
    counters = read_counters(haproxy, "app", stale)
    assert counters.backend_id == 5
    assert haproxy.commands == ["show stat 3 6 -1", "show servers state app", "show stat 5 6 -1"]


def test_counters_only_of_the_backend_asked_for() -> None:
    text = (
        STAT_HEADER
        + "\n"
        + stat_line("other", "x", req_tot=999)
        + "\n"
        + stat_line("other", "BACKEND", req_tot=999)
        + "\n"
        + stat_line("app", "a", req_tot=5)
        + "\n"
        + stat_line("app", "BACKEND", req_tot=5)
        + "\n"
    )
    counters = counters_from_rows("app", 3, parse_stat_csv(text))
    assert counters.requests == 5 and [s.name for s in counters.servers] == ["a"]


def test_no_backend_row_and_unreadable_counters_are_errors(haproxy: FakeHaproxy) -> None:
    rows = parse_stat_csv(STAT_HEADER + "\n" + stat_line("app", "s1") + "\n")
    with pytest.raises(HaproxyError, match="no BACKEND row for 'app'"):
        counters_from_rows("app", 3, rows)
    rows = parse_stat_csv(STAT_HEADER + "\n" + stat_line("app", "BACKEND", req_tot="lots") + "\n")
    with pytest.raises(HaproxyError, match="req_tot of 'BACKEND' is not a number: 'lots'"):
        counters_from_rows("app", 3, rows)
    with pytest.raises(HaproxyError, match="HAProxy has no backend 'nope'"):
        read_counters(haproxy, "nope")
    haproxy.refuse["show stat"] = "Permission denied\n\n"
    with pytest.raises(HaproxyError, match="unexpected answer to 'show stat': 'Permission denied'"):
        read_counters(haproxy, "app", 3)


def test_a_backend_without_servers_has_no_id_to_read_by() -> None:
    empty = FakeHaproxy()
    with pytest.raises(HaproxyError, match="backend 'app' has no servers"):
        read_counters(empty, "app")
