"""molecule/default as one test of the libvirt lane: the service_instance role on two local libvirt
VMs (TCG) that Berth's own provision and destroy playbooks make and remove; molecule's whole sequence
(create, prepare, converge, idempotence, verify with testinfra, destroy). It runs here rather than
after pytest so that it shares the lane of the other libvirt labs (one libvirtd at a time) while the
other lane works (conftest.LANES); `make molecule` runs it alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.lab import BIN, ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="molecule's VMs need root (libvirtd, namespaces)"),
    pytest.mark.skipif(shutil.which("libvirtd") is None, reason="libvirt-daemon-system is not installed"),
]


def test_molecule_default_converges_idempotently_and_verifies(lab_metrics: Any) -> None:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", ANSIBLE_NOCOLOR="1", NO_COLOR="1")
    started = time.monotonic()
    run = subprocess.run(
        [str(BIN / "molecule"), "test"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    seconds = round(time.monotonic() - started, 1)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-8000:]
    keep = os.environ.get("BERTH_TEST_PLAYBOOK_LOGS")
    if keep:
        (Path(keep) / "molecule-test.log").write_text(output)
    for action in ("create", "converge", "idempotence", "verify", "destroy"):  # each one ran
        assert f"[default > {action}] Executed: Successful" in output, (action, output[-4000:])
    lab_metrics.add(
        f"molecule test (create, converge, idempotence, verify, destroy on 2 TCG VMs): {seconds} s"
    )
