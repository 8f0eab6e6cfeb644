# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Placement: the logical topology becomes a physical one.

Rules (see docs/placement.md):

* one instance per node: every instance gets its own VM / nspawn machine / bare-metal host,
  except in an environment that allows colocation, where the instances placed on a machine share
  that machine's single node and listen on consecutive ports;
* instances of a service spread across datacenters (least-loaded datacenter first, within
  ``max_skew``) and across machines (no two instances of a service on one machine without
  colocation); a bare-metal host carries exactly one instance;
* capacity (vCPU, MiB) is respected;
* deterministic and stable: instances are placed in the order (ordinal, service), so an
  instance's placement depends only on instances with a lower ordinal or an earlier service; and
  each service walks a datacenter's machines in its own rotation (starting at its declaration
  index), never by the load other services put on them, so while capacity is ample scaling a
  service moves no instance of another. Scaling a service from 4 to 6 keeps instances 1-4 where
  they were; scaling down removes the highest ordinals;
* addresses come from the datacenter's pool: each service owns a block of ``block_size``
  addresses (blocks in service declaration order) and an instance takes the slot of its rank
  among the service's instances in that datacenter, so scaling never renumbers anyone.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from ansible_collections.berth.fleet.plugins.module_utils.model.database import clusters
from ansible_collections.berth.fleet.plugins.module_utils.model.names import check_generated_names, node_name
from ansible_collections.berth.fleet.plugins.module_utils.model.topology import (
    COLOURS,
    KIND_FOR_SUBSTRATE,
    TRACKS,
    DatabaseCluster,
    Datacenter,
    HealthCheck,
    Instance,
    Machine,
    Member,
    Placement,
    Resources,
    Service,
    SpecError,
    Strategy,
    Topology,
    some,
)

MAX_PORT = 65535


@dataclass
class _MachineState:
    machine: Machine
    index_in_dc: int
    used_vcpus: int = 0
    used_memory_mib: int = 0
    total: int = 0
    per_service: Counter[str] = field(default_factory=Counter)

    def fits(self, need: Resources) -> bool:
        capacity = self.machine.capacity
        return (
            self.used_vcpus + need.vcpus <= capacity.vcpus
            and self.used_memory_mib + need.memory_mib <= capacity.memory_mib
        )

    def take(self, service: Service) -> None:
        self.used_vcpus += service.resources.vcpus
        self.used_memory_mib += service.resources.memory_mib
        self.total += 1
        self.per_service[service.name] += 1

    def room(self, need: Resources) -> float:
        """How many more such instances would fit (the closest to fitting, when none does)."""
        capacity = self.machine.capacity
        return min(
            (capacity.vcpus - self.used_vcpus) / need.vcpus,
            (capacity.memory_mib - self.used_memory_mib) / need.memory_mib,
        )

    def free(self) -> str:
        capacity = self.machine.capacity
        return (
            f"{self.machine.name} {capacity.vcpus - self.used_vcpus}/{capacity.vcpus} vCPU "
            f"{capacity.memory_mib - self.used_memory_mib}/{capacity.memory_mib} MiB free"
        )


class _Shelf:
    """The machines of one kind in one datacenter, which each service walks in its own rotation.

    Service number *i* (declaration order) starts at machine *i* and goes round. Its choice never
    looks at the load other services put on a machine, only at whether the machine can take it,
    so with room everywhere scaling one service moves no instance of another. A cursor per service
    steps past, for good, the machines that can never take it again (use only grows, and without
    colocation a machine that runs the service is done with it): choosing a machine costs the
    machines skipped, not a scan of the datacenter, so 10,000 machines place in seconds.
    """

    def __init__(self, states: list[_MachineState]) -> None:
        self.states = states
        self.steps: Counter[str] = Counter()  # service -> machines of its rotation stepped past

    def rotation(self, offset: int) -> list[_MachineState]:
        cut = offset % len(self.states) if self.states else 0
        return self.states[cut:] + self.states[:cut]

    def walk(
        self, service: Service, offset: int, eligible: Callable[[_MachineState], bool]
    ) -> _MachineState | None:
        """The first machine of the service's rotation that can take it (eligibility never returns)."""
        count = len(self.states)
        while self.steps[service.name] < count:
            state = self.states[(offset + self.steps[service.name]) % count]
            if eligible(state):
                return state
            self.steps[service.name] += 1
        return None

    def least_of(self, service: Service, offset: int) -> _MachineState | None:
        """Colocation: the machine with the fewest instances of the service, then rotation order."""
        candidates = [s for s in self.rotation(offset) if s.fits(service.resources)]
        return min(candidates, key=lambda s: s.per_service[service.name], default=None)


