"""The HAProxy Runtime API client: parsing, planning and the manager, on a fake HAProxy (no socket, no sleep).

The fake answers like Debian's HAProxy 2.6.12 does (texts captured from it), including its quirk of
putting a server that leaves MAINT straight back UP on the strength of the check before the maintenance.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.member import (
    HaproxyServer,
    HaproxyTimeout,
    apply_request,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.plan import (
    MemberRequest,
    admin_steps,
    plan_change,
    predict,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import (
    HaproxyError,
    UnixSocketTransport,
    parse_servers_state,
    parse_stat_csv,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.state import (
    ServerState,
    admin_from_flags,
    describe_check,
    operational_from,
    read_servers,
)
from tests.lb_member_states import EXPECTED

STAT_HEADER = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,"
    "weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,"
    "rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,"
    "hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,"
    "lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,"
    "agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,"
    "conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,"
    "srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,"
    "used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,"
    "ssl_sess,ssl_reused_sess,ssl_failed_handshake,"
)
STAT_FIELDS = STAT_HEADER[2:].rstrip(",").split(",")

# verbatim from `show servers state app` on HAProxy 2.6.12: s1 in DRAIN and DOWN (L7STS), s2 UP
SERVERS_STATE = (
    "1\n"
    "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight "
    "srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state "
    "srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port "
    "srv_check_addr srv_agent_addr srv_agent_port\n"
    "3 app 1 s1 127.0.0.1 0 8 1 1 0 17 2 0 6 0 0 0 - 18081 - 0 0 - - 0\n"
    "3 app 2 s2 127.0.0.1 2 0 1 1 8 15 3 3 6 0 0 0 - 18082 - 0 0 - - 0\n"
    "\n"
)


def stat_line(backend: str, server: str, **values: str | int) -> str:
    row = dict.fromkeys(STAT_FIELDS, "")
    row.update(pxname=backend, svname=server, qcur="0", scur="0", status="UP")
    row.update({key: str(value) for key, value in values.items()})
    return ",".join(row[name] for name in STAT_FIELDS) + ","


def state(**overrides: object) -> ServerState:
    values: dict[str, object] = {
        "backend": "app",
        "server": "s1",
        "admin": "ready",
        "operational": "UP",
        "current_sessions": 0,
        "queued_sessions": 0,
        "weight": 1,
        "check_status": "L7OK 200",
        "last_check": "Layer7 check passed",
        "checks_enabled": True,
    }
    values.update(overrides)
    return ServerState(**values)  # type: ignore[arg-type]


def request(**params: object) -> MemberRequest:
    values: dict[str, object] = {"backend": "app", "server": "s1", "state": "drain"}
    values.update(params)
    return MemberRequest.from_params(values)


# --- a fake HAProxy 2.6 -------------------------------------------------------------------------


@dataclass
class FakeServer:
    name: str
    server_id: int
    op_state: int = 2  # RUNNING
    admin: int = 0
    weight: int = 1
    scur: int = 0
    qcur: int = 0
    check_state: int = 6  # configured + enabled
    healthy: bool = True
    health: int = 3  # rise + fall - 1 with rise 2 fall 2
    rise: int = 2
    fall: int = 2
    check_result: tuple[str, str, str, str] = ("L7OK", "200", "Layer7 check passed", "")
    requests: int = 0  # req_tot
    errors_5xx: int = 0  # hrsp_5xx

    @property
    def status(self) -> str:
        """show stat's status column, as HAProxy 2.6 writes it."""
        if self.admin & 0x01:
            return "MAINT"
        if not self.check_state & 0x04:
            return "no check"
        if self.op_state == 0:
            return "DOWN"
        return "DRAIN" if self.admin & 0x08 else "UP"


