"""Zero-downtime rolling upgrades on the lab estate, proven under load.

The module provisions the lab topology (2 DCs, catalog and orders x 4, one HAProxy per DC) under a
per-run environment, deploys catalog v1, then drives playbooks/deploy.yml and rollback.yml while an
independent load generator (tools/loadgen.py, started here inside the lab namespace)
sends >= 200 short requests/s plus 4 requests/s of /slow?s=5 through both load balancers and
samples what each of them sees every 0.2 s. HAProxy runs with `retries 0` and no redispatch, so a
request that hits a stopping instance fails visibly instead of being retried elsewhere.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from ansible_collections.berth.fleet.plugins.module_utils.model.nodes import nodes
from tests.integration.lab import (
    BIN,
    DEPLOY,
    MACHINES_DIR,
    PROVISION,
    ROLLBACK,
    ROOT,
    LabSsh,
    PlaybookRun,
    destroyed_afterwards,
    inventory_hostvars,
    lab_spec,
    local_play,
    run_playbook,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, nspawn)"),
]

LOADGEN = ROOT / "tools" / "loadgen.py"
ARTIFACTS = Path("/var/lib/berth/artifacts")
# the zero-downtime proof runs without the retries that would hide a broken rollout
LB_UNDER_TEST = {"loadbalancer_retries": 0, "loadbalancer_redispatch": False}
COUNTERS = ("hrsp_5xx", "econ", "eresp", "wretr", "wredis")


@dataclass
class RolloutLab:
    environment: str
    spec: Path
    workdir: Path
    hostvars: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return f"berth-{self.environment}"

    @property
    def lbs(self) -> list[str]:
        return sorted(h for h, v in self.hostvars.items() if v["berth_role"] == "lb")

    def instances(self, service: str) -> list[str]:
        return sorted(h for h, v in self.hostvars.items() if v.get("berth_service") == service)

    def deploy(self, *args: str, playbook: Path = DEPLOY, **extra: Any) -> PlaybookRun:
        variables = self.workdir / f"vars-{time.monotonic_ns()}.json"
        variables.write_text(json.dumps({**LB_UNDER_TEST, **extra}))
        return run_playbook(playbook, str(self.spec), "-e", f"@{variables}", *args)

    def deploy_under_load(
        self, name: str, *args: str, settle: float = 3, service: str = "catalog", **extra: Any
    ) -> tuple[PlaybookRun, dict[str, Any]]:
        """A playbook run while the load generator runs (started ``settle`` s before, so that long
        requests are in flight, and stopped 1 s after); the run and what the load saw."""
        load = Load(self, service, name)
        try:
            time.sleep(settle)
            run = self.deploy(*args, **extra)
            time.sleep(1)
        finally:
            report = load.stop()
        return run, report

    def fetch(self, url: str) -> str | None:
        """GET from inside the lab namespace: the body, or None when nothing answers."""
        out = subprocess.run(
            [
                "nsenter",
                f"--net=/run/netns/{self.namespace}",
                "/usr/bin/python3",
                "-c",
                f"import urllib.request,sys; sys.stdout.write(urllib.request.urlopen({url!r}, timeout=5).read().decode())",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout if out.returncode == 0 else None

    def get(self, url: str) -> dict[str, Any]:
        """A JSON GET from inside the lab namespace; {} when nothing answers (an instance being restarted)."""
        body = self.fetch(url)
        return dict(json.loads(body)) if body is not None else {}

    def versions(self, service: str) -> dict[str, str]:
        return {
            host: self.get(
                f"http://{self.hostvars[host]['ansible_host']}:{self.hostvars[host]['berth_port']}/"
            ).get("version", "down")
            for host in self.instances(service)
        }

    @property
    def ssh(self) -> LabSsh:
        env_dir = self.workdir / "state" / self.environment
        return LabSsh(self.namespace, env_dir / "id_ed25519", env_dir / "known_hosts")

    def journal(self, service: str) -> dict[str, Any]:
        return dict(
            json.loads(
                (self.workdir / "state" / self.environment / "rollouts" / f"{service}.json").read_text()
            )
        )


class Load:
    """The load generator as a separate process inside the lab namespace."""

    def __init__(self, lab: RolloutLab, service: str, name: str) -> None:
        port = lab.hostvars[lab.instances(service)[0]]["berth_port"]
        self.report_path = lab.workdir / f"load-{name}.json"
        argv = ["nsenter", f"--net=/run/netns/{lab.namespace}", "/usr/bin/python3", str(LOADGEN)]
        for lb in lab.lbs:
            address = lab.hostvars[lb]["ansible_host"]
            argv += ["--target", f"http://{address}:{port}", "--stats", f"http://{address}:8404/stats"]
        colours = lab.hostvars[lab.instances(service)[0]]["berth_service_spec"].get("colours") or {}
        for backend in [body["backend"] for body in colours.values()] or [f"be_{service}"]:
            argv += ["--backend", backend]  # a blue-green service: both colours
        argv += ["--rate", "200", "--slow-rate", "4", "--slow-seconds", "5"]
        argv += ["--out", str(self.report_path)]
        # nsenter execs the generator: this PID is the generator's own
        self.process = subprocess.Popen(argv)

    def stop(self) -> dict[str, Any]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        assert self.process.returncode == 0, "the load generator crashed"
        return dict(json.loads(self.report_path.read_text()))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def provisioned_lab(
    shape: str, environment: str, lab_workdir: Path, lab_metrics: Any
) -> Iterator[RolloutLab]:
    """A lab of the shipped ``shape`` with catalog v1 deployed (a first deploy), destroyed afterwards."""
    workdir = lab_workdir / f"rollout-{shape}-{environment}"  # one per lab: two modules may use one shape
    workdir.mkdir()
    spec = lab_spec(workdir / f"{environment}.berth.yml", environment, workdir / "state", shape)
    lab = RolloutLab(environment, spec, workdir)
    lab.hostvars = inventory_hostvars(lab.spec)
    machines = [n["name"] for n in nodes(lab.hostvars, sorted(lab.hostvars))]
    with destroyed_afterwards(lab.spec, lab.namespace, machines=lambda: machines):
        built = run_playbook(ROOT / "playbooks" / "build_artifacts.yml", "localhost,")
        assert built.returncode == 0, built.output[-3000:]
        up = run_playbook(PROVISION, str(lab.spec))
        assert up.returncode == 0, up.output[-4000:]
        first = lab.deploy("-e", "service=catalog")
        assert first.returncode == 0, first.output[-6000:]
        assert "(first deploy: nothing serving yet)" in " ".join(first.output.split())  # wrapped
        count = len(lab.instances("catalog"))
        lab_metrics.add(f"{shape}: first deploy of catalog v1 to {count} empty instances: {first.seconds} s")
        assert set(lab.versions("catalog").values()) == {"v1"}
        yield lab


@pytest.fixture
def rollout_lab(shared_lab: RolloutLab) -> RolloutLab:
    """The lab shape, shared with test_rollout_jobs.py (conftest.py ``shared_lab``)."""
    return shared_lab


def assert_capacity_held(lab: RolloutLab, report: dict[str, Any], max_unavailable: int) -> int:
    """The capacity invariant, sampled from every load balancer at least every 250 ms: never fewer
    than instances - max_unavailable UP, never all of a DC's instances out. Returns the fewest UP."""
    members = lab.instances("catalog")
    floor = len(members) - max_unavailable
    dc_of = {host: lab.hostvars[host]["berth_dc"] for host in members}
    samples = report["samples"]
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(samples)]
    assert statistics.median(gaps) <= 0.25 and len(samples) > 50
    lowest = len(members)
    for sample in samples:
        for lb, up in sample["up"].items():
            lowest = min(lowest, len(up))
            assert len(up) >= floor, f"{lb} at {sample['t']} s had only {up} UP (floor {floor})"
            for dc in set(dc_of.values()):
                in_dc = [h for h in members if dc_of[h] == dc]
                if len(in_dc) > 1:
                    assert len([h for h in up if dc_of[h] == dc]) >= 1, (lb, sample)
    return lowest


