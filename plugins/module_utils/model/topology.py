# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The topology spec as a typed model: frozen dataclasses, and the error every refusal raises.

`spec.py` builds a :class:`Topology` from the raw YAML and `checks.py` holds the rules that span
entries; `placement.py` turns it into a :class:`Placement` and `inventory.py` only reads these.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

SUBSTRATES = ("vm", "metal", "local")
MachineKind = Literal["hypervisor", "metal", "local"]
# which machine kind carries which substrate
KIND_FOR_SUBSTRATE: dict[str, MachineKind] = {"vm": "hypervisor", "metal": "metal", "local": "local"}
# where a machine kind is declared under estate.datacenters.<dc>
SECTION_FOR_KIND: dict[MachineKind, str] = {"hypervisor": "hypervisors", "metal": "metal", "local": "local"}


class SpecError(ValueError):
    """A spec that cannot be used: says where (file, key path) and what was expected."""

    def __init__(self, source: str, key: str, expected: str) -> None:
        self.source = source
        self.key = key
        self.expected = expected
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {expected}")


def dotted(key: str, name: object) -> str:
    """A key path one level down: `services` and `catalog` give `services.catalog`."""
    return f"{key}.{name}" if key else str(name)


def some(names: Sequence[str], limit: int = 8) -> str:
    """Names for a message, at most `limit` of them, so it stays one line however large the estate."""
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


@dataclass(frozen=True)
class Resources:
    vcpus: int
    memory_mib: int
    disk_gib: int = 0  # services on VMs: the root disk; 0 for capacities

    def sizes(self) -> dict[str, int]:
        """``vcpus`` and ``memory_mib``, as the inventory and the spec write them."""
        return {"vcpus": self.vcpus, "memory_mib": self.memory_mib}


@dataclass(frozen=True)
class VirtSettings:
    """How Berth uses a hypervisor: where VM disks go and which host bridge a DC's VMs join."""

    domain_type: str  # "kvm", or "qemu" (TCG) where there is no hardware virtualisation (the lab)
    pool: str  # libvirt storage pool (a directory pool) for the VM disks and the guest image
    pool_path: str
    bridge: str  # host bridge of the machine's DC; "" in a lab: the lab bridge of the DC


@dataclass(frozen=True)
class AddressPool:
    network: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    start: ipaddress.IPv4Address
    end: ipaddress.IPv4Address
    block_size: int

    @property
    def size(self) -> int:
        return int(self.end) - int(self.start) + 1


@dataclass(frozen=True)
class Bmc:
    address: str  # redfish: an http(s) URL (a bare host means https://host); ipmi: the host
    username: str
    password: str  # a vault reference such as "{{ vault_bmc_password }}", never a literal secret
    driver: str
    verify_tls: bool
    ca_path: str = ""  # CA bundle to verify the BMC's certificate with; "" = the system's


@dataclass(frozen=True)
class Machine:
    """Something that can carry instances: a hypervisor, a bare-metal host or a local host."""

    name: str
    dc: str
    kind: MachineKind
    capacity: Resources
    uri: str = ""  # hypervisors: libvirt URI
    virt: VirtSettings | None = None  # hypervisors
    address: ipaddress.IPv4Address | None = None  # metal: the host's own address
    bmc: Bmc | None = None

    @property
    def key(self) -> str:
        """Where the spec declares it."""
        return f"estate.datacenters.{self.dc}.{SECTION_FOR_KIND[self.kind]}.{self.name}"


# the datacenter's utility nodes, beside the machines that carry instances: load balancers, and
# execution nodes (where an AWX instance group of the DC runs its jobs: ansible-runner worker)
UTILITY_SECTIONS = {"lb": "loadbalancers", "execution": "execution_nodes"}


@dataclass(frozen=True)
class LoadBalancer:
    """A utility node of a datacenter: a load balancer (``role`` lb) or an execution node
    (``role`` execution), on a machine of the DC or an existing host, at an address of its own."""

    name: str
    dc: str
    address: ipaddress.IPv4Address
    machine: str  # the machine that carries it (local/hypervisor), "" for an existing host
    role: str = "lb"

    @property
    def key(self) -> str:
        """Where the spec declares it."""
        return f"estate.datacenters.{self.dc}.{UTILITY_SECTIONS[self.role]}.{self.name}"

    @property
    def what(self) -> str:
        return "load balancer" if self.role == "lb" else "execution node"


@dataclass(frozen=True)
class Datacenter:
    name: str
    pool: AddressPool
    machines: tuple[Machine, ...]
    loadbalancers: tuple[LoadBalancer, ...]


@dataclass(frozen=True)
class HealthCheck:
    path: str
    status: int