@dataclass
class FakeHaproxy:
    """Answers Runtime API commands like HAProxy 2.6 and runs one health check per tick."""

    backend: str = "app"
    backend_id: int = 3
    servers: dict[str, FakeServer] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)  # command prefix -> answer
    now: float = 0.0
    sessions_end_at: dict[str, float] = field(default_factory=dict)
    own_5xx: int = 0  # the 503s HAProxy answered itself (no server left): counted on the backend only

    def add(self, name: str, **values: object) -> FakeServer:
        server = FakeServer(name=name, server_id=len(self.servers) + 1, **values)  # type: ignore[arg-type]
        self.servers[name] = server
        return server

    # clock and sleep for HaproxyServer: time passes only when the client sleeps
    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        ticks_before = int(self.now / 0.1 + 1e-9)
        self.now += seconds
        for _tick in range(int(self.now / 0.1 + 1e-9) - ticks_before):
            self.run_checks()
        for name, at in self.sessions_end_at.items():
            if self.now >= at:
                self.servers[name].scur = self.servers[name].qcur = 0

    def run_checks(self) -> None:
        for server in self.servers.values():
            if server.admin & 0x01 or not server.check_state & 0x04:
                continue
            if server.healthy:
                server.check_result = ("L7OK", "200", "Layer7 check passed", "")
                if server.op_state == 0:
                    server.health += 1
                    if server.health >= server.rise:
                        server.op_state, server.health = 2, server.rise + server.fall - 1
                else:
                    server.health = min(server.health + 1, server.rise + server.fall - 1)
            else:
                server.check_result = ("L7STS", "503", "Layer7 wrong status", "Service Unavailable")
                if server.op_state == 2:
                    server.health -= 1
                    if server.health < server.rise:
                        server.op_state, server.health = 0, 0
                else:
                    server.health = 0

    def __call__(self, command: str) -> str:
        self.commands.append(command)
        for prefix, answer in self.refuse.items():
            if command.startswith(prefix):
                return answer
        words = command.split()
        if words[:3] == ["show", "servers", "state"]:
            return self.show_servers_state(words[3])
        if words[:2] == ["show", "stat"]:
            backend_id, types, server_id = int(words[2]), int(words[3]), int(words[4])
            if types == 4:  # the tests that spy on show_stat replace this two-argument form
                return self.show_stat(backend_id, server_id)
            return self.show_stat(backend_id, server_id, types)
        if words[:2] == ["set", "server"] or words[:3] == ["shutdown", "sessions", "server"]:
            target = words[3] if words[0] == "shutdown" else words[2]
            backend, _slash, name = target.partition("/")
            if backend != self.backend:
                return "No such backend.\n\n"
            if name not in self.servers:
                return "No such server.\n\n"
            return self.change(self.servers[name], words)
        return "Unknown command.\n\n"

    def show_servers_state(self, backend: str) -> str:
        if backend != self.backend:
            return "Can't find backend.\n\n"
        lines = SERVERS_STATE.splitlines()[:2]
        for server in self.servers.values():
            lines.append(
                f"{self.backend_id} {self.backend} {server.server_id} {server.name} 127.0.0.1 {server.op_state} "
                f"{server.admin} {server.weight} 1 0 15 3 {server.health} {server.check_state} 0 0 0 - 80 - 0 0 - - 0"
            )
        return "\n".join(lines) + "\n\n"

    def show_stat(self, backend_id: int, server_id: int, types: int = 4) -> str:
        """``show stat <backend_id> <types> <server_id>``: types 4 the server rows, 6 the backend's
        row too. An unknown id answers the header alone, as HAProxy 2.6 does."""
        if backend_id != self.backend_id:
            return STAT_HEADER + "\n\n"
        rows = [STAT_HEADER]
        for server in self.servers.values():
            if server_id in (-1, server.server_id):  # -1: every server of the backend
                paused = server.admin & 0x01
                status, code, desc, last = ("", "", "", "") if paused else server.check_result
                rows.append(
                    stat_line(
                        self.backend,
                        server.name,
                        scur=server.scur,
                        qcur=server.qcur,
                        check_status=status,
                        check_code=code,
                        check_desc=desc,
                        last_chk=last,
                        status=server.status,
                        req_tot=server.requests,
                        hrsp_5xx=server.errors_5xx,
                    )
                )
        if types & 2:
            requests = sum(server.requests for server in self.servers.values())
            errors = sum(server.errors_5xx for server in self.servers.values()) + self.own_5xx
            rows.append(stat_line(self.backend, "BACKEND", req_tot=requests + self.own_5xx, hrsp_5xx=errors))
        return "\n".join(rows) + "\n\n"

    def change(self, server: FakeServer, words: list[str]) -> str:
        if words[0] == "shutdown":
            server.scur = server.qcur = 0
        elif words[3] == "weight":
            weight = int(words[4])
            if not 0 <= weight <= 256:
                return "Absolute weight can only be between 0 and 256 inclusive.\n\n"
            server.weight = weight
        elif words[3] == "health":
            server.op_state, server.health = (
                (0, 0) if words[4] == "down" else (2, server.rise + server.fall - 1)
            )
        elif words[4] == "maint":
            server.admin = (server.admin | 0x01) & ~0x08
            server.op_state, server.health = 0, 0
            server.check_state |= 0x08
        elif words[4] in ("ready", "drain"):
            leaving_maint = bool(server.admin & 0x01)
            server.admin &= ~0x09
            if words[4] == "drain":
                server.admin |= 0x08
            if leaving_maint:
                server.check_state &= ~0x08
                # HAProxy 2.6: health reset to rise, UP at once, stale check result kept
                server.op_state, server.health = 2, server.rise
        return "\n"