def assert_no_request_lost(report: dict[str, Any]) -> None:
    short, long = report["short"], report["long"]
    assert short["non_2xx"] == 0 and short["errors"] == 0, short["failure_samples"]
    assert long["non_2xx"] == 0 and long["errors"] == 0, long["failure_samples"]
    for lb, counters in report["counters"].items():
        assert {name: counters[name] for name in COUNTERS} == dict.fromkeys(COUNTERS, 0), lb


def test_rolling_upgrade_under_load_loses_no_request(rollout_lab: RolloutLab, lab_metrics: Any) -> None:
    lab = rollout_lab
    rollout, report = lab.deploy_under_load("v2", "-e", "service=catalog", "-e", "version=v2")
    assert rollout.returncode == 0, rollout.output[-6000:]
    assert_no_request_lost(report)
    assert report["short"]["sent"] >= 5000, report["short"]
    assert report["short_rate"] >= 190, report["short_rate"]
    assert report["long"]["sent"] >= 4 * 25, report["long"]
    assert set(lab.versions("catalog").values()) == {"v2"}

    lowest = assert_capacity_held(lab, report, max_unavailable=1)
    assert lowest == 3  # the rollout did take instances out, one at a time
    lab_metrics.add(
        f"rollout v1->v2 of 4 instances under load: {rollout.seconds} s; short {report['short']['sent']} "
        f"({report['short_rate']}/s), long {report['long']['sent']}, failed 0; fewest UP seen {lowest}/4"
    )


