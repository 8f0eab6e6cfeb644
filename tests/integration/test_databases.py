"""Databases per service on the shared lab (issue 14), for real: PostgreSQL 15 run by Patroni with
etcd as its store, in nspawn machines of their own, fronted by HAProxy's TCP endpoints.

The lab (inventories/lab) gives orders a cluster of its own (a primary and 2 replicas across the
DCs, synchronous) and catalog a database on the shared cluster (1 member). Every load runs through
the services' own frontends (tools/dbload.py inside the lab namespace, an independent process):
user -> HAProxy (retries 0, no redispatch) -> instance -> HAProxy's database endpoint -> PostgreSQL.
The sample service tries a read again on a new connection when its connection broke (up to 4
times over ~3 s; a read changes nothing); it never tries a write again.

Runs last on the shared lab's lane: the kill test restores the cluster (provision restarts the
machine, Patroni rejoins it as a replica), and the module leaves every cluster whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.lab import MACHINES_DIR, PROVISION, ROLLBACK, ROOT, PlaybookRun, run_playbook
from tests.integration.test_rollout import RolloutLab, assert_no_request_lost

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, nspawn)"),
]

DBLOAD = ROOT / "tools" / "dbload.py"
MIGRATE = ROOT / "playbooks" / "migrate.yml"
RUNS: list[PlaybookRun] = []  # every playbook run of this module: no password may be in any


@pytest.fixture(scope="module")
def lab(shared_lab: RolloutLab) -> RolloutLab:
    """The shared lab with orders serving (the blue-green module deploys it; alone, this does)."""
    if set(shared_lab.versions("orders").values()) == {"down"}:
        first = shared_lab.deploy("-e", "service=orders", "-e", "version=v1")
        RUNS.append(first)
        assert first.returncode == 0, first.output[-6000:]
    return shared_lab


def members(lab: RolloutLab, cluster: str) -> list[str]:
    return sorted(h for h, v in lab.hostvars.items() if v.get("berth_cluster") == cluster)


def address(lab: RolloutLab, host: str) -> str:
    return str(lab.hostvars[host]["ansible_host"])


def patroni(lab: RolloutLab, cluster: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """GET /cluster from the first member that answers."""
    for host in members(lab, cluster):
        if host not in skip:
            found = lab.get(f"http://{address(lab, host)}:8008/cluster")
            if found:
                return found
    return {}


def roles(view: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {m["name"]: (m["role"], m["state"]) for m in view.get("members", [])}


def leader(view: dict[str, Any]) -> str:
    return next(
        (m["name"] for m in view.get("members", []) if m["role"] == "leader" and m["state"] == "running"), ""
    )


def wait_for(what: str, probe: Any, timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"after {timeout:g} s still waiting for {what}"
        time.sleep(interval)


def whole(lab: RolloutLab, cluster: str, count: int) -> bool:
    view = patroni(lab, cluster)
    states = roles(view)
    return (
        len(states) == count
        and bool(leader(view))
        and all(role_state[1] == "running" for role_state in states.values())
        and all(m.get("lag") == 0 for m in view["members"] if m["role"] != "leader")
    )


def frontends(lab: RolloutLab, service: str) -> list[str]:
    port = lab.hostvars[lab.instances(service)[0]]["berth_port"]
    return [f"http://{address(lab, lb)}:{port}" for lb in lab.lbs]


class DbLoad:
    """tools/dbload.py as a process of its own inside the lab namespace (its PID is the load's)."""

    def __init__(self, lab: RolloutLab, service: str, mode: str, prefix: str, rate: int, *extra: str) -> None:
        self.out = lab.workdir / f"dbload-{prefix}.json"
        argv = ["nsenter", f"--net=/run/netns/{lab.namespace}", "/usr/bin/python3", str(DBLOAD)]
        for target in frontends(lab, service):
            argv += ["--target", target]
        argv += ["--mode", mode, "--prefix", prefix, "--rate", str(rate), "--out", str(self.out), *extra]
        self.process = subprocess.Popen(argv)

    def stop(self) -> dict[str, Any]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=120)
        assert self.process.returncode == 0, "the database load generator crashed"
        return dict(json.loads(self.out.read_text()))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def put(lab: RolloutLab, url: str, value: str) -> dict[str, Any]:
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{lab.namespace}", "curl", "-s", "-X", "PUT", "--data", value, url],
        capture_output=True,
        text=True,
        check=False,
    )
    return dict(json.loads(out.stdout)) if out.returncode == 0 and out.stdout else {}


