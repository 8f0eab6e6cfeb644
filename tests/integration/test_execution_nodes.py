"""Jobs as AWX runs them, on the execution node of a datacenter: ``ansible-runner transmit`` here, the
stream carried over SSH by paramiko (host key checked strictly against Berth's known_hosts) to
``ansible-runner worker`` on the node, the results read back with ``ansible-runner process``
(tools/remote_job.py). The lab's execution nodes are provisioned by playbooks/provision.yml
(roles/execution_node: ansible-runner and ansible-core from wheels the controller downloaded) and
share the environment's state directory with the controller, as an AWX instance group's jobs share
a persistent volume.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import paramiko
import pytest
from ansible import release as ansible_release

from tests.integration.test_rollout import (
    LB_UNDER_TEST,
    Load,
    RolloutLab,
    assert_no_request_lost,
    provisioned_lab,
)
from tools.remote_job import Node, run_job

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def exec_lab(
    lab_run_id: str, lab_image: dict[str, Any], lab_workdir: Path, lab_metrics: Any
) -> Iterator[RolloutLab]:
    with provisioned_lab("lab", f"x{lab_run_id}", lab_workdir, lab_metrics) as lab:
        yield lab


def test_the_execution_nodes_run_the_controllers_ansible(exec_lab: RolloutLab) -> None:
    for node in ("exec-dc1", "exec-dc2"):
        address = exec_lab.hostvars[node]["ansible_host"]
        seen = exec_lab.ssh.run(
            address,
            "/opt/berth-runner/bin/ansible-runner --version && /opt/berth-runner/bin/ansible --version",
        )
        assert seen.returncode == 0, seen.stderr
        assert f"[core {ansible_release.__version__}]" in seen.stdout, seen.stdout
        assert version("ansible-runner") in seen.stdout.splitlines()[0], seen.stdout


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
    load = Load(lab, "catalog", "exec-job")
    try:
        job = run_job(
            lab.spec,
            "exec-dc1",
            "playbooks/deploy.yml",
            {**LB_UNDER_TEST, "service": "catalog", "version": "v2"},
        )
    finally:
        report = load.stop()
    assert (job.status, job.rc) == ("successful", 0), job.stdout()[-4000:]
    assert any(e.get("event") == "playbook_on_stats" for e in job.events)
    outcome = job.artifacts["berth_outcome"]  # what set_stats published, from the stats event
    assert (outcome["verb"], outcome["service"], outcome["version"], outcome["status"]) == (
        "deploy",
        "catalog",
        "v2",
        "complete",
    ), outcome
    assert outcome["batches"] == {"planned": 4, "done": 4} and outcome["failures"] == []
    assert_no_request_lost(report)
    assert set(lab.versions("catalog").values()) == {"v2"}
    assert lab.journal("catalog")["status"] == "complete"  # the controller reads what the node wrote
    lab_metrics.add(
        f"deploy as a job on exec-dc1 (transmit {job.seconds['transmit']} s, worker {job.seconds['worker']} s, "
        f"process {job.seconds['process']} s) under load: {report['short']['sent']} requests, 0 failed"
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
