"""Benchmark (not a test): Berth's rolling upgrade vs the classic recipe, same lab, same load.

Provisions the lab topology under its own environment name (with ``--instances N`` catalog
instances on N machines in 2 DCs), then for each method rolls catalog from v1 to v2 (after putting
every instance back on v1 with Berth) while tools/loadgen.py sends 200 short requests/s and
4 requests/s of /slow?s=5 through both load balancers (HAProxy with retries 0 and no redispatch).
Prints wall time and failed requests (short and long) side by side, the ratios against the classic
recipe measured in the same run, and Berth's time against the floor Σ(drain + restart to healthy +
LB rise) from its own journal. Berth runs twice: with the classic recipe's policy (no
``min_healthy_time``, like for like) and with its default policy (``min_healthy_time`` 2 s), so the
cost of that policy shows.

    .venv/bin/python bench/rolling.py [--instances 4] [--max-unavailable 1] [--keep]
    .venv/bin/python bench/rolling.py --instances 8 --max-unavailable 25% --methods plain,berth
    .venv/bin/python bench/rolling.py --scale 4,8,16,32      # Berth only, 25 %: time vs floor per size

The classic recipe needs community.general (its haproxy module): the `ansible` 12.x package from
PyPI is installed once into .cache/classic (tools/classic_collections.py; not a project dependency).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: tools/ and the collection
from tools.classic_collections import CLASSIC, ensure_classic_collections
from tools.inventory_json import hostvars as inventory_hostvars

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV_NAME = "bench"
STATE = ROOT / ".cache" / "bench-state"
# each benchmark run keeps its playbook outputs (Berth's timeline at their end) in a folder of its own
LOGS = ROOT / ".cache" / "bench-logs" / time.strftime("%Y%m%d-%H%M%S")
LB_UNDER_TEST = {"loadbalancer_retries": 0, "loadbalancer_redispatch": False}


def spec_path(instances: int = 4, max_unavailable: int | str = 1) -> Path:
    """The lab topology with ``instances`` catalog instances (orders left out), one machine each."""
    raw = yaml.safe_load((ROOT / "inventories" / "lab" / "topology.berth.yml").read_text())
    raw["environment"]["name"] = ENV_NAME
    raw["estate"]["lab_namespace"] = f"berth-{ENV_NAME}"
    raw["state_dir"] = str(STATE)
    per_dc = -(-instances // 2)
    for dc_name, dc in raw["estate"]["datacenters"].items():
        template = next(iter(dc["local"].values()))
        dc["local"] = {f"lab-{dc_name}-{index}": dict(template) for index in range(1, max(per_dc, 2) + 1)}
        for lb in dc["loadbalancers"].values():
            lb["machine"] = f"lab-{dc_name}-1"
        dc.pop("execution_nodes", None)  # AWX's execution nodes take no part in a rollout
    raw["environment"]["services"] = {
        "catalog": {"instances": instances, "max_unavailable": max_unavailable},
        "orders": {"instances": 0},
    }
    path = ROOT / ".cache" / f"{ENV_NAME}.berth.yml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def playbook(spec: Path, name: str, *extra: str, env: dict[str, str] | None = None) -> float:
    variables = ROOT / ".cache" / "bench-vars.json"
    variables.write_text(json.dumps(LB_UNDER_TEST))
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(spec), name, "-e", f"@{variables}", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    seconds = time.monotonic() - started
    # the run's output, with Berth's timeline at its end (where the time went), for a look afterwards
    LOGS.mkdir(parents=True, exist_ok=True)
    log = (
        LOGS
        / f"{len(list(LOGS.iterdir())):02d}-{Path(name).stem}-{'-'.join(e for e in extra if '=' in e)}.log"
    )
    log.write_text(result.stdout + result.stderr)
    if result.returncode:
        raise SystemExit(
            f"{name} {' '.join(extra)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
        )
    return seconds


def under_load(spec: Path, hostvars: dict[str, Any], run: Any) -> tuple[float, dict[str, Any]]:
    lbs = sorted(h for h, v in hostvars.items() if v["berth_role"] == "lb")
    report = ROOT / ".cache" / "bench-load.json"
    argv = [
        "nsenter",
        f"--net=/run/netns/berth-{ENV_NAME}",
        "/usr/bin/python3",
        str(ROOT / "tools" / "loadgen.py"),
    ]
    for lb in lbs:
        address = hostvars[lb]["ansible_host"]
        argv += ["--target", f"http://{address}:8080", "--stats", f"http://{address}:8404/stats"]
    argv += [
        "--backend",
        "be_catalog",
        "--rate",
        "200",
        "--slow-rate",
        "4",
        "--slow-seconds",
        "5",
        "--out",
        str(report),
    ]
    load = subprocess.Popen(argv)
    try:
        time.sleep(3)
        seconds = run()
        time.sleep(1)
    finally:
        load.send_signal(signal.SIGTERM)
        load.wait(timeout=60)
    return seconds, json.loads(report.read_text())


METHODS = {
    "plain": "classic: disable (MAINT), restart",
    "abrupt": "classic: disable, abrupt stop",
    "drain": "classic: drain + wait, restart",
    "berth": "berth, classic policy (no min_healthy_time)",
    "berth-default": "berth, default policy (min_healthy_time 2 s)",
}


def rollout(spec: Path, hostvars: dict[str, Any], key: str, classic_env: dict[str, str]) -> tuple[float, Any]:
    """One v1 -> v2 rollout of catalog under load, by the method ``key``, from an estate all on v1."""
    playbook(spec, "playbooks/deploy.yml", "-e", "service=catalog", "-e", "version=v1")
    extra = ["-e", "service=catalog", "-e", "version=v2"]
    if key.startswith("berth"):
        if key == "berth":
            extra += ["-e", "rollout_min_healthy_time=0"]
        return under_load(spec, hostvars, lambda: playbook(spec, "playbooks/deploy.yml", *extra))
    extra += ["-e", f"classic_drain={key == 'drain'}", "-e", f"classic_abrupt={key == 'abrupt'}"]
    return under_load(
        spec, hostvars, lambda: playbook(spec, "bench/classic_rolling.yml", *extra, env=classic_env)
    )


def floor_of(journal: dict[str, Any]) -> float:
    return float(sum(b["drain_wait"] + b["risen_after"] + b["ready_wait"] for b in journal["batches_done"]))


def journal_now() -> dict[str, Any]:
    return dict(json.loads((STATE / ENV_NAME / "rollouts" / "catalog.json").read_text()))


def compare(args: argparse.Namespace) -> None:
    ensure_classic_collections()
    spec = spec_path(args.instances, args.max_unavailable)
    hostvars = inventory_hostvars(spec)
    classic_env = dict(
        os.environ, ANSIBLE_COLLECTIONS_PATH=f"{ROOT}:{CLASSIC}", ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")
    )
    rows: list[tuple[str, float, Any, float]] = []
    try:
        playbook(spec, "playbooks/build_artifacts.yml")
        playbook(spec, "playbooks/provision.yml")
        for key in args.methods.split(","):
            seconds, load = rollout(spec, hostvars, key, classic_env)
            rows.append((key, seconds, load, floor_of(journal_now()) if key.startswith("berth") else 0.0))
    finally:
        if not args.keep:
            playbook(spec, "playbooks/destroy.yml")
    print(
        f"\n{args.instances} instances, max_unavailable {args.max_unavailable}, 200 req/s + 4 req/s of 5 s requests, retries 0"
    )
    print(
        f"{'method':<46} {'seconds':>8} {'short sent':>11} {'short failed':>13} {'long sent':>10} {'long failed':>12}"
    )
    for key, seconds, load, _floor in rows:
        short, long = load["short"], load["long"]
        print(
            f"{METHODS[key]:<46} {seconds:>8.1f} {short['sent']:>11} {short['non_2xx'] + short['errors']:>13} "
            f"{long['sent']:>10} {long['non_2xx'] + long['errors']:>12}"
        )
    times = {key: seconds for key, seconds, _load, _floor in rows}
    for key, seconds, _load, floor in rows:
        if not key.startswith("berth"):
            continue
        ratios = [f"{seconds / floor:.2f}x the floor ({floor:.1f} s)"] if floor else []
        ratios += [
            f"{seconds / times[other]:.2f}x {METHODS[other]}"
            for other in ("drain", "plain")
            if other in times
        ]
        print(f"{METHODS[key]}: " + "; ".join(ratios))


INOTIFY = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_PER_MACHINE = 8  # what the lab's preflight counts (roles/local_estate/tasks/preflight.yml)


@contextlib.contextmanager
def inotify_for(machines: int) -> Iterator[None]:
    """A lab of ``machines`` nspawn machines needs about 8 inotify instances of root each; the
    host's default (128) boots about 15. The bench raises the host's limit for the run when it must,
    says so, and puts the old value back afterwards (Berth itself never changes it: the lab's
    preflight refuses and names the sysctl)."""
    before = int(INOTIFY.read_text())
    running = len(list(Path("/var/lib/berth/machines").glob("*/state.json")))  # other labs' machines too
    needed = (machines + running) * INOTIFY_PER_MACHINE
    if needed <= before:
        yield
        return
    print(
        f"bench: raising fs.inotify.max_user_instances {before} -> {needed * 2} for {machines} machines",
        flush=True,
    )
    INOTIFY.write_text(str(needed * 2))
    try:
        yield
    finally:
        INOTIFY.write_text(str(before))
        print(f"bench: fs.inotify.max_user_instances back to {before}", flush=True)


def scale(args: argparse.Namespace) -> None:
    print(f"{'instances':>9} {'batches':>8} {'seconds':>8} {'floor':>7} {'ratio':>6} {'failed':>7}")
    for size in [int(size) for size in args.scale.split(",")]:
        spec = spec_path(size, "25%")
        hostvars = inventory_hostvars(spec)
        machines = len({v["berth_node"] for v in hostvars.values() if v.get("berth_node")})
        with inotify_for(machines):
            try:
                playbook(spec, "playbooks/build_artifacts.yml")
                playbook(spec, "playbooks/provision.yml")
                seconds, load = rollout(spec, hostvars, "berth", dict(os.environ))
                journal = journal_now()
            finally:
                playbook(spec, "playbooks/destroy.yml")
        failed = sum(load[kind]["non_2xx"] + load[kind]["errors"] for kind in ("short", "long"))
        floor = floor_of(journal)
        print(
            f"{size:>9} {len(journal['batches_done']):>8} {seconds:>8.1f} {floor:>7.1f} {seconds / floor:>6.2f} {failed:>7}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--max-unavailable", default="1", help="a count or a percentage such as 25%%")
    parser.add_argument("--methods", default="plain,abrupt,drain,berth,berth-default")
    parser.add_argument("--scale", default="", help="comma-separated instance counts: the scaling table")
    parser.add_argument("--keep", action="store_true", help="leave the bench lab running")
    args = parser.parse_args()
    print(f"playbook outputs, each ending with Berth's timeline: {LOGS.relative_to(ROOT)}/", flush=True)
    if args.max_unavailable.isdigit():
        args.max_unavailable = int(args.max_unavailable)
    if args.scale:
        scale(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
