"""Print a rollout summary: what the load generator saw and how the rollout spent its time.

    python3 tools/rollout_report.py LOAD_REPORT.json JOURNAL.json ROLLOUT_SECONDS

The floor is what no tool can avoid: per batch, the longest drain wait (requests in flight),
the restart until the health check first passes `rise` times, and the load balancers' own `rise`
checks before the server is UP again. Everything above it is orchestration overhead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    load = json.loads(Path(sys.argv[1]).read_text())
    journal = json.loads(Path(sys.argv[2]).read_text())
    total = float(sys.argv[3])
    short, long = load["short"], load["long"]
    print(f"rollout of {journal['service']} to {journal['target']}: {journal['status']}, {total:.1f} s")
    print(
        f"requests: {short['sent']} short ({load['short_rate']}/s) + {long['sent']} long (5 s each); "
        f"failed: {short['non_2xx'] + short['errors']} short, {long['non_2xx'] + long['errors']} long"
    )
    counters = {lb: {k: v for k, v in c.items() if v} for lb, c in load["counters"].items()}
    print("HAProxy error counters: " + (", ".join(f"{lb}: {c or 'all 0'}" for lb, c in counters.items())))
    fewest = min((len(up) for sample in load["samples"] for up in sample["up"].values()), default=0)
    print(f"fewest servers UP on any load balancer (sampled every 0.2 s): {fewest}")
    floor = 0.0
    print(f"{'batch':<28} {'seconds':>8} {'drain':>7} {'healthy':>8} {'LB UP':>7}")
    for batch in journal.get("batches_done", []):
        floor += batch["drain_wait"] + batch["risen_after"] + batch["ready_wait"]
        print(
            f"{', '.join(batch['hosts']):<28} {batch['seconds']:>8.1f} {batch['drain_wait']:>7.2f} "
            f"{batch['risen_after']:>8.2f} {batch['ready_wait']:>7.2f}"
        )
    if floor:
        what = "drain + restart to healthy + LB rise"
        print(f"total {total:.1f} s vs floor {floor:.1f} s ({what}): {total / floor:.1f}x")


if __name__ == "__main__":
    main()
