"""berth.fleet.lb_member against a real HAProxy 2.6, driven by real ansible-playbook runs.

The test starts two small HTTP backends (``/health``, ``/slow?s=N``, ``/``) and an HAProxy in front of
them on 127.0.0.1, with ``retries 0`` and no ``option redispatch`` so that a request sent to the wrong
server fails instead of being silently retried. Health checks run every 100 ms with rise 2 / fall 2.

What is checked is read back from HAProxy by this file's own small Runtime API reader (not the
module's), and the traffic is counted by the backends themselves. HAProxy and the backends are
stopped by their PIDs / handles in finalizers, whatever happens.
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import io
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.lab import PlaybookRun, local_play, run_playbook
from tests.integration.lab import haproxy_cli as cli
from tests.lb_member_states import EXPECTED as MATRIX
from tests.ports import free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
BACKEND = "app"
INTER = 0.1  # seconds, `inter 100`
RISE = 2
FALL = 2
POLL = 0.1  # the module's default poll_interval

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.access(HAPROXY, os.X_OK), reason="needs HAProxy (Debian package haproxy)"),
]


# --- backends -----------------------------------------------------------------------------------


@dataclass
class Served:
    path: str
    started: float
    finished: float


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """HAProxy closes a health check's connection once it has the status line: not an error."""


class Backend:
    """A threaded HTTP server on a free loopback port that records what it served."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.health_code = 200
        self.lock = threading.Lock()
        self.served: list[Served] = []
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                started = time.monotonic()
                url = urllib.parse.urlsplit(self.path)
                code = 200
                if url.path == "/health":
                    code = backend.health_code
                elif url.path == "/slow":
                    time.sleep(float(urllib.parse.parse_qs(url.query).get("s", ["1"])[0]))
                body = backend.name.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with backend.lock:
                    backend.served.append(Served(url.path, started, time.monotonic()))

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=f"backend-{name}", daemon=True)
        self.thread.start()

    def traffic(self) -> list[Served]:
        """Requests served, health checks left out."""
        with self.lock:
            return [served for served in self.served if served.path != "/health"]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


# --- an independent Runtime API reader ----------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One server as HAProxy shows it: raw admin bits and op state, user weight, sessions, status text."""

    admin_flags: int
    op_state: int
    weight: int
    scur: int
    stot: int
    status: str
    check: str

    @property
    def admin(self) -> str:
        return "maint" if self.admin_flags & 0x23 else "drain" if self.admin_flags & 0x18 else "ready"

    @property
    def up(self) -> bool:
        return self.op_state == 2

    @property
    def gets_traffic(self) -> bool:
        return self.up and self.admin == "ready"


def look(sock: Path) -> dict[str, Seen]:
    lines = cli(sock, f"show servers state {BACKEND}").splitlines()
    header = lines[1].lstrip("# ").split()
    states = {}
    for line in lines[2:]:
        if line.strip():
            record = dict(zip(header, line.split(), strict=False))
            states[record["srv_name"]] = record
    stats = {
        row["svname"]: row
        for row in csv.DictReader(io.StringIO(cli(sock, "show stat")[2:]))
        if row["pxname"] == BACKEND and row["svname"] in states
    }
    return {
        name: Seen(
            admin_flags=int(record["srv_admin_state"]),
            op_state=int(record["srv_op_state"]),
            weight=int(record["srv_uweight"]),
            scur=int(stats[name]["scur"] or 0),
            stot=int(stats[name]["stot"] or 0),
            status=stats[name]["status"],
            check=f"{stats[name]['check_status']} {stats[name]['check_code']}".strip(),
        )
        for name, record in states.items()
    }


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class Observer:
    """Looks at HAProxy every 5 ms in a thread and keeps the timeline of one server (and of all)."""

    def __init__(self, sock: Path, server: str) -> None:
        self.sock = sock
        self.server = server
        self.timeline: list[tuple[float, Seen]] = []
        self.backend: list[tuple[float, dict[str, Seen]]] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, name="observer", daemon=True)

    def run(self) -> None:
        while not self.stop_event.is_set():
            at, seen = time.monotonic(), look(self.sock)
            self.backend.append((at, seen))
            self.timeline.append((at, seen[self.server]))
            time.sleep(0.005)

    def first(self, predicate: Any) -> float | None:
        return next((at for at, seen in list(self.timeline) if predicate(seen)), None)

    def first_of(self, server: str, predicate: Any) -> float | None:
        """When ``server`` was first seen as ``predicate`` wants it."""
        return next((at for at, seen in list(self.backend) if predicate(seen[server])), None)

    def __enter__(self) -> Observer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)


