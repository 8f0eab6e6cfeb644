"""The lab's libvirtd on a fake host: a fake /proc, fake pid files, a fake nsenter/virsh and a fake kill.

Network namespaces are plain files here: a process is "in" a namespace when its /proc/<pid>/ns/net
resolves to the same inode, exactly what LabLibvirtd compares. Fake pids are above the kernel's
pid_max, so even a kill that escaped the fake could not reach a real process.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.common.command import CommandResult
from ansible_collections.berth.fleet.plugins.module_utils.local import labvirt as _labvirt
from ansible_collections.berth.fleet.plugins.module_utils.local.labvirt import LabLibvirtd, LabVirtError

NS = "berth-t"
PID_BASE = 5_000_000  # > 4194304, the largest pid_max Linux allows


class FakeHost:
    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.run_dir = root / "run"
        self.record_dir = root / "run-berth"
        self.netns_dir = root / "netns"
        for directory in (self.proc, self.run_dir, self.netns_dir):
            directory.mkdir()
        (self.netns_dir / NS).write_text("the lab namespace\n")
        (self.netns_dir / "host").write_text("the host's namespace\n")
        self.next_pid = PID_BASE
        self.calls: list[list[str]] = []
        self.kills: list[tuple[int, int]] = []
        self.start_rc = 0
        self.writes_pid_file = True
        self.uri_rc = 0
        self.domains = ""
        self.list_rc = 0
        self.ignores_sigterm: set[int] = set()
        self.now = 1000.0
        self.sleeps: list[float] = []

    # --- processes

    def spawn(
        self,
        name: str,
        netns: str = NS,
        start_time: str | None = None,
        comm: str | None = None,
        pid: int | None = None,
    ) -> int:
        if pid is None:
            pid = self.next_pid
            self.next_pid += 1
        entry = self.proc / str(pid)
        if entry.exists():
            shutil.rmtree(entry)
        (entry / "ns").mkdir(parents=True)
        start = start_time if start_time is not None else str(pid * 7 % 100000 + 12345)
        # fields 4..21, then 22 (starttime), then a few more; the comm has a space and a ')' on purpose
        fields = [str(pid), f"({comm or name}) x)", "S", *["0"] * 18, start, *["0"] * 8]
        (entry / "stat").write_text(" ".join(fields) + "\n")
        (entry / "comm").write_text(f"{comm or name}\n")
        (entry / "ns/net").symlink_to(self.netns_dir / netns)
        (self.run_dir / f"{name}.pid").write_text(f"{pid}\n")
        return pid

    def exit(self, pid: int) -> None:
        shutil.rmtree(self.proc / str(pid))

    # --- injected callables

    def runner(self, argv: Sequence[str]) -> CommandResult:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "nsenter":
            assert argv[1] == f"--net={self.netns_dir / NS}"
            assert argv[2:] in (["virtlogd", "-d"], ["libvirtd", "-d"])
            if self.start_rc != 0:
                return CommandResult(self.start_rc, "", f"{argv[2]}: cannot start\n")
            if self.writes_pid_file:
                self.spawn(argv[2], netns=NS)
            return CommandResult(0, "", "")
        if argv[:3] == ["virsh", "-c", "qemu:///system"]:
            if argv[3:] == ["uri"]:
                return CommandResult(self.uri_rc, "qemu:///system\n" if self.uri_rc == 0 else "", "")
            if argv[3:] == ["list", "--name"]:
                return CommandResult(self.list_rc, self.domains, "")
        raise AssertionError(f"unexpected command {argv}")

    def kill(self, pid: int, sig: int) -> None:
        assert pid >= PID_BASE, "a fake kill for a fake pid only"
        self.kills.append((pid, sig))
        if sig == signal.SIGKILL or pid not in self.ignores_sigterm:
            self.exit(pid)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    # --- views

    def started(self) -> list[str]:
        return [argv[2] for argv in self.calls if argv[0] == "nsenter"]

    def record_path(self) -> Path:
        return self.record_dir / "lab-libvirtd.json"

    def record(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.record_path().read_text())
        return loaded

    def write_record(self, daemons: dict[str, dict[str, Any]]) -> None:
        self.record_dir.mkdir(exist_ok=True)
        self.record_path().write_text(json.dumps({"namespace": NS, "daemons": daemons}))

    def stat_start_time(self, pid: int) -> str:
        return (self.proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19]


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    fake = FakeHost(tmp_path)
    monkeypatch.setattr(_labvirt, "netns_path", lambda namespace: fake.netns_dir / namespace)
    monkeypatch.setattr(_labvirt.os, "kill", fake.kill)
    return fake


def lab(host: FakeHost, namespace: str = NS) -> LabLibvirtd:
    return LabLibvirtd(
        namespace,
        runner=host.runner,
        proc=host.proc,
        run_dir=host.run_dir,
        record_dir=host.record_dir,
        sleep=host.sleep,
        clock=host.clock,
    )


def recorded(host: FakeHost, name: str, pid: int) -> dict[str, Any]:
    return {"name": name, "pid": pid, "start_time": host.stat_start_time(pid)}


# --- observing ---------------------------------------------------------------------------------------


def test_daemon_reads_pid_file_stat_and_namespace(host: FakeHost) -> None:
    pid = host.spawn("libvirtd", start_time="987654")
    daemon = lab(host).daemon("libvirtd")
    assert daemon is not None
    assert (daemon.name, daemon.pid, daemon.start_time) == ("libvirtd", pid, "987654")
    assert daemon.netns == lab(host).lab_netns()
    assert lab(host).daemon("virtlogd") is None  # no pid file


@pytest.mark.parametrize("pid_file", ["", "\n", "abc\n", "-5\n"])
def test_unusable_pid_file(host: FakeHost, pid_file: str) -> None:
    (host.run_dir / "libvirtd.pid").write_text(pid_file)
    assert lab(host).daemon("libvirtd") is None


def test_stale_pid_files(host: FakeHost) -> None:
    reused = host.spawn("libvirtd", comm="bash")  # the pid now belongs to something else
    assert lab(host).daemon("libvirtd") is None
    gone = host.spawn("virtlogd")
    host.exit(gone)
    assert lab(host).daemon("virtlogd") is None
    assert reused != gone


def test_missing_namespace(host: FakeHost) -> None:
    with pytest.raises(
        LabVirtError, match=r"lab namespace berth-gone does not exist: create the lab network first"
    ):
        lab(host, "berth-gone").lab_netns()


# --- running -----------------------------------------------------------------------------------------


def test_starts_both_daemons_inside_the_lab_namespace(host: FakeHost) -> None:
    changed, status = lab(host).running(check_mode=False)
    assert changed
    netns = host.netns_dir / NS
    assert host.calls == [
        ["nsenter", f"--net={netns}", "virtlogd", "-d"],
        ["nsenter", f"--net={netns}", "libvirtd", "-d"],
        ["virsh", "-c", "qemu:///system", "uri"],
    ]
    virtlogd, libvirtd = PID_BASE, PID_BASE + 1
    assert host.record() == {
        "namespace": NS,
        "daemons": {
            "virtlogd": recorded(host, "virtlogd", virtlogd),
            "libvirtd": recorded(host, "libvirtd", libvirtd),
        },
    }
    assert status == {
        "virtlogd": dict(recorded(host, "virtlogd", virtlogd), berth_started=True),
        "libvirtd": dict(recorded(host, "libvirtd", libvirtd), berth_started=True),
    }


def test_already_running_in_the_lab(host: FakeHost) -> None:
    host.spawn("virtlogd")
    host.spawn("libvirtd")
    changed, status = lab(host).running(check_mode=False)
    assert not changed
    assert host.calls == []
    assert not host.record_path().exists()
    # used as is, but not Berth's: it will never be stopped by Berth
    assert status["libvirtd"]["berth_started"] is False
    assert status["virtlogd"]["berth_started"] is False


def test_only_the_missing_daemon_is_started(host: FakeHost) -> None:
    virtlogd = host.spawn("virtlogd")
    host.write_record({"virtlogd": recorded(host, "virtlogd", virtlogd)})
    changed, _status = lab(host).running(check_mode=False)
    assert changed
    assert host.started() == ["libvirtd"]
    daemons = host.record()["daemons"]
    assert daemons["virtlogd"] == recorded(host, "virtlogd", virtlogd)  # kept
    assert daemons["libvirtd"]["pid"] == virtlogd + 1


@pytest.mark.parametrize("check_mode", [False, True])
@pytest.mark.parametrize("outside", ["libvirtd", "virtlogd"])
def test_running_in_another_namespace_is_an_error(host: FakeHost, outside: str, check_mode: bool) -> None:
    pid = host.spawn(outside, netns="host")
    with pytest.raises(LabVirtError) as error:
        lab(host).running(check_mode=check_mode)
    message = str(error.value)
    assert f"{outside} (pid {pid}) is already running outside the lab namespace {NS}" in message
    assert f"Stop it (kill {pid})" in message
    assert host.calls == []  # the other daemon, although missing, was not started either
    assert host.kills == []
    assert not host.record_path().exists()


def test_stale_pid_file_counts_as_not_running(host: FakeHost) -> None:
    host.spawn("libvirtd", comm="sshd", netns="host")  # a reused pid, even outside the lab: not libvirtd
    (host.run_dir / "virtlogd.pid").write_text(f"{PID_BASE + 99}\n")  # no such process
    changed, status = lab(host).running(check_mode=False)
    assert changed
    assert host.started() == ["virtlogd", "libvirtd"]
    assert status["libvirtd"]["berth_started"] and status["virtlogd"]["berth_started"]


def test_check_mode_starts_nothing(host: FakeHost) -> None:
    changed, status = lab(host).running(check_mode=True)
    assert changed
    assert status == {"virtlogd": None, "libvirtd": None}
    assert host.calls == []
    assert not host.record_dir.exists()


def test_check_mode_when_all_run(host: FakeHost) -> None:
    host.spawn("virtlogd")
    host.spawn("libvirtd")
    assert lab(host).running(check_mode=True)[0] is False


def test_check_mode_without_the_namespace(host: FakeHost) -> None:
    changed, status = lab(host, "berth-not-yet").running(check_mode=True)
    assert changed
    assert status == {"virtlogd": None, "libvirtd": None}
    assert host.calls == []
    with pytest.raises(LabVirtError, match="lab namespace berth-not-yet does not exist"):
        lab(host, "berth-not-yet").running(check_mode=False)
    assert host.calls == []


def test_start_failure(host: FakeHost) -> None:
    host.start_rc = 1
    with pytest.raises(LabVirtError, match=f"could not start virtlogd in {NS}: virtlogd: cannot start"):
        lab(host).running(check_mode=False)
    assert host.started() == ["virtlogd"]
    assert not host.record_path().exists()


def test_pid_file_never_written(host: FakeHost) -> None:
    host.writes_pid_file = False
    with pytest.raises(LabVirtError, match=r"virtlogd did not write .*/virtlogd.pid within 5 s"):
        lab(host).running(check_mode=False, timeout=5)
    assert host.started() == ["virtlogd"]
    assert host.sleeps and sum(host.sleeps) >= 5 - 0.2  # waited on the fake clock, not the real one


def test_socket_never_answers(host: FakeHost) -> None:
    host.uri_rc = 1
    with pytest.raises(LabVirtError, match="libvirtd did not answer on qemu:///system within 3 s"):
        lab(host).running(check_mode=False, timeout=3)
    assert host.started() == ["virtlogd", "libvirtd"]
    assert set(host.record()["daemons"]) == {"virtlogd", "libvirtd"}  # recorded: a later stop finds them


# --- stopped -----------------------------------------------------------------------------------------


def test_stops_what_berth_started(host: FakeHost) -> None:
    lab(host).running(check_mode=False)
    virtlogd, libvirtd = PID_BASE, PID_BASE + 1
    host.calls.clear()
    changed, status = lab(host).stopped(check_mode=False)
    assert changed
    assert host.kills == [(libvirtd, signal.SIGTERM), (virtlogd, signal.SIGTERM)]  # reverse start order
    assert host.calls == [["virsh", "-c", "qemu:///system", "list", "--name"]]
    assert status == {"virtlogd": None, "libvirtd": None}
    assert not host.record_path().exists()
    assert lab(host).stopped(check_mode=False) == (False, status)
    assert len(host.kills) == 2


def test_refuses_while_domains_run(host: FakeHost) -> None:
    lab(host).running(check_mode=False)
    record = host.record()
    host.domains = "vm-a1\nvm-b2\n\n"
    for check_mode in (True, False):
        with pytest.raises(
            LabVirtError, match=r"libvirtd still runs domain\(s\) vm-a1, vm-b2: destroy them first"
        ):
            lab(host).stopped(check_mode=check_mode)
    assert host.kills == []
    assert host.record() == record


def test_refuses_when_the_domains_cannot_be_listed(host: FakeHost) -> None:
    lab(host).running(check_mode=False)
    host.list_rc = 1
    with pytest.raises(LabVirtError, match=r"cannot list libvirtd's domains .*libvirtd was left running"):
        lab(host).stopped(check_mode=False)
    assert host.kills == []


def test_stop_in_check_mode(host: FakeHost) -> None:
    lab(host).running(check_mode=False)
    record = host.record()
    changed, status = lab(host).stopped(check_mode=True)
    assert changed
    assert host.kills == []
    assert host.record() == record
    assert status["libvirtd"]["berth_started"]


def test_no_record_changes_nothing(host: FakeHost) -> None:
    host.spawn("virtlogd")
    host.spawn("libvirtd")
    for check_mode in (True, False):
        changed, status = lab(host).stopped(check_mode=check_mode)
        assert not changed
        assert status["libvirtd"]["berth_started"] is False
    assert host.kills == []
    assert host.calls == []
    assert not host.record_path().exists()


def test_never_kills_a_daemon_berth_did_not_start(host: FakeHost) -> None:
    virtlogd = host.spawn("virtlogd")
    libvirtd = host.spawn("libvirtd")
    host.write_record(
        {
            "virtlogd": recorded(host, "virtlogd", virtlogd),
            # the same pid, reused by a libvirtd someone else started later
            "libvirtd": {"name": "libvirtd", "pid": libvirtd, "start_time": "1"},
        }
    )
    changed, status = lab(host).stopped(check_mode=False)
    assert changed
    assert host.kills == [(virtlogd, signal.SIGTERM)]
    assert host.calls == []  # not Berth's libvirtd: its domains are not Berth's business here
    assert status["virtlogd"] is None
    assert status["libvirtd"] == {
        "name": "libvirtd",
        "pid": libvirtd,
        "start_time": host.stat_start_time(libvirtd),
        "berth_started": False,
    }
    assert not host.record_path().exists()


def test_record_of_daemons_that_are_gone(host: FakeHost) -> None:
    host.write_record({"libvirtd": {"name": "libvirtd", "pid": PID_BASE + 50, "start_time": "42"}})
    assert lab(host).stopped(check_mode=True)[0] is False
    assert host.record_path().exists()  # check mode leaves it
    assert lab(host).stopped(check_mode=False)[0] is False
    assert not host.record_path().exists()
    assert host.kills == []


def test_unreadable_record_is_no_record(host: FakeHost) -> None:
    host.spawn("libvirtd")
    host.record_dir.mkdir()
    host.record_path().write_text("{torn")
    assert lab(host).record() == {}
    assert lab(host).stopped(check_mode=False)[0] is False
    assert host.kills == []


def test_sigkill_after_the_timeout(host: FakeHost) -> None:
    lab(host).running(check_mode=False)
    virtlogd, libvirtd = PID_BASE, PID_BASE + 1
    host.ignores_sigterm.add(libvirtd)
    changed, _status = lab(host).stopped(check_mode=False, timeout=2)
    assert changed
    assert host.kills == [
        (libvirtd, signal.SIGTERM),
        (libvirtd, signal.SIGKILL),
        (virtlogd, signal.SIGTERM),
    ]
    assert sum(host.sleeps) >= 2 - 0.2


def test_start_after_stop(host: FakeHost) -> None:
    lab(host).running(check_mode=False)
    lab(host).stopped(check_mode=False)
    host.calls.clear()
    changed, status = lab(host).running(check_mode=False)
    assert changed
    assert host.started() == ["virtlogd", "libvirtd"]
    assert status["libvirtd"]["pid"] == PID_BASE + 3
