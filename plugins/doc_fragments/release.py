# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # which release of which instance: the modules that act on an instance's releases on its node
    DOCUMENTATION = r"""
options:
  instance:
    description: The instance (inventory host), for example C(catalog-2).
    type: str
    required: true
  artifact:
    description: Artifact name, for example C(catalog).
    type: str
    required: true
  root:
    description: Where releases and instance links live on the node.
    type: path
    default: /opt/berth
"""