# --- the load balancer --------------------------------------------------------------------------


@dataclass
class LoadBalancer:
    workdir: Path
    sock: Path
    port: int
    backends: dict[str, Backend]
    pid: int = 0
    runs: list[int] = field(default_factory=lambda: [0])

    def get(self, path: str, timeout: float = 10) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def look(self) -> dict[str, Seen]:
        return look(self.sock)

    def reset(self) -> None:
        """Both servers READY, healthy, weight 1, fully UP, no sessions."""
        for name, backend in self.backends.items():
            backend.health_code = 200
            for command in ("state ready", "weight 1"):
                answer = cli(self.sock, f"set server {BACKEND}/{name} {command}")
                assert answer.strip() == "", answer
        wait_for(
            lambda: all(
                seen.gets_traffic and seen.status == "UP" and seen.scur == 0 for seen in self.look().values()
            ),
            5,
            "both servers UP",
        )

    def put(self, server: str, start: str) -> None:
        """Bring a server from the reset state into a starting state: UP, DOWN, DRAIN or MAINT."""
        self.reset()
        if start == "DOWN":
            self.backends[server].health_code = 503
            wait_for(lambda: self.look()[server].op_state == 0, 5, f"{server} DOWN")
        elif start in ("DRAIN", "MAINT"):
            state = "drain" if start == "DRAIN" else "maint"
            assert cli(self.sock, f"set server {BACKEND}/{server} state {state}").strip() == ""
        seen = self.look()[server]
        assert (seen.admin, seen.up) == {
            "UP": ("ready", True),
            "DOWN": ("ready", False),
            "DRAIN": ("drain", True),
            "MAINT": ("maint", False),
        }[start], seen

    def member(
        self, *calls: dict[str, Any], check_modes: tuple[bool, ...] = ()
    ) -> tuple[PlaybookRun, list[dict[str, Any]]]:
        """One ansible-playbook run with one berth.fleet.lb_member task per call; their registered results."""
        return self.run_module("lb_member", *calls, check_modes=check_modes)

    def step(
        self, *calls: dict[str, Any], check_modes: tuple[bool, ...] = ()
    ) -> tuple[PlaybookRun, list[dict[str, Any]]]:
        """One ansible-playbook run with one berth.fleet.lb_step task per call; their registered results."""
        return self.run_module("lb_step", *calls, check_modes=check_modes)

    def run_module(
        self, module: str, *calls: dict[str, Any], check_modes: tuple[bool, ...] = ()
    ) -> tuple[PlaybookRun, list[dict[str, Any]]]:
        self.runs[0] += 1
        index = self.runs[0]
        results_file = self.workdir / f"results-{index}.json"
        tasks: list[dict[str, Any]] = []
        for number, call in enumerate(calls):
            task: dict[str, Any] = {
                "name": f"{module} {number}",
                f"berth.fleet.{module}": {"socket": str(self.sock), "backend": BACKEND, **call},
                "register": f"result_{number}",
                "ignore_errors": True,
            }
            if number < len(check_modes) and check_modes[number]:
                task["check_mode"] = True
            tasks.append(task)
        registered = ", ".join(f"result_{number}" for number in range(len(calls)))
        tasks.append(
            {
                "name": "save results",
                "ansible.builtin.copy": {
                    "content": f"{{{{ [{registered}] | to_json }}}}",
                    "dest": str(results_file),
                },
            }
        )
        playbook = self.workdir / f"play-{index}.yml"
        playbook.write_text(json.dumps([local_play(module, tasks)], indent=1))
        run = run_playbook(playbook, "localhost,")
        assert results_file.exists(), run.output[-4000:]
        results: list[dict[str, Any]] = json.loads(results_file.read_text())
        return run, results


