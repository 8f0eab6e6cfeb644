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
  nothing to protect and is deployed in one batch;
* a run scoped to one datacenter (a per-DC reconcile: one job per DC's execution node, two at
  once) touches only that DC's instances, and only ones already out of rotation: those cost no
  capacity, so two DCs' scoped runs can overlap without sharing a budget. A scoped run that would
  take a serving instance out of rotation is refused (the service's budget is one for all DCs: that
  is a run for the whole service).
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


@dataclass(frozen=True)
class Step:
    """One traffic step on every load balancer, then one instance step on the batch it names.

    On every LB at once: ``ready`` (the batch cycled in the step before) back in rotation and UP,
    then ``drain`` out of rotation, then wait until ``wait_drained`` holds no session. Then each
    instance of ``cycle`` is stopped, switched, started and gated. ``early`` is the next batch,
    drained in this step already (it is part of ``drain``) so that its requests finish while this
    batch is cycled: the planner only does that when both batches fit within ``max_unavailable``
    and every DC's budget.
    """

    ready: list[str]
    drain: list[str]
    wait_drained: list[str]
    cycle: list[str]
    early: list[str]

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "ready": self.ready,
            "drain": self.drain,
            "wait_drained": self.wait_drained,
            "cycle": self.cycle,
            "early": self.early,
        }


@dataclass
class Plan:
    service: str
    target: str
    max_unavailable: int
    dc_budget: dict[str, int]
    batch_size: int = 0  # 0: max_unavailable
    batches: list[list[str]] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
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
            "batch_size": self.batch_size or self.max_unavailable,
            "batches": self.batches,
            "steps": [step.as_dict() for step in self.steps],
            "overlap": any(step.early for step in self.steps),
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


def plan_rollout(
    service: str,
    members: list[Member],
    target: str,
    max_unavailable: int,
    batch_size: int = 0,
    datacenter: str = "",
) -> Plan:
    """The batches and traffic steps of a rollout; ``batch_size`` (default ``max_unavailable``)
    caps a batch below ``max_unavailable``, which leaves room to drain the next batch early.
    ``datacenter`` scopes it to that DC's instances (``members`` are still all of the service's:
    whether anything serves is the service's question)."""
    if not members:
        raise RolloutError(f"service {service} has no instances in this environment: nothing to deploy")
    if not 1 <= max_unavailable <= len(members):
        raise RolloutError(
            f"max_unavailable for {service} must be between 1 and its {len(members)} instances, "
            f"got {max_unavailable}"
        )
    if not 0 <= batch_size <= max_unavailable:
        raise RolloutError(
            f"batch_size for {service} must be between 1 and max_unavailable {max_unavailable} "
            f"(or 0 for max_unavailable), got {batch_size}"
        )
    if datacenter and all(m.dc != datacenter for m in members):
        dcs = ", ".join(sorted({m.dc for m in members}))
        raise RolloutError(f"datacenter {datacenter!r}: {service} has no instances there (it runs in {dcs})")
    plan = Plan(service, target, max_unavailable, dc_budgets(members, max_unavailable), batch_size)
    plan.batches = _scoped_batches(plan, members, datacenter) if datacenter else _batches(plan, members)
    plan.steps = traffic_steps(plan, {m.name: m.dc for m in members})
    return plan


def _batches(plan: Plan, members: list[Member]) -> list[list[str]]:
    target, max_unavailable = plan.target, plan.max_unavailable
    todo = [m for m in members if m.needs(target)]
    plan.up_to_date = sorted(m.name for m in members if not m.needs(target))
    if not todo:
        return []
    if not any(m.up for m in members):
        plan.first_deploy = True
        return [[m.name for m in sorted(todo, key=_order)]]
    if not any(m.up for m in todo):
        # a pure repair (a reconcile, a rerun after instances died): every instance to touch is out
        # of rotation already, so touching them costs no capacity, whatever the budgets say
        plan.repair = True
        return [[m.name for m in sorted(todo, key=_order)]]
    _refuse_unsafe_start(plan, members)
    batches = []
    remaining = sorted(todo, key=_order)
    while remaining:
        batch = _next_batch(remaining, plan.batch_size or max_unavailable, plan.dc_budget)
        batches.append([m.name for m in batch])
        remaining = [m for m in remaining if m not in batch]
    return batches


