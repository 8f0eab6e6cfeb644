# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # the options of every module that talks to HAProxy's Runtime API on the load balancer
    DOCUMENTATION = r"""
options:
  socket:
    description: Path of the HAProxy stats socket, configured with C(level admin).
    type: path
    default: /run/haproxy/admin.sock
  backend:
    description: Name of the backend (proxy) the server or servers belong to.
    type: str
    required: true
"""
