"""The floors of module_utils hold: import-linter (the contracts in pyproject.toml) refuses an
upward or sideways import. Each case copies the real tree, adds one forbidden import, and runs the
same `lint-imports` that `make lint` runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGE = "ansible_collections.berth.fleet.plugins.module_utils"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    return subprocess.run(
        [str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of module_utils at the import path import-linter reads."""
    target = tmp_path / "ansible_collections" / "berth" / "fleet" / "plugins" / "module_utils"
    shutil.copytree(ROOT / "plugins" / "module_utils", target, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_tree_as_it_is_keeps_every_contract(tree: Path) -> None:
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("importer", "imported", "contract"),
    [
        # a helper that reaches up into a driver
        ("common/fs.py", "drivers.haproxy", "layers"),
        # a driver that uses the lab
        ("drivers/libvirt/__init__.py", "local.labnet", "layers"),
        # the model that knows a driver
        ("model/placement.py", "drivers.node.release", "layers"),
        # one driver importing another
        ("drivers/redfish/__init__.py", "drivers.metal", "a driver never imports another driver"),
        # the lab substrate reading the topology model
        ("local/labnet.py", "model.spec", "never on the model or the planner"),
        # one part of the lab using another's internals
        ("local/labvirt.py", "local.nspawn", "stand apart"),
    ],
)
def test_an_upward_or_sideways_import_breaks_the_build(
    tree: Path, importer: str, imported: str, contract: str
) -> None:
    path = tree / "ansible_collections/berth/fleet/plugins/module_utils" / importer
    path.write_text(path.read_text() + f"\nimport {PACKAGE}.{imported}  # injected\n")
    result = lint_imports(tree)
    report = " ".join(result.stdout.split())  # import-linter wraps long contract names
    assert result.returncode != 0, report
    assert "BROKEN" in report and contract in report, report
