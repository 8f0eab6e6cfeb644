# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: version_problem
short_description: What is wrong with a release version, or an empty string when nothing is
version_added: 0.3.0
author:
  - Berth maintainers (@berth)
description:
  - The one version rule of Berth (the topology spec, the role preflights, the artifact builder and
    the release module all apply it) - a digit, or C(v) and a digit, then letters, digits, C(.),
    C(_) or C(-), at most 64 characters; never a moving name such as C(latest), never a path.
options:
  _input:
    description: The version.
    type: raw
    required: true
"""

EXAMPLES = r"""
- name: The version is a version
  ansible.builtin.assert:
    that: (version | berth.fleet.version_problem) == ''
    fail_msg: "version {{ version | berth.fleet.version_problem }}"
"""

RETURN = r"""
_value:
  description: C('') when the version is fine, else what was expected.
  type: str
"""

from ansible_collections.berth.fleet.plugins.module_utils.common.rules import version_problem as _problem


def version_problem(version):
    return _problem(version) or ""


class FilterModule:
    def filters(self):
        return {"version_problem": version_problem}
