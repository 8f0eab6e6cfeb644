"""Each inventory as AWX imports it, and a job on what it imported (issue 11, part 2).

AWX imports an inventory from a project with its own command, ``ansible-inventory --list --export``,
run by ansible-runner with the project as its working directory and the project's collections
installed into ``requirements_collections`` (tests/awx.py, from AWX's source). Here the collection
is built and installed there with ansible-galaxy, the project is a copy of what git would check out
(no ``ansible_collections`` link), and the inventory source is the one awx/ configures. Then the
imported JSON goes back to a job the way AWX hands it over (an inventory script), and a real
playbook runs on it as an AWX job: it asserts the variables the playbooks read, renders the
placement table and takes every service through the rollout preflight. Nothing but the controller
is involved.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.parsing.vault import VaultLib, VaultSecret

from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.spec import ArtifactSpec
from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.store import ArtifactBuilder
from tests.awx import ANSI, ROOT, Awx, PrivateDataDir, Run, copy_project, prepare
from tests.collection import BIN
from tools.inventory_json import plain

ENVIRONMENTS = sorted(path.parent.name for path in (ROOT / "inventories").glob("*/topology.berth.yml"))
CHECK_PLAYBOOK = "tests/playbooks/awx_inventory.yml"


def spec_of(env: str) -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "inventories" / env / "topology.berth.yml").read_text()))


@pytest.fixture(scope="module")
def awx(tmp_path_factory: pytest.TempPathFactory) -> Awx:
    return prepare(tmp_path_factory.mktemp("awx"))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every service's artifact at its spec's version, built once (the preflight verifies them)."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    for env in ENVIRONMENTS:
        for service in spec_of(env)["services"].values():
            spec = ArtifactSpec(
                service["artifact"], service["version"], artifacts, ROOT / "services" / "sample"
            )
            ArtifactBuilder(spec).ensure("present", check_mode=False)
    return artifacts


def installed_elsewhere(pdd: PrivateDataDir, env: dict[str, str]) -> list[str]:
    """The entries of the collections path, other than requirements_collections, that hold berth.fleet."""
    found = []
    for entry in env["ANSIBLE_COLLECTIONS_PATH"].split(":")[1:]:
        path = Path(entry.replace("~", env["HOME"], 1)) if entry.startswith("~") else pdd.project / entry
        if (path / "ansible_collections" / "berth" / "fleet").exists():
            found.append(entry)
    return found


def inventory_listing(source: Path, cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """``ansible-inventory --list``: every host's variables as a playbook sees them."""
    proc = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(source), "--list"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, ANSI.sub("", proc.stderr)
    return dict(json.loads(proc.stdout))


def view(listing: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[set[str], set[str]]]]:
    """Host variables (without the ids AWX adds), and each group's hosts and children."""
    hostvars = {
        host: {k: v for k, v in variables.items() if not k.startswith(("remote_tower_", "remote_host_"))}
        for host, variables in listing["_meta"]["hostvars"].items()
    }
    groups = {
        name: (set(group.get("hosts", [])), set(group.get("children", [])) - {"ungrouped"})
        for name, group in listing.items()
        if name not in ("_meta", "ungrouped")
    }
    return hostvars, groups


def instance_count(policy: dict[str, Any]) -> int:
    """A blue-green service has two colours of its instance count, a canary one its count plus the
    canary and its baseline, a rolling one its count."""
    strategy = policy.get("strategy", "rolling")
    count = int(policy["instances"])
    if isinstance(strategy, dict) and "blue_green" in strategy:
        return 2 * count
    if isinstance(strategy, dict) and "canary" in strategy:
        return count + (2 if strategy["canary"].get("baseline", True) else 1)
    return count


