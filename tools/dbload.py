"""An independent load generator for a service's database, end to end (stdlib only).

Started by a test inside the lab's network namespace, never by a playbook. It drives the sample
service's database endpoints through the load balancers' service frontends, so every request goes
user -> HAProxy -> instance -> HAProxy's database endpoint -> PostgreSQL:

- ``--mode write``: ``PUT /db/items/<prefix>-<n>`` for n = 0, 1, 2, ... at ``--rate``; a write is
  *acknowledged* when it answered 200 (the instance answers after its commit). The report lists
  every acknowledged key, every failure, and the longest time between two acknowledgements (how
  long writes stopped: a failover's outage as a client sees it).
- ``--mode read``: ``GET /db/items/<prefix>-<n % keys>`` at ``--rate``, every one expected to
  answer 200 with its value.

On SIGTERM (or after ``--duration``) it stops sending, waits for the requests in flight, and with
``--verify`` reads every acknowledged key back from the primary (``?from=primary``) and counts the
ones that are missing: a lost acknowledged write. It writes a JSON report to ``--out``.

    python3 dbload.py --target http://10.70.1.2:8090 --target http://10.70.2.2:8090 \\
        --mode write --rate 50 --prefix kill1 --verify --out report.json
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import signal
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

TIMEOUT_S = 10.0
VERIFY_DEADLINE_S = 60.0


@dataclass
class Record:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    samples: list[str] = field(default_factory=list)
    acked: dict[str, float] = field(default_factory=dict)  # key -> when acknowledged (s from start)
    failures: list[float] = field(default_factory=list)  # when each failure was answered
    servers: dict[str, int] = field(default_factory=dict)  # database server address -> answers
    instances: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Client:
    """One keep-alive connection to one target (reopened after any transport error)."""

    def __init__(self, target: str) -> None:
        url = urllib.parse.urlsplit(target)
        self.host, self.port = url.hostname or "", url.port or 80
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
        try:
            headers = {"Content-Type": "text/plain"} if body is not None else {}
            self.conn.request(method, path, body=body, headers=headers)
            answer = self.conn.getresponse()
            raw = answer.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if answer.getheader("Connection", "").lower() == "close":
            self.close()
        try:
            payload = json.loads(raw.decode() or "{}")
        except ValueError:
            payload = {"raw": raw[:200].decode(errors="replace")}
        return answer.status, payload if isinstance(payload, dict) else {}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def run_load(args: argparse.Namespace, stop: threading.Event, record: Record) -> float:
    started = time.monotonic()
    counter = iter(range(1 << 62))
    counter_lock = threading.Lock()

    def worker(index: int) -> None:
        client = Client(args.target[index % len(args.target)])
        while not stop.is_set():
            with counter_lock:
                n = next(counter)
            due = started + n / args.rate
            delay = due - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            key = f"{args.prefix}-{n if args.mode == 'write' else n % args.keys}"
            try:
                if args.mode == "write":
                    status, payload = client.request("PUT", f"/db/items/{key}", str(n).encode())
                else:
                    status, payload = client.request("GET", f"/db/items/{key}")
                error = "" if status == 200 else f"{status} {payload.get('error', '')}"
            except (OSError, http.client.HTTPException) as exc:
                status, payload, error = 0, {}, f"transport: {exc!r}"
            at = round(time.monotonic() - started, 3)
            with record.lock:
                record.sent += 1
                if not error and args.mode == "read" and payload.get("value") is None:
                    error = f"200 without a value: {payload}"
                if error:
                    record.failed += 1
                    record.failures.append(at)
                    if len(record.samples) < 20:
                        record.samples.append(f"{at:.3f}s {key}: {error[:300]}")
                    continue
                record.ok += 1
                if args.mode == "write":
                    record.acked[key] = at
                server = str(payload.get("server", "?"))
                record.servers[server] = record.servers.get(server, 0) + 1
                instance = str(payload.get("instance", "?"))
                record.instances[instance] = record.instances.get(instance, 0) + 1
        client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.workers)]
    for thread in threads:
        thread.start()
    stop.wait(args.duration)
    stop.set()
    for thread in threads:
        thread.join(TIMEOUT_S + 5)
    return round(time.monotonic() - started, 3)


def verify(targets: list[str], keys: list[str]) -> dict[str, Any]:
    """Read every acknowledged key back from the primary: missing ones are lost writes."""
    client = Client(targets[0])
    missing: list[str] = []
    unverified: list[str] = []
    deadline = time.monotonic() + VERIFY_DEADLINE_S
    for key in keys:
        while True:
            try:
                status = client.request("GET", f"/db/items/{key}?from=primary")[0]
            except (OSError, http.client.HTTPException):
                status = 0
            if status in (200, 404) or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # the cluster may still be settling: try again
        if status == 404:
            missing.append(key)
        elif status != 200:
            unverified.append(key)
    client.close()
    return {"checked": len(keys), "missing": missing, "unverified": unverified}


def longest_gap(times: list[float], end: float) -> dict[str, float]:
    """The longest stretch without an acknowledgement (its start and length, s from the start)."""
    points = sorted([0.0, *times, end])
    gap, at = 0.0, 0.0
    for before, after in itertools.pairwise(points):
        if after - before > gap:
            gap, at = after - before, before
    return {"seconds": round(gap, 3), "from": round(at, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", action="append", required=True, help="a service frontend on an LB")
    parser.add_argument("--mode", choices=("write", "read"), required=True)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--prefix", required=True)
    parser.add_argument(
        "--keys", type=int, default=20, help="read: how many keys, prefix-0 .. prefix-(keys-1)"
    )
    parser.add_argument("--verify", action="store_true", help="write: read every acknowledged key back")
    parser.add_argument("--duration", type=float, default=600, help="upper bound; SIGTERM ends it sooner")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    record = Record()
    seconds = run_load(args, stop, record)
    report: dict[str, Any] = {
        "mode": args.mode,
        "seconds": seconds,
        "sent": record.sent,
        "ok": record.ok,
        "failed": record.failed,
        "samples": record.samples,
        "first_failure": min(record.failures) if record.failures else None,
        "last_failure": max(record.failures) if record.failures else None,
        "servers": record.servers,
        "instances": record.instances,
    }
    if args.mode == "write":
        report["acked"] = len(record.acked)
        report["longest_gap"] = longest_gap(list(record.acked.values()), seconds)
        if args.verify:
            report["verify"] = verify(args.target, sorted(record.acked, key=record.acked.__getitem__))
    with open(args.out, "w", encoding="utf-8") as out:
        json.dump(report, out, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
