# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's emulated BMCs: one sushy-tools Redfish emulator per emulated bare-metal host.

A lab has no physical machines, so each bare-metal host of a lab topology is a libvirt domain (made
by the VM substrate with ``state: present``: defined, powered by nobody but its BMC) and its BMC is
a ``sushy-emulator`` process that serves exactly that one domain (``ALLOWED_INSTANCES``), on the
loopback address and port of the host's ``bmc.address``, behind HTTP basic auth with the lab's BMC
credentials (an htpasswd file with a bcrypt hash; the password itself is written nowhere).

Berth records the pid and start time of every emulator it starts and only ever stops those. A
running emulator whose configuration differs (another domain, port or credentials) is restarted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.command import Runner, subprocess_runner
from ansible_collections.berth.fleet.plugins.module_utils.common.procfs import parse_proc_stat

DEFAULT_DIR = Path("/run/berth/bmc")


class LabBmcError(Exception):
    """Anything that stops an emulated BMC from being started, checked or stopped."""


@dataclass(frozen=True)
class BmcSpec:
    name: str  # the bare-metal host
    domain: str  # the libvirt domain that plays it
    address: str  # http://127.0.0.1:<port>
    username: str
    password: str
    uri: str = "qemu:///system"
    base_dir: Path = DEFAULT_DIR

    @property
    def host_port(self) -> tuple[str, int]:
        parsed = urllib.parse.urlsplit(self.address)
        if parsed.scheme != "http" or parsed.hostname not in ("127.0.0.1", "localhost") or not parsed.port:
            raise LabBmcError(
                f"{self.name}: a lab BMC address must be http://127.0.0.1:<port> (the emulator listens "
                f"on loopback only), got {self.address!r}"
            )
        return "127.0.0.1", parsed.port

    @property
    def directory(self) -> Path:
        return self.base_dir / self.name

    def validate(self) -> None:
        self.host_port  # noqa: B018 - raises on a bad address
        for label, value in (("name", self.name), ("domain", self.domain), ("username", self.username)):
            if not value or "/" in value or "\0" in value or (label == "username" and ":" in value):
                raise LabBmcError(f"{self.name or '?'}: invalid {label} {value!r}")
        if not self.password:
            raise LabBmcError(f"{self.name}: the BMC password is empty")


def _start_time(pid: int) -> str | None:
    """Start time of a live process (a zombie counts as gone: nobody may reap it here)."""
    try:
        stat = parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, IndexError):
        return None
    return None if stat.state in ("Z", "X") else str(stat.start_ticks)


