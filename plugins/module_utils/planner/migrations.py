# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Schema changes during a rollout: expand and contract (issue 14), the rules only.

A release carries migrations (its artifact's ``version.json``: id, phase, file, sha256), each
**expand** (adds what the new release needs and the old one ignores: a column, a table, an index)
or **contract** (removes or tightens what only the old release needed). The service's database
keeps a ledger of what ran (``berth_migrations``: id, phase, sha256, the version that ran it, when).

- Expand runs once, before the first batch: every expand migration of the release the ledger does
  not hold yet, in order.
- Contract is refused while any instance of another version is in rotation on any load balancer:
  the old release may still need what it removes.
- Rollback is refused once a contract migration ran that the target release does not carry: the
  target would meet a schema it was not written for. Roll forward instead.
- A migration that ran is never edited: one whose sha256 differs from the ledger's is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.planner.rollout import reachable_in_inventory

PHASES = ("expand", "contract")


class MigrationError(Exception):
    """A migration that must not run (says why)."""


@dataclass(frozen=True)
class Migration:
    id: str
    phase: str
    sha256: str
    file: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "phase": self.phase, "sha256": self.sha256, "file": self.file}


@dataclass(frozen=True)
class Applied:
    id: str
    phase: str
    sha256: str
    version: str  # the release that ran it
    at: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "id": self.id,
            "phase": self.phase,
            "sha256": self.sha256,
            "version": self.version,
            "at": self.at,
        }


def parse_migrations(raw: Any, where: str) -> tuple[Migration, ...]:
    """A release's migrations as its version.json lists them (``where`` names the artifact)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise MigrationError(f"{where}: migrations: expected a list, got {type(raw).__name__}")
    found = []
    for index, entry in enumerate(raw):
        if not isinstance(entry, Mapping) or not all(
            isinstance(entry.get(k), str) for k in ("id", "phase", "sha256")
        ):
            raise MigrationError(f"{where}: migrations[{index}]: expected id, phase and sha256")
        if entry["phase"] not in PHASES:
            raise MigrationError(
                f"{where}: migrations[{index}].phase: expected expand or contract, got {entry['phase']!r}"
            )
        found.append(Migration(entry["id"], entry["phase"], entry["sha256"], str(entry.get("file", ""))))
    return tuple(found)


def parse_ledger(raw: Any) -> tuple[Applied, ...]:
    return tuple(
        Applied(
            str(row["id"]), str(row["phase"]), str(row["sha256"]), str(row["version"]), str(row.get("at", ""))
        )
        for row in raw or []
    )


def _check_unchanged(release: Sequence[Migration], ledger: Sequence[Applied]) -> None:
    ran = {applied.id: applied for applied in ledger}
    for migration in release:
        applied = ran.get(migration.id)
        if applied is not None and applied.sha256 != migration.sha256:
            raise MigrationError(
                f"migration {migration.id} changed since {applied.version} ran it (sha256 "
                f"{applied.sha256[:12]} then, {migration.sha256[:12]} now): a migration that ran is never "
                "edited; add a new one"
            )


def pending(release: Sequence[Migration], ledger: Sequence[Applied], phase: str) -> list[Migration]:
    """What of the release's ``phase`` has not run yet, in order. Contract needs every expand first."""
    if phase not in PHASES:
        raise MigrationError(f"phase: expected expand or contract, got {phase!r}")
    _check_unchanged(release, ledger)
    ran = {applied.id for applied in ledger}
    if phase == "contract":
        missing = [m.id for m in release if m.phase == "expand" and m.id not in ran]
        if missing:
            raise MigrationError(
                f"contract refused: the release's expand migration(s) {', '.join(missing)} have not run "
                "(a deploy of the release runs them first)"
            )
    return [m for m in release if m.phase == phase and m.id not in ran]


def contract_refusal(version: str, in_rotation: Mapping[str, Mapping[str, str]]) -> str | None:
    """Why a contract of ``version`` may not run now, if it may not: ``in_rotation`` is, per load
    balancer, each instance it sends requests to and the version that instance runs."""
    others: dict[str, list[str]] = {}
    for lb, servers in sorted(in_rotation.items()):
        for instance, running in sorted(servers.items()):
            if running != version:
                others.setdefault(f"{instance} ({running or 'unknown version'})", []).append(lb)
    if not others:
        return None
    shown = "; ".join(f"{who} on {', '.join(lbs)}" for who, lbs in sorted(others.items()))
    return (
        f"contract of {version} refused: an instance of another version is still in rotation ({shown}): "
        "it may need what the contract removes; finish the rollout to "
        f"{version} first"
    )


def rollback_refusal(
    target: str, target_release: Sequence[Migration], ledger: Sequence[Applied], verb: str = "rollback"
) -> str | None:
    """Why a rollback to ``target`` (or any deploy of it: ``verb``) may not run, if it may not: a
    contract migration ran that the target release does not carry."""
    carried = {m.id for m in target_release}
    contracted = [a for a in ledger if a.phase == "contract" and a.id not in carried]
    if not contracted:
        return None
    shown = ", ".join(f"{a.id} (run by {a.version}{' at ' + a.at if a.at else ''})" for a in contracted)
    return (
        f"{verb} of {target} refused: contract migration(s) {shown} changed the schema {target} was "
        "written for; roll forward to a release that carries them instead"
    )


def in_rotation_from_inventory(
    hostvars: Mapping[str, Mapping[str, Any]],
    hosts: Sequence[str],
    lb_hosts: Sequence[str],
    backends: Sequence[str],
) -> dict[str, dict[str, str]]:
    """Per load balancer, each instance of ``hosts`` it sends requests to (in any of ``backends``)
    and the version that instance runs, from what the deploy's query registered (every LB's
    ``loadbalancer_result.servers``, every instance's ``__rollout_release``)."""
    found: dict[str, dict[str, str]] = {}
    for lb in lb_hosts:
        servers = (hostvars[lb].get("loadbalancer_result") or {}).get("servers") or {}
        for backend in backends:
            for host, seen in (servers.get(backend) or {}).items():
                if host in hosts and isinstance(seen, Mapping) and seen.get("in_rotation"):
                    release = hostvars[host].get("__rollout_release") or {}
                    found.setdefault(lb, {})[host] = str(release.get("current") or "")
    return found


def runner(hostvars: Mapping[str, Mapping[str, Any]], hosts: Sequence[str]) -> str:
    """The instance node a service's migrations run from: the first of ``hosts`` (sorted) that the
    deploy's query reached (a lost machine cannot run them), else the first; '' when the service
    has no database (its instances carry no ``berth_database``)."""
    ordered = sorted(hosts)
    if not ordered or hostvars[ordered[0]].get("berth_database") is None:
        return ""
    return (reachable_in_inventory(hostvars, ordered) or ordered)[0]