class _Placer:
    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.shelves: dict[tuple[str, str], _Shelf] = {}
        for dc in topology.datacenters:
            for kind in ("hypervisor", "metal", "local"):
                states = [_MachineState(m, i) for i, m in enumerate(dc.machines) if m.kind == kind]
                self.shelves[(dc.name, kind)] = _Shelf(states)
        self.per_dc: dict[str, Counter[str]] = defaultdict(Counter)  # service -> dc -> count
        self.usable_cache: dict[tuple[str, Resources], int] = {}
        self.by_kind: dict[str, list[Machine]] = defaultdict(list)
        for machine in topology.machines:
            self.by_kind[machine.kind].append(machine)
        self.offset = {s.name: index for index, s in enumerate(topology.services)}
        self.declared = {dc.name: index for index, dc in enumerate(topology.datacenters)}

    def fail(self, service: str, expected: str) -> SpecError:
        return SpecError(self.topology.source, f"environment.services.{service}.instances", expected)

    def precheck(self, service: Service, count: int, own_node: bool = False) -> None:
        """Reject counts no placement can satisfy, with the capacity that exists (``own_node``: a
        database or etcd member, never colocated)."""
        if not count:
            return
        kind = KIND_FOR_SUBSTRATE[service.substrate]
        eligible = self.by_kind[kind]
        if not eligible:
            raise self.fail(
                service.name,
                f"{count} instance(s) with substrate {service.substrate} need a {kind} machine, "
                "and the estate declares none",
            )
        usable = self._usable(kind, service.resources)
        if not usable:
            raise self.fail(
                service.name,
                f"each instance needs {service.resources.vcpus} vCPU / {service.resources.memory_mib} MiB; "
                f"no {kind} machine is that large ({some([m.name for m in eligible])})",
            )
        one_per_machine = kind == "metal" or not self.topology.colocation or own_node
        if one_per_machine and count > usable:
            reason = (
                "a bare-metal host carries exactly one instance"
                if kind == "metal"
                else "environment.colocation is false, so no two instances of a service share a machine"
            )
            raise self.fail(
                service.name, f"{count} instances but only {usable} usable {kind} machine(s): {reason}"
            )

    def _usable(self, kind: str, need: Resources) -> int:
        """How many machines of a kind could hold one such instance (cached: few distinct shapes)."""
        if (kind, need) not in self.usable_cache:
            self.usable_cache[(kind, need)] = sum(1 for m in self.by_kind[kind] if _fits(m.capacity, need))
        return self.usable_cache[(kind, need)]

    def precheck_parts(self, service: Service, strategy: Strategy, count: int) -> None:
        """The extra instances of a blue-green or canary service fit too, or the strategy is refused."""
        try:
            self.precheck(service, count)
        except SpecError as exc:
            extra = (
                f"a second colour of {count // 2} instance(s)"
                if strategy.kind == "blue_green"
                else " and ".join(f"a {track} instance" for track in strategy.tracks[1:])
            )
            raise SpecError(
                self.topology.source,
                f"environment.services.{service.name}.strategy",
                f"{strategy.kind} needs {extra} of {service.name} on machines of their own, and the "
                f"estate has no room for it: {exc.expected}",
            ) from None

    def place(
        self, service: Service, ordinal: int, part: str = "", own_node: bool = False
    ) -> tuple[str, _MachineState]:
        kind = KIND_FOR_SUBSTRATE[service.substrate]
        # each colour of a blue-green service (each track of a canary one) is spread on its own
        counts = self.per_dc[f"{service.name}/{part}" if part else service.name]
        dc_order = sorted(self.topology.datacenters, key=lambda dc: (counts[dc.name], self.declared[dc.name]))
        skipped: list[str] = []
        for dc in dc_order:
            after = Counter(counts)
            after[dc.name] += 1
            skew = max(after.values()) - min(after[d.name] for d in self.topology.datacenters)
            skew_ok = (
                skew <= self.topology.spread.max_skew or self.topology.spread.when_unsatisfiable != "fail"
            )
            chosen = self._choose(dc.name, service, kind, own_node) if skew_ok else None
            if chosen is None:
                if not skew_ok:
                    break
                skipped.append(self._why_full(dc, service, kind))
                continue
            counts[dc.name] += 1
            chosen.take(service)
            return dc.name, chosen
        spread = ", ".join(f"{d.name}: {counts[d.name]}" for d in self.topology.datacenters)
        raise self.fail(
            service.name,
            f"cannot place {service.name}-{ordinal} "
            f"(needs {service.resources.vcpus} vCPU / {service.resources.memory_mib} MiB on a {kind}) "
            f"within spread max_skew {self.topology.spread.max_skew} "
            f"(instances per datacenter so far: {spread}); "
            f"available: {'; '.join(skipped) or 'no datacenter keeps the skew'}",
        )

    def _choose(
        self, dc_name: str, service: Service, kind: str, own_node: bool = False
    ) -> _MachineState | None:
        shelf = self.shelves[(dc_name, kind)]
        offset = self.offset[service.name]
        if kind == "metal":
            return shelf.walk(service, offset, lambda s: s.total == 0 and s.fits(service.resources))
        if self.topology.colocation and not own_node:
            return shelf.least_of(service, offset)
        return shelf.walk(
            service, offset, lambda s: s.per_service[service.name] == 0 and s.fits(service.resources)
        )

    def _why_full(self, dc: Datacenter, service: Service, kind: str) -> str:
        """One line per datacenter however large: how many machines, why none fits, the roomiest."""
        states = self.shelves[(dc.name, kind)].states
        if not states:
            return f"{dc.name} has no {kind}"
        if kind == "metal":
            reason, taken = "already carry an instance", [bool(s.total) for s in states]
        else:
            reason = f"already run {service.name}"
            taken = [not self.topology.colocation and bool(s.per_service[service.name]) for s in states]
        others = [s for s, busy in zip(states, taken, strict=True) if not busy]
        summary = f"{dc.name}: {len(states)} {kind}(s)"
        if len(others) < len(states):
            summary += f", {len(states) - len(others)} {reason}"
        if not others:
            return summary
        roomiest = max(others, key=lambda s: s.room(service.resources))
        return f"{summary}, the roomiest of the others: {roomiest.free()}"


