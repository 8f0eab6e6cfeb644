# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The topology spec: typed model and validation.

Everything a Berth environment declares (estate, services, environment policy) is parsed here
into frozen dataclasses.  Validation happens completely before anything is placed, provisioned
or deployed; every failure is a single :class:`SpecError` that names the file, the key path and
what was expected.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, TypeVar

SUBSTRATES = ("vm", "metal", "local")
MachineKind = Literal["hypervisor", "metal", "local"]
# which machine kind carries which substrate
KIND_FOR_SUBSTRATE: dict[str, MachineKind] = {"vm": "hypervisor", "metal": "metal", "local": "local"}

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$")
VAULT_REF_RE = re.compile(r"^\{\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}\}$")
PERCENT_RE = re.compile(r"^(\d{1,3})%$")
LIBVIRT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ABS_PATH_RE = re.compile(r"^/[^\0]*$")
HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^\[?[0-9a-fA-F:.]+\]?$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
DEFAULT_DISK_GIB = 4
DEFAULT_POOL = "berth"
DEFAULT_POOL_PATH = "/var/lib/berth/pool"

from ansible_collections.berth.fleet.plugins.module_utils.model.statedir import (
    IFNAMSIZ,
    bridge_name,
    default_namespace,
)

T = TypeVar("T")


class SpecError(ValueError):
    """A spec that cannot be used: says where (file, key path) and what was expected."""

    def __init__(self, source: str, key: str, expected: str) -> None:
        self.source = source
        self.key = key
        self.expected = expected
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {expected}")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Resources:
    vcpus: int
    memory_mib: int
    disk_gib: int = 0  # services on VMs: the root disk; 0 for capacities


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


@dataclass(frozen=True)
class LoadBalancer:
    name: str
    dc: str
    address: ipaddress.IPv4Address
    machine: str  # the machine that carries it (local/hypervisor), "" for an existing host


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


@dataclass(frozen=True)
class Service:
    name: str
    artifact: str
    version: str
    port: int
    health: HealthCheck
    resources: Resources
    substrate: str


@dataclass(frozen=True)
class Spread:
    max_skew: int
    when_unsatisfiable: str  # "fail" | "schedule_anyway"


@dataclass(frozen=True)
class ServicePolicy:
    instances: int
    max_unavailable: int  # resolved to a count


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

    @cached_property
    def machines(self) -> tuple[Machine, ...]:
        return tuple(m for dc in self.datacenters for m in dc.machines)

    @cached_property
    def _datacenters_by_name(self) -> dict[str, Datacenter]:
        return {dc.name: dc for dc in self.datacenters}

    @cached_property
    def _services_by_name(self) -> dict[str, Service]:
        return {s.name: s for s in self.services}

    def datacenter(self, name: str) -> Datacenter:
        return self._datacenters_by_name[name]

    def service(self, name: str) -> Service:
        return self._services_by_name[name]


# --------------------------------------------------------------------------- primitives


