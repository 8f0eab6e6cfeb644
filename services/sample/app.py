# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Berth's sample microservice: a small HTTP/1.1 JSON service for demos and integration tests.

    python3 app.py --config /etc/berth/<instance>.json

Python 3.11 standard library only: it runs with the system interpreter of a minimal Debian host.
The version and the build flags are NOT configuration: they are baked into the artifact at build
time (``version.json`` next to this file, written by ``berth.fleet.artifact_build``). The config
file is per instance and per environment (see ``load_config`` for its keys).

Endpoints: ``GET /`` (who am I), ``GET /health``, ``GET /slow?s=N`` (a long request), and with a
database in the config (``store.py``) ``PUT /db/items/<key>`` (the body is the value: written
through the write DSN) and ``GET /db/items/<key>`` (read through the read DSN; ``?from=primary``
reads through the write DSN); else 404.

On SIGTERM (or SIGINT) the service stops accepting at once (the listening socket is shut down, so
new connections are refused), lets in-flight requests finish for at most ``drain_timeout_s``,
closes idle keep-alive connections, then exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import store

EXIT_BAD_INPUT = 2
EXIT_CANNOT_LISTEN = 1

BUILD_INFO_FILE = "version.json"
BUILD_INFO_FORMAT = 1
DEFAULT_BIND = "0.0.0.0"
DEFAULT_DRAIN_TIMEOUT_S = 30.0
MAX_DRAIN_TIMEOUT_S = 3600.0
MAX_SLOW_S = 60.0
# An idle keep-alive connection from a peer that vanished must not pin a thread forever.
IDLE_TIMEOUT_S = 300.0
# A GET body is read and thrown away so that the next request on the connection parses; a big one is refused.
MAX_DISCARDED_BODY = 1 << 20
# How long the accept loop may take to notice a stop (the listener already refuses by then).
ACCEPT_POLL_S = 0.05
# A connection accepted just before the stop may not have sent its request yet: it gets this long.
FIRST_REQUEST_GRACE_S = 1.0

_SERVICE_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_INSTANCE_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
_CONFIG_KEYS = ("service", "instance", "bind", "port", "drain_timeout_s", "extra", "database")
MAX_PUT_BODY = 4096


class StartupError(Exception):
    """Bad config or build info: one line naming the file and the key."""


# --- build info (baked into the artifact) ----------------------------------------------------------


@dataclass(frozen=True)
class BuildInfo:
    artifact: str
    version: str
    greeting: str = "Hello from the Berth sample service"
    broken_health: bool = False
    # the share of requests other than /health answered 500 (every n-th: deterministic, so a
    # canary's analysis sees exactly this rate); 0 serves them all
    error_rate: float = 0.0
    # the schema of its database table the release is written for (its migrations make it): 1 writes
    # key, value, written_by, version; 2 also writes note (a column migration 002 adds)
    db_schema: int = 1


_BUILD_FLAG_TYPES: dict[str, type | tuple[type, ...]] = {
    "greeting": str,
    "broken_health": bool,
    "error_rate": (int, float),
    "db_schema": int,
}