def test_the_same_version_again_changes_nothing(rollout_lab: RolloutLab, lab_metrics: Any) -> None:
    again = rollout_lab.deploy("-e", "service=catalog", "-e", "version=v2")
    assert again.returncode == 0, again.output[-4000:]
    assert again.changed == 0, again.output[-4000:]
    assert "catalog step 1/" not in again.output  # no step ran: nothing was drained
    assert "nothing to do" in again.output
    lab_metrics.add(f"the same version again: changed=0, nothing drained, {again.seconds} s")


def test_a_broken_release_halts_in_the_first_batch_and_reverts(
    rollout_lab: RolloutLab, lab_metrics: Any
) -> None:
    lab = rollout_lab
    broken, report = lab.deploy_under_load(
        "v3", "-e", "service=catalog", "-e", "version=v3", rollout_progress_deadline=10, settle=2
    )
    assert broken.returncode != 0
    assert "rollout of catalog to v3 halted at catalog-1" in broken.output, broken.output[-4000:]
    assert "catalog-1 is back on v2 and in rotation" in broken.output
    assert "HTTP 503" in broken.output  # what the health gate saw
    assert broken.recaps["catalog-2"]["changed"] <= 2  # staged only: never drained, stopped or switched
    assert_no_request_lost(report)
    assert set(lab.versions("catalog").values()) == {"v2"}
    assert lab.journal("catalog")["status"] == "halted"
    lab_metrics.add(
        f"broken v3: halted and reverted in {broken.seconds} s; {report['short']['sent']} requests, 0 failed"
    )


