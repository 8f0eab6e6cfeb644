"""The lab network's pure logic: validation, parsing `ip -j`, planning, and the manager on a fake iproute2."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.common.command import CommandResult
from ansible_collections.berth.fleet.plugins.module_utils.local.labnet import (
    BridgeSpec,
    LabNetError,
    LabNetwork,
    LabNetworkSpec,
    LinkState,
    ObservedNetwork,
    parse_links,
    parse_netns_list,
    plan_absent,
    plan_present,
    validate_spec,
)

NS = "berth-t"
DC1 = BridgeSpec("bl-dc1", "10.77.1.1/24")
DC2 = BridgeSpec("bl-dc2", "10.77.2.1/24")

# Trimmed from a real `ip -n <ns> -d -j addr show`: lo down, a bridge with an address, a machine's veth on it.
IP_ADDR_JSON = [
    {"ifindex": 1, "ifname": "lo", "flags": ["LOOPBACK"], "link_type": "loopback", "addr_info": []},
    {
        "ifindex": 2,
        "ifname": "b1",
        "flags": ["BROADCAST", "MULTICAST", "UP"],
        "link_type": "ether",
        "linkinfo": {"info_kind": "bridge", "info_data": {"stp_state": 0}},
        "addr_info": [
            {"family": "inet", "local": "10.77.5.1", "prefixlen": 24, "scope": "global"},
            {"family": "inet6", "local": "fe80::b0e4:5ff:fea4:1c44", "prefixlen": 64, "scope": "link"},
        ],
    },
    {
        "ifindex": 4,
        "ifname": "vb-x",
        "flags": ["BROADCAST", "MULTICAST", "M-DOWN"],
        "master": "b1",
        "link_type": "ether",
        "linkinfo": {"info_kind": "veth", "info_slave_kind": "bridge"},
        "addr_info": [],
    },
]


def spec(
    *bridges: BridgeSpec, state: str = "present", purge: bool = True, force: bool = False
) -> LabNetworkSpec:
    return LabNetworkSpec(namespace=NS, bridges=bridges, state=state, purge=purge, force=force)


def converged(*bridges: BridgeSpec) -> ObservedNetwork:
    links = {"lo": LinkState("lo", "loopback", True, None)}
    for bridge in bridges:
        links[bridge.name] = LinkState(bridge.name, "bridge", True, None, [bridge.address])
    return ObservedNetwork(exists=True, links=links, ip_forward=True)


# --- validation ---------------------------------------------------------------------------------


def test_a_valid_spec_has_no_problems() -> None:
    assert validate_spec(spec(DC1, DC2)) == []


@pytest.mark.parametrize(
    ("bridges", "fragment"),
    [
        ((BridgeSpec("bridge-name-16chr", "10.77.1.1/24"),), "at most 15"),
        ((BridgeSpec("bl dc1", "10.77.1.1/24"),), "must match"),
        ((BridgeSpec("lo", "10.77.1.1/24"),), "not be 'lo'"),
        ((DC1, BridgeSpec("bl-dc1", "10.77.9.1/24")), "listed twice"),
        ((BridgeSpec("bl-dc1", "10.77.1.1"),), "needs a prefix"),
        ((BridgeSpec("bl-dc1", "10.77.1.300/24"),), "bl-dc1"),
        ((BridgeSpec("bl-dc1", "10.77.1.0/24"),), "network or broadcast"),
        ((BridgeSpec("bl-dc1", "10.77.1.255/24"),), "network or broadcast"),
        ((DC1, BridgeSpec("bl-dc2", "10.77.1.129/25")), "overlapping"),
    ],
)
def test_invalid_bridges_are_reported(bridges: tuple[BridgeSpec, ...], fragment: str) -> None:
    problems = validate_spec(spec(*bridges))
    assert any(fragment in problem for problem in problems), problems


def test_invalid_namespace_is_reported_and_from_params_raises() -> None:
    assert validate_spec(LabNetworkSpec(namespace="../etc")) != []
    with pytest.raises(LabNetError, match="namespace"):
        LabNetworkSpec.from_params({"namespace": "a/b", "bridges": [], "state": "present"})


def test_from_params_builds_bridges() -> None:
    built = LabNetworkSpec.from_params(
        {"namespace": NS, "bridges": [{"name": "bl-dc1", "address": "10.77.1.1/24"}], "state": "present"}
    )
    assert built.bridges == (DC1,)
    assert built.desired_addresses() == {"bl-dc1": "10.77.1.1/24"}


# --- parsing ------------------------------------------------------------------------------------


def test_parse_netns_list_handles_empty_output() -> None:
    assert parse_netns_list("") == []
    assert parse_netns_list('[{"name":"berth-t","id":0},{"name":"other"}]\n') == ["berth-t", "other"]


def test_parse_links_reads_kind_state_master_and_global_addresses() -> None:
    links = parse_links(json.dumps(IP_ADDR_JSON))
    assert links["lo"].kind == "loopback" and not links["lo"].up
    assert links["b1"].kind == "bridge" and links["b1"].up
    assert links["b1"].addresses == ["10.77.5.1/24"]  # the fe80:: link-local address is ignored
    assert links["vb-x"].kind == "veth" and links["vb-x"].master == "b1"
    observed = ObservedNetwork(exists=True, links=links)
    assert list(observed.bridges) == ["b1"]
    assert observed.ports_of("b1") == ["vb-x"]


# --- planning -----------------------------------------------------------------------------------


def argvs(steps: Sequence[Any]) -> list[tuple[str, ...]]:
    return [step.argv for step in steps]


def test_plan_from_nothing_creates_namespace_lo_bridges_and_forwarding() -> None:
    steps = plan_present(spec(DC1, DC2), ObservedNetwork(exists=False))
    assert argvs(steps) == [
        ("ip", "netns", "add", NS),
        ("ip", "-n", NS, "link", "set", "lo", "up"),
        ("ip", "-n", NS, "link", "add", "name", "bl-dc1", "type", "bridge"),
        ("ip", "-n", NS, "addr", "add", "10.77.1.1/24", "dev", "bl-dc1"),
        ("ip", "-n", NS, "link", "set", "bl-dc1", "up"),
        ("ip", "-n", NS, "link", "add", "name", "bl-dc2", "type", "bridge"),
        ("ip", "-n", NS, "addr", "add", "10.77.2.1/24", "dev", "bl-dc2"),
        ("ip", "-n", NS, "link", "set", "bl-dc2", "up"),
        ("ip", "netns", "exec", NS, "sysctl", "-qw", "net.ipv4.ip_forward=1"),
    ]
    # nothing in the plan ever leaves the namespace: no veth, no NAT, no root-namespace link
    flat = " ".join(" ".join(argv) for argv in argvs(steps))
    assert "veth" not in flat and "iptables" not in flat and "nft" not in flat


def test_plan_is_empty_when_converged() -> None:
    assert plan_present(spec(DC1, DC2), converged(DC1, DC2)) == []


def test_plan_replaces_a_wrong_address_and_brings_the_bridge_up() -> None:
    observed = converged(DC1)
    observed.links["bl-dc1"] = LinkState("bl-dc1", "bridge", False, None, ["10.77.9.1/24"])
    assert argvs(plan_present(spec(DC1), observed)) == [
        ("ip", "-n", NS, "addr", "del", "10.77.9.1/24", "dev", "bl-dc1"),
        ("ip", "-n", NS, "addr", "add", "10.77.1.1/24", "dev", "bl-dc1"),
        ("ip", "-n", NS, "link", "set", "bl-dc1", "up"),
    ]


def test_plan_turns_forwarding_and_lo_back_on() -> None:
    observed = converged(DC1)
    observed.ip_forward = False
    observed.links["lo"].up = False
    assert [step.description for step in plan_present(spec(DC1), observed)] == [
        "bring lo up",
        "enable IPv4 forwarding between the bridges",
    ]


def test_purge_deletes_unlisted_bridges_unless_disabled() -> None:
    observed = converged(DC1, DC2)
    assert argvs(plan_present(spec(DC1), observed)) == [("ip", "-n", NS, "link", "del", "bl-dc2")]
    assert plan_present(spec(DC1, purge=False), observed) == []


def test_purge_refuses_a_bridge_with_machines_attached_unless_forced() -> None:
    observed = converged(DC1, DC2)
    observed.links["vb-web"] = LinkState("vb-web", "veth", True, "bl-dc2")
    with pytest.raises(LabNetError, match="vb-web"):
        plan_present(spec(DC1), observed)
    assert argvs(plan_present(spec(DC1, force=True), observed)) == [("ip", "-n", NS, "link", "del", "bl-dc2")]


def test_a_non_bridge_link_with_the_bridge_name_is_an_error() -> None:
    observed = converged()
    observed.links["bl-dc1"] = LinkState("bl-dc1", "veth", True, None)
    with pytest.raises(LabNetError, match="veth"):
        plan_present(spec(DC1), observed)


def test_plan_absent() -> None:
    assert plan_absent(spec(state="absent"), ObservedNetwork(exists=False)) == []
    assert argvs(plan_absent(spec(state="absent"), converged(DC1))) == [("ip", "netns", "delete", NS)]
    attached = converged(DC1)
    attached.links["vb-web"] = LinkState("vb-web", "veth", True, "bl-dc1")
    with pytest.raises(LabNetError, match="stop them first"):
        plan_absent(spec(state="absent"), attached)
    assert len(plan_absent(spec(state="absent", force=True), attached)) == 1


# --- the manager on a fake iproute2 -------------------------------------------------------------


class FakeIproute:
    """Just enough of iproute2's behaviour for one namespace: netns add/delete, bridges, addresses."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        args = list(argv)
        self.calls.append(args)
        if self.fail_on and self.fail_on in " ".join(args):
            return CommandResult(2, "", "RTNETLINK answers: Operation not permitted")
        if args[:3] == ["ip", "-j", "netns"]:
            return CommandResult(0, json.dumps([{"name": name} for name in self.namespaces]), "")
        if args[:3] == ["ip", "netns", "add"]:
            self.namespaces[args[3]] = {
                "links": {"lo": {"up": False, "kind": "loopback", "addrs": []}},
                "fwd": "0",
            }
            return CommandResult(0, "", "")
        if args[:3] == ["ip", "netns", "delete"]:
            self.namespaces.pop(args[3])
            return CommandResult(0, "", "")
        if args[:3] == ["ip", "netns", "exec"]:
            ns = self.namespaces[args[3]]
            if "-qw" in args:
                ns["fwd"] = "1"
                return CommandResult(0, "", "")
            return CommandResult(0, ns["fwd"] + "\n", "")
        assert args[:2] == ["ip", "-n"], args
        links = self.namespaces[args[2]]["links"]
        rest = args[3:]
        if rest[:4] == ["-d", "-j", "addr", "show"]:
            entries = [
                {
                    "ifname": name,
                    "flags": ["UP"] if link["up"] else [],
                    "link_type": "loopback" if name == "lo" else "ether",
                    "linkinfo": {"info_kind": link["kind"]},
                    "addr_info": [
                        {
                            "family": "inet",
                            "local": a.split("/")[0],
                            "prefixlen": int(a.split("/")[1]),
                            "scope": "global",
                        }
                        for a in link["addrs"]
                    ],
                }
                for name, link in links.items()
            ]
            return CommandResult(0, json.dumps(entries), "")
        if rest[:2] == ["link", "add"]:
            links[rest[3]] = {"up": False, "kind": "bridge", "addrs": []}
        elif rest[:2] == ["link", "set"]:
            links[rest[2]]["up"] = True
        elif rest[:2] == ["link", "del"]:
            links.pop(rest[2])
        elif rest[:2] == ["addr", "add"]:
            links[rest[4]]["addrs"].append(rest[2])
        elif rest[:2] == ["addr", "del"]:
            links[rest[4]]["addrs"].remove(rest[2])
        return CommandResult(0, "", "")


