"""The shipped environments, seen through the real `ansible-inventory` and the topology plugin."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.specs import spec
from tools.inventory_json import inventory_list, plain

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def inventory(source: Path | str) -> dict[str, Any]:
    return inventory_list(source)


def hosts_of(data: dict[str, Any], group: str) -> list[str]:
    return list(data.get(group, {}).get("hosts", []))


@pytest.fixture(scope="module")
def envs() -> dict[str, dict[str, Any]]:
    return {env: (inventory(ROOT / "inventories" / env)) for env in ("dev", "ci", "prod", "lab")}


def test_prod_is_figure_8_9(envs: dict[str, dict[str, Any]]) -> None:
    prod = envs["prod"]
    hostvars = prod["_meta"]["hostvars"]
    for service in ("catalog", "orders"):
        members = hosts_of(prod, f"svc_{service}")
        assert len(members) == 4
        assert len({hostvars[h]["berth_machine"] for h in members}) == 4  # 4 distinct machines
        assert Counter(hostvars[h]["berth_dc"] for h in members) == {"dc1": 2, "dc2": 2}
        assert len({hostvars[h]["ansible_host"] for h in members}) == 4
    assert sorted(hosts_of(prod, "lb")) == ["lb-dc1", "lb-dc2"]


def test_ci_runs_two_per_service_on_one_machine(envs: dict[str, dict[str, Any]]) -> None:
    ci = envs["ci"]
    hostvars = ci["_meta"]["hostvars"]
    for service in ("catalog", "orders"):
        members = hosts_of(ci, f"svc_{service}")
        assert len(members) == 2
        assert len({hostvars[h]["berth_machine"] for h in members}) == 1
        assert len({hostvars[h]["ansible_host"] for h in members}) == 1  # colocated on one node
        assert len({hostvars[h]["berth_port"] for h in members}) == 2  # on different ports


def test_dev_runs_one_per_service(envs: dict[str, dict[str, Any]]) -> None:
    dev = envs["dev"]
    assert hosts_of(dev, "svc_catalog") == ["catalog-1"]
    assert hosts_of(dev, "svc_orders") == ["orders-1"]


def test_lab_is_prod_shaped(envs: dict[str, dict[str, Any]]) -> None:
    lab = envs["lab"]
    hostvars = lab["_meta"]["hostvars"]
    # catalog x 4 rolling; orders x 2 blue-green: two colours of 2, each spread 1 + 1 over the DCs;
    # payments x 2 canary: 2 stable spread 1 + 1, and a canary and a baseline
    assert len(hosts_of(lab, "instances")) == 12
    for colour in ("blue", "green"):
        members = hosts_of(lab, f"colour_orders_{colour}")
        assert len(members) == 2 and all(hostvars[h]["berth_colour"] == colour for h in members)
        assert sorted(hostvars[h]["berth_dc"] for h in members) == ["dc1", "dc2"]
    assert len({hostvars[h]["berth_node"] for h in hosts_of(lab, "svc_orders")}) == 4
    stable = hosts_of(lab, "track_payments_stable")
    assert sorted(hostvars[h]["berth_dc"] for h in stable) == ["dc1", "dc2"]
    assert hosts_of(lab, "track_payments_canary") == ["payments-3"]
    assert hosts_of(lab, "track_payments_baseline") == ["payments-4"]
    assert all(hostvars[h]["berth_track"] == "stable" for h in stable)
    spec = hostvars["payments-1"]["berth_service_spec"]
    assert spec["tracks"]["canary"] == {"group": "track_payments_canary"}
    assert [next(iter(step)) for step in spec["strategy"]["canary"]["steps"]] == [
        "weight",
        "analysis",
        "weight",
        "analysis",
    ]
    assert hosts_of(lab, "lb_dc1") == ["lb-dc1"] and hosts_of(lab, "lb_dc2") == ["lb-dc2"]
    assert hosts_of(lab, "execution_dc1") == ["exec-dc1"] and hosts_of(lab, "execution_dc2") == ["exec-dc2"]
    addresses = [hostvars[h]["ansible_host"] for h in hostvars]
    # 12 instances, 2 LBs, 2 execution nodes, 3 + 1 database members and 3 etcd members
    assert len(addresses) == len(set(addresses)) == 23
    assert all(hostvars[h]["berth_substrate"] == "local" for h in hostvars)


def test_host_and_group_variables(envs: dict[str, dict[str, Any]]) -> None:
    prod = envs["prod"]
    catalog2 = prod["_meta"]["hostvars"]["catalog-2"]
    assert catalog2["berth_service"] == "catalog"
    assert catalog2["berth_instance"] == 2
    assert catalog2["berth_dc"] == "dc2"
    assert catalog2["berth_port"] == 8080
    assert catalog2["berth_node"] == "prod-catalog-2"
    # outside a lab, SSH to a node Berth made checks the host key Berth recorded, strictly
    assert catalog2["ansible_ssh_common_args"] == (
        f"-o UserKnownHostsFile={catalog2['berth_state_dir']}/known_hosts -o StrictHostKeyChecking=yes"
    )
    hypervisor = catalog2["berth_hypervisor"]
    assert hypervisor["uri"].startswith("qemu+ssh://") and hypervisor["domain_type"] == "kvm"
    assert hypervisor["network"] == f"berth-prod-{catalog2['berth_dc']}"
    assert hypervisor["bridge"] == f"br-{catalog2['berth_dc']}" and hypervisor["pool"] == "berth"
    assert catalog2["berth_service_spec"]["health"] == {"path": "/health", "status": 200}
    assert prod["_meta"]["hostvars"]["orders-1"]["berth_service_spec"]["max_unavailable"] == 1  # 25% of 4
    assert "berth_service_spec" not in prod["_meta"]["hostvars"]["lb-dc1"]


def test_lab_nodes_are_reached_through_the_lab_namespace_with_strict_host_keys(
    envs: dict[str, dict[str, Any]],
) -> None:
    lab = envs["lab"]["_meta"]["hostvars"]
    for host in ("catalog-1", "lb-dc2"):
        args = lab[host]["ansible_ssh_common_args"]
        assert "StrictHostKeyChecking=yes" in args
        assert "UserKnownHostsFile=/var/lib/berth/lab/known_hosts" in args
        assert "nsenter --net=/run/netns/berth-lab" in args
    assert lab["lb-dc2"]["berth_bridge"] == "br-dc2"
    # the same addresses exist in other labs' namespaces: SSH masters are per environment
    assert lab["catalog-1"]["ansible_control_path"] == "%(directory)s/lab-%%C"
    # real estates are reached directly, with the operator's own SSH user and key; only the nodes
    # Berth makes (VMs, metal) pin SSH to Berth's known_hosts; load balancers are the user's own hosts
    prod = envs["prod"]["_meta"]["hostvars"]
    assert all("ansible_ssh_common_args" not in v for v in prod.values() if v["berth_role"] == "lb")
    assert all(
        "ProxyCommand" not in v["ansible_ssh_common_args"]
        for v in prod.values()
        if v["berth_role"] == "instance"
    )


def test_constructable_keyed_groups_and_compose(tmp_path: Path) -> None:
    raw = spec()
    raw["keyed_groups"] = [{"key": "berth_service_spec.version", "prefix": "version"}]
    raw["compose"] = {
        "health_url": "'http://' ~ ansible_host ~ ':' ~ berth_port ~ berth_service_spec.health.path"
    }
    raw["groups"] = {"first_instances": "berth_instance == 1"}
    path = tmp_path / "constructed.berth.yml"
    path.write_text(yaml.safe_dump(raw))
    data = inventory(path)
    assert len(hosts_of(data, "version_v1")) == 6
    assert sorted(hosts_of(data, "first_instances")) == ["catalog-1", "orders-1"]
    assert data["_meta"]["hostvars"]["catalog-1"]["health_url"] == "http://10.90.1.16:8080/health"


def test_execution_nodes_are_hosts_of_their_datacenter_instance_group(tmp_path: Path) -> None:
    raw = spec()
    raw["estate"]["datacenters"]["dc1"]["execution_nodes"] = {
        "exec-dc1": {"address": "10.90.1.3", "machine": "hv-b"}
    }
    raw["estate"]["datacenters"]["dc2"]["execution_nodes"] = {"exec-dc2": {"address": "10.90.2.3"}}
    path = tmp_path / "exec.berth.yml"
    path.write_text(yaml.safe_dump(raw))
    data = inventory(path)
    assert sorted(hosts_of(data, "execution_nodes")) == ["exec-dc1", "exec-dc2"]
    assert hosts_of(data, "execution_dc1") == ["exec-dc1"] and hosts_of(data, "dc_dc1").count("exec-dc1") == 1
    assert "exec-dc1" not in hosts_of(data, "lb")  # never configured as a load balancer
    made, existing = data["_meta"]["hostvars"]["exec-dc1"], data["_meta"]["hostvars"]["exec-dc2"]
    assert (made["berth_role"], made["berth_substrate"], made["berth_node"]) == (
        "execution",
        "vm",
        "test-exec-dc1",
    )
    assert (existing["berth_substrate"], existing["berth_node"]) == ("existing", "exec-dc2")


def test_ansible_doc_documents_the_plugin() -> None:
    result = subprocess.run(
        [str(BIN / "ansible-doc"), "-t", "inventory", "berth.fleet.topology"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert "keyed_groups" in result.stdout and "environment" in result.stdout


def test_nodes_are_unique_and_sized_for_what_they_carry(envs: dict[str, dict[str, Any]]) -> None:
    from ansible_collections.berth.fleet.plugins.module_utils.model.nodes import nodes

    ci = envs["ci"]
    hostvars = ci["_meta"]["hostvars"]
    found = {n["name"]: n for n in nodes(hostvars, sorted(hostvars))}
    assert sorted(found) == ["ci-ci-box", "ci-lb-ci"]
    box = found["ci-ci-box"]
    assert sorted(box["hosts"]) == ["catalog-1", "catalog-2", "orders-1", "orders-2"]
    assert (box["vcpus"], box["memory_mib"]) == (4, 1024)
    assert (box["bridge"], box["prefix"], box["gateway"]) == ("br-dc1", 24, "10.71.1.1")
    assert found["ci-lb-ci"]["vcpus"] == 0
    lab = envs["lab"]["_meta"]["hostvars"]
    # 12 instances, 2 load balancers, 2 execution nodes, 4 database members, 3 etcd members
    assert len(nodes(lab, sorted(lab))) == 23
    assert lab["catalog-1"]["berth_lab_bridges"] == [
        {"name": "br-dc1", "address": "10.70.1.1/24"},
        {"name": "br-dc2", "address": "10.70.2.1/24"},
    ]
    assert envs["prod"]["_meta"]["hostvars"]["catalog-1"]["berth_lab_bridges"] == []


def test_metal_hosts_carry_one_instance_and_a_templatable_bmc_reference(tmp_path: Path) -> None:
    def metal(dc: int) -> dict[str, Any]:
        return {
            "address": f"10.90.{dc}.10",
            "hardware": {"vcpus": 8, "memory_mib": 8192},
            "bmc": {"address": f"bmc{dc}.invalid", "username": "admin", "password": "{{ vault_bmc }}"},
        }

    raw = spec(
        **{
            "services.orders.substrate": "metal",
            "estate.datacenters.dc1.metal": {"bm-1": metal(1)},
            "estate.datacenters.dc2.metal": {"bm-2": metal(2)},
        }
    )
    path = tmp_path / "metal.berth.yml"
    path.write_text(yaml.safe_dump(raw))
    hostvars = (inventory(path))["_meta"]["hostvars"]
    assert {hostvars[h]["berth_node"] for h in ("orders-1", "orders-2")} == {"bm-1", "bm-2"}
    assert hostvars["orders-1"]["ansible_host"] == "10.90.1.10"
    # a bare BMC host means Redfish over HTTPS; the certificate is verified unless the spec says not
    bmc = hostvars["orders-1"]["berth_bmc"]
    assert (bmc["address"], bmc["verify_tls"], bmc["ca_path"]) == ("https://bmc1.invalid", True, "")
    assert hostvars["orders-1"]["berth_metal"] == {
        "name": "bm-1",
        "hardware": {"vcpus": 8, "memory_mib": 8192},
    }
    # the reference resolves where it is used (in real use, from a vaulted vars file)
    result = subprocess.run(
        [
            str(BIN / "ansible"),
            "-i",
            str(path),
            "orders-1",
            "-m",
            "debug",
            "-a",
            "msg={{ berth_bmc.password }}",
            "-e",
            "vault_bmc=from-the-vault",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert "from-the-vault" in result.stdout


def test_domain_nodes_are_the_vms_and_in_a_lab_the_domains_playing_bare_metal() -> None:
    from ansible_collections.berth.fleet.plugins.module_utils.model.nodes import domain_nodes

    def host(node: str, substrate: str) -> dict[str, Any]:
        return {
            "berth_node": node,
            "berth_dc": "dc1",
            "berth_address": "10.0.0.1",
            "berth_substrate": substrate,
            "berth_datacenters": {"dc1": {"prefix": 24, "gateway": "10.0.0.254"}},
        }

    hostvars = {"vm-1": host("n-vm", "vm"), "bm-1": host("n-bm", "metal"), "ct-1": host("n-ct", "local")}
    groups = {"substrate_vm": ["vm-1"], "substrate_metal": ["bm-1"], "substrate_local": ["ct-1"]}
    assert [n["name"] for n in domain_nodes(hostvars, groups, "berth-lab")] == ["n-vm", "n-bm"]
    assert [n["name"] for n in domain_nodes(hostvars, groups, "")] == ["n-vm"]


def test_a_service_with_no_instances_takes_any_max_unavailable(tmp_path: Path) -> None:
    """0 instances (declared, not running here) with a percentage or a count: nothing to take down."""
    raw = spec(
        **{
            "environment.max_unavailable": "25%",
            "environment.services.catalog": {"instances": 0},
            "environment.services.orders": {"instances": 0, "max_unavailable": 2},
        }
    )
    path = tmp_path / "idle.berth.yml"
    path.write_text(yaml.safe_dump(raw))
    assert hosts_of(inventory(path), "instances") == []
    exported = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(path), "--list", "--export"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout
    data = json.loads(exported, object_hook=plain)  # --export keeps the vars of a group with no hosts
    for service in ("catalog", "orders"):
        descriptor = data[f"svc_{service}"]["vars"]["berth_service_spec"]
        assert (descriptor["instances"], descriptor["max_unavailable"]) == (0, 0)


def test_a_parallel_run_and_its_gate_reach_the_service_descriptor(tmp_path: Path) -> None:
    raw = spec(
        **{
            "environment.services.orders.parallel_run": {
                "sample": 0.5,
                "compare": {"ignore_fields": ["updated_at", "items[*].etag"], "ignore_headers": ["Date"]},
            },
            "environment.services.orders.strategy": {
                "blue_green": {
                    "preview_port": 18090,
                    "parallel_run": {"min_requests": 200, "max_mismatch_rate": 0.001},
                }
            },
        }
    )
    path = tmp_path / "parallel.berth.yml"
    path.write_text(yaml.safe_dump(raw))
    descriptor = inventory(path)["_meta"]["hostvars"]["orders-1"]["berth_service_spec"]
    assert descriptor["parallel_run"] == {
        "sample": 0.5,
        "methods": ["GET", "HEAD"],
        "allow_unsafe": False,
        "queue": 1000,
        "timeout": 2.0,
        "compare": {
            "mode": "json",
            "ignore_fields": ["updated_at", "items[*].etag"],
            "ignore_headers": ["date"],
            "compare_headers": ["content-type"],
            "redact_headers": [],
            "redact_fields": [],
        },
    }
    assert descriptor["strategy"]["blue_green"]["parallel_run"] == {
        "min_requests": 200,
        "max_mismatch_rate": 0.001,
        "max_seconds": 300.0,  # the default
    }
    catalog = inventory(path)["_meta"]["hostvars"]["catalog-1"]["berth_service_spec"]
    assert catalog["parallel_run"] is None