@pytest.fixture
def haproxy() -> FakeHaproxy:
    fake = FakeHaproxy()
    fake.add("s1")
    fake.add("s2")
    return fake


def manager(fake: FakeHaproxy, server: str = "s1") -> HaproxyServer:
    return HaproxyServer(fake, fake.backend, server, clock=fake.clock, sleep=fake.sleep)


# --- parsing ------------------------------------------------------------------------------------


def test_parse_servers_state_reads_ids_flags_and_user_weight() -> None:
    rows = parse_servers_state(SERVERS_STATE, "app")
    assert sorted(rows) == ["s1", "s2"]
    s1 = rows["s1"]
    assert (s1.backend_id, s1.server_id, s1.op_state, s1.admin_flags, s1.user_weight) == (3, 1, 0, 8, 1)
    assert rows["s2"].op_state == 2


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("Can't find backend.\n\n", "HAProxy has no backend 'nope'"),
        ("Permission denied\n\n", "unexpected answer to 'show servers state nope': 'Permission denied'"),
        ("1\n", "has no header line"),
        ("1\n# be_id be_name srv_id\n3 app\n", "short line"),
        ("1\n# be_id be_name srv_id srv_name\n3 app x s1\n", "cannot read"),
    ],
)
def test_parse_servers_state_errors(answer: str, message: str) -> None:
    with pytest.raises(HaproxyError, match=message):
        parse_servers_state(answer, "nope")


def test_parse_stat_csv_and_check_description() -> None:
    text = (
        "\n".join(
            [
                STAT_HEADER,
                stat_line(
                    "app",
                    "s1",
                    scur=2,
                    qcur=1,
                    check_status="L7STS",
                    check_code=503,
                    check_desc="Layer7 wrong status",
                    last_chk="Service Unavailable",
                ),
                stat_line(
                    "app",
                    "s2",
                    check_status="L4CON",
                    check_desc="Layer4 connection problem",
                    last_chk="Connection refused",
                ),
                stat_line("app", "s3", check_status="L7OK", check_code=200, check_desc="Layer7 check passed"),
                stat_line("app", "s4"),
            ]
        )
        + "\n\n"
    )
    rows = parse_stat_csv(text)
    assert [row["svname"] for row in rows] == ["s1", "s2", "s3", "s4"]
    assert rows[0]["scur"] == "2"
    assert [describe_check(row) for row in rows] == [
        ("L7STS 503", "Layer7 wrong status: Service Unavailable"),
        ("L4CON", "Layer4 connection problem: Connection refused"),
        ("L7OK 200", "Layer7 check passed"),
        ("", ""),
    ]
    with pytest.raises(HaproxyError, match="No such proxy"):
        parse_stat_csv("No such proxy.\n\n")


@pytest.mark.parametrize(
    ("flags", "op_state", "admin", "operational"),
    [
        (0x00, 2, "ready", "UP"),
        (0x00, 0, "ready", "DOWN"),
        (0x00, 1, "ready", "STARTING"),
        (0x00, 3, "ready", "NOLB"),
        (0x08, 2, "drain", "UP"),
        (0x10, 0, "drain", "DOWN"),
        (0x01, 0, "maint", "MAINT"),
        (0x05, 0, "maint", "MAINT"),  # `disabled` in the configuration, not yet enabled
        (0x04, 2, "ready", "UP"),  # `disabled` in the configuration, enabled at runtime: CMAINT lingers
        (0x02, 0, "maint", "MAINT"),  # inherited from a tracked server
        (0x20, 0, "maint", "MAINT"),  # address resolution failed
        (0x09, 0, "maint", "MAINT"),
        (0x40, 2, "ready", "UP"),  # FQDN set at runtime: informational
    ],
)
def test_admin_and_operational_from_bits(flags: int, op_state: int, admin: str, operational: str) -> None:
    assert admin_from_flags(flags) == admin
    assert operational_from(op_state, flags) == operational


