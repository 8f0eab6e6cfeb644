# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Blue-green: which colour takes the new version, and what a switch leaves behind.

The load balancers' route maps say which colour is live (`drivers/haproxy/routes.py`): that is
the one source of truth, and every LB must say the same. A deploy goes to the other colour, the
idle one; a colour that was live before and is still kept warm (its ``warm_until`` in the colours
record has not passed) is the instant way back, so a deploy of another version onto it is refused
unless the operator says to replace it. A deploy of the version the warm colour already runs is
the switch back itself: nothing to install, only the smoke checks and the switch. A deploy of the
version the live colour already runs (a reconcile, a rerun) stays on the live colour: it repairs
what is out of rotation there, batch by batch within max_unavailable, and switches nothing.

The colours record, ``<state_dir>/rollouts/<service>.colours.json``, keeps the switches (when,
from which colour and version to which, how long the LBs disagreed, why) and the warm deadline.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.fs import (
    JsonFileError,
    read_json_object,
    write_json_object,
)

KEEP_SWITCHES = 50


class BlueGreenError(ValueError):
    """A blue-green deploy that cannot go ahead; nothing was changed."""


@dataclass(frozen=True)
class ColourPlan:
    live: str
    idle: str
    live_version: str  # what the live colour runs ("" when nothing was ever deployed)
    idle_version: str  # what the idle colour runs ("", or "mixed" when its instances differ)
    warm: bool  # the idle colour is the warm previous one
    warm_until: float
    # the live colour already runs the target: the deploy repairs it in place (a reconcile), no switch
    in_place: bool
    routes_now: dict[str, str]
    routes_after: dict[str, str]
    # the colour whose scale_down_delay is over, to retire now (its instances stopped): a run that
    # stays on the live colour retires it; "" when none is due
    retire: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "live": self.live,
            "idle": self.idle,
            "live_version": self.live_version,
            "idle_version": self.idle_version,
            "warm": self.warm,
            "warm_until": self.warm_until,
            "in_place": self.in_place,
            "retire": self.retire,
            "routes_now": self.routes_now,
            "routes_after": self.routes_after,
        }


def colours_path(state_dir: str, service: str) -> Path:
    return Path(state_dir) / "rollouts" / f"{service}.colours.json"


def read_record(state_dir: str, service: str) -> dict[str, Any]:
    path = colours_path(state_dir, service)
    try:
        record = read_json_object(path, "a colours record")
    except JsonFileError as exc:
        raise BlueGreenError(str(exc)) from None
    if record is None:
        return {"service": service, "switches": []}
    if not isinstance(record.get("switches"), list):
        raise BlueGreenError(f"{path}: not a colours record (expected a mapping with a list of switches)")
    return record


def _version_of(members: Sequence[Mapping[str, Any]]) -> str:
    versions = {str(m.get("version") or "") for m in members}
    if len(versions) == 1:
        return versions.pop()
    return "mixed" if versions else ""


def live_colour(colours: Mapping[str, Mapping[str, Any]], maps: Mapping[str, Mapping[str, str]]) -> str:
    """The colour every LB's map sends users to; refuses LBs that disagree or route elsewhere."""
    by_backend = {str(body["backend"]): name for name, body in colours.items()}
    seen = {}
    for lb, routes in sorted(maps.items()):
        backend = routes.get("live", "")
        if backend not in by_backend:
            raise BlueGreenError(
                f"{lb} routes users to {backend or 'nothing'}, not to a colour of the service "
                f"({', '.join(sorted(by_backend))}): configure the load balancers first"
            )
        seen[lb] = by_backend[backend]
    if len(set(seen.values())) > 1:
        raise BlueGreenError(
            "the load balancers disagree on the live colour ("
            + ", ".join(f"{lb}: {colour}" for lb, colour in seen.items())
            + "): a switch was interrupted; playbooks/switch.yml -e service=<service> -e colour=<the one "
            "to serve> sets every LB to one colour"
        )
    if not seen:
        raise BlueGreenError("no load balancer reported a route map")
    return next(iter(seen.values()))


