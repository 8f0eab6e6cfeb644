"""The VM substrate for real: libvirt VMs (TCG) in two datacenters, made by `provision`.

The module provisions the shipped VM lab (inventories/lab-vm: one catalog instance per DC, each in
its own libvirt VM, plus an nspawn load balancer per DC) under a per-run environment name, lab
namespace, storage pool and state directory, with the real playbooks/provision.yml. Berth starts
libvirtd inside the lab namespace itself. The VMs are checked over SSH with strict host key
checking against the host keys Berth generated before they booted; then a memory change is shown
by --check --diff, applied, and destroy must leave the machine as it was (no domain, no volume, no
libvirtd, no namespace). Teardown runs even when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.domain import stable_mac
from ansible_collections.berth.fleet.plugins.module_utils.model.nodes import nodes
from tests.integration.lab import (
    DESTROY,
    PROVISION,
    ROOT,
    VIRSH,
    LabSsh,
    destroyed_afterwards,
    host_snapshot,
    inventory_hostvars,
    run_playbook,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the VM substrate needs root (libvirtd, namespaces)"),
    pytest.mark.skipif(shutil.which("libvirtd") is None, reason="libvirt-daemon-system is not installed"),
]


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VIRSH, *args], capture_output=True, text=True, check=False)


def libvirtd_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True, check=False)
    return [int(pid) for pid in found.stdout.split()]


def vm_spec(path: Path, environment: str, state_dir: Path, **changes: Any) -> Path:
    """The shipped VM lab under this run's names (environment, namespace, pool), with `changes`."""
    raw = yaml.safe_load((ROOT / "inventories" / "lab-vm" / "topology.berth.yml").read_text())
    raw["environment"]["name"] = environment
    raw["estate"]["lab_namespace"] = f"berth-{environment}"
    raw["state_dir"] = str(state_dir)
    for dc in raw["estate"]["datacenters"].values():
        for hypervisor in dc.get("hypervisors", {}).values():
            hypervisor["pool"] = {
                "name": f"berth-{environment}",
                "path": f"/var/lib/berth/pools/{environment}",
            }
    for dotted, value in changes.items():
        target = raw
        *parents, last = dotted.split("__")
        for key in parents:
            target = target[key]
        target[last] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@dataclass
class VmLab:
    environment: str
    spec: Path
    state_dir: Path
    workdir: Path
    baseline: dict[str, Any]
    libvirtd_before: list[int]
    hostvars: dict[str, dict[str, Any]] = field(default_factory=dict)
    torn_down: bool = False

    @property
    def namespace(self) -> str:
        return f"berth-{self.environment}"

    @property
    def pool_path(self) -> Path:
        return Path(f"/var/lib/berth/pools/{self.environment}")

    @property
    def vms(self) -> list[dict[str, Any]]:
        return [n for n in nodes(self.hostvars, sorted(self.hostvars)) if n["substrate"] == "vm"]

    @property
    def all_nodes(self) -> list[dict[str, Any]]:
        return nodes(self.hostvars, sorted(self.hostvars))

    @property
    def ssh(self) -> LabSsh:
        env_dir = self.state_dir / self.environment
        return LabSsh(self.namespace, env_dir / "id_ed25519", env_dir / "known_hosts")


def domain_memory_kib(name: str, inactive: bool = False) -> int:
    xml = virsh("dumpxml", name, *(["--inactive"] if inactive else [])).stdout
    match = re.search(r"<memory unit='KiB'>(\d+)</memory>", xml)
    assert match, xml[:2000]
    return int(match.group(1))


# --- bad input: refused before libvirt is touched --------------------------------------------------


def test_bad_specs_fail_before_anything_is_touched(tmp_path: Path, lab_run_id: str) -> None:
    """A spec error and an unreachable hypervisor: a clear message naming the file/key, nothing made."""
    environment = f"vb{lab_run_id}"
    before = host_snapshot(environment)
    daemons = libvirtd_pids()
    bad_key = vm_spec(tmp_path / "bad.berth.yml", environment, tmp_path / "state")
    raw = yaml.safe_load(bad_key.read_text())
    raw["estate"]["datacenters"]["dc1"]["hypervisors"]["lab-hv-dc1"]["domain_type"] = "hvf"
    bad_key.write_text(yaml.safe_dump(raw, sort_keys=False))
    run = run_playbook(PROVISION, str(bad_key))
    assert run.returncode != 0
    assert (
        f"{bad_key}: estate.datacenters.dc1.hypervisors.lab-hv-dc1.domain_type: expected one of kvm, qemu, "
        "got 'hvf'" in run.output
    )

    # A real estate whose hypervisor does not answer (a closed port on loopback): the first libvirt
    # call fails with the URI in the message, before any pool, network, volume or VM is made.
    unreachable = tmp_path / "unreachable.berth.yml"
    raw = yaml.safe_load((ROOT / "inventories" / "lab-vm" / "topology.berth.yml").read_text())
    raw["environment"]["name"] = environment
    raw["state_dir"] = str(tmp_path / "state")
    for dc_name, dc in raw["estate"]["datacenters"].items():
        dc.pop("local")
        dc.pop("loadbalancers")
        for hypervisor in dc["hypervisors"].values():
            hypervisor["uri"] = "qemu+tcp://127.0.0.1:9/system"
            hypervisor["bridge"] = f"br-{dc_name}"
    unreachable.write_text(yaml.safe_dump(raw, sort_keys=False))
    keys = json.dumps({"vm_estate_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 test"]})
    run = run_playbook(PROVISION, str(unreachable), "-e", keys)
    assert run.returncode != 0
    assert "cannot connect to libvirt at qemu+tcp://127.0.0.1:9/system" in run.output, run.output[-3000:]
    assert host_snapshot(environment) == before
    assert libvirtd_pids() == daemons


