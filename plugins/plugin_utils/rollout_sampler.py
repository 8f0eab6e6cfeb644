# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rollout report's sampler: processes of their own that read every load balancer's counters
every 0.2 s while a rollout runs, then write the report next to the journal.

The rollout task that claims the sampler of a run (``rollout_sampling.Sampling``) forks it
(:func:`run_forked`). Forked, not a new interpreter, so that the first read is taken before the
task's first step; apart from the task, so that nothing the task does delays a read (building a
module's payload holds Python's lock for a tenth of a second and more). It forks once more:

- the *readers* (:class:`Readers`): one thread per LB reads the service's backend counters
  (``drivers.haproxy.counters``: one ``show stat`` round trip) through the LB's forwarded Runtime
  API socket - the forward the traffic steps open, never opened or closed here, so the sampler
  cannot race a step for it: until the first step opens it, a read says so and the next one tries
  again. They do nothing else, and import nothing more than they inherited;
- the *writer* (:class:`Writer`) watches the journal and meanwhile imports what the page needs
  (plotly: half a second of Python's lock under load, which would have held the readers up). Once
  the run is no longer ``running`` (or another run took over, or nothing was recorded for
  ``idle_limit`` seconds, or the task closed its end of the pipe: it failed, or it is gone), it
  stops the readers, which read once more and hand their reads over, and writes the report:
  ``<service>.report.json`` (``planner.timeline.build_report``) and ``<service>.report.html``
  (``rollout_page``). What it did (where, how many reads, the first warnings) goes back to the
  task as one line of JSON.

Standard library and the collection's own code only; nothing of Ansible (the forks do not use
what they inherited of it).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import stat
import threading
import time
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.fs import FileLock, atomic_write
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.counters import read_counters
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import UnixSocketTransport
from ansible_collections.berth.fleet.plugins.module_utils.planner import journal as rollout_journal
from ansible_collections.berth.fleet.plugins.module_utils.planner.timeline import build_report
from ansible_collections.berth.fleet.plugins.plugin_utils import rollout_page

INTERVAL = 0.2  # seconds between two reads of one LB (a read late by 0.1 s still leaves no gap over 0.3 s)
READ_TIMEOUT = 1.0  # a read that takes longer fails (and the next one is not held up for long)
WATCH_SECONDS = 0.05  # how often the journal is looked at
HANDOVER_SECONDS = 10.0  # how long the readers may take to hand their reads over once stopped


def report_paths(state_dir: str, service: str, scope: str = "") -> tuple[Path, Path]:
    """Where the report of ``service``'s last rollout (of ``scope``) is: (JSON, HTML), next to its
    journal and named like it (``catalog.report.json``, ``catalog@dc1.report.json``)."""
    journal = rollout_journal.journal_path(state_dir, service, scope)
    return journal.with_name(f"{journal.stem}.report.json"), journal.with_name(f"{journal.stem}.report.html")


class LbReader(threading.Thread):
    """Reads one LB's counters of ``backend`` every ``interval`` until ``stop`` is set."""

    def __init__(self, name: str, socket_path: Path, backend: str, stop: threading.Event, interval: float):
        super().__init__(name=f"rollout-sampler-{name}", daemon=True)
        self.lb, self.socket_path, self.backend = name, socket_path, backend
        self.stop, self.interval = stop, interval
        self.samples: list[dict[str, Any]] = []
        self._backend_id: int | None = None

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.read()
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:  # behind (a slow read): the next read now, and no burst to catch up
                next_at, delay = time.monotonic(), 0.0
            if self.stop.wait(delay):
                return

    def read(self) -> None:
        at = time.time()
        try:
            if not _is_socket(self.socket_path):
                raise OSError("its Runtime API socket is not forwarded (yet): the traffic steps open it")
            transport = UnixSocketTransport(str(self.socket_path), timeout=READ_TIMEOUT)
            counters = read_counters(transport, self.backend, self._backend_id)
        except Exception as exc:  # every failure is a failed read, reported; never the rollout's
            self.samples.append({"t": round(at, 3), "error": str(exc) or type(exc).__name__})
            return
        self._backend_id = counters.backend_id
        self.samples.append({"t": round(at, 3), **counters.as_dict()})


