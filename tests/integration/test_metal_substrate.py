"""The bare-metal substrate for real: hosts driven through Redfish BMCs, made by `provision`.

The lab plays each bare-metal host with a libvirt domain (TCG) that only its BMC powers, and each
BMC is a sushy-tools Redfish emulator on a loopback port with HTTP basic auth (Berth's lab_bmc).
The module provisions inventories/lab-metal (one catalog instance per bare-metal host, one host
per DC) under a per-run environment, namespace, BMC ports and state directory. Refusals come
first (an unreachable BMC, a wrong BMC password, a host too small for its service): each fails with
a clear message, powers nothing on, and the BMC password appears nowhere in the run's full -vvv
log. Then a good provision powers both hosts on (checked through Redfish itself), SSH works with
strict host key checking, a rerun changes nothing, and destroy powers them off and retires them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.lab import (
    DESTROY,
    PROVISION,
    ROOT,
    VIRSH,
    LabSsh,
    destroyed_afterwards,
    host_snapshot,
    run_playbook,
)
from tests.ports import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the metal lab needs root (libvirtd, namespaces)"),
    pytest.mark.skipif(shutil.which("libvirtd") is None, reason="libvirt-daemon-system is not installed"),
]

BMC_DIR = Path("/run/berth/bmc")


def metal_spec(path: Path, environment: str, state_dir: Path, lab: bool = True) -> dict[str, Any]:
    """The shipped metal lab under this run's names, without its load balancers (not needed here)."""
    raw: dict[str, Any] = yaml.safe_load(
        (ROOT / "inventories" / "lab-metal" / "topology.berth.yml").read_text()
    )
    raw["environment"]["name"] = environment
    raw["state_dir"] = str(state_dir)
    if lab:
        raw["estate"]["lab_namespace"] = f"berth-{environment}"
    for dc in raw["estate"]["datacenters"].values():
        dc.pop("local")
        dc.pop("loadbalancers")
        for host in dc["metal"].values():
            host["bmc"]["address"] = f"http://127.0.0.1:{free_port()}"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return raw


def write(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    # the lab's group_vars (the generated BMC password) go with the spec, as in inventories/lab-metal
    shutil.copytree(
        ROOT / "inventories" / "lab-metal" / "group_vars", path.parent / "group_vars", dirs_exist_ok=True
    )
    return path


def domain_state(name: str) -> str:
    return subprocess.run(
        [*VIRSH, "domstate", name], capture_output=True, text=True, check=False
    ).stdout.strip()


def libvirtd_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True, check=False)
    return [int(pid) for pid in found.stdout.split()]