def seed(lab: RolloutLab, service: str, prefix: str, count: int) -> None:
    for n in range(count):
        answer = put(lab, f"{frontends(lab, service)[0]}/db/items/{prefix}-{n}", f"value {n}")
        assert answer.get("stored"), answer


def passwords(lab: RolloutLab) -> dict[str, str]:
    folder = lab.workdir / "state" / lab.environment / "db-passwords"
    return {path.name: path.read_text().strip() for path in sorted(folder.iterdir())}


def psql(
    lab: RolloutLab,
    node: str,
    dsn: str,
    password: str,
    query: str = "SELECT current_user, current_database()",
) -> subprocess.CompletedProcess[str]:
    """psql on a lab node (the client of postgresql-15 in the base image), one query."""
    return lab.ssh.run(
        address(lab, node), f"PGPASSWORD='{password}' PGCONNECT_TIMEOUT=5 psql '{dsn}' -tAc \"{query}\""
    )


def test_each_cluster_is_whole_and_each_service_writes_to_its_primary_and_reads_from_its_replicas(
    lab: RolloutLab, lab_metrics: Any
) -> None:
    orders = patroni(lab, "orders-db")
    states = roles(orders)
    assert sorted(states) == members(lab, "orders-db") and len(states) == 3, states
    assert [role_state[0] for role_state in states.values()].count("leader") == 1
    # synchronous: the cluster has 3 members, one replica confirms every commit
    assert "sync_standby" in [role_state[0] for role_state in states.values()], states
    assert whole(lab, "orders-db", 3) and whole(lab, "shared-db", 1)
    primary = address(lab, leader(orders))
    replicas = {address(lab, m["name"]) for m in orders["members"] if m["role"] != "leader"}

    seed(lab, "orders", "whole", 10)
    read = DbLoad(lab, "orders", "read", "whole", 50, "--keys", "10")
    time.sleep(3)
    report = read.stop()
    assert report["failed"] == 0 and report["ok"] > 50, report
    assert set(report["servers"]) == replicas, report["servers"]  # reads: the replicas, balanced
    written = put(lab, f"{frontends(lab, 'orders')[1]}/db/items/whole-x", "x")
    assert written["server"] == primary, written  # writes: the primary, from either DC's LB
    shared = address(lab, members(lab, "shared-db")[0])
    catalog = put(lab, f"{frontends(lab, 'catalog')[0]}/db/items/whole-c", "c")
    assert catalog["server"] == shared, catalog  # catalog's database is on the shared cluster
    lab_metrics.add(
        f"databases: orders-db {', '.join(f'{n} {rs[0]}' for n, rs in sorted(states.items()))}; "
        f"{report['ok']} reads from its replicas, 0 failed"
    )


def test_a_service_cannot_log_in_to_another_services_database(lab: RolloutLab) -> None:
    secrets = passwords(lab)
    lb = address(lab, "lb-dc1")
    endpoints = {e["cluster"]: e for e in lab.hostvars["lb-dc1"]["berth_db_endpoints"]}
    orders_write = endpoints["orders-db"]["write_port"]
    shared_write = endpoints["shared-db"]["write_port"]
    orders_node, catalog_node = lab.instances("orders")[0], lab.instances("catalog")[0]
    # each owner gets in to its own database (the control that the attempts below could succeed)
    own = psql(
        lab, orders_node, f"host={lb} port={orders_write} dbname=orders user=orders", secrets["orders"]
    )
    assert own.returncode == 0 and own.stdout.strip() == "orders|orders", own.stderr
    own = psql(
        lab, catalog_node, f"host={lb} port={shared_write} dbname=catalog user=catalog", secrets["catalog"]
    )
    assert own.returncode == 0 and own.stdout.strip() == "catalog|catalog", own.stderr
    # catalog's role on orders' cluster: orders' pg_hba has no line for it
    refused = psql(
        lab, catalog_node, f"host={lb} port={orders_write} dbname=orders user=catalog", secrets["catalog"]
    )
    assert refused.returncode != 0 and "no pg_hba.conf entry" in refused.stderr, refused.stderr
    # orders' role on the shared cluster, for catalog's database: no line either
    refused = psql(
        lab, orders_node, f"host={lb} port={shared_write} dbname=catalog user=orders", secrets["orders"]
    )
    assert refused.returncode != 0 and "no pg_hba.conf entry" in refused.stderr, refused.stderr
    # the right role with the wrong password
    wrong = psql(
        lab, orders_node, f"host={lb} port={orders_write} dbname=orders user=orders", secrets["catalog"]
    )
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr, wrong.stderr


