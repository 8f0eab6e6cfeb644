"""AWX's ways of running Berth, reproduced from AWX's own source (ansible/awx 24.6.1:
awx/main/tasks/jobs.py, awx/main/models/inventory.py, awx/main/constants.py, awx/settings/defaults.py),
with the real ansible-runner, ansible-inventory and ansible-playbook. AWX itself is not run.

- A job's *private data dir*: ``project/`` (the project as AWX's project sync checks it out: the
  files git tracks or would track, so no ``ansible_collections`` link and no ``.venv``),
  ``requirements_collections/`` (the collection, installed there by ``ansible-galaxy``),
  ``inventory/hosts``, ``env/``, ``artifacts/<ident>/``. ansible-runner runs every command with
  ``project/`` as its working directory, so the project's ansible.cfg applies, as in AWX.
- The inventory import of an SCM inventory source (RunInventoryUpdate): the command line
  ``ansible-inventory --list --export -i <project>/<source_path> --output ... --playbook-dir ...
  -vvv`` with AWX's environment, run by ansible-runner (its raw ``args`` mode), and what AWX keeps
  of the output for a job: the inventory script it writes as ``inventory/hosts``
  (Inventory.get_script_data).
- A job (RunJob): ``ansible-playbook -u root -i inventory/hosts -e @env/extravars <playbook>`` with
  AWX's environment and the environment its credentials inject, run by ansible-runner; its events.

What AWX is told to do comes from awx/ itself (render_awx_plan: what awx/configure.yml would
configure), so these runs use the inventory sources, surveys and credentials awx/ defines.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# awx/settings/defaults.py: "Any ANSIBLE_* settings will be passed to the task runner subprocess"
AWX_SETTINGS_ENV = {
    "ANSIBLE_HOST_KEY_CHECKING": "False",
    "ANSIBLE_PARAMIKO_RECORD_HOST_KEYS": "False",
    "ANSIBLE_FORCE_COLOR": "True",
    "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
}
# awx/main/constants.py
STANDARD_INVENTORY_UPDATE_ENV = {
    "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
    "ANSIBLE_INVENTORY_EXPORT": "True",
    "ANSIBLE_VERBOSE_TO_STDERR": "True",
    "ANSIBLE_HOST_PATTERN_MISMATCH": "error",
}
# awx/settings/defaults.py: source variables an SCM inventory source may not set in the environment
INV_ENV_VARIABLE_BLOCKED = ("HOME", "USER", "_", "TERM", "PATH")
DEFAULT_COLLECTIONS = "~/.ansible/collections:/usr/share/ansible/collections"
CONTROLLER_COLLECTIONS = "/usr/share/automation-controller/collections"
ANSI = re.compile(r"\x1b\[[0-9;]*m")

_RUNNER = (
    "import json, sys\n"
    "import ansible_runner\n"
    "result = ansible_runner.run(**json.loads(sys.argv[1]))\n"
    "print(json.dumps({'status': result.status, 'rc': result.rc}))\n"
)


def project_files(root: Path = ROOT) -> list[str]:
    """What a clone of the project holds: the files git tracks, and those it would (not ignored)."""
    listing = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [name for name in listing.split("\0") if name and (root / name).is_file()]


def copy_project(dest: Path, root: Path = ROOT) -> Path:
    """The project as AWX's project sync delivers it, in ``dest``."""
    for name in project_files(root):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    return dest


def read_ansible_config(project: Path, setting: str) -> str | None:
    """awx/main/utils/ansible.py read_ansible_config: ``[defaults] setting`` of the project's ansible.cfg."""
    parser = configparser.ConfigParser()
    parser.read([str(project / "ansible.cfg")])
    return parser["defaults"].get(setting) if parser.has_section("defaults") else None


