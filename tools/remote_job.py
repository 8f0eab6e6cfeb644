"""Run a Berth playbook as AWX runs a job on an execution node of a datacenter.

AWX packs a job with ``ansible-runner transmit``, receptor carries the stream to an execution node,
``ansible-runner worker`` runs it there and streams the events back, and AWX reads them with
``ansible-runner process``. This does the same three steps for real; the hop to the node is SSH,
carried from Python with paramiko, the host key checked strictly against Berth's known_hosts (the
node's inventory connection settings: address, user, key, known_hosts, the lab's ProxyCommand).
AWX itself is not involved (it cannot run here); receptor's mesh is replaced by that one SSH hop.

    .venv/bin/python tools/remote_job.py -i inventories/lab --node exec-dc1 playbooks/deploy.yml \
        -e service=catalog -e version=v2 [--limit dc_dc1]

The job's project is this checkout's tracked files with the collection installed into it (as AWX
installs a project's collections), its inventory the given spec, so the node reads the same
inventory the controller does.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner
import paramiko

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: tools/
from tools.inventory_json import hostvars as inventory_hostvars

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUNNER = "/opt/berth-runner/bin"  # roles/execution_node: execution_node_venv


@dataclass(frozen=True)
class Node:
    """How to reach an execution node: its inventory connection settings."""

    name: str
    address: str
    user: str
    key_file: str
    known_hosts: str
    proxy_command: str | None = None
    port: int = 22

    @classmethod
    def from_hostvars(cls, name: str, hostvars: Mapping[str, Any]) -> Node:
        options: dict[str, str] = {}
        args = shlex.split(str(hostvars.get("ansible_ssh_common_args", "")))
        for flag, value in itertools.pairwise(args):
            if flag == "-o" and "=" in value:
                key, setting = value.split("=", 1)
                options[key.lower()] = setting
        known_hosts = options.get("userknownhostsfile")
        if not known_hosts or options.get("stricthostkeychecking", "yes") != "yes":
            raise SystemExit(
                f"{name}: its inventory must check host keys strictly against a known_hosts file"
            )
        return cls(
            name=name,
            address=str(hostvars.get("ansible_host", name)),
            user=str(hostvars.get("ansible_user", "root")),
            key_file=str(hostvars["ansible_ssh_private_key_file"]),
            known_hosts=known_hosts,
            proxy_command=options.get("proxycommand"),
            port=int(hostvars.get("ansible_port", 22)),
        )

    def connect(self, timeout: float = 15) -> paramiko.SSHClient:
        """An SSH session to the node; an unknown or changed host key is refused (RejectPolicy)."""
        client = paramiko.SSHClient()
        client.load_host_keys(self.known_hosts)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        sock = None
        if self.proxy_command:
            sock = paramiko.ProxyCommand(
                self.proxy_command.replace("%h", self.address).replace("%p", str(self.port))
            )
        client.connect(
            self.address,
            port=self.port,
            username=self.user,
            key_filename=self.key_file,
            sock=sock,  # type: ignore[arg-type]
            timeout=timeout,
            allow_agent=False,
            look_for_keys=False,
        )
        return client


@dataclass
class JobResult:
    """What ``ansible-runner process`` read back: as AWX shows a job."""

    status: str
    rc: int
    events: list[dict[str, Any]]
    stats: dict[str, Any]
    artifacts: dict[str, Any]  # set_stats data (the playbook_on_stats event's artifact_data)
    seconds: dict[str, float] = field(default_factory=dict)

    def failed_tasks(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "runner_on_failed"]

    def stdout(self) -> str:
        return "\n".join(str(e.get("stdout", "")) for e in self.events if e.get("stdout"))


def project(dest: Path) -> Path:
    """The job's project: the checkout's tracked files, and the collection installed into it."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        source = ROOT / raw.decode()
        if source.is_file() and not source.is_symlink():
            target = dest / raw.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    with tempfile.TemporaryDirectory() as built:
        subprocess.run(
            [str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", built, str(ROOT)],
            capture_output=True,
            check=True,
        )
        tarball = next(Path(built).glob("berth-fleet-*.tar.gz"))
        subprocess.run(
            [str(BIN / "ansible-galaxy"), "collection", "install", str(tarball), "-p", str(dest)],
            cwd=dest,
            capture_output=True,
            check=True,
            env={"PATH": str(BIN) + ":/usr/bin:/bin", "ANSIBLE_COLLECTIONS_PATH": str(dest)},
        )
    return dest


def transmit(
    private_data_dir: Path, playbook: str, spec: Path, extravars: Mapping[str, Any], limit: str = ""
) -> bytes:
    """``ansible-runner transmit``: the job (project, inventory, variables) as one stream."""
    (private_data_dir / "inventory").mkdir(parents=True, exist_ok=True)
    shutil.copy2(spec, private_data_dir / "inventory" / spec.name)
    # the inventory's variables beside it (as an AWX inventory source from the project has them):
    # the lab's database passwords are lookups into the state dir, which the node shares
    for variables in ("group_vars", "host_vars"):
        if (spec.parent / variables).is_dir():
            shutil.copytree(spec.parent / variables, private_data_dir / "inventory" / variables)
    options: dict[str, Any] = {"limit": limit} if limit else {}
    stream = private_data_dir.parent / "job.stream"
    with stream.open("wb") as packed:  # ansible-runner streams into a real file
        ansible_runner.run(
            streamer="transmit",
            _output=packed,
            private_data_dir=str(private_data_dir),
            playbook=playbook,
            extravars=dict(extravars),
            **options,
        )
    return stream.read_bytes()


def carry(node: Node, job: bytes) -> bytes:
    """The job to ``ansible-runner worker`` on the node over SSH, and its results stream back."""
    worker = (
        f"dir=$(mktemp -d /tmp/berth-job.XXXXXX) && PATH={RUNNER}:$PATH "
        f'exec {RUNNER}/ansible-runner worker --private-data-dir "$dir" --delete'
    )
    with node.connect() as client:
        transport = client.get_transport()
        if transport is None:
            raise SystemExit(f"{node.name}: the SSH session closed before the job was sent")
        channel = transport.open_session()
        channel.exec_command(worker)
        channel.sendall(job)
        channel.shutdown_write()
        results = io.BytesIO()
        errors = io.BytesIO()
        while True:
            if channel.recv_ready():
                results.write(channel.recv(1 << 16))
            elif channel.recv_stderr_ready():
                errors.write(channel.recv_stderr(1 << 16))
            elif channel.exit_status_ready() and not channel.recv_ready():
                break
            else:
                time.sleep(0.01)
        status = channel.recv_exit_status()
    # the worker exits with the job's rc; only a worker that streamed nothing back failed itself
    if status != 0 and not results.getvalue():
        said = errors.getvalue().decode(errors="replace")[-2000:]
        raise SystemExit(f"{node.name}: ansible-runner worker exited {status}: {said}")
    return results.getvalue()


def process(private_data_dir: Path, results: bytes) -> JobResult:
    """``ansible-runner process``: status, rc, events and stats from the results stream."""
    stream = private_data_dir.parent / "results.stream"
    stream.write_bytes(results)
    private_data_dir.mkdir(parents=True, exist_ok=True)
    events: list[dict[str, Any]] = []

    def heard(event: dict[str, Any]) -> bool:
        events.append(event)
        return True  # and written into the job's artifacts, as AWX keeps them

    with stream.open("rb") as received:
        processor = ansible_runner.run(
            streamer="process",
            _input=received,
            private_data_dir=str(private_data_dir),
            quiet=True,
            event_handler=heard,
        )
    stats = next((e for e in reversed(events) if e.get("event") == "playbook_on_stats"), {})
    data = dict(stats.get("event_data") or {})
    artifacts = dict(data.get("artifact_data") or {})
    totals = {key: data.get(key) or {} for key in ("ok", "changed", "failures", "dark", "skipped")}
    # the worker sends its artifacts back at the end (as AWX receives them): rc is one of them
    rc_file = Path(processor.artifact_dir) / "rc"
    rc = int(rc_file.read_text().strip()) if rc_file.is_file() else -1
    return JobResult(str(processor.status), int(rc), events, totals, artifacts)


def run_job(
    spec: Path, node_name: str, playbook: str, extravars: Mapping[str, Any], limit: str = ""
) -> JobResult:
    """The whole job on the execution node ``node_name`` of the inventory ``spec``."""
    node = Node.from_hostvars(node_name, inventory_hostvars(spec)[node_name])
    with tempfile.TemporaryDirectory(prefix="berth-job-") as work:
        base = Path(work)
        seconds: dict[str, float] = {}
        started = time.monotonic()
        project(base / "send" / "project")
        job = transmit(base / "send", playbook, spec, extravars, limit)
        seconds["transmit"] = round(time.monotonic() - started, 2)
        started = time.monotonic()
        results = carry(node, job)
        seconds["worker"] = round(time.monotonic() - started, 2)
        started = time.monotonic()
        result = process(base / "receive", results)
        seconds["process"] = round(time.monotonic() - started, 2)
    result.seconds = seconds
    return result


def _extravars(pairs: list[str]) -> Iterator[tuple[str, Any]]:
    for pair in pairs:
        key, value = pair.split("=", 1) if "=" in pair else (pair, "")
        yield key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--inventory", required=True, help="a Berth spec (file or inventories/<env>)")
    parser.add_argument("--node", required=True, help="the execution node (an inventory host)")
    parser.add_argument("--limit", default="")
    parser.add_argument("-e", "--extra-vars", action="append", default=[], help="key=value")
    parser.add_argument("playbook", help="a playbook of this project, e.g. playbooks/deploy.yml")
    args = parser.parse_args()
    spec = Path(args.inventory)
    if spec.is_dir():
        spec = next(spec.glob("*.berth.yml"))
    result = run_job(spec.resolve(), args.node, args.playbook, dict(_extravars(args.extra_vars)), args.limit)
    print(result.stdout())
    print(json.dumps({"status": result.status, "rc": result.rc, "seconds": result.seconds}, indent=2))
    print(json.dumps({"artifacts": result.artifacts}, indent=2))
    sys.exit(0 if result.status == "successful" else 1)


if __name__ == "__main__":
    main()
