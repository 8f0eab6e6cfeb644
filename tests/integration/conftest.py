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

# the lab of the shipped shape that test_rollout, test_rollout_blue_green, test_rollout_canary and
# test_rollout_jobs share
# (they sort next to each other, so no other lab boots while it lives; one provision and
# first deploy, ~2.5 min, instead of two): torn down right after the last test that uses it
SHARED_LAB = "shared_lab"
SHARED_LAB_STACK = pytest.StashKey[contextlib.ExitStack]()


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


@pytest.fixture(scope="session")
def lab_metrics(request: pytest.FixtureRequest) -> LabMetrics:
    """Measurements worth reading (timings, memory): printed in the terminal summary, never asserted."""
    return request.config.stash.setdefault(LAB_METRICS, LabMetrics())


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
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