HAPROXY_CFG = """\
global
    stats socket {sock} mode 600 level admin
    stats timeout 10s

defaults
    mode http
    retries 0
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    timeout check 1s

frontend fe
    bind 127.0.0.1:{port}
    default_backend {backend}

backend {backend}
    balance roundrobin
    option httpchk GET /health
{servers}"""
SERVER_LINE = "    server {name} 127.0.0.1:{port} check inter {inter_ms} rise {rise} fall {fall}\n"


def stop_pid(pid: int) -> None:
    """Stop the HAProxy this file started, by its PID only."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


@contextlib.contextmanager
def balancer(workdir: Path, names: tuple[str, ...]) -> Iterator[LoadBalancer]:
    """A real HAProxy on the loopback in front of one small HTTP backend per server name."""
    with contextlib.ExitStack() as cleanup:
        backends = {}
        for name in names:
            backends[name] = Backend(name)
            cleanup.callback(backends[name].stop)
        sock = workdir / "admin.sock"
        port = free_port()
        timing = {"inter_ms": int(INTER * 1000), "rise": RISE, "fall": FALL}
        servers = "".join(
            SERVER_LINE.format(name=name, port=backend.port, **timing) for name, backend in backends.items()
        )
        config = workdir / "haproxy.cfg"
        config.write_text(HAPROXY_CFG.format(sock=sock, port=port, backend=BACKEND, servers=servers))
        log = (workdir / "haproxy.log").open("w")
        cleanup.callback(log.close)
        proc = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)

        def stop_haproxy() -> None:
            stop_pid(proc.pid)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

        cleanup.callback(stop_haproxy)
        balancer = LoadBalancer(workdir, sock, port, backends, pid=proc.pid)
        wait_for(lambda: sock.exists() or proc.poll() is not None, 10, "the HAProxy stats socket")
        assert proc.poll() is None, (workdir / "haproxy.log").read_text()
        balancer.reset()
        yield balancer


@pytest.fixture(scope="module")
def lb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadBalancer]:
    with balancer(tmp_path_factory.mktemp("lb"), ("s1", "s2")) as two:
        yield two


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadBalancer]:
    """Three servers: lb_step drains or readies two of them while s3 serves."""
    with balancer(tmp_path_factory.mktemp("pool"), ("s1", "s2", "s3")) as three:
        yield three


def args_for(target: str, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "server": "s1",
        "state": target,
        "ready_timeout": 1.5,
        "drain_timeout": 5,
        **extra,
    }
    if target == "weight":
        args["weight"] = 50
    return args


# --- drain: waits for what is in flight, and only for that --------------------------------------


def test_drain_waits_for_the_in_flight_request_and_no_new_request_reaches_it(
    lb: LoadBalancer, lab_metrics: Any
) -> None:
    lb.reset()
    slow: dict[str, Any] = {}

    def slow_request() -> None:
        # long enough that the drain, set once ansible-playbook has started (1-2 s), still waits
        slow["status"], slow["server"] = lb.get("/slow?s=4")
        slow["done"] = time.monotonic()

    client = threading.Thread(target=slow_request, name="slow-client")
    client.start()
    wait_for(lambda: any(seen.scur == 1 for seen in lb.look().values()), 5, "the slow request in flight")
    target = next(name for name, seen in lb.look().items() if seen.scur == 1)
    other = "s2" if target == "s1" else "s1"
    served_before = len(lb.backends[target].traffic())
    stot_before = lb.look()[target].stot
    short: list[tuple[int, str]] = []

    def short_requests(observer: Observer) -> None:
        wait_for(lambda: observer.first(lambda seen: seen.admin == "drain") is not None, 10, "DRAIN")
        while "done" not in slow:
            short.append(lb.get("/"))
            time.sleep(0.02)

    with Observer(lb.sock, target) as observer:
        traffic = threading.Thread(target=short_requests, args=(observer,), name="short-client")
        traffic.start()
        run, results = lb.member({"server": target, "state": "drain", "poll_interval": POLL})
        finished = time.monotonic()
        client.join(timeout=10)
        traffic.join(timeout=10)
    drained_at = observer.first(lambda seen: seen.admin == "drain")
    result = results[0]
    assert run.returncode == 0 and not result.get("failed"), run.output[-3000:]
    assert result["changed"] is True and result["after"]["admin"] == "drain"

    # the in-flight request completed, on the drained server, untouched
    assert (slow["status"], slow["server"]) == (200, target)
    # the module returned shortly after it: its wait started when DRAIN was set
    assert drained_at is not None
    returned_at = drained_at + result["waited"]
    overshoot = returned_at - slow["done"]
    assert -0.05 < overshoot < 0.3, f"overshoot {overshoot:.3f} s (waited {result['waited']} s)"
    assert result["waited"] > 1.0  # it did wait for the 4 s request

    # nothing new reached the drained server; the other one served everything
    assert len(short) >= 10, short
    assert all(answer == (200, other) for answer in short), short
    assert [served.path for served in lb.backends[target].traffic()[served_before:]] == ["/slow"]
    assert lb.look()[target].stot - stot_before == 0  # the slow one was counted when it started
    lab_metrics.add(
        f"lb_member drain: in-flight 4 s request, waited {result['waited']:.3f} s, overshoot {overshoot * 1000:.0f} ms "
        f"(poll {POLL} s); {len(short)} requests meanwhile all on {other}; playbook ended "
        f"{finished - slow['done']:.2f} s after the request (ansible-playbook exit included)"
    )


def test_drain_timeout_fails_naming_the_sessions_left(lb: LoadBalancer) -> None:
    lb.reset()
    # 6 s: still in flight when the module drains, however long ansible-playbook takes to get there
    # on a busy machine (2 s was seen to end first while the other test lane ran)
    client = threading.Thread(target=lb.get, args=("/slow?s=6",), name="slow-client")
    client.start()
    try:
        wait_for(lambda: any(seen.scur == 1 for seen in lb.look().values()), 5, "the slow request in flight")
        target = next(name for name, seen in lb.look().items() if seen.scur == 1)
        run, results = lb.member({"server": target, "state": "drain", "drain_timeout": 0.5})
    finally:
        client.join(timeout=15)
    assert results[0]["failed"] is True, run.output[-3000:]
    assert f"{BACKEND}/{target} still has 1 session(s)" in results[0]["msg"]
    assert "drain_timeout 0.5 s" in results[0]["msg"]
    assert results[0]["after"]["admin"] == "drain"
    # bounded: gave up at the 0.5 s deadline, long before the 6 s request ended (slack for a busy CI box)
    assert 0.5 <= results[0]["waited"] < 1.5, results[0]["waited"]


# --- ready: a health gate, not a formality ------------------------------------------------------


def test_ready_from_maint_waits_for_rise_checks(lb: LoadBalancer, lab_metrics: Any) -> None:
    lb.put("s1", "MAINT")
    with Observer(lb.sock, "s1") as observer:
        run, results = lb.member({"server": "s1", "state": "ready", "poll_interval": POLL})
    result = results[0]
    assert run.returncode == 0 and not result.get("failed"), run.output[-3000:]
    assert result["changed"] is True and result["after"]["operational"] == "UP"
    # re-entered rotation DOWN: HAProxy had to see `rise` fresh checks before it was UP
    back = observer.first(lambda seen: seen.admin == "ready")
    up = observer.first(lambda seen: seen.gets_traffic)
    assert back is not None and up is not None
    assert any(seen.admin == "ready" and not seen.up for _at, seen in observer.timeline)
    expected = RISE * INTER
    # at least the rise checks; at most about one more check and poll (plus slack for a busy CI box)
    assert expected * 0.5 <= result["waited"] <= expected + INTER + POLL + 0.5, result["waited"]
    lab_metrics.add(
        f"lb_member ready from MAINT: waited {result['waited']:.3f} s for UP; rise x inter = {expected:.3f} s; "
        f"observer saw READY->UP in {up - back:.3f} s"
    )


def test_ready_with_a_failing_health_check_times_out_naming_it(lb: LoadBalancer, lab_metrics: Any) -> None:
    lb.put("s1", "MAINT")
    lb.backends["s1"].health_code = 503
    served_before = len(lb.backends["s1"].traffic())
    stop = threading.Event()
    answers: list[tuple[int, str]] = []

    def steady_traffic() -> None:
        while not stop.is_set():
            answers.append(lb.get("/"))
            time.sleep(0.01)

    traffic = threading.Thread(target=steady_traffic, name="steady-client")
    with Observer(lb.sock, "s1") as observer:
        traffic.start()
        try:
            run, results = lb.member({"server": "s1", "state": "ready", "ready_timeout": 1})
        finally:
            stop.set()
            traffic.join(timeout=10)
    result = results[0]
    assert result["failed"] is True, run.output[-3000:]
    assert "app/s1 is not UP after" in result["msg"]
    assert "L7STS 503" in result["msg"], result["msg"]
    assert result["after"]["admin"] == "ready" and result["after"]["operational"] == "DOWN"
    # the broken server never took traffic, not even for a moment after leaving MAINT
    assert not any(seen.gets_traffic for _at, seen in observer.timeline)
    assert len(lb.backends["s1"].traffic()) == served_before
    assert answers and all(answer == (200, "s2") for answer in answers)

    # for the record: HAProxy 2.6 alone (plain `set server state ready` from MAINT) does put it UP at once
    lb.put("s1", "MAINT")
    lb.backends["s1"].health_code = 503
    with Observer(lb.sock, "s1") as raw:
        cli(lb.sock, "set server app/s1 state ready")
        time.sleep(0.4)
    naive = [seen.status for _at, seen in raw.timeline if seen.gets_traffic]
    lab_metrics.add(
        f"lb_member ready on failing check: failed after {result['waited']:.2f} s naming "
        f"{result['after']['check_status']}; {len(answers)} requests meanwhile all on s2. Plain HAProxy "
        f"'state ready' from MAINT: {'UP at once (' + naive[0] + ')' if naive else 'stayed DOWN'}"
    )


# --- every starting state x every target ---------------------------------------------------------


@pytest.mark.parametrize(("start", "target"), list(MATRIX), ids=[f"{s}-to-{t}" for s, t in MATRIX])
def test_every_starting_state_and_target(lb: LoadBalancer, lab_metrics: Any, start: str, target: str) -> None:
    changed, admin, operational, failure = MATRIX[(start, target)]
    lb.put("s1", start)
    before = lb.look()["s1"]
    run, (checked, applied, again) = lb.member(
        args_for(target), args_for(target), args_for(target), check_modes=(True, False, False)
    )
    outcome = f"{start}->{target}: "

    # check mode: predicts the change, changes nothing, never waits
    assert not checked.get("failed"), checked
    assert checked["changed"] is changed, checked
    assert checked["after"]["admin"] == admin and checked["waited"] == 0
    assert (applied["before"]["admin"], applied["before"]["weight"]) == (before.admin, before.weight)

    if failure:
        assert applied["failed"] is True and failure in applied["msg"], applied
        assert again["failed"] is True and failure in again["msg"], again
        outcome += f"failed as it must ({failure}), "
    else:
        assert not applied.get("failed") and not again.get("failed"), (applied, again, run.output[-3000:])
    assert applied["changed"] is changed, applied
    assert again["changed"] is False, again

    seen = lb.look()["s1"]
    shown = "MAINT" if seen.admin == "maint" else "UP" if seen.up else "DOWN"
    assert (seen.admin, shown) == (admin, operational), seen
    assert seen.weight == (50 if target == "weight" else 1)
    if target in ("drain", "maint") and not failure:
        assert applied["waited"] < 0.5  # no sessions: returns after one look, whatever the health
    if (start, target) == ("MAINT", "ready"):
        assert applied["waited"] >= RISE * INTER * 0.5  # came back through fresh checks
    lab_metrics.add(
        outcome + f"changed={applied['changed']} then {again['changed']}, ends {seen.admin}/{shown} "
        f"weight {seen.weight}, waited {applied['waited']:.3f} s, check mode changed={checked['changed']}"
    )


# --- lb_step: a whole traffic step on one load balancer, every server of a phase together -------


def test_step_drains_two_servers_and_returns_when_both_are_idle(pool: LoadBalancer, lab_metrics: Any) -> None:
    pool.reset()
    # s3 out for a moment, so that roundrobin puts one slow request on s1 and the other on s2
    assert cli(pool.sock, f"set server {BACKEND}/s3 state drain").strip() == ""
    slow: dict[str, dict[str, Any]] = {}

    def slow_request(seconds: float) -> None:
        status, server = pool.get(f"/slow?s={seconds}")
        slow[server] = {"status": status, "done": time.monotonic(), "seconds": seconds}

    clients = [
        threading.Thread(target=slow_request, args=(seconds,), name=f"slow-{seconds}") for seconds in (2, 3)
    ]
    clients[0].start()
    wait_for(lambda: sum(seen.scur for seen in pool.look().values()) == 1, 5, "the first slow request")
    clients[1].start()
    wait_for(lambda: pool.look()["s1"].scur == pool.look()["s2"].scur == 1, 5, "a slow request on s1 and s2")
    assert cli(pool.sock, f"set server {BACKEND}/s3 state ready").strip() == ""
    wait_for(lambda: pool.look()["s3"].gets_traffic, 5, "s3 back in rotation")
    short: list[tuple[int, str]] = []

    def short_requests(observer: Observer) -> None:
        def drained() -> bool:
            return all(
                observer.first_of(name, lambda seen: seen.admin == "drain") is not None
                for name in ("s1", "s2")
            )

        wait_for(drained, 10, "s1 and s2 in DRAIN")
        while len(slow) < 2:
            short.append(pool.get("/"))
            time.sleep(0.02)

    with Observer(pool.sock, "s1") as observer:
        traffic = threading.Thread(target=short_requests, args=(observer,), name="short-client")
        traffic.start()
        run, (result,) = pool.step({"drain": ["s1", "s2"], "poll_interval": POLL})
        for client in clients:
            client.join(timeout=10)
        traffic.join(timeout=10)
    assert run.returncode == 0 and not result.get("failed"), run.output[-3000:]
    assert result["changed"] is True and result["commands"] == [
        f"set server {BACKEND}/s1 state drain",
        f"set server {BACKEND}/s2 state drain",
    ]
    assert {name: result["servers"][name]["admin"] for name in ("s1", "s2", "s3")} == {
        "s1": "drain",
        "s2": "drain",
        "s3": "ready",
    }
    assert result["servers"]["s1"]["sessions"] == result["servers"]["s2"]["sessions"] == 0

    # both in-flight requests completed, each on its drained server
    assert sorted(slow) == ["s1", "s2"] and all(done["status"] == 200 for done in slow.values())
    # the step returned shortly after the last one ended, not after the first: its wait began with DRAIN
    drained_at = [observer.first_of(name, lambda seen: seen.admin == "drain") for name in ("s1", "s2")]
    assert None not in drained_at
    returned_at = max(at for at in drained_at if at is not None) + result["drain_wait"]
    first_done, last_done = sorted(done["done"] for done in slow.values())
    overshoot = returned_at - last_done
    assert -0.05 < overshoot < 0.3, f"overshoot {overshoot:.3f} s (drain_wait {result['drain_wait']} s)"
    assert returned_at > first_done + 0.5  # it did wait for the second, longer request
    # nothing new reached s1 or s2: s3 served everything meanwhile
    assert len(short) >= 10, short
    assert all(answer == (200, "s3") for answer in short), short
    lab_metrics.add(
        f"lb_step drain s1+s2: in-flight 2 s and 3 s requests, drain_wait {result['drain_wait']:.3f} s, "
        f"returned {overshoot * 1000:.0f} ms after the last one ended ({(returned_at - first_done):.2f} s "
        f"after the first; poll {POLL} s); {len(short)} requests meanwhile all on s3"
    )


def test_step_readies_two_servers_from_maint_through_fresh_checks(
    pool: LoadBalancer, lab_metrics: Any
) -> None:
    pool.reset()
    for name in ("s1", "s2"):
        assert cli(pool.sock, f"set server {BACKEND}/{name} state maint").strip() == ""
    with Observer(pool.sock, "s1") as observer:
        run, (result,) = pool.step({"ready": ["s1", "s2"], "poll_interval": POLL})
    assert run.returncode == 0 and not result.get("failed"), run.output[-3000:]
    assert result["changed"] is True
    assert result["commands"] == [
        f"set server {BACKEND}/{name} {argument}"
        for name in ("s1", "s2")
        for argument in ("state drain", "health down", "state ready")
    ]
    assert all(result["servers"][name]["in_rotation"] for name in ("s1", "s2", "s3"))
    seen_up = {}
    for name in ("s1", "s2"):
        back = observer.first_of(name, lambda seen: seen.admin == "ready")
        up = observer.first_of(name, lambda seen: seen.gets_traffic)
        assert back is not None and up is not None, name
        # re-entered rotation DOWN: HAProxy had to see `rise` fresh checks before it was UP
        assert any(seen[name].admin == "ready" and not seen[name].up for _at, seen in observer.backend), name
        seen_up[name] = up - back
    expected = RISE * INTER
    assert expected * 0.5 <= result["ready_wait"] <= expected + INTER + POLL + 0.5, result["ready_wait"]
    assert result["drain_wait"] == 0
    lab_metrics.add(
        f"lb_step ready s1+s2 from MAINT: ready_wait {result['ready_wait']:.3f} s for both UP; rise x inter = "
        f"{expected:.3f} s; observer saw READY->UP in {seen_up['s1']:.3f} s (s1), {seen_up['s2']:.3f} s (s2)"
    )


def test_step_ready_timeout_names_the_failing_server_and_drains_nothing(pool: LoadBalancer) -> None:
    pool.reset()
    for name in ("s1", "s2"):
        assert cli(pool.sock, f"set server {BACKEND}/{name} state maint").strip() == ""
    pool.backends["s2"].health_code = 503
    run, (result,) = pool.step({"ready": ["s1", "s2"], "drain": ["s3"], "ready_timeout": 1})
    assert result["failed"] is True, run.output[-3000:]
    assert result["msg"].startswith(
        f"1 of 2 ready server(s) not UP after 1.0 s (ready_timeout 1 s): {BACKEND}/s2:"
    )
    assert "L7STS 503" in result["msg"] and f"{BACKEND}/s1" not in result["msg"], result["msg"]
    seen = pool.look()
    assert (seen["s1"].gets_traffic, seen["s2"].admin, seen["s2"].up) == (True, "ready", False)
    assert seen["s3"].admin == "ready"  # never drained: the ready phase did not end
    assert not any("s3" in command for command in result["commands"])


def test_step_ready_then_drain_in_one_call_then_idempotent(pool: LoadBalancer, lab_metrics: Any) -> None:
    pool.reset()
    assert cli(pool.sock, f"set server {BACKEND}/s1 state maint").strip() == ""
    call = {"ready": ["s1"], "drain": ["s2"], "poll_interval": POLL}
    with Observer(pool.sock, "s1") as observer:
        run, (checked, applied, again) = pool.step(call, call, call, check_modes=(True, False, False))
    assert not any(result.get("failed") for result in (checked, applied, again)), run.output[-3000:]

    # check mode: what it would send, what HAProxy would show right after, no wait
    assert checked["changed"] is True and checked["commands"] == applied["commands"]
    assert checked["servers"]["s1"] == {
        "admin": "ready",
        "operational": "DOWN",
        "in_rotation": False,
        "sessions": 0,
    }
    assert checked["ready_wait"] == checked["drain_wait"] == 0

    assert applied["changed"] is True and applied["commands"][-1] == f"set server {BACKEND}/s2 state drain"
    up = observer.first_of("s1", lambda seen: seen.gets_traffic)
    drained = observer.first_of("s2", lambda seen: seen.admin == "drain")
    assert up is not None and drained is not None and drained >= up  # s2 left rotation only once s1 was UP
    assert applied["servers"]["s1"]["in_rotation"] and applied["servers"]["s2"]["admin"] == "drain"

    assert again["changed"] is False and again["commands"] == []
    assert again["ready_wait"] == again["drain_wait"] == 0
    seen = pool.look()
    assert (seen["s1"].gets_traffic, seen["s2"].admin, seen["s3"].gets_traffic) == (True, "drain", True)
    lab_metrics.add(
        f"lb_step ready s1 + drain s2: ready_wait {applied['ready_wait']:.3f} s, drain_wait "
        f"{applied['drain_wait']:.3f} s, s2 DRAIN {(drained - up) * 1000:.0f} ms after s1 UP; "
        f"second call changed={again['changed']}, {len(again['commands'])} commands"
    )
