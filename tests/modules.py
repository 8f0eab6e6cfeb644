"""Run one of the collection's modules the way Ansible does: its real main(), its arguments in a
file, its JSON result on stdout (no AnsiballZ, no connection: the tests' one module runner)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_module(
    name: str, params: dict[str, Any], check: bool = False, diff: bool = False, path_first: Path | None = None
) -> dict[str, Any]:
    """``plugins/modules/<name>.py`` with ``params``; ``path_first`` goes before PATH (stub commands)."""
    arguments = {**params, "_ansible_check_mode": check, "_ansible_diff": diff}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if path_first is not None:
        env["PATH"] = f"{path_first}{os.pathsep}{os.environ['PATH']}"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": arguments}, handle)
    try:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "plugins" / "modules" / f"{name}.py"), handle.name],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        os.unlink(handle.name)
    assert proc.stdout.strip(), proc.stderr
    return dict(json.loads(proc.stdout))