def test_get_state_uses_ids_and_builds_the_dataclass(haproxy: FakeHaproxy) -> None:
    haproxy.servers["s1"].scur = 4
    haproxy.servers["s1"].qcur = 1
    got = manager(haproxy).get_state()
    assert haproxy.commands == ["show servers state app", "show stat 3 4 1"]
    assert got.as_dict() == {
        "backend": "app",
        "server": "s1",
        "admin": "ready",
        "operational": "UP",
        "current_sessions": 4,
        "queued_sessions": 1,
        "weight": 1,
        "check_status": "L7OK 200",
        "last_check": "Layer7 check passed",
        "checks_enabled": True,
    }
    assert got.sessions == 5 and got.in_rotation


def test_get_state_unknown_backend_and_server(haproxy: FakeHaproxy) -> None:
    with pytest.raises(HaproxyError, match="HAProxy has no backend 'nope'"):
        HaproxyServer(haproxy, "nope", "s1").get_state()
    with pytest.raises(HaproxyError, match=r"backend 'app' has no server 'zz' \(servers: s1, s2\)"):
        HaproxyServer(haproxy, "app", "zz").get_state()


def test_read_servers_reads_a_whole_backend_in_two_round_trips(haproxy: FakeHaproxy) -> None:
    for number in range(3, 30):
        haproxy.add(f"s{number}")
    haproxy.servers["s7"].scur = 2
    states = read_servers(haproxy, "app")
    assert haproxy.commands == ["show servers state app", "show stat 3 4 -1"]
    assert list(states) == [f"s{number}" for number in range(1, 30)]  # the backend's order
    assert states["s7"].current_sessions == 2 and states["s8"].current_sessions == 0
    assert read_servers(haproxy, "app", "s7") == {"s7": states["s7"]}
    assert haproxy.commands[-1] == "show stat 3 4 7"


def test_read_servers_of_an_empty_backend_and_a_server_gone_meanwhile(haproxy: FakeHaproxy) -> None:
    empty = FakeHaproxy()
    assert read_servers(empty, "app") == {} and empty.commands == ["show servers state app"]
    original = haproxy.show_servers_state

    def with_a_removed_server(backend: str) -> str:
        return (
            original(backend).rstrip("\n")
            + "\n3 app 9 s9 127.0.0.1 2 0 1 1 0 15 3 3 6 0 0 0 - 80 - 0 0 - - 0\n\n"
        )

    haproxy.show_servers_state = with_a_removed_server  # type: ignore[method-assign]
    with pytest.raises(
        HaproxyError, match=r"'show stat' has no row for app/s9 \(server removed meanwhile\?\)"
    ):
        read_servers(haproxy, "app")


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"state": "weight"}, "state=weight needs weight"),
        ({"state": "weight", "weight": 257}, "weight must be between 0 and 256, not 257"),
        ({"state": "weight", "weight": -1}, "weight must be between 0 and 256"),
        ({"state": "ready", "weight": 3}, "weight is only used with state=weight"),
        ({"state": "drain", "shutdown_sessions": True}, "shutdown_sessions is only used with state=maint"),
        ({"poll_interval": 0.3}, "poll_interval must be > 0 and <= 0.25, not 0.3"),
        ({"poll_interval": 0}, "poll_interval must be > 0"),
        ({"drain_timeout": -1}, "drain_timeout must be >= 0"),
        ({"ready_timeout": -0.5}, "ready_timeout must be >= 0"),
        ({"backend": "app;disable server x/y"}, "backend 'app;disable server x/y' is not an HAProxy name"),
        ({"server": "s 1"}, "server 's 1' is not an HAProxy name"),
        ({"server": "app/s1"}, "server 'app/s1' is not an HAProxy name"),
        ({"state": "up"}, "state must be one of ready, drain, maint, weight"),
        ({"socket": " "}, "socket must be a path"),
    ],
)
def test_invalid_parameters_fail_before_any_command(params: dict[str, object], message: str) -> None:
    with pytest.raises(HaproxyError, match=f"invalid parameters: .*{message}"):
        request(**params)