def database_members(spec: dict[str, Any]) -> set[str]:
    """The database and etcd members the spec asks for (docs/databases.md), by name."""
    environment = spec["environment"]
    plans = {n: (b.get("database") or {}) for n, b in environment["services"].items() if isinstance(b, dict)}
    found = set()
    for name, plan in plans.items():
        if plan.get("mode") == "dedicated":
            found |= {f"{name}-db-{n}" for n in range(1, plan.get("replicas", 0) + 2)}
    shared = (environment.get("databases") or {}).get("shared") or {}
    if any(plan.get("mode") == "shared" for plan in plans.values()):
        found |= {f"shared-db-{n}" for n in range(1, shared["members"] + 1)}
    if found:
        dcs = (environment.get("databases") or {}).get("dcs") or {}
        failover = any(plan.get("replicas") for plan in plans.values()) or shared.get("members", 0) > 1
        found |= {f"dcs-{n}" for n in range(1, dcs.get("members", 3 if failover else 1) + 1)}
    return found


def check_against_spec(exported: dict[str, Any], spec: dict[str, Any]) -> None:
    """The hosts, groups and variables a job needs, as the spec says they must be."""
    data = json.loads(json.dumps(exported), object_hook=plain)
    hostvars: dict[str, dict[str, Any]] = data["_meta"]["hostvars"]
    environment, services = spec["environment"], spec["services"]
    datacenters = spec["estate"]["datacenters"]
    instances = {
        name: [f"{name}-{n}" for n in range(1, instance_count(environment["services"][name]) + 1)]
        for name in services
    }
    lbs = {lb: dc for dc, body in datacenters.items() for lb in body.get("loadbalancers", {})}
    executors = {node: dc for dc, body in datacenters.items() for node in body.get("execution_nodes", {})}
    members = database_members(spec)
    assert (
        set(hostvars)
        == {h for hosts in instances.values() for h in hosts} | set(lbs) | set(executors) | members
    )
    for node, dc in executors.items():  # the hosts of the DC's instance group
        assert node in data["execution_nodes"]["hosts"] and node in data[f"execution_{dc}"]["hosts"]
    assert data["all"]["vars"]["berth_environment"] == environment["name"]
    assert set(data["all"]["vars"]["berth_datacenters"]) == set(datacenters)
    assert data["all"]["vars"]["berth_state_dir"]
    assert sorted(data.get("lb", {}).get("hosts", [])) == sorted(lbs)
    assert sorted(data["instances"]["hosts"]) == sorted(h for hosts in instances.values() for h in hosts)
    for name, hosts in instances.items():
        group = data.get(f"svc_{name}", {})
        assert sorted(group.get("hosts", [])) == sorted(hosts), name
        descriptor = group["vars"]["berth_service_spec"]  # on the group, as an export keeps it
        assert {k: descriptor[k] for k in ("artifact", "version", "port")} == {
            k: services[name][k] for k in ("artifact", "version", "port")
        }
        assert isinstance(descriptor["max_unavailable"], int) and descriptor["max_unavailable"] >= 1
        for host in hosts:
            assert hostvars[host]["berth_role"] == "instance" and hostvars[host]["berth_service"] == name
            assert hostvars[host]["berth_dc"] in datacenters and isinstance(hostvars[host]["berth_port"], int)
            assert host in data[f"dc_{hostvars[host]['berth_dc']}"]["hosts"]
            assert host in data[f"substrate_{services[name]['substrate']}"]["hosts"]
    for lb, dc in lbs.items():
        assert hostvars[lb]["berth_role"] == "lb" and hostvars[lb]["berth_dc"] == dc
        assert hostvars[lb]["ansible_host"] == datacenters[dc]["loadbalancers"][lb]["address"]
        assert lb in data[f"lb_{dc}"]["hosts"]