def lb_status(lab: RolloutLab, listen: str, server: str) -> set[str]:
    """What every LB's stats say of a server of a database endpoint (UP, DOWN, ...)."""
    seen = set()
    for lb in lab.lbs:
        csv_text = lab.fetch(f"http://{address(lab, lb)}:8404/stats;csv") or ""
        for line in csv_text.splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == listen and fields[1] == server:
                seen.add(fields[17].split(" ")[0])
    return seen


def test_a_replica_stopped_under_read_load_leaves_the_read_pool_and_no_read_fails(
    lab: RolloutLab, lab_metrics: Any
) -> None:
    view = patroni(lab, "orders-db")
    replica = sorted(m["name"] for m in view["members"] if m["role"] != "leader")[0]
    seed(lab, "orders", "stop", 20)
    load = DbLoad(lab, "orders", "read", "stop", 100, "--keys", "20")
    try:
        time.sleep(3)
        stopped_at = time.monotonic()
        stop = lab.ssh.run(address(lab, replica), "systemctl stop patroni")
        assert stop.returncode == 0, stop.stderr
        stop_seconds = time.monotonic() - stopped_at
        wait_for(
            f"every LB to mark {replica} down",
            lambda: lb_status(lab, "db_orders_db_read", replica) == {"DOWN"},
            30,
        )
        dropped = time.monotonic() - stopped_at
        time.sleep(3)
    finally:
        report = load.stop()
    assert report["failed"] == 0, report["samples"]
    assert report["ok"] > 500, report
    try:
        assert lb_status(lab, "db_orders_db_write", replica) == {"DOWN"}  # it never was the primary
    finally:
        start = lab.ssh.run(address(lab, replica), "systemctl start patroni")
        assert start.returncode == 0, start.stderr
        wait_for("orders-db whole again", lambda: whole(lab, "orders-db", 3), 120)
        wait_for(
            f"every LB to take {replica} back",
            lambda: lb_status(lab, "db_orders_db_read", replica) == {"UP"},
            30,
        )
    lab_metrics.add(
        f"databases: replica {replica} stopped under {report['ok']} reads ({report['sent'] / report['seconds']:.0f}/s): "
        f"0 failed; stop took {stop_seconds:.1f} s, both LBs marked it down {dropped:.1f} s after the stop began"
    )


def machine_processes(node: str) -> list[int]:
    """Every process of a lab machine (its systemd cgroup, recursively): killing them all at once is
    the machine dying (no shutdown, no Patroni releasing its leader key)."""
    state = json.loads((MACHINES_DIR / node / "state.json").read_text())
    root = Path(state["cgroups"]["systemd"])
    pids = set()
    for procs in root.rglob("cgroup.procs"):
        pids |= {int(pid) for pid in procs.read_text().split()}
    return sorted(pids)


def test_the_primary_killed_under_write_load_fails_over_and_loses_no_acknowledged_write(
    lab: RolloutLab, lab_metrics: Any
) -> None:
    old = leader(patroni(lab, "orders-db"))
    assert old, "orders-db has no leader"
    node = lab.hostvars[old]["berth_node"]
    load = DbLoad(lab, "orders", "write", "kill", 50, "--verify")
    try:
        time.sleep(4)
        pids = machine_processes(node)
        assert pids, f"{node} has no processes"
        killed_at = time.monotonic()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # one that ended meanwhile
                os.kill(pid, signal.SIGKILL)
        # the others report the old leader until its key expires (ttl): wait for another one
        new = wait_for(
            "a new leader",
            lambda: (found := leader(patroni(lab, "orders-db", skip=(old,)))) != old and found,
            90,
        )
        promoted = time.monotonic() - killed_at
        time.sleep(5)  # writes resume through the LBs' checks of the new primary
    except BaseException:
        load.kill()
        raise
    report = load.stop()
    assert new != old
    verify = report["verify"]
    assert verify["checked"] == report["acked"] > 0
    assert verify["missing"] == [] and verify["unverified"] == [], verify  # no acknowledged write lost
    assert report["failed"] > 0  # the outage was real: writes failed while nothing was primary
    gap = report["longest_gap"]
    assert gap["seconds"] < 60, gap
    assert report["last_failure"] < report["seconds"] - 3, report  # writes came back, and stayed
    lab_metrics.add(
        f"databases: primary {old} killed under {report['sent']} writes (50/s): {new} promoted after "
        f"{promoted:.1f} s; writes stopped for {gap['seconds']:.1f} s; {report['acked']} acknowledged, "
        f"0 lost; {report['failed']} failed while nothing was primary"
    )
    # the machine comes back with provision; Patroni rejoins it as a replica of the new primary
    again = run_playbook(PROVISION, str(lab.spec))
    RUNS.append(again)
    assert again.returncode == 0, again.output[-4000:]
    wait_for("orders-db whole with its 3 members", lambda: whole(lab, "orders-db", 3), 120)
    assert roles(patroni(lab, "orders-db"))[old][0] != "leader"


