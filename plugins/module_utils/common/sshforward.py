# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A remote Unix socket reachable from the controller, through OpenSSH's socket forwarding.

A rollout's traffic steps talk to every load balancer's HAProxy Runtime API many times a second.
Through a module run each call costs a process on both ends; through a forwarded socket it costs
a local ``connect()``. ``SocketForward`` keeps one OpenSSH master per load balancer
(``ssh -f -N -M -L <local>:<remote>``) with the same connection settings Ansible uses for that host
(address, port, user, key, ``ansible_ssh_common_args`` / ``ansible_ssh_extra_args``: host keys are
checked exactly as they are for Ansible). The master's control socket and the forwarded socket
live in a private directory on the controller. ``ControlPersist`` bounds the master's life: with
no forwarded connection in use it exits by itself after ``persist`` seconds, so an interrupted run
leaves nothing behind for long; ``close`` ends it at once (``ssh -O exit``).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.command import (
    CommandResult,
    Runner,
    subprocess_runner,
)


class ForwardError(Exception):
    """The forward could not be set up or checked; the message says which host and why."""


@dataclass(frozen=True)
class SshTarget:
    name: str  # the inventory host
    address: str
    port: int | None = None
    user: str | None = None
    private_key: str | None = None
    args: tuple[str, ...] = ()  # ansible_ssh_common_args + ansible_ssh_extra_args, split

    @classmethod
    def from_hostvars(cls, name: str, hostvars: Mapping[str, Any]) -> SshTarget:
        """The target from a host's Ansible connection variables (only ``ssh`` connections)."""
        connection = str(hostvars.get("ansible_connection") or "ssh")
        if connection not in ("ssh", "smart"):
            raise ForwardError(
                f"{name}: ansible_connection is {connection!r}; the load balancer's Runtime API is "
                "reached through ssh socket forwarding, so it needs an ssh connection"
            )
        port = hostvars.get("ansible_port") or hostvars.get("ansible_ssh_port")
        args = []
        for key in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):
            args += shlex.split(str(hostvars.get(key) or ""))
        return cls(
            name=name,
            address=str(hostvars.get("ansible_host") or hostvars.get("ansible_ssh_host") or name),
            port=int(port) if port else None,
            user=str(hostvars.get("ansible_user") or hostvars.get("ansible_ssh_user") or "") or None,
            private_key=str(
                hostvars.get("ansible_ssh_private_key_file") or hostvars.get("ansible_private_key_file") or ""
            )
            or None,
            args=tuple(args),
        )

    def ssh(self, *options: str) -> list[str]:
        argv = ["ssh", "-o", "BatchMode=yes", *self.args, *options]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.user:
            argv += ["-l", self.user]
        if self.private_key:
            argv += ["-i", self.private_key]
        return [*argv, self.address]


