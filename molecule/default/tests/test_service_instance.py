"""Molecule verify (testinfra): the service_instance role on real libvirt VMs.

Runs on every host of group svc_catalog of molecule/default/topology.berth.yml, reached over SSH
through the lab namespace with strict host key checking (the inventory's own connection settings).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

UNIT_SANDBOX = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "RestrictNamespaces": "yes",
    "CapabilityBoundingSet": "",
}


@pytest.fixture
def instance(host: Any) -> dict[str, Any]:
    facts = host.ansible.get_variables()
    name = facts.get("inventory_hostname") or host.backend.host.name
    return {
        "name": name,
        "unit": f"berth-{name}.service",
        "user": f"berth-{facts['berth_service']}",
        "port": int(facts["berth_port"]),
        "version": facts["berth_service_spec"]["version"],
        "memory_mib": int(facts["berth_service_spec"]["resources"]["memory_mib"]),
        "node": facts["berth_node"],
    }


def test_runs_on_its_own_vm(host: Any, instance: dict[str, Any]) -> None:
    assert host.check_output("hostname") == instance["node"]
    assert host.check_output("systemd-detect-virt") == "qemu"


def test_service_is_running_and_enabled_as_its_own_user(host: Any, instance: dict[str, Any]) -> None:
    service = host.service(instance["unit"])
    assert service.is_running and service.is_enabled
    user = host.user(instance["user"])
    assert user.exists and user.shell in ("/usr/sbin/nologin", "/bin/false")
    pid = host.check_output(f"systemctl show -p MainPID --value {instance['unit']}")
    assert host.check_output(f"ps -o user= -p {pid}") == instance["user"]


def test_health_endpoint_answers_with_the_deployed_version(host: Any, instance: dict[str, Any]) -> None:
    health = host.run(f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{instance['port']}/health")
    assert health.stdout == "200", health.stderr
    root = json.loads(host.check_output(f"curl -s http://127.0.0.1:{instance['port']}/"))
    assert root["version"] == instance["version"]


def test_unit_sandboxing_and_limits_are_in_effect(host: Any, instance: dict[str, Any]) -> None:
    keys = [*UNIT_SANDBOX, "MemoryMax", "User"]
    shown = dict(
        line.split("=", 1)
        for line in host.check_output(f"systemctl show {instance['unit']} -p {','.join(keys)}").splitlines()
    )
    for key, expected in UNIT_SANDBOX.items():
        assert shown[key] == expected, (key, shown[key])
    assert int(shown["MemoryMax"]) == instance["memory_mib"] * 1024 * 1024
    assert shown["User"] == instance["user"]
    # in effect, not only declared: the running service cannot write outside its sandbox
    pid = host.check_output(f"systemctl show -p MainPID --value {instance['unit']}")
    assert host.check_output(f"grep NoNewPrivs /proc/{pid}/status").split()[1] == "1"
    attempt = host.run(f"nsenter -t {pid} -m sh -c 'touch /usr/berth-probe' 2>&1")
    assert attempt.rc != 0 and "Read-only file system" in attempt.stdout