# --- the estate -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vm_lab(lab_run_id: str, lab_workdir: Path, lab_metrics: Any) -> Iterator[VmLab]:
    environment = f"v{lab_run_id}"
    state_dir = lab_workdir / "vm-state"
    daemons = libvirtd_pids()
    if daemons:
        pytest.fail(
            f"libvirtd already runs (pid {daemons}): the VM lab starts its own inside its namespace. "
            "Destroy the other VM lab first (make destroy ENV=lab-vm)"
        )
    lab = VmLab(
        environment=environment,
        spec=vm_spec(lab_workdir / f"{environment}.berth.yml", environment, state_dir),
        state_dir=state_dir,
        workdir=lab_workdir,
        baseline=host_snapshot(environment),
        libvirtd_before=daemons,
    )
    lab.hostvars = inventory_hostvars(lab.spec)
    with destroyed_afterwards(
        lab.spec,
        lab.namespace,
        machines=lambda: [n["name"] for n in lab.all_nodes if n["substrate"] == "local"],
        domains=lambda: [vm["name"] for vm in lab.vms],
        done=lambda: lab.torn_down,
    ):
        # --check on a lab that does not exist: reports what it would make, makes nothing
        dry = run_playbook(PROVISION, str(lab.spec), "--check", "--diff")
        assert dry.returncode == 0, dry.output[-6000:]
        assert "the lab libvirtd is not running yet" in dry.output
        assert host_snapshot(environment) == lab.baseline and libvirtd_pids() == daemons
        assert not lab.pool_path.exists() and not (state_dir / environment / "hostkeys").exists()
        lab_metrics.add(f"provision --check of the VM lab before it exists (nothing made): {dry.seconds} s")
        up = run_playbook(PROVISION, str(lab.spec))
        assert up.returncode == 0, up.output[-6000:]
        lab_metrics.add(
            f"provision of the VM lab from nothing ({len(lab.vms)} TCG VMs + "
            f"{len(lab.all_nodes) - len(lab.vms)} nspawn LBs in 2 DCs) to SSH-ready: {up.seconds} s"
        )
        yield lab


# --- tests (in order: the last one tears the estate down) -------------------------------------------


