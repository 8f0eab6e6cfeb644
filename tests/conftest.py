"""Shared pytest setup: the checkout on sys.path, so that the collection imports as
``ansible_collections.berth.fleet`` and the tests' own helpers as ``tests.*`` and ``tools.*`` (the
one import style of the test suite: ``from tests.integration.lab import ...``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS_ROOT = ROOT  # holds ansible_collections/berth/fleet -> ROOT (made by the Makefile)

link = ROOT / "ansible_collections" / "berth" / "fleet"
if not link.exists():
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path("..") / "..")
if str(COLLECTIONS_ROOT) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS_ROOT))
os.environ.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))
