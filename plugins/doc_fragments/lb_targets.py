# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # the load balancers a controller-side module reaches through its OpenSSH forwards
    DOCUMENTATION = r"""
options:
  lbs:
    description: The load balancers, as the P(berth.fleet.ssh_targets#filter) filter gives them.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Inventory name.
        type: str
        required: true
      address:
        description: Address ssh connects to.
        type: str
        required: true
      port:
        description: SSH port.
        type: int
      user:
        description: SSH user.
        type: str
      private_key:
        description: Path of the SSH private key on the controller.
        type: path
      args:
        description: Further ssh arguments (C(ansible_ssh_common_args) and C(ansible_ssh_extra_args), split).
        type: list
        elements: str
        default: []
  persist:
    description:
      - Seconds an idle forward (its OpenSSH master) stays up after the task, for the next task that
        reaches the same load balancers.
    type: int
    default: 120
"""
