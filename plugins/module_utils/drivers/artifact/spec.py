# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an artifact build is asked for: name, version, source, destination, build flags.

An artifact is a service's source directory plus a generated ``version.json`` (artifact name,
version, build flags), under a top directory ``<name>-<version>/``, written as
``<name>-<version>.tar.gz`` and its ``.sha256`` in ``dest``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.rules import (
    VERSION_EXPECTED,
    name_problem,
    version_problem,
)

ARTIFACT_SUFFIX = ".tar.gz"
CHECKSUM_SUFFIX = ".sha256"
BUILD_INFO_FILE = "version.json"
BUILD_INFO_FORMAT = 1
# A source directory's release definitions are build inputs, not content: were they packed, adding v4
# would change the content of v1.
RELEASE_DEFINITIONS_FILE = "versions.yml"

_FLAG_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class ArtifactError(Exception):
    """Anything that stops an artifact from being built, verified or removed."""


# --- the request -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactSpec:
    """What the caller asks for."""

    name: str
    version: str
    dest: Path
    source: Path | None = None
    build_flags: Mapping[str, Any] = field(default_factory=dict)

    def validate(self, state: str = "present") -> None:
        if not isinstance(self.name, str) or name_problem(self.name) is not None:
            raise ArtifactError(
                f"name: {self.name!r} is not an artifact name: lowercase letters, digits and '-', "
                "starting with a letter, at most 32 characters"
            )
        if version_problem(self.version) is not None:
            raise ArtifactError(f"version: {self.version!r} is not {VERSION_EXPECTED}")
        if not self.dest.is_absolute():
            raise ArtifactError(f"dest: must be an absolute path, got {str(self.dest)!r}")
        if state == "absent":
            return
        if self.source is None:
            raise ArtifactError("source: required to build an artifact")
        if not self.source.is_absolute():
            raise ArtifactError(f"source: must be an absolute path, got {str(self.source)!r}")
        if not self.source.is_dir():
            raise ArtifactError(f"source: {self.source} is not a directory")
        validate_build_flags(self.build_flags)

    @property
    def stem(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def path(self) -> Path:
        return self.dest / f"{self.stem}{ARTIFACT_SUFFIX}"

    @property
    def checksum_path(self) -> Path:
        return self.dest / f"{self.stem}{ARTIFACT_SUFFIX}{CHECKSUM_SUFFIX}"


def validate_build_flags(flags: Any) -> None:
    if not isinstance(flags, Mapping):
        raise ArtifactError(f"build_flags: expected a mapping, got {flags!r}")
    for key, value in flags.items():
        if not isinstance(key, str) or not _FLAG_RE.match(key):
            raise ArtifactError(
                f"build_flags: {key!r} is not a flag name: lowercase letters, digits and '_', "
                "starting with a letter"
            )
        if value is not None and not isinstance(value, (str, bool, int, float)):
            raise ArtifactError(
                f"build_flags.{key}: expected a string, number, boolean or null, got {type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ArtifactError(f"build_flags.{key}: expected a finite number, got {value!r}")


def render_build_info(spec: ArtifactSpec) -> bytes:
    """The generated ``version.json``: what the service reads to know its version and flags."""
    info = {
        "format": BUILD_INFO_FORMAT,
        "artifact": spec.name,
        "version": spec.version,
        "build_flags": dict(spec.build_flags),
    }
    return (json.dumps(info, sort_keys=True, indent=2, allow_nan=False) + "\n").encode()
