"""The timeline callback (plugins/callback/timeline.py) says where a run's time went: each play
with its wall time, and the tasks at or above the threshold with theirs, once per run of a task."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.modules import ROOT


def run_play(
    tmp_path: Path, name: str, hosts: str, tasks: list[dict[str, Any]], *args: str, **env: str
) -> str:
    """One play through ansible-playbook with the checkout's ansible.cfg (the callback on); its output."""
    play = [{"name": name, "hosts": hosts, "gather_facts": False, "tasks": tasks}]
    (tmp_path / "play.yml").write_text(json.dumps(play))
    proc = subprocess.run(
        ["ansible-playbook", *args, str(tmp_path / "play.yml")],
        cwd=ROOT,
        env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), **env),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_the_timeline_lists_plays_and_slow_tasks(tmp_path: Path) -> None:
    out = run_play(
        tmp_path,
        "Timeline | a play",
        "localhost",
        [
            {"name": "Timeline | quick", "ansible.builtin.debug": {"msg": "hi"}},
            {"name": "Timeline | slow", "ansible.builtin.command": "sleep 0.7", "changed_when": False},
            {
                "name": "Timeline | slow in a loop",
                "ansible.builtin.command": "sleep 0.6",
                "loop": [1, 2],
                "changed_when": False,
            },
        ],
        BERTH_TIMELINE_MIN_SECONDS="0.5",
    )
    timeline = out[out.index("BERTH TIMELINE") :]
    assert re.search(r"^BERTH TIMELINE: \d+\.\d s in all \(tasks of 0\.5 s or more listed\)", timeline)
    assert re.search(r"\+\s+0\.0 s\s+\d+\.\d s  play: Timeline \| a play", timeline)
    slow = re.search(r"\+\s+\d+\.\d s\s+(\d+\.\d) s    Timeline \| slow \[1 host\]", timeline)
    looped = re.search(r"\+\s+\d+\.\d s\s+(\d+\.\d) s    Timeline \| slow in a loop \[1 host\]", timeline)
    assert slow and float(slow.group(1)) >= 0.7
    assert looped and float(looped.group(1)) >= 1.2  # the task's wall time covers its loop
    assert "Timeline | quick" not in timeline  # under the threshold: counted, not listed


def test_a_long_task_says_whom_it_still_waits_for_and_how_long_it_took(tmp_path: Path) -> None:
    tasks = [
        {
            "name": "Timeline | Wait for the slow one",
            "ansible.builtin.command": "sleep {{ 2.6 if inventory_hostname == 'slow' else 0.1 }}",
            "changed_when": False,
        },
        {"name": "Timeline | quick", "ansible.builtin.debug": {"msg": "hi"}},
    ]
    out = run_play(
        tmp_path,
        "Timeline | waits",
        "all",
        tasks,
        "-i",
        "slow,quick,",
        "-c",
        "local",
        BERTH_TIMELINE_WAITING_EVERY="1",
    )
    waits = re.findall(r"^\.\.\. waiting (\d+) s: Timeline \| Wait for the slow one(.*)$", out, re.M)
    assert [int(wait[0]) for wait in waits][:2] == [1, 2], out  # one line a second while it runs
    assert waits[-1][1] == " - 1 of 2 hosts answered, still slow", out
    took = re.search(r"^\.\.\. took (\d+\.\d) s: Timeline \| Wait for the slow one, 2 hosts$", out, re.M)
    assert took and float(took.group(1)) >= 2.6, out
    assert out.index("... took") < out.index("TASK [Timeline | quick]")  # said as it ended
    assert "waiting" not in out[out.index("TASK [Timeline | quick]") :]  # a quick task says nothing
