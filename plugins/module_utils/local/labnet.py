# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab network: one network namespace holding one routed Linux bridge per data center.

Nothing here ever connects the namespace to the machine's own network (no veth out, no NAT): the
lab's only traffic is between its bridges, the hosts attached to them and processes that enter the
namespace. Everything is done with iproute2 argument lists; the logic is split into observe (parse
``ip -j``), plan (a pure diff into steps) and apply, so the plan is unit-testable without root.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.command import (
    Runner,
    subprocess_runner,
)
from ansible_collections.berth.fleet.plugins.module_utils.common.netns import netns_path
from ansible_collections.berth.fleet.plugins.module_utils.common.rules import ifname_problems, netns_problem


class LabNetError(Exception):
    """Anything that stops the lab network from being read, validated or changed."""


# --- desired state ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BridgeSpec:
    name: str
    address: str  # gateway address with prefix, e.g. 10.77.1.1/24

    @property
    def interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(self.address)


@dataclass(frozen=True)
class LabNetworkSpec:
    namespace: str
    bridges: tuple[BridgeSpec, ...] = ()
    state: str = "present"
    purge: bool = True
    force: bool = False

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> LabNetworkSpec:
        bridges = tuple(
            BridgeSpec(name=str(item["name"]), address=str(item["address"]))
            for item in params["bridges"] or ()
        )
        spec = cls(
            namespace=str(params["namespace"]),
            bridges=bridges,
            state=str(params["state"]),
            purge=bool(params.get("purge", True)),
            force=bool(params.get("force", False)),
        )
        spec.validate()
        return spec

    def validate(self) -> None:
        problems = validate_spec(self)
        if problems:
            raise LabNetError("invalid lab network: " + "; ".join(problems))

    def desired_addresses(self) -> dict[str, str]:
        return {bridge.name: str(bridge.interface) for bridge in self.bridges}


def validate_spec(spec: LabNetworkSpec) -> list[str]:
    problems: list[str] = []
    if (problem := netns_problem(spec.namespace)) is not None:
        problems.append(f"namespace {problem}")
    if spec.state not in ("present", "absent"):
        problems.append(f"state must be present or absent, not {spec.state!r}")
    seen_names: set[str] = set()
    networks: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
    for bridge in spec.bridges:
        problems.extend(validate_ifname(bridge.name, "bridge name"))
        if bridge.name in seen_names:
            problems.append(f"bridge {bridge.name!r} is listed twice")
        seen_names.add(bridge.name)
        if "/" not in bridge.address:
            problems.append(f"bridge {bridge.name}: address {bridge.address!r} needs a prefix (10.77.1.1/24)")
            continue
        try:
            iface = bridge.interface
        except ValueError as exc:
            problems.append(f"bridge {bridge.name}: {exc}")
            continue
        network = iface.network
        if network.num_addresses > 2 and iface.ip in (network.network_address, network.broadcast_address):
            problems.append(f"bridge {bridge.name}: {iface} is the network or broadcast address of {network}")
        for other_name, other in networks:
            if network.version == other.version and network.overlaps(other):
                problems.append(f"bridges {other_name} and {bridge.name} have overlapping subnets")
        networks.append((bridge.name, network))
    return problems


def validate_ifname(name: str, what: str) -> list[str]:
    return ifname_problems(name, what)


# --- observed state -----------------------------------------------------------------------------


@dataclass
class LinkState:
    name: str
    kind: str  # "bridge", "veth", "loopback", ... ("" when iproute2 reports none)
    up: bool
    master: str | None
    addresses: list[str] = field(default_factory=list)  # global-scope addresses with prefix


@dataclass
class ObservedNetwork:
    exists: bool
    links: dict[str, LinkState] = field(default_factory=dict)
    ip_forward: bool = False

    @property
    def bridges(self) -> dict[str, LinkState]:
        return {name: link for name, link in self.links.items() if link.kind == "bridge"}

    def ports_of(self, bridge: str) -> list[str]:
        return sorted(name for name, link in self.links.items() if link.master == bridge)

    def attached_ports(self) -> list[str]:
        return sorted(name for name, link in self.links.items() if link.master is not None)

    def summary(self) -> dict[str, Any]:
        """What diff and return values show: existence, bridges with their addresses, forwarding."""
        if not self.exists:
            return {"state": "absent", "bridges": {}, "ip_forward": False}
        return {
            "state": "present",
            "bridges": {name: ",".join(link.addresses) for name, link in sorted(self.bridges.items())},
            "ip_forward": self.ip_forward,
        }


def parse_netns_list(text: str) -> list[str]:
    """Names from ``ip -j netns list`` (which prints nothing at all when there are none)."""
    if not text.strip():
        return []
    return [str(entry["name"]) for entry in json.loads(text)]


def parse_links(text: str) -> dict[str, LinkState]:
    """Links from ``ip -d -j addr show``: kind, up flag, bridge master and global addresses."""
    links: dict[str, LinkState] = {}
    for entry in json.loads(text or "[]"):
        kind = str(entry.get("linkinfo", {}).get("info_kind", ""))
        if entry.get("link_type") == "loopback":
            kind = "loopback"
        addresses = [
            f"{info['local']}/{info['prefixlen']}"
            for info in entry.get("addr_info", [])
            if info.get("scope") == "global" and "local" in info
        ]
        name = str(entry["ifname"])
        links[name] = LinkState(
            name=name,
            kind=kind,
            up="UP" in entry.get("flags", []),
            master=entry.get("master"),
            addresses=addresses,
        )
    return links


# --- plan ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    description: str
    argv: tuple[str, ...]


