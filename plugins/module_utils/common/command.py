# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running commands on the controller: one result type and one runner, shared by the lab modules."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CommandResult:
    rc: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str]], CommandResult]


def subprocess_runner(argv: Sequence[str]) -> CommandResult:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return CommandResult(proc.returncode, proc.stdout, proc.stderr)


class CommandError(Exception):
    """A command that exited non-zero (the default error of ``run_checked``)."""


def run_checked(
    runner: Runner, argv: Sequence[str], error: type[Exception] = CommandError, tail_lines: int = 20
) -> CommandResult:
    """Run ``argv``; on a non-zero exit raise ``error`` with the command and the end of its output."""
    result = runner(argv)
    if result.rc != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-tail_lines:]
        raise error(f"command failed (rc={result.rc}): {' '.join(argv)}\n" + "\n".join(tail))
    return result