class SocketForward:
    """``remote`` (a Unix socket on ``target``) at ``local_path`` on the controller."""

    def __init__(
        self,
        target: SshTarget,
        remote: str,
        directory: Path,
        persist: int = 120,
        runner: Runner = subprocess_runner,
    ) -> None:
        self.target = target
        self.remote = remote
        self.directory = directory
        self.persist = persist
        self.runner = runner

    @property
    def _stem(self) -> str:
        # two estates may both have an "lb-dc1": the files are named by where ssh goes too
        where = "\0".join(
            map(str, (self.target.address, self.target.port, self.target.user, *self.target.args))
        )
        return f"{self.target.name}-{hashlib.sha256(where.encode()).hexdigest()[:10]}"

    @property
    def local_path(self) -> Path:
        return self.directory / f"{self._stem}.sock"

    @property
    def control_path(self) -> Path:
        return self.directory / f"{self._stem}.ctl"

    def _control(self, operation: str) -> CommandResult:
        return self.runner(self.target.ssh("-S", str(self.control_path), "-O", operation))

    def running(self) -> bool:
        return self.control_path.exists() and self._control("check").rc == 0

    def ensure(self) -> bool:
        """The forward is up afterwards; returns whether it had to be opened."""
        if self.running() and _is_socket(self.local_path):
            return False
        self.close()
        self.local_path.unlink(missing_ok=True)
        argv = self.target.ssh(
            "-f",
            "-N",
            "-M",
            "-S",
            str(self.control_path),
            "-o",
            f"ControlPersist={self.persist}",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "StreamLocalBindUnlink=yes",
            "-L",
            f"{self.local_path}:{self.remote}",
        )
        # ssh -f forks a master that keeps its stdout and stderr: they go to a file, not to pipes
        # that would keep this call waiting for as long as the master lives
        log = self.directory / f"{self._stem}.log"
        with open(log, "wb") as errors:
            rc = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors, check=False
            ).returncode
        if rc != 0 or not _is_socket(self.local_path):
            tail = " ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise ForwardError(
                f"{self.target.name}: cannot forward {self.remote} over ssh to {self.target.address}"
                f" (rc={rc}): {tail or 'no socket appeared'}"
            )
        return True

    def write_file(self, path: str, content: str, mode: int = 0o644, timeout: float = 30.0) -> None:
        """``content`` at ``path`` on the target, atomically (a temporary sibling, synced, renamed),
        over the master's connection (``ensure`` first)."""
        quoted = shlex.quote(path)
        script = (
            "set -e; umask 077; "
            f't=$(mktemp "$(dirname {quoted})/.berth.XXXXXX"); trap \'rm -f "$t"\' EXIT; '
            f'cat > "$t"; chmod {mode:o} "$t"; sync "$t"; mv -f "$t" {quoted}; trap - EXIT'
        )
        argv = [*self.target.ssh("-S", str(self.control_path), "-o", "ControlMaster=no"), script]
        try:
            proc = subprocess.run(
                argv, input=content, capture_output=True, text=True, check=False, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise ForwardError(f"{self.target.name}: writing {path} took over {timeout:g} s") from None
        if proc.returncode != 0:
            raise ForwardError(
                f"{self.target.name}: cannot write {path} (rc={proc.returncode}): "
                f"{' '.join(proc.stderr.strip().splitlines()[-3:])}"
            )

    def close(self) -> None:
        if self.control_path.exists():
            self._control("exit")
        self.control_path.unlink(missing_ok=True)
        self.local_path.unlink(missing_ok=True)
        (self.directory / f"{self._stem}.log").unlink(missing_ok=True)


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def private_directory(key: str) -> Path:
    """A short private directory for the sockets of ``key`` (a Unix socket path must stay under
    about 100 bytes, so not under a deep state directory): ``$TMPDIR/berth-<uid>-<hash>``, created
    0700 and refused when someone else owns it or can read it."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    directory = Path(tempfile.gettempdir()) / f"berth-{os.getuid()}-{digest}"
    directory.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise ForwardError(f"{directory} must be a directory of this user's, mode 0700: refusing to use it")
    return directory


# the options a module takes for each load balancer it reaches through a forward (the
# berth.fleet.ssh_targets filter gives them)
TARGET_OPTIONS: dict[str, Any] = {
    "name": {"type": "str", "required": True},
    "address": {"type": "str", "required": True},
    "port": {"type": "int"},
    "user": {"type": "str"},
    "private_key": {"type": "path"},
    "args": {"type": "list", "elements": "str", "default": []},
}

# the arguments of a controller-side module that reaches every LB through its forwards (documented
# by the doc fragment berth.fleet.lb_targets)
FORWARD_ARGS: dict[str, Any] = {
    "lbs": {"type": "list", "elements": "dict", "required": True, "options": TARGET_OPTIONS},
    "persist": {"type": "int", "default": 120},
}


def forwards_of(lbs: list[Mapping[str, Any]], remote: str, persist: int = 120) -> list[SocketForward]:
    """A forward of ``remote`` (the Runtime API socket) per load balancer of a module's ``lbs``."""
    directory = private_directory(f"lb-runtime:{remote}")
    return [
        SocketForward(
            SshTarget(
                name=lb["name"],
                address=lb["address"],
                port=lb.get("port"),
                user=lb.get("user"),
                private_key=lb.get("private_key"),
                args=tuple(lb.get("args") or ()),
            ),
            remote,
            directory,
            persist=persist,
        )
        for lb in lbs
    ]
