"""A parallel run on the loopback, with real parts: a real HAProxy whose frontend logs its copies
(``drivers/mirror/copies.py``), the real ``berth-mirror`` daemon run from the files the role ships
(``shipped_files``), in its own process, and three HTTP instances - two trusted, one candidate -
whose answers a test chooses. Used by tests/unit/test_mirror.py and bench/mirror_overhead.py.

Every process it starts it stops, by PID, even on failure (``MirrorLab`` is a context manager).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import (
    HaproxyError,
    UnixSocketTransport,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.mirror.copies import frontend_lines
from ansible_collections.berth.fleet.plugins.module_utils.drivers.mirror.daemon import (
    MODULE,
    UNIT_PATH,
    shipped_files,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.mirror.run import dropped_logs
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
MODULE_UTILS = ROOT / "plugins" / "module_utils"
LOADGEN = ROOT / "tools" / "loadgen.py"

# (method, path, body) -> (status, headers, body)
Behaviour = Callable[[str, str, bytes], tuple[int, dict[str, str], bytes]]


def sample_answer(version: str, prices: dict[str, int] | None = None) -> Behaviour:
    """Answers like the sample service's, with noise of their own in every answer (a time and an id,
    which two trusted instances never agree on) and a price per item."""
    prices = prices or {}

    def answer(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        item = path.rstrip("/").rsplit("/", 1)[-1] or "root"
        payload = {
            "item": item,
            "price": prices.get(item, 10),
            "served_at": time.time(),
            "request_id": str(uuid.uuid4()),
            "version": version,
        }
        return 200, {"Content-Type": "application/json"}, json.dumps(payload).encode()

    return answer


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (HAProxy or the mirror stopping) is not an error here."""


