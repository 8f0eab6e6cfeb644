# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading /proc: a process's stat line and mount tables, parsed one way for every caller."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class ProcStat:
    state: str
    ppid: int
    start_ticks: int  # field 22: when the process started, which tells a PID apart from its reuse


def parse_proc_stat(text: str) -> ProcStat:
    # comm may contain spaces and parentheses: the fields proper start after the last ')'.
    fields = text.rsplit(")", 1)[1].split()
    return ProcStat(state=fields[0], ppid=int(fields[1]), start_ticks=int(fields[19]))


def read_proc_stat(pid: int, proc: Path = Path("/proc")) -> ProcStat | None:
    """The stat of a live process, or None when there is no such process."""
    try:
        return parse_proc_stat((proc / str(pid) / "stat").read_text())
    except (OSError, IndexError, ValueError):
        return None


def unescape_mountinfo(value: str) -> str:
    r"""A path field of /proc/<pid>/mountinfo, with its octal escapes (``\040`` for a space) undone."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), value)


def mount_points(mountinfo: str) -> list[str]:
    """Every mount point listed in a mountinfo text, in table order."""
    fields = (line.split(" ") for line in mountinfo.splitlines())
    return [unescape_mountinfo(parts[4]) for parts in fields if len(parts) > 4]
