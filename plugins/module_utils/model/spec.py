# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The topology spec parser: raw YAML in, the typed model of `topology.py` out.

Everything a Berth environment declares (estate, services, environment policy) is validated here,
completely, before anything is placed, provisioned or deployed; every failure is a single
:class:`SpecError` that names the file, the key path and what was expected. Names, versions and
interface names follow the one rule of `common.rules`, which the preflights and drivers use too.
The rules that span entries (unique names, ports, addresses) are in `checks.py`.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.rules import (
    ifname_problem,
    libvirt_name_problem,
    netns_problem,
)
from ansible_collections.berth.fleet.plugins.module_utils.model.checks import check_references
from ansible_collections.berth.fleet.plugins.module_utils.model.database import (
    parse_estate,
    parse_need,
    parse_plan,
)
from ansible_collections.berth.fleet.plugins.module_utils.model.parallel import parse_parallel_run
from ansible_collections.berth.fleet.plugins.module_utils.model.reader import Reader, suggest
from ansible_collections.berth.fleet.plugins.module_utils.model.source import AsWritten
from ansible_collections.berth.fleet.plugins.module_utils.model.statedir import default_namespace
from ansible_collections.berth.fleet.plugins.module_utils.model.strategy import parse_strategy
from ansible_collections.berth.fleet.plugins.module_utils.model.topology import (
    SUBSTRATES,
    UTILITY_SECTIONS,
    AddressPool,
    Bmc,
    Datacenter,
    HealthCheck,
    LoadBalancer,
    Machine,
    Resources,
    Service,
    ServicePolicy,
    Spread,
    Topology,
    VirtSettings,
    dotted,
    some,
)

PLUGIN = "berth.fleet.topology"
VAULT_REF_RE = re.compile(r"^\{\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}\}$")
PERCENT_RE = re.compile(r"^(\d{1,3})%$")
ABS_PATH_RE = re.compile(r"^/[^\0]*$")
HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^\[?[0-9a-fA-F:.]+\]?$")
URL_PATH_RE = re.compile(r"^/\S*$")
DEFAULT_DISK_GIB = 4
DEFAULT_POOL = "berth"
DEFAULT_POOL_PATH = "/var/lib/berth/pool"

TOP_REQUIRED = ("estate", "services", "environment", "plugin")
TOP_OPTIONAL = (
    "state_dir",
    "compose",
    "groups",
    "keyed_groups",
    "strict",
    "leading_separator",
    "use_extra_vars",
)


