#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: artifact_info
short_description: Check that a built service artifact exists and matches its recorded checksum
version_added: 0.3.0
author:
  - Berth maintainers (@berth)
description:
  - Reads O(dir)/<name>-<version>.tar.gz and its C(.sha256) (as written by M(berth.fleet.artifact_build))
    and checks, in constant time, that the tarball's sha256 is the recorded one and that the
    checksum file names this tarball. Changes nothing.
  - Fails with a message naming the file when the artifact or its checksum is missing (build it
    first with C(playbooks/build_artifacts.yml)), unreadable or does not match.
  - Name and version follow Berth's one naming and version rule, the same the topology spec applies.
options:
  name:
    description: Artifact name.
    type: str
    required: true
  version:
    description: Version.
    type: str
    required: true
  dir:
    description: Absolute path of the directory holding the artifacts.
    type: path
    required: true
attributes:
  action:
    support: full
    description:
      - Runs in the controller's process (its action plugin), not as a module run - no local Python
        process on the critical path of a rollout. It always acts on the controller.
  check_mode:
    support: full
    description: It only reads; the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes.
  idempotent:
    support: full
    description: Reading changes nothing.
"""

EXAMPLES = r"""
- name: The artifact to deploy is the one that was built
  berth.fleet.artifact_info:
    name: catalog
    version: v2
    dir: /var/lib/berth/artifacts
  register: artifact
"""

RETURN = r"""
path:
  description: The tarball.
  returned: success
  type: str
sha256:
  description: Its verified sha256.
  returned: success
  type: str
migrations:
  description:
    - The release's migrations, in the order they run (its C(version.json)), each with C(id),
      C(phase) (C(expand) or C(contract)), C(file), C(sha256) and C(sql) (checked against the
      sha256); empty for a version that carries none.
  returned: success
  type: list
  elements: dict
"""

from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.common.failure import ModuleFailure, exit_module
from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.spec import (
    ArtifactError,
    ArtifactSpec,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.verify import (
    read_migrations,
    verify_artifact,
)

# one argument spec for both paths: this module, and its action plugin (run on the controller)
ARGUMENT_SPEC: dict[str, Any] = {
    "name": {"type": "str", "required": True},
    "version": {"type": "str", "required": True},
    "dir": {"type": "path", "required": True},
}
REQUIRED_IF: list[tuple[str, Any, list[str]]] = []


def run(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    spec = ArtifactSpec(params["name"], params["version"], Path(params["dir"]))
    try:
        spec.validate(state="absent")  # name, version and dir; no source needed to read
    except ArtifactError as exc:
        raise ModuleFailure(str(exc)) from None
    if not spec.path.is_file():
        raise ModuleFailure(
            f"missing artifact {spec.path}: build it first (ansible-playbook playbooks/build_artifacts.yml)"
        )
    try:
        sha256 = verify_artifact(spec.path, spec.checksum_path)
    except ArtifactError as exc:
        raise ModuleFailure(f"{exc}: refusing to deploy it") from None
    try:
        migrations = read_migrations(spec.path, spec.stem)
    except ArtifactError as exc:
        raise ModuleFailure(str(exc)) from None
    return {"changed": False, "path": str(spec.path), "sha256": sha256, "migrations": migrations}


def main() -> None:
    exit_module(AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True), run)


if __name__ == "__main__":
    main()