def test_manager_converges_then_is_idempotent_and_absent_removes_everything() -> None:
    ip = FakeIproute()
    first = LabNetwork(spec(DC1, DC2), runner=ip).ensure(check_mode=False)
    assert first.changed
    assert first.before == {"state": "absent", "bridges": {}, "ip_forward": False}
    assert first.after == {
        "state": "present",
        "bridges": {"bl-dc1": "10.77.1.1/24", "bl-dc2": "10.77.2.1/24"},
        "ip_forward": True,
    }
    second = LabNetwork(spec(DC1, DC2), runner=ip).ensure(check_mode=False)
    assert not second.changed and second.steps == []
    gone = LabNetwork(spec(state="absent"), runner=ip).ensure(check_mode=False)
    assert gone.changed and ip.namespaces == {}
    assert not LabNetwork(spec(state="absent"), runner=ip).ensure(check_mode=False).changed


def test_check_mode_reports_the_change_and_runs_no_mutation() -> None:
    ip = FakeIproute()
    result = LabNetwork(spec(DC1), runner=ip).ensure(check_mode=True)
    assert result.changed
    assert result.after["bridges"] == {"bl-dc1": "10.77.1.1/24"}
    assert ip.namespaces == {}
    assert all(call[:3] == ["ip", "-j", "netns"] for call in ip.calls)


def test_a_failed_build_removes_the_namespace_it_created() -> None:
    ip = FakeIproute(fail_on="addr add 10.77.2.1/24")
    with pytest.raises(LabNetError, match="Operation not permitted"):
        LabNetwork(spec(DC1, DC2), runner=ip).ensure(check_mode=False)
    assert ip.namespaces == {}


def test_result_dict_carries_diff_and_bridges() -> None:
    result = LabNetwork(spec(DC1), runner=FakeIproute()).ensure(check_mode=False).as_dict()
    assert result["bridges"] == {"bl-dc1": "10.77.1.1/24"}
    assert result["netns_path"] == f"/run/netns/{NS}"
    assert set(result["diff"]) == {"before", "after"}