# a service's database (issue 14; parsed and checked in `database.py`)
DATABASE_MODES = ("shared", "dedicated")
DEFAULT_DB_RESOURCES = Resources(vcpus=1, memory_mib=512)


@dataclass(frozen=True)
class DatabaseNeed:
    """``services.<name>.database``: the service has a database of this name (its owner role's too)."""

    name: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass(frozen=True)
class DatabasePlan:
    """``environment.services.<name>.database``: how this environment provides the service's database."""

    mode: str  # shared | dedicated
    replicas: int = 0  # dedicated: replicas beside the primary
    resources: Resources = DEFAULT_DB_RESOURCES  # dedicated: each member's

    @property
    def members(self) -> int:
        return 1 + self.replicas if self.mode == "dedicated" else 0

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"mode": self.mode}
        if self.mode == "dedicated":
            body.update(
                replicas=self.replicas,
                resources=self.resources.sizes(),
            )
        return body


@dataclass(frozen=True)
class SharedCluster:
    """``environment.databases.shared``: the cluster that holds the databases of shared mode."""

    members: int
    resources: Resources = DEFAULT_DB_RESOURCES


@dataclass(frozen=True)
class DatabaseEstate:
    """``environment.databases``: the shared cluster (if any service uses it) and Patroni's store."""

    shared: SharedCluster | None = None
    dcs_members: int = 1

    def as_dict(self) -> dict[str, Any]:
        shared = (
            {
                "members": self.shared.members,
                "resources": self.shared.resources.sizes(),
            }
            if self.shared
            else None
        )
        return {"shared": shared, "dcs": {"members": self.dcs_members}}


@dataclass(frozen=True)
class Service:
    name: str
    artifact: str
    version: str
    port: int
    health: HealthCheck
    resources: Resources
    substrate: str
    database: DatabaseNeed | None = None  # the service has a database of its own (`database.py`)


@dataclass(frozen=True)
class Spread:
    max_skew: int
    when_unsatisfiable: str  # "fail" | "schedule_anyway"


# the two colours of a blue-green service, in the order their instances are numbered
COLOURS = ("blue", "green")


@dataclass(frozen=True)
class SmokeCheck:
    path: str
    status: int


@dataclass(frozen=True)
class Analysis:
    """Post-switch analysis from the load balancers' own counters of the new colour's backend.

    Every ``interval`` seconds for ``window`` seconds the 5xx answers and connection/response errors
    are summed over every LB; a verdict needs at least ``min_requests`` requests: fewer is
    inconclusive (never a pass), and the window is run again, at most ``inconclusive_limit`` times,
    before inconclusive counts as a failure.
    """

    window: float
    interval: float
    max_error_rate: float
    min_requests: int
    inconclusive_limit: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "interval": self.interval,
            "max_error_rate": self.max_error_rate,
            "min_requests": self.min_requests,
            "inconclusive_limit": self.inconclusive_limit,
        }


@dataclass(frozen=True)
class ParallelGate:
    """A release that waits for its parallel run: at least ``min_requests`` compared requests and
    a mismatch rate of at most ``max_mismatch_rate`` before a blue-green switch or a canary's
    first weight step (issue 13; ``common/compare.py`` ``gate``); the mirrors compare for at most
    ``max_seconds`` (fewer requests by then: refused, never a pass)."""

    min_requests: int
    max_mismatch_rate: float
    max_seconds: float = 300.0  # how long the LBs' mirrors may take to compare min_requests

    def as_dict(self) -> dict[str, Any]:
        return {
            "min_requests": self.min_requests,
            "max_mismatch_rate": self.max_mismatch_rate,
            "max_seconds": self.max_seconds,
        }


@dataclass(frozen=True)
class CompareRules:
    """How a parallel run compares two answers (``common/compare.py`` ``Rules``)."""

    mode: str  # json | text | status
    ignore_fields: tuple[str, ...] = ()
    ignore_headers: tuple[str, ...] = ()
    compare_headers: tuple[str, ...] = ("content-type",)
    redact_headers: tuple[str, ...] = ()
    redact_fields: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "ignore_fields": list(self.ignore_fields),
            "ignore_headers": list(self.ignore_headers),
            "compare_headers": list(self.compare_headers),
            "redact_headers": list(self.redact_headers),
            "redact_fields": list(self.redact_fields),
        }


