# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The builder: ensures one base image exists (or does not), building it only when it is missing."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.command import Runner, subprocess_runner
from ansible_collections.berth.fleet.plugins.module_utils.common.fs import FileLock
from ansible_collections.berth.fleet.plugins.module_utils.local.image.apt import parse_dpkg_status
from ansible_collections.berth.fleet.plugins.module_utils.local.image.rootfs import (
    customise_rootfs,
    debootstrap_argv,
    mounts_below,
    overlay_lowerdirs,
    tree_checksum,
)
from ansible_collections.berth.fleet.plugins.module_utils.local.image.spec import (
    ImageError,
    ImageResult,
    ImageSpec,
    run_checked,
)


class ImageBuilder:
    """Ensures one image exists (or does not), building it only when it is missing."""

    def __init__(
        self,
        spec: ImageSpec,
        runner: Runner = subprocess_runner,
        mountinfo_path: Path = Path("/proc/self/mountinfo"),
    ) -> None:
        self.spec = spec
        self.runner = runner
        self.mountinfo_path = mountinfo_path

    def _result(self, changed: bool) -> ImageResult:
        return ImageResult(
            changed=changed,
            image_id=self.spec.image_id,
            image_dir=str(self.spec.image_dir),
            rootfs=str(self.spec.rootfs),
            manifest_path=str(self.spec.manifest_path),
            inputs=self.spec.inputs(),
        )

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            manifest: dict[str, Any] = json.loads(self.spec.manifest_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ImageError(f"unreadable manifest {self.spec.manifest_path}: {exc}") from exc
        return manifest

    def exists(self) -> bool:
        manifest = self.read_manifest()
        return (
            manifest is not None
            and manifest.get("image_id") == self.spec.image_id
            and self.spec.rootfs.is_dir()
        )

    def in_use(self) -> bool:
        return str(self.spec.rootfs) in overlay_lowerdirs(self._mountinfo())

    def ensure(self, state: str, check_mode: bool, force: bool = False, verify: bool = False) -> ImageResult:
        try:
            if state == "absent":
                return self.absent(check_mode)
            return self.present(check_mode, force=force, verify=verify)
        except OSError as exc:
            raise ImageError(f"image {self.spec.image_dir}: {exc}") from exc

    def present(self, check_mode: bool, force: bool = False, verify: bool = False) -> ImageResult:
        if self.exists() and not force:
            result = self._result(changed=False)
            result.manifest = self.read_manifest() or {}
            result.checksum = result.manifest.get("checksum")
            if verify:
                actual = tree_checksum(self.spec.rootfs)
                if actual != result.checksum:
                    raise ImageError(
                        f"image {self.spec.image_dir} does not match its manifest "
                        f"(manifest {result.checksum}, content {actual}); rebuild it with force=true"
                    )
            return result
        if check_mode:
            return self._result(changed=True)
        self._preflight()
        if force and self.exists() and self.in_use():
            raise ImageError(
                f"image {self.spec.rootfs} is the lowerdir of a mounted overlay; stop its machines"
            )
        with self._locked():
            if self.exists() and not force:
                # Another build of the same image finished while we waited for the lock.
                return self.present(check_mode=False)
            return self._build()

    def absent(self, check_mode: bool) -> ImageResult:
        leftovers = self.spec.partial_dir.exists()
        if not self.spec.image_dir.exists() and not leftovers:
            return self._result(changed=False)
        if self.in_use():
            raise ImageError(
                f"image {self.spec.rootfs} is the lowerdir of a mounted overlay; stop its machines"
            )
        if not check_mode:
            self._remove_tree(self.spec.image_dir)
            self._remove_tree(self.spec.partial_dir)
            self.spec.lock_path.unlink(missing_ok=True)
        return self._result(changed=True)

    def _remove_tree(self, path: Path) -> None:
        """rmtree that first detaches what a killed debootstrap left mounted inside (proc, sys, dev binds)."""
        if not path.exists():
            return
        for point in mounts_below(self._mountinfo(), path):
            self.runner(["umount", "--lazy", point])
        still = mounts_below(self._mountinfo(), path)
        if still:
            raise ImageError(f"cannot remove {path}: still mounted inside it: {', '.join(still)}")
        shutil.rmtree(path, ignore_errors=True)

    def _mountinfo(self) -> str:
        try:
            return self.mountinfo_path.read_text()
        except OSError:
            return ""

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise ImageError("building an image needs root (debootstrap, chroot, device nodes)")
        for tool in ("debootstrap", "systemctl"):
            if shutil.which(tool) is None:
                raise ImageError(f"{tool} is not installed on the controller (apt-get install {tool})")

    def _locked(self) -> FileLock:
        self.spec.images_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(self.spec.lock_path)

    def _build(self) -> ImageResult:
        started = time.monotonic()
        partial = self.spec.partial_dir
        # A .partial directory only ever exists because an earlier build was interrupted.
        self._remove_tree(partial)
        partial.mkdir(parents=True)
        rootfs = partial / "rootfs"
        try:
            run_checked(self.runner, debootstrap_argv(self.spec, rootfs))
            customise_rootfs(rootfs, self.runner)
            packages = parse_dpkg_status((rootfs / "var/lib/dpkg/status").read_text())
            missing = [pkg for pkg in self.spec.packages if pkg not in packages]
            if missing:
                raise ImageError(f"debootstrap finished but these packages are not installed: {missing}")
            checksum = tree_checksum(rootfs)
            build_seconds = round(time.monotonic() - started, 1)
            manifest: dict[str, Any] = {
                "image_id": self.spec.image_id,
                "name": self.spec.name,
                "inputs": self.spec.inputs(),
                "mirror": self.spec.mirror,
                "packages": packages,
                "checksum": checksum,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": build_seconds,
            }
            (partial / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            os.sync()
            if self.spec.image_dir.exists():
                # force=true: keep the old image out of the way until the new one is in place.
                trash = self.spec.images_dir / f".{self.spec.image_dir.name}.old"
                self._remove_tree(trash)
                os.rename(self.spec.image_dir, trash)
                os.rename(partial, self.spec.image_dir)
                self._remove_tree(trash)
            else:
                os.rename(partial, self.spec.image_dir)
        except BaseException:
            self._remove_tree(partial)
            raise
        result = self._result(changed=True)
        result.built = True
        result.checksum = checksum
        result.manifest = manifest
        result.build_seconds = build_seconds
        return result
