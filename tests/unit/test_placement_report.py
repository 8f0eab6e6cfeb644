"""The placement table (make demo) through the real playbook and filter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ansible_collections.berth.fleet.plugins.module_utils.model.report import placement_rows, render_table

ROOT = Path(__file__).resolve().parents[2]


def test_render_table_aligns_columns() -> None:
    rows = placement_rows(
        ["b-1", "a-10"],
        {
            "b-1": {"berth_dc": "dc2", "berth_machine": "m", "berth_node": "n", "berth_address": "10.0.0.1"},
            "a-10": {
                "berth_dc": "dc1",
                "berth_machine": "m",
                "berth_node": "n",
                "berth_address": "10.0.0.2",
                "berth_port": 80,
            },
        },
    )
    table = render_table("t", rows).splitlines()
    assert table[0] == "t"
    assert table[3].split() == ["a-10", "dc1", "m", "n", "10.0.0.2", "80"]  # sorted by dc
    assert table[4].split() == ["b-1", "dc2", "m", "n", "10.0.0.1", "-"]
    assert len({len(line) for line in table[1:3]}) == 1


def test_placement_playbook_prints_the_prod_table() -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "inventories/prod",
            "playbooks/placement.yml",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    lines = [line.split() for line in result.stdout.splitlines()]
    assert ["prod:", "8", "instances"] in lines
    assert ["catalog-2", "dc2", "hv-dc2-a", "prod-catalog-2", "10.10.2.32", "8080"] in lines
    assert "changed=0" in result.stdout
