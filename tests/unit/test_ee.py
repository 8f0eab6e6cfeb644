"""The execution environment's definition: `ansible-builder create` makes a valid build context from
it, and what the image will get (Python requirements, system packages, the collection) is what
pyproject.toml and bindep.txt say. The real build and a run inside it: tests/integration/test_execution_environment.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tools import ee

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CONTEXT_FILES = {"Containerfile", "_build/requirements.yml", "_build/collections/berth-fleet.tar.gz"}


def test_requirements_txt_is_pyprojects_dependencies() -> None:
    dependencies = ee.project_dependencies()
    assert "libvirt-python>=9.0,<13" in dependencies  # the one that needs bindep's headers
    assert (ROOT / "requirements.txt").read_text() == ee.requirements_text(dependencies), (
        "requirements.txt drifted from pyproject.toml: run .venv/bin/python tools/ee.py requirements"
    )
    lines = [
        line for line in (ROOT / "requirements.txt").read_text().splitlines() if not line.startswith("#")
    ]
    assert lines == dependencies


def test_a_new_dependency_makes_the_requirements_stale(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    text = (
        (ROOT / "pyproject.toml")
        .read_text()
        .replace('"pycdlib>=1.14,<2",', '"pycdlib>=1.14,<2",\n  "rich>=13",')
    )
    pyproject.write_text(text)
    changed = ee.requirements_text(ee.project_dependencies(pyproject))
    assert changed != (ROOT / "requirements.txt").read_text()
    assert changed.endswith("pycdlib>=1.14,<2\nrich>=13\n")


def test_the_images_ansible_core_and_runner_are_pyprojects() -> None:
    wanted = {Requirement(line).name: line for line in ee.project_dependencies()}
    dependencies = ee.ee_definition()["dependencies"]
    assert dependencies["ansible_core"]["package_pip"] == wanted["ansible-core"]
    assert dependencies["ansible_runner"]["package_pip"] == wanted["ansible-runner"]


def test_the_collection_declares_its_requirements_for_introspection() -> None:
    meta = yaml.safe_load((ROOT / "meta" / "execution-environment.yml").read_text())
    assert meta["dependencies"] == {"python": "requirements.txt", "system": "bindep.txt"}


def test_bindep_names_real_debian_packages_for_libvirt_python() -> None:
    """bindep lists what this Debian controller must have (the Makefile installs them): a misspelt
    or missing package name fails here, not half-way through an image build."""
    listed = {}
    # as the build asks: `bindep -b compile` in the builder stage, `bindep -l newline` for the final one
    for profile in ("compile", None):
        result = subprocess.run(
            [
                str(BIN / "bindep"),
                "--file",
                str(ROOT / "bindep.txt"),
                "--list_all",
                "newline",
                *([profile] if profile else []),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        listed[profile or "run"] = set(result.stdout.split())
    assert {"libvirt-dev", "pkg-config", "gcc", "python3-dev"} <= listed["compile"]
    # what the final image keeps: the library libvirt-python links and the ssh client, no compiler
    assert listed["run"] == {"libvirt0", "openssh-client"}
    missing = subprocess.run(
        [str(BIN / "bindep"), "--file", str(ROOT / "bindep.txt"), "--brief", "compile"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (missing.returncode, missing.stdout.strip()) == (0, ""), f"not installed here: {missing.stdout}"


def member(archive: tarfile.TarFile, name: str) -> str:
    handle = archive.extractfile(name)
    assert handle is not None, f"{name} is not a file in the tarball"
    return handle.read().decode()


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ee.create_context(tmp_path_factory.mktemp("ee") / "context")


def test_ansible_builder_create_makes_a_build_context(context: Path) -> None:
    files = {str(path.relative_to(context)) for path in context.rglob("*") if path.is_file()}
    assert files >= CONTEXT_FILES
    assert {
        f"_build/scripts/{script}" for script in ("assemble", "introspect.py", "install-from-bindep")
    } <= files
    containerfile = (context / "Containerfile").read_text()
    assert f'ARG EE_BASE_IMAGE="{ee.base_image_name(ee.ee_definition())}"' in containerfile
    assert 'ARG PKGMGR="/usr/bin/apt-get"' in containerfile
    refs = " ".join(
        line for line in ee.project_dependencies() if line.startswith(("ansible-core", "ansible-runner"))
    )
    assert f'ARG ANSIBLE_INSTALL_REFS="{refs}"' in containerfile
    # the four stages, and the collection reaches the final image
    for stage in ("AS base", "AS galaxy", "AS builder", "AS final"):
        assert f"FROM {'$EE_BASE_IMAGE' if stage == 'AS base' else 'base'} {stage}" in containerfile
    assert "RUN /output/scripts/assemble" in containerfile
    assert containerfile.count("COPY --from=galaxy /usr/share/ansible /usr/share/ansible") == 2
    galaxy = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    assert galaxy == {"collections": [{"name": "collections/berth-fleet.tar.gz", "type": "file"}]}


def test_the_context_holds_this_checkouts_collection_with_its_requirements(context: Path) -> None:
    with tarfile.open(context / "_build" / "collections" / "berth-fleet.tar.gz") as archive:
        names = set(archive.getnames())
        read = {name: member(archive, name) for name in ("requirements.txt", "bindep.txt")}
        manifest = yaml.safe_load(member(archive, "MANIFEST.json"))
    assert {
        "plugins/inventory/topology.py",
        "plugins/modules/libvirt_vm.py",
        "meta/execution-environment.yml",
    } <= names
    assert not [name for name in names if name.startswith((".venv", "build/", "ansible_collections/"))]
    assert read["requirements.txt"] == ee.requirements_text(ee.project_dependencies())
    assert read["bindep.txt"] == (ROOT / "bindep.txt").read_text()
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    assert (manifest["collection_info"]["namespace"], manifest["collection_info"]["version"]) == (
        "berth",
        galaxy["version"],
    )


def test_the_contexts_introspect_finds_pyprojects_requirements(context: Path, tmp_path: Path) -> None:
    """What the build's builder stage computes, computed here with the context's own script on the
    collection installed from the context's tarball (as its galaxy stage installs it)."""
    collections = tmp_path / "collections"
    # away from the checkout's ansible.cfg, whose collections_path already has berth.fleet (this checkout)
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    subprocess.run(
        [
            str(BIN / "ansible-galaxy"),
            "collection",
            "install",
            "--offline",
            "-p",
            str(collections),
            str(context / "_build" / "collections" / "berth-fleet.tar.gz"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert (collections / "ansible_collections" / "berth" / "fleet" / "MANIFEST.json").is_file()
    pip, system = tmp_path / "requirements.txt", tmp_path / "bindep.txt"
    subprocess.run(
        [
            sys.executable,
            str(context / "_build" / "scripts" / "introspect.py"),
            "introspect",
            str(collections),
            f"--write-pip={pip}",
            f"--write-bindep={system}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = [line.split("  # from collection ")[0] for line in pip.read_text().splitlines() if line]
    # introspect drops what every image has already (ansible-core, PyYAML); the rest is pyproject's
    expected = [
        line for line in ee.project_dependencies() if Requirement(line).name not in ("ansible-core", "PyYAML")
    ]
    assert found == expected
    assert all(
        line.endswith("  # from collection berth.fleet") for line in pip.read_text().splitlines() if line
    )
    bindep = [
        line for line in (ROOT / "bindep.txt").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert [
        line.split("  # from collection ")[0] for line in system.read_text().splitlines() if line
    ] == bindep


def test_berths_podman_configuration(tmp_path: Path) -> None:
    present = tmp_path / "ca.crt"
    present.write_text("-----BEGIN CERTIFICATE-----\n")
    engine = ee.Engine(
        config_dir=tmp_path / "conf",
        storage=tmp_path / "storage",
        run_dir=tmp_path / "run",
        host_settings=(present, tmp_path / "absent.conf"),
    )
    engine.write()
    conf = tomllib.loads(engine.containers_conf.read_text())
    assert conf["engine"]["runtime"] == "runc"
    assert conf["engine"]["tmp_dir"] == str(tmp_path / "run" / "libpod")
    assert conf["containers"]["default_ulimits"] == ["nofile=1024:1024", "nproc=1024:1024"]
    assert conf["containers"]["netns"] == "host"
    assert conf["containers"]["volumes"] == [f"{present}:{present}:ro"]  # only host files that exist
    storage = tomllib.loads(engine.storage_conf.read_text())["storage"]
    assert storage == {
        "driver": "overlay",
        "graphroot": str(tmp_path / "storage"),
        "runroot": str(tmp_path / "run" / "storage"),
    }
    env = engine.env()
    assert (env["CONTAINERS_CONF"], env["CONTAINERS_STORAGE_CONF"]) == (
        str(engine.containers_conf),
        str(engine.storage_conf),
    )
    # the machine's configuration is never the one written
    assert (
        not str(engine.containers_conf).startswith("/etc/")
        and ee.Engine().config_dir == ROOT / "build" / "ee"
    )


def test_the_base_image_is_the_lab_rootfs() -> None:
    spec = ee.lab_image_spec()
    defaults = yaml.safe_load((ROOT / "roles" / "local_estate" / "defaults" / "main.yml").read_text())
    assert spec.name == defaults["local_estate_image_name"]
    assert spec.images_dir == Path(defaults["local_estate_images_dir"])
    assert spec.extra_packages == ()  # the very image the lab's machines run, not a variant
