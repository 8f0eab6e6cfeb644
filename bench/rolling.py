"""Benchmark (not a test): Berth's rolling upgrade vs the classic recipe, same lab, same load.

Provisions the lab topology under its own environment name, then for each method rolls catalog
from v1 to v2 (after putting every instance back on v1 with Berth) while tools/loadgen.py sends
200 short requests/s and 4 requests/s of /slow?s=5 through both load balancers (HAProxy with
retries 0 and no redispatch). Prints wall time and failed requests (short and long) side by side,
and Berth's time against the floor Σ(drain + restart to healthy + LB rise) from its journal.

    .venv/bin/python bench/rolling.py [--keep]

The classic recipe needs community.general (its haproxy module): the `ansible` 12.x package from
PyPI is installed once into .cache/classic (not a project dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: tools/ and the collection
from tools.inventory_json import hostvars as inventory_hostvars

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLASSIC = ROOT / ".cache" / "classic"
ENV_NAME = "bench"
STATE = ROOT / ".cache" / "bench-state"
LB_UNDER_TEST = {"loadbalancer_retries": 0, "loadbalancer_redispatch": False}


def ensure_classic_collections() -> None:
    if not (CLASSIC / "ansible_collections" / "community" / "general").is_dir():
        print("installing community.general (ansible 12.3.0 from PyPI) into .cache/classic ...", flush=True)
        subprocess.run(
            [str(BIN / "pip"), "install", "-q", "--no-deps", "--target", str(CLASSIC), "ansible==12.3.0"],
            check=True,
        )


def spec_path() -> Path:
    raw = yaml.safe_load((ROOT / "inventories" / "lab" / "topology.berth.yml").read_text())
    raw["environment"]["name"] = ENV_NAME
    raw["estate"]["lab_namespace"] = f"berth-{ENV_NAME}"
    raw["state_dir"] = str(STATE)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the bench lab running")
    args = parser.parse_args()
    ensure_classic_collections()
    spec = spec_path()
    hostvars = inventory_hostvars(spec)
    classic_env = dict(
        os.environ, ANSIBLE_COLLECTIONS_PATH=f"{ROOT}:{CLASSIC}", ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")
    )
    rows = []
    try:
        playbook(spec, "playbooks/build_artifacts.yml")
        playbook(spec, "playbooks/provision.yml")
        methods = (
            "classic: disable (MAINT), restart",
            "classic: disable, abrupt stop",
            "classic: drain + wait, restart",
            "berth deploy.yml",
        )
        for method in methods:
            playbook(spec, "playbooks/deploy.yml", "-e", "service=catalog", "-e", "version=v1")
            if method.startswith("classic"):
                extra = ["-e", "service=catalog", "-e", "version=v2"]
                extra += [
                    "-e",
                    f"classic_drain={'drain' in method}",
                    "-e",
                    f"classic_abrupt={'abrupt' in method}",
                ]
                seconds, load = under_load(
                    spec,
                    hostvars,
                    lambda extra=extra: playbook(spec, "bench/classic_rolling.yml", *extra, env=classic_env),
                )
            else:
                extra = ["-e", "service=catalog", "-e", "version=v2"]
                seconds, load = under_load(
                    spec, hostvars, lambda extra=extra: playbook(spec, "playbooks/deploy.yml", *extra)
                )
            rows.append((method, seconds, load))
        journal = json.loads((STATE / ENV_NAME / "rollouts" / "catalog.json").read_text())
    finally:
        if not args.keep:
            playbook(spec, "playbooks/destroy.yml")
    print(
        f"\n{'method':<36} {'seconds':>8} {'short sent':>11} {'short failed':>13} {'long sent':>10} {'long failed':>12}"
    )
    for method, seconds, load in rows:
        short, long = load["short"], load["long"]
        print(
            f"{method:<36} {seconds:>8.1f} {short['sent']:>11} {short['non_2xx'] + short['errors']:>13} "
            f"{long['sent']:>10} {long['non_2xx'] + long['errors']:>12}"
        )
    floor = sum(b["drain_wait"] + b["risen_after"] + b["ready_wait"] for b in journal["batches_done"])
    berth = rows[-1][1]
    print(
        f"\nberth vs classic drain+wait: {berth / rows[2][1]:.2f}x the time; vs classic disable: {berth / rows[0][1]:.2f}x"
    )
    print(
        f"berth {berth:.1f} s vs floor {floor:.1f} s (Σ drain + restart to healthy + LB rise): {berth / floor:.2f}x"
    )


if __name__ == "__main__":
    main()