def _fits(capacity: Resources, need: Resources) -> bool:
    return need.vcpus <= capacity.vcpus and need.memory_mib <= capacity.memory_mib


def place(topology: Topology) -> Placement:
    """Place every instance of every service; raise SpecError naming what cannot be satisfied."""
    placer = _Placer(topology)
    counts = {s.name: topology.policies[s.name].instances for s in topology.services}
    parts = {s.name: topology.policies[s.name].strategy.parts(counts[s.name]) for s in topology.services}
    for service in topology.services:
        placer.precheck(service, counts[service.name])
        if parts[service.name]:
            # a blue-green service has a second colour of as many instances, a canary service the
            # canary and its baseline, on machines of their own
            counts[service.name] = len(parts[service.name])
            placer.precheck_parts(service, topology.policies[service.name].strategy, counts[service.name])
    chosen: list[tuple[Service, int, str, _MachineState, str]] = []
    for ordinal in range(1, max(counts.values(), default=0) + 1):
        for service in topology.services:
            if ordinal <= counts[service.name]:
                part = parts[service.name][ordinal - 1] if parts[service.name] else ""
                dc_name, state = placer.place(service, ordinal, part)
                chosen.append((service, ordinal, dc_name, state, part))
    found = clusters(topology)
    instances = tuple(_realise(topology, chosen))
    taken = {instance.address: instance.name for instance in instances}
    placement = Placement(topology, instances, _place_members(topology, placer, found, taken), found)
    check_generated_names(placement)
    return placement


def _as_service(cluster: DatabaseCluster) -> Service:
    """A cluster as the placer sees a service: its members' resources, substrate and port."""
    return Service(
        cluster.name, "", "", cluster.port, HealthCheck("/", 200), cluster.resources, cluster.substrate
    )


def _place_members(
    topology: Topology,
    placer: _Placer,
    found: tuple[DatabaseCluster, ...],
    taken: dict[ipaddress.IPv4Address, str],
) -> tuple[Member, ...]:
    """Every member of every cluster on a node of its own, by the instances' rules (spread within
    ``max_skew``, one member of a cluster per machine, capacity), after every instance: a cluster
    never moves an instance. Its addresses are the block after the services' blocks (clusters in
    ``database.clusters`` order), so adding a database renumbers no instance."""
    members: list[Member] = []
    for index, cluster in enumerate(found):
        service = _as_service(cluster)
        placer.offset[cluster.name] = len(topology.services) + index
        try:
            placer.precheck(service, cluster.members, own_node=True)
            chosen = [
                placer.place(service, ordinal, own_node=True) for ordinal in range(1, cluster.members + 1)
            ]
        except SpecError as exc:
            what = (
                "etcd (Patroni's store)" if cluster.kind == "dcs" else f"the database cluster {cluster.name}"
            )
            raise SpecError(
                topology.source,
                cluster.key,
                f"{what} needs {cluster.members} member(s) on nodes of their own, and the estate has no "
                f"room for it: {exc.expected}",
            ) from None
        rank_in_dc: Counter[str] = Counter()
        for ordinal, (dc_name, state) in enumerate(chosen, start=1):
            dc, machine = topology.datacenter(dc_name), state.machine
            name = f"{cluster.name}-{ordinal}"
            if machine.address is not None:  # bare metal: the host is the node
                node, address = machine.name, machine.address
            else:
                rank = rank_in_dc[dc_name]
                rank_in_dc[dc_name] += 1
                _check_block(topology, dc, rank, cluster.name)
                node = node_name(topology, name)
                block = (len(topology.services) + index) * dc.pool.block_size
                address = _slot(topology, dc, block + rank, f"{cluster.kind} member {name}")
                if address in taken:  # colocated machines' nodes take the first slots of a DC
                    raise SpecError(
                        topology.source,
                        f"estate.datacenters.{dc_name}.address_pool.block_size",
                        f"{name} would take {address}, the address of {taken[address]}: expected a "
                        "larger block_size",
                    )
            members.append(
                Member(
                    cluster.name,
                    cluster.kind,
                    ordinal,
                    dc_name,
                    machine.name,
                    machine.kind,
                    node,
                    address,
                    cluster.port,
                    cluster.substrate,
                )
            )
    return tuple(members)


