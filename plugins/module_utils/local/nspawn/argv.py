# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The commands a machine is made and booted with: ssh-keygen, the overlay mount, systemd-nspawn."""

from __future__ import annotations

from pathlib import Path

from ansible_collections.berth.fleet.plugins.module_utils.common.netns import netns_path
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.config import (
    MachineConfig,
    MachinePaths,
)


def nspawn_argv(config: MachineConfig, merged: Path) -> list[str]:
    return [
        "nsenter",
        f"--net={netns_path(config.namespace)}",
        "systemd-nspawn",
        "--boot",
        "--register=no",
        "--keep-unit",
        "--console=passive",
        "--link-journal=no",
        "--resolv-conf=off",
        "--timezone=off",
        f"--network-bridge={config.bridge}",
        f"--machine={config.name}",
        f"--hostname={config.hostname}",
        *(f"--bind={path}" for path in config.binds),
        "-D",
        str(merged),
    ]


def overlay_mount_argv(rootfs: str, paths: MachinePaths) -> list[str]:
    options = f"lowerdir={rootfs},upperdir={paths.upper},workdir={paths.work}"
    return ["mount", "-t", "overlay", "overlay", "-o", options, str(paths.merged)]


def host_key_argv(target: Path, hostname: str) -> list[str]:
    return ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{hostname}", "-f", str(target)]