def _scoped_batches(plan: Plan, members: list[Member], datacenter: str) -> list[list[str]]:
    """A run limited to ``datacenter``: its instances that need the target, all already out of
    rotation, in one batch (a repair); anything else is for a run of the whole service."""
    mine = [m for m in members if m.dc == datacenter]
    todo = sorted((m for m in mine if m.needs(plan.target)), key=_order)
    plan.up_to_date = sorted(m.name for m in mine if not m.needs(plan.target))
    serving = [m.name for m in todo if m.up]
    if serving:
        verb, them = ("is", "it") if len(serving) == 1 else ("are", "them")
        raise RolloutError(
            f"{plan.service} in {datacenter}: {', '.join(serving)} {verb} in rotation on every load balancer "
            f"but not on {plan.target}: rolling {them} takes capacity out of "
            f"rotation, and the service's max_unavailable ({plan.max_unavailable}) is one budget for all "
            "its datacenters. A run scoped to a datacenter only repairs instances already out of "
            "rotation: run it without datacenter= (one job for the whole service); nothing was changed"
        )
    if not todo:
        return []
    plan.first_deploy = not any(m.up for m in members)
    plan.repair = not plan.first_deploy
    return [[m.name for m in todo]]


def traffic_steps(plan: Plan, dc_of: Mapping[str, str]) -> list[Step]:
    """The steps of a plan's batches: each readies the previous batch, drains its own (and the
    next one early where both fit within max_unavailable and the DC budgets), and cycles it; a
    last step readies the last batch."""
    steps = []
    batches = plan.batches
    for index, batch in enumerate(batches):
        following = batches[index + 1] if index + 1 < len(batches) else []
        early = following if following and _fits_together(plan, batch + following, dc_of) else []
        previous = batches[index - 1] if index else []
        steps.append(Step(list(previous), batch + early, list(batch), list(batch), list(early)))
    if batches:
        steps.append(Step(list(batches[-1]), [], [], [], []))
    return steps


def _fits_together(plan: Plan, hosts: list[str], dc_of: Mapping[str, str]) -> bool:
    if plan.first_deploy or plan.repair or len(hosts) > plan.max_unavailable:
        return False
    per_dc = Counter(dc_of[host] for host in hosts)
    return all(count <= plan.dc_budget[dc] for dc, count in per_dc.items())


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
    """Rollout members from hostvars: each host's current release (its registered release query,
    ``__rollout_release``) and the state every load balancer reported (its registered
    ``loadbalancer_result``: lb_config's ``servers``)."""
    members = []
    for host in hosts:
        host_vars = hostvars[host]
        up = True
        for lb in lb_hosts:
            servers = (hostvars[lb].get("loadbalancer_result") or {}).get("servers") or {}
            seen = servers.get(backend, {}).get(host)
            up = up and bool(seen and seen.get("in_rotation"))
        members.append(
            {
                "name": host,
                "dc": host_vars["berth_dc"],
                "ordinal": host_vars["berth_instance"],
                "version": (host_vars.get("__rollout_release") or {}).get("current") or "",
                "up": up,
            }
        )
    return members


def reachable_in_inventory(hostvars: Mapping[str, Mapping[str, Any]], hosts: list[str]) -> list[str]:
    """The hosts whose release query (``__rollout_release``) ran and reached them: a lost machine
    answers nothing, and the plan treats it as DOWN with nothing installed."""
    return [
        host
        for host in hosts
        if isinstance(query := hostvars[host].get("__rollout_release"), Mapping)
        and not query.get("unreachable")
        and not query.get("skipped")
    ]
