#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: release
short_description: Stage a verified release side by side and switch an instance's current release atomically
version_added: 0.1.0
author:
  - Berth maintainers (@berth)
description:
  - Extracts a checksum-verified artifact into C(<root>/releases/<artifact>-<version>/) once per
    node (colocated instances share it) and points C(<root>/instances/<instance>/current) at it with
    an atomic symlink rename; the release that was current is kept as C(previous), so a revert is a
    rename too.
  - A version is immutable - a staged release whose checksum differs from O(sha256) is refused.
extends_documentation_fragment:
  - berth.fleet.release
options:
  version:
    description: Release version. Required unless O(state=reverted) or O(state=query).
    type: str
  package:
    description: Path of the artifact tarball on the node; needed only when the release is not staged yet.
    type: path
  sha256:
    description: Expected sha256 of the tarball (from the build); the tarball is verified before use.
    type: str
  state:
    description:
      - V(present) stages the release without switching; V(current) stages and switches to it;
        V(reverted) switches back to the previous release; V(query) changes nothing.
    type: str
    choices: [present, current, reverted, query]
    default: current
attributes:
  action:
    support: full
    description:
      - The action plugin answers O(state=query) with one shell command over the host's connection
        (it reads the two release markers), not a module run; the other states run the module.
  check_mode:
    support: full
    description: Reports what would be extracted and switched, changes nothing.
  diff_mode:
    support: full
    description: Shows the current and previous version before and after.
  idempotent:
    support: full
    description: A staged release is not extracted again; a current release is not switched again.
"""

EXAMPLES = r"""
- name: Stage v2 beside v1 (no traffic impact)
  berth.fleet.release:
    instance: catalog-2
    artifact: catalog
    version: v2
    package: /var/lib/berth/artifacts/catalog-v2.tar.gz
    sha256: "{{ catalog_v2_sha256 }}"
    state: present

- name: Switch to it
  berth.fleet.release:
    instance: catalog-2
    artifact: catalog
    version: v2

- name: Back to what ran before
  berth.fleet.release:
    instance: catalog-2
    artifact: catalog
    state: reverted
"""

RETURN = r"""
current:
  description: Version the instance's current link points at afterwards.
  returned: always
  type: str
  sample: v2
previous:
  description: Version of the previous release, if any.
  returned: always
  type: str
  sample: v1
actions:
  description: What was (or in check mode would be) done.
  returned: always
  type: list
  elements: str
"""

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.drivers.node.release import (
    ReleaseError,
    ReleaseManager,
    ReleaseRequest,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "instance": {"type": "str", "required": True},
            "artifact": {"type": "str", "required": True},
            "version": {"type": "str"},
            "package": {"type": "path"},
            "sha256": {"type": "str"},
            "state": {
                "type": "str",
                "default": "current",
                "choices": ["present", "current", "reverted", "query"],
            },
            "root": {"type": "path", "default": "/opt/berth"},
        },
        required_if=[("state", "present", ["version"]), ("state", "current", ["version"])],
        supports_check_mode=True,
    )
    params = module.params
    request = ReleaseRequest(
        instance=params["instance"],
        artifact=params["artifact"],
        version=params["version"] or "",
        state=params["state"],
        package=Path(params["package"]) if params["package"] else None,
        sha256=params["sha256"],
        root=Path(params["root"]),
    )
    try:
        result = ReleaseManager(request, module.check_mode).run().as_dict()
    except ReleaseError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