class _Reader:
    """Typed accessors over raw YAML data that raise SpecError with the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, expected: str) -> SpecError:
        return SpecError(self.source, key, expected)

    def mapping(self, raw: Any, key: str) -> Mapping[str, Any]:
        if not isinstance(raw, Mapping):
            raise self.fail(key, f"expected a mapping, got {_describe(raw)}")
        for name in raw:
            if not isinstance(name, str):
                raise self.fail(key, f"expected string keys, got {_describe(name)}")
        return raw

    def keys(
        self, raw: Mapping[str, Any], key: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
    ) -> None:
        allowed = required + optional
        for name in raw:
            if name not in allowed:
                hint = difflib.get_close_matches(name, allowed, n=1)
                suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
                raise self.fail(_join(key, name), f"unknown key (allowed: {', '.join(allowed)}){suggestion}")
        for name in required:
            if name not in raw:
                raise self.fail(_join(key, name), "is required")

    def string(self, raw: Any, key: str, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
        if not isinstance(raw, str) or not raw:
            raise self.fail(key, f"expected a non-empty string, got {_describe(raw)}")
        if pattern is not None and not pattern.match(raw):
            raise self.fail(key, f"expected {what}, got {raw!r}")
        return raw

    def name(self, raw: Any, key: str) -> str:
        return self.string(
            raw, key, NAME_RE, "a name of lowercase letters, digits and '-' (max 32, starting with a letter)"
        )

    def integer(self, raw: Any, key: str, minimum: int, maximum: int | None = None) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise self.fail(key, f"expected an integer, got {_describe(raw)}")
        if raw < minimum or (maximum is not None and raw > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise self.fail(key, f"expected an integer {bound}, got {raw}")
        return int(raw)

    def boolean(self, raw: Any, key: str) -> bool:
        if not isinstance(raw, bool):
            raise self.fail(key, f"expected true or false, got {_describe(raw)}")
        return raw

    def choice(self, raw: Any, key: str, choices: tuple[str, ...]) -> str:
        if raw not in choices:
            hint = difflib.get_close_matches(str(raw), choices, n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            raise self.fail(key, f"expected one of {', '.join(choices)}, got {raw!r}{suggestion}")
        return str(raw)

    def address(self, raw: Any, key: str) -> ipaddress.IPv4Address:
        try:
            return ipaddress.IPv4Address(self.string(raw, key))
        except ipaddress.AddressValueError:
            raise self.fail(key, f"expected an IPv4 address, got {raw!r}") from None

    def named_entries(
        self, raw: Any, key: str, parse: Callable[[str, Mapping[str, Any], str], T], allow_empty: bool = True
    ) -> tuple[T, ...]:
        """A mapping of name -> mapping, parsed entry by entry."""
        if raw is None and allow_empty:
            return ()
        entries = self.mapping(raw, key)
        if not entries and not allow_empty:
            raise self.fail(key, "expected at least one entry")
        result = []
        for entry_name, body in entries.items():
            entry_key = _join(key, entry_name)
            self.name(entry_name, entry_key)
            result.append(parse(entry_name, self.mapping(body, entry_key), entry_key))
        return tuple(result)


def _join(key: str, name: object) -> str:
    return f"{key}.{name}" if key else str(name)


def _describe(raw: Any) -> str:
    if raw is None:
        return "nothing (null)"
    kind = {dict: "mapping", list: "list", str: "string", int: "integer", float: "number", bool: "boolean"}
    for python_type, label in kind.items():
        if isinstance(raw, python_type):
            return f"{label} {raw!r}" if python_type in (str, int, float, bool) else label
    return type(raw).__name__


# --------------------------------------------------------------------------- sections

TOP_REQUIRED = ("estate", "services", "environment")
TOP_OPTIONAL = (
    "plugin",
    "state_dir",
    "compose",
    "groups",
    "keyed_groups",
    "strict",
    "leading_separator",
    "use_extra_vars",
)


class _SpecParser(_Reader):
    def resources(self, raw: Any, key: str, disk: bool = False) -> Resources:
        body = self.mapping(raw, key)
        self.keys(body, key, ("vcpus", "memory_mib"), ("disk_gib",) if disk else ())
        return Resources(
            vcpus=self.integer(body["vcpus"], _join(key, "vcpus"), 1, 4096),
            memory_mib=self.integer(body["memory_mib"], _join(key, "memory_mib"), 64),
            disk_gib=self.integer(body.get("disk_gib", DEFAULT_DISK_GIB), _join(key, "disk_gib"), 1, 65536)
            if disk
            else 0,
        )

    def virt(self, body: Mapping[str, Any], key: str) -> VirtSettings:
        pool = self.mapping(body.get("pool", {}), _join(key, "pool"))
        self.keys(pool, _join(key, "pool"), (), ("name", "path"))
        return VirtSettings(
            domain_type=self.choice(
                body.get("domain_type", "kvm"), _join(key, "domain_type"), ("kvm", "qemu")
            ),
            pool=self.string(
                pool.get("name", DEFAULT_POOL),
                _join(key, "pool.name"),
                LIBVIRT_NAME_RE,
                "a libvirt pool name",
            ),
            pool_path=self.string(
                pool.get("path", DEFAULT_POOL_PATH), _join(key, "pool.path"), ABS_PATH_RE, "an absolute path"
            ),
            bridge=self.string(body["bridge"], _join(key, "bridge"), IFNAME_RE, "a Linux bridge name")
            if "bridge" in body
            else "",
        )

    def pool(self, raw: Any, key: str) -> AddressPool:
        body = self.mapping(raw, key)
        self.keys(body, key, ("cidr",), ("gateway", "start", "end", "block_size"))
        try:
            network = ipaddress.IPv4Network(self.string(body["cidr"], _join(key, "cidr")), strict=True)
        except ValueError as exc:
            raise self.fail(
                _join(key, "cidr"), f"expected an IPv4 network such as 10.1.0.0/24 ({exc})"
            ) from None
        if network.num_addresses < 4:
            raise self.fail(_join(key, "cidr"), f"expected a network of at least 4 addresses, got {network}")
        first_host = network.network_address + 1
        last_host = network.broadcast_address - 1
        gateway = self.address(body.get("gateway", str(first_host)), _join(key, "gateway"))
        start = self.address(body.get("start", str(gateway + 1)), _join(key, "start"))
        end = self.address(body.get("end", str(last_host)), _join(key, "end"))
        for label, value in (("gateway", gateway), ("start", start), ("end", end)):
            if not first_host <= value <= last_host:
                raise self.fail(_join(key, label), f"expected a host address inside {network}, got {value}")
        if end < start:
            raise self.fail(_join(key, "end"), f"expected an address >= start {start}, got {end}")
        if start <= gateway <= end:
            raise self.fail(_join(key, "gateway"), f"expected an address outside start..end, got {gateway}")
        block_size = self.integer(body.get("block_size", 16), _join(key, "block_size"), 1, 4096)
        return AddressPool(network, gateway, start, end, block_size)

    def bmc(self, raw: Any, key: str) -> Bmc:
        body = self.mapping(raw, key)
        self.keys(body, key, ("address", "username", "password"), ("driver", "verify_tls", "ca_path"))
        password = body["password"]
        if not isinstance(password, str) or not VAULT_REF_RE.match(password):
            # never echo the value: it may be a real secret typed by mistake
            raise self.fail(
                _join(key, "password"),
                "expected a vault reference such as '{{ vault_bmc_password }}', not a literal secret",
            )
        driver = self.choice(body.get("driver", "redfish"), _join(key, "driver"), ("redfish", "ipmi"))
        return Bmc(
            address=self.bmc_address(body["address"], _join(key, "address"), driver),
            username=self.string(body["username"], _join(key, "username")),
            password=password,
            driver=driver,
            verify_tls=self.boolean(body.get("verify_tls", True), _join(key, "verify_tls")),
            ca_path=self.string(body["ca_path"], _join(key, "ca_path"), ABS_PATH_RE, "an absolute path")
            if "ca_path" in body
            else "",
        )

    def bmc_address(self, raw: Any, key: str, driver: str) -> str:
        """A BMC's address: a host (name or IP, optional port) or, for Redfish, an http(s) URL."""
        if not isinstance(raw, str) or not raw.strip():
            raise self.fail(key, "expected a BMC host name, IP address or http(s):// URL")
        text = raw.strip()
        if "@" in text:  # never echo it: it may carry a password
            raise self.fail(key, "expected no credentials in the address (use username and password)")
        url = urllib.parse.urlsplit(text if "://" in text else f"https://{text}")
        try:
            url.port  # noqa: B018 - raises on a malformed port
            valid = (
                url.scheme in ("http", "https")
                and HOST_RE.match(url.hostname or "") is not None
                and url.path in ("", "/")
                and not url.query
                and not url.fragment
            )
        except ValueError:
            valid = False
        if not valid or (driver == "ipmi" and "://" in text):
            what = (
                "a host name or IP address"
                if driver == "ipmi"
                else "a host name, IP address or http(s):// URL"
            )
            raise self.fail(key, f"expected {what} without a path, got {text!r}")
        return text if driver == "ipmi" else f"{url.scheme}://{url.netloc}"

    def datacenter(self, name: str, body: Mapping[str, Any], key: str) -> Datacenter:
        self.keys(body, key, ("address_pool",), ("hypervisors", "metal", "local", "loadbalancers"))
        pool = self.pool(body["address_pool"], _join(key, "address_pool"))

        def hypervisor(m_name: str, m_body: Mapping[str, Any], m_key: str) -> Machine:
            self.keys(m_body, m_key, ("uri", "capacity"), ("domain_type", "pool", "bridge"))
            return Machine(
                m_name,
                name,
                "hypervisor",
                self.resources(m_body["capacity"], _join(m_key, "capacity")),
                uri=self.string(m_body["uri"], _join(m_key, "uri")),
                virt=self.virt(m_body, m_key),
            )

        def metal(m_name: str, m_body: Mapping[str, Any], m_key: str) -> Machine:
            self.keys(m_body, m_key, ("address", "bmc", "hardware"))
            address = self.address(m_body["address"], _join(m_key, "address"))
            if address not in pool.network:
                raise self.fail(
                    _join(m_key, "address"), f"expected an address inside {pool.network}, got {address}"
                )
            return Machine(
                m_name,
                name,
                "metal",
                self.resources(m_body["hardware"], _join(m_key, "hardware")),
                address=address,
                bmc=self.bmc(m_body["bmc"], _join(m_key, "bmc")),
            )

        def local(m_name: str, m_body: Mapping[str, Any], m_key: str) -> Machine:
            self.keys(m_body, m_key, ("capacity",))
            return Machine(
                m_name, name, "local", self.resources(m_body["capacity"], _join(m_key, "capacity"))
            )

        machines = (
            self.named_entries(body.get("hypervisors"), _join(key, "hypervisors"), hypervisor)
            + self.named_entries(body.get("metal"), _join(key, "metal"), metal)
            + self.named_entries(body.get("local"), _join(key, "local"), local)
        )

        def loadbalancer(lb_name: str, lb_body: Mapping[str, Any], lb_key: str) -> LoadBalancer:
            self.keys(lb_body, lb_key, ("address",), ("machine",))
            address = self.address(lb_body["address"], _join(lb_key, "address"))
            if address not in pool.network:
                raise self.fail(
                    _join(lb_key, "address"), f"expected an address inside {pool.network}, got {address}"
                )
            machine = ""
            if "machine" in lb_body:
                machine = self.name(lb_body["machine"], _join(lb_key, "machine"))
                carriers = [m.name for m in machines if m.kind != "metal"]
                if machine not in carriers:
                    raise self.fail(
                        _join(lb_key, "machine"),
                        f"expected a hypervisor or local machine of datacenter {name} "
                        f"({', '.join(carriers) or 'none declared'}), got {machine!r}",
                    )
            return LoadBalancer(lb_name, name, address, machine)

        loadbalancers = self.named_entries(
            body.get("loadbalancers"), _join(key, "loadbalancers"), loadbalancer
        )
        return Datacenter(name, pool, machines, loadbalancers)

    def service(self, name: str, body: Mapping[str, Any], key: str) -> Service:
        self.keys(body, key, ("artifact", "version", "port", "health", "resources", "substrate"))
        health_key = _join(key, "health")
        health = self.mapping(body["health"], health_key)
        self.keys(health, health_key, ("path",), ("status",))
        path = self.string(
            health["path"], _join(health_key, "path"), re.compile(r"^/\S*$"), "a URL path starting with '/'"
        )
        version = body["version"]
        if isinstance(version, (int, float)) and not isinstance(version, bool):
            version = str(version)  # `version: 2` means "2", not a number
        return Service(
            name=name,
            artifact=self.string(body["artifact"], _join(key, "artifact")),
            version=self.string(version, _join(key, "version")),
            port=self.integer(body["port"], _join(key, "port"), 1, 65535),
            health=HealthCheck(
                path, self.integer(health.get("status", 200), _join(health_key, "status"), 100, 599)
            ),
            resources=self.resources(body["resources"], _join(key, "resources"), disk=True),
            substrate=self.choice(body["substrate"], _join(key, "substrate"), SUBSTRATES),
        )


