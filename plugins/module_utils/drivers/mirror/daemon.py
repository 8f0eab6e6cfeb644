# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``berth-mirror``: the parallel run of one service on one load balancer (issue 13).

Runs as ``berth-mirror@<service>.service`` on the LB host, with the host's python3 and this
package's files only (the standard library, ``copies.py`` and ``common/compare.py``)::

    python3 -m ansible_collections.berth.fleet.plugins.module_utils.drivers.mirror.daemon CONFIG

It binds the datagram socket HAProxy logs copies to (``copies.py``), and:

- a reader takes each line off the socket at once and puts it in a bounded queue; when the queue
  is full the copy is dropped and counted, never waited for (the socket's own queue is short:
  ``net.unix.max_dgram_qlen``, 10 on Debian, and HAProxy drops what does not fit, counted too);
- workers replay each copy to the primary, the secondary (two trusted instances) and the
  candidate at once, each with the configured timeout, and judge the three answers by Diffy's
  rule (``common/compare.py``); a copy that a trusted instance could not answer is not judged
  (counted as ``unjudged``); a candidate that cannot answer is a mismatch;
- every second, and when stopped, the tally is written (atomically) to the results file, which
  ``berth.fleet.parallel_run`` reads on every LB.

Nothing here is on the users' path: HAProxy sends a copy and forgets it.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import queue
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.compare import Answer, Rules, Tally
from ansible_collections.berth.fleet.plugins.module_utils.drivers.mirror.copies import (
    MAX_LINE,
    Copy,
    CopyError,
    parse_copy,
)

RESULTS_VERSION = 1
ROLES = ("primary", "secondary", "candidate")
PACKAGE = "ansible_collections/berth/fleet/plugins/module_utils"
MODULE = "ansible_collections.berth.fleet.plugins.module_utils.drivers.mirror.daemon"
# where a load balancer keeps a parallel run (one place: the role's files, the template's socket,
# the module that starts, reads and stops it)
PYTHON_DIR = "/usr/local/lib/berth/python"
UNIT_PATH = "/etc/systemd/system/berth-mirror@.service"
CONFIG_DIR = "/etc/berth/mirror"
RUN_DIR = "/run/berth-mirror"
RESULTS_DIR = "/var/lib/berth/mirror"
# what the LB host needs to run this module, relative to module_utils (the role ships them)
SHIPPED = (
    "__init__.py",
    "common/__init__.py",
    "common/compare.py",
    "common/fieldpath.py",
    "drivers/__init__.py",
    "drivers/mirror/__init__.py",
    "drivers/mirror/copies.py",
    "drivers/mirror/daemon.py",
)


def unit_name(service: str) -> str:
    return f"berth-mirror@{service}.service"


def socket_for(service: str) -> str:
    return f"{RUN_DIR}/{service}/copies.sock"


def config_for(service: str) -> str:
    return f"{CONFIG_DIR}/{service}.json"


def results_for(service: str) -> str:
    return f"{RESULTS_DIR}/{service}.json"


def unit_file(python: str) -> str:
    """The systemd template unit of ``berth-mirror@<service>``."""
    return f"""# Managed by Berth (role berth.fleet.loadbalancer): changes made here are overwritten.
# The parallel run of one service on this load balancer: HAProxy logs a copy of each sampled request
# to the socket in the runtime directory; berth-mirror replays it to two trusted instances and the
# candidate, off the users' path, and writes what it finds to {RESULTS_DIR}/%i.json. Started and
# stopped by berth.fleet.parallel_run, configured by {CONFIG_DIR}/%i.json.
[Unit]
Description=Berth parallel run of %i (copies of user requests replayed and compared)
After=network.target

[Service]
Type=simple
Environment=PYTHONPATH={PYTHON_DIR}
ExecStart={python} -m {MODULE} {CONFIG_DIR}/%i.json
RuntimeDirectory={RUN_DIR.rsplit("/", 1)[-1]}/%i
RuntimeDirectoryMode=0755
StateDirectory={RESULTS_DIR.removeprefix("/var/lib/")}
Restart=on-failure
RestartSec=1
NoNewPrivileges=yes
ProtectSystem=full
PrivateTmp=yes
"""


def shipped_files(module_utils: str, python: str, python_dir: str = PYTHON_DIR) -> list[dict[str, str]]:
    """The files ``berth-mirror`` runs from, as {path, content, mode}: its unit, and the modules read
    from this checkout's (or installed collection's) ``module_utils``, written under ``python_dir``."""
    files = [{"path": UNIT_PATH, "content": unit_file(python), "mode": "0644"}]
    for relative in SHIPPED:
        with open(os.path.join(module_utils, relative), encoding="utf-8") as handle:
            content = handle.read()
        files.append(
            {"path": f"{python_dir.rstrip('/')}/{PACKAGE}/{relative}", "content": content, "mode": "0644"}
        )
    return files


