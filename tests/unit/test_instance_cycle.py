"""berth.fleet.instance_cycle: one instance step in one run, on real release directories, against a
real HTTP health endpoint on the loopback, with systemctl faked (a recording runner, and for the
module's own main() a stub script first on PATH)."""

from __future__ import annotations

import json
import stat
import sys
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.common.command import CommandResult
from ansible_collections.berth.fleet.plugins.module_utils.common.fs import sha256_file
from ansible_collections.berth.fleet.plugins.module_utils.common.systemd import Systemctl
from ansible_collections.berth.fleet.plugins.module_utils.drivers.node.cycle import (
    CycleError,
    CycleRequest,
    CycleResult,
    InstanceCycle,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.node.health import GatePolicy
from ansible_collections.berth.fleet.plugins.module_utils.drivers.node.release import (
    ReleaseError,
    ReleaseManager,
    ReleaseRequest,
    version_of_link,
)
from tests.modules import run_module
from tests.ports import free_port
from tests.unit.test_release_and_health import make_package

ROOT = Path(__file__).resolve().parents[2]
UNIT = "berth-catalog-1.service"
CHANGING = ("stop", "start", "daemon-reload", "restart")


class HealthServer(ThreadingHTTPServer):
    """Answers /health for the release the fake systemd runs: ``statuses[version]`` (503 if none runs)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", free_port()), HealthHandler)
        self.statuses: dict[str, int] = {}
        self.serving: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/health"


class HealthHandler(BaseHTTPRequestHandler):
    server: HealthServer

    def do_GET(self) -> None:
        status = self.server.statuses.get(self.server.serving or "", 503)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health() -> Iterator[HealthServer]:
    server = HealthServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class FakeSystemctl:
    """A systemctl runner: records each call with the version current pointed at when it came."""

    def __init__(
        self, root: Path, health: HealthServer, active: bool, load_state: str = "loaded", enabled: bool = True
    ) -> None:
        self.current = root / "instances" / "catalog-1" / "current"
        self.health = health
        self.active = active
        self.load_state = load_state
        self.enabled = enabled
        self.failing: dict[str, str] = {}  # verb -> the stderr it fails with
        self.dies_with = ""  # a started process that exits at once, saying this in its journal
        self.died = False
        self.calls: list[tuple[str, str | None]] = []
        if active:
            health.serving = version_of_link(self.current)

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        if argv[0] == "journalctl":
            return CommandResult(0, f"Started it.\n{self.dies_with}\n" if self.died else "", "")
        verb = argv[1]
        self.calls.append((verb, version_of_link(self.current)))
        if verb in self.failing:
            return CommandResult(1, "", f"some noise\n{self.failing[verb]}\n")
        if verb == "show":
            active = "active" if self.active else "failed" if self.died else "inactive"
            sub = "running" if self.active else "dead"
            lines = [f"LoadState={self.load_state}", f"ActiveState={active}", f"SubState={sub}"]
            unit_file = "enabled" if self.enabled else "disabled"
            return CommandResult(
                0, "\n".join([*lines, "NeedDaemonReload=no", f"UnitFileState={unit_file}", ""]), ""
            )
        if verb == "enable":
            self.enabled = True
        if verb == "stop":
            self.active, self.health.serving = False, None
        elif verb == "start":
            self.active, self.health.serving = True, version_of_link(self.current)
            if self.dies_with:
                self.active, self.died, self.health.serving = False, True, None
        return CommandResult(0, "", "")

    @property
    def changes(self) -> list[str]:
        return [verb for verb, _version in self.calls if verb in CHANGING]


def stage(tmp_path: Path, root: Path, *versions: str, current: str | None = None) -> None:
    for version in versions:
        package = make_package(tmp_path / f"catalog-{version}.tgz", version)
        state = "current" if version == current else "present"
        req = ReleaseRequest("catalog-1", "catalog", version, state, package, sha256_file(package), root)
        ReleaseManager(req, check_mode=False).run()


def cycle(
    root: Path,
    fake: FakeSystemctl,
    url: str,
    version: str,
    check_mode: bool = False,
    **policy: Any,
) -> InstanceCycle:
    gate = {"rise": 3, "fall": 3, "interval": 0.05, "min_healthy_time": 0.2, "timeout": 5.0, **policy}
    request = CycleRequest("catalog-1", "catalog", version, root, UNIT, GatePolicy(url, **gate))
    return InstanceCycle(request, check_mode, Systemctl(fake))


def failed(step: InstanceCycle) -> tuple[str, CycleResult]:
    with pytest.raises(CycleError) as caught:
        step.run()
    return str(caught.value), caught.value.result


def test_an_instance_on_the_version_active_and_healthy_is_left_alone(
    tmp_path: Path, health: HealthServer
) -> None:
    root = tmp_path / "opt"
    stage(tmp_path, root, "v1", current="v1")
    health.statuses = {"v1": 200}
    fake = FakeSystemctl(root, health, active=True)
    for check_mode in (False, True):
        result = cycle(root, fake, health.url, "v1", check_mode).run()
        assert (result.changed, result.actions, result.why) == (False, [], "")
        assert result.risen_after is not None and result.stop_seconds is None
        assert result.before == result.after == {"current": "v1", "unit": "active"}
    assert fake.changes == []  # no stop, start or daemon-reload at all


def test_a_full_cycle_stops_switches_reloads_starts_and_gates(tmp_path: Path, health: HealthServer) -> None:
    root = tmp_path / "opt"
    stage(tmp_path, root, "v1", "v2", current="v1")
    health.statuses = {"v1": 200, "v2": 200}
    fake = FakeSystemctl(root, health, active=True)
    result = cycle(root, fake, health.url, "v2").run()
    changes = [(verb, version) for verb, version in fake.calls if verb in CHANGING]
    # stopped while still on v1, switched before systemd re-reads the unit and starts it
    assert changes == [("stop", "v1"), ("daemon-reload", "v2"), ("start", "v2")]
    assert (root / "instances/catalog-1/current").resolve().name == "catalog-v2"
    assert (result.changed, result.version, result.previous, result.reverted) == (True, "v2", "v1", False)
    assert result.actions[:4] == [
        f"stop {UNIT}",
        "switch catalog-1 current to v2",
        "daemon-reload",
        f"start {UNIT}",
    ]
    assert result.why == "current is v1, not v2"
    assert result.before == {"current": "v1", "unit": "active"}
    assert result.after == {"current": "v2", "unit": "active"}
    assert result.risen_after is not None and result.waited is not None
    assert result.waited >= 0.2  # min_healthy_time applies to a started release
    assert result.stop_seconds is not None and result.start_seconds is not None
    assert result.seconds >= result.waited
    # run again: nothing to do
    assert not cycle(root, fake, health.url, "v2").run().changed


def test_a_first_deploy_enables_the_unit_once_it_passed_its_gate(
    tmp_path: Path, health: HealthServer
) -> None:
    root = tmp_path / "opt"
    stage(tmp_path, root, "v1")
    health.statuses = {"v1": 200}
    fake = FakeSystemctl(root, health, active=False, enabled=False)
    checked = cycle(root, fake, health.url, "v1", check_mode=True).run()
    assert f"enable {UNIT}" in checked.actions and not fake.enabled
    result = cycle(root, fake, health.url, "v1").run()
    assert result.actions[-1] == f"enable {UNIT}" and fake.enabled
    assert [verb for verb, _version in fake.calls if verb in (*CHANGING, "enable")][-2:] == [
        "start",
        "enable",
    ]
    again = cycle(root, fake, health.url, "v1").run()
    assert not again.changed and [verb for verb, _version in fake.calls].count("enable") == 1


@pytest.mark.parametrize("v1_status", [200, 503])
def test_a_failing_gate_reverts_to_the_previous_release_and_gates_it_again(
    tmp_path: Path, health: HealthServer, v1_status: int
) -> None:
    root = tmp_path / "opt"
    stage(tmp_path, root, "v1", "v2", current="v1")
    health.statuses = {"v1": v1_status, "v2": 503}
    fake = FakeSystemctl(root, health, active=True)
    message, result = failed(cycle(root, fake, health.url, "v2"))
    assert fake.changes == ["stop", "daemon-reload", "start", "stop", "daemon-reload", "start"]
    assert (root / "instances/catalog-1/current").resolve().name == "catalog-v1"
    assert result.reverted is True and result.reverted_healthy is (v1_status == 200)
    assert (result.version, result.previous) == ("v1", "v2")
    assert message.startswith("catalog-1: v2 failed its health gate: ")
    assert "answers HTTP 503" in message and "reverted: catalog-1 is back on v1, which " in message
    if v1_status == 200:
        assert message.endswith("s)") and "which passed its health gate" in message
    else:
        assert "which did NOT pass its health gate either" in message
    assert result.gate["healthy"] is False and result.revert["healthy"] is (v1_status == 200)
    assert result.after == {"current": "v1", "unit": "active"}


def test_a_failing_first_deploy_is_stopped_again_and_stays_out(tmp_path: Path, health: HealthServer) -> None:
    root = tmp_path / "opt"
    stage(tmp_path, root, "v1")
    health.statuses = {"v1": 503}
    fake = FakeSystemctl(root, health, active=False)
    message, result = failed(cycle(root, fake, health.url, "v1"))
    assert fake.changes == ["daemon-reload", "start", "stop"]  # nothing to stop before
    assert fake.active is False and result.reverted is False and result.reverted_healthy is None
    assert "no previous release to go back to (a first deploy)" in message
    assert message.endswith(f"{UNIT} is stopped, the instance stays out")
    assert result.after == {"current": "v1", "unit": "inactive"}


def test_a_release_whose_process_dies_says_what_it_said_last(tmp_path: Path, health: HealthServer) -> None:
    root = tmp_path / "opt"
    stage(tmp_path, root, "v1")
    fake = FakeSystemctl(root, health, active=False)
    fake.dies_with = "OSError: [Errno 98] Address already in use"
    message, _result = failed(cycle(root, fake, health.url, "v1", timeout=0.5))
    assert (
        f"{UNIT} is failed, its last log lines: Started it. | OSError: [Errno 98] Address already in use"
        in message
    )


def test_a_release_that_is_not_staged_fails_before_anything_is_stopped(
    tmp_path: Path, health: HealthServer
) -> None:
    root = tmp_path / "opt"
    stage(tmp_path, root, "v1", current="v1")
    fake = FakeSystemctl(root, health, active=True)
    for check_mode in (False, True):
        message, result = failed(cycle(root, fake, health.url, "v3", check_mode))
        assert (
            "catalog v3 is not staged on this node" in message and "berth.fleet.instance_install" in message
        )
        assert "nothing was stopped" in message and not result.changed
    assert fake.changes == [] and fake.active
    assert version_of_link(root / "instances/catalog-1/current") == "v1"


def test_check_mode_reports_the_cycle_and_changes_nothing(tmp_path: Path, health: HealthServer) -> None:
    root = tmp_path / "opt"
    stage(tmp_path, root, "v1", "v2", current="v1")
    fake = FakeSystemctl(root, health, active=True)
    result = cycle(root, fake, health.url, "v2", check_mode=True).run()
    assert result.changed and result.version == "v2"
    assert result.actions == [
        f"stop {UNIT}",
        "switch catalog-1 current to v2",
        "daemon-reload",
        f"start {UNIT}",
        f"health gate {health.url}",
    ]
    assert result.before == {"current": "v1", "unit": "active"}
    assert result.after == {"current": "v2", "unit": "active"}
    assert fake.changes == [] and [verb for verb, _version in fake.calls] == ["show"]
    assert (root / "instances/catalog-1/current").resolve().name == "catalog-v1"


def test_fall_fails_a_503_answering_release_in_about_a_second_not_at_the_deadline(
    tmp_path: Path, health: HealthServer
) -> None:
    root = tmp_path / "opt"
    stage(tmp_path, root, "v1")
    health.statuses = {"v1": 503}
    fake = FakeSystemctl(root, health, active=False)
    message, result = failed(
        cycle(root, fake, health.url, "v1", interval=0.25, min_healthy_time=2, timeout=90)
    )
    assert "answers HTTP 503 (expected HTTP 200) 3 times in a row" in message
    assert result.waited is not None and 0.4 <= result.waited < 2.0
    assert result.seconds < 3.0 and result.risen_after is None


def test_systemctl_failing_and_a_missing_unit_are_one_clear_message(
    tmp_path: Path, health: HealthServer
) -> None:
    root = tmp_path / "opt"
    stage(tmp_path, root, "v1", "v2", current="v1")
    health.statuses = {"v1": 200}
    fake = FakeSystemctl(root, health, active=True)
    fake.failing["stop"] = "Failed to stop berth-catalog-1.service: Access denied"
    message, _result = failed(cycle(root, fake, health.url, "v2"))
    assert message.startswith(
        f"catalog-1: could not stop {UNIT} (nothing was switched): command failed (rc=1)"
    )
    assert message.endswith("Access denied") and "Traceback" not in message
    assert version_of_link(root / "instances/catalog-1/current") == "v1"
    # a start that fails is a failing release: back to v1
    fake.failing = {"start": "Job for berth-catalog-1.service failed because the control process exited"}
    message, result = failed(cycle(root, fake, health.url, "v2"))
    assert message.startswith("catalog-1: v2 did not start: command failed (rc=1): ")
    # the fake fails every start: the revert's too
    assert (
        "control process exited; reverted: catalog-1 is back on v1, which did not start: command" in message
    )
    assert result.reverted and result.reverted_healthy is False
    missing = FakeSystemctl(root, health, active=False, load_state="not-found")
    message, _result = failed(cycle(root, missing, health.url, "v2"))
    assert message.startswith(f"catalog-1: unit {UNIT} not found: systemd has no unit file for it")
    message, _result = failed(cycle(root, missing, "ftp://x", "../v2"))
    assert "version '../v2' is not a version" in message and "url must be http(s)://" in message


def test_a_switch_that_fails_after_the_stop_starts_the_old_release_again(
    tmp_path: Path, health: HealthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "opt"
    stage(tmp_path, root, "v1", "v2", current="v1")
    fake = FakeSystemctl(root, health, active=True)
    real_run = ReleaseManager.run

    def run(self: ReleaseManager) -> Any:
        if self.request.state == "current" and not self.check_mode:
            raise ReleaseError("cannot write the link (read-only file system)")
        return real_run(self)

    monkeypatch.setattr(ReleaseManager, "run", run)
    message, result = failed(cycle(root, fake, health.url, "v2"))
    assert message == (
        "catalog-1: could not switch current to v2: cannot write the link (read-only file system); "
        f"{UNIT} started again on v1"
    )
    assert fake.changes == ["stop", "start"] and result.after == {"current": "v1", "unit": "active"}


SYSTEMCTL_STUB = """#!{python}
import json, pathlib, sys
state = pathlib.Path({state!r})
data = json.loads(state.read_text())
data["calls"].append(sys.argv[1:])
verb = sys.argv[1]
if verb == "show":
    print("LoadState=loaded\\nActiveState=" + ("active" if data["active"] else "inactive"))
    print("SubState=running\\nNeedDaemonReload=no\\nUnitFileState=enabled")
elif verb in ("stop", "start"):
    data["active"] = verb == "start"
state.write_text(json.dumps(data))
"""


def instance_cycle_module(tmp_path: Path, check: bool = False, **params: Any) -> dict[str, Any]:
    """The module's real main(), run as Ansible runs it, with the systemctl stub first on PATH."""
    return run_module("instance_cycle", params, check=check, diff=True, path_first=tmp_path / "bin")


def test_the_module_runs_a_cycle_through_its_main(tmp_path: Path, health: HealthServer) -> None:
    root = tmp_path / "opt"
    stage(tmp_path, root, "v1", "v2", current="v1")
    health.statuses, health.serving = {"v2": 200}, "v2"
    state = tmp_path / "systemd.json"
    state.write_text(json.dumps({"active": True, "calls": []}))
    stub = tmp_path / "bin" / "systemctl"
    stub.parent.mkdir()
    stub.write_text(SYSTEMCTL_STUB.format(python=sys.executable, state=str(state)))
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    params: dict[str, Any] = {
        "instance": "catalog-1",
        "artifact": "catalog",
        "version": "v2",
        "root": str(root),
        "unit": UNIT,
        "health": {"url": health.url, "interval": 0.05, "min_healthy_time": 0.1},
    }
    checked = instance_cycle_module(tmp_path, check=True, **params)
    assert checked["changed"] is True and checked["diff"]["after"] == {"current": "v2", "unit": "active"}
    result = instance_cycle_module(tmp_path, **params)
    assert result["changed"] is True and not result.get("failed"), result
    assert (result["version"], result["previous"]) == ("v2", "v1")
    assert result["diff"] == {
        "before": {"current": "v1", "unit": "active"},
        "after": {"current": "v2", "unit": "active"},
    }
    calls = [call[0] for call in json.loads(state.read_text())["calls"]]
    assert calls == ["show", "show", "stop", "daemon-reload", "start", "show"]
    assert (root / "instances/catalog-1/current").resolve().name == "catalog-v2"
    missing = instance_cycle_module(tmp_path, **{**params, "version": "v9"})
    assert missing["failed"] is True and missing["msg"].startswith("catalog-1: catalog v9 is not staged")
    bad = instance_cycle_module(tmp_path, **{**params, "health": {"rise": 2}})
    assert bad["failed"] is True and "url" in bad["msg"]
