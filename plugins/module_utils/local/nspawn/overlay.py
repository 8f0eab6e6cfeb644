# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A machine's directory: the overlayfs upper layer with Berth's per-machine files, and its mount.

The lower layer is the shared read-only base rootfs; upper/ and work/ sit in the machine's own
directory. Berth writes the hostname, a systemd-networkd config for ``host0``, a fresh ed25519 SSH
host key and root's authorized_keys into the upper layer.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Sequence
from pathlib import Path

from ansible_collections.berth.fleet.plugins.module_utils.common.command import CommandResult, Runner
from ansible_collections.berth.fleet.plugins.module_utils.common.fs import atomic_write
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.argv import (
    host_key_argv,
    overlay_mount_argv,
)
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.config import (
    HOST_KEY,
    MachineConfig,
    MachinePaths,
    config_to_json,
    machine_files,
)
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.errors import NspawnError
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.proc import MachineProcs


class MachineOverlay:
    """Creates a machine's directory, writes its files, mounts and unmounts its overlay."""

    def __init__(self, paths: MachinePaths, procs: MachineProcs, runner: Runner) -> None:
        self.paths = paths
        self.procs = procs
        self.runner = runner

    def is_mounted(self) -> bool:
        return str(self.paths.merged) in self.procs.mount_points()

    def mount(self, rootfs: str) -> None:
        if not self.is_mounted():
            self._run_checked(overlay_mount_argv(rootfs, self.paths), "mount the machine's overlay")

    def umount(self) -> None:
        if not self.is_mounted():
            return
        for _attempt in range(20):
            if self.runner(["umount", str(self.paths.merged)]).rc == 0:
                return
            time.sleep(0.1)
        raise NspawnError(f"cannot unmount {self.paths.merged}: still busy")

    def create(self, config: MachineConfig) -> None:
        if self.paths.root.exists():
            # Left by an interrupted create (no machine.json): nothing in it is worth keeping.
            if self.is_mounted():
                self.umount()
            shutil.rmtree(self.paths.root)
        for directory in (self.paths.upper, self.paths.work, self.paths.merged):
            directory.mkdir(parents=True, mode=0o755)
        os.chmod(self.paths.root, 0o700)
        self.write_files(config, mounted=False)
        self._ensure_parents(self.paths.upper, HOST_KEY, Path(config.rootfs))
        key = self.paths.upper / HOST_KEY
        result = self.runner(host_key_argv(key, config.hostname))
        if result.rc != 0:
            raise NspawnError(f"ssh-keygen failed: {result.stderr.strip()}")
        shutil.copyfile(f"{key}.pub", self.paths.host_key_pub)
        # Written last: a directory without machine.json is an unfinished create.
        self.paths.config.write_text(config_to_json(config))

    def write_files(self, config: MachineConfig, mounted: bool) -> None:
        # Overlayfs forbids touching the upper layer while it is mounted: write through the mount then.
        base = self.paths.merged if mounted else self.paths.upper
        for relative, (content, mode) in machine_files(config).items():
            self._ensure_parents(base, relative, Path(config.rootfs))
            atomic_write(base / relative, content, mode=mode)

    @staticmethod
    def _ensure_parents(base: Path, relative: str, lower: Path) -> None:
        """Create the parents of base/relative with the lower layer's owner and mode.

        A directory created in the upper layer replaces the metadata of the lower one in the
        merged view, so /root must stay 0700 and /etc 0755.
        """
        parts = Path(relative).parts[:-1]
        for depth in range(1, len(parts) + 1):
            rel = Path(*parts[:depth])
            target = base / rel
            if target.is_dir():
                continue
            template = lower / rel
            if template.is_dir():
                st = template.stat()
                target.mkdir(mode=stat.S_IMODE(st.st_mode))
                os.chown(target, st.st_uid, st.st_gid)
                os.chmod(target, stat.S_IMODE(st.st_mode))
            else:
                target.mkdir(mode=0o700 if rel.name == ".ssh" else 0o755)

    def _run_checked(self, argv: Sequence[str], what: str) -> CommandResult:
        result = self.runner(argv)
        if result.rc != 0:
            raise NspawnError(f"cannot {what}: {' '.join(argv)}: {result.stderr.strip()}")
        return result