def _max_unavailable(reader: _Reader, raw: Any, key: str, instances: int) -> int:
    """`max_unavailable` as a count: an integer, or a percentage of the instances (rounded down)."""
    if isinstance(raw, str):
        match = PERCENT_RE.match(raw)
        if not match or not 0 < int(match.group(1)) <= 100:
            raise reader.fail(key, f"expected an integer or a percentage between 1% and 100%, got {raw!r}")
        count = instances * int(match.group(1)) // 100
        if count < 1:
            raise reader.fail(
                key, f"{raw} of {instances} instances rounds down to 0: expected at least 1 instance"
            )
        return count
    count = reader.integer(raw, key, 1)
    if count > instances:
        raise reader.fail(key, f"expected at most the service's {instances} instances, got {count}")
    return count


def parse_topology(raw: Any, source: str) -> Topology:
    """Validate a whole spec (the content of a ``*.berth.yml`` file) and return the typed model."""
    parser = _SpecParser(source)
    top = parser.mapping(raw, "")
    parser.keys(top, "", TOP_REQUIRED, TOP_OPTIONAL)

    estate = parser.mapping(top["estate"], "estate")
    parser.keys(estate, "estate", ("datacenters",), ("lab_namespace",))
    datacenters = parser.named_entries(
        estate["datacenters"], "estate.datacenters", parser.datacenter, allow_empty=False
    )
    services = parser.named_entries(top["services"], "services", parser.service, allow_empty=False)

    env = parser.mapping(top["environment"], "environment")
    parser.keys(env, "environment", ("name", "services"), ("colocation", "spread", "max_unavailable"))
    spread_raw = parser.mapping(env.get("spread", {}), "environment.spread")
    parser.keys(spread_raw, "environment.spread", (), ("max_skew", "when_unsatisfiable"))
    spread = Spread(
        max_skew=parser.integer(spread_raw.get("max_skew", 1), "environment.spread.max_skew", 1),
        when_unsatisfiable=parser.choice(
            spread_raw.get("when_unsatisfiable", "fail"),
            "environment.spread.when_unsatisfiable",
            ("fail", "schedule_anyway"),
        ),
    )
    topology = Topology(
        source=source,
        environment=parser.name(env["name"], "environment.name"),
        colocation=parser.boolean(env.get("colocation", False), "environment.colocation"),
        spread=spread,
        datacenters=datacenters,
        services=services,
        policies=_policies(parser, env, services),
        lab_namespace=_lab_namespace(parser, estate, datacenters, env["name"]),
    )
    _check_references(parser, topology)
    return topology


