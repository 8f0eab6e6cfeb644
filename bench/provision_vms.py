"""Benchmark (not a test): provisioning 1 VM vs 4 VMs in parallel, from nothing to SSH-ready.

Each round writes a VM lab spec (libvirt VMs under TCG on this machine's libvirtd, which Berth
starts inside the lab namespace; no load balancer), runs playbooks/provision.yml, which returns
only when every VM answers SSH with strict host key checking, then playbooks/destroy.yml. The
1-VM round is the baseline, measured in the same run; the guest image is built (or found cached)
before any timing starts. Prints each round, the ratio 4 VMs / 1 VM, and the qemu RSS per VM.

    .venv/bin/python bench/provision_vms.py [--vms 4] [--repeat 2]

Needs root, libvirtd not running (the bench's lab starts its own), and ~0.5 GB of RAM per VM.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENVIRONMENT = "bench-vm"


def spec(vms: int, state_dir: Path) -> dict[str, Any]:
    """`vms` instances of one service, one per hypervisor (no colocation), across two DCs."""
    datacenters: dict[str, Any] = {}
    for index in range(2):
        dc = f"dc{index + 1}"
        datacenters[dc] = {
            "address_pool": {"cidr": f"10.75.{index + 1}.0/24", "start": f"10.75.{index + 1}.16"},
            "hypervisors": {
                f"bench-hv-{dc}-{h + 1}": {
                    "uri": "qemu:///system",
                    "domain_type": "qemu",
                    "capacity": {"vcpus": 2, "memory_mib": 1024},
                    "pool": {"name": "berth-bench-vm", "path": "/var/lib/berth/pools/bench-vm"},
                }
                for h in range((vms + 1) // 2)
            },
        }
    return {
        "plugin": "berth.fleet.topology",
        "state_dir": str(state_dir),
        "estate": {"lab_namespace": f"berth-{ENVIRONMENT}", "datacenters": datacenters},
        "services": {
            "catalog": {
                "artifact": "catalog",
                "version": "v1",
                "port": 8080,
                "health": {"path": "/health"},
                "resources": {"vcpus": 1, "memory_mib": 512, "disk_gib": 4},
                "substrate": "vm",
            }
        },
        "environment": {"name": ENVIRONMENT, "services": {"catalog": {"instances": vms}}},
    }


def playbook(name: str, inventory: Path) -> tuple[int, float, str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    started = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(ROOT / "playbooks" / name)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode, time.monotonic() - started, proc.stdout + proc.stderr


def qemu_rss_mib() -> list[float]:
    """RSS of every qemu process running a domain of this bench's environment."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if "qemu-system" in cmdline and f"guest={ENVIRONMENT}-" in cmdline:
            match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
            if match:
                found.append(int(match.group(1)) / 1024)
    return found


def round_trip(vms: int, workdir: Path) -> dict[str, Any]:
    inventory = workdir / f"{ENVIRONMENT}-{vms}.berth.yml"
    inventory.write_text(yaml.safe_dump(spec(vms, workdir / "state"), sort_keys=False))
    try:
        rc, seconds, output = playbook("provision.yml", inventory)
        if rc != 0:
            raise SystemExit(f"provision of {vms} VM(s) failed:\n{output[-4000:]}")
        rss = qemu_rss_mib()
    finally:
        down_rc, down_seconds, down_output = playbook("destroy.yml", inventory)
        if down_rc != 0:
            print(f"destroy failed:\n{down_output[-3000:]}", file=sys.stderr)
    return {"vms": vms, "seconds": seconds, "rss_mib": rss, "destroy_seconds": down_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vms", type=int, default=4, help="VMs in the parallel round (default 4)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of each size (default 2)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (libvirtd, network namespaces)")
    if subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, check=False).returncode == 0:
        raise SystemExit("libvirtd already runs: the bench's lab starts its own inside its namespace")
    with tempfile.TemporaryDirectory(prefix="berth-bench-vm-") as tmp:
        workdir = Path(tmp)
        print("warm-up: base and guest image (built once, cached afterwards), 1 VM", flush=True)
        warm = round_trip(1, workdir)
        print(f"  warm-up round: {warm['seconds']:.1f} s", flush=True)
        results: dict[int, list[dict[str, Any]]] = {1: [], args.vms: []}
        for repeat in range(args.repeat):
            for vms in (1, args.vms):
                result = round_trip(vms, workdir)
                results[vms].append(result)
                rss = result["rss_mib"]
                print(
                    f"  round {repeat + 1}: {vms} VM(s) from nothing to SSH-ready {result['seconds']:.1f} s; "
                    f"qemu RSS per VM {statistics.mean(rss) if rss else 0:.0f} MiB; destroy "
                    f"{result['destroy_seconds']:.1f} s",
                    flush=True,
                )
    one = statistics.median(r["seconds"] for r in results[1])
    many = statistics.median(r["seconds"] for r in results[args.vms])
    print(f"\nbaseline, 1 VM (median of {args.repeat}): {one:.1f} s")
    print(f"{args.vms} VMs in parallel (median of {args.repeat}): {many:.1f} s")
    print(
        f"ratio {args.vms} VMs / 1 VM: {many / one:.2f} (serial would be {args.vms:.2f}); {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
