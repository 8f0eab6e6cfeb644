"""Helpers shared by the integration tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools.inventory_json import hostvars

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class PlaybookRun:
    returncode: int
    output: str
    seconds: float

    @property
    def recap(self) -> dict[str, int]:
        """The localhost line of the PLAY RECAP."""
        return self.recaps["localhost"]

    @property
    def recaps(self) -> dict[str, dict[str, int]]:
        """Every host's PLAY RECAP counters."""
        recap = self.output.rsplit("PLAY RECAP", 1)
        assert len(recap) == 2, f"no PLAY RECAP in:\n{self.output[-3000:]}"
        return {
            host: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counters)}
            for host, counters in re.findall(r"^(\S+)\s+:\s+(.*)$", recap[1], re.MULTILINE)
        }

    @property
    def changed(self) -> int:
        return sum(counters["changed"] for counters in self.recaps.values())


def run_playbook(playbook: Path, inventory: str, *flags: str) -> PlaybookRun:
    """ansible-playbook from the checkout (its ansible.cfg), timed."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    started = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", inventory, str(playbook), *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    run = PlaybookRun(proc.returncode, proc.stdout + proc.stderr, round(time.monotonic() - started, 2))
    keep = os.environ.get("BERTH_TEST_PLAYBOOK_LOGS")  # a folder: every run's output kept there
    if keep:
        name = f"{time.strftime('%H%M%S')}-{os.getpid()}-{playbook.stem}-{run.seconds}s.log"
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / name).write_text(run.output)
    return run


def local_play(name: str, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": tasks}


def haproxy_cli(sock: Path, command: str) -> str:
    """One command over an HAProxy Runtime API socket: the tests' own reader, not Berth's."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(str(sock))
        conn.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


# --- looking at the host ------------------------------------------------------------------------


def _lines(argv: Sequence[str]) -> list[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False).stdout.splitlines()


def _netns_names() -> list[str]:
    return sorted(line.split()[0] for line in _lines(["ip", "netns", "list"]) if line.strip())