def _realise(
    topology: Topology, chosen: list[tuple[Service, int, str, _MachineState, str]]
) -> list[Instance]:
    """Give every placed instance its node, address and port."""
    service_index = {s.name: i for i, s in enumerate(topology.services)}
    rank_in_dc: Counter[tuple[str, str]] = Counter()
    rank_on_node: Counter[tuple[str, str]] = Counter()
    ports_on_node: dict[tuple[str, int], str] = {}
    instances = []
    for service, ordinal, dc_name, state, part in sorted(
        chosen, key=lambda c: (service_index[c[0].name], c[1])
    ):
        dc = topology.datacenter(dc_name)
        machine = state.machine
        name = f"{service.name}-{ordinal}"
        if machine.address is not None:  # bare metal: the host is the node
            node, address = machine.name, machine.address
        elif topology.colocation:
            node = node_name(topology, machine.name)
            address = _slot(topology, dc, state.index_in_dc, f"machine {machine.name}")
        else:
            rank = rank_in_dc[(service.name, dc_name)]
            rank_in_dc[(service.name, dc_name)] += 1
            _check_block(topology, dc, rank, f"service {service.name}")
            node = node_name(topology, name)
            address = _slot(
                topology, dc, service_index[service.name] * dc.pool.block_size + rank, f"instance {name}"
            )
        port = service.port + rank_on_node[(service.name, node)]
        rank_on_node[(service.name, node)] += 1
        if port > MAX_PORT:
            sharing = sum(1 for c in chosen if c[0] is service and c[3] is state)
            raise SpecError(
                topology.source,
                f"services.{service.name}.port",
                f"{name} would listen on {node}:{port}, past {MAX_PORT} (colocated instances of a service "
                f"take consecutive ports from its base port, here {sharing}): expected a base port of at "
                f"most {MAX_PORT - sharing + 1}",
            )
        if (node, port) in ports_on_node:
            raise SpecError(
                topology.source,
                f"services.{service.name}.port",
                f"{name} would listen on {node}:{port}, already used by {ports_on_node[(node, port)]} "
                "(colocated instances of a service take consecutive ports from its base port): "
                "expected base ports further apart",
            )
        ports_on_node[(node, port)] = name
        instances.append(
            Instance(
                service.name,
                ordinal,
                dc_name,
                machine.name,
                machine.kind,
                node,
                address,
                port,
                colour=part if part in COLOURS else "",
                track=part if part in TRACKS else "",
            )
        )
    return instances


def _check_block(topology: Topology, dc: Datacenter, rank: int, who: str) -> None:
    """A service's (or cluster's) ``rank``-th address in ``dc`` is inside its block."""
    if rank >= dc.pool.block_size:
        raise SpecError(
            topology.source,
            f"estate.datacenters.{dc.name}.address_pool.block_size",
            f"{who} needs more than {dc.pool.block_size} addresses in {dc.name}: "
            "expected a larger block_size",
        )


def _slot(topology: Topology, dc: Datacenter, offset: int, what: str) -> ipaddress.IPv4Address:
    pool = dc.pool
    if offset >= pool.size:
        raise SpecError(
            topology.source,
            f"estate.datacenters.{dc.name}.address_pool",
            f"too small: {what} needs slot {offset + 1} "
            f"but {pool.start}-{pool.end} holds {pool.size} addresses "
            f"(service blocks of {pool.block_size}): expected a larger range",
        )
    return pool.start + offset