def test_an_instance_whose_install_fails_halts_the_rollout_and_is_never_touched(
    rollout_lab: RolloutLab, lab_metrics: Any
) -> None:
    """Each instance installs and then takes its part on its own (strategy free): one whose install
    fails halts the whole rollout at once, naming why, and the recovery puts back what was drained."""
    lab = rollout_lab
    victim = lab.instances("catalog")[2]  # in a later batch than the first
    address = lab.hostvars[victim]["ansible_host"]
    config = f"/etc/berth/{victim}.json"
    moved = lab.ssh.run(
        address, f"mv {config} {config}.kept && mkdir {config}"
    )  # the install cannot write it
    assert moved.returncode == 0, moved.stderr
    try:
        run, report = lab.deploy_under_load(
            "install-fails", "-e", "service=catalog", "-e", "version=v1", settle=2
        )
    finally:
        restored = lab.ssh.run(address, f"rmdir {config} && mv {config}.kept {config}")
    assert restored.returncode == 0, restored.stderr
    assert run.returncode != 0
    assert f"halted at {victim}: the install failed" in " ".join(run.output.split()), run.output[-4000:]
    assert_no_request_lost(report)
    assert lab.journal("catalog")["status"] == "halted"
    assert lab.versions("catalog")[victim] == "v2"  # never stopped nor switched
    seen = {host: lb_sees(lab, host) for host in lab.instances("catalog")}
    assert all(status == {"UP"} for status in seen.values()), seen  # what was drained is back
    lab_metrics.add(f"an install that fails on {victim}: halted and recovered in {run.seconds} s, 0 failed")
    again = lab.deploy("-e", "service=catalog", "-e", "version=v2")  # the estate as the next test expects it
    assert again.returncode == 0, again.output[-4000:]
    assert set(lab.versions("catalog").values()) == {"v2"}