class LabBmc:
    def __init__(
        self,
        spec: BmcSpec,
        runner: Runner = subprocess_runner,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.runner = runner
        self.sleep = sleep
        self.clock = clock
        self.record_path = spec.directory / "record.json"

    # --- observe

    def record(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.record_path.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def running_pid(self) -> int | None:
        """The emulator Berth started for this host, if it still runs (same pid and start time)."""
        record = self.record()
        pid = record.get("pid")
        if isinstance(pid, int) and record.get("start_time") and _start_time(pid) == record["start_time"]:
            return pid
        return None

    def fingerprint(self, system: str) -> str:
        """What the running emulator must match; the password enters only as a salted digest."""
        host, port = self.spec.host_port
        salted = hashlib.sha256(f"{self.spec.name}\0{self.spec.username}\0{self.spec.password}".encode())
        inputs = [
            self.spec.domain,
            system,
            host,
            str(port),
            self.spec.username,
            salted.hexdigest(),
            self.spec.uri,
        ]
        return hashlib.sha256("\0".join(inputs).encode()).hexdigest()

    def domain_uuid(self) -> str:
        found = self.runner(["virsh", "-c", self.spec.uri, "domuuid", self.spec.domain])
        if found.rc != 0:
            raise LabBmcError(
                f"{self.spec.name}: the domain {self.spec.domain!r} that plays this host does not exist on "
                f"{self.spec.uri} ({found.stderr.strip()}); provision creates it first"
            )
        return found.stdout.strip()

    # --- running / stopped

    def running(self, check_mode: bool, timeout: float = 30) -> tuple[bool, dict[str, Any]]:
        self.spec.validate()
        system = self.domain_uuid()
        pid = self.running_pid()
        wanted = self.fingerprint(system)
        if pid is not None and self.record().get("fingerprint") == wanted:
            return False, self.status(system)
        if check_mode:
            return True, self.status(system)
        if pid is not None:
            self._stop(pid, timeout)
        self._start(system, wanted, timeout)
        return True, self.status(system)

    def stopped(self, check_mode: bool, timeout: float = 30) -> tuple[bool, dict[str, Any]]:
        pid = self.running_pid()
        if pid is None:
            if not check_mode and self.spec.directory.exists():
                self._remove_files()
                return True, {"name": self.spec.name, "pid": None}
            return False, {"name": self.spec.name, "pid": None}
        if not check_mode:
            self._stop(pid, timeout)
            self._remove_files()
        return True, {"name": self.spec.name, "pid": None}

    def status(self, system: str) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "address": self.spec.address,
            "domain": self.spec.domain,
            "system_id": system,
            "pid": self.running_pid(),
        }

    # --- the process

    def _start(self, system: str, fingerprint: str, timeout: float) -> None:
        directory = self.spec.directory
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        htpasswd = directory / "htpasswd"
        htpasswd.write_text(f"{self.spec.username}:{_bcrypt(self.spec.password)}\n")
        os.chmod(htpasswd, 0o600)
        host, port = self.spec.host_port
        config = directory / "emulator.conf"
        settings = {
            "SUSHY_EMULATOR_LIBVIRT_URI": self.spec.uri,
            "SUSHY_EMULATOR_ALLOWED_INSTANCES": [system],
            "SUSHY_EMULATOR_AUTH_FILE": str(htpasswd),
            "SUSHY_EMULATOR_STATE_DIR": str(directory / "state"),
        }
        config.write_text("".join(f"{key} = {value!r}\n" for key, value in settings.items()))
        emulator = Path(sys.executable).parent / "sushy-emulator"
        if not emulator.exists():
            raise LabBmcError(f"{emulator} is missing: pip install sushy-tools (make deps installs it)")
        env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        with (directory / "emulator.log").open("ab") as log:
            process = subprocess.Popen(
                [str(emulator), "--interface", host, "--port", str(port), "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # outlives the module, like a BMC outlives a playbook
            )
        started = _start_time(process.pid)
        record = {"pid": process.pid, "start_time": started, "fingerprint": fingerprint, "system_id": system}
        self.record_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        deadline = self.clock() + timeout
        while not self._answers(system):
            if process.poll() is not None or self.clock() >= deadline:
                tail = (directory / "emulator.log").read_text(errors="replace")[-1500:]
                if process.poll() is None:
                    self._stop(process.pid, 5)
                raise LabBmcError(
                    f"{self.spec.name}: the emulated BMC did not answer within {timeout:g} s:\n{tail}"
                )
            self.sleep(0.2)

    def _answers(self, system: str) -> bool:
        token = base64.b64encode(f"{self.spec.username}:{self.spec.password}".encode()).decode()
        request = urllib.request.Request(
            f"{self.spec.address}/redfish/v1/Systems/{system}", headers={"Authorization": f"Basic {token}"}
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _stop(self, pid: int, timeout: float) -> None:
        started = _start_time(pid)
        os.kill(pid, signal.SIGTERM)
        deadline = self.clock() + timeout
        while _start_time(pid) == started:
            if self.clock() >= deadline:
                os.kill(pid, signal.SIGKILL)
                break
            self.sleep(0.1)

    def _remove_files(self) -> None:
        shutil.rmtree(self.spec.directory)


def _bcrypt(password: str) -> str:
    try:
        import bcrypt
    except ImportError:
        raise LabBmcError(
            "the bcrypt module is missing: pip install sushy-tools (it brings bcrypt)"
        ) from None
    return str(bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=8)).decode())