class _SpecParser(Reader):
    def resources(self, raw: Any, key: str, disk: bool = False) -> Resources:
        body = self.mapping(raw, key)
        self.keys(body, key, ("vcpus", "memory_mib"), ("disk_gib",) if disk else ())
        return Resources(
            vcpus=self.integer(body["vcpus"], dotted(key, "vcpus"), 1, 4096),
            memory_mib=self.integer(body["memory_mib"], dotted(key, "memory_mib"), 64),
            disk_gib=self.integer(body.get("disk_gib", DEFAULT_DISK_GIB), dotted(key, "disk_gib"), 1, 65536)
            if disk
            else 0,
        )

    def virt(self, body: Mapping[str, Any], key: str) -> VirtSettings:
        pool = self.mapping(body.get("pool", {}), dotted(key, "pool"))
        self.keys(pool, dotted(key, "pool"), (), ("name", "path"))
        return VirtSettings(
            domain_type=self.choice(
                body.get("domain_type", "kvm"), dotted(key, "domain_type"), ("kvm", "qemu")
            ),
            pool=self.ruled(
                pool.get("name", DEFAULT_POOL),
                dotted(key, "pool.name"),
                libvirt_name_problem,
                "a libvirt pool name (1-63 letters, digits, '.', '_' or '-'; a letter or digit first)",
            ),
            pool_path=self.string(
                pool.get("path", DEFAULT_POOL_PATH), dotted(key, "pool.path"), ABS_PATH_RE, "an absolute path"
            ),
            bridge=self.ruled(
                body["bridge"],
                dotted(key, "bridge"),
                ifname_problem,
                "a Linux bridge name (at most 15 letters, digits, '.', '_' or '-'; not lo, all or default)",
            )
            if "bridge" in body
            else "",
        )

    def pool(self, raw: Any, key: str) -> AddressPool:
        body = self.mapping(raw, key)
        self.keys(body, key, ("cidr",), ("gateway", "start", "end", "block_size"))
        try:
            network = ipaddress.IPv4Network(self.string(body["cidr"], dotted(key, "cidr")), strict=True)
        except ValueError as exc:
            raise self.fail(
                dotted(key, "cidr"), f"expected an IPv4 network such as 10.1.0.0/24 ({exc})"
            ) from None
        if network.num_addresses < 4:
            raise self.fail(dotted(key, "cidr"), f"expected a network of at least 4 addresses, got {network}")
        first_host = network.network_address + 1
        last_host = network.broadcast_address - 1
        gateway = self.address(body.get("gateway", str(first_host)), dotted(key, "gateway"))
        start = self.address(body.get("start", str(gateway + 1)), dotted(key, "start"))
        end = self.address(body.get("end", str(last_host)), dotted(key, "end"))
        for label, value in (("gateway", gateway), ("start", start), ("end", end)):
            if not first_host <= value <= last_host:
                raise self.fail(dotted(key, label), f"expected a host address inside {network}, got {value}")
        if end < start:
            raise self.fail(dotted(key, "end"), f"expected an address >= start {start}, got {end}")
        if start <= gateway <= end:
            raise self.fail(dotted(key, "gateway"), f"expected an address outside start..end, got {gateway}")
        block_size = self.integer(body.get("block_size", 16), dotted(key, "block_size"), 1, 4096)
        return AddressPool(network, gateway, start, end, block_size)

    def bmc(self, raw: Any, key: str) -> Bmc:
        body = self.mapping(raw, key)
        self.keys(body, key, ("address", "username", "password"), ("driver", "verify_tls", "ca_path"))
        password = body["password"]
        if not isinstance(password, str) or not VAULT_REF_RE.match(password):
            # never echo the value: it may be a real secret typed by mistake
            raise self.fail(
                dotted(key, "password"),
                "expected a vault reference such as '{{ vault_bmc_password }}', not a literal secret",
            )
        driver = self.choice(body.get("driver", "redfish"), dotted(key, "driver"), ("redfish", "ipmi"))
        return Bmc(
            address=self.bmc_address(body["address"], dotted(key, "address"), driver),
            username=self.string(body["username"], dotted(key, "username")),
            password=password,
            driver=driver,
            verify_tls=self.boolean(body.get("verify_tls", True), dotted(key, "verify_tls")),
            ca_path=self.string(body["ca_path"], dotted(key, "ca_path"), ABS_PATH_RE, "an absolute path")
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

    def inside(self, raw: Any, key: str, pool: AddressPool) -> ipaddress.IPv4Address:
        address = self.address(raw, key)
        if address not in pool.network:
            raise self.fail(key, f"expected an address inside {pool.network}, got {address}")
        return address

    def datacenter(self, name: str, body: Mapping[str, Any], key: str) -> Datacenter:
        self.keys(
            body,
            key,
            ("address_pool",),
            ("hypervisors", "metal", "local", "loadbalancers", "execution_nodes"),
        )
        pool = self.pool(body["address_pool"], dotted(key, "address_pool"))

        def hypervisor(m_name: str, m_body: Mapping[str, Any], m_key: str) -> Machine:
            self.keys(m_body, m_key, ("uri", "capacity"), ("domain_type", "pool", "bridge"))
            return Machine(
                m_name,
                name,
                "hypervisor",
                self.resources(m_body["capacity"], dotted(m_key, "capacity")),
                uri=self.string(m_body["uri"], dotted(m_key, "uri")),
                virt=self.virt(m_body, m_key),
            )

        def metal(m_name: str, m_body: Mapping[str, Any], m_key: str) -> Machine:
            self.keys(m_body, m_key, ("address", "bmc", "hardware"))
            address = self.inside(m_body["address"], dotted(m_key, "address"), pool)
            return Machine(
                m_name,
                name,
                "metal",
                self.resources(m_body["hardware"], dotted(m_key, "hardware")),
                address=address,
                bmc=self.bmc(m_body["bmc"], dotted(m_key, "bmc")),
            )

        def local(m_name: str, m_body: Mapping[str, Any], m_key: str) -> Machine:
            self.keys(m_body, m_key, ("capacity",))
            return Machine(
                m_name, name, "local", self.resources(m_body["capacity"], dotted(m_key, "capacity"))
            )

        machines = (
            self.named_entries(body.get("hypervisors"), dotted(key, "hypervisors"), hypervisor)
            + self.named_entries(body.get("metal"), dotted(key, "metal"), metal)
            + self.named_entries(body.get("local"), dotted(key, "local"), local)
        )

        def utility(role: str) -> Callable[[str, Mapping[str, Any], str], LoadBalancer]:
            return lambda lb_name, lb_body, lb_key: loadbalancer(lb_name, lb_body, lb_key, role)

        def loadbalancer(lb_name: str, lb_body: Mapping[str, Any], lb_key: str, role: str) -> LoadBalancer:
            self.keys(lb_body, lb_key, ("address",), ("machine",))
            address = self.inside(lb_body["address"], dotted(lb_key, "address"), pool)
            machine = ""
            if "machine" in lb_body:
                machine = self.name(lb_body["machine"], dotted(lb_key, "machine"))
                carriers = [m.name for m in machines if m.kind != "metal"]
                if machine not in carriers:
                    declared = some(carriers) or "none declared"
                    raise self.fail(
                        dotted(lb_key, "machine"),
                        f"expected a hypervisor or local machine of datacenter {name} ({declared}), "
                        f"got {machine!r}{suggest(machine, carriers)}",
                    )
            return LoadBalancer(lb_name, name, address, machine, role)

        loadbalancers = tuple(
            node
            for role, section in UTILITY_SECTIONS.items()
            for node in self.named_entries(body.get(section), dotted(key, section), utility(role))
        )
        return Datacenter(name, pool, machines, loadbalancers)

    def service(self, name: str, body: Mapping[str, Any], key: str) -> Service:
        self.keys(
            body, key, ("artifact", "version", "port", "health", "resources", "substrate"), ("database",)
        )
        health_key = dotted(key, "health")
        health = self.mapping(body["health"], health_key)
        self.keys(health, health_key, ("path",), ("status",))
        path = self.string(
            health["path"], dotted(health_key, "path"), URL_PATH_RE, "a URL path starting with '/'"
        )
        return Service(
            name=name,
            # a file name is built from it (<artifact>-<version>.tar.gz): a name, never a path
            artifact=self.name(body["artifact"], dotted(key, "artifact")),
            version=self.version(body["version"], dotted(key, "version")),
            port=self.integer(body["port"], dotted(key, "port"), 1, 65535),
            health=HealthCheck(
                path, self.integer(health.get("status", 200), dotted(health_key, "status"), 100, 599)
            ),
            resources=self.resources(body["resources"], dotted(key, "resources"), disk=True),
            substrate=self.choice(body["substrate"], dotted(key, "substrate"), SUBSTRATES),
            database=parse_need(self, body["database"], dotted(key, "database"), name)
            if "database" in body
            else None,
        )


def _max_unavailable(reader: Reader, raw: Any, key: str, instances: int) -> int:
    """`max_unavailable` as a count: an integer, or a percentage of the instances (rounded down).

    A service with no instances here has nothing to take down: its value is checked, and resolves to 0.
    """
    if isinstance(raw, str):
        match = PERCENT_RE.match(raw)
        if not match or not 0 < int(match.group(1)) <= 100:
            raise reader.fail(key, f"expected an integer or a percentage between 1% and 100%, got {raw!r}")
        count = instances * int(match.group(1)) // 100
        if instances and count < 1:
            raise reader.fail(
                key, f"{raw} of {instances} instances rounds down to 0: expected at least 1 instance"
            )
        return count
    count = reader.integer(raw, key, 1)
    if not instances:
        return 0
    if count > instances:
        raise reader.fail(key, f"expected at most the service's {instances} instances, got {count}")
    return count


def parse_topology(raw: Any, source: str, written: AsWritten | None = None) -> Topology:
    """Validate a whole spec (the content of a ``*.berth.yml`` file) and return the typed model.

    `written` (from `source.read_as_written`) lets a refusal quote the file as written.
    """
    parser = _SpecParser(source, written)
    top = parser.mapping(raw, "")
    parser.keys(top, "", TOP_REQUIRED, TOP_OPTIONAL)
    parser.choice(top["plugin"], "plugin", (PLUGIN,))

    estate = parser.mapping(top["estate"], "estate")
    parser.keys(estate, "estate", ("datacenters",), ("lab_namespace",))
    datacenters = parser.named_entries(
        estate["datacenters"], "estate.datacenters", parser.datacenter, allow_empty=False
    )
    services = parser.named_entries(top["services"], "services", parser.service, allow_empty=False)

    env = parser.mapping(top["environment"], "environment")
    parser.keys(
        env, "environment", ("name", "services"), ("colocation", "spread", "max_unavailable", "databases")
    )
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
    environment = parser.name(env["name"], "environment.name")
    policies = _policies(parser, env, services)
    databases = parse_estate(
        parser,
        env.get("databases"),
        "environment.databases",
        {name: policy.database for name, policy in policies.items() if policy.database is not None},
        parser.resources,
    )
    topology = Topology(
        source=source,
        environment=environment,
        colocation=parser.boolean(env.get("colocation", False), "environment.colocation"),
        spread=spread,
        datacenters=datacenters,
        services=services,
        policies=policies,
        lab_namespace=_lab_namespace(parser, estate, datacenters, environment),
        databases=databases,
    )
    check_references(topology)
    return topology


def _policies(
    parser: _SpecParser, env: Mapping[str, Any], services: tuple[Service, ...]
) -> dict[str, ServicePolicy]:
    key = "environment.services"
    per_service = parser.mapping(env["services"], key)
    declared = [s.name for s in services]
    for name in per_service:
        if name not in declared:
            raise parser.fail(
                dotted(key, name),
                f"unknown service (declared: {some(declared)}){suggest(name, declared)}",
            )
    default_unavailable = env.get("max_unavailable", 1)
    policies = {}
    for service in services:
        s_key = dotted(key, service.name)
        if service.name not in per_service:
            raise parser.fail(s_key, "is required: every declared service needs an instance count here")
        body = parser.mapping(per_service[service.name], s_key)
        parser.keys(body, s_key, ("instances",), ("max_unavailable", "strategy", "parallel_run", "database"))
        instances = parser.integer(body["instances"], dotted(s_key, "instances"), 0)
        if "max_unavailable" in body:
            unavailable_raw, unavailable_key = body["max_unavailable"], dotted(s_key, "max_unavailable")
        else:
            unavailable_raw, unavailable_key = default_unavailable, "environment.max_unavailable"
        unavailable = _max_unavailable(parser, unavailable_raw, unavailable_key, instances)
        strategy = parse_strategy(parser, body.get("strategy"), dotted(s_key, "strategy"), service.health)
        parallel = (
            parse_parallel_run(parser, body["parallel_run"], dotted(s_key, "parallel_run"))
            if body.get("parallel_run") is not None
            else None
        )
        gated = (strategy.blue_green or strategy.canary) if strategy.kind != "rolling" else None
        if gated is not None and gated.gate is not None and parallel is None:
            raise parser.fail(
                dotted(dotted(dotted(s_key, "strategy"), strategy.kind), "parallel_run"),
                f"a gate on a parallel run, and {service.name} has none here: give "
                f"environment.services.{service.name}.parallel_run its settings, or drop the gate",
            )
        if "database" in body:
            database = parse_plan(
                parser,
                body["database"],
                dotted(s_key, "database"),
                service.database,
                service.name,
                parser.resources,
            )
        elif service.database is not None:
            raise parser.fail(
                dotted(s_key, "database"),
                f"is required: {service.name} has a database (services.{service.name}.database); say how "
                "this environment provides it: {mode: shared} or {mode: dedicated, replicas: N}",
            )
        else:
            database = None
        policies[service.name] = ServicePolicy(instances, unavailable, strategy, parallel, database)
    _check_preview_ports(parser, services, policies)
    return policies


def _check_preview_ports(
    parser: Reader, services: tuple[Service, ...], policies: Mapping[str, ServicePolicy]
) -> None:
    """A blue-green preview port is bound on every load balancer beside the services' own ports."""
    taken = {s.port: f"the port of service {s.name}" for s in services}
    for service in services:
        blue_green = policies[service.name].strategy.blue_green
        if blue_green is None:
            continue
        key = f"environment.services.{service.name}.strategy.blue_green.preview_port"
        if blue_green.preview_port in taken:
            raise parser.fail(
                key,
                f"expected a port no load balancer binds yet: {blue_green.preview_port} is "
                f"{taken[blue_green.preview_port]}",
            )
        taken[blue_green.preview_port] = f"the preview port of service {service.name}"


def _lab_namespace(
    parser: Reader, estate: Mapping[str, Any], datacenters: tuple[Datacenter, ...], environment: str
) -> str:
    """Local machines always live in a lab namespace; other estates only when they say so."""
    if "lab_namespace" in estate:
        return parser.ruled(
            estate["lab_namespace"],
            "estate.lab_namespace",
            netns_problem,
            "a network namespace name (letters, digits, '.', '_', '-')",
        )
    if any(m.kind == "local" for dc in datacenters for m in dc.machines):
        return default_namespace(environment)
    return ""