def test_defaults() -> None:
    got = request()
    assert (got.socket, got.wait, got.drain_timeout, got.ready_timeout, got.poll_interval) == (
        "/run/haproxy/admin.sock",
        True,
        300.0,
        60.0,
        0.1,
    )


# --- planning -----------------------------------------------------------------------------------

PLAN_CASES = [
    # start,                                       target,   admin to set, changed, wait for
    (state(), "ready", None, False, "up"),
    (state(), "drain", "drain", True, "no_sessions"),
    (state(), "maint", "maint", True, "no_sessions"),
    (state(operational="DOWN"), "ready", None, False, "up"),
    (state(operational="DOWN"), "drain", "drain", True, "no_sessions"),
    (state(operational="DOWN"), "maint", "maint", True, "no_sessions"),
    (state(admin="drain"), "ready", "ready", True, "up"),
    (state(admin="drain"), "drain", None, False, "no_sessions"),
    (state(admin="drain"), "maint", "maint", True, "no_sessions"),
    (state(admin="maint", operational="MAINT"), "ready", "ready", True, "up"),
    (state(admin="maint", operational="MAINT"), "drain", None, False, "no_sessions"),
    (state(admin="maint", operational="MAINT"), "maint", None, False, "no_sessions"),
]


@pytest.mark.parametrize(("before", "target", "admin", "changed", "wait_for"), PLAN_CASES)
def test_plan_every_start_and_target(
    before: ServerState, target: str, admin: str | None, changed: bool, wait_for: str
) -> None:
    plan = plan_change(before, request(state=target))
    assert (plan.admin, plan.changed, plan.wait_for) == (admin, changed, wait_for)
    assert plan_change(before, request(state=target, wait=False)).wait_for is None


def test_plan_drain_of_maint_says_why_it_stays() -> None:
    plan = plan_change(state(admin="maint", operational="MAINT"), request(state="drain"))
    assert "left in MAINT" in plan.note


@pytest.mark.parametrize(("current", "wanted", "changed"), [(1, 1, False), (1, 50, True), (50, 0, True)])
def test_plan_weight(current: int, wanted: int, changed: bool) -> None:
    plan = plan_change(state(weight=current), request(state="weight", weight=wanted))
    assert plan.changed is changed and plan.admin is None and plan.wait_for is None


def test_plan_shutdown_sessions_only_when_there_are_some() -> None:
    busy = state(admin="maint", operational="MAINT", current_sessions=2)
    assert plan_change(busy, request(state="maint", shutdown_sessions=True)).changed
    idle = state(admin="maint", operational="MAINT")
    assert not plan_change(idle, request(state="maint", shutdown_sessions=True)).changed


def test_predict_leaving_maint_is_down_until_checks_pass() -> None:
    before = state(admin="maint", operational="MAINT")
    after = predict(before, plan_change(before, request(state="ready")))
    assert (after.admin, after.operational) == ("ready", "DOWN")
    unchecked = state(admin="maint", operational="MAINT", checks_enabled=False)
    assert predict(unchecked, plan_change(unchecked, request(state="ready"))).operational == "UP"
    assert predict(state(), plan_change(state(), request(state="maint"))).operational == "MAINT"


# --- the manager against the fake ---------------------------------------------------------------


def put(fake: FakeHaproxy, start: str) -> None:
    """Bring s1 into one of the starting states UP, DOWN, DRAIN, MAINT."""
    server = fake.servers["s1"]
    if start == "DOWN":
        server.healthy, server.op_state, server.health = False, 0, 0
        server.check_result = ("L7STS", "503", "Layer7 wrong status", "Service Unavailable")
    elif start == "DRAIN":
        server.admin = 0x08
    elif start == "MAINT":
        server.admin, server.op_state, server.health = 0x01, 0, 0
        server.check_state |= 0x08


def target_request(target: str) -> MemberRequest:
    extra: dict[str, object] = {"weight": 7} if target == "weight" else {}
    return request(state=target, ready_timeout=1, drain_timeout=1, **extra)


@pytest.mark.parametrize(("start", "target"), sorted(EXPECTED))
def test_every_start_and_target_then_idempotent(haproxy: FakeHaproxy, start: str, target: str) -> None:
    changed, admin, operational, failure = EXPECTED[(start, target)]
    put(haproxy, start)
    server = manager(haproxy)
    if failure:
        with pytest.raises(HaproxyTimeout, match=failure) as info:
            server.apply(target_request(target), check_mode=False)
        assert info.value.details["changed"] is changed
        outcome_admin, outcome_operational = info.value.state.admin, info.value.state.operational
    else:
        outcome = server.apply(target_request(target), check_mode=False)
        assert outcome.changed is changed
        outcome_admin, outcome_operational = outcome.after.admin, outcome.after.operational
    assert (outcome_admin, outcome_operational) == (admin, operational)
    if failure is None:
        again = server.apply(target_request(target), check_mode=False)
        assert not again.changed and not again.actions


