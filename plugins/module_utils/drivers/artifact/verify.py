# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checksums in ``sha256sum`` format, and :func:`verify_artifact`, which any host can run.

An artifact's ``.sha256`` is written after its tarball: when the checksum file exists it describes
the tarball next to it.
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path

from ansible_collections.berth.fleet.plugins.module_utils.common import fs
from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.spec import (
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
