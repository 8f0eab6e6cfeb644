"""Jobs as AWX runs them, on the execution node of a datacenter: ``ansible-runner transmit`` here, the
stream carried over SSH by paramiko (host key checked strictly against Berth's known_hosts) to
``ansible-runner worker`` on the node, the results read back with ``ansible-runner process``
(tools/remote_job.py). The lab's execution nodes are provisioned by playbooks/provision.yml
(roles/execution_node: ansible-runner and ansible-core from wheels the controller downloaded) and
share the environment's state directory with the controller, as an AWX instance group's jobs share
a persistent volume. On the lab test_rollout.py rolled catalog on before (conftest ``shared_lab``).
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

import paramiko
import pytest
from ansible import release as ansible_release

from tests.integration.test_rollout import (
    LB_UNDER_TEST,
    RECONCILE,
    Load,
    RolloutLab,
    assert_no_request_lost,
    lb_sees,
)
from tools.remote_job import Node, run_job

pytestmark = [pytest.mark.integration]


@pytest.fixture
def exec_lab(shared_lab: RolloutLab) -> RolloutLab:
    return shared_lab


def test_the_execution_nodes_run_the_controllers_ansible(exec_lab: RolloutLab) -> None:
    for node in ("exec-dc1", "exec-dc2"):
        address = exec_lab.hostvars[node]["ansible_host"]
        seen = exec_lab.ssh.run(
            address,
            "/opt/berth-runner/bin/ansible-runner --version && /opt/berth-runner/bin/ansible --version"
            " && /opt/berth-runner/bin/python -c 'import plotly; print(\"plotly\", plotly.__version__)'",
        )
        assert seen.returncode == 0, seen.stderr
        assert f"[core {ansible_release.__version__}]" in seen.stdout, seen.stdout
        assert version("ansible-runner") in seen.stdout.splitlines()[0], seen.stdout
        assert f"plotly {version('plotly')}" in seen.stdout, seen.stdout


def test_the_ssh_hop_refuses_a_node_whose_host_key_is_not_berths(
    exec_lab: RolloutLab, tmp_path: Path
) -> None:
    node = Node.from_hostvars("exec-dc1", exec_lab.hostvars["exec-dc1"])
    stranger = tmp_path / "known_hosts"
    key = paramiko.Ed25519Key.from_private_key_file(
        str(Path(node.key_file))
    )  # any key that is not the node's
    stranger.write_text(f"{node.address} {key.get_name()} {key.get_base64()}\n")
    forged = Node(node.name, node.address, node.user, node.key_file, str(stranger), node.proxy_command)
    with pytest.raises(paramiko.SSHException):
        forged.connect().close()


def test_a_rollout_runs_as_a_job_on_an_execution_node_under_load(
    exec_lab: RolloutLab, lab_metrics: Any
) -> None:
    lab = exec_lab
    now = set(lab.versions("catalog").values())
    assert len(now) == 1, now  # what test_rollout left: one version everywhere
    target = "v1" if now == {"v2"} else "v2"
    load = Load(lab, "catalog", "exec-job")
    try:
        job = run_job(
            lab.spec,
            "exec-dc1",
            "playbooks/deploy.yml",
            {**LB_UNDER_TEST, "service": "catalog", "version": target},
        )
    finally:
        report = load.stop()
    assert (job.status, job.rc) == ("successful", 0), job.stdout()[-4000:]
    assert any(e.get("event") == "playbook_on_stats" for e in job.events)
    outcome = job.artifacts["berth_outcome"]  # what set_stats published, from the stats event
    assert (outcome["verb"], outcome["service"], outcome["version"], outcome["status"]) == (
        "deploy",
        "catalog",
        target,
        "complete",
    ), outcome
    assert outcome["batches"] == {"planned": 4, "done": 4} and outcome["failures"] == []
    assert_no_request_lost(report)
    assert set(lab.versions("catalog").values()) == {target}
    assert lab.journal("catalog")["status"] == "complete"  # the controller reads what the node wrote
    lab_metrics.add(
        f"deploy as a job on exec-dc1 (transmit {job.seconds['transmit']} s, worker {job.seconds['worker']} s, "
        f"process {job.seconds['process']} s) under load: {report['short']['sent']} requests, 0 failed"
    )


def test_each_datacenter_reconciles_as_a_job_on_its_own_execution_node_at_the_same_time(
    exec_lab: RolloutLab, lab_metrics: Any
) -> None:
    """One instance of catalog fails in each DC; two reconcile jobs, one per DC's execution node,
    each scoped to its DC (``datacenter``), run at once under load and repair them, each recording
    its run in a journal of its own; the service's journal (what rollback and reconcile read) is
    left as it was."""
    lab = exec_lab
    before = lab.journal("catalog")
    target = before["target"]
    assert before["status"] == "complete" and set(lab.versions("catalog").values()) == {target}
    broken = {
        dc: next(name for name in lab.instances("catalog") if lab.hostvars[name]["berth_dc"] == dc)
        for dc in ("dc1", "dc2")
    }
    for name in broken.values():
        stopped = lab.ssh.run(lab.hostvars[name]["ansible_host"], f"systemctl stop berth-{name}.service")
        assert stopped.returncode == 0, stopped.stderr
    deadline = time.monotonic() + 30
    while any(lb_sees(lab, name) != {"DOWN"} for name in broken.values()):
        assert time.monotonic() < deadline, f"the LBs never saw {sorted(broken.values())} DOWN"
        time.sleep(0.5)

    spans: dict[str, tuple[float, float]] = {}

    def reconcile(dc: str) -> Any:
        started = time.time()
        job = run_job(
            lab.spec,
            f"exec-{dc}",
            "playbooks/reconcile.yml",
            {**LB_UNDER_TEST, "service": "catalog", "datacenter": dc},
        )
        spans[dc] = (started, time.time())
        return job

    load = Load(lab, "catalog", "dc-jobs")
    try:
        with ThreadPoolExecutor(2) as pool:
            jobs = dict(zip(broken, pool.map(reconcile, broken), strict=True))
    finally:
        report = load.stop()
    rollouts = lab.workdir / "state" / lab.environment / "rollouts"
    runs: dict[str, list[float]] = {}
    for dc, job in jobs.items():
        assert (job.status, job.rc) == ("successful", 0), (dc, job.stdout()[-4000:])
        said = job.stdout()
        assert f"catalog -> {target}: 1 batch(es) {json.dumps([[broken[dc]]])} (repair:" in said, said[-4000:]
        assert "made on the lab host, so here only their SSH is checked" in said
        outcome = job.artifacts["berth_outcome"]
        assert (outcome["verb"], outcome["status"], outcome["version"]) == ("reconcile", "complete", target)
        assert outcome["journal"].endswith(f"rollouts/catalog@{dc}.json"), outcome
        assert outcome["batches"] == {"planned": 1, "done": 1}
        scoped = json.loads((rollouts / f"catalog@{dc}.json").read_text())
        assert scoped["status"] == "complete" and scoped["plan"] == [[broken[dc]]]
        runs[dc] = sorted(
            event["started"]
            for step in scoped["run"]["events"].values()
            for kind in step.values()
            for event in kind.values()
        )
        # its report beside it, the page drawn on the node (plotly is in the node's environment)
        report_data = json.loads((rollouts / f"catalog@{dc}.report.json").read_text())
        # every read taken; on 2 cores busy with two jobs, their samplers and the other test lane, a
        # read may come late (a gap over twice the 0.2 s interval is a warning): none over 1 s
        late = [
            re.fullmatch(r"lb-dc\d: no good read for (\d+\.\d+) s before \d+\.\d+ s", w)
            for w in report_data["warnings"]
        ]
        assert all(m is not None and float(m.group(1)) < 1.0 for m in late), report_data["warnings"]
        assert (rollouts / f"catalog@{dc}.report.html").stat().st_size > 1_000_000
    # the two jobs ran at the same time, each on its own node
    assert spans["dc1"][0] < spans["dc2"][1] and spans["dc2"][0] < spans["dc1"][1], spans
    assert_no_request_lost(report)
    assert set(lab.versions("catalog").values()) == {target}
    assert all(lb_sees(lab, name) == {"UP"} for name in broken.values())
    assert lab.journal("catalog") == before  # a repair in a DC never changes where the service stands
    overlap = min(runs["dc1"][-1], runs["dc2"][-1]) - max(runs["dc1"][0], runs["dc2"][0])
    lab_metrics.add(
        "reconcile of dc1 and dc2 as two jobs at once on exec-dc1 and exec-dc2: "
        + ", ".join(f"{dc} worker {job.seconds['worker']} s" for dc, job in jobs.items())
        + f"; their rollout steps overlapped {overlap:.1f} s; {report['short']['sent']} requests, 0 failed"
    )


def test_a_scoped_reconcile_refuses_to_roll_a_serving_instance_and_touches_nothing(
    exec_lab: RolloutLab,
) -> None:
    lab = exec_lab
    before = lab.journal("catalog")
    other = "v1" if before["target"] == "v2" else "v2"
    # the service's journal says the estate converges to ``other`` in dc1: a serving instance there
    # would have to be rolled, which costs the service's (one, shared) budget
    refused = lab.deploy(
        "-e",
        "service=catalog",
        "-e",
        "datacenter=dc1",
        "-e",
        f"version={other}",
        "-e",
        "berth_verb=reconcile",
    )
    assert refused.returncode != 0
    assert "in rotation on every load balancer but not on" in " ".join(refused.output.split())
    assert "PLAY [Deploy | install" not in refused.output.split("one budget")[-1]
    assert lab.journal("catalog") == before
    deploy_scoped = lab.deploy("-e", "service=catalog", "-e", "datacenter=dc1")
    assert deploy_scoped.returncode != 0
    assert "only reconcile runs per datacenter" in " ".join(deploy_scoped.output.split())
    unknown = lab.deploy("-e", "service=catalog", "-e", "datacenter=dc9", playbook=RECONCILE)
    assert unknown.returncode != 0
    assert "datacenter: dc9 is not a datacenter of this environment (it has dc1, dc2)" in " ".join(
        unknown.output.split()
    )


def test_a_refused_answer_reaches_the_jobs_events_as_a_failed_task(exec_lab: RolloutLab) -> None:
    job = run_job(
        exec_lab.spec, "exec-dc2", "playbooks/deploy.yml", {"service": "catalog", "version": "v2 beta"}
    )
    assert (job.status, job.rc) != ("successful", 0)
    failed = job.failed_tasks()
    assert failed and all(e["event_data"]["host"] == "localhost" for e in failed)  # refused before any host
    said = " ".join(str(e["event_data"]["res"].get("msg", "")) for e in failed)
    assert "v2 beta" in said, said
