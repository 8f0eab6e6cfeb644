"""`make demo`: Berth's main job on the built-in local lab estate, start to finish.

1. every environment's placement, as tables;
2. the artifacts, built once per version;
3. provision the lab (nspawn machines in 2 DCs, one HAProxy per DC);
4. deploy catalog, orders and payments v1 behind the load balancers (a first deploy);
5. start an independent load generator (short requests + 5 s requests through both LBs), roll
   catalog v1 -> v2, stop the load and print what it saw and where the rollout's time went, and
   where its rollout report is (the timeline page);
6. orders is blue-green: v2 goes to its idle colour, every LB switches to it at once, and
   rollback.yml switches back to the warm colour, both under the same load (the load says when each
   LB's users got which version);
   payments is canary: v2 takes 10 %, then 30 % of the requests beside a fresh v1 baseline, passes
   its analyses and is promoted; v4, which fails one request in ten, is aborted by its analysis
   (the load counts the answers of each version);
7. lose a catalog machine (removed with its disk) and reconcile under the same load: the machine
   is recreated, gets v2 and goes back into rotation;
8. destroy the lab, unless --keep.

    .venv/bin/python tools/demo.py [--env lab] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from inventory_json import hostvars as inventory_hostvars

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the collection, through the checkout's ansible_collections/ link
from ansible_collections.berth.fleet.plugins.module_utils.planner.journal import journal_path

BIN = Path(sys.executable).parent
LOADGEN = ROOT / "tools" / "loadgen.py"


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def playbook(*args: str, quiet: bool = True, fails_with: str = "") -> float:
    """Run ansible-playbook; its seconds. ``fails_with``: the run must fail, saying this (printed)."""
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), *args], cwd=ROOT, capture_output=quiet, text=True, check=False
    )
    seconds = time.monotonic() - started
    if fails_with:
        said = " ".join((result.stdout + result.stderr).split())
        if result.returncode == 0 or fails_with not in said:
            raise SystemExit(f"ansible-playbook {' '.join(args)} was to fail with {fails_with!r}")
        told = said[said.index(fails_with) :].split("(the canary record", maxsplit=1)[0]
        print("  the run said: " + told[:600])
        return seconds
    if result.returncode != 0:
        if quiet:
            print(result.stdout[-4000:], result.stderr[-2000:])
        raise SystemExit(f"ansible-playbook {' '.join(args)} failed after {seconds:.1f} s")
    return seconds


def under_load(
    argv: list[str], report: Path, *args: str, fails_with: str = ""
) -> tuple[float, dict[str, Any]]:
    """Run a playbook while the load generator runs; its seconds and what the load saw."""
    load = subprocess.Popen([*argv, "--out", str(report)])
    try:
        time.sleep(3)
        seconds = playbook(*args, fails_with=fails_with)
        time.sleep(1)
    finally:
        load.send_signal(signal.SIGTERM)
        load.wait(timeout=60)
    return seconds, json.loads(report.read_text())


def print_report(journal: Path, keep_as: Path) -> None:
    """Where the rollout report of the run just done is: written next to the journal (which the
    lab's destroy removes), kept under .lab/ too."""
    service = journal.name.removesuffix(".json")
    written = [journal.with_name(f"{service}.report.{kind}") for kind in ("html", "json")]
    run = (json.loads(journal.read_text()).get("run") or {}).get("id")
    if not all(path.exists() for path in written) or json.loads(written[1].read_text())["run"] != run:
        print(f"no rollout report of run {run} next to {journal} (the deploy's output says why)")
        return
    for path in written:
        shutil.copyfile(path, keep_as.with_name(f"{keep_as.name}.report{path.suffix}"))
    page = keep_as.with_name(f"{keep_as.name}.report.html")
    warnings = json.loads(written[1].read_text())["warnings"]
    print(f"rollout report (requests/s, 5xx/s and servers UP per LB, the batches): {page}")
    print(f"  written next to the journal as {written[0]}; open it in any browser (self-contained)")
    for warning in warnings:
        print(f"  warning: {warning}")


def placement_tables() -> None:
    for env in ("dev", "ci", "prod", "lab"):
        out = subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", f"inventories/{env}", "playbooks/placement.yml"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        table = out.split("msg: |-", 1)[1].split("\n\n", 1)[0]
        print("\n".join(line[8:] for line in table.splitlines()[1:]), "\n")


def blue_green(
    hostvars: dict[str, Any], namespace: str, lbs: list[str], env: list[str], workdir: Path
) -> None:
    """orders is blue-green in the lab: v2 goes to the idle colour, every LB switches at once, then
    rollback.yml switches back to the warm colour; the load sees both switches in its answers."""
    spec = next(v["berth_service_spec"] for v in hostvars.values() if v.get("berth_service") == "orders")
    if not spec.get("colours"):
        return
    argv = ["nsenter", f"--net=/run/netns/{namespace}", "/usr/bin/python3", str(LOADGEN)]
    for lb in lbs:
        address = hostvars[lb]["ansible_host"]
        argv += ["--target", f"http://{address}:{spec['port']}", "--stats", f"http://{address}:8404/stats"]
    for body in spec["colours"].values():
        argv += ["--backend", body["backend"]]
    argv += ["--rate", "200", "--slow-rate", "4", "--slow-seconds", "5"]
    for title, args, name in (
        (
            "blue-green: orders v2 onto the idle colour, smoke checks, every LB switched at once, analysis",
            ("playbooks/deploy.yml", "-e", "service=orders", "-e", "version=v2"),
            "bg-v2",
        ),
        (
            "blue-green: rollback.yml switches every LB back to the warm colour (v1)",
            ("playbooks/rollback.yml", "-e", "service=orders"),
            "bg-back",
        ),
    ):
        step(f"{title}, under 200 req/s + 4 req/s of 5 s requests (retries 0, no redispatch)")
        seconds, seen = under_load(argv, workdir / f"load-{name}.json", *env, *args)
        failed = sum(seen[kind]["non_2xx"] + seen[kind]["errors"] for kind in ("short", "long"))
        sent = sum(seen[kind]["sent"] for kind in ("short", "long"))
        print(f"done in {seconds:.1f} s; {sent} requests meanwhile, {failed} failed")
        for target, changes in sorted(seen["versions"].items()):
            print(f"  users of {target} got: " + " -> ".join(f"{v} (from +{t:.2f} s)" for t, v in changes))


def canary(hostvars: dict[str, Any], namespace: str, lbs: list[str], env: list[str], workdir: Path) -> None:
    """payments is canary in the lab: a good v2 takes 10 %, then 30 % of the requests, passes its
    analyses and is promoted; v4 (one request in ten fails) is aborted by its first measurement."""
    spec = next(v["berth_service_spec"] for v in hostvars.values() if v.get("berth_service") == "payments")
    if spec["strategy"]["kind"] != "canary":
        return
    argv = ["nsenter", f"--net=/run/netns/{namespace}", "/usr/bin/python3", str(LOADGEN)]
    for lb in lbs:
        address = hostvars[lb]["ansible_host"]
        argv += ["--target", f"http://{address}:{spec['port']}", "--stats", f"http://{address}:8404/stats"]
    argv += ["--backend", "be_payments", "--rate", "200", "--slow-rate", "4", "--slow-seconds", "5"]
    for title, version, name, fails_with in (
        (
            "canary: payments v2 beside a fresh v1 baseline, 10 %, analysis, 30 %, analysis, promoted",
            "v2",
            "c-v2",
            "",
        ),
        ("canary: payments v4 (fails one request in ten), aborted by its analysis", "v4", "c-v4", "ABORTED"),
    ):
        step(f"{title}, under 200 req/s + 4 req/s of 5 s requests (retries 0, no redispatch)")
        seconds, seen = under_load(
            argv,
            workdir / f"load-{name}.json",
            *env,
            "playbooks/deploy.yml",
            "-e",
            "service=payments",
            "-e",
            f"version={version}",
            fails_with=fails_with,
        )
        failed = sum(seen[kind]["non_2xx"] + seen[kind]["errors"] for kind in ("short", "long"))
        sent = sum(seen[kind]["sent"] for kind in ("short", "long"))
        print(f"done in {seconds:.1f} s; {sent} requests meanwhile, {failed} failed")
        answered = ", ".join(
            f"{v}: {c['ok']} ok, {c['failed']} failed" for v, c in sorted(seen["answers"].items())
        )
        print(f"  answers by version: {answered}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="lab")
    parser.add_argument("--keep", action="store_true", help="leave the lab running")
    args = parser.parse_args()
    workdir = ROOT / ".lab"
    workdir.mkdir(exist_ok=True)
    # The zero-downtime proof is honest only without the retries that hide a failed request: the
    # lab's load balancers run with HAProxy `retries 0` and no `option redispatch` (the production
    # defaults are 3 and on).
    honest = workdir / "lb-under-test.json"
    honest.write_text(json.dumps({"loadbalancer_retries": 0, "loadbalancer_redispatch": False}))
    env = ["-i", f"inventories/{args.env}", "-e", f"@{honest}"]

    step("placement of every environment (inventories/*/topology.berth.yml)")
    placement_tables()
    step("artifacts: built once per version (catalog, orders and payments, v1 to v6)")
    print(f"done in {playbook('playbooks/build_artifacts.yml'):.1f} s")
    try:
        step(f"provision the {args.env} estate on this machine")
        print(f"provisioned in {playbook(*env, 'playbooks/provision.yml'):.1f} s")
        for service in ("catalog", "orders", "payments"):
            step(f"deploy {service} v1 behind the load balancers")
            seconds = playbook(*env, "playbooks/deploy.yml", "-e", f"service={service}", "-e", "version=v1")
            print(f"deployed in {seconds:.1f} s")

        hostvars = inventory_hostvars(f"inventories/{args.env}")
        lbs = sorted(h for h, v in hostvars.items() if v["berth_role"] == "lb")
        namespace = str(hostvars[lbs[0]]["berth_lab_namespace"])
        port = next(v["berth_port"] for v in hostvars.values() if v.get("berth_service") == "catalog")
        report = workdir / "load.json"
        argv = ["nsenter", f"--net=/run/netns/{namespace}", "/usr/bin/python3", str(LOADGEN)]
        for lb in lbs:
            address = hostvars[lb]["ansible_host"]
            argv += ["--target", f"http://{address}:{port}", "--stats", f"http://{address}:8404/stats"]
        argv += ["--backend", "be_catalog", "--rate", "200", "--slow-rate", "4", "--slow-seconds", "5"]
        step(
            "roll catalog v1 -> v2 while a load generator sends 200 req/s + 4 req/s of 5 s requests "
            "(HAProxy retries 0, no redispatch: every failed request counts)"
        )
        seconds, _seen = under_load(
            argv, report, *env, "playbooks/deploy.yml", "-e", "service=catalog", "-e", "version=v2"
        )
        journal = journal_path(str(hostvars[lbs[0]]["berth_state_dir"]), "catalog")
        step("summary")
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "tools" / "rollout_report.py"),
                str(report),
                str(journal),
                f"{seconds:.2f}",
            ],
            check=True,
        )
        print_report(journal, workdir / "rollout-catalog-v2")

        blue_green(hostvars, namespace, lbs, env, workdir)
        canary(hostvars, namespace, lbs, env, workdir)

        lost = min(h for h, v in hostvars.items() if v.get("berth_service") == "catalog")
        node = str(hostvars[lost]["berth_node"])
        step(f"lose {lost}'s machine ({node}, removed with its disk), then reconcile under the same load")
        playbook(
            "-i", "localhost,", "-c", "local", str(ROOT / "tools" / "lose_machine.yml"), "-e", f"node={node}"
        )
        time.sleep(2)  # both load balancers mark it DOWN (fall 2 x inter 250 ms)
        seconds, seen = under_load(
            argv, workdir / "load-reconcile.json", *env, "playbooks/reconcile.yml", "-e", "service=catalog"
        )
        failed = sum(seen[kind]["non_2xx"] + seen[kind]["errors"] for kind in ("short", "long"))
        sent = sum(seen[kind]["sent"] for kind in ("short", "long"))
        print(f"{lost} recreated, on v2 and back in rotation in {seconds:.1f} s;", end=" ")
        print(f"{sent} requests meanwhile, {failed} failed")
        print_report(journal, workdir / "rollout-catalog-reconcile")
    finally:
        if args.keep:
            step(f"left running: make lab-shell ENV={args.env}; make destroy ENV={args.env} removes it")
        else:
            step(f"destroy the {args.env} estate")
            print(f"destroyed in {playbook(*env, 'playbooks/destroy.yml'):.1f} s")


if __name__ == "__main__":
    main()