@pytest.mark.parametrize(("start", "target"), sorted(EXPECTED))
def test_check_mode_changes_nothing_and_never_waits(haproxy: FakeHaproxy, start: str, target: str) -> None:
    put(haproxy, start)
    haproxy.servers["s1"].scur = 3  # a wait would time out (fake time never ends sessions)
    before = manager(haproxy).get_state()
    haproxy.commands.clear()
    outcome = manager(haproxy).apply(target_request(target), check_mode=True)
    assert all(command.startswith("show ") for command in haproxy.commands)
    assert haproxy.now == 0.0
    assert outcome.before == before == manager(haproxy).get_state()
    assert outcome.changed is EXPECTED[(start, target)][0]
    assert outcome.after.admin == EXPECTED[(start, target)][1]


def test_leaving_maint_goes_through_drain_and_health_down(haproxy: FakeHaproxy) -> None:
    put(haproxy, "MAINT")
    outcome = manager(haproxy).apply(request(state="ready"), check_mode=False)
    assert [c for c in haproxy.commands if not c.startswith("show")] == [
        "set server app/s1 state drain",
        "set server app/s1 health down",
        "set server app/s1 state ready",
    ]
    # DOWN after the command, UP after rise (2) checks at one per 0.1 s
    assert outcome.waited == pytest.approx(0.2)
    assert outcome.after.operational == "UP"


def test_admin_steps_leave_maint_through_drain_only_with_health_checks() -> None:
    assert [argument for argument, _why in admin_steps(state(admin="maint"), "ready")] == [
        "state drain",
        "health down",
        "state ready",
    ]
    assert admin_steps(state(admin="maint", checks_enabled=False), "ready") == [
        ("state ready", "set admin ready")
    ]
    assert admin_steps(state(admin="drain"), "ready") == [("state ready", "set admin ready")]
    assert admin_steps(state(), "maint") == [("state maint", "set admin maint")]


def test_apply_reports_the_last_poll_as_after_without_reading_again(haproxy: FakeHaproxy) -> None:
    haproxy.servers["s1"].scur = 1
    haproxy.sessions_end_at["s1"] = 0.25
    outcome = manager(haproxy).apply(request(state="drain"), check_mode=False)
    assert outcome.after.sessions == 0 and outcome.after.admin == "drain"
    reads = haproxy.commands.count("show servers state app")
    # before, after the change (verified, and the poll at 0), then the polls at 0.1, 0.2, 0.3: no more
    assert reads == 5 and len(haproxy.commands) == 2 * reads + 1


@pytest.mark.parametrize(("start", "target"), [("UP", "ready"), ("DRAIN", "drain"), ("MAINT", "maint")])
def test_apply_on_a_server_already_there_reads_it_once(haproxy: FakeHaproxy, start: str, target: str) -> None:
    put(haproxy, start)
    outcome = manager(haproxy).apply(request(state=target), check_mode=False)
    assert not outcome.changed and outcome.waited == 0.0
    assert haproxy.commands == ["show servers state app", "show stat 3 4 1"]  # the wait's first look too


def test_leaving_maint_with_a_failing_check_never_reports_up(haproxy: FakeHaproxy) -> None:
    put(haproxy, "MAINT")
    haproxy.servers["s1"].healthy = False
    seen: list[str] = []
    original = haproxy.show_stat

    def spy(backend_id: int, server_id: int) -> str:
        seen.append(f"{haproxy.servers['s1'].op_state}")
        return original(backend_id, server_id)

    haproxy.show_stat = spy  # type: ignore[method-assign]
    with pytest.raises(HaproxyTimeout) as info:
        manager(haproxy).apply(request(state="ready", ready_timeout=1), check_mode=False)
    assert "2" not in seen, "the server was UP at some point although its check fails"
    message = str(info.value)
    assert "app/s1 is not UP after 1.0 s (ready_timeout 1 s)" in message
    assert "last health check L7STS 503 (Layer7 wrong status: Service Unavailable)" in message
    assert info.value.details["changed"] is True
    assert info.value.details["after"]["admin"] == "ready"


