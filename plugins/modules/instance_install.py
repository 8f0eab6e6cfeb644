#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: instance_install
short_description: What an instance needs on its node before a cycle, in one run
version_added: 0.2.0
author:
  - Berth maintainers (@berth)
description:
  - Prepares one service instance on its node without touching the running process - creates the
    service's system user (no login, no home), puts the checksum-verified artifact at O(package),
    extracts it beside the current release (as M(berth.fleet.release) with
    O(berth.fleet.release#module:state=present)) and writes the instance's files (its config and
    its systemd unit), each only if it differs.
  - An artifact of at most O(ask_above) bytes is sent from the controller (O(src)) with the call
    and used only if the node needs it (the release is not staged and the node has no copy with
    checksum O(sha256)) - one module run and one small transfer. A bigger artifact is sent only when
    the node answers that it lacks it - an idempotent run sends nothing, a first install of a
    version costs two module runs and one transfer.
  - A cycle (M(berth.fleet.instance_cycle)) then switches the instance to the release and restarts
    it; a changed unit file is re-read there (C(systemctl daemon-reload)).
extends_documentation_fragment:
  - berth.fleet.release
options:
  version:
    description: The version to stage.
    type: str
    required: true
  sha256:
    description: The artifact's sha256 (from the build, checked on the controller); the node verifies it too.
    type: str
    required: true
  src:
    description: The artifact tarball on the controller, sent only when the node needs it.
    type: path
    required: true
  package:
    description: Where the node keeps the artifact, for example V(/var/lib/berth/artifacts/catalog-v2.tar.gz).
    type: path
    required: true
  user:
    description: The service's system user (and its group), created if missing.
    type: str
    required: true
  files:
    description: The instance's files, written atomically when their content, owner, group or mode differ.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path on the node; missing parent directories are created C(0755).
        type: path
        required: true
      content:
        description:
          - The file's content (rendered on the controller, for example with
            P(ansible.builtin.template#lookup)).
        type: str
        required: true
      mode:
        description: Octal mode, for example V('0640').
        type: str
        default: '0644'
      owner:
        description: Owner.
        type: str
        default: root
      group:
        description: Group (the service user's group works, it exists by then).
        type: str
        default: root
  secret_files:
    description:
      - Files like O(files) whose content is a secret (a password file) - never shown, not even
        in a diff (which says only C((secret - not shown))); the content option is C(no_log).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path on the node.
        type: path
        required: true
      content:
        description: The file's content.
        type: str
        required: true
      mode:
        description: Octal mode, for example V('0640').
        type: str
        default: '0644'
      owner:
        description: Owner.
        type: str
        default: root
      group:
        description: Group.
        type: str
        default: root
  ask_above:
    description:
      - Artifacts bigger than this many bytes are sent only after the node said it needs them;
        smaller ones go with the first call (sending them costs less than a module run asking).
    type: int
    default: 4194304
  upload:
    description:
      - Set by the action plugin, not by users - where this run's transfer put the artifact on the node.
    type: path
attributes:
  action:
    support: full
    description: The action plugin sends the artifact when the node asks for it.
  check_mode:
    support: full
    description: Creates, copies, extracts and writes nothing; reports what would be done.
  diff_mode:
    support: full
    description: Each file's content before and after.
  idempotent:
    support: full
    description: An instance whose user, release and files are in place is not touched and nothing is sent.
notes:
  - Runs on the node as root (it creates a user and writes under /etc).
seealso:
  - module: berth.fleet.release
  - module: berth.fleet.instance_cycle
"""

EXAMPLES = r"""
- name: Install catalog-2's v2 beside what it runs now
  berth.fleet.instance_install:
    instance: catalog-2
    artifact: catalog
    version: v2
    sha256: "{{ artifact.sha256 }}"
    src: /var/lib/berth/artifacts/catalog-v2.tar.gz
    package: /var/lib/berth/artifacts/catalog-v2.tar.gz
    user: berth-catalog
    files:
      - path: /etc/berth/catalog-2.json
        content: "{{ lookup('ansible.builtin.template', 'instance.json.j2') }}"
        group: berth-catalog
        mode: "0640"
      - path: /etc/systemd/system/berth-catalog-2.service
        content: "{{ lookup('ansible.builtin.template', 'instance.service.j2') }}"
"""

RETURN = r"""
actions:
  description: What was (or in check mode would be) done, in order.
  returned: always
  type: list
  elements: str
  sample:
    - create system user berth-catalog
    - copy catalog-v2.tar.gz to /var/lib/berth/artifacts
    - extract catalog-v2.tar.gz into /opt/berth/releases/catalog-v2
    - write /etc/berth/catalog-2.json
sent:
  description: Whether the artifact was sent to the node in this run (used or not).
  returned: always
  type: bool
"""

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.berth.fleet.plugins.module_utils.drivers.node.install import (
    Installer,
    InstallError,
    InstallRequest,
    files_from,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.node.release import ReleaseRequest

FILE_OPTIONS = {
    "path": {"type": "path", "required": True},
    "content": {"type": "str", "required": True},
    "mode": {"type": "str", "default": "0644"},
    "owner": {"type": "str", "default": "root"},
    "group": {"type": "str", "default": "root"},
}


def main():
    module = AnsibleModule(
        argument_spec={
            "instance": {"type": "str", "required": True},
            "artifact": {"type": "str", "required": True},
            "root": {"type": "path", "default": "/opt/berth"},
            "version": {"type": "str", "required": True},
            "sha256": {"type": "str", "required": True},
            "src": {"type": "path", "required": True},
            "package": {"type": "path", "required": True},
            "user": {"type": "str", "required": True},
            "files": {"type": "list", "elements": "dict", "default": [], "options": FILE_OPTIONS},
            "secret_files": {
                "type": "list",
                "elements": "dict",
                "default": [],
                # the paths may be shown; each content is no_log
                "no_log": False,
                "options": {**FILE_OPTIONS, "content": {"type": "str", "required": True, "no_log": True}},
            },
            "ask_above": {"type": "int", "default": 4 << 20},
            "upload": {"type": "path"},
        },
        supports_check_mode=True,
    )
    params = module.params
    try:
        request = InstallRequest(
            release=ReleaseRequest(
                instance=params["instance"],
                artifact=params["artifact"],
                version=params["version"],
                state="present",
                package=Path(params["package"]),
                sha256=params["sha256"],
                root=Path(params["root"]),
            ),
            user=params["user"],
            files=files_from(params["files"]) + files_from(params["secret_files"], secret=True),
            upload=Path(params["upload"]) if params["upload"] else None,
        )
        result = Installer(request, module.check_mode).run().as_dict()
    except (InstallError, OSError) as exc:
        module.fail_json(msg=f"{params['instance']}: {exc}")
    module.exit_json(sent=bool(params["upload"]), **result)


if __name__ == "__main__":
    main()
