"""Read `ansible-inventory --list` output as plain data (for tools, benchmarks and tests).

ansible-core 2.19 prints strings that came from an inventory plugin as {"__ansible_unsafe": "..."};
the object hook turns them back into plain strings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def plain(value: dict[str, Any]) -> Any:
    """json object_hook: {"__ansible_unsafe": s} -> s."""
    return value["__ansible_unsafe"] if set(value) == {"__ansible_unsafe"} else value


def inventory_list(source: Path | str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`ansible-inventory -i SOURCE --list` from the checkout, as plain data."""
    listing = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(source), "--list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(listing, object_hook=plain))


def hostvars(source: Path | str) -> dict[str, dict[str, Any]]:
    return dict(inventory_list(source)["_meta"]["hostvars"])
