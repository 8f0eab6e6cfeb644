"""The rollout report's sampler (plugins/plugin_utils/rollout_sampling.py and rollout_sampler.py): the
real sampler process, reading a fake HAProxy over real Unix sockets where the LBs' forwards would
be, a real journal, real files."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.planner import report
from ansible_collections.berth.fleet.plugins.module_utils.planner.journal import (
    journal_path,
    journal_started,
    load,
    save,
)
from ansible_collections.berth.fleet.plugins.module_utils.planner.progress import run_started
from ansible_collections.berth.fleet.plugins.module_utils.planner.rollout import Member, plan_rollout
from ansible_collections.berth.fleet.plugins.modules import lb_traffic
from ansible_collections.berth.fleet.plugins.plugin_utils.rollout_sampler import report_paths
from ansible_collections.berth.fleet.plugins.plugin_utils.rollout_sampling import Sampling
from tests.unit.test_haproxy import FakeHaproxy

LBS = ["lb-dc1", "lb-dc2"]
HOSTS = ["catalog-1", "catalog-2"]


class CountingHaproxy(FakeHaproxy):
    """The fake HAProxy with traffic: 200 requests/s through catalog-1 and catalog-2 since it started."""

    def __init__(self) -> None:
        super().__init__(backend="be_catalog")
        self.started = time.monotonic()
        for host in HOSTS:
            self.add(host)

    def __call__(self, command: str) -> str:
        for server in self.servers.values():
            server.requests = int(100 * (time.monotonic() - self.started))
        return super().__call__(command)


@contextlib.contextmanager
def serving(path: Path, haproxy: FakeHaproxy) -> Iterator[None]:
    """``haproxy`` answering on a Unix socket at ``path``, one command per connection like HAProxy."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    listener.settimeout(0.1)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                connection = listener.accept()[0]
            except TimeoutError:
                continue
            with connection:
                command = connection.recv(4096).decode().strip()
                connection.sendall(haproxy(command).encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(2)
        listener.close()
        path.unlink(missing_ok=True)


@pytest.fixture
def short_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short $TMPDIR: the forwards' sockets live there (a Unix socket path is at most 107 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="smp-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    yield directory
    shutil.rmtree(directory)


@pytest.fixture
def rollout(tmp_path: Path) -> dict[str, Any]:
    """A running rollout's journal (catalog-1 then catalog-2) and the rollout task's arguments."""
    members = [Member(host, f"dc{n}", n, "v1", True) for n, host in enumerate(HOSTS, 1)]
    plan = plan_rollout("catalog", members, "v2", 1)
    journal = journal_started({}, "catalog", "v2", {host: "v1" for host in HOSTS}, plan.batches)
    journal = run_started(journal, [step.as_dict() for step in plan.steps], LBS)
    where = {"state_dir": str(tmp_path), "service": "catalog"}
    save(journal_path(tmp_path, "catalog"), journal)
    lbs = [
        {"name": lb, "address": lb, "port": None, "user": None, "private_key": None, "args": []} for lb in LBS
    ]
    traffic = {"lbs": lbs, "socket": "/run/haproxy/admin.sock", "persist": 120, "backend": "be_catalog"}
    return {"where": where, "traffic": traffic, "steps": [step.as_dict() for step in plan.steps]}


def forward_paths(traffic: dict[str, Any]) -> dict[str, Path]:
    return {forward.target.name: forward.local_path for forward in lb_traffic.forwards(traffic)}


def play_the_steps(where: dict[str, Any], steps: list[dict[str, Any]], pause: float) -> None:
    """What the rollout tasks record, step by step, ``pause`` s apart: the run completes."""
    for index, step in enumerate(steps):
        time.sleep(pause)
        for lb in LBS:
            report.record_step({**where, "step": index}, "traffic", lb, time.time(), {"drain_wait": 0.1})
        for host in step["cycle"]:
            started = time.time()
            time.sleep(pause)
            report.record_step({**where, "step": index}, "cycle", host, started, {"risen_after": 0.3})


def test_the_first_task_samples_every_lb_until_the_run_ends_and_writes_the_report(
    rollout: dict[str, Any], short_tmp: Path
) -> None:
    where, traffic = rollout["where"], rollout["traffic"]
    paths = forward_paths(traffic)
    with serving(paths["lb-dc1"], CountingHaproxy()), serving(paths["lb-dc2"], CountingHaproxy()):
        # another instance's task, still busy with the rest of the rollout once this one's part is done
        others = threading.Thread(target=play_the_steps, args=(where, rollout["steps"], 0.5))
        with Sampling(where, traffic, "catalog-1", idle_limit=30) as first:
            with Sampling(where, traffic, "catalog-2", idle_limit=30) as second:
                assert first.pid is not None and second.pid is None  # one sampler per run
            others.start()
        ended = time.time()
        others.join()
    journal = load(journal_path(where["state_dir"], "catalog"))
    assert journal["status"] == "complete"
    data, page = report_paths(where["state_dir"], "catalog")
    written = json.loads(data.read_text())
    assert written["run"] == journal["run"]["id"] and written["status"] == "complete"
    assert written["sampler"] == "catalog-1" and written["warnings"] == []
    completed = max(
        e["started"] for e in journal["run"]["events"][str(len(rollout["steps"]) - 1)]["traffic"].values()
    )
    assert ended - completed < 0.5  # the sampler's task returned right after the run ended
    for lb in LBS:
        taken = written["samples"][lb]
        assert len(taken) > 8 and all("error" not in s for s in taken), taken[:3]
        assert written["coverage"][lb]["max_gap"] <= 0.3, written["coverage"][lb]
        assert taken[-1]["t"] + written["started_at"] >= completed  # a read after the end
        assert taken[0]["up"] == HOSTS
        rates = [r for r in written["series"][lb]["requests_per_s"] if r is not None]
        assert 150 <= sorted(rates)[len(rates) // 2] <= 250  # 200 requests/s, as served
    assert [b["hosts"] for b in written["batches"]] == [["catalog-1"], ["catalog-2"]]
    assert all(b["finished"] for b in written["batches"])
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "servers UP lb-dc1" in text
    assert "<script src=" not in text  # self-contained: plotly.js is inlined


def test_an_lb_not_forwarded_is_a_warning_and_the_task_goes_on(
    rollout: dict[str, Any], short_tmp: Path
) -> None:
    where, traffic = rollout["where"], rollout["traffic"]
    paths = forward_paths(traffic)
    with serving(paths["lb-dc1"], CountingHaproxy()), Sampling(where, traffic, "catalog-1", idle_limit=30):
        play_the_steps(where, rollout["steps"], 0.1)
    written = json.loads(report_paths(where["state_dir"], "catalog")[0].read_text())
    assert all("error" not in s for s in written["samples"]["lb-dc1"])
    failed = written["samples"]["lb-dc2"]
    assert failed and all("not forwarded (yet)" in s["error"] for s in failed)
    assert written["coverage"]["lb-dc2"]["failed"] == len(failed)
    assert set(written["series"]["lb-dc2"]["requests_per_s"]) == {None}


def test_a_journal_that_stops_moving_stops_the_sampler(rollout: dict[str, Any], short_tmp: Path) -> None:
    where, traffic = rollout["where"], rollout["traffic"]
    started = time.monotonic()
    with Sampling(where, traffic, "catalog-1", idle_limit=0.5):
        pass  # nobody records anything: the run stays running
    assert time.monotonic() - started < 3
    written = json.loads(report_paths(where["state_dir"], "catalog")[0].read_text())
    assert written["status"] == "running"
    assert "nothing was recorded for 0 s: sampling stopped" in written["warnings"]


def test_a_task_that_fails_stops_sampling_at_once_and_still_writes(
    rollout: dict[str, Any], short_tmp: Path
) -> None:
    where, traffic = rollout["where"], rollout["traffic"]
    started = time.monotonic()
    with (
        pytest.raises(RuntimeError, match="the task's own failure"),
        Sampling(where, traffic, "catalog-1", 30),
    ):
        raise RuntimeError("the task's own failure")
    assert time.monotonic() - started < 3
    written = json.loads(report_paths(where["state_dir"], "catalog")[0].read_text())
    assert "the rollout task stopped before the run ended: sampling stopped" in written["warnings"]


def test_a_sampler_that_cannot_start_never_fails_the_task(rollout: dict[str, Any], short_tmp: Path) -> None:
    where = {**rollout["where"], "service": "not a service name"}
    with Sampling(where, rollout["traffic"], "catalog-1", idle_limit=30) as sampling:
        assert sampling.pid is None
