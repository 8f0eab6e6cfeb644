# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Names and paths of an environment's local lab: one source for the inventory, provision and destroy.

A lab environment lives inside one network namespace; each datacenter is a bridge in it. The
controller stays in the machine's own namespace and reaches lab nodes over SSH through a
ProxyCommand that enters the namespace, with Berth's own known_hosts and strict host key checking.
"""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath

IFNAMSIZ = 15  # longest Linux interface name


def default_namespace(environment: str) -> str:
    return f"berth-{environment}"


def bridge_name(datacenter: str) -> str:
    """The datacenter's bridge inside the lab namespace (names are per-namespace, so short)."""
    return f"br-{datacenter}"[:IFNAMSIZ]


def environment_dir(state_dir: str, environment: str) -> PurePosixPath:
    return PurePosixPath(state_dir) / environment


def operator_key(state_dir: str, environment: str) -> PurePosixPath:
    return environment_dir(state_dir, environment) / "id_ed25519"


def known_hosts(state_dir: str, environment: str) -> PurePosixPath:
    return environment_dir(state_dir, environment) / "known_hosts"


def ssh_common_args(state_dir: str, environment: str, namespace: str) -> str:
    """From the controller, SSH enters the lab namespace; from inside the lab (an execution node,
    which has no such namespace) the same settings connect directly: one inventory for both."""
    netns = f"/run/netns/{namespace}"
    inside = "socat STDIO TCP:%h:%p"
    proxy = f"sh -c 'if [ -e {netns} ]; then exec nsenter --net={netns} {inside}; else exec {inside}; fi'"
    return " ".join(
        [
            f"-o UserKnownHostsFile={known_hosts(state_dir, environment)}",
            "-o StrictHostKeyChecking=yes",
            "-o ConnectTimeout=10",
            f"-o ProxyCommand={shlex.quote(proxy)}",
        ]
    )