class MirrorConfigError(ValueError):
    """A configuration the mirror cannot run with; the message names the key."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int

    @classmethod
    def parse(cls, raw: Any, key: str) -> Target:
        text = str(raw or "")
        host, colon, port = text.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise MirrorConfigError(f"{key}: expected host:port, got {raw!r}")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class MirrorConfig:
    service: str
    socket: str
    results: str
    primary: Target
    secondary: Target
    candidate: Target
    rules: Rules
    queue: int = 1000
    timeout: float = 2.0
    workers: int = 8
    run_id: str = ""

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> MirrorConfig:
        for key in ("service", "socket", "results", "primary", "secondary", "candidate"):
            if not raw.get(key):
                raise MirrorConfigError(f"{key}: required")
        try:
            rules = Rules.from_settings(dict(raw.get("compare") or {}))
        except ValueError as exc:
            raise MirrorConfigError(f"compare: {exc}") from None
        return cls(
            service=str(raw["service"]),
            socket=str(raw["socket"]),
            results=str(raw["results"]),
            primary=Target.parse(raw["primary"], "primary"),
            secondary=Target.parse(raw["secondary"], "secondary"),
            candidate=Target.parse(raw["candidate"], "candidate"),
            rules=rules,
            queue=int(raw.get("queue", 1000)),
            timeout=float(raw.get("timeout", 2.0)),
            workers=int(raw.get("workers", 8)),
            run_id=str(raw.get("run_id", "")),
        )


Fetch = Callable[[Target, Copy, float], Answer]


class Connections(threading.local):
    """One kept-alive connection per worker thread and target."""

    def __init__(self) -> None:
        self.open: dict[Target, http.client.HTTPConnection] = {}

    def fetch(self, target: Target, copy: Copy, timeout: float) -> Answer:
        """The target's answer to the copy; a failure to answer is ``OSError`` (or
        ``http.client.HTTPException``), after the connection is dropped."""
        for attempt in (1, 2):
            conn = self.open.get(target)
            fresh = conn is None
            if conn is None:
                conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
                self.open[target] = conn
            try:
                headers = copy.replayed_headers()
                conn.request(copy.method, copy.target, body=copy.body or None, headers=headers)
                response = conn.getresponse()
                body = response.read()
                answer = Answer(response.status, dict(response.getheaders()), body)
                if response.will_close:
                    self.close(target)
                return answer
            except (OSError, http.client.HTTPException):
                self.close(target)
                # a kept-alive connection the server closed meanwhile: once more on a new one
                if fresh or attempt == 2 or copy.method not in ("GET", "HEAD", "OPTIONS"):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self, target: Target) -> None:
        conn = self.open.pop(target, None)
        if conn is not None:
            conn.close()


class Mirror:
    """The queue, the workers and the tally of one parallel run; ``serve`` runs them on a socket."""

    def __init__(
        self, config: MirrorConfig, fetch: Fetch | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.clock = clock
        self.fetch: Fetch = fetch or Connections().fetch
        self.copies: queue.Queue[Copy | None] = queue.Queue(maxsize=config.queue)
        self.tally = Tally(config.rules)
        self.lock = threading.Lock()
        self.received = 0
        self.malformed = 0
        self.unjudged = 0
        self.why_unjudged: list[str] = []  # the last few copies a trusted instance did not answer, and why
        self.candidate_failures = 0
        self.candidate_seconds: list[float] = []
        self.started = clock()
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=3 * config.workers, thread_name_prefix="replay")

    # the reader's side: never blocks on the queue
    def offer(self, line: bytes) -> bool:
        """One line off the socket into the queue; False when it was dropped (queue full) or not a copy."""
        self.received += 1
        try:
            copy = parse_copy(line)
        except CopyError:
            self.malformed += 1
            return False
        try:
            self.copies.put_nowait(copy)
        except queue.Full:
            with self.lock:
                self.tally.dropped += 1
            return False
        return True

    # a worker's side
    def replay(self, copy: Copy) -> None:
        """The three answers to one copy, at once, judged into the tally."""
        futures = {role: self.pool.submit(self._answer, role, copy) for role in ROLES}
        answers = {role: future.result() for role, future in futures.items()}
        with self.lock:
            if answers["primary"][0] is None or answers["secondary"][0] is None:
                self.unjudged += 1
                failed = "primary" if answers["primary"][0] is None else "secondary"
                self.why_unjudged.append(f"{copy.method} {copy.target}: {failed}: {answers[failed][2]}")
                del self.why_unjudged[:-5]
                return
            candidate, seconds, _why = answers["candidate"]
            if candidate is None:
                self.candidate_failures += 1
                candidate = Answer(0, {}, f"no answer within {self.config.timeout} s".encode())
            self.candidate_seconds.append(seconds)
            del self.candidate_seconds[:-1000]
            primary, secondary = answers["primary"][0], answers["secondary"][0]
            self.tally.add(copy.method, copy.target, primary, secondary, candidate)

    def _answer(self, role: str, copy: Copy) -> tuple[Answer | None, float, str]:
        """The answer of one role's instance, how long it took, and why there is none (or "")."""
        target = getattr(self.config, role)
        started = time.monotonic()
        try:
            answer = self.fetch(target, copy, self.config.timeout)
        except (OSError, http.client.HTTPException) as exc:
            return None, round(time.monotonic() - started, 4), f"{target} {type(exc).__name__}: {exc}"
        return answer, round(time.monotonic() - started, 4), ""

    def work(self) -> None:
        while True:
            copy = self.copies.get()
            if copy is None:
                return
            try:
                self.replay(copy)
            except Exception as exc:  # pylint: disable=broad-exception-caught  # one copy never ends the run
                say(f"a copy of {copy.method} {copy.target} failed: {exc}")

    def results(self) -> dict[str, Any]:
        with self.lock:
            tally = self.tally.as_dict()
            seconds = sorted(self.candidate_seconds)
            return {
                "version": RESULTS_VERSION,
                "service": self.config.service,
                "run_id": self.config.run_id,
                "candidate": str(self.config.candidate),
                "primary": str(self.config.primary),
                "secondary": str(self.config.secondary),
                "started": round(self.started, 3),
                "updated": round(self.clock(), 3),
                "received": self.received,
                "malformed": self.malformed,
                "unjudged": self.unjudged,
                "why_unjudged": list(self.why_unjudged),
                "candidate_failures": self.candidate_failures,
                "queued": self.copies.qsize(),
                "candidate_p50_ms": _percentile_ms(seconds, 0.50),
                "candidate_p99_ms": _percentile_ms(seconds, 0.99),
                **tally,
            }

    def write_results(self) -> None:
        path = self.config.results
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".mirror-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.results(), handle, sort_keys=True)
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def flush(self, flush_seconds: float) -> None:
        """The writer's side: the results every ``flush_seconds`` until stopped (a thread of its
        own, so that the reader only ever reads: a write that waits on the disk never leaves
        HAProxy's copies to the socket's buffer, which drops them when full)."""
        while not self.stopping.wait(flush_seconds):
            try:
                self.write_results()
            except OSError as exc:  # the next flush tries again; the last one, at the end, raises
                say(f"the results could not be written: {exc}")

    def serve(self, sock: socket.socket, flush_seconds: float = 1.0) -> None:
        """Read the socket until stopped; the workers replay; the results are written every
        ``flush_seconds`` (by the writer thread) and once more at the end."""
        workers = [threading.Thread(target=self.work, daemon=True) for _index in range(self.config.workers)]
        for worker in workers:
            worker.start()
        sock.settimeout(0.2)
        self.write_results()
        writer = threading.Thread(target=self.flush, args=(flush_seconds,), daemon=True, name="results")
        writer.start()
        try:
            while not self.stopping.is_set():
                try:
                    line = sock.recv(MAX_LINE + 1)
                except TimeoutError:
                    continue
                except OSError as exc:
                    if self.stopping.is_set():
                        break
                    say(f"the socket failed: {exc}")
                    raise
                if line:
                    self.offer(line)
        finally:
            self.stopping.set()
            writer.join(timeout=flush_seconds + 5)
        for _worker in workers:
            with contextlib.suppress(queue.Full):
                self.copies.put(None, timeout=self.config.timeout + 1)
        for worker in workers:
            worker.join(timeout=self.config.timeout + 1)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.write_results()


def _percentile_ms(ordered: list[float], share: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000, 1)


def say(line: str) -> None:
    """One line for the journal (systemd takes stderr)."""
    sys.stderr.write(f"berth-mirror: {line}\n")
    sys.stderr.flush()


def bind(path: str) -> socket.socket:
    """The datagram socket HAProxy logs to: any stale one removed, writable by HAProxy's user."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(path)
    os.chmod(path, 0o666)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="berth-mirror", description=__doc__.split("\n", 1)[0])
    parser.add_argument("config", help="the JSON configuration Berth writes for one service")
    args = parser.parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as handle:
            config = MirrorConfig.from_mapping(json.load(handle))
    except (OSError, ValueError) as exc:
        say(f"{args.config}: {exc}")
        return 2
    mirror = Mirror(config)
    sock = bind(config.socket)

    def stop(signum: int, frame: Any) -> None:
        mirror.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    say(
        f"{config.service}: copies from {config.socket} to {config.primary}, "
        f"{config.secondary} (trusted) and {config.candidate} (candidate); results in {config.results}"
    )
    try:
        mirror.serve(sock)
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(config.socket)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
