"""Parallel run's mirror (drivers/mirror): the copies HAProxy logs, the daemon that replays them,
and what it finds - against a real HAProxy, the real berth-mirror process run from the files the
role ships, and real HTTP instances on the loopback (tests/mirror_lab.py), under the project's
load generator with retries 0. What it costs users in latency is measured in
bench/mirror_overhead.py, never asserted here.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.common.compare import Answer, Rules, gate
from ansible_collections.berth.fleet.plugins.module_utils.common.systemd import UnitState
from ansible_collections.berth.fleet.plugins.module_utils.drivers.mirror.copies import (
    Copy,
    CopyError,
    frontend_lines,
    parse_copy,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.mirror.daemon import (
    Mirror,
    MirrorConfig,
    MirrorConfigError,
    Target,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.mirror.run import (
    MirrorRun,
    MirrorRunError,
    RunRequest,
)
from tests.mirror_lab import MirrorLab, sample_answer

PATHS = ["/items/a", "/items/b", "/items/c"]
IGNORE_VERSION = {"ignore_fields": ["version"]}  # a candidate says it is v2: not a difference


def load(lab: MirrorLab, tmp_path: Path, seconds: float = 3, rate: float = 60) -> dict[str, Any]:
    report = lab.load(seconds, rate, PATHS, tmp_path / "load.json")
    assert report["short"]["sent"] >= seconds * rate * 0.8, report["short"]
    return report


def failed(report: dict[str, Any]) -> int:
    return int(report["short"]["non_2xx"]) + int(report["short"]["errors"])


# --- against real HAProxy, the real daemon and real instances --------------------------------------


def test_a_candidate_that_answers_one_endpoint_differently_is_named_and_refused(tmp_path: Path) -> None:
    with MirrorLab(tmp_path, sample_answer("v2", {"b": 11}), compare=IGNORE_VERSION) as lab:
        report = load(lab, tmp_path)
        results = lab.wait_results(report["short"]["ok"])
    assert failed(report) == 0
    endpoints = results["endpoints"]
    assert endpoints["GET /items/b"]["mismatches"] == endpoints["GET /items/b"]["requests"] > 0
    assert endpoints["GET /items/a"]["mismatches"] == endpoints["GET /items/c"]["mismatches"] == 0
    # the time and the id differ between the trusted pair in every answer: noise, never a mismatch
    assert endpoints["GET /items/a"]["noisy"] == endpoints["GET /items/a"]["requests"]
    assert {s["endpoint"] for s in results["samples"]} == {"GET /items/b"}
    assert results["samples"][0]["differences"] == ["$.price"]
    passed, why = gate(results, min_requests=50, max_mismatch_rate=0.01)
    assert not passed and "GET /items/b" in why, why
    assert results["dropped"] == results["unjudged"] == results["malformed"] == 0


def test_a_candidate_that_differs_only_in_the_trusted_pairs_noise_passes(tmp_path: Path) -> None:
    with MirrorLab(tmp_path, sample_answer("v2"), compare=IGNORE_VERSION) as lab:
        report = load(lab, tmp_path)
        results = lab.wait_results(report["short"]["ok"])
    assert failed(report) == 0
    assert results["requests"] >= report["short"]["ok"] * 0.95
    assert results["mismatches"] == 0 and all(e["noisy"] for e in results["endpoints"].values())
    passed, why = gate(results, min_requests=50, max_mismatch_rate=0.0)
    assert passed, why


def test_a_post_is_never_copied_unless_allowed(tmp_path: Path) -> None:
    def post(lab: MirrorLab) -> None:
        request = urllib.request.Request(f"{lab.url}/orders", data=b'{"qty": 2}', method="POST")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 200

    with MirrorLab(tmp_path / "default", sample_answer("v1"), mkdir=True) as lab:
        post(lab)
        lab.get("/items/a")
        results = lab.wait_results(1)
        assert lab.candidate.seen == {"GET": 1}, "only the GET was copied"
        assert sum(i.seen.get("POST", 0) for i in lab.trusted) == 1, "the user's POST was served once"
    allowed = ("GET", "HEAD", "POST")
    with MirrorLab(tmp_path / "allowed", sample_answer("v1"), methods=allowed, mkdir=True) as lab:
        post(lab)
        results = lab.wait_results(1)
        assert lab.candidate.seen == {"POST": 1} and lab.candidate.bodies == [b'{"qty": 2}']
    assert results["endpoints"] == {
        "POST /orders": {"requests": 1, "mismatches": 0, "noisy": 1, "mismatch_rate": 0.0}
    }


@pytest.mark.parametrize("failure", ["down", "ten times slower"])
def test_a_dead_or_slow_candidate_fails_no_user_and_its_drops_are_counted(
    tmp_path: Path, failure: str
) -> None:
    # the trusted instances take 20 ms; the slow candidate 200 ms, past the mirror's timeout
    with MirrorLab(tmp_path, sample_answer("v1"), queue=5, timeout=0.1, workers=2) as lab:
        for instance in lab.trusted:
            instance.delay = 0.02
        if failure == "down":
            lab.candidate.stop()
        else:
            lab.candidate.delay = 0.2
        report = load(lab, tmp_path, rate=80)
        results = lab.wait_results(report["short"]["ok"])
    assert failed(report) == 0, report["short"]
    assert results["candidate_failures"] > 0 and results["mismatches"] == results["candidate_failures"]
    assert results["dropped"] > 0, "the bounded queue let copies go rather than wait"
    judged = results["requests"] + results["unjudged"] + results["dropped"] + results["queued"]
    assert judged <= results["received"]
    passed, why = gate(results, min_requests=1, max_mismatch_rate=0.01)
    assert not passed, why


def test_a_sample_copies_about_its_share(tmp_path: Path) -> None:
    with MirrorLab(tmp_path, sample_answer("v1"), sample=0.25) as lab:
        report = load(lab, tmp_path, seconds=4, rate=100)
        results = lab.wait_results(1)
    share = results["received"] / report["short"]["ok"]
    assert 0.15 < share < 0.35, (results["received"], report["short"]["ok"])


# --- the parts, without processes ---------------------------------------------------------------


def test_frontend_lines_copy_allowed_methods_of_the_sample_and_silence_the_rest() -> None:
    lines = frontend_lines("/run/berth/mirror-orders.sock", 0.5, ("GET", "HEAD"))
    assert lines[:2] == ["no log", "log unix@/run/berth/mirror-orders.sock len 65535 format raw local0 info"]
    assert (
        "http-request set-var(txn.berth_copy) bool(true) if { method GET HEAD } { rand(1000) lt 500 }"
        in lines
    )
    assert not any("req.body" in line or "buffer-request" in line for line in lines)
    assert lines[-1] == "http-request set-log-level silent unless { var(txn.berth_copy) -m bool }"
    with_body = frontend_lines("/s", 1, ("GET", "POST"))
    assert "option http-buffer-request" in with_body and not any("rand(" in line for line in with_body)
    assert any("set-var(txn.berth_body) req.body,base64" in line for line in with_body)
    with pytest.raises(CopyError):
        frontend_lines("/s", 1, ())


def test_a_copy_is_read_back_and_anything_else_is_refused() -> None:
    line = json.dumps(
        {
            "method": "post",
            "target": "/orders?x=1",
            "headers": "Host: lb\r\nContent-Length: 3\r\nX-Api-Key: k\r\nConnection: keep-alive\r\n\r\n",
            "body": "YWJj",
        }
    ).encode()
    copy = parse_copy(line)
    assert copy == Copy(
        "POST",
        "/orders?x=1",
        (("Host", "lb"), ("Content-Length", "3"), ("X-Api-Key", "k"), ("Connection", "keep-alive")),
        b"abc",
    )
    assert copy.replayed_headers() == {"Host": "lb", "X-Api-Key": "k"}
    for bad in (
        b"not json",
        b'{"target": "/"}',
        b'{"method": "GET", "target": "x"}',
        b'{"method": "GET", "target": "/", "body": "%%"}',
    ):
        with pytest.raises(CopyError):
            parse_copy(bad)


def config(**overrides: Any) -> MirrorConfig:
    raw = {
        "service": "orders",
        "socket": "/run/berth/mirror-orders.sock",
        "results": "/tmp/x.json",
        "primary": "10.0.0.1:8080",
        "secondary": "10.0.0.2:8080",
        "candidate": "10.0.0.3:8080",
        "queue": 2,
        **overrides,
    }
    return MirrorConfig.from_mapping(raw)


def test_the_reader_never_waits_a_full_queue_drops_and_counts() -> None:
    mirror = Mirror(config(), fetch=lambda target, copy, timeout: Answer(200, {}, b"{}"))
    line = json.dumps({"method": "GET", "target": "/a", "headers": ""}).encode()
    assert [mirror.offer(line) for _copy in range(4)] == [True, True, False, False]
    assert not mirror.offer(b"garbage")
    results = mirror.results()
    assert (results["received"], results["dropped"], results["malformed"], results["queued"]) == (5, 2, 1, 2)


def test_an_unanswered_trusted_copy_is_not_judged_and_a_silent_candidate_is_a_mismatch() -> None:
    down: set[str] = set()

    def fetch(target: Target, copy: Copy, timeout: float) -> Answer:
        if str(target) in down:
            raise ConnectionRefusedError("refused")
        return Answer(200, {"content-type": "application/json"}, b'{"a": 1}')

    mirror = Mirror(config(), fetch=fetch)
    copy = Copy("GET", "/a", ())
    down.add("10.0.0.2:8080")
    mirror.replay(copy)
    down.clear()
    down.add("10.0.0.3:8080")
    mirror.replay(copy)
    results = mirror.results()
    assert (results["unjudged"], results["requests"], results["mismatches"]) == (1, 1, 1)
    assert results["why_unjudged"] == ["GET /a: secondary: 10.0.0.2:8080 ConnectionRefusedError: refused"]
    assert results["samples"][0]["differences"] == ["status", "header content-type", "body"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"candidate": "nowhere"}, "candidate: expected host:port, got 'nowhere'"),
        ({"primary": ""}, "primary: required"),
        ({"compare": {"ignore_fields": ["a["]}}, "compare: 'a[' is not a field path"),
    ],
)
def test_a_configuration_it_cannot_run_is_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(MirrorConfigError, match="^" + message.replace("[", r"\[")):
        config(**overrides)


def test_rules_default_to_json_with_content_type_compared() -> None:
    assert config().rules == Rules()


# --- one LB's part of a run (drivers/mirror/run.py), systemd and HAProxy faked ----------------------


class FakeUnits:
    """systemctl as MirrorRun uses it; a start makes the 'mirror' write its first results."""

    def __init__(self, root: Path) -> None:
        self.root, self.active, self.results_at_start = root, False, False
        self.calls: list[str] = []

    def state(self, unit: str) -> UnitState:
        return UnitState(unit, "loaded", "active" if self.active else "inactive", "", False, "static")

    def start(self, unit: str) -> float:
        self.calls.append(f"start {unit}")
        self.active = True
        self.results_at_start = (self.root / "var/lib/berth/mirror/orders.json").exists()
        config = json.loads((self.root / "etc/berth/mirror/orders.json").read_text())
        self.write({"run_id": config["run_id"], "requests": 0})
        return 0.1

    def stop(self, unit: str) -> float:
        self.calls.append(f"stop {unit}")
        self.active = False
        return 0.1

    def last_lines(self, unit: str) -> list[str]:
        return []

    def write(self, results: dict[str, Any]) -> None:
        path = self.root / "var/lib/berth/mirror/orders.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results))


def started(root: Path, units: FakeUnits, drops: list[int]) -> MirrorRun:
    return MirrorRun(
        units, lambda command: f"Name: HAProxy\nDroppedLogs: {drops[0]}\n", root=root, sleep=lambda s: None
    )


def request(state: str, **overrides: Any) -> RunRequest:
    values: dict[str, Any] = {
        "service": "orders",
        "state": state,
        "run_id": "orders-v2-1",
        "primary": "10.0.0.1:8090",
        "secondary": "10.0.0.2:8090",
        "candidate": "10.0.0.3:8090",
        "settings": {"queue": 50, "compare": {"ignore_fields": ["served_at"]}},
        "min_requests": 10,
        "max_seconds": 5,
        **overrides,
    }
    return RunRequest(**values)


def test_a_run_starts_once_waits_for_enough_copies_and_counts_haproxys_drops(tmp_path: Path) -> None:
    units, drops = FakeUnits(tmp_path), [7]
    run = started(tmp_path, units, drops)
    assert run.run(request("started"), check_mode=True)["changed"] and not units.calls
    assert run.run(request("started"), check_mode=False)["changed"]
    config = json.loads((tmp_path / "etc/berth/mirror/orders.json").read_text())
    assert (config["socket"], config["queue"], config["dropped_logs_at_start"]) == (
        "/run/berth-mirror/orders/copies.sock",
        50,
        7,
    )
    assert not run.run(request("started"), check_mode=False)["changed"], "the same run is left alone"
    assert units.calls == ["stop berth-mirror@orders.service", "start berth-mirror@orders.service"]
    units.write({"run_id": "orders-v2-1", "requests": 12, "mismatches": 0})
    drops[0] = 10
    finished = run.run(request("finished"), check_mode=False)
    assert finished["enough"] and finished["changed"] and not units.active
    assert finished["found"]["requests"] == 12 and finished["found"]["haproxy_dropped"] == 3
    assert not run.run(request("stopped"), check_mode=False)["changed"]


def test_a_run_that_sees_too_few_copies_ends_at_its_time_and_says_so(tmp_path: Path) -> None:
    units = FakeUnits(tmp_path)
    ticks = iter(range(1000))
    run = MirrorRun(
        units,
        lambda c: "DroppedLogs: 0\n",
        root=tmp_path,
        clock=lambda: float(next(ticks)),
        sleep=lambda s: None,
    )
    run.run(request("started"), check_mode=False)
    units.write({"run_id": "orders-v2-1", "requests": 3})
    finished = run.run(request("finished", max_seconds=5), check_mode=False)
    assert not finished["enough"] and finished["found"]["requests"] == 3 and finished["waited"] >= 5


def test_results_of_another_run_are_never_taken_for_this_one(tmp_path: Path) -> None:
    units = FakeUnits(tmp_path)
    units.write({"run_id": "orders-v1-9", "requests": 500})
    with pytest.raises(MirrorRunError, match="is not running orders-v2-1"):
        started(tmp_path, units, [0]).run(request("finished"), check_mode=False)


@pytest.mark.parametrize(
    ("state", "overrides", "message"),
    [
        ("started", {"candidate": ""}, "candidate: required to start a parallel run"),
        ("started", {"primary": "nowhere"}, "primary: expected host:port, got 'nowhere'"),
        ("finished", {"min_requests": 0}, "min_requests and max_seconds: expected"),
    ],
)
def test_a_run_it_cannot_do_is_refused_before_anything_is_touched(
    tmp_path: Path, state: str, overrides: dict[str, Any], message: str
) -> None:
    units = FakeUnits(tmp_path)
    with pytest.raises(MirrorRunError, match=message):
        started(tmp_path, units, [0]).run(request(state, **overrides), check_mode=False)
    assert not units.calls and not (tmp_path / "etc").exists()


def test_a_rerun_of_the_same_run_never_takes_the_last_runs_results(tmp_path: Path) -> None:
    units = FakeUnits(tmp_path)
    run = started(tmp_path, units, [0])
    run.run(request("started"), check_mode=False)
    units.write({"run_id": "orders-v2-1", "requests": 500})  # what the last run of orders-v2-1 found
    run.run(request("stopped"), check_mode=False)
    run.run(request("started"), check_mode=False)  # the same run again: the mirror starts afresh
    assert not units.results_at_start, "the last run's results were still there when the mirror started"


def test_serve_reads_while_a_slow_disk_holds_the_writer_and_writes_once_more_at_the_end(
    tmp_path: Path,
) -> None:
    """The socket's reader never waits for a results write (the writer is a thread of its own): with
    every write held up, the copies sent meanwhile are all read and judged."""
    mirror = Mirror(
        config(results=str(tmp_path / "results.json"), queue=100),
        fetch=lambda target, copy, timeout: Answer(200, {}, b"{}"),
    )
    first_write = mirror.write_results
    held = threading.Event()

    def slow_write() -> None:
        if threading.current_thread().name == "results":  # the writer's periodic flush: a slow disk
            held.set()
            time.sleep(1.0)
        first_write()

    mirror.write_results = slow_write  # type: ignore[method-assign]
    reader, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    serving = threading.Thread(target=mirror.serve, args=(reader,), kwargs={"flush_seconds": 0.1})
    serving.start()
    try:
        assert held.wait(5), "the writer flushed"
        line = json.dumps({"method": "GET", "target": "/a", "headers": ""}).encode()
        for _copy in range(50):  # while the writer sleeps on its write
            sender.send(line)
        deadline = time.monotonic() + 0.5
        while mirror.received < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert mirror.received == 50, "the reader went on reading during the write"
    finally:
        mirror.stopping.set()
        serving.join(10)
        reader.close()
        sender.close()
    results = json.loads((tmp_path / "results.json").read_text())
    assert (results["received"], results["requests"], results["dropped"]) == (50, 50, 0)
