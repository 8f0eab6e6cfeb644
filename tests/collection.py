"""The collection as a user gets it: built with ``ansible-galaxy collection build`` from this checkout
and installed with ``ansible-galaxy collection install -p`` into a directory of its own (the tests'
one recipe for it: tests/unit/test_collection_build.py, tests/unit/test_awx_inventory.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def outside_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ANSIBLE_* setting (the tests point ANSIBLE_CONFIG at the
    checkout's ansible.cfg), plus ``extra``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}, **extra}


def build_collection(dest: Path) -> Path:
    """``ansible-galaxy collection build`` of the checkout into ``dest``: the tarball."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(dest), str(ROOT)],
        capture_output=True,
        text=True,
        check=True,
    )
    return next(dest.glob("berth-fleet-*.tar.gz"))


def install_collection(tarball: Path, collections: Path) -> Path:
    """``ansible-galaxy collection install TARBALL -p COLLECTIONS``, run outside the checkout (no
    ansible.cfg of ours): the installed collection's directory."""
    subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "install", str(tarball), "-p", str(collections)],
        cwd=collections.parent,
        env=outside_env(ANSIBLE_COLLECTIONS_PATH=str(collections)),
        capture_output=True,
        text=True,
        check=True,
    )
    installed = collections / "ansible_collections" / "berth" / "fleet"
    assert (installed / "MANIFEST.json").is_file()
    return installed