def test_an_interrupted_rollout_completes_when_rerun(rollout_lab: RolloutLab) -> None:
    lab = rollout_lab
    variables = lab.workdir / "interrupted.json"
    variables.write_text(json.dumps({**LB_UNDER_TEST, "service": "catalog", "version": "v1"}))
    process = subprocess.Popen(
        [str(BIN / "ansible-playbook"), "-i", str(lab.spec), str(DEPLOY), "-e", f"@{variables}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        # kill it once the first batch is done (the journal says so) and the second has begun
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if lab.journal("catalog").get("target") == "v1" and lab.journal("catalog").get(
                    "batches_done"
                ):
                    break
            time.sleep(0.2)
        time.sleep(2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the playbook and the ssh sessions it started
        process.wait()
    mixed = lab.versions("catalog")
    assert mixed["catalog-1"] == "v1" and "v2" in mixed.values(), mixed
    rerun = lab.deploy("-e", "service=catalog", "-e", "version=v1")
    assert rerun.returncode == 0, rerun.output[-4000:]
    # the killed run's parts end as soon as they see ansible-playbook gone, and its report's sampler
    # with them (it once waited out its idle limit, 300 s, holding the run's parts lock)
    waited = re.search(r"waited ([0-9.]+) s for the parts of an earlier run", " ".join(rerun.output.split()))
    assert waited is None or float(waited.group(1)) < 60, waited.group(0)
    assert set(lab.versions("catalog").values()) == {"v1"}
    assert "catalog-1" not in rerun.output.split("catalog -> v1:")[1].split("\n")[0]  # not redone
    assert lab.journal("catalog")["from"]["catalog-1"] == "v2"  # where the rollout started
    # and nothing the killed run left behind (its workers outlive it) moved traffic afterwards
    time.sleep(1)
    seen = {host: lb_sees(lab, host) for host in lab.instances("catalog")}
    assert all(status == {"UP"} for status in seen.values()), seen


def test_rollback_returns_to_the_previous_revision(rollout_lab: RolloutLab) -> None:
    back = rollout_lab.deploy("-e", "service=catalog", playbook=ROLLBACK)
    assert back.returncode == 0, back.output[-4000:]
    assert set(rollout_lab.versions("catalog").values()) == {"v2"}


def test_the_next_instance_drains_while_this_one_is_gated_and_the_invariant_holds(
    rollout_lab: RolloutLab, lab_metrics: Any
) -> None:
    """max_unavailable 2, one instance per batch: the plan drains the next instance early."""
    lab = rollout_lab
    raw = yaml.safe_load(lab.spec.read_text())
    raw["environment"]["services"]["catalog"]["max_unavailable"] = 2
    spec = lab.workdir / "overlap" / lab.spec.name
    spec.parent.mkdir(exist_ok=True)
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    # the inventory's group_vars (the lab's database passwords) go with it
    shutil.copytree(lab.spec.parent / "group_vars", spec.parent / "group_vars", dirs_exist_ok=True)
    overlapped = RolloutLab(lab.environment, spec, lab.workdir, lab.hostvars)
    rollout, report = overlapped.deploy_under_load(
        "overlap", "-e", "service=catalog", "-e", "version=v1", rollout_batch_size=1
    )
    assert rollout.returncode == 0, rollout.output[-6000:]
    assert_no_request_lost(report)
    assert set(lab.versions("catalog").values()) == {"v1"}
    assert assert_capacity_held(lab, report, max_unavailable=2) >= 2
    journal = lab.journal("catalog")
    assert journal["status"] == "complete" and len(journal["batches_done"]) == 4
    assert [b["overlapped"] for b in journal["batches_done"]] == [False, True, True, True], journal
    lab_metrics.add(
        f"overlapped rollout (1 per batch, max_unavailable 2) of 4 instances under load: {rollout.seconds} s, "
        f"0 failed; fewest UP {min(len(up) for s in report['samples'] for up in s['up'].values())}/4"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"service": "catalgo"}, "unknown service 'catalgo'"),
        (
            {"service": "catalog", "version": "v9"},
            "missing artifact /var/lib/berth/artifacts/catalog-v9.tar.gz",
        ),
        (
            {"service": "catalog", "version": "v1", "rollout_artifacts_dir": "TAMPERED"},
            "refusing to deploy it",
        ),
        (
            {"service": "catalog", "rollout_batch_size": 3},
            "rollout_batch_size: expected 0 (max_unavailable) or a count from 1 to 1",
        ),
        (
            {"service": "catalog", "strategy": "green_blue"},
            "strategy: expected rolling, blue_green or canary, got green_blue",
        ),
        (
            {"service": "catalog", "strategy": "blue_green"},
            "strategy: catalog deploys rolling (environment.services.catalog.strategy in the inventory), "
            "not blue_green; nothing was changed",
        ),
    ],
)
def test_bad_input_is_refused_before_anything_is_touched(
    rollout_lab: RolloutLab, extra: dict[str, str], message: str, tmp_path: Path
) -> None:
    if extra.get("rollout_artifacts_dir") == "TAMPERED":
        for suffix in ("", ".sha256"):
            (tmp_path / f"catalog-v1.tar.gz{suffix}").write_bytes(
                (ARTIFACTS / f"catalog-v1.tar.gz{suffix}").read_bytes()
            )
        (tmp_path / "catalog-v1.tar.gz").write_bytes(b"not the artifact that was built")
        extra = {**extra, "rollout_artifacts_dir": str(tmp_path)}
    before = rollout_lab.versions("catalog")
    refused = rollout_lab.deploy(**extra)
    assert refused.returncode != 0
    assert message in " ".join(refused.output.split()), refused.output[-3000:]  # a long message wraps
    assert "PLAY [Deploy | load balancers" not in refused.output  # stopped in the controller preflight
    assert rollout_lab.versions("catalog") == before


def test_max_unavailable_out_of_range_fails_at_the_inventory(rollout_lab: RolloutLab) -> None:

    raw = yaml.safe_load(rollout_lab.spec.read_text())
    raw["environment"]["services"]["catalog"]["max_unavailable"] = 5
    bad = rollout_lab.workdir / "bad.berth.yml"
    bad.write_text(yaml.safe_dump(raw))
    refused = run_playbook(DEPLOY, str(bad), "-e", "service=catalog")
    assert refused.returncode != 0
    assert (
        "environment.services.catalog.max_unavailable: expected at most the service's 4 instances, got 5"
        in refused.output
    )


