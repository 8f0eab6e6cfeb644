# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files on the controller and on nodes: one lock, one atomic write, one sha256.

Every driver and substrate that must survive a crash or a concurrent run uses these: a file is
replaced by renaming a fsynced temporary sibling over it (then the directory is fsynced so the
rename itself survives), and one change at a time is an exclusive ``flock``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

_CHUNK = 1 << 20


class FileLock:
    """An exclusive ``flock`` held for a ``with`` block (``shared``: a shared one).

    ``path`` is a lock file (created 0600) or, with ``directory=True``, a directory locked on itself
    (so the lock leaves no file behind). A directory that does not exist and is not ``create``d is
    not locked: there is nothing in it to protect. With ``wait=False`` a lock held elsewhere raises
    ``BlockingIOError`` at once instead of waiting.
    """

    def __init__(
        self,
        path: Path,
        directory: bool = False,
        create: bool = False,
        shared: bool = False,
        wait: bool = True,
    ) -> None:
        self.path = path
        self.directory = directory
        self.create = create
        self._mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        if self.directory:
            if self.create:
                self.path.mkdir(parents=True, exist_ok=True)
            if not self.path.is_dir():
                return self
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        else:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, self._mode)
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, content: bytes | str | Callable[[IO[bytes]], None], mode: int = 0o600) -> None:
    """Replace ``path`` with ``content`` (bytes, text, or a writer called with the open handle).

    Readers see the old file or the new one, never half of either. Raises OSError; the temporary
    file is removed whatever happens.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(content, str):
                handle.write(content.encode())
            elif isinstance(content, bytes):
                handle.write(content)
            else:
                content(handle)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def sha256_stream(handle: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := handle.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's content; raises OSError."""
    with open(path, "rb") as handle:
        return sha256_stream(handle)


class JsonFileError(ValueError):
    """A JSON record that cannot be used; the message names the file and what is wrong."""


def read_json_object(path: Path, what: str) -> dict[str, Any] | None:
    """The JSON object in ``path`` (a record: ``what`` says of what), ``None`` when there is no file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise JsonFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise JsonFileError(f"{path} is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise JsonFileError(f"{path} is not {what}: not a JSON object")
    return data


def write_json_object(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    """``data`` as the JSON object of ``path`` (indented, keys sorted), written atomically; the
    directory is made when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode=mode)
