"""The local substrate for real: `provision` and `destroy` on the lab topology.

The module provisions the shipped lab topology (inventories/lab: 2 DCs, 2 services x 4 instances,
1 LB per DC = 10 nspawn machines) under a per-run environment name, namespace and state directory,
with the real playbooks/provision.yml. Nodes are checked over SSH with strict host key checking
against the known_hosts that provisioning recorded, then playbooks/destroy.yml must leave the host
exactly as a snapshot taken before anything was created. Teardown runs even when a test fails; a
failed destroy falls back to stopping only the nspawn PIDs that Berth recorded for this run's
machines, after checking they still are those processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.model.nodes import nodes
from tests.integration.lab import (
    BIN,
    DESTROY,
    MACHINES_DIR,
    PROVISION,
    ROOT,
    LabSsh,
    destroyed_afterwards,
    host_snapshot,
    inventory_hostvars,
    lab_spec,
    local_play,
    run_playbook,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="the local substrate needs root (network namespaces, overlayfs, systemd-nspawn)",
    ),
]

STRESS_MIB = 400  # allocated inside the machine limited to 256 MiB: must be OOM-killed there


# --- looking at the host ------------------------------------------------------------------------


def lab_links(namespace: str) -> dict[str, dict[str, Any]]:
    out = subprocess.run(
        ["ip", "-n", namespace, "-d", "-j", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {entry["ifname"]: entry for entry in json.loads(out)}


# --- SSH into the lab ---------------------------------------------------------------------------


# --- last-resort cleanup ------------------------------------------------------------------------


# --- the estate ---------------------------------------------------------------------------------


@dataclass
class Estate:
    run_id: str
    environment: str
    spec: Path
    state_dir: Path
    baseline: dict[str, Any]
    hostvars: dict[str, dict[str, Any]] = field(default_factory=dict)
    up_seconds: float = 0.0
    torn_down: bool = False

    @property
    def namespace(self) -> str:
        return f"berth-{self.environment}"

    @property
    def nodes(self) -> list[dict[str, Any]]:
        return nodes(self.hostvars, sorted(self.hostvars))

    @property
    def bridges(self) -> list[dict[str, str]]:
        return list(next(iter(self.hostvars.values()))["berth_lab_bridges"])

    @property
    def ssh(self) -> LabSsh:
        env_dir = self.state_dir / self.environment
        return LabSsh(self.namespace, env_dir / "id_ed25519", env_dir / "known_hosts")

    def node(self, host: str) -> dict[str, Any]:
        return next(n for n in self.nodes if host in n["hosts"])

    def address(self, host: str) -> str:
        return str(self.hostvars[host]["ansible_host"])


@pytest.fixture(scope="module")
def lab_estate(
    lab_run_id: str, lab_image: dict[str, Any], lab_workdir: Path, lab_metrics: Any
) -> Iterator[Estate]:
    environment = f"t{lab_run_id}"
    state_dir = lab_workdir / "state"
    estate = Estate(
        run_id=lab_run_id,
        environment=environment,
        spec=lab_spec(lab_workdir / f"{environment}.berth.yml", environment, state_dir),
        state_dir=state_dir,
        baseline=host_snapshot(environment),
    )
    estate.hostvars = inventory_hostvars(estate.spec)
    with destroyed_afterwards(
        estate.spec,
        estate.namespace,
        machines=lambda: [n["name"] for n in estate.nodes],
        done=lambda: estate.torn_down,
    ):
        up = run_playbook(PROVISION, str(estate.spec))
        assert up.returncode == 0, up.output[-6000:]
        estate.up_seconds = up.seconds
        lab_metrics.add(
            f"provision of the lab topology ({len(estate.nodes)} machines in {len(estate.bridges)} DCs, "
            f"cached image): {up.seconds} s"
        )
        yield estate


# --- tests (in order: the last one tears the estate down) ---------------------------------------


def test_every_machine_boots_to_running_and_answers_ssh_with_its_own_host_key(
    lab_estate: Estate, lab_metrics: Any
) -> None:
    assert len(lab_estate.nodes) >= 10 and len(lab_estate.bridges) == 2
    started = time.monotonic()
    machine_ids = set()
    for node in lab_estate.nodes:
        status = lab_estate.ssh.run(node["address"], "systemctl is-system-running --wait")
        if status.stdout.strip() != "running":
            failed = lab_estate.ssh.run(node["address"], "systemctl --failed --no-legend")
            pytest.fail(
                f"{node['name']}: {status.stdout.strip()!r} {status.stderr}; failed units:\n{failed.stdout}"
            )
        identity = lab_estate.ssh.run(node["address"], "hostname; cat /etc/machine-id")
        assert identity.returncode == 0, identity.stderr
        hostname, machine_id = identity.stdout.split()
        assert hostname == node["name"]
        machine_ids.add(machine_id)
    assert len(machine_ids) == len(lab_estate.nodes), "machines share a machine-id"
    lab_metrics.add(
        f"SSH + `systemctl is-system-running --wait` on {len(lab_estate.nodes)} machines: "
        f"{time.monotonic() - started:.2f} s"
    )


def test_ansible_reaches_every_inventory_host_with_strict_host_key_checking(lab_estate: Estate) -> None:
    """The inventory's own connection settings (through the namespace, Berth's known_hosts) work."""
    result = subprocess.run(
        [str(BIN / "ansible"), "-i", str(lab_estate.spec), "all", "-m", "ansible.builtin.command"]
        + ["-a", "hostname"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for host, host_vars in lab_estate.hostvars.items():
        assert f"{host} | CHANGED | rc=0 >>\n{host_vars['berth_node']}" in result.stdout
        assert "StrictHostKeyChecking=yes" in host_vars["ansible_ssh_common_args"]


def test_a_wrong_host_key_is_refused(lab_estate: Estate, tmp_path: Path) -> None:
    forged = tmp_path / "known_hosts"
    recorded = (lab_estate.ssh.known_hosts).read_text().splitlines()
    other_key = next(line for line in recorded if line.startswith(lab_estate.address("catalog-2") + " "))
    forged.write_text(f"{lab_estate.address('catalog-1')} {other_key.split(' ', 1)[1]}\n")
    result = LabSsh(lab_estate.namespace, lab_estate.ssh.key, forged).run(
        lab_estate.address("catalog-1"), "true"
    )
    assert result.returncode == 255 and "HOST IDENTIFICATION HAS CHANGED" in result.stderr


def test_the_lab_network_stays_inside_its_namespace(lab_estate: Estate) -> None:
    now = host_snapshot(lab_estate.environment)
    assert now["links"] == lab_estate.baseline["links"], (
        "a lab interface appeared in the machine's own namespace"
    )
    assert now["ip_forward"] == lab_estate.baseline["ip_forward"]
    links = lab_links(lab_estate.namespace)
    for bridge in lab_estate.bridges:
        addresses = [
            f"{a['local']}/{a['prefixlen']}"
            for a in links[bridge["name"]]["addr_info"]
            if a["family"] == "inet"
        ]
        assert addresses == [bridge["address"]]
    ports = {name: link.get("master") for name, link in links.items() if name.startswith("vb-")}
    assert sorted(ports.values()) == sorted(n["bridge"] for n in lab_estate.nodes)
    assert set(links) == {"lo", *(b["name"] for b in lab_estate.bridges), *ports}
    forward = subprocess.run(
        ["ip", "netns", "exec", lab_estate.namespace, "sysctl", "-n", "net.ipv4.ip_forward"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert forward.stdout.strip() == "1"


def test_a_file_written_on_one_machine_is_invisible_everywhere_else(
    lab_estate: Estate, lab_image: dict[str, Any]
) -> None:
    marker = f"/root/berth-isolation-{lab_estate.run_id}"
    writer = lab_estate.node("catalog-1")
    assert lab_estate.ssh.run(writer["address"], f"echo secret > {marker}").returncode == 0
    assert lab_estate.ssh.run(writer["address"], f"cat {marker}").stdout.strip() == "secret"
    for node in lab_estate.nodes:
        if node is not writer and node["name"] != writer["name"]:
            assert lab_estate.ssh.run(node["address"], f"test ! -e {marker}").returncode == 0, node["name"]
    assert not Path(marker).exists(), "the file leaked onto the real machine"
    assert not Path(lab_image["rootfs"], marker.lstrip("/")).exists(), "the file leaked into the base image"
    upper = MACHINES_DIR / writer["name"] / "upper" / marker.lstrip("/")
    assert upper.read_text() == "secret\n"  # it lives in that machine's own overlay layer only


def test_a_dc1_host_reaches_a_dc2_host_through_the_lab_router(lab_estate: Estate) -> None:
    dc1, dc2 = lab_estate.node("catalog-1"), lab_estate.node("catalog-2")
    assert (dc1["dc"], dc2["dc"]) == ("dc1", "dc2")
    ping = lab_estate.ssh.run(dc1["address"], f"ping -c 2 -W 2 {dc2['address']}")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    route = lab_estate.ssh.run(dc2["address"], f"ip -4 route get {dc1['address']}")
    assert f"via {dc2['gateway']} dev host0" in route.stdout


def test_resources_are_ring_fenced_per_machine(lab_estate: Estate, lab_metrics: Any) -> None:
    """catalog-2's machine gets its service's resources (1 vCPU, 256 MiB); a load balancer is unlimited."""
    limited = lab_estate.node("catalog-2")
    assert (limited["vcpus"], limited["memory_mib"]) == (1, 256)
    state = json.loads((MACHINES_DIR / limited["name"] / "state.json").read_text())
    memory_dir = Path(state["cgroups"]["memory"])
    cpu_dir = Path(state["cgroups"]["cpu"])
    limit_file = memory_dir / (
        "memory.max" if (memory_dir / "memory.max").exists() else "memory.limit_in_bytes"
    )
    assert int(limit_file.read_text()) == 256 * 1024 * 1024
    if (cpu_dir / "cpu.max").exists():
        assert (cpu_dir / "cpu.max").read_text().split() == ["100000", "100000"]
    else:
        assert int((cpu_dir / "cpu.cfs_quota_us").read_text()) == 100_000
    throttled_before = _throttled(cpu_dir)
    # two busy loops want two CPUs; the machine may have one
    busy = lab_estate.ssh.run(
        limited["address"], "for i in 1 2; do timeout 1 sh -c 'while :; do :; done' & done; wait; true"
    )
    assert busy.returncode == 0, busy.stderr
    assert _throttled(cpu_dir) > throttled_before, "two busy loops at cpu_quota=100 were never throttled"
    hog = lab_estate.ssh.run(
        limited["address"],
        f"python3 -c 'b = bytearray({STRESS_MIB} * 1024 * 1024); print(len(b))'; echo rc=$?",
    )
    assert "rc=137" in hog.stdout, f"{STRESS_MIB} MiB fit in a 256 MiB machine: {hog.stdout} {hog.stderr}"
    assert lab_estate.ssh.run(limited["address"], "true").returncode == 0, "the machine died with its hog"
    unlimited = lab_estate.ssh.run(
        lab_estate.address("lb-dc1"), f"python3 -c 'b = bytearray({STRESS_MIB} * 1024 * 1024); print(len(b))'"
    )
    assert unlimited.returncode == 0, unlimited.stderr

    usages = []
    for node in lab_estate.nodes:
        cgroup = Path(
            json.loads((MACHINES_DIR / node["name"] / "state.json").read_text())["cgroups"]["memory"]
        )
        stat = dict(line.split() for line in (cgroup / "memory.stat").read_text().splitlines())
        rss = int(stat.get("total_rss", stat.get("anon", 0)))
        usages.append(f"{rss / 2**20:.1f}/{_charged(cgroup) / 2**20:.1f}")
    lab_metrics.add("memory per machine, rss/charged MiB (cgroup): " + ", ".join(usages))


def _throttled(cpu_cgroup: Path) -> int:
    stat = dict(line.split() for line in (cpu_cgroup / "cpu.stat").read_text().splitlines())
    return int(stat["nr_throttled"])


def _charged(cgroup: Path) -> int:
    for name in ("memory.usage_in_bytes", "memory.current"):
        if (cgroup / name).exists():
            return int((cgroup / name).read_text())
    return 0


def test_a_second_provision_changes_nothing(lab_estate: Estate, lab_metrics: Any) -> None:
    again = run_playbook(PROVISION, str(lab_estate.spec))
    assert again.returncode == 0, again.output[-4000:]
    assert again.changed == 0, again.output[-4000:]
    assert set(again.recaps) == {"localhost", *lab_estate.hostvars}
    lab_metrics.add(f"second provision (changed=0): {again.seconds} s")


def test_stop_and_start_keep_the_host_key(lab_estate: Estate, lab_playbook: Callable[..., Any]) -> None:
    first = lab_estate.node("orders-1")
    for state in ("stopped", "running"):
        task = {"name": state, "berth.fleet.nspawn_host": {"name": first["name"], "state": state}}
        run = lab_playbook([local_play(state, [task])], {})
        assert run.returncode == 0 and run.recap["changed"] == 1, run.output[-4000:]
    # the known_hosts written at provisioning still matches: strict checking passes after the restart
    again = lab_estate.ssh.run(first["address"], "systemctl is-system-running --wait; hostname")
    assert again.stdout.split() == ["running", first["name"]], again.stderr


def test_check_mode_on_a_fresh_topology_changes_nothing(lab_estate: Estate, lab_workdir: Path) -> None:
    fresh_env = f"c{lab_estate.run_id}"
    fresh = lab_spec(lab_workdir / "fresh.berth.yml", fresh_env, lab_workdir / "fresh-state", shape="ci")
    before = host_snapshot(lab_estate.environment, fresh_env)
    checked = run_playbook(PROVISION, str(fresh), "--check", "--diff")
    assert checked.returncode == 0, checked.output[-4000:]
    assert checked.recap["changed"] > 0, checked.output[-4000:]  # it says what it would do
    after = host_snapshot(lab_estate.environment, fresh_env)
    # processes inside the running machines come and go (ssh sessions, timers): compare the rest
    for snapshot in (before, after):
        snapshot.pop("processes_in_other_pid_namespaces")
    assert after == before
    assert not list(MACHINES_DIR.glob(f"{fresh_env}-*"))
    assert not (lab_workdir / "fresh-state").exists()


def test_destroy_leaves_the_host_as_it_was(lab_estate: Estate, lab_metrics: Any) -> None:
    down = run_playbook(DESTROY, str(lab_estate.spec))
    lab_estate.torn_down = down.returncode == 0
    assert down.returncode == 0, down.output[-4000:]
    lab_metrics.add(f"destroy of {len(lab_estate.nodes)} machines + network: {down.seconds} s")
    deadline = time.monotonic() + 10  # PID 1 reaps the exited nspawn processes asynchronously
    while host_snapshot(lab_estate.environment) != lab_estate.baseline and time.monotonic() < deadline:
        time.sleep(0.2)
    assert host_snapshot(lab_estate.environment) == lab_estate.baseline
    for node in lab_estate.nodes:
        assert not (MACHINES_DIR / node["name"]).exists()
    assert not (lab_estate.state_dir / lab_estate.environment).exists()
    again = run_playbook(DESTROY, str(lab_estate.spec))
    assert again.returncode == 0 and again.changed == 0, again.output[-4000:]


@pytest.mark.parametrize("shape", ["dev", "ci"])
def test_dev_and_ci_shapes_provision_and_destroy(shape: str, lab_run_id: str, lab_workdir: Path) -> None:
    """The laptop (1 per service) and CI (2 per service colocated on one machine) environments."""
    environment = f"{shape[0]}{lab_run_id}"
    spec = lab_spec(
        lab_workdir / f"{environment}.berth.yml", environment, lab_workdir / f"{shape}-state", shape
    )
    hostvars = inventory_hostvars(spec)
    machines = nodes(hostvars, sorted(hostvars))
    baseline = host_snapshot(environment)
    with destroyed_afterwards(spec, f"berth-{environment}", machines=lambda: [m["name"] for m in machines]):
        up = run_playbook(PROVISION, str(spec))
        assert up.returncode == 0, up.output[-4000:]
        # every inventory host answers through the inventory's own connection settings
        ping = subprocess.run(
            [str(BIN / "ansible"), "-i", str(spec), "all", "-m", "ansible.builtin.ping"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert ping.stdout.count("SUCCESS") == len(hostvars)
    if shape == "ci":  # four instances, one machine: one node carries them all
        assert len(machines) == 2 and len(machines[0]["hosts"] + machines[1]["hosts"]) == 5
    deadline = time.monotonic() + 10
    while host_snapshot(environment) != baseline and time.monotonic() < deadline:
        time.sleep(0.2)
    assert host_snapshot(environment) == baseline
