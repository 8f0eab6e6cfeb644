# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rollout planning: which instances change, in which batches, and whether it is safe to start.

Pure and deterministic (see docs/rollouts.md):

* an instance needs the rollout when it does not run the target version or is not UP on every
  load balancer (an interrupted rollout leaves such instances behind; a rerun finishes them);
* at most ``max_unavailable`` instances of the service are unavailable at once, counting the ones
  that are already DOWN, and at most a datacenter's budget of that datacenter's instances
  (its share of ``max_unavailable`` rounded up, at least 1, never all of a DC of two or more:
  ``dc_budgets``), each batch sharing ``max_unavailable`` among the DCs by what each has left;
* instances that are already DOWN go first (touching them costs no capacity), then by ordinal,
  which alternates datacenters;
* the preflight refuses a plan whose first batch would exceed a budget given the current state,
  naming the instances that are already down; an estate where nothing is UP (a first deploy) has
  nothing to protect and is deployed in one batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class RolloutError(ValueError):
    """A rollout that must not start; the message says why and what is down."""


@dataclass(frozen=True)
class Member:
    name: str
    dc: str
    ordinal: int
    version: str | None  # None: nothing installed yet
    up: bool  # UP (and in rotation) on every load balancer

    def needs(self, target: str) -> bool:
        return self.version != target or not self.up


@dataclass
class Plan:
    service: str
    target: str
    max_unavailable: int
    dc_budget: dict[str, int]
    batches: list[list[str]] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    first_deploy: bool = False
    repair: bool = False  # only instances already out of rotation are touched

    @property
    def hosts(self) -> list[str]:
        return [name for batch in self.batches for name in batch]

    @property
    def serial(self) -> list[int]:
        """Batch sizes for a play's ``serial`` over ``hosts`` in this order."""
        return [len(batch) for batch in self.batches] or [1]

    def as_dict(self) -> dict[str, object]:
        return {
            "service": self.service,
            "target": self.target,
            "max_unavailable": self.max_unavailable,
            "dc_budget": self.dc_budget,
            "batches": self.batches,
            "hosts": self.hosts,
            "serial": self.serial,
            "up_to_date": self.up_to_date,
            "first_deploy": self.first_deploy,
            "repair": self.repair,
        }


def dc_budgets(members: list[Member], max_unavailable: int) -> dict[str, int]:
    """How many of each datacenter's instances may be unavailable at once: its share of
    ``max_unavailable`` (in proportion to its instances) rounded up, at least 1 so that every DC
    progresses, and for a DC of two or more instances at most all but one, so no DC is emptied.
    The batch's own cap of ``max_unavailable`` keeps the total."""
    per_dc = Counter(m.dc for m in members)
    total = len(members)
    return {
        dc: max(1, min(-(-max_unavailable * count // total), count - 1 if count > 1 else 1))
        for dc, count in sorted(per_dc.items())
    }


def _next_batch(remaining: list[Member], max_unavailable: int, budgets: Mapping[str, int]) -> list[Member]:
    """One batch: instances already DOWN first (they are out anyway), then ``max_unavailable`` shared
    among the DCs in proportion to what each has left to do, one instance at a time to the DC with
    the most left (the largest-remainder apportionment), within each DC's budget. So 40 instances in
    4 DCs at 10 roll in 4 batches of 10 (3+3+2+2, then 2+2+3+3, ...), not 5 of 8."""
    batch: list[Member] = []
    per_dc: Counter[str] = Counter()
    for member in remaining:
        if not member.up and len(batch) < max_unavailable and per_dc[member.dc] < budgets[member.dc]:
            batch.append(member)
            per_dc[member.dc] += 1
    queues: dict[str, list[Member]] = {}
    for member in remaining:
        if member not in batch:
            queues.setdefault(member.dc, []).append(member)
    while len(batch) < max_unavailable:
        open_dcs = [dc for dc, queue in queues.items() if queue and per_dc[dc] < budgets[dc]]
        if not open_dcs:
            break
        dc = min(open_dcs, key=lambda name: (-len(queues[name]), _order(queues[name][0])))
        batch.append(queues[dc].pop(0))
        per_dc[dc] += 1
    return sorted(batch, key=_order)


def plan_rollout(service: str, members: list[Member], target: str, max_unavailable: int) -> Plan:
    if not members:
        raise RolloutError(f"service {service} has no instances in this environment: nothing to deploy")
    if not 1 <= max_unavailable <= len(members):
        raise RolloutError(
            f"max_unavailable for {service} must be between 1 and its {len(members)} instances, "
            f"got {max_unavailable}"
        )
    plan = Plan(service, target, max_unavailable, dc_budgets(members, max_unavailable))
    todo = [m for m in members if m.needs(target)]
    plan.up_to_date = sorted(m.name for m in members if not m.needs(target))
    if not todo:
        return plan
    if not any(m.up for m in members):
        plan.first_deploy = True
        plan.batches = [[m.name for m in sorted(todo, key=_order)]]
        return plan
    if not any(m.up for m in todo):
        # a pure repair (a reconcile, a rerun after instances died): every instance to touch is out
        # of rotation already, so touching them costs no capacity, whatever the budgets say
        plan.repair = True
        plan.batches = [[m.name for m in sorted(todo, key=_order)]]
        return plan
    _refuse_unsafe_start(plan, members)
    remaining = sorted(todo, key=_order)
    while remaining:
        batch = _next_batch(remaining, max_unavailable, plan.dc_budget)
        plan.batches.append([m.name for m in batch])
        remaining = [m for m in remaining if m not in batch]
    return plan


def _order(member: Member) -> tuple[bool, int, str]:
    return (member.up, member.ordinal, member.name)


def _refuse_unsafe_start(plan: Plan, members: list[Member]) -> None:
    """Instances already DOWN count against the budgets: refuse when they alone exceed one."""
    down = sorted(m.name for m in members if not m.up)
    if len(down) > plan.max_unavailable:
        raise RolloutError(
            f"{plan.service}: {len(down)} of {len(members)} instances are already DOWN on the load balancers "
            f"({', '.join(down)}), more than max_unavailable {plan.max_unavailable}: starting would drop the "
            f"service below its minimum of {len(members) - plan.max_unavailable} healthy; repair them first"
        )
    down_per_dc = Counter(m.dc for m in members if not m.up)
    for dc, count in sorted(down_per_dc.items()):
        if count > plan.dc_budget[dc]:
            in_dc = sorted(m.name for m in members if m.dc == dc and not m.up)
            size = sum(1 for m in members if m.dc == dc)
            raise RolloutError(
                f"{plan.service}: {count} of {size} instances in {dc} are already DOWN ({', '.join(in_dc)}), "
                f"more than the datacenter's budget of {plan.dc_budget[dc]}: repair them first"
            )


def members_from_inventory(
    hostvars: Mapping[str, Mapping[str, Any]],
    hosts: list[str],
    lb_hosts: list[str],
    backend: str,
) -> list[dict[str, Any]]:
    """Rollout members from hostvars: each host's current release (``__rollout_current``) and the
    state every load balancer reported (``__rollout_lb`` = lb_info's ``servers``)."""
    members = []
    for host in hosts:
        host_vars = hostvars[host]
        up = True
        for lb in lb_hosts:
            seen = hostvars[lb].get("__rollout_lb", {}).get(backend, {}).get(host)
            up = up and bool(seen and seen.get("in_rotation"))
        members.append(
            {
                "name": host,
                "dc": host_vars["berth_dc"],
                "ordinal": host_vars["berth_instance"],
                "version": host_vars.get("__rollout_current") or "",
                "up": up,
            }
        )
    return members