@dataclass
class MetalLab:
    environment: str
    workdir: Path
    state_dir: Path
    raw: dict[str, Any]
    baseline: dict[str, Any]
    torn_down: bool = False
    logs: list[str] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return f"berth-{self.environment}"

    @property
    def env_dir(self) -> Path:
        return self.state_dir / self.environment

    @property
    def spec(self) -> Path:
        return self.workdir / "metal" / f"{self.environment}.berth.yml"

    @property
    def hosts(self) -> dict[str, dict[str, Any]]:
        return {
            name: {**body, "dc": dc_name}
            for dc_name, dc in self.raw["estate"]["datacenters"].items()
            for name, body in dc["metal"].items()
        }

    @property
    def password(self) -> str:
        return (self.env_dir / "bmc-password").read_text().strip()

    @property
    def ssh(self) -> LabSsh:
        return LabSsh(self.namespace, self.env_dir / "id_ed25519", self.env_dir / "known_hosts")

    def variant(self, name: str, change: dict[str, Any]) -> Path:
        raw = json.loads(json.dumps(self.raw))
        if "memory_mib" in change:
            raw["services"]["catalog"]["resources"]["memory_mib"] = change["memory_mib"]
        if "hardware_mib" in change:
            for dc in raw["estate"]["datacenters"].values():
                for host in dc["metal"].values():
                    host["hardware"]["memory_mib"] = change["hardware_mib"]
        path = self.workdir / name / f"{self.environment}.berth.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        return write(path, raw)

    def provision(self, spec: Path, *flags: str) -> Any:
        run = run_playbook(PROVISION, str(spec), "-vvv", *flags)
        self.logs.append(run.output)
        return run

    def redfish(self, host: str) -> dict[str, Any]:
        """The host's system as its BMC reports it, read directly (not through Berth's client)."""
        address = self.hosts[host]["bmc"]["address"]
        record = json.loads((BMC_DIR / host / "record.json").read_text())
        token = base64.b64encode(f"berth:{self.password}".encode()).decode()
        request = urllib.request.Request(
            f"{address}/redfish/v1/Systems/{record['system_id']}", headers={"Authorization": f"Basic {token}"}
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            return dict(json.load(response))

    def lifecycle(self, host: str) -> str:
        return str(json.loads((self.env_dir / "metal" / f"{host}.json").read_text())["state"])


def assert_secret_free(lab: MetalLab, *secrets: str) -> None:
    for secret in secrets:
        assert len(secret) >= 8
        for log in lab.logs:
            assert secret not in log, "a BMC password reached the output"
        for path in lab.env_dir.rglob("*"):
            if path.is_file() and path.name != "bmc-password":
                assert secret not in path.read_text(errors="replace"), f"a BMC password is in {path}"


# --- refused before anything is powered ------------------------------------------------------------


def test_an_unreachable_bmc_fails_clearly_and_leaks_no_password(tmp_path: Path, lab_run_id: str) -> None:
    """A real estate (no lab) whose BMCs do not answer: bounded retries, then one clear error."""
    before = host_snapshot(f"mu{lab_run_id}")
    raw = metal_spec(tmp_path / "real.berth.yml", f"mu{lab_run_id}", tmp_path / "state", lab=False)
    spec = tmp_path / "real.berth.yml"
    secret = "Unreachable-BMC-pass-7f3a"
    extra = json.dumps({"vault_bmc_password_dc1": secret, "vault_bmc_password_dc2": secret})
    run = run_playbook(PROVISION, str(spec), "-vvv", "-e", extra)
    assert run.returncode != 0
    first = next(iter(raw["estate"]["datacenters"]["dc1"]["metal"].values()))["bmc"]["address"]
    assert first in run.output, run.output[-4000:]
    assert "refused" in run.output.lower() or "no answer" in run.output.lower(), run.output[-4000:]
    assert secret not in run.output
    assert host_snapshot(f"mu{lab_run_id}") == before


@pytest.fixture(scope="module")
def metal_lab(lab_run_id: str, lab_workdir: Path, lab_metrics: Any) -> Iterator[MetalLab]:
    if libvirtd_pids():
        pytest.fail("libvirtd already runs: the metal lab starts its own inside its namespace")
    environment = f"m{lab_run_id}"
    state_dir = lab_workdir / "metal-state"
    (lab_workdir / "metal").mkdir(exist_ok=True)
    raw = metal_spec(lab_workdir / "metal" / f"{environment}.berth.yml", environment, state_dir)
    lab = MetalLab(environment, lab_workdir, state_dir, raw, host_snapshot(environment))
    write(lab.spec, raw)

    def stop_bmcs() -> list[str]:
        done = []
        for host in lab.hosts:
            record = BMC_DIR / host / "record.json"
            if record.is_file():
                pid = json.loads(record.read_text())["pid"]
                subprocess.run(["kill", str(pid)], check=False)
                shutil.rmtree(BMC_DIR / host, ignore_errors=True)
                done.append(f"stopped BMC {pid}")
        return done

    with destroyed_afterwards(
        lab.spec, lab.namespace, domains=lambda: list(lab.hosts), also=stop_bmcs, done=lambda: lab.torn_down
    ):
        yield lab


def test_a_wrong_bmc_password_powers_nothing_and_is_never_shown(metal_lab: MetalLab) -> None:
    wrong = "Wrong-BMC-pass-91c2e"
    extra = json.dumps({"vault_bmc_password_dc1": wrong, "vault_bmc_password_dc2": wrong})
    run = metal_lab.provision(metal_lab.spec, "-e", extra)
    assert run.returncode != 0
    assert "401" in run.output or "credentials" in run.output.lower(), run.output[-4000:]
    for host in metal_lab.hosts:
        assert domain_state(host) == "shut off", host
        assert metal_lab.redfish(host)["PowerState"] == "Off"
    assert_secret_free(metal_lab, wrong, metal_lab.password)


def test_a_host_too_small_for_its_service_fails_inspection_and_stays_off(metal_lab: MetalLab) -> None:
    """The spec claims 2 GiB hosts for a 1.5 GiB service; the machines (as their BMCs report) have 1 GiB.

    A spec that is too small itself never gets this far: placement refuses it. Here the lab's
    emulated machines keep their 1 GiB (their definition step is skipped), as real ones would. (Redfish
    reports memory in whole GiB, which is why the lab's hosts have whole GiB.)
    """
    wrong_spec = metal_lab.variant("too-big", {"memory_mib": 1536, "hardware_mib": 2048})
    run = metal_lab.provision(wrong_spec, "--skip-tags", "vms")
    assert run.returncode != 0
    assert "required 1 vcpus and 1536 MiB of memory" in run.output, run.output[-4000:]
    assert "1024" in run.output
    for host in metal_lab.hosts:
        assert domain_state(host) == "shut off"
        assert metal_lab.lifecycle(host) == "failed"
    assert_secret_free(metal_lab, metal_lab.password)


# --- the good run --------------------------------------------------------------------------------


def test_provision_powers_the_hosts_on_through_redfish_and_they_answer_ssh(
    metal_lab: MetalLab, lab_metrics: Any
) -> None:
    run = metal_lab.provision(metal_lab.spec)
    assert run.returncode == 0, run.output[-6000:]
    lab_metrics.add(
        f"provision of the metal lab ({len(metal_lab.hosts)} emulated hosts behind Redfish BMCs, after a failed "
        f"inspection: re-enroll, inspect, power on, SSH, active): {run.seconds} s"
    )
    for host, body in metal_lab.hosts.items():
        system = metal_lab.redfish(host)
        assert system["PowerState"] == "On"
        assert domain_state(host) == "running"
        answer = metal_lab.ssh.run(body["address"], "hostname; systemctl is-system-running --wait")
        assert answer.stdout.split() == [host, "running"], answer.stdout + answer.stderr
        assert metal_lab.lifecycle(host) == "active"
    assert_secret_free(metal_lab, metal_lab.password)


def test_second_provision_changes_nothing(metal_lab: MetalLab, lab_metrics: Any) -> None:
    again = metal_lab.provision(metal_lab.spec)
    assert again.returncode == 0, again.output[-4000:]
    assert again.changed == 0, again.recaps
    lab_metrics.add(f"second provision of the metal lab (changed=0): {again.seconds} s")
    check = metal_lab.provision(metal_lab.spec, "--check", "--diff")
    assert check.returncode == 0 and check.changed == 0, check.recaps
    assert_secret_free(metal_lab, metal_lab.password)


def test_destroy_powers_the_hosts_off_and_retires_them(metal_lab: MetalLab, lab_playbook: Any) -> None:
    # the metal part of destroy alone first: on a real estate that is all destroy does to a host
    plays = [
        {
            "name": "metal destroy only",
            "hosts": "substrate_metal",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "metal",
                    "ansible.builtin.include_role": {
                        "name": "berth.fleet.metal_estate",
                        "tasks_from": "destroy.yml",
                    },
                }
            ],
        }
    ]
    playbook = metal_lab.workdir / "metal-destroy.yml"
    playbook.write_text(yaml.safe_dump(plays, sort_keys=False))
    powered_off: dict[str, str] = {}
    systems_before = {
        host: json.loads((BMC_DIR / host / "record.json").read_text()) for host in metal_lab.hosts
    }
    run = run_playbook(playbook, str(metal_lab.spec), "-vvv")
    metal_lab.logs.append(run.output)
    assert run.returncode == 0, run.output[-4000:]
    for host in metal_lab.hosts:
        powered_off[host] = domain_state(host)
        assert metal_lab.lifecycle(host) == "retired"
    assert powered_off == {host: "shut off" for host in metal_lab.hosts}
    assert all(record["system_id"] for record in systems_before.values())
    assert_secret_free(metal_lab, metal_lab.password)

    down = run_playbook(DESTROY, str(metal_lab.spec))
    metal_lab.torn_down = down.returncode == 0
    assert down.returncode == 0, down.output[-4000:]
    assert not any((BMC_DIR / host).exists() for host in metal_lab.hosts)
    assert host_snapshot(metal_lab.environment) == metal_lab.baseline
