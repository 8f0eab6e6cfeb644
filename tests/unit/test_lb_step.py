"""lb_step: a load balancer's whole traffic step for a batch, on the fake HAProxy 2.6 of test_haproxy.

Time passes only when the step sleeps; the fake runs one health check per 0.1 s of it and counts
every command it is sent, so round trips and ordering are exact.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from test_haproxy import FakeHaproxy

from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import HaproxyError
from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.step import (
    LbStep,
    StepRequest,
    run_step,
)
from tests.modules import run_module

ROOT = Path(__file__).resolve().parents[2]


def backend(count: int = 4) -> FakeHaproxy:
    fake = FakeHaproxy()
    for number in range(1, count + 1):
        fake.add(f"s{number}")
    return fake


def maint(fake: FakeHaproxy, *names: str) -> None:
    for name in names:
        server = fake.servers[name]
        server.admin, server.op_state, server.health = 0x01, 0, 0
        server.check_state |= 0x08


def failing(fake: FakeHaproxy, name: str) -> None:
    server = fake.servers[name]
    server.healthy, server.op_state, server.health = False, 0, 0
    server.check_result = ("L7STS", "503", "Layer7 wrong status", "Service Unavailable")


def step(fake: FakeHaproxy, check_mode: bool = False, **params: Any) -> dict[str, Any]:
    request = StepRequest.from_params({"backend": "app", **params})
    return LbStep(request, fake, clock=fake.clock, sleep=fake.sleep).run(check_mode)


def changes(fake: FakeHaproxy) -> list[str]:
    return [command for command in fake.commands if not command.startswith("show ")]


def polls(fake: FakeHaproxy) -> int:
    """Reads of the backend; each must be one `show servers state` and one `show stat`."""
    shows = [command for command in fake.commands if command.startswith("show ")]
    reads = shows.count("show servers state app")
    assert shows == ["show servers state app", "show stat 3 4 -1"] * reads, shows
    return reads


# --- round trips --------------------------------------------------------------------------------


def test_a_poll_is_two_round_trips_whatever_the_number_of_servers() -> None:
    reads: dict[int, int] = {}
    for count in (2, 8, 40):
        fake = backend(count)
        names = list(fake.servers)
        for name in names:
            fake.servers[name].scur = 1
            fake.sessions_end_at[name] = 1.0
        result = step(fake, drain=names)
        assert not any(state["sessions"] for state in result["servers"].values())
        reads[count] = polls(fake)
        assert len(fake.commands) == 2 * reads[count] + count  # the reads, one drain command a server
    # the same number of polls for 2, 8 and 40 servers: the initial read, then one per 0.1 s to 1.0 s
    assert len(set(reads.values())) == 1, reads
    assert reads[2] <= 1 + math.ceil(1.0 / 0.1) + 2


def test_an_idempotent_step_is_one_read_and_no_command() -> None:
    fake = backend()
    fake.servers["s3"].admin = 0x08
    maint(fake, "s4")
    result = step(fake, ready=["s1", "s2"], drain=["s3", "s4"])
    assert result["changed"] is False and result["commands"] == []
    assert (result["ready_wait"], result["drain_wait"]) == (0.0, 0.0)
    assert polls(fake) == 1 and changes(fake) == []
    assert result["diff"]["before"] == result["diff"]["after"]


# --- the order of the phases --------------------------------------------------------------------


def test_no_drain_command_before_every_ready_server_is_up() -> None:
    fake = backend(5)
    maint(fake, "s1", "s2")
    fake.servers["s2"].rise = 4  # s2 needs more checks than s1: UP later
    seen_at_drain: list[dict[str, tuple[int, int]]] = []

    def spy(command: str) -> str:
        if command in ("set server app/s3 state drain", "set server app/s4 state drain"):
            seen_at_drain.append(
                {name: (fake.servers[name].op_state, fake.servers[name].admin) for name in ("s1", "s2")}
            )
        return str(fake(command))

    request = StepRequest.from_params({"backend": "app", "ready": ["s1", "s2"], "drain": ["s3", "s4"]})
    result = LbStep(request, spy, clock=fake.clock, sleep=fake.sleep).run(check_mode=False)
    assert len(seen_at_drain) == 2
    assert all(state == (2, 0) for seen in seen_at_drain for state in seen.values()), seen_at_drain
    assert result["commands"] == [
        "set server app/s1 state drain",
        "set server app/s1 health down",
        "set server app/s1 state ready",
        "set server app/s2 state drain",
        "set server app/s2 health down",
        "set server app/s2 state ready",
        "set server app/s3 state drain",
        "set server app/s4 state drain",
    ]
    assert result["ready_wait"] == pytest.approx(0.4)  # s2: rise 4 fresh checks at one per 0.1 s
    assert result["servers"]["s5"] == {
        "admin": "ready",
        "operational": "UP",
        "in_rotation": True,
        "sessions": 0,
    }
    assert result["servers"]["s3"] == {
        "admin": "drain",
        "operational": "UP",
        "in_rotation": False,
        "sessions": 0,
    }


def test_leaving_maint_comes_back_down_and_waits_for_fresh_checks() -> None:
    fake = backend(3)
    maint(fake, "s1", "s2")
    fake.servers["s2"].check_state = 0x08  # no health checks: a plain READY, UP at once
    result = step(fake, ready=["s1", "s2"])
    assert result["commands"] == [
        "set server app/s1 state drain",
        "set server app/s1 health down",
        "set server app/s1 state ready",
        "set server app/s2 state ready",
    ]
    assert result["ready_wait"] == pytest.approx(0.2)  # rise 2 at one check per 0.1 s
    assert result["servers"]["s1"]["in_rotation"] and result["servers"]["s2"]["in_rotation"]


def test_a_ready_server_already_ready_but_down_is_waited_for_without_a_command() -> None:
    fake = backend(2)
    server = fake.servers["s1"]
    server.op_state, server.health = 0, 0  # healthy again: UP after rise checks
    result = step(fake, ready=["s1"])
    assert result["changed"] is False and changes(fake) == []
    assert result["ready_wait"] == pytest.approx(0.2)


# --- drain --------------------------------------------------------------------------------------


def test_drain_waits_for_every_server_and_returns_right_after_the_last_session() -> None:
    fake = backend(4)
    for name, end in (("s1", 0.73), ("s2", 1.52)):
        fake.servers[name].scur = 2
        fake.sessions_end_at[name] = end
    fake.servers["s3"].qcur = 1
    fake.sessions_end_at["s3"] = 1.1
    result = step(fake, drain=["s1", "s2", "s3"], poll_interval=0.1)
    assert 1.52 <= result["drain_wait"] <= 1.52 + 0.1 + 1e-9
    assert [result["servers"][name]["admin"] for name in ("s1", "s2", "s3", "s4")] == [
        "drain",
        "drain",
        "drain",
        "ready",
    ]


def test_a_long_wait_says_what_it_waits_for_every_two_seconds() -> None:
    fake = backend(3)
    fake.servers["s1"].scur = 2
    fake.sessions_end_at["s1"] = 4.5
    maint(fake, "s3")
    heard: list[str] = []
    request = StepRequest.from_params({"backend": "app", "ready": ["s3"], "drain": ["s1"]})
    LbStep(request, fake, clock=fake.clock, sleep=fake.sleep, said=heard.append).run(False)
    drain = [line for line in heard if "session" in line]
    assert [line.split(", ")[0] for line in drain] == ["s1 holds 2 session(s): waiting for them to end"] * 2
    assert [float(line.rsplit(", ", 1)[1].rstrip(" s")) for line in drain] == pytest.approx(
        [2.0, 4.0], abs=0.11
    )
    assert all("waiting for UP" not in line for line in heard)  # s3 was UP well within 2 s
    quiet: list[str] = []
    fake.servers["s2"].scur = 1
    fake.sessions_end_at["s2"] = fake.clock() + 1.0
    request = StepRequest.from_params({"backend": "app", "drain": ["s2"]})
    LbStep(request, fake, clock=fake.clock, sleep=fake.sleep, said=quiet.append).run(False)
    assert quiet == []  # a short wait says nothing


def test_wait_drained_lets_a_next_batch_drain_without_waiting_for_it() -> None:
    fake = backend(4)
    fake.servers["s1"].scur = 1
    fake.sessions_end_at["s1"] = 0.5
    fake.servers["s2"].scur = 9  # never ends
    result = step(fake, drain=["s1", "s2"], wait_drained=["s1"])
    assert 0.5 <= result["drain_wait"] <= 0.6 + 1e-9
    assert result["servers"]["s2"] == {
        "admin": "drain",
        "operational": "UP",
        "in_rotation": False,
        "sessions": 9,
    }
    no_wait = step(backend(2), drain=["s1"], wait_drained=[])
    assert no_wait["changed"] and no_wait["drain_wait"] == 0.0


def test_drain_leaves_maint_alone_and_a_down_server_returns_at_once() -> None:
    fake = backend(3)
    maint(fake, "s1")
    failing(fake, "s2")
    result = step(fake, drain=["s1", "s2"])
    assert result["commands"] == ["set server app/s2 state drain"]
    assert result["servers"]["s1"]["admin"] == "maint" and result["servers"]["s2"]["admin"] == "drain"
    assert result["drain_wait"] == 0.0 and fake.now == 0.0


def test_combined_ready_and_drain_then_idempotent() -> None:
    fake = backend(3)
    maint(fake, "s1")
    fake.servers["s2"].scur = 1
    fake.sessions_end_at["s2"] = 0.45
    first = step(fake, ready=["s1"], drain=["s2"])
    assert first["changed"] is True and first["commands"][-1] == "set server app/s2 state drain"
    assert first["ready_wait"] == pytest.approx(0.2)
    assert first["drain_wait"] == pytest.approx(0.3)  # drain set at 0.2 s, the session ends at 0.45 s
    assert first["diff"] == {
        "before": {"s1": {"admin": "maint"}, "s2": {"admin": "ready"}},
        "after": {"s1": {"admin": "ready"}, "s2": {"admin": "drain"}},
    }
    fake.commands.clear()
    again = step(fake, ready=["s1"], drain=["s2"])
    assert again["changed"] is False and again["commands"] == [] and polls(fake) == 1


# --- check mode ---------------------------------------------------------------------------------


def test_check_mode_sends_no_command_predicts_and_never_waits() -> None:
    fake = backend(4)
    maint(fake, "s1")
    fake.servers["s3"].scur = 5  # a wait would never end
    predicted = step(fake, check_mode=True, ready=["s1", "s2"], drain=["s3", "s4"])
    assert changes(fake) == [] and fake.now == 0.0 and polls(fake) == 1
    assert predicted["changed"] is True and (predicted["ready_wait"], predicted["drain_wait"]) == (0.0, 0.0)
    assert predicted["servers"]["s1"] == {
        "admin": "ready",
        "operational": "DOWN",
        "in_rotation": False,
        "sessions": 0,
    }
    assert predicted["servers"]["s3"]["admin"] == "drain"
    assert predicted["diff"] == {
        "before": {
            name: {"admin": admin}
            for name, admin in zip(
                ["s1", "s2", "s3", "s4"], ["maint", "ready", "ready", "ready"], strict=True
            )
        },
        "after": {
            name: {"admin": admin}
            for name, admin in zip(
                ["s1", "s2", "s3", "s4"], ["ready", "ready", "drain", "drain"], strict=True
            )
        },
    }
    fake.sessions_end_at["s3"] = 1.0
    done = step(fake, ready=["s1", "s2"], drain=["s3", "s4"])
    assert done["commands"] == predicted["commands"]  # what check mode said is what is sent
    assert step(backend(2), check_mode=True, ready=["s1"], drain=[])["changed"] is False


# --- failures -----------------------------------------------------------------------------------


def test_ready_timeout_names_the_servers_not_up_and_drains_nothing() -> None:
    fake = backend(4)
    maint(fake, "s1", "s2")
    failing(fake, "s2")
    with pytest.raises(HaproxyError) as info:
        step(fake, ready=["s1", "s2"], drain=["s3"], ready_timeout=1)
    message = str(info.value)
    assert message.startswith("1 of 2 ready server(s) not UP after 1.0 s (ready_timeout 1 s): app/s2: ")
    assert "last health check L7STS 503 (Layer7 wrong status: Service Unavailable)" in message
    assert "app/s1" not in message and "The drain servers were not touched" in message
    assert not any("s3" in command for command in changes(fake))
    assert fake.servers["s3"].admin == 0
    details = info.value.details
    assert details["changed"] is True and details["ready_wait"] == pytest.approx(1.0)
    assert details["servers"]["s2"]["admin"] == "ready" and details["servers"]["s1"]["in_rotation"]
    assert fake.now == pytest.approx(1.0)  # bounded: the last look is at the deadline


def test_drain_timeout_names_the_servers_with_sessions_and_how_many() -> None:
    fake = backend(4)
    fake.servers["s1"].scur = 3
    fake.servers["s2"].qcur = 2
    fake.servers["s3"].scur = 1
    fake.sessions_end_at["s3"] = 0.2
    with pytest.raises(HaproxyError) as info:
        step(fake, drain=["s1", "s2", "s3"], drain_timeout=0.5, poll_interval=0.25)
    message = str(info.value)
    assert message.startswith(
        "2 of 3 drained server(s) still hold sessions after 0.5 s (drain_timeout 0.5 s): "
        "app/s1 3 session(s) and 0 queued (DRAIN); app/s2 0 session(s) and 2 queued (DRAIN)."
    ), message
    assert "app/s3" not in message
    assert info.value.details["drain_wait"] == pytest.approx(0.5)
    assert info.value.details["servers"]["s1"]["admin"] == "drain"  # keeps its new state
    assert fake.now == pytest.approx(0.5)


def test_a_timeout_tells_the_last_finished_check_not_the_one_in_progress() -> None:
    """HAProxy shows "* L7STS" with code 0 while a check runs; the message tells the finished one."""
    fake = backend(2)
    failing(fake, "s1")
    answers: list[str] = []

    def then_running(command: str) -> str:
        answer = str(fake(command))
        if command.startswith("show stat"):
            if answers:  # the first read sees the finished check, every later one a check in progress
                answer = answer.replace(",L7STS,503,", ",* L7STS,0,")
            answers.append(answer)
        return answer

    request = StepRequest.from_params({"backend": "app", "ready": ["s1"], "ready_timeout": 0.3})
    with pytest.raises(HaproxyError, match=r"last health check L7STS 503 \(Layer7 wrong status") as info:
        LbStep(request, then_running, clock=fake.clock, sleep=fake.sleep).run(check_mode=False)
    assert len(answers) > 2 and all("* L7STS" in answer for answer in answers[1:])
    assert "app/s1: operational DOWN, admin ready" in str(info.value)


def test_inherited_maintenance_cannot_be_cleared_and_says_why() -> None:
    fake = backend(2)
    server = fake.servers["s1"]
    server.admin, server.op_state, server.check_state = 0x02, 0, 0
    with pytest.raises(
        HaproxyError, match=r"app/s1 is still MAINT \(admin flags 0x02: maintenance inherited"
    ):
        step(fake, ready=["s1"], drain=["s2"])
    assert "set server app/s2 state drain" not in fake.commands


def test_a_refused_command_is_reported_with_what_was_sent() -> None:
    fake = backend(3)
    fake.refuse["set server app/s2"] = "Permission denied\n\n"
    with pytest.raises(
        HaproxyError, match=r"Permission denied \(the stats socket needs 'level admin'\)"
    ) as info:
        step(fake, drain=["s1", "s2", "s3"])
    assert info.value.details["commands"] == [
        "set server app/s1 state drain",
        "set server app/s2 state drain",
    ]
    assert info.value.details["changed"] is True


# --- validation, before anything is touched ----------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"ready": ["s 1"]}, "ready: server 's 1' is not an HAProxy name"),
        ({"drain": ["s1;show info"]}, "drain: server 's1;show info' is not an HAProxy name"),
        ({"drain": ["s1"], "wait_drained": ["x/y"]}, "wait_drained: server 'x/y' is not an HAProxy name"),
        ({"backend": "a b"}, "backend 'a b' is not an HAProxy name"),
        (
            {"ready": ["s1", "s2"], "drain": ["s2", "s1"]},
            "a server cannot be both in ready and in drain: s1, s2",
        ),
        ({"drain": ["s1"], "wait_drained": ["s1", "s2"]}, "wait_drained names servers that drain does not"),
        ({"poll_interval": 0}, "poll_interval must be > 0 and <= 0.25, not 0"),
        ({"poll_interval": 0.3}, "poll_interval must be > 0 and <= 0.25, not 0.3"),
        ({"ready_timeout": 0}, "ready_timeout must be > 0, not 0"),
        ({"drain_timeout": -1}, "drain_timeout must be > 0, not -1"),
    ],
)
def test_invalid_parameters_are_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(
        HaproxyError, match="invalid parameters: .*" + message.replace("(", r"\(").replace(")", r"\)")
    ):
        StepRequest.from_params({"backend": "app", **params})


def test_lists_keep_their_order_once_and_wait_drained_defaults_to_drain() -> None:
    request = StepRequest.from_params({"backend": "app", "ready": ["b", "a", "b"], "drain": ["c", "d"]})
    assert (request.ready, request.drain, request.wait_drained) == (("b", "a"), ("c", "d"), ("c", "d"))
    assert StepRequest.from_params({"backend": "app", "drain": ["c"], "wait_drained": []}).wait_drained == ()


def test_unknown_servers_are_listed_with_the_known_ones_before_any_command() -> None:
    fake = backend(2)
    with pytest.raises(HaproxyError) as info:
        step(fake, ready=["s1", "web-9"], drain=["s7"])
    assert str(info.value) == (
        "backend 'app' has no server 'web-9' (ready), 's7' (drain, wait_drained); its servers: s1, s2"
    )
    assert changes(fake) == [] and polls(fake) == 1
    with pytest.raises(HaproxyError, match="HAProxy has no backend 'nope'"):
        step(fake, backend="nope", drain=["s1"])


# --- the module ---------------------------------------------------------------------------------


def lb_step(tmp_path: Path, **params: Any) -> dict[str, Any]:
    """The module's real main(), given its arguments the way Ansible hands them over."""
    return run_module("lb_step", params)


def test_the_module_validates_then_names_the_missing_socket(tmp_path: Path) -> None:
    refused = lb_step(tmp_path, backend="app", ready=["s1"], drain=["s1"], socket=str(tmp_path / "x.sock"))
    assert refused["failed"] and "a server cannot be both in ready and in drain: s1" in refused["msg"]
    missing = lb_step(tmp_path, backend="app", drain=["s1"], socket=str(tmp_path / "none.sock"))
    assert missing["failed"] and f"HAProxy socket {tmp_path / 'none.sock'} does not exist" in missing["msg"]


def test_run_step_connects_to_the_socket_unless_given_a_transport() -> None:
    fake = backend(2)
    request = StepRequest.from_params({"backend": "app", "drain": ["s1"]})
    assert run_step(request, check_mode=False, transport=fake)["commands"] == [
        "set server app/s1 state drain"
    ]
