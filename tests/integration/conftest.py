"""Fixtures for tests against the real local substrate: playbook runner, SSH into the lab, host snapshots.

Everything a test creates is named with a per-run suffix (``lab_run_id``) so that a crashed run never
collides with the next one.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.lab import PlaybookRun, local_play, run_playbook

# the lab of the shipped shape that the rollout modules share (one provision and first deploy,
# ~1.5 min, instead of one per module): torn down right after the last test that uses it
SHARED_LAB = "shared_lab"
SHARED_LAB_STACK = pytest.StashKey[contextlib.ExitStack]()

# `make test` runs these tests in two lanes at once (pytest-xdist, -n 2 with LaneScheduling below):
# the modules of a lane run one after the other on one worker, in this order; every other module is
# a unit of its own, taken by whichever worker is free, after the lanes. Most of a lab test's time is
# waiting (boots, drains, load windows), so two lanes share 2 cores well.
LANES: dict[str, tuple[str, ...]] = {
    # the shared nspawn lab (16 machines) and every module that rolls services on it
    "shared-lab": (
        "test_rollout.py",
        "test_rollout_blue_green.py",
        "test_rollout_canary.py",
        "test_rollout_jobs.py",
        "test_rollout_parallel.py",
        # last: it kills a database primary's machine (and brings it back)
        "test_databases.py",
    ),
    # each of these labs starts the host's one libvirtd (and checks that none ran before): never two at once
    "libvirt": ("test_vm_substrate.py", "test_metal_substrate.py", "test_molecule.py"),
}
LANE_OF = {module: lane for lane, modules in LANES.items() for module in modules}
# the units after the lanes, longest first (the rest in collection order), so that the worker whose
# lane ends first takes the long ones
AFTER_LANES = ("test_local_substrate.py", "test_execution_environment.py", "test_shape_ci.py")


def _module(item: pytest.Item) -> str:
    return item.path.name


def _rank(module: str) -> tuple[int, int]:
    lanes = list(LANES)
    if module in LANE_OF:
        return (0, lanes.index(LANE_OF[module]) * 100 + LANES[LANE_OF[module]].index(module))
    return (1, AFTER_LANES.index(module) if module in AFTER_LANES else len(AFTER_LANES))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The lanes first, their modules in LANES' order (the order in which the workers run them)."""
    items.sort(key=lambda item: _rank(_module(item)))  # stable: a module's tests keep their order


def _lane(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return LANE_OF.get(Path(module).name, module)


try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # pytest-xdist is a test dependency; without it the tests run in one lane
    LoadScopeScheduling = None


if LoadScopeScheduling is not None:

    class LaneScheduling(LoadScopeScheduling):  # type: ignore[misc,valid-type]
        """xdist's scheduling by scope, a scope being a lane (or a module outside the lanes): each
        worker takes a whole lane or module at a time, in collection order. (xdist's own
        ``--dist loadgroup`` marks group by a suffix of the node id, which pytest 9 no longer lets
        it set.)"""

        def _split_scope(self, nodeid: str) -> str:
            return _lane(nodeid)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
        return LaneScheduling(config, log)


WORKER_METRICS = "berth_lab_metrics"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On an xdist worker: hand the measurements to the controller, which prints them."""
    workeroutput = getattr(session.config, "workeroutput", None)
    metrics = session.config.stash.get(LAB_METRICS, None)
    if workeroutput is not None and metrics is not None:
        workeroutput[WORKER_METRICS] = metrics.lines


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """On the xdist controller: a worker's measurements, gathered for the terminal summary."""
    lines = getattr(node, "workeroutput", {}).get(WORKER_METRICS, [])
    node.config.stash.setdefault(LAB_METRICS, LabMetrics()).lines.extend(lines)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """When each module ran and on which worker (its tests' setup, call and teardown), for the summary."""
    if report.start and report.stop:
        module = report.nodeid.split("::", 1)[0]
        worker = getattr(getattr(report, "node", None), "gateway", None)
        key = f"{module} [{worker.id}]" if worker is not None else module
        times = _module_times.setdefault(key, [report.start, report.stop])
        times[0], times[1] = min(times[0], report.start), max(times[1], report.stop)


_module_times: dict[str, list[float]] = {}


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM (CI timeout, `kill`) unwinds like Ctrl-C, so every fixture finalizer tears its lab down."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


@dataclass
class LabMetrics:
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture(scope="session")
def lab_run_id() -> str:
    return secrets.token_hex(3)


LAB_METRICS = pytest.StashKey[LabMetrics]()


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


@pytest.fixture(scope="session")
def lab_metrics(request: pytest.FixtureRequest) -> LabMetrics:
    """Measurements worth reading (timings, memory): printed in the terminal summary, never asserted."""
    return request.config.stash.setdefault(LAB_METRICS, LabMetrics())


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if _module_times:
        terminalreporter.write_sep(
            "-", "when each module ran (from the first test's setup to the last teardown)"
        )
        first = min(start for start, _stop in _module_times.values())
        for key, (start, stop) in sorted(_module_times.items(), key=lambda item: item[1][0]):
            terminalreporter.write_line(
                f"{key}: {_clock(start - first)} -> {_clock(stop - first)} ({_clock(stop - start)})"
            )
    metrics = config.stash.get(LAB_METRICS, None)
    if metrics is not None and metrics.lines:
        terminalreporter.write_sep("-", "local substrate measurements")
        for line in metrics.lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def lab_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("substrate")


@pytest.fixture(scope="session")
def lab_playbook(lab_workdir: Path) -> Callable[..., PlaybookRun]:
    """Run a generated playbook (a list of plays) with ansible-playbook from the checkout."""

    counter = iter(range(1000))

    def run(plays: list[dict[str, Any]], extra_vars: dict[str, Any], *flags: str) -> PlaybookRun:
        index = next(counter)
        playbook = lab_workdir / f"play-{index}.yml"
        playbook.write_text(yaml.safe_dump(plays, sort_keys=False))
        variables = lab_workdir / f"vars-{index}.json"
        variables.write_text(json.dumps(extra_vars))
        return run_playbook(playbook, "localhost,", "-e", f"@{variables}", *flags)

    return run


@pytest.fixture(scope="session")
def lab_key(lab_workdir: Path) -> Path:
    key = lab_workdir / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "berth-test", "-f", str(key)], check=True
    )
    return key


