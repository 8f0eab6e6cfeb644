"""HAProxy keeps each server's runtime state across reloads and restarts, through Berth's helper.

A real HAProxy 2.6 in master-worker mode on 127.0.0.1 with the loadbalancer role's
``server-state-file`` settings. The test does what the role's systemd drop-in does (helper
``save``, then USR2 to the master; on a stop ``save``, on a start ``filter``) and reads the result
back over the Runtime API. The systemd wiring itself is exercised on the lab's LBs in
test_rollout.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.lab import ROOT
from tests.integration.lab import haproxy_cli as cli
from tests.ports import free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
HELPER = ROOT / "roles" / "loadbalancer" / "files" / "berth-haproxy-state"
MAINT = 0x01  # SRV_ADMF_FMAINT in srv_admin_state

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.access(HAPROXY, os.X_OK), reason="needs HAProxy (Debian package haproxy)"),
]


class Haproxy:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.config = workdir / "haproxy.cfg"
        self.sock = workdir / "admin.sock"
        self.state = workdir / "server-state"
        self.frontend = free_port()
        # the servers' ports: nothing listens there, so health checks fail; admin state and
        # weight are what this test follows
        self.ports = {"s1": free_port(), "s2": free_port()}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "haproxy.log"

    def write_config(self) -> None:
        servers = "\n".join(
            f"    server {name} 127.0.0.1:{port} check" for name, port in sorted(self.ports.items())
        )
        self.config.write_text(
            f"""global
    stats socket {self.sock} mode 600 level admin
    server-state-file {self.state}

defaults
    mode http
    load-server-state-from-file global
    timeout connect 1s
    timeout client 5s
    timeout server 5s

frontend fe_app
    bind 127.0.0.1:{self.frontend}
    default_backend be_app

backend be_app  # a comment, as the helper must tolerate
    default-server inter 1s rise 2 fall 2
{servers}
"""
        )

    def helper(self, *args: str) -> str:
        run = subprocess.run(
            [sys.executable, str(HELPER), *args, "--config", str(self.config), "--state", str(self.state)],
            capture_output=True,
            text=True,
            check=True,
        )
        return run.stderr

    def pid(self) -> int:
        for line in cli(self.sock, "show info").splitlines():
            if line.startswith("Pid:"):
                return int(line.split(":", 1)[1])
        raise AssertionError("show info has no Pid")

    def wait_for_worker(self, other_than: int | None = None) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.pid() != other_than:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"no new HAProxy worker answered on {self.sock}; log:\n{self.log.read_text()}")

    def start(self) -> None:
        self.helper("filter")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [HAPROXY, "-W", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        self.wait_for_worker()

    def reload(self) -> str:
        """The drop-in's ExecReload: save, check the configuration, USR2 to the master."""
        assert self.process is not None
        saved = self.helper("save", "--socket", str(self.sock))
        subprocess.run([HAPROXY, "-c", "-q", "-f", str(self.config)], check=True)
        old = self.pid()
        self.process.send_signal(signal.SIGUSR2)
        self.wait_for_worker(other_than=old)
        # the old worker may still hold the socket for a moment; ask until the new one answers
        return saved

    def stop(self) -> str:
        """The drop-in's ExecStop (save), then what systemd does: SIGTERM to the master."""
        assert self.process is not None
        saved = self.helper("save", "--socket", str(self.sock))
        self.kill()
        return saved

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def servers(self) -> dict[str, dict[str, int]]:
        lines = [line for line in cli(self.sock, "show servers state be_app").splitlines() if line.strip()]
        header = lines[1].lstrip("#").split()
        rows = [dict(zip(header, line.split(), strict=True)) for line in lines[2:]]
        return {
            row["srv_name"]: {
                "admin": int(row["srv_admin_state"]),
                "weight": int(row["srv_uweight"]),
                "port": int(row["srv_port"]),
            }
            for row in rows
        }


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Haproxy]:
    proxy = Haproxy(tmp_path)
    proxy.write_config()
    try:
        yield proxy
    finally:
        proxy.kill()


def test_maint_and_weight_survive_a_reload_and_a_moved_server_starts_fresh(haproxy: Haproxy) -> None:
    haproxy.start()
    assert "no " in haproxy.helper("filter")  # nothing saved yet: servers start from the configuration
    cli(haproxy.sock, "set server be_app/s1 state maint")
    cli(haproxy.sock, "set server be_app/s2 weight 50")

    saved = haproxy.reload()
    assert "saved 2 server state(s)" in saved, saved
    after = haproxy.servers()
    assert after["s1"]["admin"] & MAINT, after
    assert after["s2"]["weight"] == 50, after

    # placement moved s1 to another port: its old state must not come back with its old port
    old_port = haproxy.ports["s1"]
    haproxy.ports["s1"] = free_port()
    haproxy.write_config()
    saved = haproxy.reload()
    assert "saved 1 server state(s)" in saved and "1 not placed identically" in saved, saved
    after = haproxy.servers()
    assert after["s1"] == {"admin": 0, "weight": 1, "port": haproxy.ports["s1"]}, (after, old_port)
    assert after["s2"]["weight"] == 50, after


def test_state_survives_a_restart_and_a_stale_file_is_checked_before_start(haproxy: Haproxy) -> None:
    haproxy.start()
    cli(haproxy.sock, "set server be_app/s1 state maint")
    cli(haproxy.sock, "set server be_app/s2 state maint")
    assert "saved 2 server state(s)" in haproxy.stop()

    haproxy.start()
    after = haproxy.servers()
    assert after["s1"]["admin"] & MAINT and after["s2"]["admin"] & MAINT, after

    # stopped again; the configuration changes while HAProxy is down (s2 moves)
    haproxy.stop()
    haproxy.ports["s2"] = free_port()
    haproxy.write_config()
    filtered = haproxy.helper("filter")
    assert "1 server state(s) apply, 1 not placed identically" in filtered, filtered
    haproxy.start()
    after = haproxy.servers()
    assert after["s1"]["admin"] & MAINT, after
    assert after["s2"]["admin"] == 0 and after["s2"]["port"] == haproxy.ports["s2"], after


def test_a_save_while_haproxy_is_down_keeps_the_last_file_and_garbage_is_removed(haproxy: Haproxy) -> None:
    haproxy.start()
    cli(haproxy.sock, "set server be_app/s1 state maint")
    haproxy.stop()
    before = haproxy.state.read_text()
    # HAProxy gone (a crash before ExecStop): nothing to dump, the last saved file stays
    message = haproxy.helper("save", "--socket", str(haproxy.sock))
    assert "not answering" in message and haproxy.state.read_text() == before, message

    haproxy.state.write_text("something else entirely\n")
    message = haproxy.helper("filter")
    assert "unusable" in message and not haproxy.state.exists(), message
    haproxy.start()
    assert all(server["admin"] == 0 for server in haproxy.servers().values())