def plan_present(spec: LabNetworkSpec, observed: ObservedNetwork) -> list[Step]:
    ns = spec.namespace
    steps: list[Step] = []
    links = observed.links if observed.exists else {}
    if not observed.exists:
        steps.append(Step(f"create network namespace {ns}", ("ip", "netns", "add", ns)))
    lo = links.get("lo")
    if lo is None or not lo.up:
        steps.append(Step("bring lo up", ("ip", "-n", ns, "link", "set", "lo", "up")))
    for bridge in spec.bridges:
        current = links.get(bridge.name)
        if current is not None and current.kind != "bridge":
            raise LabNetError(
                f"{bridge.name} exists in namespace {ns} but is a {current.kind or 'non-bridge'} link"
            )
        if current is None:
            steps.append(
                Step(
                    f"create bridge {bridge.name}",
                    ("ip", "-n", ns, "link", "add", "name", bridge.name, "type", "bridge"),
                )
            )
        wanted = str(bridge.interface)
        have = current.addresses if current else []
        for stale in have:
            if stale != wanted:
                steps.append(
                    Step(
                        f"remove {stale} from {bridge.name}",
                        ("ip", "-n", ns, "addr", "del", stale, "dev", bridge.name),
                    )
                )
        if wanted not in have:
            add = ("ip", "-n", ns, "addr", "add", wanted, "dev", bridge.name)
            steps.append(Step(f"add {wanted} to {bridge.name}", add))
        if current is None or not current.up:
            steps.append(Step(f"bring {bridge.name} up", ("ip", "-n", ns, "link", "set", bridge.name, "up")))
    if spec.purge:
        wanted_names = {bridge.name for bridge in spec.bridges}
        for name in sorted(set(observed.bridges) - wanted_names if observed.exists else ()):
            ports = observed.ports_of(name)
            if ports and not spec.force:
                raise LabNetError(
                    f"bridge {name} in namespace {ns} is not in the spec but machines are attached "
                    f"({', '.join(ports)}); stop them first or set force=true"
                )
            steps.append(Step(f"delete bridge {name}", ("ip", "-n", ns, "link", "del", name)))
    if not observed.ip_forward:
        steps.append(
            Step(
                "enable IPv4 forwarding between the bridges",
                ("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"),
            )
        )
    return steps


def plan_absent(spec: LabNetworkSpec, observed: ObservedNetwork) -> list[Step]:
    if not observed.exists:
        return []
    ports = observed.attached_ports()
    if ports and not spec.force:
        raise LabNetError(
            f"namespace {spec.namespace} still has machines attached ({', '.join(ports)}); "
            "stop them first or set force=true"
        )
    return [Step(f"delete network namespace {spec.namespace}", ("ip", "netns", "delete", spec.namespace))]


def predicted_summary(spec: LabNetworkSpec, observed: ObservedNetwork) -> dict[str, Any]:
    """What summary() will show once the plan is applied (used for check mode's diff)."""
    if spec.state == "absent":
        return {"state": "absent", "bridges": {}, "ip_forward": False}
    bridges = {} if spec.purge else dict(observed.summary()["bridges"])
    bridges.update(spec.desired_addresses())
    return {"state": "present", "bridges": dict(sorted(bridges.items())), "ip_forward": True}


# --- manager ------------------------------------------------------------------------------------


@dataclass
class LabNetResult:
    changed: bool
    namespace: str
    netns_path: str
    steps: list[str]
    before: dict[str, Any]
    after: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "namespace": self.namespace,
            "netns_path": self.netns_path,
            "actions": self.steps,
            "bridges": self.after.get("bridges", {}),
            "diff": {"before": self.before, "after": self.after},
        }


class LabNetwork:
    def __init__(self, spec: LabNetworkSpec, runner: Runner = subprocess_runner) -> None:
        self.spec = spec
        self.runner = runner

    def _run(self, argv: Iterable[str]) -> str:
        args = list(argv)
        result = self.runner(args)
        if result.rc != 0:
            raise LabNetError(f"{' '.join(args)} failed (rc={result.rc}): {result.stderr.strip()}")
        return result.stdout

    def observe(self) -> ObservedNetwork:
        ns = self.spec.namespace
        if ns not in parse_netns_list(self._run(["ip", "-j", "netns", "list"])):
            return ObservedNetwork(exists=False)
        links = parse_links(self._run(["ip", "-n", ns, "-d", "-j", "addr", "show"]))
        forward = self._run(["ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.ip_forward"]).strip()
        return ObservedNetwork(exists=True, links=links, ip_forward=forward == "1")

    def ensure(self, check_mode: bool) -> LabNetResult:
        try:
            return self._ensure(check_mode)
        except OSError as exc:  # iproute2 missing, /run not writable, ...
            raise LabNetError(f"lab network {self.spec.namespace}: {exc}") from exc

    def _ensure(self, check_mode: bool) -> LabNetResult:
        observed = self.observe()
        if self.spec.state == "absent":
            steps = plan_absent(self.spec, observed)
        else:
            steps = plan_present(self.spec, observed)
        before = observed.summary()
        if steps and not check_mode:
            self._apply(steps, created=not observed.exists)
            after = self.observe().summary()
        else:
            after = predicted_summary(self.spec, observed) if steps else before
        return LabNetResult(
            changed=bool(steps),
            namespace=self.spec.namespace,
            netns_path=str(netns_path(self.spec.namespace)),
            steps=[step.description for step in steps],
            before=before,
            after=after,
        )

    def _apply(self, steps: Sequence[Step], created: bool) -> None:
        try:
            for step in steps:
                self._run(step.argv)
        except LabNetError:
            # A namespace this run created and could not finish is removed, not left half-built.
            if created and self.spec.state == "present":
                self.runner(["ip", "netns", "delete", self.spec.namespace])
            raise