def collections_path(project: Path, requirements: Path) -> str:
    """The collections path AWX gives a job (RunJob.build_env, path_vars), quirks included: the
    requirements directory, then the project's own ``collections_path``, then the defaults. AWX 24.6.1
    gives an inventory import the same list under the older name ANSIBLE_COLLECTIONS_PATHS only,
    which ansible-core 2.19 no longer reads; AWX's devel branch gives it ANSIBLE_COLLECTIONS_PATH
    (ansible/awx#15841), with its controller's collections appended, as here."""
    paths = DEFAULT_COLLECTIONS.split(":")
    configured = read_ansible_config(project, "collections_path")
    if configured:
        for path in configured.split(":"):
            if path not in paths:
                paths = [configured, *paths]
    return ":".join([str(requirements), *paths])


@dataclass(frozen=True)
class Run:
    """One ansible-runner run in a private data dir."""

    status: str
    rc: int
    artifacts: Path

    @property
    def stdout(self) -> str:
        return ANSI.sub("", (self.artifacts / "stdout").read_text())

    @property
    def stderr(self) -> str:
        path = self.artifacts / "stderr"
        return ANSI.sub("", path.read_text()) if path.is_file() else ""

    def events(self) -> list[dict[str, Any]]:
        files = sorted(
            (self.artifacts / "job_events").glob("*.json"), key=lambda p: int(p.name.split("-")[0])
        )
        return [json.loads(path.read_text()) for path in files]

    def of(self, event: str, task: str = "") -> list[dict[str, Any]]:
        """The data of the events of a kind (runner_on_ok, runner_on_failed, runner_item_on_ok, ...),
        of the tasks whose name contains ``task``."""
        return [
            e["event_data"]
            for e in self.events()
            if e.get("event") == event and task in e.get("event_data", {}).get("task", "")
        ]

    def hosts(self) -> set[str]:
        """Every host a task ran on (or was tried on)."""
        return {e["event_data"]["host"] for e in self.events() if e.get("event_data", {}).get("host")}