def _policies(
    parser: _Reader, env: Mapping[str, Any], services: tuple[Service, ...]
) -> dict[str, ServicePolicy]:
    key = "environment.services"
    per_service = parser.mapping(env["services"], key)
    declared = [s.name for s in services]
    for name in per_service:
        if name not in declared:
            hint = difflib.get_close_matches(name, declared, n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            raise parser.fail(
                _join(key, name), f"unknown service (declared: {', '.join(declared)}){suggestion}"
            )
    default_unavailable = env.get("max_unavailable", 1)
    policies = {}
    for service in services:
        s_key = _join(key, service.name)
        if service.name not in per_service:
            raise parser.fail(s_key, "is required: every declared service needs an instance count here")
        body = parser.mapping(per_service[service.name], s_key)
        parser.keys(body, s_key, ("instances",), ("max_unavailable",))
        instances = parser.integer(body["instances"], _join(s_key, "instances"), 0)
        if "max_unavailable" in body:
            unavailable_raw, unavailable_key = body["max_unavailable"], _join(s_key, "max_unavailable")
        else:
            unavailable_raw, unavailable_key = default_unavailable, "environment.max_unavailable"
        unavailable = _max_unavailable(parser, unavailable_raw, unavailable_key, max(instances, 1))
        policies[service.name] = ServicePolicy(instances, unavailable)
    return policies


def _lab_namespace(
    parser: _Reader, estate: Mapping[str, Any], datacenters: tuple[Datacenter, ...], environment: str
) -> str:
    """Local machines always live in a lab namespace; other estates only when they say so."""
    has_local = any(m.kind == "local" for dc in datacenters for m in dc.machines)
    if "lab_namespace" in estate:
        namespace = parser.string(
            estate["lab_namespace"],
            "estate.lab_namespace",
            re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"),
            "a network namespace name (letters, digits, '.', '_', '-')",
        )
    elif has_local:
        namespace = default_namespace(environment)
    else:
        return ""
    bridges: dict[str, str] = {}
    for dc in datacenters:
        bridge = bridge_name(dc.name)
        if bridge in bridges:
            raise parser.fail(
                f"estate.datacenters.{dc.name}",
                f"expected datacenter names that differ in their first {IFNAMSIZ - 3} characters "
                f"(the lab bridge {bridge!r} would also serve {bridges[bridge]})",
            )
        bridges[bridge] = dc.name
    return namespace


def _check_references(parser: _Reader, topology: Topology) -> None:
    """Cross-entry rules: unique names and addresses, overlapping pools, ports, hypervisor bridges."""
    for dc in topology.datacenters:
        for machine in dc.machines:
            if machine.virt is not None and not machine.virt.bridge and not topology.lab_namespace:
                raise parser.fail(
                    f"estate.datacenters.{dc.name}.hypervisors.{machine.name}.bridge",
                    "is required: the host bridge that carries datacenter "
                    f"{dc.name}'s network on this hypervisor (only a lab estate defaults it to its DC bridge)",  # noqa: E501
                )
    seen_names: dict[str, str] = {}
    for dc in topology.datacenters:
        entries = [(m.name, f"estate.datacenters.{dc.name}.{_section(m.kind)}.{m.name}") for m in dc.machines]
        entries += [
            (lb.name, f"estate.datacenters.{dc.name}.loadbalancers.{lb.name}") for lb in dc.loadbalancers
        ]
        for name, key in entries:
            if name in seen_names:
                raise parser.fail(key, f"duplicate name: {name!r} is already declared at {seen_names[name]}")
            seen_names[name] = key
    ports: dict[int, str] = {}
    for service in topology.services:
        key = f"services.{service.name}"
        if service.name in seen_names:
            raise parser.fail(
                key, f"duplicate name: {service.name!r} is already declared at {seen_names[service.name]}"
            )
        if service.port in ports:
            # the load balancers listen on each service's port
            raise parser.fail(
                f"{key}.port",
                f"expected a port no other service uses, got {service.port} (also {ports[service.port]})",
            )
        ports[service.port] = key
    for index, dc in enumerate(topology.datacenters):
        for other in topology.datacenters[:index]:
            if dc.pool.network.overlaps(other.pool.network):
                raise parser.fail(
                    f"estate.datacenters.{dc.name}.address_pool.cidr",
                    f"expected a network apart from datacenter {other.name}'s {other.pool.network}, "
                    f"got {dc.pool.network}",
                )
    seen_addresses: dict[ipaddress.IPv4Address, str] = {}
    for dc in topology.datacenters:
        fixed = [(dc.pool.gateway, f"estate.datacenters.{dc.name}.address_pool.gateway")]
        fixed += [
            (m.address, f"estate.datacenters.{dc.name}.metal.{m.name}.address")
            for m in dc.machines
            if m.address
        ]
        fixed += [
            (lb.address, f"estate.datacenters.{dc.name}.loadbalancers.{lb.name}.address")
            for lb in dc.loadbalancers
        ]
        for address, key in fixed:
            if address in seen_addresses:
                raise parser.fail(
                    key, f"duplicate address {address}: already used by {seen_addresses[address]}"
                )
            if dc.pool.start <= address <= dc.pool.end:
                raise parser.fail(
                    key,
                    f"expected an address outside the allocation range {dc.pool.start}-{dc.pool.end} "
                    f"(Berth hands those out), got {address}",
                )
            seen_addresses[address] = key


def _section(kind: MachineKind) -> str:
    return {"hypervisor": "hypervisors", "metal": "metal", "local": "local"}[kind]