@pytest.fixture(scope="session")
def lab_image(
    lab_playbook: Callable[..., PlaybookRun], lab_workdir: Path, lab_metrics: LabMetrics
) -> dict[str, Any]:
    """The base image, built once per machine (cold ~1 min) and reused from the cache afterwards."""
    result_file = lab_workdir / "image.json"
    run = lab_playbook(
        [
            local_play(
                "base image",
                [
                    {
                        "name": "image",
                        "berth.fleet.base_image": {"name": "bookworm-lab"},
                        "register": "image",
                    },
                    {
                        "name": "save",
                        "ansible.builtin.copy": {
                            "content": "{{ image | to_json }}",
                            "dest": str(result_file),
                        },
                        "changed_when": False,
                    },
                ],
            )
        ],
        {},
    )
    assert run.returncode == 0, run.output[-4000:]
    image: dict[str, Any] = json.loads(result_file.read_text())
    how = f"built in {image['build_seconds']} s (cold)" if image["built"] else "cached"
    lab_metrics.add(f"base image {image['image_id']}: {how}; playbook wall time {run.seconds} s")
    return image


@pytest.fixture(scope="session")
def shared_lab(
    request: pytest.FixtureRequest,
    lab_run_id: str,
    lab_image: dict[str, Any],
    lab_workdir: Path,
    lab_metrics: LabMetrics,
) -> Any:
    """The lab shape (``inventories/lab``: 2 DCs, their LBs and execution nodes) with catalog v1
    deployed, shared by the modules that roll catalog on it; they leave it with every catalog
    instance on one version and UP, and each test says what it expects to find."""
    from tests.integration.test_rollout import provisioned_lab

    stack = contextlib.ExitStack()
    request.config.stash[SHARED_LAB_STACK] = stack
    request.addfinalizer(stack.close)  # at the latest at the end of the session, even on failure
    return stack.enter_context(provisioned_lab("lab", f"r{lab_run_id}", lab_workdir, lab_metrics))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """After the last test that uses the shared lab: destroy it now (its 16 machines would hold the
    host's inotify instances while the next modules boot labs of their own)."""
    yield
    stack = item.config.stash.get(SHARED_LAB_STACK, None)
    if stack is None or SHARED_LAB not in getattr(item, "fixturenames", ()):
        return
    items = item.session.items
    later = items[items.index(item) + 1 :]
    if not any(SHARED_LAB in getattr(other, "fixturenames", ()) for other in later):
        stack.close()