@dataclass(frozen=True)
class PrivateDataDir:
    path: Path

    @property
    def project(self) -> Path:
        return self.path / "project"

    @property
    def requirements_collections(self) -> Path:
        return self.path / "requirements_collections"

    @property
    def inventory(self) -> Path:
        return self.path / "inventory" / "hosts"

    def base_env(self) -> dict[str, str]:
        """What every AWX task gets (BaseTask.build_env), and a HOME of its own (an execution
        environment's /home/runner: nothing of this machine's ~/.ansible)."""
        home = self.path / "home"
        home.mkdir(exist_ok=True)
        return {
            **AWX_SETTINGS_ENV,
            "AWX_PRIVATE_DATA_DIR": str(self.path),
            "HOME": str(home),
            "PATH": f"{BIN}{os.pathsep}/usr/sbin:/usr/bin:/sbin:/bin",
        }

    def run(self, ident: str, envvars: dict[str, str], **kwargs: Any) -> Run:
        """``ansible_runner.run`` in a process of its own, with nothing of this process's environment."""
        params = {"private_data_dir": str(self.path), "ident": ident, "envvars": envvars, "quiet": True}
        # as AWX calls it: no env/ files written (AWX_RUNNER_OMIT_ENV_FILES), its output only in artifacts
        params |= {"suppress_env_files": True, "settings": {"suppress_ansible_output": True}, **kwargs}
        proc = subprocess.run(
            [sys.executable, "-c", _RUNNER, json.dumps(params)],
            env={"PATH": envvars["PATH"], "HOME": envvars["HOME"], "LANG": "C.UTF-8"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        outcome = json.loads(proc.stdout.strip().splitlines()[-1])
        return Run(outcome["status"], int(outcome["rc"]), self.path / "artifacts" / ident)

    # -- the inventory import (RunInventoryUpdate) ------------------------------------------------

    def inventory_update_env(
        self, source_vars: dict[str, Any], ident: str, legacy: bool = False
    ) -> dict[str, str]:
        env = self.base_env() | {"INVENTORY_SOURCE_ID": "1", "INVENTORY_UPDATE_ID": ident}
        env |= STANDARD_INVENTORY_UPDATE_ENV
        for key, value in source_vars.items():  # an SCM source's variables become its environment
            if key not in env and key not in INV_ENV_VARIABLE_BLOCKED:
                env[key] = str(value)
        paths = f"{collections_path(self.project, self.requirements_collections)}:{CONTROLLER_COLLECTIONS}"
        env["ANSIBLE_COLLECTIONS_PATHS" if legacy else "ANSIBLE_COLLECTIONS_PATH"] = paths
        return env

    def inventory_update(
        self, source_path: str, source_vars: dict[str, Any], ident: str = "1", legacy: bool = False
    ) -> tuple[Run, Path]:
        """AWX's import of an SCM inventory source: the run, and where the output JSON is written.
        ``legacy``: the collections path under AWX 24.6.1's name for it."""
        source = self.project / source_path
        output = self.path / "artifacts" / ident / "output.json"
        args = ["ansible-inventory", "--list", "--export", "-i", str(source), "--output", str(output)]
        args += ["--playbook-dir", str(source if source.is_dir() else source.parent), "-vvv"]
        (self.path / "args").write_text(" ".join(args))  # RunInventoryUpdate.write_args_file
        try:
            return self.run(ident, self.inventory_update_env(source_vars, ident, legacy)), output
        finally:
            (self.path / "args").unlink()

    # -- a job (RunJob) ---------------------------------------------------------------------------

    def write_job_inventory(self, exported: dict[str, Any]) -> Path:
        """The inventory AWX hands a job: what it imported, written as the script
        BaseTask.write_inventory_file makes of Inventory.get_script_data(hostvars=True, towervars=True)."""
        data = script_data(exported)
        self.inventory.parent.mkdir(parents=True, exist_ok=True)
        self.inventory.write_text(
            f"#! /usr/bin/env python3\n# -*- coding: utf-8 -*-\nprint({json.dumps(data)!r})\n"
        )
        self.inventory.chmod(0o700)
        return self.inventory

    def job_env(self, ident: str, injected: dict[str, str]) -> dict[str, str]:
        cp = self.path / "cp"
        cp.mkdir(exist_ok=True)
        env = self.base_env() | {
            "JOB_ID": ident,
            "INVENTORY_ID": "1",
            "PROJECT_REVISION": "",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "MAX_EVENT_RES": "700000",
            "AWX_HOST": "https://platformhost",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(cp),
        }
        paths = collections_path(self.project, self.requirements_collections)
        env |= {"ANSIBLE_COLLECTIONS_PATHS": paths, "ANSIBLE_COLLECTIONS_PATH": paths}
        env["ANSIBLE_ROLES_PATH"] = (
            f"{self.path / 'requirements_roles'}:~/.ansible/roles:/usr/share/ansible/roles:/etc/ansible/roles"
        )
        return env | injected  # the job's credentials inject theirs last

    def job(
        self,
        playbook: str,
        extra_vars: dict[str, Any],
        injected: dict[str, str],
        ident: str,
        passwords: dict[str, str] | None = None,
        cmdline: str = "",
    ) -> Run:
        """A job template's job: ``playbook`` (relative to the project) with the survey's answers."""
        return self.run(
            ident,
            self.job_env(ident, injected),
            playbook=playbook,
            inventory=str(self.inventory),
            extravars=extra_vars,
            cmdline=f"-u root {cmdline}".strip(),
            passwords=passwords or {},
        )


def private_data_dir(path: Path, project: Path, requirements_collections: Path) -> PrivateDataDir:
    """A job's private data dir at ``path``, with copies of a project and of installed collections."""
    pdd = PrivateDataDir(path)
    shutil.copytree(project, pdd.project, symlinks=True)
    shutil.copytree(requirements_collections, pdd.requirements_collections, symlinks=True)
    return pdd


def script_data(exported: dict[str, Any]) -> dict[str, Any]:
    """What AWX's import keeps of ``ansible-inventory --list --export`` output (inventory_import: the
    groups with their variables, children and hosts, the hosts with theirs, the variables of ``all``
    as the inventory's), handed back to a job the way Inventory.get_script_data does: every group a
    child of ``all``, each host with ``remote_tower_*`` and ``remote_host_*`` variables. The values
    go through plain JSON, as in AWX's database: the ``{"__ansible_unsafe": ...}`` marks that
    ansible-core 2.19 writes stay in them."""
    hostvars: dict[str, dict[str, Any]] = exported.get("_meta", {}).get("hostvars", {})
    groups = {name: group for name, group in exported.items() if name not in ("_meta", "all", "ungrouped")}
    grouped = {host for group in groups.values() for host in group.get("hosts", [])}
    data: dict[str, Any] = {"all": {}}
    if exported.get("all", {}).get("vars"):
        data["all"]["vars"] = exported["all"]["vars"]
    all_hosts = sorted(set(hostvars) | grouped | set(exported.get("ungrouped", {}).get("hosts", [])))
    data["all"]["hosts"] = [host for host in all_hosts if host not in grouped]
    for name, group in groups.items():
        info = {key: group[key] for key in ("hosts", "children", "vars") if group.get(key)}
        if info:
            data[name] = info
    if groups:
        data["all"]["children"] = list(groups)
    data["_meta"] = {"hostvars": {}}
    for number, host in enumerate(all_hosts, start=1):
        tower = {
            f"remote_{prefix}_{key}": value
            for prefix in ("host", "tower")
            for key, value in (("enabled", "true"), ("id", number))
        }
        data["_meta"]["hostvars"][host] = {**hostvars.get(host, {}), **tower}
    return data


def render_awx_plan(dest: Path, awx_dir: Path = ROOT / "awx") -> list[dict[str, Any]]:
    """What ``awx_dir``/configure.yml would configure, per environment (its berth_awx_render mode:
    no AWX is contacted, no secret is written). The specs it reads are in ``awx_dir``/../inventories."""
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", str(awx_dir / "configure.yml")]
        + ["-e", f"berth_awx_render={dest}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return list(json.loads(dest.read_text()))


@dataclass(frozen=True)
class Awx:
    """What every AWX run here starts from."""

    project: Path  # the project as AWX's project sync checks it out
    collections: Path  # requirements_collections, with the built collection installed
    plan: dict[str, dict[str, Any]]  # environment -> what awx/configure.yml would configure for it

    def pdd(self, path: Path, project: Path | None = None) -> PrivateDataDir:
        """A fresh private data dir, as AWX makes one per job (of ``project``, by default the project)."""
        return private_data_dir(path, project or self.project, self.collections)

    def import_inventory(self, env: str, pdd: PrivateDataDir) -> dict[str, Any]:
        """AWX's inventory update of the inventory source awx/ gives ``env``: the exported JSON."""
        assert env in self.plan, (
            f"inventories/{env} has no AWX inventory: add it to berth_awx_environments (awx/settings.yml)"
        )
        source = self.plan[env]["inventory_source"]
        assert source["source_path"] == f"inventories/{env}"
        run, output = pdd.inventory_update(source["source_path"], source["source_vars"])
        assert run.status == "successful", run.stdout[-3000:]
        # as in AWX: the project's ansible.cfg (the working directory), the collection from requirements_collections
        assert f"config file = {pdd.project / 'ansible.cfg'}" in run.stdout
        assert f"collection location = {pdd.requirements_collections}:" in run.stdout
        return dict(json.loads(output.read_text()))

    def injected(self, env: str) -> dict[str, str]:
        """The environment the Berth job environment credential (awx/job_templates.yml) gives a job."""
        return dict(self.plan[env]["job_environment"]["injectors"]["env"])


def prepare(base: Path) -> Awx:
    """The collection built and installed into requirements_collections, the project copied, awx/ rendered."""
    from tests.collection import build_collection, install_collection

    collections = base / "requirements_collections"
    install_collection(build_collection(base / "build"), collections)
    project = copy_project(base / "project")
    assert not (project / "ansible_collections").exists()  # the checkout's link is not in the project
    plan = {entry["environment"]: entry for entry in render_awx_plan(base / "plan.json")}
    return Awx(project, collections, plan)