class Readers:
    """Every LB's reader, until told to stop; then one more read each, and all of them."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.stop = threading.Event()
        interval = float(config.get("interval", INTERVAL))
        self.threads = [
            LbReader(lb, Path(path), str(config["backend"]), self.stop, interval)
            for lb, path in sorted(dict(config["lbs"]).items())
        ]

    def run(self, told: int) -> dict[str, list[dict[str, Any]]]:
        for thread in self.threads:
            thread.start()
        while os.read(told, 4096):  # until EOF: the writer has seen the end (or is gone)
            pass
        self.stop.set()
        for thread in self.threads:
            thread.join(READ_TIMEOUT + 1)
            if not thread.is_alive():
                thread.read()  # one read after the end, so the report covers all of it
        return {thread.lb: list(thread.samples) for thread in self.threads}


class Writer:
    """Watches the run's journal, then writes its report from the readers' reads. ``config``:
    ``state_dir``, ``service``, ``run`` (the run's id), ``backend``, ``lbs`` (name -> the local
    path of its forwarded socket), ``interval``, ``idle_limit``."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.where = rollout_journal.where_of(config)
        self.run_id = config["run"]
        self.interval = float(config.get("interval", INTERVAL))
        self.idle_limit = float(config["idle_limit"])
        self.lbs = sorted(dict(config["lbs"]))
        self.warnings: list[str] = []
        self.told = threading.Event()  # the task said stop (it closed its end of the pipe)

    def wait_for_the_end(self) -> None:
        path = rollout_journal.where_path(self.where)
        seen: tuple[int, int, int] | None = None
        moved_at = time.monotonic()
        while not self.told.is_set():
            current = _signature(path)
            if current != seen:
                seen, moved_at = current, time.monotonic()
                journal = rollout_journal.load(path)
                if (journal.get("run") or {}).get("id") != self.run_id:
                    self.warnings.append(f"run {self.run_id} was superseded: sampling stopped")
                    return
                if journal.get("status") != "running":
                    return
            elif time.monotonic() - moved_at > self.idle_limit:
                self.warnings.append(f"nothing was recorded for {self.idle_limit:.0f} s: sampling stopped")
                return
            time.sleep(WATCH_SECONDS)
        self.warnings.append("the rollout task stopped before the run ended: sampling stopped")

    def write(self, samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        """The report of the run, from the journal as the run left it and the samples; the journal
        is read under the report's lock, so a section judged meanwhile (``amend_report``) is either
        in the journal read here or added to this report once it is written."""
        data, _page = report_paths(self.where["state_dir"], self.where["service"], self.where["scope"])
        with report_lock(data):
            return self._write(samples)

    def _write(self, samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        path = rollout_journal.where_path(self.where)
        try:
            journal = rollout_journal.load(path)
        except rollout_journal.JournalError as exc:
            self.warnings.append(f"the journal could not be read at the end: {exc}")
            journal = {}
        if (journal.get("run") or {}).get("id") != self.run_id:
            journal = {**journal, "run": {"id": self.run_id}}  # superseded: only the samples are this run's
        samples = {lb: samples.get(lb, []) for lb in self.lbs}
        report = build_report(journal, samples, self.interval, self.warnings)
        data, page = report_paths(self.where["state_dir"], self.where["service"], self.where["scope"])
        drawn = _write_report(data, page, report)
        return {
            "report": str(data),
            "page": str(page) if drawn else None,
            "reads": {lb: len(taken) for lb, taken in samples.items()},
            "failed_reads": {lb: seen["failed"] for lb, seen in report["coverage"].items()},
            "warnings": report["warnings"],
        }


def report_lock(data: Path) -> FileLock:
    """Held while a report is written or amended (the sampler's writer, ``amend_report``)."""
    data.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return FileLock(data.with_name(f".{data.name}.lock"))


def amend_report(
    state_dir: str, service: str, run_id: Any, target: str, section: str, body: dict[str, Any]
) -> str:
    """A section judged after run ``run_id``'s report was written (a parallel run's verdict, judged
    once the new colour ran; the caller recorded it in the journal first) added to that report, and
    its page made again. The page's path; '' when the report on disk is not that run's - not yet
    written (its writer then reads the section from the journal), or another rollout's - or
    cannot be read."""
    data, page = report_paths(state_dir, service)
    with report_lock(data):
        return _amend(data, page, run_id, target, section, body)


def _amend(data: Path, page: Path, run_id: Any, target: str, section: str, body: dict[str, Any]) -> str:
    try:
        report = json.loads(data.read_text())
    except (OSError, ValueError):
        return ""
    # a run's id counts the runs of one rollout (every rollout's first is 1): the target tells them apart
    if not isinstance(report, dict) or report.get("run") != run_id or report.get("target") != target:
        return ""
    report[section] = body
    return str(page) if _write_report(data, page, report) else ""


def _write_report(data: Path, page: Path, report: dict[str, Any]) -> bool:
    """The report's JSON and its page (whether the page was drawn: with plotly missing or broken
    the data still lands, and no earlier run's page is left beside it)."""
    try:
        text: str | None = rollout_page.render(report)
    except Exception as exc:  # pylint: disable=broad-exception-caught
        report["warnings"] = [*report.get("warnings", []), f"no page: {exc!r}"]
        text = None
    atomic_write(data, rollout_journal.render(report), mode=0o644)
    if text is None:
        page.unlink(missing_ok=True)
        return False
    atomic_write(page, text, mode=0o644)
    return True


def _signature(path: Path) -> tuple[int, int, int]:
    """What changes whenever the journal is written (it is replaced by a rename)."""
    try:
        info = path.stat()
    except OSError:
        return (0, 0, 0)
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _read_all(fd: int, seconds: float) -> bytes:
    """Everything written to the pipe ``fd`` until its writer closes it, for at most ``seconds``."""
    deadline, chunks = time.monotonic() + seconds, list[bytes]()
    while (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    raise TimeoutError(f"no end of the readers' reads within {seconds:.0f} s")


def _run_readers(config: dict[str, Any], told: int, handover: int) -> None:
    """The readers' process, right after its fork (never returns)."""
    code = 0
    try:
        samples = Readers(config).run(told)
        data = json.dumps(samples).encode()
        while data:  # a big handover does not fit the pipe at once
            data = data[os.write(handover, data) :]
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def run_forked(config: dict[str, Any], told: int, answer: int) -> None:
    """The sampler, right after the task's fork (never returns): fork the readers, watch the run,
    write the report, say what it did on ``answer`` (a pipe), exit. ``told`` (a pipe) reaches its
    end when the task says stop."""
    code = 0
    try:
        # a Ctrl-C of ansible-playbook reaches these processes too: they end when the task's end
        # of ``told`` closes; a plain SIGTERM ends them
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        stop_readers, readers_told = os.pipe()
        handover, handed = os.pipe()
        readers = os.fork()
        if readers == 0:
            for fd in (readers_told, handover, told, answer):
                os.close(fd)
            _run_readers(config, stop_readers, handed)
        os.close(stop_readers)
        os.close(handed)
        writer = Writer(config)

        def watch() -> None:
            while os.read(told, 4096):  # until EOF: the task closed it (it failed), or it is gone
                pass
            writer.told.set()

        threading.Thread(target=watch, name="rollout-sampler-told", daemon=True).start()
        with contextlib.suppress(Exception):  # no plotly: no page, which write() says
            rollout_page.preload()  # now, not once the rollout ended
        try:
            writer.wait_for_the_end()
        except Exception as exc:
            writer.warnings.append(f"sampling stopped early: {exc}")
        os.close(readers_told)  # the readers read once more and hand their reads over
        try:
            samples = json.loads(_read_all(handover, HANDOVER_SECONDS) or b"{}")
        except (OSError, ValueError) as exc:
            writer.warnings.append(f"the reads were lost: {exc}")
            samples = {}
            os.kill(readers, signal.SIGKILL)
        os.waitpid(readers, 0)
        try:
            summary = writer.write(samples)
        except Exception as exc:
            summary = {
                "report": None,
                "page": None,
                "warnings": [f"the report could not be written: {exc!r}"],
            }
        warnings = [str(warning) for warning in summary.get("warnings", [])]
        summary["warning_count"], summary["warnings"] = len(warnings), [w[:300] for w in warnings[:3]]
        os.write(answer, json.dumps(summary).encode() + b"\n")
    except BaseException:
        code = 1
    finally:
        os._exit(code)  # nothing of the task's process (atexit, its buffers) runs here
