"""artifact_info: the deploy preflight's check that the artifact is the one that was built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.spec import ArtifactSpec
from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.store import ArtifactBuilder
from tests.modules import run_module

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "services" / "sample"


def artifact_info(**params: Any) -> dict[str, Any]:
    """The module's real main(), given its arguments the way Ansible hands them over."""
    return run_module("artifact_info", params, check=True)


def test_a_built_artifact_is_verified_and_nothing_changes(tmp_path: Path) -> None:
    dest = tmp_path / "artifacts"
    built = ArtifactBuilder(ArtifactSpec("catalog", "v1", dest, SAMPLE)).ensure("present", False)
    result = artifact_info(name="catalog", version="v1", dir=str(dest))
    assert not result.get("failed"), result
    assert (result["changed"], result["sha256"], result["path"]) == (False, built.sha256, built.path)


def test_missing_tampered_and_malformed_are_refused_with_the_file_named(tmp_path: Path) -> None:
    dest = tmp_path / "artifacts"
    ArtifactBuilder(ArtifactSpec("catalog", "v1", dest, SAMPLE)).ensure("present", False)
    missing = artifact_info(name="catalog", version="v9", dir=str(dest))
    assert missing["failed"] and missing["msg"].startswith(
        f"missing artifact {dest}/catalog-v9.tar.gz: build it"
    )
    (dest / "catalog-v1.tar.gz").write_bytes(b"not the artifact that was built")
    tampered = artifact_info(name="catalog", version="v1", dir=str(dest))
    assert tampered["failed"] and "does not match" in tampered["msg"], tampered
    assert tampered["msg"].endswith("refusing to deploy it")
    bad_version = artifact_info(name="catalog", version="../v1", dir=str(dest))
    assert bad_version["failed"] and "version: '../v1' is not a version such as v2" in bad_version["msg"]