def test_vms_run_in_their_dc_and_answer_ssh_with_the_host_key_berth_made(vm_lab: VmLab) -> None:
    assert {vm["dc"] for vm in vm_lab.vms} == {"dc1", "dc2"} and len(vm_lab.vms) == 2
    for vm in vm_lab.vms:
        assert virsh("domstate", vm["name"]).stdout.strip() == "running"
        xml = virsh("dumpxml", vm["name"]).stdout
        assert "<domain type='qemu'" in xml
        assert f"<mac address='{stable_mac(vm['name'], 0)}'/>" in xml
        assert f"network='{vm['hypervisor']['network']}'" in xml and f"bridge='br-{vm['dc']}'" in xml
        status = vm_lab.ssh.run(
            vm["address"], "systemctl is-system-running --wait; hostname; ip -4 -br addr show eth0"
        )
        lines = status.stdout.split("\n")
        assert status.returncode in (0, 1), status.stderr
        if lines[0] != "running":
            failed = vm_lab.ssh.run(vm["address"], "systemctl --failed --no-legend")
            pytest.fail(f"{vm['name']}: {lines[0]!r}; failed units:\n{failed.stdout}")
        assert lines[1] == vm["name"]
        assert f"{vm['address']}/{vm['prefix']}" in lines[2]
        # the host key the VM presents is the one Berth generated on the controller before it booted
        public = (
            (vm_lab.state_dir / vm_lab.environment / "hostkeys" / f"{vm['name']}.pub").read_text().split()[1]
        )
        served = vm_lab.ssh.run(vm["address"], "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1]
        assert served == public


def test_strict_host_key_checking_refuses_a_forged_key(vm_lab: VmLab, tmp_path: Path) -> None:
    vm = vm_lab.vms[0]
    forged = tmp_path / "known_hosts"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    forged.write_text(
        f"{vm['address']} {(tmp_path / 'k.pub').read_text().split()[0]} {(tmp_path / 'k.pub').read_text().split()[1]}\n"
    )
    result = LabSsh(vm_lab.namespace, vm_lab.ssh.key, forged).run(vm["address"], "true", timeout=30)
    assert result.returncode == 255 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr


def test_a_vm_in_dc1_reaches_the_vm_in_dc2(vm_lab: VmLab) -> None:
    dc1 = next(vm for vm in vm_lab.vms if vm["dc"] == "dc1")
    dc2 = next(vm for vm in vm_lab.vms if vm["dc"] == "dc2")
    probe = vm_lab.ssh.run(dc1["address"], f"timeout 5 bash -c '</dev/tcp/{dc2['address']}/22' && echo open")
    assert probe.stdout.strip() == "open", probe.stderr


def test_second_provision_changes_nothing(vm_lab: VmLab, lab_metrics: Any) -> None:
    again = run_playbook(PROVISION, str(vm_lab.spec))
    assert again.returncode == 0, again.output[-4000:]
    assert again.changed == 0, again.recaps
    lab_metrics.add(f"second provision of the VM lab (changed=0): {again.seconds} s")


def test_check_diff_shows_a_memory_change_and_changes_nothing(vm_lab: VmLab, tmp_path: Path) -> None:
    bigger = vm_spec(
        tmp_path / f"{vm_lab.environment}.berth.yml",
        vm_lab.environment,
        vm_lab.state_dir,
        services__catalog__resources={"vcpus": 1, "memory_mib": 640, "disk_gib": 4},
    )
    definitions = {vm["name"]: virsh("dumpxml", "--inactive", vm["name"]).stdout for vm in vm_lab.vms}
    check = run_playbook(PROVISION, str(bigger), "--check", "--diff")
    assert check.returncode == 0, check.output[-4000:]
    assert re.search(r"-\s+memory_mib: 512\n\+\s+memory_mib: 640", check.output), check.output[-4000:]
    assert {vm["name"]: virsh("dumpxml", "--inactive", vm["name"]).stdout for vm in vm_lab.vms} == definitions
    unchanged = run_playbook(PROVISION, str(vm_lab.spec), "--check", "--diff")
    assert unchanged.returncode == 0 and unchanged.changed == 0, unchanged.recaps


def test_a_memory_change_is_applied_with_a_restart_when_allowed(
    vm_lab: VmLab, tmp_path: Path, lab_metrics: Any
) -> None:
    bigger = vm_spec(
        tmp_path / f"{vm_lab.environment}.berth.yml",
        vm_lab.environment,
        vm_lab.state_dir,
        services__catalog__resources={"vcpus": 1, "memory_mib": 640, "disk_gib": 4},
    )
    applied = run_playbook(PROVISION, str(bigger), "--diff", "-e", "vm_estate_restart_allowed=true")
    assert applied.returncode == 0, applied.output[-6000:]
    assert "memory_mib: 640" in applied.output
    for vm in vm_lab.vms:
        assert domain_memory_kib(vm["name"]) == 640 * 1024
        meminfo = vm_lab.ssh.run(vm["address"], "grep MemTotal /proc/meminfo").stdout.split()
        assert 500 * 1024 < int(meminfo[1]) <= 640 * 1024, meminfo  # the kernel keeps some for itself
    lab_metrics.add(f"memory 512 -> 640 MiB on {len(vm_lab.vms)} running VMs, restarted: {applied.seconds} s")
    again = run_playbook(PROVISION, str(bigger))
    assert again.returncode == 0 and again.changed == 0, again.recaps


def test_destroy_removes_domains_volumes_libvirtd_and_leaves_the_machine_as_before(
    vm_lab: VmLab, lab_metrics: Any
) -> None:
    down = run_playbook(DESTROY, str(vm_lab.spec))
    vm_lab.torn_down = down.returncode == 0
    assert down.returncode == 0, down.output[-6000:]
    lab_metrics.add(f"destroy of the VM lab: {down.seconds} s")
    assert libvirtd_pids() == vm_lab.libvirtd_before
    assert not vm_lab.pool_path.exists()
    assert not (vm_lab.state_dir / vm_lab.environment).exists()
    assert host_snapshot(vm_lab.environment) == vm_lab.baseline
    again = run_playbook(DESTROY, str(vm_lab.spec))
    assert again.returncode == 0 and again.changed == 0, again.output[-3000:]