def test_no_password_reaches_any_log(lab: RolloutLab) -> None:
    """Every playbook output of this module, a check-mode deploy and provision at -vvv with --diff,
    the lab's state directory and the database members' journals: none holds a password."""
    (serving,) = set(lab.versions("catalog").values())
    deploy = ("-e", "service=catalog", "-e", f"version={'v2' if serving == 'v1' else 'v1'}")
    for playbook, args in ((PROVISION, ()), (ROOT / "playbooks" / "deploy.yml", deploy)):
        # check mode: the deploy of another version shows every file it would change, as a diff
        looked = run_playbook(playbook, str(lab.spec), "--check", "--diff", "-vvv", *args)
        RUNS.append(looked)
        assert looked.returncode == 0, looked.output[-4000:]
    secrets = passwords(lab)
    assert len(secrets) >= 6 and all(len(value) >= 12 for value in secrets.values())
    texts: dict[str, str] = {f"run {n}": run.output for n, run in enumerate(RUNS)}
    state = lab.workdir / "state" / lab.environment
    for path in state.rglob("*"):
        if path.is_file() and "db-passwords" not in path.parts and path.stat().st_size < 50 << 20:
            texts[str(path)] = path.read_text(errors="replace")
    for host, host_vars in lab.hostvars.items():
        if host_vars.get("berth_role") in ("database", "dcs"):
            journal = lab.ssh.run(address(lab, host), "journalctl --no-pager -q -o cat")
            assert journal.returncode == 0, journal.stderr
            texts[f"{host} journal"] = journal.stdout
    leaks = [
        (name, where) for name, value in secrets.items() for where, text in texts.items() if value in text
    ]
    assert leaks == [], leaks
    assert len(texts) > 10