def plan_colours(
    colours: Mapping[str, Mapping[str, Any]],
    members: Mapping[str, Sequence[Mapping[str, Any]]],
    maps: Mapping[str, Mapping[str, str]],
    record: Mapping[str, Any],
    target: str,
    replace_warm: bool,
    now: float | None = None,
    retire: str = "stop",
) -> ColourPlan:
    """Where a deploy of ``target`` goes: the idle colour, and the routes that make it live."""
    now = time.time() if now is None else now
    live = live_colour(colours, maps)
    idle = next(name for name in colours if name != live)
    live_version, idle_version = _version_of(members[live]), _version_of(members[idle])
    warm_until = float(record.get("warm_until") or 0)
    warm = (
        record.get("warm") == idle
        and warm_until > now
        and idle_version not in ("", "mixed")
        and idle_version == record.get("warm_version")
    )
    # every live instance that has a release runs the target: nothing to switch, only to repair
    in_place = {str(m.get("version") or "") for m in members[live]} - {""} == {target}
    if warm and idle_version != target and not replace_warm and not in_place:
        raise BlueGreenError(
            f"{idle} still runs {idle_version}, kept warm until "
            f"{time.strftime('%H:%M:%S', time.localtime(warm_until))} UTC{_offset()} "
            f"({warm_until - now:.0f} s from now) as the instant way back from {live} ({live_version}): "
            f"a deploy of {target} onto it would lose that. Wait until then, roll back "
            "(playbooks/rollback.yml switches back to it), or say -e replace_warm=true to deploy onto it "
            "anyway"
        )
    routes_now = {"live": str(colours[live]["backend"]), "preview": str(colours[idle]["backend"])}
    routes_after = {"live": routes_now["preview"], "preview": routes_now["live"]}
    due = (
        retire == "stop"
        and in_place
        and record.get("warm") == idle
        and warm_until <= now
        and record.get("retired") != idle
        and any(m.get("up") for m in members[idle])
    )
    return ColourPlan(
        live,
        idle,
        live_version,
        idle_version,
        warm,
        warm_until,
        in_place,
        routes_now,
        routes_after,
        idle if due else "",
    )


def _offset() -> str:
    return "" if time.localtime().tm_gmtoff == 0 else f"{time.localtime().tm_gmtoff / 3600:+.0f}"


def _write_record(state_dir: str, service: str, record: dict[str, Any]) -> dict[str, Any]:
    write_json_object(colours_path(state_dir, service), record)
    return record


def record_switch(
    state_dir: str,
    service: str,
    switch: Mapping[str, Any],
    scale_down_delay: float,
    now: float | None = None,
) -> dict[str, Any]:
    """One switch appended to the colours record; the colour it left is warm for the delay."""
    now = time.time() if now is None else now
    record = read_record(state_dir, service)
    entry = {"at": now, **dict(switch)}
    switches = [*record["switches"], entry][-KEEP_SWITCHES:]
    record = {
        "service": service,
        "live": entry["to"],
        "live_version": entry.get("to_version", ""),
        "warm": entry["from"],
        "warm_version": entry.get("from_version", ""),
        "warm_until": now + scale_down_delay,
        "retired": "",
        "switches": switches,
    }
    return _write_record(state_dir, service, record)


def record_retired(state_dir: str, service: str, colour: str, now: float | None = None) -> dict[str, Any]:
    """The warm colour retired (its instances stopped): no switch back to it without a deploy."""
    record = dict(read_record(state_dir, service))
    record.update(retired=colour, retired_at=time.time() if now is None else now, warm="", warm_until=0)
    return _write_record(state_dir, service, record)


def previous_version(record: Mapping[str, Any]) -> str:
    """What the colour before the last switch ran: the version a blue-green rollback returns to."""
    version = str(record.get("warm_version") or "")
    if not version:
        raise BlueGreenError(
            "nothing to roll back to: no switch is on record for this service (a first deploy has no "
            "previous colour)"
        )
    return version
