"""Benchmark (not a test): the topology plugin on a large estate vs an equivalent static inventory.

Generates a spec of 10,000 machines in 10 datacenters and 1,000 services, times
`ansible-inventory --list` on it, then writes the very inventory it produced as a static YAML
inventory (same hosts, groups and variables) and times `ansible-inventory --list` on that, in the
same run. Prints both and the ratio.

    .venv/bin/python bench/inventory_scale.py [--machines 10000] [--services 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: tools/ and the collection
from tools.inventory_json import plain

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE_INVENTORY = str(Path(sys.executable).parent / "ansible-inventory")


def generate_spec(machines: int, services: int, datacenters: int, instances: int) -> dict[str, Any]:
    per_dc = machines // datacenters
    estate: dict[str, Any] = {}
    for d in range(datacenters):
        estate[f"dc{d + 1}"] = {
            # a /16 per DC: one address block per service
            "address_pool": {"cidr": f"10.{100 + d}.0.0/16", "start": f"10.{100 + d}.1.0", "block_size": 4},
            "hypervisors": {
                f"hv-{d + 1}-{m + 1}": {
                    "uri": "qemu:///system",
                    "capacity": {"vcpus": 64, "memory_mib": 262144},
                    "bridge": "br0",
                }
                for m in range(per_dc)
            },
            "loadbalancers": {f"lb-dc{d + 1}": {"address": f"10.{100 + d}.0.10"}},
        }
    return {
        "plugin": "berth.fleet.topology",
        "estate": {"datacenters": estate},
        "services": {
            f"svc{s + 1}": {
                "artifact": f"svc{s + 1}",
                "version": "v1",
                "port": 10000 + s,
                "health": {"path": "/health"},
                "resources": {"vcpus": 1, "memory_mib": 512},
                "substrate": "vm",
            }
            for s in range(services)
        },
        "environment": {
            "name": "bench",
            "max_unavailable": 1,
            "services": {f"svc{s + 1}": {"instances": instances} for s in range(services)},
        },
    }


def to_static(listing: dict[str, Any]) -> dict[str, Any]:
    """`ansible-inventory --list` output -> an equivalent YAML inventory."""
    hostvars = listing["_meta"]["hostvars"]
    all_vars = listing.get("all", {}).get("vars", {})
    groups: dict[str, Any] = {}
    for name, body in listing.items():
        if name in ("_meta", "all"):
            continue
        group: dict[str, Any] = {}
        if body.get("hosts"):
            group["hosts"] = {h: None for h in body["hosts"]}
        if body.get("children"):
            group["children"] = {c: None for c in body["children"]}
        groups[name] = group
    # host variables once, on the first group that lists the host
    seen: set[str] = set()
    for group in groups.values():
        for host in group.get("hosts", {}):
            if host not in seen:
                group["hosts"][host] = {k: v for k, v in hostvars[host].items() if k not in all_vars}
                seen.add(host)
    return {"all": {"vars": all_vars, "children": groups}}


def run_list(source: Path, plugin: str) -> tuple[float, dict[str, Any]]:
    env = dict(os.environ, ANSIBLE_INVENTORY_ENABLED=plugin)
    start = time.perf_counter()
    result = subprocess.run(
        [ANSIBLE_INVENTORY, "-i", str(source), "--list"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"ansible-inventory failed on {source}:\n{result.stderr[-2000:]}")
    return elapsed, json.loads(result.stdout, object_hook=plain)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=1_000)
    parser.add_argument("--datacenters", type=int, default=10)
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="berth-bench-") as tmp:
        spec_path = Path(tmp) / "scale.berth.yml"
        spec_path.write_text(
            yaml.safe_dump(generate_spec(args.machines, args.services, args.datacenters, args.instances))
        )
        print(
            f"spec: {args.machines} machines in {args.datacenters} DCs, {args.services} services x "
            f"{args.instances} instances ({spec_path.stat().st_size / 1e6:.1f} MB)"
        )
        berth_times, listing = [], {}
        for _attempt in range(args.repeat):
            elapsed, listing = run_list(spec_path, "berth.fleet.topology")
            berth_times.append(elapsed)
        static_path = Path(tmp) / "static.yml"
        static = to_static(listing)
        static_path.write_text(yaml.safe_dump(static, sort_keys=False))
        hosts = len(listing["_meta"]["hostvars"])
        static_times = []
        for _attempt in range(args.repeat):
            elapsed, static_listing = run_list(static_path, "yaml")
            static_times.append(elapsed)
        if len(static_listing["_meta"]["hostvars"]) != hosts:
            sys.exit("the static inventory does not hold the same hosts: the comparison would be unfair")
        print(f"static inventory: {static_path.stat().st_size / 1e6:.1f} MB, {hosts} hosts")
        berth, baseline = statistics.median(berth_times), statistics.median(static_times)
        print(f"berth.fleet.topology (validate + place + populate): median {berth:.2f} s of {berth_times}")
        print(
            f"static YAML inventory (baseline):                   median {baseline:.2f} s of {static_times}"
        )
        print(f"ratio berth / static: {berth / baseline:.2f}")


if __name__ == "__main__":
    main()