def load_build_info(path: Path) -> BuildInfo:
    where = path.name
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StartupError(f"{path}: missing: run the service from a built artifact") from None
    except (OSError, ValueError) as exc:
        raise StartupError(f"{path}: unreadable build info: {exc}") from None
    if not isinstance(raw, dict):
        raise StartupError(f"{where}: expected a JSON object")
    if raw.get("format") != BUILD_INFO_FORMAT:
        raise StartupError(f"{where}: format: expected {BUILD_INFO_FORMAT}, got {raw.get('format')!r}")
    for key in ("artifact", "version"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise StartupError(f"{where}: {key}: expected a non-empty string, got {raw.get(key)!r}")
    flags = raw.get("build_flags", {})
    if not isinstance(flags, dict):
        raise StartupError(f"{where}: build_flags: expected an object, got {flags!r}")
    for flag, value in flags.items():
        expected = _BUILD_FLAG_TYPES.get(flag)
        if expected is None:
            known = ", ".join(sorted(_BUILD_FLAG_TYPES))
            raise StartupError(f"{where}: build_flags.{flag}: unknown build flag (known: {known})")
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            name = expected.__name__ if isinstance(expected, type) else "a number"
            raise StartupError(f"{where}: build_flags.{flag}: expected {name}, got {value!r}")
    if not 0 <= float(flags.get("error_rate", 0)) <= 1:
        raise StartupError(
            f"{where}: build_flags.error_rate: expected a share from 0 to 1, got {flags['error_rate']!r}"
        )
    return BuildInfo(artifact=raw["artifact"], version=raw["version"], **flags)


# --- config (templated per instance at deploy time) ------------------------------------------------


@dataclass(frozen=True)
class Config:
    service: str
    instance: str
    port: int
    bind: str = DEFAULT_BIND
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    extra: dict[str, Any] = field(default_factory=dict)
    database: store.StoreConfig | None = None
    # Keys a newer deploy role may add: an older release (a rollback) must still start with them.
    ignored_keys: tuple[str, ...] = ()


def load_config(path: Path) -> Config:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StartupError(f"config {path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise StartupError(f"config {path}: not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise StartupError(f"config {path}: expected a JSON object, got {type(raw).__name__}")
    return parse_config(raw, str(path))


def parse_config(raw: dict[str, Any], where: str) -> Config:
    def bad(key: str, expected: str) -> StartupError:
        shown = repr(raw[key]) if key in raw else "nothing"
        return StartupError(f"config {where}: {key}: expected {expected}, got {shown}")

    for key in ("service", "instance", "port"):
        if key not in raw:
            raise StartupError(f"config {where}: {key}: required key is missing")
    service, instance = raw["service"], raw["instance"]
    if not isinstance(service, str) or not _SERVICE_RE.match(service):
        raise bad("service", "a service name (lowercase letters, digits, '-', starting with a letter)")
    if not isinstance(instance, str) or not _INSTANCE_RE.match(instance):
        raise bad("instance", "an instance name such as catalog-2")
    bind = raw.get("bind", DEFAULT_BIND)
    try:
        ipaddress.ip_address(bind)
    except ValueError:
        raise bad("bind", "an IPv4 or IPv6 address") from None
    port = raw["port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise bad("port", "an integer 1..65535")
    drain = raw.get("drain_timeout_s", DEFAULT_DRAIN_TIMEOUT_S)
    if (
        isinstance(drain, bool)
        or not isinstance(drain, (int, float))
        or not math.isfinite(drain)
        or not 0 <= drain <= MAX_DRAIN_TIMEOUT_S
    ):
        raise bad("drain_timeout_s", f"a number of seconds 0..{MAX_DRAIN_TIMEOUT_S:g}")
    extra = raw.get("extra", {})
    if not isinstance(extra, dict):
        raise bad("extra", "an object")
    try:
        database = store.parse_store_config(raw.get("database"), where)
    except store.StoreConfigError as exc:
        raise StartupError(str(exc)) from None
    return Config(
        database=database,
        service=service,
        instance=instance,
        port=port,
        bind=bind,
        drain_timeout_s=float(drain),
        extra=extra,
        ignored_keys=tuple(sorted(set(raw) - set(_CONFIG_KEYS))),
    )


# --- connections: who is busy, who is idle, and draining -------------------------------------------


class ConnectionTracker:
    """Open connections of the server, and which of them wait idle for their next request.

    Draining closes the read side of idle keep-alive connections at once (their handler sees end of
    stream and ends) and makes busy ones close after the response they are writing. A connection
    accepted before the stop that has not sent its first request yet is in flight too: it gets a
    short grace to send it (``close_idle``) instead of being closed unanswered.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._open: set[socket.socket] = set()
        self._idle: dict[socket.socket, bool] = {}  # idle connection -> fresh (no request yet)
        self.draining = False

    def opened(self, conn: socket.socket) -> None:
        with self._changed:
            self._open.add(conn)

    def closed(self, conn: socket.socket) -> None:
        with self._changed:
            self._open.discard(conn)
            self._idle.pop(conn, None)
            self._changed.notify_all()

    def wait_for_request(self, conn: socket.socket, fresh: bool) -> bool:
        """Mark the connection idle; False when it must close instead (draining, not fresh)."""
        with self._changed:
            if self.draining and not fresh:
                return False
            self._idle[conn] = fresh
            return True

    def request_started(self, conn: socket.socket) -> None:
        with self._changed:
            self._idle.pop(conn, None)

    def drain(self) -> tuple[int, int]:
        """Start draining and close idle keep-alive connections: returns (in flight, closed) counts."""
        with self._changed:
            self.draining = True
            closing = self._shut_idle(include_fresh=False)
            return len(self._open) - closing, closing

    def close_idle(self) -> int:
        """Close every idle connection, fresh ones included (their grace is over)."""
        with self._changed:
            return self._shut_idle(include_fresh=True)

    def _shut_idle(self, include_fresh: bool) -> int:
        closing = [conn for conn, fresh in self._idle.items() if include_fresh or not fresh]
        for conn in closing:
            # wakes the handler blocked reading (it sees end of stream); writes still work
            with contextlib.suppress(OSError):  # the peer closed it meanwhile
                conn.shutdown(socket.SHUT_RD)
        return len(closing)

    def wait_all_closed(self, timeout_s: float) -> int:
        """Wait until no connection is open or the timeout passes; returns how many are still open."""
        with self._changed:
            self._changed.wait_for(lambda: not self._open, max(timeout_s, 0.0))
            return len(self._open)


# --- HTTP ------------------------------------------------------------------------------------------


class Output:
    """One line per event on stdout, whole lines even with many handler threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()


class SampleHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    timeout = IDLE_TIMEOUT_S
    # headers and body are two writes: without TCP_NODELAY a keep-alive peer waits out delayed ACKs
    disable_nagle_algorithm = True
    server: SampleServer
    _started = 0.0
    _requests_seen = 0

    # -- request lifecycle: idle/busy bookkeeping for draining

    def handle_one_request(self) -> None:
        if not self.server.tracker.wait_for_request(self.connection, fresh=self._requests_seen == 0):
            self.close_connection = True
            return
        super().handle_one_request()

    def parse_request(self) -> bool:
        self.server.tracker.request_started(self.connection)
        self._requests_seen += 1
        self._started = time.monotonic()
        return super().parse_request()

    # -- routes

    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def do_PUT(self) -> None:
        url = urlsplit(self.path)
        key = self._item_key(url.path)
        if key is None:
            self._discard_body()
            self._send_json(404, {"error": "not found", "path": url.path})
            return
        body = self._read_body(MAX_PUT_BODY)
        if body is None:
            return
        db = self.server.store
        if db is None:
            self._send_json(404, {"error": "this instance has no database"})
            return
        try:
            stored = db.write(key, body.decode("utf-8", errors="replace"))
        except ValueError as exc:
            self._send_json(400, {"error": str(exc)})
            return
        except store.StoreError as exc:
            self._send_json(503, {"error": f"database: {exc}", "instance": self.server.config.instance})
            return
        self._send_json(
            200, {**stored, "instance": self.server.config.instance, "version": self.server.build.version}
        )

    @staticmethod
    def _item_key(path: str) -> str | None:
        prefix = "/db/items/"
        if not path.startswith(prefix) or len(path) == len(prefix):
            return None
        return unquote(path[len(prefix) :])

    def _read_body(self, limit: int) -> bytes | None:
        length_text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length_text is None or not length_text.isdigit():
            self._send_json(411, {"error": "a PUT needs a Content-Length"}, close=True)
            return None
        length = int(length_text)
        if length > limit:
            self._send_json(413, {"error": "request body too large"}, close=True)
            return None
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return None
        return body

    def _get_item(self, key: str, query: str) -> None:
        db = self.server.store
        if db is None:
            self._send_json(404, {"error": "this instance has no database"})
            return
        which = "write" if parse_qs(query).get("from", [""])[-1] == "primary" else "read"
        try:
            item = db.read(key, which)
        except ValueError as exc:
            self._send_json(400, {"error": str(exc)})
            return
        except store.StoreError as exc:
            self._send_json(503, {"error": f"database: {exc}", "instance": self.server.config.instance})
            return
        if item is None:
            self._send_json(
                404, {"error": "no such item", "key": key, "instance": self.server.config.instance}
            )
        else:
            self._send_json(200, {**item, "instance": self.server.config.instance})

    def _route(self) -> None:
        if not self._discard_body():
            return
        url = urlsplit(self.path)
        build, config = self.server.build, self.server.config
        if url.path != "/health" and self.server.fails_this_one():
            self._send_json(
                500, {"error": "injected failure (build flag error_rate)", "version": build.version}
            )
            return
        if url.path == "/":
            self._send_json(
                200,
                {
                    "service": config.service,
                    "version": build.version,
                    "instance": config.instance,
                    "pid": os.getpid(),
                    "greeting": build.greeting,
                    "extra": config.extra,
                },
            )
        elif url.path == "/health":
            if build.broken_health:
                self._send_json(503, {"status": "broken", "version": build.version})
            else:
                self._send_json(200, {"status": "ok", "version": build.version})
        elif url.path == "/slow":
            self._slow(parse_qs(url.query).get("s", []))
        elif self._item_key(url.path) is not None:
            self._get_item(self._item_key(url.path) or "", url.query)
        else:
            self._send_json(404, {"error": "not found", "path": url.path})

    def _slow(self, values: list[str]) -> None:
        try:
            seconds = float(values[-1])
        except (IndexError, ValueError):
            seconds = math.nan
        if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SLOW_S:
            self._send_json(400, {"error": f"s: expected a number of seconds 0..{MAX_SLOW_S:g}"})
            return
        time.sleep(seconds)
        build, config = self.server.build, self.server.config
        self._send_json(200, {"slept_s": seconds, "instance": config.instance, "version": build.version})

    def _discard_body(self) -> bool:
        """Read and drop a request body so the connection stays in step; False if a response was sent."""
        if self.headers.get("Transfer-Encoding"):
            self._send_json(411, {"error": "chunked request bodies are not accepted"}, close=True)
            return False
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return True
        if not length_text.isdigit():
            self._send_json(400, {"error": "bad Content-Length"}, close=True)
            return False
        length = int(length_text)
        if length > MAX_DISCARDED_BODY:
            self._send_json(413, {"error": "request body too large"}, close=True)
            return False
        while length > 0:
            chunk = self.rfile.read(min(length, 65536))
            if not chunk:
                self.close_connection = True
                return False
            length -= len(chunk)
        return True

    def _send_json(self, status: int, payload: dict[str, Any], close: bool = False) -> None:
        body = (json.dumps(payload, sort_keys=True) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close or self.server.tracker.draining:
            self.send_header("Connection", "close")  # also sets self.close_connection
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # -- logging: exactly one line per request

    def version_string(self) -> str:
        return f"berth-sample/{self.server.build.version}"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        elapsed_ms = (time.monotonic() - self._started) * 1000 if self._started else 0.0
        status = int(code) if isinstance(code, int) else code
        host, port = self.client_address[:2]
        self.server.output.line(
            f"{self.server.config.instance} {self.server.build.version} {host}:{port} "
            f"{json.dumps(self.requestline)} {status} {elapsed_ms:.1f}ms"
        )

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the stdlib's other messages (timeouts, parse errors): log_request covers requests."""


class SampleServer(ThreadingHTTPServer):
    # Draining is bounded by wait_all_closed(drain_timeout_s), not by joining threads at exit: a
    # request still running at the deadline must not keep the process alive.
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, config: Config, build: BuildInfo, output: Output) -> None:
        self.config = config
        self.build = build
        self.output = output
        self.tracker = ConnectionTracker()
        self.store = (
            store.Store(config.database, config.instance, build.version, schema=build.db_schema)
            if config.database is not None
            else None
        )
        self._served = 0
        self._served_lock = threading.Lock()
        if ipaddress.ip_address(config.bind).version == 6:
            self.address_family = socket.AF_INET6
        super().__init__((config.bind, config.port), SampleHandler)

    def fails_this_one(self) -> bool:
        """Whether this request is one of the build's injected failures (every 1/error_rate-th)."""
        rate = self.build.error_rate
        if rate <= 0:
            return False
        with self._served_lock:
            self._served += 1
            return rate >= 1 or self._served % max(1, round(1 / rate)) == 0

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the bind address with getfqdn(): on a host without
        # reachable DNS (the lab) that stalls startup for a resolver timeout. Nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.tracker.opened(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        try:
            super().shutdown_request(request)
        finally:
            self.tracker.closed(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            return  # the client went away; nothing to tell
        host, port = client_address[:2]
        self.output.line(f"{self.config.instance} {self.build.version} {host}:{port} error: {exc!r}")

    def stop_accepting(self, accept_thread: threading.Thread) -> None:
        # shutdown(2) on a listening socket makes the kernel refuse new connections at once,
        # before the accept loop has even noticed the stop request.
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)
        self.shutdown()
        accept_thread.join()
        self.server_close()


# --- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Berth sample HTTP service")
    parser.add_argument("--config", required=True, type=Path, help="instance config (JSON)")
    return parser.parse_args(argv)


def run(config: Config, build: BuildInfo, output: Output) -> int:
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked before any thread exists, so every thread inherits the mask and sigwait() alone
    # receives them: no handler runs in the middle of request code.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        server = SampleServer(config, build, output)
    except OSError as exc:
        print(
            f"berth-sample: cannot listen on {config.bind}:{config.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return EXIT_CANNOT_LISTEN
    except store.StoreConfigError as exc:
        print(f"berth-sample: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    accept_thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": ACCEPT_POLL_S}, name="accept"
    )
    accept_thread.start()
    ignored = ", ".join(config.ignored_keys)
    output.line(
        f"{config.instance} {build.version} listening on {config.bind}:{config.port} pid {os.getpid()}"
        + (f" (ignoring unknown config keys: {ignored})" if ignored else "")
    )

    signum = signal.sigwait(stop_signals)
    stop_started = time.monotonic()
    server.stop_accepting(accept_thread)
    busy, idle = server.tracker.drain()
    output.line(
        f"{config.instance} {build.version} {signal.Signals(signum).name}: stopped accepting; "
        f"draining {busy} busy connection(s), closing {idle} idle"
    )
    deadline = stop_started + config.drain_timeout_s
    server.tracker.wait_all_closed(min(FIRST_REQUEST_GRACE_S, config.drain_timeout_s))
    server.tracker.close_idle()
    still_open = server.tracker.wait_all_closed(deadline - time.monotonic())
    elapsed = time.monotonic() - stop_started
    if still_open:
        output.line(
            f"{config.instance} {build.version} drain timeout ({config.drain_timeout_s:g} s): "
            f"cutting {still_open} connection(s)"
        )
    output.line(f"{config.instance} {build.version} stopped after {elapsed:.2f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        build = load_build_info(Path(__file__).resolve().with_name(BUILD_INFO_FILE))
        config = load_config(args.config)
    except StartupError as exc:
        print(f"berth-sample: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return run(config, build, Output())


if __name__ == "__main__":
    sys.exit(main())
