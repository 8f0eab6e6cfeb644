"""Helpers shared by the integration tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class PlaybookRun:
    returncode: int
    output: str
    seconds: float

    @property
    def recap(self) -> dict[str, int]:
        """The localhost line of the PLAY RECAP."""
        return self.recaps["localhost"]

    @property
    def recaps(self) -> dict[str, dict[str, int]]:
        """Every host's PLAY RECAP counters."""
        recap = self.output.rsplit("PLAY RECAP", 1)
        assert len(recap) == 2, f"no PLAY RECAP in:\n{self.output[-3000:]}"
        return {
            host: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counters)}
            for host, counters in re.findall(r"^(\S+)\s+:\s+(.*)$", recap[1], re.MULTILINE)
        }

    @property
    def changed(self) -> int:
        return sum(counters["changed"] for counters in self.recaps.values())


def run_playbook(playbook: Path, inventory: str, *flags: str) -> PlaybookRun:
    """ansible-playbook from the checkout (its ansible.cfg), timed."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    started = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", inventory, str(playbook), *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return PlaybookRun(proc.returncode, proc.stdout + proc.stderr, round(time.monotonic() - started, 2))


def local_play(name: str, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": tasks}
