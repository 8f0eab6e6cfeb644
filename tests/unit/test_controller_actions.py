"""The controller-only modules (rollout_plan, rollout_journal, artifact_info) run in the
controller's process through their action plugins: same argument spec, same results as a module
run, the same clear refusal of bad arguments - and no module process (no ``invocation`` echo)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.modules import ROOT, run_module

PLAN = {
    "service": "catalog",
    "target": "v2",
    "max_unavailable": 1,
    "members": [
        {"name": "catalog-1", "dc": "dc1", "ordinal": 1, "version": "v1", "up": True},
        {"name": "catalog-2", "dc": "dc2", "ordinal": 2, "version": "v1", "up": True},
    ],
}


def adhoc(module: str, args: dict[str, Any], *extra: str) -> dict[str, Any]:
    """One task of ``berth.fleet.<module>`` on localhost through the checkout's ansible.cfg: its
    registered result."""
    with tempfile.TemporaryDirectory() as work:
        result = Path(work) / "result.json"
        play = [
            {
                "hosts": "localhost",
                "gather_facts": False,
                "tasks": [
                    {f"berth.fleet.{module}": args, "register": "outcome", "ignore_errors": True},
                    {
                        "ansible.builtin.copy": {"content": "{{ outcome | to_json }}", "dest": str(result)},
                        "check_mode": False,
                        "diff": False,
                    },
                ],
            }
        ]
        (Path(work) / "play.yml").write_text(json.dumps(play))
        proc = subprocess.run(
            ["ansible-playbook", str(Path(work) / "play.yml"), *extra],
            cwd=ROOT,
            env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")),
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.is_file(), proc.stdout[-3000:] + proc.stderr[-2000:]
        return dict(json.loads(result.read_text()))


def test_the_plan_is_the_same_in_process_as_from_a_module_run() -> None:
    in_process = adhoc("rollout_plan", PLAN)
    as_module = run_module("rollout_plan", PLAN)
    assert "invocation" not in in_process and "invocation" in as_module  # no module process ran
    for key in ("batches", "steps", "serial", "dc_budget", "hosts"):
        assert in_process[key] == as_module[key]


def test_bad_arguments_are_refused_in_process_as_a_module_would() -> None:
    refused = adhoc("rollout_plan", {**PLAN, "max_unavailable": "one"})
    assert refused["failed"] and "max_unavailable" in refused["msg"] and "int" in refused["msg"]
    missing = adhoc("rollout_journal", {"service": "catalog", "action": "start"})
    assert missing["failed"] and "state_dir" in missing["msg"]


def test_a_module_failure_carries_its_message_in_process(tmp_path: Path) -> None:
    result = adhoc("artifact_info", {"name": "catalog", "version": "v9", "dir": str(tmp_path)})
    assert result["failed"] and result["msg"].startswith(f"missing artifact {tmp_path}/catalog-v9.tar.gz")


def test_the_journal_in_check_mode_shows_its_diff_and_writes_nothing(tmp_path: Path) -> None:
    args = {
        "state_dir": str(tmp_path),
        "service": "catalog",
        "action": "start",
        "target": "v2",
        "versions": {"catalog-1": "v1"},
        "batches": [["catalog-1"]],
    }
    dry = adhoc("rollout_journal", args, "--check", "--diff")
    assert dry["changed"] and '"target": "v2"' in dry["diff"]["after"]
    assert not any(tmp_path.iterdir())
    wet = adhoc("rollout_journal", args)
    assert (
        wet["changed"] and json.loads((tmp_path / "rollouts" / "catalog.json").read_text())["target"] == "v2"
    )
    assert not adhoc("rollout_journal", args)["changed"]


def test_a_traffic_step_with_bad_input_touches_no_load_balancer(tmp_path: Path) -> None:
    unreachable = {"name": "lb-dc9", "address": "127.0.0.1", "port": 9, "args": ["-o", "ConnectTimeout=1"]}
    journal = {"state_dir": str(tmp_path), "service": "catalog", "step": 0}
    refused = adhoc(
        "lb_traffic",
        {
            "lbs": [unreachable],
            "backend": "be_catalog",
            "ready": ["catalog-1"],
            "drain": ["catalog-1"],
            "journal": journal,
        },
    )
    assert refused["failed"] and "cannot be both in ready and in drain: catalog-1" in refused["msg"]
    assert not any(tmp_path.iterdir())  # not even the journal was read or written
    # a load balancer that cannot be reached fails the step, naming it and why
    lost = adhoc("lb_traffic", {"lbs": [unreachable], "backend": "be_catalog", "drain": ["catalog-1"]})
    assert lost["failed"] and lost["msg"].startswith(
        "lb-dc9: cannot forward /run/haproxy/admin.sock over ssh"
    )
    assert lost["lbs"]["lb-dc9"]["unreachable"] is True