def ledger(lab: RolloutLab, service: str) -> list[str]:
    """The ids in the service's migration ledger, read by psql as its owner on the primary."""
    db = lab.hostvars[lab.instances(service)[0]]["berth_database"]
    hosts = ",".join(db["members"])
    shown = psql(
        lab,
        lab.instances(service)[0],
        f"host={hosts} port={db['member_port']} dbname={db['name']} user={db['role']} target_session_attrs=read-write",
        passwords(lab)[db["role"]],
        "SELECT string_agg(id || ':' || phase || ':' || version, ' ' ORDER BY id) FROM berth_migrations",
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout.split()


def test_a_rolling_upgrade_with_an_expand_migration_under_load_then_contract_once_nothing_older_serves(
    lab: RolloutLab, lab_metrics: Any
) -> None:
    if set(lab.versions("catalog").values()) != {"v1"}:
        back = lab.deploy("-e", "service=catalog", "-e", "version=v1")
        RUNS.append(back)
        assert back.returncode == 0, back.output[-4000:]
    # a contract while v1 serves everywhere is refused, naming who, and touches nothing
    early = lab.deploy("-e", "service=catalog", "-e", "version=v2", playbook=MIGRATE)
    RUNS.append(early)
    assert early.returncode != 0
    said = " ".join(early.output.split())
    assert "contract of v2 refused: an instance of another version is still in rotation" in said, said[-3000:]
    assert "catalog-1 (v1) on lb-dc1, lb-dc2" in said
    assert not [row for row in ledger(lab, "catalog") if row.startswith("003_")]

    # modules before may have rolled catalog to v2 already (its expand then ran with them)
    expanded_before = any(row.startswith("002_items_note:") for row in ledger(lab, "catalog"))
    writes = DbLoad(lab, "catalog", "write", "expand", 30)
    run, report = lab.deploy_under_load("expand", "-e", "service=catalog", "-e", "version=v2")
    written = writes.stop()
    RUNS.append(run)
    assert run.returncode == 0, run.output[-6000:]
    assert_no_request_lost(report)
    assert written["failed"] == 0, written["samples"]  # v1 and v2 both wrote while it rolled
    expected = "nothing to run, the ledger has every one" if expanded_before else "ran 002_items_note"
    assert f"expand of v2: {expected}" in " ".join(run.output.split())
    rows = ledger(lab, "catalog")
    assert [r for r in rows if r.startswith("001_items:expand:")] and "002_items_note:expand:v2" in rows, rows
    assert lab.journal("catalog")["migrations"]["phase"] == "expanded"
    # the same deploy again: nothing to run
    again = lab.deploy("-e", "service=catalog", "-e", "version=v2")
    RUNS.append(again)
    assert again.returncode == 0 and "nothing to run, the ledger has every one" in " ".join(
        again.output.split()
    )

    contract = lab.deploy("-e", "service=catalog", "-e", "version=v2", playbook=MIGRATE)
    RUNS.append(contract)
    assert contract.returncode == 0, contract.output[-4000:]
    assert "contract of v2: ran 003_items_note_required" in " ".join(contract.output.split())
    assert "003_items_note_required:contract:v2" in ledger(lab, "catalog")
    journal = lab.journal("catalog")
    assert (
        journal["migrations"]["phase"] == "contracted"
        and journal["migrations"]["contract"]["version"] == "v2"
    )

    # after the contract: rollback to v1 (which writes no note) is refused, and so is a deploy of v1
    refused = lab.deploy(playbook=ROLLBACK, **{"service": "catalog"})
    RUNS.append(refused)
    assert refused.returncode != 0
    said = " ".join(refused.output.split())
    assert "rollback of v1 refused: contract migration(s) 003_items_note_required (run by v2" in said, said[
        -3000:
    ]
    assert set(lab.versions("catalog").values()) == {"v2"}  # nothing was touched
    lab_metrics.add(
        f"databases: catalog v1 -> v2 with expand 002 under load: {report['short']['sent']} requests and "
        f"{written['ok']} writes, 0 failed; contract refused while v1 served, ran after; rollback refused"
    )


def start_times(lab: RolloutLab) -> dict[str, str]:
    """When each PostgreSQL (Patroni's view) and each etcd started: a restart changes them."""
    found = {}
    for host, host_vars in sorted(lab.hostvars.items()):
        if host_vars.get("berth_role") == "database":
            found[host] = str(
                lab.get(f"http://{address(lab, host)}:8008/patroni").get("postmaster_start_time")
            )
        elif host_vars.get("berth_role") == "dcs":
            shown = lab.ssh.run(address(lab, host), "systemctl show -p ActiveEnterTimestampMonotonic etcd")
            found[host] = shown.stdout.strip()
    assert all(value and value != "None" for value in found.values()), found
    return found


def test_provision_and_deploy_again_change_nothing_and_restart_no_database(lab: RolloutLab) -> None:
    before = start_times(lab)
    again = run_playbook(PROVISION, str(lab.spec))
    RUNS.append(again)
    assert again.returncode == 0, again.output[-4000:]
    assert again.changed == 0, again.recaps
    (serving,) = set(lab.versions("catalog").values())  # what the modules before left running
    deploy = lab.deploy("-e", "service=catalog", "-e", f"version={serving}")
    RUNS.append(deploy)
    assert deploy.returncode == 0, deploy.output[-4000:]
    assert deploy.changed == 0, deploy.recaps
    assert start_times(lab) == before
    # the runs since the password test (the migrations', these): no password in them either
    secrets = passwords(lab)
    assert [(n, i) for n, v in secrets.items() for i, run in enumerate(RUNS) if v in run.output] == []


@pytest.fixture(autouse=True, scope="module")
def _clusters_left_whole(lab: RolloutLab) -> Iterator[None]:
    yield
    # whatever failed above, the next user of the lab finds every cluster whole (or is told why not):
    # a machine a failed test left dead comes back with provision
    if not whole(lab, "orders-db", 3):
        again = run_playbook(PROVISION, str(lab.spec))
        assert again.returncode == 0, again.output[-4000:]
    wait_for("orders-db whole at the end", lambda: whole(lab, "orders-db", 3), 120)
