# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One load balancer's part of a parallel run, as ``berth.fleet.parallel_run`` drives it: start
``berth-mirror@<service>`` with a configuration for this run, wait until it has judged enough
copies (or the time is up), stop it, and return what it found with HAProxy's own count of copies
it could not hand over (``DroppedLogs``, counted from the start of the run)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.fs import read_json_object, write_json_object
from ansible_collections.berth.fleet.plugins.module_utils.common.systemd import Systemctl, SystemdError
from ansible_collections.berth.fleet.plugins.module_utils.drivers.mirror.daemon import (
    MirrorConfig,
    MirrorConfigError,
    config_for,
    results_for,
    socket_for,
    unit_name,
)

STATES = ("started", "finished", "stopped")
Transport = Callable[[str], str]  # a Runtime API command -> its answer


class MirrorRunError(Exception):
    """The parallel run could not be started, read or stopped here; the message says why."""


@dataclass(frozen=True)
class RunRequest:
    service: str
    state: str
    run_id: str = ""
    primary: str = ""
    secondary: str = ""
    candidate: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)  # the service's parallel_run
    min_requests: int = 0
    max_seconds: float = 300.0
    poll: float = 1.0

    def problems(self) -> list[str]:
        found = []
        if self.state not in STATES:
            found.append(f"state: expected one of {', '.join(STATES)}, got {self.state!r}")
        if self.state == "started":
            for key in ("run_id", "primary", "secondary", "candidate"):
                if not getattr(self, key):
                    found.append(f"{key}: required to start a parallel run")
            if not found:
                try:
                    self.mirror_config()
                except MirrorConfigError as exc:
                    found.append(str(exc))
        if self.state == "finished" and (self.min_requests < 1 or self.max_seconds <= 0):
            found.append("min_requests and max_seconds: expected a count of at least 1 and seconds above 0")
        return found

    def config(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "run_id": self.run_id,
            "socket": socket_for(self.service),
            "results": results_for(self.service),
            "primary": self.primary,
            "secondary": self.secondary,
            "candidate": self.candidate,
            "compare": dict(self.settings.get("compare") or {}),
            "queue": int(self.settings.get("queue", 1000)),
            "timeout": float(self.settings.get("timeout", 2.0)),
        }

    def mirror_config(self) -> MirrorConfig:
        return MirrorConfig.from_mapping(self.config())


def dropped_logs(transport: Transport) -> int:
    for line in transport("show info").splitlines():
        if line.startswith("DroppedLogs:"):
            return int(line.split(":", 1)[1].strip() or 0)
    return 0


class MirrorRun:
    def __init__(
        self,
        systemctl: Systemctl,
        transport: Transport,
        *,
        root: Path = Path("/"),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.systemctl, self.transport, self.root = systemctl, transport, root
        self.clock, self.sleep = clock, sleep

    def _path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def _active(self, service: str) -> bool:
        return self.systemctl.state(unit_name(service)).active_state in ("active", "activating", "reloading")

    def results(self, service: str, run_id: str) -> dict[str, Any] | None:
        """This run's results as the mirror last wrote them (None before it wrote any)."""
        try:
            found = read_json_object(self._path(results_for(service)), "the parallel run's results")
        except (OSError, ValueError):
            return None
        if found is None or (run_id and found.get("run_id") != run_id):
            return None
        return found

    def start(self, request: RunRequest, check_mode: bool) -> dict[str, Any]:
        """The mirror running with this run's configuration: written, and (re)started when it
        changed or the unit is not running. A run already going with this configuration is left alone."""
        config = dict(request.config())
        path = self._path(config_for(request.service))
        existing = read_json_object(path, "the parallel run's configuration") if path.exists() else None
        kept = {k: v for k, v in (existing or {}).items() if k != "dropped_logs_at_start"}
        same = existing is not None and kept == config
        if same and self._active(request.service):
            return {"changed": False, "msg": f"{unit_name(request.service)} already runs {request.run_id}"}
        if check_mode:
            return {"changed": True, "msg": f"would start {unit_name(request.service)} for {request.run_id}"}
        config["dropped_logs_at_start"] = dropped_logs(self.transport)
        write_json_object(path, config)
        unit = unit_name(request.service)
        try:
            self.systemctl.stop(unit)
            # an earlier run's results (a rerun has the same run_id) are never this one's
            self._path(results_for(request.service)).unlink(missing_ok=True)
            seconds = self.systemctl.start(unit)
        except SystemdError as exc:
            raise MirrorRunError(f"{unit} did not start: {exc}; {self._said(unit)}") from None
        deadline = self.clock() + 10
        while self.results(request.service, request.run_id) is None:
            if self.clock() > deadline or not self._active(request.service):
                raise MirrorRunError(f"{unit} started but wrote no results within 10 s; {self._said(unit)}")
            self.sleep(0.1)
        return {"changed": True, "msg": f"{unit} runs {request.run_id} (started in {seconds} s)"}

    def _said(self, unit: str) -> str:
        lines = self.systemctl.last_lines(unit)
        return "its last log lines: " + " | ".join(lines) if lines else "it logged nothing"

    def finish(self, request: RunRequest, check_mode: bool) -> dict[str, Any]:
        """Waits until this LB's mirror judged ``min_requests`` copies or ``max_seconds`` passed,
        then stops it and returns its last results."""
        if check_mode:
            return {"changed": False, "skipped": True, "msg": "check mode: it judges live traffic"}
        started = self.clock()
        deadline = started + request.max_seconds
        while True:
            found = self.results(request.service, request.run_id)
            if found is None and not self._active(request.service):
                raise MirrorRunError(
                    f"{unit_name(request.service)} is not running {request.run_id or 'a parallel run'}; "
                    f"{self._said(unit_name(request.service))}"
                )
            judged = int(found.get("requests", 0)) if found else 0
            if judged >= request.min_requests or self.clock() >= deadline:
                break
            self.sleep(request.poll)
        waited = round(self.clock() - started, 1)
        result = self.stop(request, check_mode=False)
        result["waited"] = waited
        result["enough"] = int(result["found"].get("requests", 0)) >= request.min_requests
        return result

    def stop(self, request: RunRequest, check_mode: bool) -> dict[str, Any]:
        """The mirror stopped (its last results written as it stops), and those results."""
        unit = unit_name(request.service)
        active = self._active(request.service)
        if active and not check_mode:
            self.systemctl.stop(unit)
        results = self.results(request.service, request.run_id) or {}
        if results:
            path = self._path(config_for(request.service))
            config = read_json_object(path, "the parallel run's configuration") if path.exists() else None
            at_start = int((config or {}).get("dropped_logs_at_start", 0))
            try:
                results["haproxy_dropped"] = max(0, dropped_logs(self.transport) - at_start)
            except OSError:
                results["haproxy_dropped"] = None
        return {"changed": active, "found": results}

    def run(self, request: RunRequest, check_mode: bool) -> dict[str, Any]:
        problems = request.problems()
        if problems:
            raise MirrorRunError("; ".join(problems))
        if request.state == "started":
            return self.start(request, check_mode)
        if request.state == "finished":
            return self.finish(request, check_mode)
        return self.stop(request, check_mode)
