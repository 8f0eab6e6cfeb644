# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a run's time went: every play's wall time and its slow tasks, at the end of the run; and
while a task waits long (a VM boot, an image build, a health gate), what it still waits for."""

from __future__ import annotations

DOCUMENTATION = r"""
name: timeline
type: aggregate
short_description: Print where a run's time went, play by play and task by task
description:
  - At the end of a run, prints every play with its offset from the start and its wall time, and
    under it the tasks that took at least O(min_seconds), each with its offset, its wall time (from
    the task's start to the last host's result) and how many hosts ran it.
  - Tasks run in a loop or an include (such as the steps of a rollout) are listed once per run of
    the task, so each rollout step has its own line.
  - "While a task runs longer than O(waiting_every) seconds, it prints every O(waiting_every)
    seconds what the task still waits for (the task's name, since Berth's long tasks name what they
    wait for, and the hosts that have not answered yet) and, once it ends, how long it took, e.g.
    C(... waiting 20 s: Provision | Wait for SSH - 2 of 4 hosts answered, still catalog-2, catalog-4)
    then C(... took 27.4 s: Provision | Wait for SSH, 4 hosts)."
  - Enable it with C(callbacks_enabled = berth.fleet.timeline) in C(ansible.cfg) (Berth's checkout
    does) or C(ANSIBLE_CALLBACKS_ENABLED=berth.fleet.timeline).
options:
  min_seconds:
    description: Tasks shorter than this are not listed (they still count in their play's time).
    type: float
    default: 0.5
    env:
      - name: BERTH_TIMELINE_MIN_SECONDS
    ini:
      - section: berth_timeline
        key: min_seconds
  waiting_every:
    description:
      - Seconds between two lines about a task that is still running (and the least a task must
        take to be reported when it ends). V(0) turns these lines off.
    type: float
    default: 10
    env:
      - name: BERTH_TIMELINE_WAITING_EVERY
    ini:
      - section: berth_timeline
        key: waiting_every
"""

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ansible.plugins.callback import CallbackBase


@dataclass
class Span:
    name: str
    started: float
    ended: float = 0.0
    hosts: set[str] = field(default_factory=set)
    # hosts that started the task (v2_runner_on_start) and those that answered since
    started_on: set[str] = field(default_factory=set)
    told: int = 0  # waiting lines printed so far

    @property
    def answered(self) -> bool:
        """Every host that started it has answered."""
        return bool(self.ended) and not (self.started_on - self.hosts)

    def close(self, now: float, host: str | None = None) -> None:
        self.ended = max(self.ended, now)
        if host:
            self.hosts.add(host)

    @property
    def seconds(self) -> float:
        return max(self.ended - self.started, 0.0)


@dataclass
class PlaySpan(Span):
    tasks: list[Span] = field(default_factory=list)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "berth.fleet.timeline"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._start = time.monotonic()
        self._plays: list[PlaySpan] = []
        # each task's run (by uuid; an include loaded again, as in a loop of steps, has new uuids)
        self._running: dict[str, Span] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def _every(self) -> float:
        try:
            return float(self.get_option("waiting_every"))
        except KeyError:  # options not loaded (a callback constructed outside a run)
            return 0.0

    def _watch(self) -> None:
        """Every ``waiting_every`` s: the tasks still running that long, and whom they wait for."""
        every = self._every()
        while not self._stop.wait(min(every / 4, 0.25)):
            now = self._now()
            lines = []
            with self._lock:
                for span in list(self._running.values()):
                    if span.told < 0 or span.answered:
                        continue  # reported done, or nothing left to wait for
                    due = int((now - span.started) // every)
                    if due > span.told:
                        span.told = due
                        lines.append(self._waiting_line(span, now))
            for line in lines:
                self._display.display(line)

    @staticmethod
    def _waiting_line(span: Span, now: float) -> str:
        pending = sorted(span.started_on - span.hosts)
        line = f"... waiting {now - span.started:.0f} s: {span.name}"
        if span.started_on:
            line += f" - {len(span.hosts)} of {len(span.started_on)} hosts answered"
            if pending:
                shown = ", ".join(pending[:6]) + (f" and {len(pending) - 6} more" if len(pending) > 6 else "")
                line += f", still {shown}"
        return line

    def _now(self) -> float:
        return time.monotonic() - self._start

    def v2_playbook_on_start(self, playbook: Any) -> None:
        if self._every() > 0 and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="berth-timeline", daemon=True)
            self._watcher.start()

    def v2_playbook_on_play_start(self, play: Any) -> None:
        now = self._now()
        if self._plays:
            self._plays[-1].close(now)
        self._plays.append(PlaySpan(play.get_name().strip() or "(unnamed play)", now))
        with self._lock:
            self._running = {}

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        if not self._plays:
            return
        if task._uuid in self._running:
            return  # the free strategy announces a task again for each host that reaches it
        span = Span(task.get_name().strip(), self._now())
        self._plays[-1].tasks.append(span)
        with self._lock:
            self._running[task._uuid] = span

    v2_playbook_on_handler_task_start = v2_playbook_on_task_start

    def v2_runner_on_start(self, host: Any, task: Any) -> None:
        with self._lock:
            span = self._running.get(task._uuid)
            if span is not None:
                span.started_on.add(host.get_name())

    @staticmethod
    def _took_line(span: Span) -> str:
        count = len(span.hosts)
        return f"... took {span.seconds:.1f} s: {span.name}, {count} host{'s' if count != 1 else ''}"

    def _result(self, result: Any) -> None:
        now = self._now()
        took = ""
        with self._lock:
            span = self._running.get(result._task._uuid)
            if span is not None:
                span.close(now, result._host.get_name())
                if span.told > 0 and span.answered:  # the last host it was said to wait for
                    span.told = -1
                    took = self._took_line(span)
        if took:
            self._display.display(took)
        if self._plays:
            self._plays[-1].close(now)

    def v2_runner_on_ok(self, result: Any) -> None:
        self._result(result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._result(result)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._result(result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._result(result)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        self._stop.set()
        now = self._now()
        if self._plays:
            self._plays[-1].close(now)
        minimum = float(self.get_option("min_seconds"))
        lines = [f"BERTH TIMELINE: {now:.1f} s in all (tasks of {minimum:g} s or more listed)"]
        for play in self._plays:
            lines.append(f"  +{play.started:6.1f} s {play.seconds:6.1f} s  play: {play.name}")
            for task in play.tasks:
                if task.seconds >= minimum:
                    hosts = f" [{len(task.hosts)} host{'s' if len(task.hosts) != 1 else ''}]"
                    lines.append(f"  +{task.started:6.1f} s {task.seconds:6.1f} s    {task.name}{hosts}")
        self._display.display("\n".join(lines))