def test_a_timeout_reports_the_last_finished_check_not_the_one_in_progress(haproxy: FakeHaproxy) -> None:
    """HAProxy shows "* L7STS" with code 0 while a check runs; the message tells the finished one."""
    put(haproxy, "DOWN")
    server = haproxy.servers["s1"]
    running = ("* L7STS", "0", "Layer7 wrong status", "")
    original = haproxy.show_stat

    def then_running(backend_id: int, server_id: int) -> str:
        answer = original(backend_id, server_id)  # the first poll sees the finished check
        server.check_result = running  # every later one sees a check in progress
        return answer

    haproxy.show_stat = then_running  # type: ignore[method-assign]
    with pytest.raises(HaproxyTimeout) as info:
        manager(haproxy).apply(request(state="ready", ready_timeout=1), check_mode=False)
    assert "last health check L7STS 503 (Layer7 wrong status: Service Unavailable)" in str(info.value)
    assert describe_check({"check_status": "* L7STS", "check_code": "0"}) == ("* L7STS", "")


def test_leaving_maint_without_checks_is_a_plain_ready(haproxy: FakeHaproxy) -> None:
    put(haproxy, "MAINT")
    haproxy.servers["s1"].check_state = 0
    manager(haproxy).apply(request(state="ready"), check_mode=False)
    assert "set server app/s1 health down" not in haproxy.commands


def test_drain_waits_for_sessions_and_returns_right_after(haproxy: FakeHaproxy) -> None:
    haproxy.servers["s1"].scur = 1
    haproxy.sessions_end_at["s1"] = 2.03
    outcome = manager(haproxy).apply(request(state="drain", poll_interval=0.1), check_mode=False)
    assert outcome.changed and outcome.after.admin == "drain"
    assert 2.03 <= outcome.waited <= 2.03 + 0.1 + 1e-9


def test_drain_counts_queued_sessions(haproxy: FakeHaproxy) -> None:
    haproxy.servers["s1"].qcur = 2
    with pytest.raises(HaproxyTimeout, match=r"still has 0 session\(s\) and 2 queued"):
        manager(haproxy).apply(request(state="drain", drain_timeout=0.3), check_mode=False)


def test_drain_timeout_names_remaining_sessions_and_keeps_drain(haproxy: FakeHaproxy) -> None:
    haproxy.servers["s1"].scur = 3
    with pytest.raises(HaproxyTimeout) as info:
        manager(haproxy).apply(
            request(state="drain", drain_timeout=0.5, poll_interval=0.25), check_mode=False
        )
    assert (
        "app/s1 still has 3 session(s) and 0 queued after 0.5 s (drain_timeout 0.5 s); it stays DRAIN"
        in str(info.value)
    )
    assert haproxy.now == pytest.approx(0.5)  # bounded: the last look is at the deadline
    assert info.value.details["changed"] is True
    assert info.value.details["waited"] == pytest.approx(0.5)


def test_drain_of_down_server_without_sessions_returns_at_once(haproxy: FakeHaproxy) -> None:
    put(haproxy, "DOWN")
    outcome = manager(haproxy).apply(request(state="drain"), check_mode=False)
    assert outcome.waited == 0.0 and outcome.after.admin == "drain"


def test_drain_of_maint_leaves_it_in_maint(haproxy: FakeHaproxy) -> None:
    put(haproxy, "MAINT")
    outcome = manager(haproxy).apply(request(state="drain"), check_mode=False)
    assert not outcome.changed and outcome.after.admin == "maint"
    assert "left in MAINT" in outcome.as_dict()["note"]
    assert all(command.startswith("show") for command in haproxy.commands)


def test_maint_with_shutdown_sessions_cuts_them(haproxy: FakeHaproxy) -> None:
    haproxy.servers["s1"].scur = 5
    outcome = manager(haproxy).apply(request(state="maint", shutdown_sessions=True), check_mode=False)
    assert outcome.actions == ["set admin maint", "shutdown sessions"]
    assert outcome.after.current_sessions == 0 and outcome.waited == 0.0
    again = manager(haproxy).apply(request(state="maint", shutdown_sessions=True), check_mode=False)
    assert not again.changed