LB_STATE_PLAY = """
- name: An instance drained by hand stays out of rotation through HAProxy reloads and restarts
  hosts: "{{ lb }}"
  gather_facts: false
  tasks:
    - name: Put it in maintenance
      berth.fleet.lb_member: {backend: be_catalog, server: "{{ instance }}", state: maint}
    - name: "{{ action }}"
      ansible.builtin.include_tasks: "{{ workdir }}/lb-action-{{ action }}.yml"
    - name: What HAProxy says now
      berth.fleet.lb_info: {backends: [be_catalog]}
      register: seen
    - name: Report to the test
      ansible.builtin.copy:
        content: "{{ seen.servers.be_catalog | to_json }}"
        dest: "{{ workdir }}/lb-state-{{ action }}.json"
        mode: "0644"
      delegate_to: localhost
    - name: Back in rotation
      berth.fleet.lb_member: {backend: be_catalog, server: "{{ instance }}", state: ready}
"""

LB_ACTIONS = {
    "reload": [
        {"name": "Reload", "ansible.builtin.systemd_service": {"name": "haproxy", "state": "reloaded"}}
    ],
    "restart": [
        {"name": "Restart", "ansible.builtin.systemd_service": {"name": "haproxy", "state": "restarted"}}
    ],
    # a configuration change applied by the role: its handler reloads HAProxy
    "reconfigure": [
        {
            "name": "Reconfigure",
            "ansible.builtin.include_role": {"name": "berth.fleet.loadbalancer"},
            "vars": {"loadbalancer_check_inter_ms": 300},
        }
    ],
}


@pytest.mark.parametrize("action", list(LB_ACTIONS))
def test_a_drained_instance_stays_out_of_rotation_through_reload_and_restart(
    rollout_lab: RolloutLab, action: str
) -> None:

    lb = rollout_lab.lbs[0]
    instance = rollout_lab.instances("catalog")[0]
    play = rollout_lab.workdir / "lb-state.yml"
    play.write_text(LB_STATE_PLAY)
    for name, tasks in LB_ACTIONS.items():
        (rollout_lab.workdir / f"lb-action-{name}.yml").write_text(yaml.safe_dump(tasks))
    run = rollout_lab.deploy(
        "-e", f"lb={lb} instance={instance} action={action} workdir={rollout_lab.workdir}", playbook=play
    )
    assert run.returncode == 0, run.output[-4000:]
    if action == "reconfigure":  # the configuration really changed and was reloaded
        assert run.recaps[lb]["changed"] >= 4, run.output[-4000:]
    seen = json.loads((rollout_lab.workdir / f"lb-state-{action}.json").read_text())
    assert seen[instance]["admin"] == "maint" and not seen[instance]["in_rotation"], seen[instance]
    assert all(state["in_rotation"] for name, state in seen.items() if name != instance), seen

    # the LB as the rollout left it: the role with the lab's settings changes nothing
    restore = rollout_lab.workdir / "lb-restore.yml"
    restore.write_text(
        yaml.safe_dump(
            [{"name": "LB", "hosts": lb, "gather_facts": False, "roles": ["berth.fleet.loadbalancer"]}]
        )
    )
    again = rollout_lab.deploy(playbook=restore)
    assert again.returncode == 0, again.output[-3000:]
    # after the reconfiguration: the configuration back and reloaded, in one module run
    assert again.recaps[lb]["changed"] == (1 if action == "reconfigure" else 0), again.output[-3000:]


RECONCILE = ROOT / "playbooks" / "reconcile.yml"


def lb_sees(lab: RolloutLab, instance: str) -> set[str]:
    """The instance's status on every LB, from the stats CSV (UP, DOWN, MAINT, ...)."""
    seen = set()
    for lb in lab.lbs:
        out = lab.fetch(f"http://{lab.hostvars[lb]['ansible_host']}:8404/stats;csv")
        assert out is not None, f"{lb}'s stats page did not answer"
        rows = [line.split(",") for line in out.splitlines() if line.startswith(f"be_catalog,{instance},")]
        header = out.splitlines()[0].lstrip("# ").split(",")
        seen |= {row[header.index("status")] for row in rows}
    return seen


