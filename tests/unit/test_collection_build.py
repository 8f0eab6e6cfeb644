"""The collection also works when built and installed with ansible-galaxy (not only from this checkout)."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

from tests.collection import BIN, ROOT, build_collection, install_collection, outside_env


def test_built_and_installed_collection_serves_inventory_and_docs(tmp_path: Path) -> None:
    tarball = build_collection(tmp_path)
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    assert "plugins/inventory/topology.py" in names and "roles/local_estate/tasks/main.yml" in names
    assert not [
        n for n in names if n.startswith((".venv", "ansible_collections/", "build/", "berth_fleet.egg"))
    ]

    collections = tmp_path / "collections"
    # from here on: outside the checkout, no ansible.cfg of ours, only the installed collection
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = outside_env(
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_INVENTORY_ENABLED="berth.fleet.topology",
        ANSIBLE_INVENTORY_UNPARSED_FAILED="true",
    )
    install_collection(tarball, collections)
    graph = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(ROOT / "inventories" / "prod"), "--graph"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert graph.returncode == 0, graph.stderr
    assert "|--@svc_catalog:" in graph.stdout and "|  |--catalog-4" in graph.stdout
    for plugin_type, name in (("module", "berth.fleet.nspawn_host"), ("inventory", "berth.fleet.topology")):
        doc = subprocess.run(
            [str(BIN / "ansible-doc"), "-t", plugin_type, name],
            cwd=outside,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert str(collections) in doc.stdout  # documented from the installed copy
