# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checksums in ``sha256sum`` format, :func:`verify_artifact`, which any host can run, and
:func:`read_migrations`, what a verified artifact carries of its release's schema changes.

An artifact's ``.sha256`` is written after its tarball: when the checksum file exists it describes
the tarball next to it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import tarfile
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common import fs
from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.spec import (
    BUILD_INFO_FILE,
    CHECKSUM_SUFFIX,
    ArtifactError,
)

_CHECKSUM_LINE_RE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def sha256_file(path: Path) -> str:
    try:
        return fs.sha256_file(path)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read: {exc.strerror}") from exc


def checksum_line(sha256: str, filename: str) -> str:
    """One line in ``sha256sum`` format: ``sha256sum -c`` run next to the file checks it."""
    return f"{sha256}  {filename}\n"


def parse_checksum_line(text: str, where: str = "checksum") -> tuple[str, str]:
    """(hex digest, file name) from a ``sha256sum`` line; the text must hold exactly one."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ArtifactError(f"{where}: expected one '<sha256>  <file>' line, found {len(lines)}")
    match = _CHECKSUM_LINE_RE.match(lines[0].rstrip("\r"))
    if not match:
        raise ArtifactError(f"{where}: not a sha256sum line: {lines[0][:100]!r}")
    return match.group(1).lower(), match.group(2)


def verify_artifact(path: Path, checksum_path: Path | None = None) -> str:
    """Check an artifact against its ``.sha256`` file; returns the digest, raises ArtifactError.

    The checksum file must name this file (a checksum of another artifact does not vouch for it).
    """
    checksum_path = checksum_path or path.with_name(path.name + CHECKSUM_SUFFIX)
    try:
        text = checksum_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ArtifactError(f"{checksum_path}: cannot read the checksum: {reason}") from exc
    expected, named = parse_checksum_line(text, str(checksum_path))
    if named != path.name:
        raise ArtifactError(f"{checksum_path}: is the checksum of {named!r}, not of {path.name!r}")
    actual = sha256_file(path)
    if not hmac.compare_digest(actual, expected):
        raise ArtifactError(
            f"{path}: sha256 {actual} does not match {expected} in {checksum_path.name}: "
            "the artifact is corrupt or was replaced"
        )
    return actual


def read_migrations(path: Path, stem: str) -> list[dict[str, str]]:
    """The migrations a verified artifact carries (its ``version.json``), each with its SQL, whose
    sha256 is checked against what ``version.json`` says; [] for a version that carries none."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            info = _member_json(tar, f"{stem}/{BUILD_INFO_FILE}")
            found = []
            for index, entry in enumerate(info.get("migrations") or []):
                if not isinstance(entry, dict) or not all(
                    isinstance(entry.get(k), str) for k in ("id", "phase", "file", "sha256")
                ):
                    raise ArtifactError(f"{path}: {BUILD_INFO_FILE}: migrations[{index}] is malformed")
                data = _member_bytes(tar, f"{stem}/{entry['file']}")
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise ArtifactError(
                        f"{path}: {entry['file']} does not match the sha256 {BUILD_INFO_FILE} records"
                    )
                found.append({**entry, "sql": data.decode("utf-8")})
    except (OSError, tarfile.TarError, UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot read its migrations: {exc}") from None
    return found


def _member_bytes(tar: tarfile.TarFile, name: str) -> bytes:
    try:
        member = tar.extractfile(name)
    except KeyError:
        member = None
    if member is None:
        raise ArtifactError(f"{name} is missing from the artifact")
    return member.read()


def _member_json(tar: tarfile.TarFile, name: str) -> dict[str, Any]:
    value = json.loads(_member_bytes(tar, name).decode("utf-8"))
    if not isinstance(value, dict):
        raise ArtifactError(f"{name}: expected a JSON object")
    return value