def _pid_namespace(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


def _mentions(text: str, environments: Sequence[str]) -> bool:
    return any(environment in text for environment in environments)


def host_snapshot(*environments: str) -> dict[str, Any]:
    """What the labs of these environments could leave behind: namespaces, mounts, containers, nspawn
    processes and cgroups, each named by Berth with its environment's name (berth-<env>,
    /var/lib/berth/machines/<env>-<host>, /berth/<env>-<host>); and the host's own links and IP
    forwarding, which no lab may touch. Other labs (the other lane of `make test`) come and go meanwhile:
    what they own is not this lab's to answer for."""
    assert environments, "name the environments whose traces to look for"
    own_pidns = _pid_namespace("self")
    in_containers: set[str] = set()
    nspawn: set[str] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            namespace = _pid_namespace(entry.name)
            if (
                namespace
                and namespace != own_pidns
                and _mentions((entry / "cgroup").read_text(), environments)
            ):
                in_containers.add(entry.name)
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            if "systemd-nspawn" in cmdline and _mentions(cmdline, environments):
                nspawn.add(entry.name)
        except OSError:
            pass
    return {
        "netns": [name for name in _netns_names() if _mentions(name, environments)],
        "mounts": sorted(
            line.split(" ")[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if "berth" in line and _mentions(line, environments)
        ),
        "links": sorted(line.split()[0] for line in _lines(["ip", "-br", "link"])),
        "processes_in_other_pid_namespaces": sorted(in_containers),
        "nspawn_processes": sorted(nspawn),
        "berth_cgroups": sorted(
            str(path)
            for hierarchy in Path("/sys/fs/cgroup").iterdir()
            for path in hierarchy.glob("**/berth/*")
            if path.is_dir() and _mentions(path.name, environments)
        ),
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
    }


# --- SSH into the lab ---------------------------------------------------------------------------


@dataclass
class LabSsh:
    namespace: str
    key: Path
    known_hosts: Path

    def run(self, address: str, command: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        options = {
            "StrictHostKeyChecking": "yes",
            "UserKnownHostsFile": str(self.known_hosts),
            "BatchMode": "yes",
            "ConnectTimeout": "5",
            "LogLevel": "ERROR",
        }
        argv = ["nsenter", f"--net=/run/netns/{self.namespace}", "ssh", "-i", str(self.key)]
        for key, value in options.items():
            argv += ["-o", f"{key}={value}"]
        return subprocess.run(
            [*argv, f"root@{address}", command], capture_output=True, text=True, timeout=timeout, check=False
        )


# --- last-resort cleanup ------------------------------------------------------------------------

MACHINES_DIR = Path("/var/lib/berth/machines")
# the system libvirtd the VM and metal labs run (Berth starts it inside the lab namespace)
VIRSH = ["virsh", "-c", "qemu:///system"]


def _is_our_nspawn(pid: int, machine: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return (
        state != "Z"
        and os.path.basename(argv[0]) == b"systemd-nspawn"
        and f"--machine={machine}".encode() in argv
    )


def force_cleanup(machine_names: Sequence[str], namespace: str) -> list[str]:
    """Only when the teardown playbook failed: stop what Berth recorded (verified), unmount, delete."""
    done: list[str] = []
    for name in machine_names:
        machine_dir = MACHINES_DIR / name
        state_file = machine_dir / "state.json"
        state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.is_file() else {}
        pid = int(state.get("pid", 0))
        if pid and _is_our_nspawn(pid, name):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while _is_our_nspawn(pid, name) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _is_our_nspawn(pid, name):
                os.kill(pid, signal.SIGKILL)
            done.append(f"stopped nspawn {pid} of {name}")
        merged = machine_dir / "merged"
        if any(
            line.split(" ")[4] == str(merged)
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
        ):
            subprocess.run(["umount", str(merged)], check=False)
            done.append(f"unmounted {merged}")
        for path in sorted(state.get("cgroups", {}).values()):
            for current, subdirs, _files in os.walk(path, topdown=False):
                for sub in subdirs:
                    _rmdir(os.path.join(current, sub))
            _rmdir(path)
            _rmdir(os.path.dirname(path))
        if machine_dir.exists():
            shutil.rmtree(machine_dir, ignore_errors=True)
            done.append(f"removed {machine_dir}")
    if namespace in _netns_names():
        subprocess.run(["ip", "netns", "delete", namespace], check=False)
        done.append(f"deleted netns {namespace}")
    return done


def force_vm_cleanup(domains: Sequence[str]) -> list[str]:
    """Only when the teardown playbook failed: destroy and undefine these domains with their storage,
    then stop the lab libvirtd if Berth's record says Berth started it."""
    done: list[str] = []
    virsh = ["virsh", "-c", "qemu:///system"]
    for name in domains:
        if subprocess.run([*virsh, "domstate", name], capture_output=True, check=False).returncode == 0:
            subprocess.run([*virsh, "destroy", name], capture_output=True, check=False)
            subprocess.run(
                [*virsh, "undefine", name, "--remove-all-storage"], capture_output=True, check=False
            )
            done.append(f"removed domain {name}")
    record = Path("/run/berth/lab-libvirtd.json")
    if record.is_file():
        for name, daemon in json.loads(record.read_text()).get("daemons", {}).items():
            stat = Path(f"/proc/{daemon['pid']}/stat")
            if stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[19] == daemon["start_time"]:
                os.kill(int(daemon["pid"]), signal.SIGTERM)
                done.append(f"stopped {name} {daemon['pid']}")
        record.unlink()
    return done


@contextlib.contextmanager
def destroyed_afterwards(
    spec: Path,
    namespace: str,
    machines: Callable[[], Sequence[str]] = tuple,
    domains: Callable[[], Sequence[str]] = tuple,
    also: Callable[[], list[str]] = list,
    done: Callable[[], bool] = lambda: False,
) -> Iterator[None]:
    """The one teardown of every lab a test makes: whatever happens inside, ``destroy.yml`` runs on
    ``spec`` (unless ``done()`` says a test already tore the lab down). When destroy fails, the
    last-resort cleanup removes the ``domains()``, then whatever ``also()`` removes, then the
    nspawn ``machines()`` and the namespace, and the test fails saying what had to be forced."""
    try:
        yield
    finally:
        if not done():
            down = run_playbook(DESTROY, str(spec))
            if down.returncode != 0:
                forced = force_vm_cleanup(domains()) + also() + force_cleanup(machines(), namespace)
                pytest.fail(f"destroy failed; forced cleanup did {forced}:\n{down.output[-4000:]}")


def _rmdir(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)


# --- lab environments from the shipped topologies -----------------------------------------------

PROVISION = ROOT / "playbooks" / "provision.yml"
DESTROY = ROOT / "playbooks" / "destroy.yml"
DEPLOY = ROOT / "playbooks" / "deploy.yml"
ROLLBACK = ROOT / "playbooks" / "rollback.yml"


def lab_spec(path: Path, environment: str, state_dir: Path, shape: str = "lab") -> Path:
    """A shipped topology under another environment name, namespace and state dir (no clash with a demo)."""
    raw = yaml.safe_load((ROOT / "inventories" / shape / "topology.berth.yml").read_text())
    raw["environment"]["name"] = environment
    raw["estate"]["lab_namespace"] = f"berth-{environment}"
    raw["state_dir"] = str(state_dir)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    # the shape's group_vars (the lab's generated database passwords) go with the spec
    group_vars = ROOT / "inventories" / shape / "group_vars"
    if group_vars.is_dir():
        shutil.copytree(group_vars, path.parent / "group_vars", dirs_exist_ok=True)
    return path


def inventory_hostvars(spec: Path) -> dict[str, dict[str, Any]]:
    return hostvars(spec)
