"""The sample service, run for real from its built artifacts on 127.0.0.1 with the system python3."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.spec import ArtifactSpec
from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.store import ArtifactBuilder
from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.verify import verify_artifact
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "services" / "sample"
# the interpreter the service gets on a minimal Debian host: no venv, no pip packages
HOST_PYTHON = "/usr/bin/python3"
START_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every version of versions.yml built as artifact 'catalog', verified, extracted: version -> app.py."""
    definitions = yaml.safe_load((SAMPLE / "versions.yml").read_text())["versions"]
    dest = tmp_path_factory.mktemp("artifacts")
    extracted = tmp_path_factory.mktemp("releases")
    apps = {}
    for version, definition in definitions.items():
        spec = ArtifactSpec("catalog", version, dest, SAMPLE, definition.get("build_flags", {}))
        result = ArtifactBuilder(spec).ensure("present", check_mode=False)
        verify_artifact(Path(result.path))
        with tarfile.open(result.path) as tar:
            names = tar.getnames()
            assert all(name == spec.stem or name.startswith(spec.stem + "/") for name in names), names
            tar.extractall(extracted)
        apps[version] = extracted / spec.stem / "app.py"
    return apps


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    errors: Path

    def connection(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        conn = self.connection()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()


def run_app(app: str, config_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the service to see it refuse to start (it exits before listening)."""
    argv = [HOST_PYTHON, app, "--config", str(config_path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)


def write_config(path: Path, **config: Any) -> Path:
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def start_service(tmp_path: Path, releases: dict[str, Path]) -> Iterator[Callable[..., Service]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(version: str = "v1", **overrides: Any) -> Service:
        for attempt in range(3):  # the free port may be taken between probe and bind
            port = free_port()
            name = f"{version}-{port}"
            config = {"service": "catalog", "instance": "catalog-1", "bind": "127.0.0.1", "port": port}
            config.update(overrides)
            config_path = write_config(tmp_path / f"{name}.json", **config)
            log, errors = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
            with log.open("wb") as out, errors.open("wb") as err:
                proc = subprocess.Popen(
                    [HOST_PYTHON, str(releases[version]), "--config", str(config_path)],
                    stdout=out,
                    stderr=err,
                )
            started.append(proc)
            service = Service(proc, port, log, errors)
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                if "listening on" in log.read_text():
                    return service
                if proc.poll() is not None:
                    break
                time.sleep(0.02)
            if proc.poll() == 1 and "cannot listen" in errors.read_text() and attempt < 2:
                continue
            raise AssertionError(f"service did not start (rc={proc.poll()}): {errors.read_text()}")
        raise AssertionError("unreachable")

    yield start
    for proc in started:  # only the processes this test started, by their pid
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# --- endpoints ------------------------------------------------------------------------------------


def test_root_and_health(start_service: Callable[..., Service]) -> None:
    service = start_service("v1", extra={"dc": "dc1", "weight": 3})
    status, body = service.get("/")
    assert status == 200
    assert body == {
        "service": "catalog",
        "version": "v1",
        "instance": "catalog-1",
        "pid": service.proc.pid,
        "greeting": "Hello from the Berth sample service",
        "extra": {"dc": "dc1", "weight": 3},
    }
    assert service.get("/health") == (200, {"status": "ok", "version": "v1"})


def test_the_version_is_baked_into_the_artifact_not_the_config(start_service: Callable[..., Service]) -> None:
    v1, v2 = start_service("v1"), start_service("v2")
    root1, root2 = v1.get("/")[1], v2.get("/")[1]
    assert (root1["version"], root2["version"]) == ("v1", "v2")
    assert root1["greeting"] != root2["greeting"]
    assert v2.get("/health") == (200, {"status": "ok", "version": "v2"})


def test_the_broken_release_serves_but_fails_its_health_check(start_service: Callable[..., Service]) -> None:
    service = start_service("v3")
    status, body = service.get("/")
    assert (status, body["version"]) == (200, "v3")
    assert service.get("/health") == (503, {"status": "broken", "version": "v3"})


@pytest.mark.parametrize("path", ["/nope", "/health/", "/healthz", "/slow/1", "/index.html"])
def test_anything_else_is_404(start_service: Callable[..., Service], path: str) -> None:
    service = start_service("v1")
    assert service.get(path)[0] == 404


def test_slow_sleeps_then_answers(start_service: Callable[..., Service]) -> None:
    service = start_service("v1")
    started = time.monotonic()
    status, body = service.get("/slow?s=0.3")
    assert (status, body["slept_s"]) == (200, 0.3)
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("query", ["", "?s=", "?s=abc", "?s=-1", "?s=60.5", "?s=nan", "?s=inf"])
def test_slow_refuses_bad_durations(start_service: Callable[..., Service], query: str) -> None:
    service = start_service("v1")
    assert service.get(f"/slow{query}") == (400, {"error": "s: expected a number of seconds 0..60"})


def test_keep_alive_serves_many_requests_on_one_connection(start_service: Callable[..., Service]) -> None:
    service = start_service("v1")
    conn = service.connection()
    conn.request("GET", "/health")
    first = conn.getresponse()
    first_body = first.read()
    sock = conn.sock
    assert first.version == 11 and not first.will_close
    assert first.getheader("Content-Length") == str(len(first_body))
    for method, path, status in [("GET", "/nope", 404), ("HEAD", "/", 200), ("GET", "/", 200)]:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read()
        assert response.status == status
        assert response.getheader("Content-Length") is not None
        assert body == b"" if method == "HEAD" else response.getheader("Content-Length") == str(len(body))
        assert conn.sock is sock, "the connection was not kept alive"
    # a GET with a body: the body is read and dropped, the connection stays in step
    conn.request("GET", "/health", body=b"x" * 1000)
    assert conn.getresponse().read() == first_body
    assert conn.sock is sock
    conn.close()
    client_ports = {line.split()[2] for line in service.log_lines() if '"' in line}
    assert len(client_ports) == 1, service.log_lines()


def test_one_log_line_per_request_and_nothing_else(start_service: Callable[..., Service]) -> None:
    service = start_service("v1")
    for path in ("/", "/health", "/nope", "/slow?s=0"):
        service.get(path)
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(timeout=10) == 0
    lines = service.log_lines()
    requests = [line for line in lines if '"GET ' in line]
    assert [line.split('"')[1] for line in requests] == [
        "GET / HTTP/1.1",
        "GET /health HTTP/1.1",
        "GET /nope HTTP/1.1",
        "GET /slow?s=0 HTTP/1.1",
    ]
    assert [line.split('"')[2].split()[0] for line in requests] == ["200", "200", "404", "200"]
    assert all(line.startswith("catalog-1 v1 ") for line in lines)
    assert len(lines) == len(requests) + 3  # listening, draining, stopped
    assert service.errors.read_text() == ""


# --- config --------------------------------------------------------------------------------------

GOOD = {"service": "catalog", "instance": "catalog-2", "bind": "127.0.0.1", "port": 8080}


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != key}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (without("port"), "port: required key is missing"),
        (without("service"), "service: required key is missing"),
        (without("instance"), "instance: required key is missing"),
        ({**GOOD, "port": "8080"}, "port: expected an integer 1..65535, got '8080'"),
        ({**GOOD, "port": 0}, "port: expected an integer 1..65535, got 0"),
        ({**GOOD, "port": 70000}, "port: expected an integer"),
        ({**GOOD, "port": True}, "port: expected an integer"),
        ({**GOOD, "service": "Catalog"}, "service: expected a service name"),
        ({**GOOD, "instance": ""}, "instance: expected an instance name"),
        ({**GOOD, "bind": "localhost"}, "bind: expected an IPv4 or IPv6 address, got 'localhost'"),
        ({**GOOD, "drain_timeout_s": -1}, "drain_timeout_s: expected a number of seconds 0..3600, got -1"),
        ({**GOOD, "drain_timeout_s": "30"}, "drain_timeout_s: expected a number of seconds"),
        ({**GOOD, "extra": [1, 2]}, "extra: expected an object, got [1, 2]"),
        ([GOOD], "expected a JSON object, got list"),
    ],
)
def test_bad_config_exits_2_naming_the_key(
    tmp_path: Path, releases: dict[str, Path], config: Any, message: str
) -> None:
    config_path = tmp_path / "catalog-2.json"
    config_path.write_text(json.dumps(config))
    result = run_app(str(releases["v1"]), config_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"berth-sample: config {config_path}: ")
    assert message in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [("{not json", "not valid JSON"), (None, "cannot read: No such file or directory")],
)
def test_unreadable_config_exits_2(
    tmp_path: Path, releases: dict[str, Path], text: str | None, message: str
) -> None:
    config_path = tmp_path / "catalog-2.json"
    if text is not None:
        config_path.write_text(text)
    result = run_app(str(releases["v1"]), config_path)
    assert (result.returncode, result.stderr.count("\n")) == (2, 1)
    assert message in result.stderr


def test_unknown_config_keys_are_ignored_so_a_rollback_still_starts(
    start_service: Callable[..., Service],
) -> None:
    service = start_service("v1", log_level="debug")
    assert service.get("/health")[0] == 200
    assert "ignoring unknown config keys: log_level" in service.log_lines()[0]


def test_the_service_runs_only_from_a_built_artifact(tmp_path: Path) -> None:
    config_path = write_config(tmp_path / "c.json", **GOOD)
    result = run_app(str(SAMPLE / "app.py"), config_path)
    assert result.returncode == 2
    assert "version.json: missing: run the service from a built artifact" in result.stderr


def test_an_unknown_build_flag_is_refused(tmp_path: Path, releases: dict[str, Path]) -> None:
    release = tmp_path / "catalog-v9"
    release.mkdir()
    (release / "app.py").write_bytes(releases["v1"].read_bytes())
    (release / "store.py").write_bytes((releases["v1"].parent / "store.py").read_bytes())
    (release / "version.json").write_text(
        json.dumps(
            {"format": 1, "artifact": "catalog", "version": "v9", "build_flags": {"broken_heath": True}}
        )
    )
    config_path = write_config(tmp_path / "c.json", **GOOD)
    result = run_app(str(release / "app.py"), config_path)
    assert result.returncode == 2
    assert (
        "version.json: build_flags.broken_heath: unknown build flag (known: broken_health, db_schema, error_rate, greeting)"
        in result.stderr
    )


# --- graceful shutdown ---------------------------------------------------------------------------


@dataclass
class SlowRequest:
    status: int | None = None
    body: dict[str, Any] | None = None
    will_close: bool | None = None
    error: BaseException | None = None
    finished_at: float | None = None


def slow_request_in_thread(service: Service, seconds: float) -> tuple[threading.Thread, SlowRequest]:
    outcome = SlowRequest()

    def request() -> None:
        conn = service.connection(timeout=seconds + 20)
        try:
            conn.request("GET", f"/slow?s={seconds}")
            response = conn.getresponse()
            outcome.body = json.loads(response.read())
            outcome.status, outcome.will_close = response.status, response.will_close
        except (OSError, http.client.HTTPException) as exc:
            outcome.error = exc
        finally:
            outcome.finished_at = time.monotonic()
            conn.close()

    thread = threading.Thread(target=request)
    thread.start()
    return thread, outcome


@dataclass
class Refusal:
    after_s: float | None = None  # seconds from the first probe to the first refused connect
    connected: int = 0  # probes whose connect completed (the kernel queued them before the stop)


def refused_within(port: int, seconds: float) -> Refusal:
    """Probe the port until a new connection is refused.

    A probe that races the listener's shutdown may connect (and then count as one more idle
    connection), be reset out of the accept backlog, or lose its SYN and time out; none of
    those is proof either way, so the probe simply tries again.
    """
    refusal = Refusal()
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                refusal.connected += 1
        except ConnectionRefusedError:
            refusal.after_s = time.monotonic() - started
            return refusal
        except (ConnectionResetError, TimeoutError):
            pass
        time.sleep(0.02)
    return refusal


def test_sigterm_lets_an_in_flight_request_finish(start_service: Callable[..., Service]) -> None:
    service = start_service("v1", drain_timeout_s=30)
    idle = service.connection()
    idle.request("GET", "/health")
    idle.getresponse().read()  # now an idle keep-alive connection
    thread, slow = slow_request_in_thread(service, 3)
    time.sleep(0.5)

    sigterm_at = time.monotonic()
    service.proc.send_signal(signal.SIGTERM)
    refusal = refused_within(service.port, 3)
    refused_after = refusal.after_s
    assert refused_after is not None, "a new connection after SIGTERM was accepted"
    assert idle.sock is not None
    idle.sock.settimeout(2)
    assert idle.sock.recv(1) == b"", "the idle keep-alive connection was not closed"

    assert service.proc.wait(timeout=15) == 0
    exited_after = time.monotonic() - sigterm_at
    thread.join(timeout=5)
    assert slow.error is None
    assert (slow.status, slow.body["slept_s"] if slow.body else None) == (200, 3.0)
    assert slow.will_close, "a response written while draining must say Connection: close"
    assert slow.finished_at is not None and slow.finished_at - sigterm_at >= 2.0  # it really waited
    assert exited_after < 6, f"exit took {exited_after:.2f} s"
    lines = service.log_lines()
    stops = [
        m
        for line in lines
        if (
            m := re.fullmatch(
                r"catalog-1 v1 SIGTERM: stopped accepting; draining (\d+) busy connection\(s\), closing 1 idle",
                line,
            )
        )
    ]
    assert len(stops) == 1, "\n".join(lines)
    # Busy: the slow request, plus any probe the service accepted just before it stopped (a fresh
    # connection gets its grace to send a first request). Idle: our keep-alive connection.
    assert 1 <= int(stops[0].group(1)) <= 1 + refusal.connected, (stops[0].group(0), refusal)
    assert any('"GET /slow?s=3 HTTP/1.1" 200' in line for line in lines)
    print(
        f"\nshutdown with a 3 s request in flight 0.5 s in: refused new connections after {refused_after * 1000:.0f} ms, exited 0 after {exited_after:.2f} s"
    )


def recv_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_connection_accepted_before_sigterm_gets_its_first_request_served(
    start_service: Callable[..., Service],
) -> None:
    service = start_service("v1")
    early = socket.create_connection(("127.0.0.1", service.port), timeout=5)
    silent = socket.create_connection(("127.0.0.1", service.port), timeout=5)
    time.sleep(0.2)  # both accepted, neither has sent anything
    sigterm_at = time.monotonic()
    service.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    early.sendall(b"GET /health HTTP/1.1\r\nHost: catalog\r\n\r\n")
    reply = recv_until_closed(early)
    assert reply.startswith(b"HTTP/1.1 200 "), reply
    assert b"\r\nConnection: close\r\n" in reply
    assert recv_until_closed(silent) == b""  # closed unanswered once its grace is over
    assert service.proc.wait(timeout=10) == 0
    assert time.monotonic() - sigterm_at < 4
    early.close()
    silent.close()


def test_drain_is_bounded_by_drain_timeout(start_service: Callable[..., Service]) -> None:
    service = start_service("v1", drain_timeout_s=1)
    thread, slow = slow_request_in_thread(service, 30)
    time.sleep(0.3)
    sigterm_at = time.monotonic()
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(timeout=10) == 0
    assert time.monotonic() - sigterm_at < 5
    thread.join(timeout=5)
    assert slow.status is None and slow.error is not None  # cut off, as the timeout says
    assert "catalog-1 v1 drain timeout (1 s): cutting 1 connection(s)" in service.log_lines()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_idle_service_stops_at_once(start_service: Callable[..., Service], signum: signal.Signals) -> None:
    service = start_service("v1")
    assert service.get("/health")[0] == 200
    sent_at = time.monotonic()
    service.proc.send_signal(signum)
    assert service.proc.wait(timeout=10) == 0
    assert time.monotonic() - sent_at < 2
    assert service.errors.read_text() == ""


def test_a_release_with_an_error_rate_fails_that_share_of_requests_but_not_its_health(
    start_service: Callable[..., Service],
) -> None:
    service = start_service("v4")  # error_rate 0.1: every tenth request other than /health
    statuses = [service.get("/")[0] for attempt in range(50)]
    assert statuses.count(500) == 5 and statuses.count(200) == 45
    assert all(service.get("/health")[0] == 200 for attempt in range(20))
    broken = start_service("v5")  # error_rate 1.0: every one (what smoke checks must catch)
    assert [broken.get("/")[0] for attempt in range(5)] == [500] * 5
    assert broken.get("/health") == (200, {"status": "ok", "version": "v5"})