def run_check_job(awx: Awx, env: str, pdd: PrivateDataDir, artifacts: Path, **kwargs: Any) -> Run:
    extra_vars = {"awx_inventory_artifacts": str(artifacts), **kwargs.pop("extra_vars", {})}
    return pdd.job(CHECK_PLAYBOOK, extra_vars, awx.injected(env), ident="2", **kwargs)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_awx_imports_the_inventory_and_a_job_runs_on_it(
    awx: Awx, artifacts: Path, env: str, tmp_path: Path
) -> None:
    update = awx.pdd(tmp_path / "update")
    exported = awx.import_inventory(env, update)
    assert not installed_elsewhere(update, update.inventory_update_env({}, "1"))
    check_against_spec(exported, spec_of(env))

    job = awx.pdd(tmp_path / "job")
    job.write_job_inventory(exported)
    injected = awx.injected(env)
    # what the job sees of every host is what ansible-playbook from the checkout sees, variable for
    # variable (the {"__ansible_unsafe": ...} marks included): nothing is lost or changes meaning in AWX
    job_hostvars, job_groups = view(inventory_listing(job.inventory, job.project, job.job_env("2", injected)))
    cli_hostvars, cli_groups = view(inventory_listing(ROOT / "inventories" / env, ROOT, dict(os.environ)))
    assert job_hostvars == cli_hostvars
    assert {name: members for name, members in job_groups.items() if name != "all"} == {
        name: members for name, members in cli_groups.items() if name != "all"
    }

    run = run_check_job(awx, env, job, artifacts)
    assert run.status == "successful", run.stdout[-4000:]
    assert run.hosts() == {"localhost"}  # nothing but the controller
    (table,) = (event["res"]["msg"] for event in run.of("runner_on_ok", "The placement table"))
    assert all(host in table for host in exported["_meta"]["hostvars"])
    assert len(run.of("runner_on_ok", "verified its artifact")) == len(spec_of(env)["services"])


def test_awx_24_6_1_names_the_collections_path_so_that_ansible_core_2_19_misses_it(
    awx: Awx, tmp_path: Path
) -> None:
    """The control: the same import, with the collections path under the name AWX 24.6.1 gives it for
    an inventory update (ANSIBLE_COLLECTIONS_PATHS), does not find the collection in
    requirements_collections: ansible-core 2.19 reads only ANSIBLE_COLLECTIONS_PATH. On such an AWX
    the collection must come from the execution environment (docs/awx.md)."""
    update = awx.pdd(tmp_path / "update")
    source = awx.plan["prod"]["inventory_source"]
    run, output = update.inventory_update(source["source_path"], source["source_vars"], legacy=True)
    assert run.status == "failed" and not output.exists()
    assert "berth.fleet.topology" in run.stdout and "Failed to load inventory plugin" in run.stdout


def vaulted(secret: str, password: str) -> str:
    text = VaultLib([("default", VaultSecret(password.encode()))]).encrypt(secret).decode()
    return "!vault |\n" + "".join(f"  {line}\n" for line in text.splitlines())


def test_bmc_passwords_in_ansible_vault_reach_the_job_encrypted_and_open_with_its_vault_credential(
    awx: Awx, artifacts: Path, tmp_path: Path
) -> None:
    """A real estate keeps its BMC passwords in Ansible Vault (inline-encrypted group variables). The
    import carries them encrypted ({"__ansible_vault": ...}, no password needed); the job opens them
    with the password of its vault credential, given at AWX's prompt (--ask-vault-pass)."""
    secret, password = "bmc-s3cret-for-the-test", "vault-password-for-the-test"
    project = tmp_path / "project"
    copy_project(project)
    (project / "inventories" / "lab-metal" / "group_vars" / "all.yml").write_text(
        "---\n" + "".join(f"vault_bmc_password_{dc}: {vaulted(secret, password)}" for dc in ("dc1", "dc2"))
    )
    exported = awx.import_inventory("lab-metal", awx.pdd(tmp_path / "update", project))
    assert set(exported["all"]["vars"]["vault_bmc_password_dc1"]) == {"__ansible_vault"}
    assert secret not in json.dumps(exported)

    job = awx.pdd(tmp_path / "job", project)
    job.write_job_inventory(exported)
    run = run_check_job(
        awx,
        "lab-metal",
        job,
        artifacts,
        extra_vars={"awx_inventory_bmc_password": secret},
        cmdline="--ask-vault-pass",
        passwords={r"Vault password:\s*?$": password},  # AWX's prompt for a vault credential
    )
    assert run.status == "successful", run.stdout[-4000:]
    opened = run.of("runner_item_on_ok", "BMC password opens")
    assert len(opened) == len(exported["substrate_metal"]["hosts"]) == 2
    assert secret not in run.stdout
