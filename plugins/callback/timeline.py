# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a run's time went: every play's wall time and its slow tasks, at the end of the run."""

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
"""

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

    def _now(self) -> float:
        return time.monotonic() - self._start

    def v2_playbook_on_play_start(self, play: Any) -> None:
        now = self._now()
        if self._plays:
            self._plays[-1].close(now)
        self._plays.append(PlaySpan(play.get_name().strip() or "(unnamed play)", now))
        self._running = {}

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        if not self._plays:
            return
        if task._uuid in self._running:
            return  # the free strategy announces a task again for each host that reaches it
        span = Span(task.get_name().strip(), self._now())
        self._plays[-1].tasks.append(span)
        self._running[task._uuid] = span

    v2_playbook_on_handler_task_start = v2_playbook_on_task_start

    def _result(self, result: Any) -> None:
        span = self._running.get(result._task._uuid)
        now = self._now()
        if span is not None:
            span.close(now, result._host.get_name())
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
