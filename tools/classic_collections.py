"""The `ansible` community package from PyPI, unpacked once into .cache/classic (not a dependency).

Two places need collections that Berth itself does not depend on: the benchmark's classic rolling
recipe (community.general's haproxy module, bench/rolling.py) and `make lint`, whose ansible-lint
checks the awx.awx module arguments of awx/*.yml. Both use this one copy:

    .venv/bin/python tools/classic_collections.py     # installs it if missing, prints its path

Idempotent: a second run finds the finished install and changes nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ANSIBLE_PACKAGE = "ansible==12.3.0"
CLASSIC = ROOT / ".cache" / "classic"
# pip writes the distribution's RECORD last: its presence means the unpacking finished
RECORD = CLASSIC / f"{ANSIBLE_PACKAGE.replace('==', '-')}.dist-info" / "RECORD"


def ensure_classic_collections() -> Path:
    """The directory holding ``ansible_collections/`` (community.general, awx.awx, ...)."""
    if not RECORD.is_file():
        print(f"installing the collections of {ANSIBLE_PACKAGE} (PyPI) into {CLASSIC} ...", flush=True)
        subprocess.run(
            [
                str(BIN / "pip"),
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-deps",
                "--upgrade",
                "--target",
                str(CLASSIC),
                ANSIBLE_PACKAGE,
            ],
            check=True,
        )
    return CLASSIC


if __name__ == "__main__":
    print(ensure_classic_collections())
