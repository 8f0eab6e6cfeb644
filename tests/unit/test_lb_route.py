"""The blue-green switch (drivers/haproxy/routes.py) against real HAProxy processes: two load
balancers on this machine (Unix sockets, loopback ports), each choosing its backend from a map file.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.routes import (
    RouteTarget,
    SwitchError,
    parse_map,
    read_map,
    render_map,
    switch_routes,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import (
    HaproxyError,
    UnixSocketTransport,
)
from tests.mirror_lab import wait_for_haproxy

BLUE = {"live": "be_blue", "preview": "be_green"}
GREEN = {"live": "be_green", "preview": "be_blue"}
CONFIG = """global
    stats socket {socket} mode 600 level admin
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend fe
    bind 127.0.0.1:{port}
    use_backend %[str(live),map({map},be_blue)]
frontend fe_preview
    bind 127.0.0.1:{preview}
    use_backend %[str(preview),map({map},be_green)]
backend be_blue
    http-request return status 200 content-type text/plain string blue
backend be_green
    http-request return status 200 content-type text/plain string green
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Lb:
    name: str
    directory: Path
    port: int
    preview: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        return str(self.directory / "admin.sock")

    @property
    def map(self) -> str:
        return str(self.directory / "routes.map")

    def start(self) -> None:
        config = self.directory / "haproxy.cfg"
        config.write_text(
            CONFIG.format(socket=self.socket, port=self.port, preview=self.preview, map=self.map)
        )
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stderr=subprocess.DEVNULL)
        wait_for_haproxy(self.socket)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)

    def get(self, port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
            return answer.read().decode()

    def target(self, fail_write: bool = False, fail_commit: bool = False) -> RouteTarget:
        """The LB as the switch sees it. On a real estate every LB has its map at the same path;
        these two share a machine, so the shared name (ROUTES) is this LB's own file in every
        command and write (the commands still go to this real HAProxy)."""
        real = UnixSocketTransport(self.socket)

        def transport(command: str) -> str:
            if fail_commit and command.startswith("commit map"):
                return "the commit failed (test)\n"
            return real(command.replace(ROUTES, self.map))

        def write(path: str, content: str) -> None:
            if fail_write:
                raise OSError(f"{self.name}: disk full (test)")
            Path(path.replace(ROUTES, self.map)).write_text(content)

        return RouteTarget(self.name, transport, write)

    def routes(self) -> dict[str, str]:
        return read_map(self.target().transport, ROUTES)

    def file(self) -> dict[str, str]:
        lines = [line.split() for line in Path(self.map).read_text().splitlines() if not line.startswith("#")]
        return dict(lines)


ROUTES = "/etc/haproxy/berth-routes/test.map"


@pytest.fixture
def lbs(tmp_path: Path) -> Iterator[list[Lb]]:
    started = []
    try:
        for name in ("lb-1", "lb-2"):
            lb = Lb(name, tmp_path / name, free_port(), free_port())
            lb.directory.mkdir()
            Path(lb.map).write_text(render_map(BLUE))
            lb.start()
            started.append(lb)
        yield started
    finally:
        for lb in started:
            lb.stop()


def test_the_switch_moves_every_lb_at_once_and_a_restart_keeps_it(lbs: list[Lb]) -> None:
    assert [(lb.get(lb.port), lb.get(lb.preview)) for lb in lbs] == [("blue", "green")] * 2
    outcome = switch_routes([lb.target() for lb in lbs], ROUTES, GREEN, expect=BLUE)
    assert outcome.changed and outcome.before == {"lb-1": BLUE, "lb-2": BLUE}
    assert [(lb.get(lb.port), lb.get(lb.preview)) for lb in lbs] == [("green", "blue")] * 2
    assert [lb.routes() for lb in lbs] == [GREEN, GREEN] and [lb.file() for lb in lbs] == [GREEN, GREEN]
    # the commits are issued side by side: the LBs disagree for a few ms at most
    assert set(outcome.committed_at) == {"lb-1", "lb-2"} and 0 <= outcome.disagreed_for < 0.5
    for lb in lbs:  # HAProxy forgets runtime changes on a restart: the file it reads keeps the switch
        lb.stop()
        lb.start()
    assert [lb.get(lb.port) for lb in lbs] == ["green", "green"]
    again = switch_routes([lb.target() for lb in lbs], ROUTES, GREEN, expect=BLUE)
    assert not again.changed and again.committed_at == {}


def test_check_mode_reads_and_changes_nothing(lbs: list[Lb]) -> None:
    outcome = switch_routes([lb.target() for lb in lbs], ROUTES, GREEN, check_mode=True)
    assert outcome.changed and outcome.after == {"lb-1": GREEN, "lb-2": GREEN}
    assert [lb.routes() for lb in lbs] == [BLUE, BLUE] and [lb.get(lb.port) for lb in lbs] == ["blue"] * 2


def test_a_map_someone_else_changed_refuses_the_switch_before_anything_moves(lbs: list[Lb]) -> None:
    stray = {"live": "be_green", "preview": "be_green"}
    switch_routes([lbs[1].target()], ROUTES, stray)
    with pytest.raises(
        SwitchError, match=r"nothing was switched: lb-2 routes live -> be_green, preview -> be_green"
    ):
        switch_routes([lb.target() for lb in lbs], ROUTES, GREEN, expect=BLUE)
    assert lbs[0].routes() == BLUE and lbs[0].get(lbs[0].port) == "blue"


@pytest.mark.parametrize("failure", ["write", "commit"])
def test_a_failure_on_one_lb_puts_every_lb_back(lbs: list[Lb], failure: str) -> None:
    targets = [lbs[0].target(), lbs[1].target(fail_write=failure == "write", fail_commit=failure == "commit")]
    with pytest.raises(SwitchError) as raised:
        switch_routes(targets, ROUTES, GREEN, expect=BLUE)
    assert "the switch failed on lb-2" in str(raised.value) and "every load balancer was put back" in str(
        raised.value
    )
    assert sorted(raised.value.details["undone"]) == ["lb-1", "lb-2"]
    assert [lb.routes() for lb in lbs] == [BLUE, BLUE] and [lb.get(lb.port) for lb in lbs] == ["blue"] * 2
    assert lbs[0].file() == BLUE


def test_bad_routes_and_answers_are_refused() -> None:
    with pytest.raises(SwitchError, match="one token"):
        switch_routes([], ROUTES, {"live": "be green"})
    with pytest.raises(SwitchError, match="at least one route"):
        switch_routes([], ROUTES, {})
    assert parse_map("0x55f2c7da2100 live be_blue\n0x55f2c7da2190 preview be_green\n") == BLUE
    with pytest.raises(HaproxyError, match="unexpected line"):
        parse_map("Unknown map identifier. Please use #<id> or <file>.\n")
