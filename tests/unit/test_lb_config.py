"""lb_config: a load balancer's files and HAProxy converged in one run (fake systemctl and haproxy -c)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.common.command import CommandResult
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.config import (
    ConfigRequest,
    LoadBalancerConfig,
    ManagedFile,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import HaproxyError


class FakeHost:
    """systemctl and haproxy -c as they answer on a load balancer."""

    def __init__(self, active: bool = True, enabled: bool = True, valid: bool = True) -> None:
        self.active, self.enabled, self.valid = active, enabled, valid
        self.calls: list[list[str]] = []
        self.checked: list[str] = []  # the content haproxy -c saw

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "haproxy":
            self.checked.append(Path(argv[-1]).read_text())
            return CommandResult(0, "", "") if self.valid else CommandResult(1, "", "[ALERT] parsing error")
        verb = argv[1]
        if verb == "show":
            state = "active" if self.active else "inactive"
            unit_file = "enabled" if self.enabled else "disabled"
            return CommandResult(0, f"LoadState=loaded\nActiveState={state}\nUnitFileState={unit_file}\n", "")
        if verb == "start":
            self.active = True
        if verb == "enable":
            self.enabled = True
        return CommandResult(0, "", "")

    @property
    def verbs(self) -> list[str]:
        return [argv[1] if argv[0] == "systemctl" else "haproxy -c" for argv in self.calls]


def request(tmp_path: Path, config: str = "global\n", dropin: str = "[Service]\n") -> ConfigRequest:
    return ConfigRequest(
        config=ManagedFile(str(tmp_path / "etc/haproxy/haproxy.cfg"), config),
        files=(ManagedFile(str(tmp_path / "etc/systemd/system/haproxy.service.d/x.conf"), dropin),),
    )


def apply(req: ConfigRequest, host: FakeHost, check_mode: bool = False):  # type: ignore[no-untyped-def]
    return LoadBalancerConfig(req, host, check_mode).apply()


def test_a_new_config_is_checked_written_and_haproxy_started_and_enabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.config.SYSTEMD_DIR",
        str(tmp_path / "etc/systemd/"),
    )
    host = FakeHost(active=False, enabled=False)
    outcome = apply(request(tmp_path), host)
    assert outcome.changed and host.checked == ["global\n"]
    assert (tmp_path / "etc/haproxy/haproxy.cfg").read_text() == "global\n"
    assert host.verbs == ["haproxy -c", "show", "daemon-reload", "enable", "start"]
    assert not list((tmp_path / "etc/haproxy").glob(".berth-check.*"))  # the candidate is gone
    again = FakeHost()
    assert not apply(request(tmp_path), again).changed and again.verbs == ["show"]


def test_a_changed_config_reloads_and_an_invalid_one_never_lands(tmp_path: Path) -> None:
    apply(request(tmp_path), FakeHost())
    host = FakeHost()
    outcome = apply(request(tmp_path, config="global\n    maxconn 10\n"), host)
    assert outcome.actions == ["reload haproxy.service"] and host.verbs == ["haproxy -c", "show", "reload"]
    bad = FakeHost(valid=False)
    with pytest.raises(
        HaproxyError, match=r"(?s)does not pass haproxy -c, so it was not written.*parsing error"
    ):
        apply(request(tmp_path, config="broken\n"), bad)
    assert (tmp_path / "etc/haproxy/haproxy.cfg").read_text() == "global\n    maxconn 10\n"
    assert bad.verbs == ["haproxy -c"]


def test_check_mode_plans_and_changes_nothing(tmp_path: Path) -> None:
    host = FakeHost(active=False)
    outcome = apply(request(tmp_path), host, check_mode=True)
    assert outcome.changed and not (tmp_path / "etc/haproxy/haproxy.cfg").exists()
    assert outcome.actions[-1] == "start haproxy.service" and "start" not in host.verbs
    assert [d["after"] for d in outcome.diff] == ["[Service]\n", "global\n"]


def test_bad_requests_are_refused_before_anything_runs(tmp_path: Path) -> None:
    host = FakeHost()
    relative = ConfigRequest(config=ManagedFile("haproxy.cfg", "x"))
    with pytest.raises(HaproxyError, match="config: path must be absolute"):
        apply(relative, host)
    twice = ConfigRequest(config=ManagedFile("/a", "x"), files=(ManagedFile("/a", "y"),))
    with pytest.raises(HaproxyError, match="every file must be named once"):
        apply(twice, host)
    assert host.calls == []


def test_servers_are_reported_once_their_first_check_ran_never_up_on_no_evidence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy import config
    from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.state import ServerState

    def server(name: str, check: str) -> ServerState:
        return ServerState("be_app", name, "ready", "UP", 0, 0, 1, check, "")

    answers = iter(
        [
            {"s1": server("s1", "* INI"), "s2": server("s2", "INI")},  # just started: assumed UP
            {"s1": server("s1", "L4CON"), "s2": server("s2", "INI")},
            {"s1": server("s1", "L4CON"), "s2": server("s2", "L7OK 200")},
        ]
    )
    monkeypatch.setattr(config, "read_servers", lambda transport, backend: next(answers))
    clock = iter(range(100))
    seen = config.read_after_checks(None, ["be_app"], clock=lambda: next(clock), sleep=lambda s: None)  # type: ignore[arg-type]
    assert [s.check_status for s in seen["be_app"].values()] == ["L4CON", "L7OK 200"]
    stuck = iter([{"s1": server("s1", "INI")}] * 20)
    monkeypatch.setattr(config, "read_servers", lambda transport, backend: next(stuck))
    clock = iter(range(100))
    late = config.read_after_checks(
        None, ["be_app"], timeout=3, clock=lambda: next(clock), sleep=lambda s: None
    )  # type: ignore[arg-type]
    assert not late["be_app"]["s1"].in_rotation  # the deadline passed without a check: not UP


def test_an_initial_file_is_written_only_where_missing_and_check_mode_validates_a_stand_in(
    tmp_path: Path,
) -> None:
    routes = str(tmp_path / "etc/haproxy/berth-routes/orders.map")
    config = f"frontend fe\n    use_backend %[str(live),map({routes},be_orders_blue)]\n"

    def req(content: str) -> ConfigRequest:
        return ConfigRequest(
            config=ManagedFile(str(tmp_path / "etc/haproxy/haproxy.cfg"), config),
            initial=(ManagedFile(routes, content),),
        )

    host = FakeHost()
    # check mode: nothing written, but haproxy -c saw the config pointing at a copy of the map
    planned = apply(req("live be_orders_blue\n"), host, check_mode=True)
    assert planned.changed and not Path(routes).exists() and f"write {routes}" in planned.actions
    assert routes not in host.checked[0] and "map(" in host.checked[0]
    assert not list(Path("/tmp").glob(".berth-check.*.map"))  # the stand-in is gone
    # a real run writes it (before the config that needs it is checked) ...
    assert apply(req("live be_orders_blue\n"), FakeHost()).changed
    assert Path(routes).read_text() == "live be_orders_blue\n"
    # ... and never again: the map is HAProxy's (lb_route switches it), not the role's
    Path(routes).write_text("live be_orders_green\n")
    again = apply(req("live be_orders_blue\n"), FakeHost())
    assert not again.changed and Path(routes).read_text() == "live be_orders_green\n"
