#!/usr/bin/python
# Copyright: Berth maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: artifact_build
short_description: Build a versioned, checksummed, reproducible service artifact
version_added: "0.1.0"
description:
  - Packs a service's source directory into O(dest)/<name>-<version>.tar.gz, with the files under a
    top directory C(<name>-<version>/) and a generated C(version.json) (artifact name, version and
    O(build_flags)) next to them, and writes O(dest)/<name>-<version>.tar.gz.sha256 in C(sha256sum)
    format.
  - The tarball is reproducible (sorted entries; owner root, mode 0644 or 0755, time 0; a gzip header
    without name or time), so building the same inputs again changes nothing.
  - A version is immutable once built. When an artifact of this name and version exists with
    different content, the module fails unless O(force=true).
  - Files are written to a temporary file and renamed into place, the C(.sha256) last.
  - Hidden entries, C(__pycache__), C(*.pyc) and the source's C(versions.yml) (release definitions)
    are not packed; symlinks and special files are refused.
  - Runs where the source is, normally the controller (a play on C(localhost), or C(delegate_to) it).
options:
  name:
    description: Artifact name (lowercase letters, digits and C(-), starting with a letter, at most 32).
    type: str
    required: true
  version:
    description:
      - Version, C(v<N>) (V(v1)) or a dotted number (V(1.2.3)), optionally with a suffix (V(1.2.3-rc.1)).
    type: str
    required: true
  source:
    description: Absolute path of the service's source directory. Required with O(state=present).
    type: path
  dest:
    description: Absolute path of the directory holding artifacts; created if missing.
    type: path
    required: true
  build_flags:
    description:
      - Flags baked into the artifact's C(version.json) as C(build_flags). Keys are lowercase identifiers,
        values strings, numbers, booleans or null. The service decides what they mean.
    type: dict
    default: {}
  migrations:
    description:
      - The release's schema changes, in the order they run - file names in O(source)/migrations/,
        each C(<nnn>_<what>.expand.sql) or C(<nnn>_<what>.contract.sql). Only these are packed
        (under C(migrations/)), and C(version.json) lists each one's id, phase, file and sha256.
        A version that lists none packs none, and its C(version.json) has no C(migrations).
    type: list
    elements: str
    default: []
  state:
    description: V(present) builds the artifact unless it exists with this content; V(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  force:
    description: Replace an existing artifact of this name and version whose content differs.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Computes the artifact in memory and reports its checksum and size; writes nothing.
  diff_mode:
    support: full
    description: Reports the artifact's path and sha256 before and after.
  idempotent:
    support: full
    description: The same inputs give the same bytes, so a second run reports no change.
seealso:
  - name: sha256sum
    description: C(sha256sum -c <name>-<version>.tar.gz.sha256) in O(dest) verifies an artifact.
    link: https://www.gnu.org/software/coreutils/manual/html_node/sha2-utilities.html
author:
  - Berth maintainers (@berth)
"""

EXAMPLES = r"""
- name: Build catalog v1 from the sample service
  berth.fleet.artifact_build:
    name: catalog
    version: v1
    source: "{{ playbook_dir }}/../services/sample"
    dest: /var/lib/berth/artifacts

- name: Build a deliberately broken release
  berth.fleet.artifact_build:
    name: catalog
    version: v3
    source: "{{ playbook_dir }}/../services/sample"
    dest: /var/lib/berth/artifacts
    build_flags:
      broken_health: true

- name: Remove an artifact
  berth.fleet.artifact_build:
    name: catalog
    version: v3
    dest: /var/lib/berth/artifacts
    state: absent
"""

RETURN = r"""
path:
  description: The tarball.
  returned: always
  type: str
  sample: /var/lib/berth/artifacts/catalog-v1.tar.gz
checksum_path:
  description: Its checksum file, one C(sha256sum) line.
  returned: always
  type: str
  sample: /var/lib/berth/artifacts/catalog-v1.tar.gz.sha256
sha256:
  description: sha256 of the tarball (in check mode, of the tarball that would be written).
  returned: when state is present
  type: str
  sample: 0d4f7e0c58b5a0d3f4b8e0b2c8a1f6a27cfb4e1a9d3c6e5f7a8b9c0d1e2f3a4b
size:
  description: Size of the tarball in bytes.
  returned: when state is present
  type: int
  sample: 6453
action:
  description:
    - What happened, V(built), V(rebuilt) (forced), V(unchanged), V(checksum_written), V(removed)
      or V(absent).
  returned: always
  type: str
  sample: built
files:
  description: The archive's entries, in order.
  returned: when state is present
  type: list
  elements: str
  sample: [catalog-v1, catalog-v1/app.py, catalog-v1/version.json]
"""

import traceback
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.spec import (
    ArtifactError,
    ArtifactSpec,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.store import ArtifactBuilder


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "version": {"type": "str", "required": True},
            "source": {"type": "path"},
            "dest": {"type": "path", "required": True},
            "build_flags": {"type": "dict", "default": {}},
            "migrations": {"type": "list", "elements": "str", "default": []},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "force": {"type": "bool", "default": False},
        },
        required_if=[("state", "present", ["source"])],
        supports_check_mode=True,
    )
    params = module.params
    spec = ArtifactSpec(
        name=params["name"],
        version=params["version"],
        dest=Path(params["dest"]),
        source=Path(params["source"]) if params["source"] else None,
        build_flags=params["build_flags"],
        migrations=tuple(params["migrations"]),
    )
    try:
        result = ArtifactBuilder(spec).ensure(params["state"], module.check_mode, force=params["force"])
    except ArtifactError as exc:
        module.fail_json(msg=str(exc), exception=traceback.format_exc())
    outcome = result.as_dict()
    if not module._diff:
        outcome.pop("diff")
    if params["state"] == "absent":
        for key in ("sha256", "size", "files"):
            outcome.pop(key)
    module.exit_json(**outcome)


if __name__ == "__main__":
    main()