def test_weight_changes_only_when_different(haproxy: FakeHaproxy) -> None:
    outcome = manager(haproxy).apply(request(state="weight", weight=1), check_mode=False)
    assert not outcome.changed
    outcome = manager(haproxy).apply(request(state="weight", weight=0), check_mode=False)
    assert outcome.changed and outcome.after.weight == 0
    assert outcome.as_dict()["diff"] == {
        "before": {"admin": "ready", "weight": 1},
        "after": {"admin": "ready", "weight": 0},
    }


def test_inherited_maintenance_cannot_be_cleared(haproxy: FakeHaproxy) -> None:
    server = haproxy.servers["s1"]
    server.admin, server.op_state, server.check_state = 0x02, 0, 0
    with pytest.raises(
        HaproxyError, match=r"still MAINT \(admin flags 0x02: maintenance inherited from a tracked"
    ):
        manager(haproxy).apply(request(state="ready"), check_mode=False)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            "Permission denied\n\n",
            r"HAProxy refused 'set server app/s1 state drain': Permission denied \(the stats socket needs 'level admin'\)",
        ),
        ("No such server.\n\n", r"No such server. \(unknown server 's1' in backend 'app'\)"),
    ],
)
def test_refused_commands_are_haproxy_errors(haproxy: FakeHaproxy, answer: str, message: str) -> None:
    haproxy.refuse["set server"] = answer
    with pytest.raises(HaproxyError, match=message) as info:
        manager(haproxy).apply(request(state="drain"), check_mode=False)
    assert info.value.details["changed"] is False


def test_refused_weight_for_static_algorithm(haproxy: FakeHaproxy) -> None:
    haproxy.refuse["set server app/s1 weight"] = (
        "Backend is using a static LB algorithm and only accepts weights '0%' and '100%'.\n\n"
    )
    with pytest.raises(HaproxyError, match="static LB algorithm"):
        manager(haproxy).apply(request(state="weight", weight=5), check_mode=False)


def test_wait_until_returns_elapsed_and_polls_at_the_interval(haproxy: FakeHaproxy) -> None:
    server = manager(haproxy)
    haproxy.sessions_end_at["s1"] = 0.95
    haproxy.servers["s1"].scur = 1
    elapsed = server.wait_until(lambda seen: seen.current_sessions == 0, timeout=5, poll_interval=0.25)
    assert elapsed == pytest.approx(1.0)
    assert haproxy.commands.count("show servers state app") == 5  # t = 0, 0.25, 0.5, 0.75, 1.0


def test_wait_until_timeout_zero_looks_once(haproxy: FakeHaproxy) -> None:
    haproxy.servers["s1"].scur = 1
    with pytest.raises(HaproxyTimeout):
        manager(haproxy).wait_until(lambda seen: seen.current_sessions == 0, timeout=0, poll_interval=0.1)
    assert haproxy.commands.count("show servers state app") == 1


# --- the socket transport -----------------------------------------------------------------------


def test_transport_missing_socket(tmp_path: Path) -> None:
    with pytest.raises(HaproxyError, match=r"does not exist: is HAProxy running with 'stats socket"):
        UnixSocketTransport(str(tmp_path / "none.sock"))("show info")


def test_transport_not_a_socket(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(HaproxyError, match="is not a unix socket"):
        UnixSocketTransport(str(plain))("show info")


def test_transport_stale_socket(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.close()  # the file stays, nobody listens
    with pytest.raises(HaproxyError, match="nothing listens on HAProxy socket"):
        UnixSocketTransport(str(path))("show info")


def test_transport_timeout_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "fake.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(2)
    received: list[bytes] = []

    def serve() -> None:
        silent, _address = listener.accept()  # first client: never answered
        answered, _address = listener.accept()
        received.append(answered.recv(100))
        answered.sendall(b"\n")
        answered.close()
        silent.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(HaproxyError, match=r"did not answer 'show info' on .* within 0.2 s"):
            UnixSocketTransport(str(path), timeout=0.2)("show info")
        assert UnixSocketTransport(str(path), timeout=2)("set server a/b state drain") == "\n"
        assert received == [b"set server a/b state drain\n"]
    finally:
        thread.join(timeout=2)
        listener.close()


def test_apply_request_with_injected_transport(haproxy: FakeHaproxy) -> None:
    outcome = apply_request(request(state="maint", wait=False), check_mode=False, transport=haproxy)
    assert outcome.changed and outcome.after.operational == "MAINT"