def test_reconcile_replaces_lost_machines_under_load_and_then_changes_nothing(
    rollout_lab: RolloutLab, lab_metrics: Any
) -> None:
    lab = rollout_lab
    journal_before = lab.journal("catalog")
    target = journal_before["target"]  # v2 after the tests above
    assert journal_before["status"] == "complete" and set(lab.versions("catalog").values()) == {target}
    # both catalog instances of dc1 lose their machines, disks included (what dead hosts or
    # deleted VMs look like): more than max_unavailable 1 and the whole of dc1's budget
    lost = [name for name in lab.instances("catalog") if lab.hostvars[name]["berth_dc"] == "dc1"]
    assert len(lost) == 2
    play = lab.workdir / "lose.yml"
    tasks = [
        {"berth.fleet.nspawn_host": {"name": lab.hostvars[name]["berth_node"], "state": "absent"}}
        for name in lost
    ]
    play.write_text(json.dumps([local_play("Lose machines", tasks)]))
    gone = run_playbook(play, "localhost,")
    assert gone.returncode == 0 and gone.changed == 2, gone.output[-3000:]
    deadline = time.monotonic() + 30
    while any(lb_sees(lab, name) != {"DOWN"} for name in lost):
        assert time.monotonic() < deadline, f"the LBs never saw {lost} DOWN"
        time.sleep(0.5)

    # a deploy does not roll onto machines that are gone: it says so before touching an instance
    # (the journal's target, so that only the lost instances need work: a repair)
    refused = lab.deploy("-e", "service=catalog", "-e", f"version={target}")
    assert refused.returncode != 0
    assert f"{', '.join(lost)} of catalog did not answer SSH" in refused.output, refused.output[-3000:]
    assert "PLAY [Deploy | rolling steps" not in refused.output.split("did not answer SSH")[1]
    # what a reconcile would do, without doing it
    dry = lab.deploy("-e", "service=catalog", "--check", "--diff", playbook=RECONCILE)
    assert dry.returncode == 0, dry.output[-4000:]
    assert f"catalog -> {target}: 1 batch(es) {json.dumps([lost])} (repair:" in dry.output, dry.output[-4000:]
    assert f"not reachable now: {', '.join(lost)}" in dry.output
    assert not any((MACHINES_DIR / lab.hostvars[name]["berth_node"]).exists() for name in lost)
    assert journal_before == lab.journal("catalog")

    fixed, report = lab.deploy_under_load("reconcile", "-e", "service=catalog", playbook=RECONCILE, settle=2)
    assert fixed.returncode == 0, fixed.output[-6000:]
    assert f"catalog converges to {target} (the target of the last finished rollout)" in fixed.output
    assert f"catalog -> {target}: 1 batch(es) {json.dumps([lost])} (repair:" in fixed.output, fixed.output[
        -4000:
    ]
    assert_no_request_lost(report)
    assert set(lab.versions("catalog").values()) == {target}
    assert all(lb_sees(lab, name) == {"UP"} for name in lost)
    journal = lab.journal("catalog")
    # a repair, not a new rollout: rollback still returns to where the last rollout started
    assert journal["status"] == "complete" and journal["repair"] is True
    assert journal["from"] == journal_before["from"]
    lab_metrics.add(
        f"reconcile after losing dc1's 2 catalog machines: recreated, {target} installed, back in rotation in {fixed.seconds} s; "
        f"{report['short']['sent']} requests, 0 failed"
    )

    again = lab.deploy("-e", "service=catalog", playbook=RECONCILE)
    assert again.returncode == 0, again.output[-4000:]
    assert again.changed == 0, again.output[-4000:]
    lab_metrics.add(f"second reconcile (changed=0): {again.seconds} s")


def test_reconcile_refuses_an_unfinished_rollout(rollout_lab: RolloutLab) -> None:
    lab = rollout_lab
    path = lab.workdir / "state" / lab.environment / "rollouts" / "catalog.json"
    saved = path.read_text()
    try:
        path.write_text(json.dumps({**json.loads(saved), "status": "running", "target": "v1"}))
        refused = lab.deploy("-e", "service=catalog", playbook=RECONCILE)
    finally:
        path.write_text(saved)
    assert refused.returncode != 0
    assert "the rollout of catalog to v1 is unfinished (status running)" in refused.output, refused.output[
        -3000:
    ]
    assert "PLAY [Provision" not in refused.output  # nothing touched


