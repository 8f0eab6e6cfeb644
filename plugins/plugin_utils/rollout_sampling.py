# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rollout task's side of the rollout report: claim the run's sampler, start it, wait for it.

``with Sampling(where, traffic, host, idle_limit):`` wraps one instance's part of a rollout
(``rollout_steps``). The first part to start claims the sampler of the run in the journal
(``planner.progress.claim_sampler``, under the journal's lock) and forks it (``rollout_sampler``),
told the run, the backend and where each LB's forwarded Runtime API socket is
(``lb_traffic.forwards``). When the part is done, the task waits for the sampler to see the end of
the run and write the report (every instance's task runs until the whole rollout is done anyway,
so the wait costs nothing), and says where the report is. A part that fails tells the sampler to
stop now by closing its end of a pipe; a task that is killed does the same by being gone.

Nothing here fails or slows the rollout: a sampler that does not start, or fails, is a warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from typing import Any

from ansible.utils.display import Display

from ansible_collections.berth.fleet.plugins.module_utils.planner import report as journal_report
from ansible_collections.berth.fleet.plugins.modules import lb_traffic
from ansible_collections.berth.fleet.plugins.plugin_utils import rollout_sampler

display = Display()
STOP_SECONDS = 10.0  # how long a sampler told to stop may take to write the report


class Sampling:
    def __init__(self, where: dict[str, Any], traffic: dict[str, Any], host: str, idle_limit: float) -> None:
        self.where, self.traffic, self.host, self.idle_limit = where, traffic, host, idle_limit
        self.pid: int | None = None  # the sampler's process, when this task started it
        self._parent = 0  # ansible-playbook's PID, once the sampler runs
        self._told: int | None = None  # our end of the pipe that tells it to stop
        self._answer: int | None = None  # our end of the pipe it answers on

    def __enter__(self) -> Sampling:
        if self.traffic.get("lbs"):
            try:
                self._start()
            except Exception as exc:
                display.warning(
                    f"{self.where['service']}: no rollout report, its sampler did not start: {exc}"
                )
                self._end()
        return self

    def _start(self) -> None:
        journal = journal_report.claim_sampler(self.where, self.host)
        if journal is None:  # another part samples this run
            return
        config = {
            "state_dir": self.where["state_dir"],
            "service": self.where["service"],
            "scope": self.where.get("scope", ""),
            "run": journal["run"]["id"],
            "backend": self.traffic["backend"],
            "lbs": {
                forward.target.name: str(forward.local_path) for forward in lb_traffic.forwards(self.traffic)
            },
            "idle_limit": self.idle_limit,
        }
        told_read, self._told = os.pipe()
        self._answer, answer_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the sampler (never returns)
            os.close(self._told)
            os.close(self._answer)
            rollout_sampler.run_forked(config, told_read, answer_write)
        self.pid = pid
        self._parent = os.getppid()  # ansible-playbook: when it is gone, nobody finishes the run
        os.close(told_read)
        os.close(answer_write)

    def __exit__(self, kind: type[BaseException] | None, *_exc: object) -> None:
        if self.pid is None:
            return
        try:
            if kind is not None:  # this part failed: the report of what was sampled so far, now
                self._tell_stop()
            if not self._wait(self.idle_limit + STOP_SECONDS if kind is None else STOP_SECONDS):
                self._tell_stop()
                if not self._wait(STOP_SECONDS):
                    raise RuntimeError(f"it did not end within {STOP_SECONDS:.0f} s of being told to")
            self._said()
        except Exception as exc:
            display.warning(f"{self.where['service']}: the rollout report's sampler failed: {exc}")
        finally:
            self._end()

    def _wait(self, seconds: float) -> bool:
        """Whether the sampler ended within ``seconds`` (reaped)."""
        deadline = time.monotonic() + seconds
        while self.pid is not None:
            if self._told is not None and os.getppid() != self._parent:
                # killed ansible-playbook (a worker outlives it): the run will not end, so the
                # sampler must not wait out its idle limit holding the run's parts lock
                self._tell_stop()
            pid, _status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.pid = None
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _said(self) -> None:
        if self._answer is None:
            raise RuntimeError("its answer was already read")
        chunks = []
        while chunk := os.read(self._answer, 65536):
            chunks.append(chunk)
        try:
            summary = json.loads(b"".join(chunks).decode())
        except ValueError:
            raise RuntimeError("it ended without saying what it did") from None
        where = summary.get("page") or summary.get("report")
        reads = ", ".join(f"{lb} {n}" for lb, n in sorted((summary.get("reads") or {}).items()))
        warnings = summary.get("warnings") or []
        count = int(summary.get("warning_count", len(warnings)))
        display.display(
            f"{self.where['service']}: rollout report {where} (reads every {rollout_sampler.INTERVAL:g} s: "
            f"{reads or 'none'}"
            + (f"; {count} warning(s) in it, the first: {warnings[0]}" if warnings else "")
            + ")"
        )

    def _tell_stop(self) -> None:
        if self._told is not None:
            os.close(self._told)
            self._told = None

    def _end(self) -> None:
        """Our ends of the pipes closed, and the sampler gone (killed by its PID if still there)."""
        self._tell_stop()
        if self._answer is not None:
            os.close(self._answer)
            self._answer = None
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = None