@dataclass
class Instance:
    name: str
    behaviour: Behaviour
    delay: float = 0.0
    port: int = 0
    seen: dict[str, int] = field(default_factory=dict)
    bodies: list[bytes] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        instance = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # the status, headers and body in one write, and no Nagle: the answer leaves at once (two
            # small writes would wait for the client's delayed ACK, 40 ms, in every answer)
            wbufsize = -1
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                instance.seen[self.command] = instance.seen.get(self.command, 0) + 1
                if body:
                    instance.bodies.append(body)
                if instance.delay:
                    time.sleep(instance.delay)
                status, headers, answer = instance.behaviour(self.command, self.path, body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer)

            do_GET = do_HEAD = do_POST = do_PUT = handle_any

        self.server = QuietServer(("127.0.0.1", self.port or 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


HAPROXY = """\
global
    stats socket {admin} mode 600 level admin
defaults
    mode http
    retries 0
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 10s
frontend fe
    bind 127.0.0.1:{port}
{mirror}
    default_backend be
backend be
    balance roundrobin
    server trusted-a {a}
    server trusted-b {b}
"""


class MirrorLab:
    """HAProxy in front of two trusted instances, a candidate, and (when started) the mirror."""

    def __init__(
        self,
        directory: Path,
        candidate: Behaviour,
        *,
        sample: float = 1.0,
        methods: tuple[str, ...] = ("GET", "HEAD"),
        compare: dict[str, Any] | None = None,
        queue: int = 1000,
        timeout: float = 2.0,
        workers: int = 8,
        mirrored: bool = True,
        mkdir: bool = False,
    ) -> None:
        if mkdir:
            directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.trusted = [
            Instance("trusted-a", sample_answer("v1")),
            Instance("trusted-b", sample_answer("v1")),
        ]
        self.candidate = Instance("candidate", candidate)
        self.sample, self.methods, self.mirrored = sample, methods, mirrored
        self.compare = compare if compare is not None else {"ignore_fields": []}
        self.queue, self.timeout, self.workers = queue, timeout, workers
        self.port = free_port()
        self.socket = str(directory / "mirror.sock")
        self.results_path = directory / "results.json"
        self.haproxy: subprocess.Popen[bytes] | None = None
        self.mirror: subprocess.Popen[bytes] | None = None
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> MirrorLab:
        try:
            for instance in (*self.trusted, self.candidate):
                instance.start()
                self.stack.callback(instance.stop)
            self.start_haproxy()
            if self.mirrored:
                self.start_mirror()
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return str(self.directory / "admin.sock")

    def start_haproxy(self) -> None:
        mirror = ""
        if self.mirrored:
            mirror = "\n".join(
                "    " + line for line in frontend_lines(self.socket, self.sample, self.methods)
            )
        config = self.directory / "haproxy.cfg"
        config.write_text(
            HAPROXY.format(
                admin=self.admin,
                port=self.port,
                mirror=mirror,
                a=self.trusted[0].address,
                b=self.trusted[1].address,
            )
        )
        check = subprocess.run(
            ["haproxy", "-c", "-f", str(config)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise AssertionError(f"HAProxy refuses the configuration: {check.stdout}{check.stderr}")
        self.haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stderr=subprocess.DEVNULL)
        self.stack.callback(_stop, self.haproxy)
        wait_for_haproxy(self.admin)

    def start_mirror(self) -> None:
        python = self.directory / "python"
        for shipped in shipped_files(str(MODULE_UTILS), "/usr/bin/python3", str(python)):
            if shipped["path"] == UNIT_PATH:
                continue  # the unit is systemd's way to run what follows; here the test runs it
            path = Path(shipped["path"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(shipped["content"])
        config = self.directory / "mirror.json"
        config.write_text(
            json.dumps(
                {
                    "service": "lab",
                    "socket": self.socket,
                    "results": str(self.results_path),
                    "primary": self.trusted[0].address,
                    "secondary": self.trusted[1].address,
                    "candidate": self.candidate.address,
                    "compare": self.compare,
                    "queue": self.queue,
                    "timeout": self.timeout,
                    "workers": self.workers,
                }
            )
        )
        # the shipped files only: no site-packages of this checkout's virtualenv, no sys.path of ours
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(python)}
        log = self.directory / "mirror.log"
        with log.open("wb") as stderr:
            self.mirror = subprocess.Popen(
                ["/usr/bin/python3", "-m", MODULE, str(config)],
                env=env,
                cwd=str(self.directory),
                stderr=stderr,
            )
        self.stack.callback(_stop, self.mirror)
        deadline = time.monotonic() + 10
        while not (Path(self.socket).exists() and self.results_path.exists()):
            if self.mirror.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"berth-mirror did not start: {log.read_text()}")
            time.sleep(0.05)

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=5) as answer:
            body: bytes = answer.read()
            return body

    def results(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.results_path.read_text())
        return result

    def wait_results(self, received: int, timeout: float = 30) -> dict[str, Any]:
        """The mirror's results once it has received at least ``received`` copies and accounted for
        every one (judged, unjudged, dropped or malformed), or what it has at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            results = self.results()
            accounted = sum(int(results[key]) for key in ("requests", "unjudged", "dropped", "malformed"))
            if results["received"] >= received and accounted >= results["received"]:
                return results
            if time.monotonic() > deadline:
                return results
            time.sleep(0.2)

    def dropped_logs(self) -> int:
        return dropped_logs(UnixSocketTransport(self.admin))

    def load(self, seconds: float, rate: float, paths: list[str], out: Path) -> dict[str, Any]:
        """The project's load generator against the frontend for ``seconds``: its report."""
        argv = [sys.executable, str(LOADGEN), "--target", self.url, "--backend", "be", "--rate", str(rate)]
        argv += ["--slow-rate", "0", "--duration", str(seconds), "--out", str(out)]
        for path in paths:
            argv += ["--path", path]
        subprocess.run(argv, check=True, timeout=seconds + 60)
        report: dict[str, Any] = json.loads(out.read_text())
        return report


def wait_for_haproxy(admin: str, timeout: float = 10) -> None:
    """Until a HAProxy just started answers on its admin socket."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            UnixSocketTransport(admin)("show info")
            return
        except HaproxyError:
            time.sleep(0.05)
    raise AssertionError(f"HAProxy did not start (nothing answers on {admin})")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def mirror_lab(directory: Path, candidate: Behaviour, **settings: Any) -> Iterator[MirrorLab]:
    with MirrorLab(directory, candidate, **settings) as lab:
        yield lab
