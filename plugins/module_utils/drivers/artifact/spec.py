# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an artifact build is asked for: name, version, source, destination, build flags.

An artifact is a service's source directory plus a generated ``version.json`` (artifact name,
version, build flags), under a top directory ``<name>-<version>/``, written as
``<name>-<version>.tar.gz`` and its ``.sha256`` in ``dest``.
"""

from __future__ import annotations

import hashlib
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
# A release's schema changes (docs/databases.md): files of the source's migrations/ folder, named
# <nnn>_<what>.<expand|contract>.sql. Only the ones a version lists are packed into it (the folder
# grows with every release; packing all of it would change the content of every older version).
MIGRATIONS_DIR = "migrations"
MIGRATION_RE = re.compile(r"^(?P<id>[0-9]{3}_[a-z0-9_]{1,60})\.(?P<phase>expand|contract)\.sql$")


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
    migrations: tuple[str, ...] = ()  # file names in <source>/migrations, in the order they run

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
        validate_migrations(self.source, self.migrations)

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


def validate_migrations(source: Path, names: Any) -> None:
    if not isinstance(names, (list, tuple)):
        raise ArtifactError(f"migrations: expected a list of file names, got {names!r}")
    seen: list[str] = []
    for index, name in enumerate(names):
        found = MIGRATION_RE.match(name) if isinstance(name, str) else None
        if found is None:
            raise ArtifactError(
                f"migrations[{index}]: {name!r} is not a migration file name such as "
                "002_add_note.expand.sql (<nnn>_<what>.<expand|contract>.sql)"
            )
        if found["id"] in seen:
            raise ArtifactError(f"migrations[{index}]: {found['id']} is listed twice")
        if seen and found["id"] < seen[-1]:
            raise ArtifactError(
                f"migrations[{index}]: {found['id']} comes after {seen[-1]}: list them in order"
            )
        seen.append(found["id"])
        path = source / MIGRATIONS_DIR / name
        if not path.is_file() or path.is_symlink():
            raise ArtifactError(f"migrations[{index}]: {path} is not a regular file")


def migration_entries(source: Path, names: tuple[str, ...]) -> list[dict[str, str]]:
    """What ``version.json`` says of each migration: id, phase, file in the artifact, sha256."""
    entries = []
    for name in names:
        found = MIGRATION_RE.match(name)
        if found is None:
            raise ArtifactError(f"migrations: {name!r} is not a migration file name")
        data = (source / MIGRATIONS_DIR / name).read_bytes()
        entries.append(
            {
                "id": found["id"],
                "phase": found["phase"],
                "file": f"{MIGRATIONS_DIR}/{name}",
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    return entries


def render_build_info(spec: ArtifactSpec) -> bytes:
    """The generated ``version.json``: what the service reads to know its version and flags, and
    (only when it carries any) the release's migrations."""
    info: dict[str, Any] = {
        "format": BUILD_INFO_FORMAT,
        "artifact": spec.name,
        "version": spec.version,
        "build_flags": dict(spec.build_flags),
    }
    if spec.migrations and spec.source is not None:
        info["migrations"] = migration_entries(spec.source, spec.migrations)
    return (json.dumps(info, sort_keys=True, indent=2, allow_nan=False) + "\n").encode()