@dataclass(frozen=True)
class ParallelRun:
    """A service's parallel run: which requests are copied to the candidate and a second trusted
    instance (``sample`` of those with ``methods``; a method with side effects only with
    ``allow_unsafe``), how many copies may wait (``queue``; more are dropped and counted), how long
    an answer may take (``timeout``), and how the answers are compared."""

    sample: float
    methods: tuple[str, ...]
    allow_unsafe: bool
    queue: int
    timeout: float
    compare: CompareRules

    def as_dict(self) -> dict[str, Any]:
        return {
            "sample": self.sample,
            "methods": list(self.methods),
            "allow_unsafe": self.allow_unsafe,
            "queue": self.queue,
            "timeout": self.timeout,
            "compare": self.compare.as_dict(),
        }


@dataclass(frozen=True)
class BlueGreen:
    preview_port: int
    smoke: tuple[SmokeCheck, ...]
    analysis: Analysis | None
    scale_down_delay: int
    retire: str  # stop: the old colour's instances stop once the delay is over; keep: they stay up
    gate: ParallelGate | None = None  # the parallel run a switch waits for

    def as_dict(self) -> dict[str, Any]:
        return {
            "preview_port": self.preview_port,
            "smoke": [{"path": s.path, "status": s.status} for s in self.smoke],
            "analysis": self.analysis.as_dict() if self.analysis else None,
            "scale_down_delay": self.scale_down_delay,
            "retire": self.retire,
            "parallel_run": self.gate.as_dict() if self.gate else None,
        }


# the parts of a canary service: its instances in rotation, and the two extra ones a canary
# brings up - the new version, and a fresh baseline of the current one started at the same moment
TRACKS = ("stable", "canary", "baseline")
CANARY_METRICS = ("error_rate", "error_rate_vs_baseline", "response_time", "response_time_vs_baseline")


@dataclass(frozen=True)
class CanaryMetric:
    """One metric of a canary analysis: a measurement's value passes at most ``pass_at``, fails
    above ``fail_above``, and is inconclusive in between (``planner/canary.py``)."""

    metric: str  # one of CANARY_METRICS
    pass_at: float
    fail_above: float

    @property
    def against_baseline(self) -> bool:
        return self.metric.endswith("_vs_baseline")

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "pass": self.pass_at, "fail": self.fail_above}


@dataclass(frozen=True)
class CanaryAnalysis:
    """``count`` measurements, one every ``interval`` seconds, each of what the LBs counted for the
    canary (and the baseline) during it; fewer than ``min_requests`` is an inconclusive measurement.
    More than ``failure_limit`` failed measurements fail the analysis (at once), more than
    ``inconclusive_limit`` inconclusive ones make it inconclusive; only then is it a pass."""

    interval: float
    count: int
    min_requests: int
    failure_limit: int
    inconclusive_limit: int
    metrics: tuple[CanaryMetric, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "interval": self.interval,
            "count": self.count,
            "min_requests": self.min_requests,
            "failure_limit": self.failure_limit,
            "inconclusive_limit": self.inconclusive_limit,
            "metrics": [m.as_dict() for m in self.metrics],
        }


@dataclass(frozen=True)
class CanaryStep:
    kind: str  # weight | pause | analysis
    weight: int = 0  # the canary's share of the requests, in %
    pause: float | None = None  # seconds; None: until the operator resumes
    analysis: CanaryAnalysis | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.kind == "weight":
            return {"weight": self.weight}
        if self.kind == "pause":
            return {"pause": self.pause if self.pause is not None else "until_resumed"}
        return {"analysis": self.analysis.as_dict() if self.analysis else {}}


@dataclass(frozen=True)
class Canary:
    steps: tuple[CanaryStep, ...]
    baseline: bool  # a fresh baseline instance of the current version beside the canary
    gate: ParallelGate | None = None  # the parallel run the first weight step waits for

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": [step.as_dict() for step in self.steps],
            "baseline": self.baseline,
            "parallel_run": self.gate.as_dict() if self.gate else None,
        }


@dataclass(frozen=True)
class Strategy:
    kind: str = "rolling"
    blue_green: BlueGreen | None = field(default=None)
    canary: Canary | None = field(default=None)

    @property
    def colours(self) -> tuple[str, ...]:
        """The colours a service's instances come in: none for a rolling service."""
        return COLOURS if self.kind == "blue_green" else ()

    @property
    def tracks(self) -> tuple[str, ...]:
        """The tracks of a canary service (the baseline only when it has one); none otherwise."""
        if self.canary is None:
            return ()
        return TRACKS if self.canary.baseline else TRACKS[:2]

    def parts(self, instances: int) -> tuple[str, ...]:
        """The part of each instance, by ordinal: blue-green, ``instances`` of each colour; canary,
        ``instances`` stable ones, then the canary and its baseline; nothing for a rolling service."""
        if self.colours:
            parts: tuple[str, ...] = ()
            for colour in self.colours:
                parts += (colour,) * instances
            return parts
        if self.tracks:
            return ("stable",) * instances + self.tracks[1:]
        return ()

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": self.kind}
        if self.blue_green is not None:
            body["blue_green"] = self.blue_green.as_dict()
        if self.canary is not None:
            body["canary"] = self.canary.as_dict()
        return body


