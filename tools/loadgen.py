"""An independent load generator and capacity sampler for zero-downtime proofs (stdlib only).

Started by a test (inside the lab's network namespace), never by a playbook. It sends a constant
stream of short requests plus a stream of long ones (so requests are in flight at every drain),
counts every non-2xx answer and transport error itself, samples each load balancer's view of the
backend every --sample-interval seconds, and on SIGTERM (or after --duration) lets the long
requests in flight finish, reads HAProxy's error counters and writes a JSON report.

    python3 loadgen.py --target http://10.70.1.2:8080 --target http://10.70.2.2:8080 \
        --stats http://10.70.1.2:8404/stats --stats http://10.70.2.2:8404/stats \
        --backend be_catalog --rate 200 --slow-rate 4 --slow-seconds 5 --out report.json

A blue-green service has a backend per colour: give --backend once for each. The report's
``versions`` says, per load balancer, when the version that answered changed (from the answers).
A change counts only when it is causally after the version it replaces: an answer of another version
to a request sent before the current version's first answer arrived may have been routed before the
switch (an in-flight straggler, answered late), so it is no change; sent after that, it is one
(the LB then served an older version again: what a zero-downtime switch must never do).
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import json
import signal
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

COUNTERS = ("hrsp_5xx", "econ", "eresp", "wretr", "wredis", "cli_abrt", "srv_abrt")


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    non_2xx: int = 0
    errors: int = 0
    samples: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # how long each answered request took
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, status: int | None, what: str, seconds: float | None = None) -> None:
        with self.lock:
            self.sent += 1
            if seconds is not None and status is not None:
                self.seconds.append(seconds)
            if status is not None and 200 <= status < 300:
                self.ok += 1
                return
            if status is None:
                self.errors += 1
            else:
                self.non_2xx += 1
            if len(self.samples) < 20:
                self.samples.append(f"{time.strftime('%H:%M:%S')} {what}")

    def report(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "ok": self.ok,
            "non_2xx": self.non_2xx,
            "errors": self.errors,
            "failure_samples": self.samples,
            "latency_ms": latency_ms(self.seconds),
        }


def latency_ms(seconds: list[float]) -> dict[str, float]:
    """p50, p95, p99 and max of the answered requests, in milliseconds ({} if none)."""
    if not seconds:
        return {}
    ordered = sorted(seconds)

    def at(share: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000, 2)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1] * 1000, 2)}


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stop = threading.Event()
        self.short = Tally()
        self.long = Tally()
        self.samples: list[dict[str, Any]] = []
        self.stats_errors = 0
        self.long_threads: list[threading.Thread] = []
        # set by the signal handler; only the main loop turns it into ``stop``: a handler that set
        # the Event itself could land while the main thread held the Event's own (non-reentrant)
        # lock inside Event.wait and deadlock it (the generator then never ended: seen once)
        self.told_to_stop = False
        # per target (load balancer): when the version that answered changed, [[t, version], ...]
        # (which colour or release each LB served, from the answers themselves); and when the
        # current version's first answer arrived, which decides what a change is (saw_version)
        self.versions: dict[str, list[list[Any]]] = {}
        self.current_since: dict[str, float] = {}
        self.answers: dict[str, dict[str, int]] = {}
        self.versions_lock = threading.Lock()

    def saw_version(self, target: str, status: int, body: bytes, sent: float) -> None:
        try:
            version = str(json.loads(body).get("version", ""))
        except (ValueError, AttributeError):
            return
        with self.versions_lock:  # every answer that says its version, by version: ok or failed
            counted = self.answers.setdefault(version, {"ok": 0, "failed": 0})
            counted["ok" if status == 200 else "failed"] += 1
        if status != 200:
            return
        with self.versions_lock:
            changes = self.versions.setdefault(target, [])
            if changes and (changes[-1][1] == version or sent < self.current_since[target]):
                return  # the same version, or a request sent before the current one was seen
            now = time.monotonic()
            self.current_since[target] = now
            changes.append([round(now - self.started, 3), version])

    # --- traffic ---------------------------------------------------------------------------------

    def short_worker(self, index: int) -> None:
        targets = [urllib.parse.urlsplit(t) for t in self.args.target]
        paths = self.args.path or ["/"]
        per_worker = self.args.rate / self.args.workers
        connection: http.client.HTTPConnection | None = None
        next_at = time.monotonic() + index / self.args.rate
        count = 0
        while not self.stop.is_set():
            target = targets[(index + count) % len(targets)]
            count += 1
            try:
                if connection is None or connection.host != target.hostname or connection.port != target.port:
                    if connection is not None:
                        connection.close()
                    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
                sent = time.monotonic()
                connection.request("GET", paths[(index + count // len(targets)) % len(paths)])
                response = connection.getresponse()
                body = response.read()
                took = time.monotonic() - sent
                self.short.record(response.status, f"{target.netloc} HTTP {response.status}", took)
                self.saw_version(target.netloc, response.status, body, sent)
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as exc:
                self.short.record(None, f"{target.netloc} {type(exc).__name__}: {exc}")
                if connection is not None:
                    connection.close()
                connection = None
            next_at += 1 / per_worker
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            else:
                next_at = time.monotonic()  # behind: do not burst to catch up
        if connection is not None:
            connection.close()

    def long_request(self, target: urllib.parse.SplitResult) -> None:
        connection = http.client.HTTPConnection(
            target.hostname, target.port, timeout=self.args.slow_seconds + 30
        )
        try:
            connection.request("GET", f"/slow?s={self.args.slow_seconds}")
            response = connection.getresponse()
            response.read()
            self.long.record(response.status, f"{target.netloc} slow HTTP {response.status}")
        except (OSError, http.client.HTTPException) as exc:
            self.long.record(None, f"{target.netloc} slow {type(exc).__name__}: {exc}")
        finally:
            connection.close()

    def long_spawner(self) -> None:
        targets = [urllib.parse.urlsplit(t) for t in self.args.target]
        count = 0
        while self.args.slow_rate > 0 and not self.stop.is_set():
            thread = threading.Thread(
                target=self.long_request, args=(targets[count % len(targets)],), daemon=True
            )
            thread.start()
            self.long_threads.append(thread)
            count += 1
            self.stop.wait(1 / self.args.slow_rate)

    # --- what the load balancers see --------------------------------------------------------------

    def read_stats(self, url: str) -> list[dict[str, str]]:
        parts = urllib.parse.urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
        try:
            connection.request("GET", f"{parts.path};csv")
            body = connection.getresponse().read().decode()
        finally:
            connection.close()
        rows = list(csv.DictReader(io.StringIO(body.lstrip("# "))))
        return [row for row in rows if row.get("pxname") in self.args.backend]

    def sampler(self) -> None:
        while not self.stop.is_set():
            sample: dict[str, Any] = {"t": round(time.monotonic() - self.started, 3), "up": {}}
            for url in self.args.stats:
                try:
                    rows = self.read_stats(url)
                except (OSError, http.client.HTTPException):
                    self.stats_errors += 1
                    continue
                sample["up"][url] = sorted(
                    row["svname"]
                    for row in rows
                    if row["svname"] not in ("FRONTEND", "BACKEND") and row["status"] == "UP"
                )
            self.samples.append(sample)
            self.stop.wait(self.args.sample_interval)

    def counters(self) -> dict[str, dict[str, int]]:
        totals: dict[str, dict[str, int]] = {}
        for url in self.args.stats:  # summed over the backends (both colours of a blue-green service)
            for row in self.read_stats(url):
                if row["svname"] == "BACKEND":
                    mine = totals.setdefault(url, dict.fromkeys(COUNTERS, 0))
                    for name in COUNTERS:
                        mine[name] += int(row.get(name) or 0)
        return totals

    # --- run -------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        # HAProxy's counters count since it started: the report gives what grew while this load ran
        # (a LB reloaded meanwhile starts from 0: then what it counted since is its part)
        before = self.counters()
        self.started = time.monotonic()
        threads = [threading.Thread(target=self.short_worker, args=(i,)) for i in range(self.args.workers)]
        threads.append(threading.Thread(target=self.long_spawner))
        threads.append(threading.Thread(target=self.sampler))
        for thread in threads:
            thread.start()
        ends = self.started + self.args.duration
        while not self.told_to_stop and time.monotonic() < ends:
            time.sleep(0.05)  # a signal interrupts the sleep; the handler takes no lock
        self.stop.set()
        active = time.monotonic() - self.started
        for thread in threads:
            thread.join()
        deadline = time.monotonic() + self.args.slow_seconds + 30
        for thread in self.long_threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        elapsed = time.monotonic() - self.started
        return {
            "seconds": round(elapsed, 2),
            "short": self.short.report(),
            "long": self.long.report(),
            "short_rate": round(self.short.sent / active, 1),
            "samples": self.samples,
            "stats_errors": self.stats_errors,
            "counters": {
                url: {
                    name: value - before.get(url, {}).get(name, 0)
                    if value >= before.get(url, {}).get(name, 0)
                    else value
                    for name, value in after.items()
                }
                for url, after in self.counters().items()
            },
            "versions": self.versions,
            "answers": self.answers,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", required=True)
    parser.add_argument("--stats", action="append", default=[])
    parser.add_argument("--backend", action="append", required=True, help="repeat for every colour")
    parser.add_argument("--path", action="append", default=[], help="paths taken in turn (default /)")
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--slow-rate", type=float, default=4)
    parser.add_argument("--slow-seconds", type=float, default=5)
    parser.add_argument("--sample-interval", type=float, default=0.2)
    parser.add_argument("--duration", type=float, default=900, help="upper bound; SIGTERM ends it sooner")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    load = Load(args)

    def told(signum: int, frame: Any) -> None:
        load.told_to_stop = True

    signal.signal(signal.SIGTERM, told)
    signal.signal(signal.SIGINT, told)
    report = load.run()
    with open(args.out, "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main()
