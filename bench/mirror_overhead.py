"""Benchmark (not a test): what a parallel run's mirror costs users, on the loopback.

A real HAProxy (retries 0, no redispatch) in front of two trusted instances, the real berth-mirror
daemon replaying copies to them and to a candidate (tests/mirror_lab.py), and the project's load
generator (tools/loadgen.py) sending GETs through the frontend. Each phase runs the same load for
the same time; the first, mirroring off, is the baseline measured in the same run:

- off:        the frontend has no copy lines and no mirror runs
- on:         every GET copied (sample 1) to a healthy candidate
- slow:       the candidate answers 10 times slower than the trusted instances (the mirror's
              timeout is shorter: its queue fills and drops)
- down:       the candidate is not there at all
- no mirror:  the frontend copies, but no daemon reads the socket (HAProxy's sendto fails)

Prints per phase the users' failed requests and p50/p95/p99 latency, the p99's ratio and
difference against ``off``, and what the mirror counted (judged, dropped, candidate failures).

    .venv/bin/python bench/mirror_overhead.py [--seconds 10] [--rate 200] [--service-ms 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: tests/ and the collection
from tests.mirror_lab import MirrorLab, sample_answer

PHASES = ("off", "on", "slow", "down", "no mirror")
PATHS = ["/items/a", "/items/b", "/items/c"]


def phase(name: str, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    directory.mkdir()
    service = args.service_ms / 1000
    lab = MirrorLab(
        directory,
        sample_answer("v2"),
        compare={"ignore_fields": ["version"]},
        mirrored=name != "off",
        timeout=service * 5,
    )
    if name == "no mirror":
        lab.start_mirror = lambda: None  # type: ignore[method-assign]  # the copies go nowhere
    with lab:
        for instance in lab.trusted:
            instance.delay = service
        lab.candidate.delay = service * (10 if name == "slow" else 1)
        if name == "down":
            lab.candidate.stop()
        started = time.monotonic()
        report = lab.load(args.seconds, args.rate, PATHS, directory / "load.json")
        took = time.monotonic() - started
        time.sleep(1.5)  # the mirror's last results
        mirror = lab.results() if lab.mirrored and lab.results_path.exists() else {}
        dropped_logs = lab.dropped_logs()
    short = report["short"]
    return {
        "phase": name,
        "sent": short["sent"],
        "failed": short["non_2xx"] + short["errors"],
        "latency": short["latency_ms"],
        "seconds": round(took, 1),
        "judged": mirror.get("requests", 0),
        "dropped": mirror.get("dropped", 0) + dropped_logs,
        "candidate_failures": mirror.get("candidate_failures", 0),
        "mismatches": mirror.get("mismatches", 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--service-ms", type=float, default=5, help="how long a trusted instance takes")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="berth-mirror-bench-") as work:
        for index, name in enumerate(PHASES):
            print(f"phase {name}: {args.seconds:g} s of {args.rate:g} GET/s ...", flush=True)
            rows.append(phase(name, Path(work) / str(index), args))
    base = rows[0]["latency"]
    print()
    print(
        f"{'phase':<10} {'sent':>6} {'failed':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
        f"{'p99/off':>7} {'p99-off':>8} {'judged':>6} {'dropped':>7} {'cand.fail':>9}"
    )
    for row in rows:
        latency = row["latency"]
        print(
            f"{row['phase']:<10} {row['sent']:>6} {row['failed']:>6} {latency['p50']:>7.2f} {latency['p95']:>7.2f} "
            f"{latency['p99']:>7.2f} {latency['p99'] / base['p99']:>7.2f} {latency['p99'] - base['p99']:>+8.2f} "
            f"{row['judged']:>6} {row['dropped']:>7} {row['candidate_failures']:>9}"
        )
    return 1 if any(row["failed"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