ROLLING = Strategy()


@dataclass(frozen=True)
class ServicePolicy:
    instances: int
    max_unavailable: int  # resolved to a count; 0 for a service with no instances here
    strategy: Strategy = ROLLING  # how a new version reaches users (`strategy.py`)
    parallel_run: ParallelRun | None = None  # requests copied to a candidate and compared (`parallel.py`)
    database: DatabasePlan | None = None  # how this environment provides the service's database


@dataclass(frozen=True)
class Topology:
    source: str
    environment: str
    colocation: bool
    spread: Spread
    datacenters: tuple[Datacenter, ...]
    services: tuple[Service, ...]
    policies: Mapping[str, ServicePolicy]
    lab_namespace: str = ""  # set: Berth builds the DC networks as bridges in this network namespace
    databases: DatabaseEstate = DatabaseEstate()  # the shared cluster and Patroni's store (`database.py`)

    @cached_property
    def machines(self) -> tuple[Machine, ...]:
        return tuple(m for dc in self.datacenters for m in dc.machines)

    @cached_property
    def loadbalancers(self) -> tuple[LoadBalancer, ...]:
        return tuple(lb for dc in self.datacenters for lb in dc.loadbalancers)

    @cached_property
    def _datacenters_by_name(self) -> dict[str, Datacenter]:
        return {dc.name: dc for dc in self.datacenters}

    @cached_property
    def _services_by_name(self) -> dict[str, Service]:
        return {s.name: s for s in self.services}

    @cached_property
    def _machines_by_name(self) -> dict[str, Machine]:
        return {m.name: m for m in self.machines}

    def datacenter(self, name: str) -> Datacenter:
        return self._datacenters_by_name[name]

    def service(self, name: str) -> Service:
        return self._services_by_name[name]

    def machine(self, name: str) -> Machine:
        return self._machines_by_name[name]

    def carrier(self, lb: LoadBalancer) -> Machine | None:
        """The machine a load balancer runs on; None for an existing host of the user's."""
        return self._machines_by_name[lb.machine] if lb.machine else None


@dataclass(frozen=True)
class Instance:
    """One placed instance (`placement.py`): where it runs, at which address and port."""

    service: str
    ordinal: int  # 1-based, stable: catalog-3 is always the third instance of catalog
    dc: str
    machine: str
    machine_kind: str
    node: str  # the VM / nspawn machine / metal host that runs it
    address: ipaddress.IPv4Address
    port: int
    colour: str = ""  # blue or green for a blue-green service (`strategy.py`), else ""
    track: str = ""  # stable, canary or baseline for a canary service, else ""

    @property
    def name(self) -> str:
        return f"{self.service}-{self.ordinal}"


@dataclass(frozen=True)
class DatabaseCluster:
    """What ``database.clusters`` derives from the spec: a PostgreSQL cluster (a service's own, or the
    shared one) or etcd, Patroni's store; each member a node of its own (`placement.py`)."""

    name: str  # orders-db, shared-db, dcs: its members are <name>-<n>
    kind: str  # "database" | "dcs"
    members: int
    resources: Resources
    substrate: str
    port: int
    owners: tuple[str, ...]  # the services whose databases it holds (none for etcd)
    key: str  # the spec key that sizes it, for refusals


@dataclass(frozen=True)
class Member:
    """One placed member of a database cluster or of etcd (`placement.py`): where it runs."""

    cluster: str
    kind: str  # "database" | "dcs"
    ordinal: int
    dc: str
    machine: str
    machine_kind: str
    node: str
    address: ipaddress.IPv4Address
    port: int
    substrate: str

    @property
    def name(self) -> str:
        return f"{self.cluster}-{self.ordinal}"


@dataclass(frozen=True)
class Placement:
    """A topology with every instance placed; every name derived from it is checked (`names.py`)."""

    topology: Topology
    instances: tuple[Instance, ...]
    # the members of the database clusters and of etcd (`database.clusters`), after the instances
    members: tuple[Member, ...] = ()
    clusters: tuple[DatabaseCluster, ...] = ()

    def of_service(self, service: str) -> tuple[Instance, ...]:
        return tuple(i for i in self.instances if i.service == service)

    def loadbalancers(self) -> Iterator[LoadBalancer]:
        for dc in self.topology.datacenters:
            yield from dc.loadbalancers

    def node_name(self, name: str) -> str:
        return f"{self.topology.environment}-{name}"
