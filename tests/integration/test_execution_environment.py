"""Berth's execution environment, built and used for real (tools/ee.py): podman from Debian, the
lab's base rootfs imported as the base image, `ansible-builder build`, and a playbook run inside the
image by `ansible-runner run --process-isolation`. About 100 s from nothing (build ~90 s).

Everything podman makes here lives in a storage of the test's own (its own containers.conf and
storage.conf), removed at the end even when the test fails; the machine's podman storage is
never touched.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
import yaml

from ansible_collections.berth.fleet.plugins.module_utils.local.image import mounts_below
from tools import ee

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def machine_images() -> list[str]:
    """The machine's own podman images (its configuration and storage, not Berth's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERS_")}
    listed = subprocess.run(
        ["podman", "images", "--all", "--quiet", "--no-trunc"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return sorted(listed.stdout.split())


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[ee.Engine]:
    # a short run dir: under pytest's tmp_path (80 characters) every container start took 20 s
    run_dir = Path(tempfile.mkdtemp(prefix="berth-ee-"))
    engine = ee.Engine(config_dir=tmp_path / "conf", storage=tmp_path / "storage", run_dir=run_dir)
    try:
        yield engine
    finally:
        engine.remove_all()
        assert not engine.storage.exists() and not engine.run_dir.exists()
        mountinfo = Path("/proc/self/mountinfo").read_text()
        assert mounts_below(mountinfo, tmp_path) == [] and mounts_below(mountinfo, run_dir) == []


def test_the_execution_environment_builds_and_runs_a_playbook(engine: ee.Engine, lab_metrics: Any) -> None:
    ee.ensure_podman(engine)  # the machine's images are listed with the machine's podman
    before = machine_images()

    result = ee.all_steps(engine)

    timings = result["timings"]
    lab_metrics.add(
        "execution environment: "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
        + f"; image {result['image']['size_mb']} MB"
    )
    # the base image is the lab's rootfs, imported into this storage
    rootfs = result["rootfs"]
    base = ee.base_image_name(ee.ee_definition())
    assert result["imported"] is True
    assert ee.image_labels(ee.image_facts(engine, base)).get(ee.BASE_LABEL) == rootfs.image_id
    assert ee.import_base(engine, rootfs, base) is False  # the same rootfs again: kept, not re-imported

    tag = ee.ee_tag()
    assert result["image"]["labels"].get("ansible-execution-environment") == "true"
    assert ee.image_facts(engine, tag) is not None

    ran = result["run"]
    assert (ran["status"], ran["rc"]) == ("successful", "0")
    command = ran["command"]
    assert command[:3] == ["podman", "run", "--rm"] and tag in command and "--user=0" in command
    report = ran["report"]
    # the collection came from the image, in the version this checkout builds
    galaxy_version = yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]
    assert report["collection"] == {
        "/usr/share/ansible/collections/ansible_collections": {"berth.fleet": {"version": galaxy_version}}
    }
    # libvirt-python was built in the image against Debian's libvirt, the one this controller has
    assert report["python"]["libvirt"] == libvirt.getVersion()
    assert report["python"]["libvirt_module"].startswith("/usr/local/lib/python3.11/dist-packages/")
    assert report["ssh"].startswith("OpenSSH_")
    assert "catalog-4" in report["placement"]
    assert ran["module_changed"] is True  # berth.fleet.libvirt_network ran in the image

    assert engine.images()  # all of it in the test's storage ...
    assert machine_images() == before  # ... and nothing in the machine's