def test_the_rollout_report_of_the_last_rollout_is_next_to_its_journal_and_renders(
    rollout_lab: RolloutLab, lab_metrics: Any
) -> None:
    """The report of catalog's last rollout in this module (the reconcile that repaired dc1 under
    load): written next to the journal by the rollout itself, its reads of every LB cover the run
    at most 0.3 s apart, its batches are the journal's, what it counted agrees with the load
    generator, and Chromium draws its page with every series."""
    from tests.chromium import assert_report_page_renders

    lab = rollout_lab
    rollouts = lab.workdir / "state" / lab.environment / "rollouts"
    journal, data = lab.journal("catalog"), json.loads((rollouts / "catalog.report.json").read_text())
    run = journal["run"]
    assert (data["run"], data["status"], data["target"]) == (run["id"], "complete", journal["target"])
    assert data["warnings"] == [] and data["lbs"] == lab.lbs
    zero, last = data["started_at"], str(len(run["steps"]) - 1)
    first_step = min(e["started"] for e in run["events"]["0"]["traffic"].values()) - zero
    ended = max(e["started"] + e["ready_wait"] for e in run["events"][last]["traffic"].values()) - zero
    for lb in lab.lbs:
        seen, reads = data["coverage"][lb], data["samples"][lb]
        assert seen["failed"] == 0 and seen["max_gap"] <= 0.3, (lb, seen)
        assert seen["first"] <= first_step + 0.3 and seen["last"] >= ended, (lb, seen, first_step, ended)
        gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(reads)]
        assert max(gaps) <= 0.3, (lb, max(gaps))
        # the repair: dc1's two instances came back, so UP went from 2 to all 4
        assert data["totals"][lb]["fewest_up"] == 2 and len(reads[-1]["up"]) == 4, (lb, data["totals"][lb])
        rates = sorted(r for r in data["series"][lb]["requests_per_s"] if r is not None)
        assert 50 <= rates[len(rates) // 2] <= 150, (lb, rates[len(rates) // 2])  # half of 200 req/s each
        assert data["totals"][lb]["errors_5xx"] == 0  # as the load generator saw: nothing failed
    load = json.loads((lab.workdir / "load-reconcile.json").read_text())
    assert load["short"]["non_2xx"] == 0 and all(c["hrsp_5xx"] == 0 for c in load["counters"].values())
    # the batches are the journal's
    assert [b["hosts"] for b in data["batches"]] == [s["cycle"] for s in run["steps"] if s["cycle"]]
    done = [b for b in journal["batches_done"] if b["run"] == run["id"]]
    assert len(done) == len(data["batches"]) and all(b["finished"] for b in data["batches"])
    for batch, record in zip(data["batches"], done, strict=True):
        assert batch["hosts"] == record["hosts"]
        assert [batch[k] for k in ("seconds", "drain_wait", "risen_after", "ready_wait")] == [
            record[k] for k in ("seconds", "drain_wait", "risen_after", "ready_wait")
        ]
        assert batch["drain_started"] <= batch["drained"] <= batch["cycle_started"] < batch["cycle_ended"]
        assert batch["cycle_ended"] <= batch["back"] <= ended + 0.01
    page = rollouts / "catalog.report.html"
    written_after = page.stat().st_mtime - (zero + ended)
    started = time.monotonic()
    assert_report_page_renders(page, data)
    lab_metrics.add(
        f"rollout report of the reconcile: {len(data['samples'][lab.lbs[0]])} reads per LB over {ended:.1f} s, "
        f"longest gap {max(data['coverage'][lb]['max_gap'] for lb in lab.lbs):.3f} s, the page written "
        f"{written_after:.2f} s after the run ended; Chromium rendered it in {time.monotonic() - started:.1f} s"
    )
