"""The Redfish driver: retries, error mapping and planning on a fake BMC (no network, no sleep), then the
real thing against sushy-tools emulators on 127.0.0.1 (libvirt's in-process test driver, and sushy's fake
driver for virtual media), and the module once through ansible-playbook.
"""

from __future__ import annotations

import base64
import copy
import functools
import http.server
import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.client import (
    RedfishClient,
    parse_bmc_url,
    redfish_message,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.errors import (
    RedfishAuthError,
    RedfishError,
    RedfishTimeout,
    RedfishUnreachable,
    RedfishUnsupported,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.host import BmcRequest, connect
from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.retry import (
    RetryPolicy,
    parse_retry_after,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.system import choose_reset
from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.transport import (
    HttpRequest,
    HttpResponse,
    NoAnswer,
    OpenUrlTransport,
    describe_no_answer,
)
from tests import sushy
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Pw-berth-7f3c9!"
TOKEN = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
SYSTEM = "/redfish/v1/Systems/1"
CD = "/redfish/v1/Managers/BMC/VirtualMedia/CD1"
RESET = f"{SYSTEM}/Actions/ComputerSystem.Reset"


def json_response(status: int, document: Any = None, **headers: str) -> HttpResponse:
    body = b"" if document is None else json.dumps(document).encode()
    return HttpResponse(
        status, body, {name.lower().replace("_", "-"): value for name, value in headers.items()}
    )


def redfish_error(status: int, message: str) -> HttpResponse:
    return json_response(status, {"error": {"code": "Base.1.0.GeneralError", "message": message}})


BASE_RESOURCES: dict[str, dict[str, Any]] = {
    "/redfish/v1": {"Systems": {"@odata.id": "/redfish/v1/Systems"}},
    "/redfish/v1/Systems": {"Members": [{"@odata.id": SYSTEM}]},
    SYSTEM: {
        "Id": "1",
        "Name": "web-483",
        "UUID": "38947555-7742-3448-3784-823347823834",
        "Manufacturer": "Contoso",
        "Model": "3500RX",
        "SerialNumber": "437XR1138R2",
        "PowerState": "On",
        "ProcessorSummary": {"Count": 2, "LogicalProcessorCount": 16},
        "MemorySummary": {"TotalSystemMemoryGiB": 95.5},
        "Boot": {
            "BootSourceOverrideEnabled": "Disabled",
            "BootSourceOverrideTarget": "None",
            "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Hdd", "Cd"],
        },
        "EthernetInterfaces": {"@odata.id": f"{SYSTEM}/EthernetInterfaces"},
        "Links": {"ManagedBy": [{"@odata.id": "/redfish/v1/Managers/BMC"}]},
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": RESET,
                "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "GracefulShutdown", "ForceRestart"],
            }
        },
    },
    f"{SYSTEM}/EthernetInterfaces": {"Members": [{"@odata.id": f"{SYSTEM}/EthernetInterfaces/1"}]},
    f"{SYSTEM}/EthernetInterfaces/1": {"Id": "1", "MACAddress": "12:44:6A:3B:04:11"},
    "/redfish/v1/Managers/BMC": {"VirtualMedia": {"@odata.id": "/redfish/v1/Managers/BMC/VirtualMedia"}},
    "/redfish/v1/Managers/BMC/VirtualMedia": {"Members": [{"@odata.id": CD}]},
    CD: {
        "Id": "CD1",
        "MediaTypes": ["CD", "DVD"],
        "Inserted": False,
        "Image": None,
        "Actions": {
            "#VirtualMedia.InsertMedia": {"target": f"{CD}/Actions/VirtualMedia.InsertMedia"},
            "#VirtualMedia.EjectMedia": {"target": f"{CD}/Actions/VirtualMedia.EjectMedia"},
        },
    },
}


class FakeBmc:
    """An in-memory Redfish service. ``script`` answers (or failures) come first, then normal behaviour."""

    def __init__(self) -> None:
        self.resources = copy.deepcopy(BASE_RESOURCES)
        self.requests: list[HttpRequest] = []
        self.script: list[HttpResponse | NoAnswer] = []
        self.ignores_graceful = False

    def __call__(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        if self.script:
            answer = self.script.pop(0)
            if isinstance(answer, NoAnswer):
                raise answer
            return answer
        path = urllib.parse.urlsplit(request.url).path
        body = json.loads(request.body) if request.body else {}
        if request.method == "GET":
            resource = self.resources.get(path)
            return json_response(200, resource) if resource is not None else redfish_error(404, "not found")
        if request.method == "PATCH":
            for key, value in body.items():
                self.resources[path].setdefault(key, {}).update(value)
            return json_response(204)
        if path == RESET:
            self.reset(body["ResetType"])
        elif path.endswith("InsertMedia"):
            self.resources[CD].update(Image=body["Image"], Inserted=True)
        elif path.endswith("EjectMedia"):
            self.resources[CD].update(Image=None, Inserted=False)
        return json_response(204)

    def reset(self, reset_type: str) -> None:
        if reset_type == "GracefulShutdown" and self.ignores_graceful:
            return
        self.resources[SYSTEM]["PowerState"] = (
            "Off" if reset_type in ("ForceOff", "GracefulShutdown") else "On"
        )

    def changes(self) -> list[tuple[str, str]]:
        return [
            (request.method, urllib.parse.urlsplit(request.url).path)
            for request in self.requests
            if request.method != "GET"
        ]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def request_for(**params: Any) -> BmcRequest:
    return BmcRequest.from_params(
        {"bmc": "https://bmc.test", "username": "admin", "password": PASSWORD, **params}
    )


def run(bmc: FakeBmc, check_mode: bool = False, clock: Clock | None = None, **params: Any) -> Any:
    clock = clock or Clock()
    request = request_for(**params)
    return connect(request, bmc, sleep=clock.sleep, clock=clock).apply(request, check_mode)


def client_for(bmc: FakeBmc, clock: Clock, retries: int = 3) -> RedfishClient:
    return RedfishClient(
        "https://bmc.test",
        bmc,
        policy=RetryPolicy(retries=retries),
        secrets=[PASSWORD, TOKEN],
        sleep=clock.sleep,
        clock=clock,
    )


# --- HTTP: retries, backoff and errors ----------------------------------------------------------


def test_transient_errors_are_retried_with_exponential_backoff() -> None:
    bmc, clock = FakeBmc(), Clock()
    bmc.script = [NoAnswer("connection refused", sent=False), redfish_error(500, "busy"), json_response(502)]
    assert client_for(bmc, clock).get(SYSTEM)["Id"] == "1"
    assert clock.sleeps == [0.5, 1.0, 2.0]


def test_429_and_503_honour_retry_after_in_seconds_and_as_a_date_capped_at_a_minute() -> None:
    bmc, clock = FakeBmc(), Clock()
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    bmc.script = [
        json_response(429, retry_after="7"),
        json_response(503, retry_after=later),
        json_response(429, retry_after="600"),
    ]
    client_for(bmc, clock).get(SYSTEM)
    assert clock.sleeps[0] == 7
    assert 25 < clock.sleeps[1] <= 30
    assert clock.sleeps[2] == 60
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409])
def test_client_errors_are_never_retried(status: int) -> None:
    bmc, clock = FakeBmc(), Clock()
    bmc.script = [redfish_error(status, "no")]
    with pytest.raises(RedfishError) as caught:
        client_for(bmc, clock).get(SYSTEM)
    assert caught.value.status == status
    assert clock.sleeps == []
    assert len(bmc.requests) == 1


def test_an_action_is_repeated_only_when_the_bmc_cannot_have_carried_it_out() -> None:
    bmc, clock = FakeBmc(), Clock()
    bmc.script = [NoAnswer("connection refused", sent=False), json_response(503), json_response(429)]
    client_for(bmc, clock).post(RESET, {"ResetType": "On"})
    assert len(bmc.requests) == 4
    for failure in (redfish_error(500, "internal"), NoAnswer("connection lost", sent=True)):
        bmc, clock = FakeBmc(), Clock()
        bmc.script = [failure]
        with pytest.raises(RedfishError):
            client_for(bmc, clock).post(RESET, {"ResetType": "ForceRestart"})
        assert len(bmc.requests) == 1, failure


def test_a_lost_connection_is_retried_for_reads_and_patches() -> None:
    bmc, clock = FakeBmc(), Clock()
    bmc.script = [NoAnswer("connection lost", sent=True), NoAnswer("no answer within 10 s", sent=True)]
    client_for(bmc, clock).patch(SYSTEM, {"Boot": {"BootSourceOverrideTarget": "Pxe"}})
    assert [request.method for request in bmc.requests] == ["PATCH", "PATCH", "PATCH"]


def test_unreachable_after_the_retries_says_how_often_and_how_long() -> None:
    bmc, clock = FakeBmc(), Clock()
    bmc.script = [NoAnswer("connection refused", sent=False)] * 3
    with pytest.raises(RedfishUnreachable, match=r"connection refused \(3 attempts in 1\.5 s\)"):
        client_for(bmc, clock, retries=2).get(SYSTEM)


def test_a_tls_failure_is_not_retried_and_says_what_to_do() -> None:
    failure = ssl.SSLCertVerificationError(1, "certificate verify failed")
    failure.verify_message = "self-signed certificate"
    bmc, clock = FakeBmc(), Clock()
    bmc.script = [describe_no_answer(failure, 10)]
    with pytest.raises(RedfishUnreachable, match=r"self-signed certificate.*set ca_path"):
        client_for(bmc, clock).get(SYSTEM)
    assert clock.sleeps == []


def test_classification_of_missing_answers() -> None:
    assert (
        describe_no_answer(ConnectionRefusedError(), 5).sent,
        describe_no_answer(ConnectionRefusedError(), 5).retriable,
    ) == (False, True)
    assert describe_no_answer(ConnectionResetError(), 5).sent
    assert describe_no_answer(TimeoutError(), 5).reason == "no answer within 5 s"
    assert not describe_no_answer(socket.gaierror(-2, "Name or service not known"), 5).retriable


def test_http_errors_carry_the_bmcs_explanation() -> None:
    bmc, clock = FakeBmc(), Clock()
    bmc.script = [
        json_response(
            400, {"error": {"message": "bad", "@Message.ExtendedInfo": [{"Message": "Pxe is not allowed"}]}}
        )
    ]
    with pytest.raises(RedfishError, match=r"HTTP 400: bad; Pxe is not allowed"):
        client_for(bmc, clock).patch(SYSTEM, {})
    assert redfish_message(b"<html>Oops</html>") == "<html>Oops</html>"


def test_auth_failures_are_their_own_error() -> None:
    bmc, clock = FakeBmc(), Clock()
    bmc.script = [redfish_error(401, "Incorrect username or password")]
    with pytest.raises(RedfishAuthError, match="refused the credentials"):
        client_for(bmc, clock).get(SYSTEM)
    bmc.script = [redfish_error(403, "Forbidden")]
    with pytest.raises(RedfishAuthError, match="may not POST"):
        client_for(bmc, clock).post(RESET, {})


def test_redirects_are_not_followed() -> None:
    bmc, clock = FakeBmc(), Clock()
    bmc.script = [json_response(301, location="https://elsewhere.test/redfish/v1")]
    with pytest.raises(RedfishError, match=r"redirected GET /redfish/v1 to https://elsewhere\.test"):
        client_for(bmc, clock).get("/redfish/v1")
    with pytest.raises(RedfishError, match="another host"):
        client_for(bmc, clock).get("https://elsewhere.test/redfish/v1")


def test_a_bmc_that_demands_if_match_gets_the_etag() -> None:
    bmc, clock = FakeBmc(), Clock()
    bmc.script = [redfish_error(428, "If-Match required"), json_response(200, {"Id": "1"}, etag='"abc"')]
    client_for(bmc, clock).patch(SYSTEM, {"Boot": {}})
    assert [request.method for request in bmc.requests] == ["PATCH", "GET", "PATCH"]
    assert bmc.requests[-1].headers == {"If-Match": '"abc"'}


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("10.0.0.5", "must be a URL"),
        ("ftp://10.0.0.5", "must be a URL"),
        ("https://10.0.0.5/redfish/v1", "no path"),
        ("https://10.0.0.5:99999", "invalid port"),
    ],
)
def test_bmc_addresses(address: str, problem: str) -> None:
    with pytest.raises(RedfishError, match=problem):
        parse_bmc_url(address)
    assert parse_bmc_url("https://10.0.0.5/") == "https://10.0.0.5"


# --- never the password -------------------------------------------------------------------------


def everything_said(*things: Any) -> str:
    """Every string a caller could see: values, reprs, exception messages, args and details."""
    said = []
    for thing in things:
        said.append(repr(thing))
        if isinstance(thing, BaseException):
            said.extend(
                [str(thing), repr(thing.args), json.dumps(getattr(thing, "details", {}), default=str)]
            )
        else:
            said.append(json.dumps(thing, default=str) if isinstance(thing, dict) else str(thing))
    return "\n".join(said)


def test_the_password_appears_in_nothing_returned_or_raised() -> None:
    seen: list[Any] = []
    request = request_for(
        power="off", boot_device="pxe", virtual_media={"image": "http://x/a.iso", "state": "inserted"}
    )
    bmc = FakeBmc()
    outcome = connect(request, bmc, sleep=Clock().sleep).apply(request, False)
    seen += [request, outcome.as_dict(), outcome.warnings, OpenUrlTransport("admin", PASSWORD)]
    # a BMC echoing the password or the Authorization header in its errors, on every path
    for answer in (
        redfish_error(400, f"bad password {PASSWORD}"),
        redfish_error(401, f"Basic {TOKEN} refused"),
        redfish_error(500, f"{PASSWORD}"),
        json_response(301, location=f"https://admin:{PASSWORD}@elsewhere.test/"),
        NoAnswer(f"reset by {PASSWORD}", sent=False),
    ):
        bmc = FakeBmc()
        bmc.script = [answer] * 5
        with pytest.raises(RedfishError) as caught:
            connect(request, bmc, sleep=Clock().sleep).apply(request, False)
        seen.append(caught.value)
    with pytest.raises(RedfishError) as caught:
        BmcRequest.from_params(
            {"bmc": f"https://admin:{PASSWORD}@10.0.0.5", "username": "a", "password": PASSWORD}
        )
    seen.append(caught.value)
    said = everything_said(*seen)
    assert PASSWORD not in said
    assert TOKEN not in said
    assert "********" in said  # the echoes were there, and blanked


# --- planning and the manager on the fake BMC ---------------------------------------------------


def test_facts() -> None:
    facts = run(FakeBmc()).after.as_dict()
    assert facts["manufacturer"] == "Contoso"
    assert facts["serial_number"] == "437XR1138R2"
    assert (facts["processor_count"], facts["logical_processor_count"], facts["cpus"]) == (2, 16, 16)
    assert facts["memory_mib"] == 97792  # 95.5 GiB
    assert facts["nics"] == [{"id": "1", "mac": "12:44:6a:3b:04:11"}]
    assert facts["boot"]["allowed_targets"] == ["None", "Pxe", "Hdd", "Cd"]


def test_several_systems_need_system_id() -> None:
    bmc = FakeBmc()
    bmc.resources["/redfish/v1/Systems"]["Members"].append({"@odata.id": "/redfish/v1/Systems/2"})
    bmc.resources["/redfish/v1/Systems/2"] = {"Id": "2"}
    with pytest.raises(RedfishError, match=r"manages 2 systems \(1, 2\): set system_id"):
        run(bmc)
    with pytest.raises(RedfishError, match=r"has no system '3' \(it has: 1, 2\)"):
        run(bmc, system_id="3")
    assert run(bmc, system_id="1").after.id == "1"


def test_power_is_idempotent_and_check_mode_posts_nothing() -> None:
    bmc = FakeBmc()
    assert not run(bmc, power="on").changed
    checked = run(bmc, check_mode=True, power="off")
    assert checked.changed and checked.after.power_state == "Off"
    assert bmc.changes() == []
    outcome = run(bmc, power="off")
    assert outcome.actions == ["GracefulShutdown"]
    assert outcome.as_dict()["diff"] == {
        "before": {"power_state": "On", "boot": {"target": "None", "enabled": "Disabled"}},
        "after": {"power_state": "Off", "boot": {"target": "None", "enabled": "Disabled"}},
    }
    assert not run(bmc, power="off").changed
    assert bmc.changes() == [("POST", RESET)]


def test_off_forces_after_the_graceful_timeout() -> None:
    bmc, clock = FakeBmc(), Clock()
    bmc.ignores_graceful = True
    outcome = run(bmc, clock=clock, power="off", graceful_timeout=3)
    assert outcome.actions == ["GracefulShutdown", "ForceOff (still On after 3 s)"]
    assert outcome.waited == 3
    assert clock.sleeps == [1.0, 1.0, 1.0]


def test_off_fails_clearly_when_the_host_never_goes_off() -> None:
    bmc, clock = FakeBmc(), Clock()
    bmc.ignores_graceful = True
    bmc.resources[SYSTEM]["Actions"]["#ComputerSystem.Reset"]["ResetType@Redfish.AllowableValues"] = [
        "GracefulShutdown"
    ]
    with pytest.raises(RedfishTimeout, match=r"still On after 5\.0 s, not Off") as caught:
        run(bmc, clock=clock, power="off", power_timeout=5)
    assert caught.value.details["changed"] is True
    assert caught.value.details["actions"] == []


def test_reset_restarts_and_starts_a_host_that_is_off() -> None:
    bmc = FakeBmc()
    assert run(bmc, power="reset").actions == ["ForceRestart"]
    bmc.resources[SYSTEM]["PowerState"] = "Off"
    assert run(bmc, power="reset").actions == ["On"]


def test_reset_types_come_from_what_the_bmc_advertises() -> None:
    assert choose_reset("on", ("ForceOn", "ForceOff")) == "ForceOn"
    assert choose_reset("reset", ("GracefulRestart",)) == "GracefulRestart"
    assert choose_reset("on", None) == "On"
    assert choose_reset("graceful_off", ("ForceOff",)) is None
    bmc = FakeBmc()
    bmc.resources[SYSTEM]["Actions"]["#ComputerSystem.Reset"]["ResetType@Redfish.AllowableValues"] = [
        "ForceOff"
    ]
    bmc.resources[SYSTEM]["PowerState"] = "Off"
    with pytest.raises(RedfishUnsupported, match=r"accepts no ResetType that powers it on \(On, ForceOn\)"):
        run(bmc, power="on")


def test_reset_types_from_action_info() -> None:
    bmc = FakeBmc()
    reset = bmc.resources[SYSTEM]["Actions"]["#ComputerSystem.Reset"]
    del reset["ResetType@Redfish.AllowableValues"]
    reset["@Redfish.ActionInfo"] = "/redfish/v1/Systems/1/ResetActionInfo"
    bmc.resources["/redfish/v1/Systems/1/ResetActionInfo"] = {
        "Parameters": [{"Name": "ResetType", "AllowableValues": ["On", "ForceOff"]}]
    }
    assert run(bmc).after.reset_types == ("On", "ForceOff")
    assert run(bmc, power="off").actions == ["ForceOff"]


def test_boot_override_is_patched_only_when_different() -> None:
    bmc = FakeBmc()
    assert run(bmc, check_mode=True, boot_device="pxe").changed
    assert bmc.changes() == []
    outcome = run(bmc, boot_device="pxe", boot_mode="once")
    assert outcome.actions == ["boot override Pxe Once"]
    assert json.loads(bmc.requests[-4].body or b"") == {
        "Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}
    }
    assert not run(bmc, boot_device="pxe", boot_mode="once").changed
    assert run(bmc, boot_device="pxe", boot_mode="persistent").changed
    assert len(bmc.changes()) == 2


def test_the_boot_override_comes_before_power() -> None:
    bmc = FakeBmc()
    bmc.resources[SYSTEM]["PowerState"] = "Off"
    outcome = run(bmc, boot_device="pxe", power="on")
    assert outcome.actions == ["boot override Pxe Once", "On"]
    assert [path for _method, path in bmc.changes()] == [SYSTEM, RESET]


def test_a_boot_target_the_bmc_does_not_offer() -> None:
    bmc = FakeBmc()
    bmc.resources[SYSTEM]["Boot"]["BootSourceOverrideTarget@Redfish.AllowableValues"] = ["Pxe", "Hdd"]
    with pytest.raises(RedfishUnsupported, match=r"does not offer boot target Cd \(it offers: Pxe, Hdd\)"):
        run(bmc, boot_device="cd")


def test_virtual_media_insert_eject_idempotent() -> None:
    bmc = FakeBmc()
    image = "http://10.0.0.1/installer.iso"
    assert run(bmc, check_mode=True, virtual_media={"image": image, "state": "inserted"}).changed
    assert bmc.changes() == []
    outcome = run(bmc, virtual_media={"image": image, "state": "inserted"})
    assert outcome.actions == [f"insert {image} into CD1"]
    assert outcome.as_dict()["virtual_media"] == {"device": "CD1", "inserted": True, "image": image}
    assert not run(bmc, virtual_media={"image": image, "state": "inserted"}).changed
    other = run(bmc, virtual_media={"image": "http://10.0.0.1/other.iso"})
    assert other.actions == ["eject CD1", "insert http://10.0.0.1/other.iso into CD1"]
    assert run(bmc, virtual_media={"state": "ejected"}).actions == ["eject CD1"]
    assert not run(bmc, virtual_media={"state": "ejected"}).changed


def test_virtual_media_on_a_bmc_without_it() -> None:
    bmc = FakeBmc()
    del bmc.resources["/redfish/v1/Managers/BMC"]["VirtualMedia"]
    with pytest.raises(RedfishUnsupported, match="virtual media is not supported by this BMC"):
        run(bmc, virtual_media={"state": "ejected"})
    bmc = FakeBmc()
    del bmc.resources[CD]["Actions"]["#VirtualMedia.InsertMedia"]
    with pytest.raises(RedfishUnsupported, match="inserting virtual media is not supported by this BMC"):
        run(bmc, virtual_media={"image": "http://x/a.iso"})


def test_invalid_parameters_are_refused_before_any_request() -> None:
    with pytest.raises(RedfishError) as caught:
        request_for(power="cycle", boot_mode="always", retries=-1, virtual_media={"state": "inserted"})
    message = str(caught.value)
    for problem in ("power must be", "boot_mode must be", "retries must be", "needs virtual_media.image"):
        assert problem in message


# --- against real sushy-tools emulators ---------------------------------------------------------


@pytest.fixture(scope="module")
def libvirt_bmc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sushy.Emulator]:
    emulator = sushy.start(tmp_path_factory.mktemp("sushy-libvirt"), "libvirt", password=PASSWORD)
    try:
        yield emulator
    finally:
        emulator.stop()


FAKE_SYSTEMS = [
    {"uuid": f"00000000-0000-4000-8000-00000000000{n}", "name": f"metal-{n}", "power_state": "Off",
     "nics": [{"mac": f"52:54:00:00:00:0{n}", "ip": f"192.0.2.{n}"}]}
    for n in (1, 2)
]  # fmt: skip


@pytest.fixture(scope="module")
def fake_bmc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sushy.Emulator]:
    workdir = tmp_path_factory.mktemp("sushy-fake")
    emulator = sushy.start(workdir, "fake", password=PASSWORD, fake_systems=FAKE_SYSTEMS)
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Serves a small ISO for the emulator to download when media is inserted."""
    directory = tmp_path_factory.mktemp("images")
    (directory / "installer.iso").write_bytes(b"\0" * 4096)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def real(emulator: sushy.Emulator, check_mode: bool = False, password: str = PASSWORD, **params: Any) -> Any:
    request = BmcRequest.from_params(
        {"bmc": emulator.url, "username": "admin", "password": password, "retries": 1, **params}
    )
    return connect(request, poll_interval=0.1).apply(request, check_mode)


def test_real_facts(libvirt_bmc: sushy.Emulator) -> None:
    facts = real(libvirt_bmc).after.as_dict()
    assert facts["id"] == sushy.LIBVIRT_SYSTEM
    assert facts["manufacturer"] == "Sushy Emulator"
    assert (facts["cpus"], facts["memory_mib"]) == (2, 8192)
    assert facts["nics"] == [{"id": "aa:bb:cc:dd:ee:ff", "mac": "aa:bb:cc:dd:ee:ff"}]
    assert "GracefulShutdown" in facts["reset_types"]
    assert facts["power_state"] in ("On", "Off")


def test_real_power_off_on_reset_idempotent(libvirt_bmc: sushy.Emulator) -> None:
    system = f"/redfish/v1/Systems/{sushy.LIBVIRT_SYSTEM}"
    real(libvirt_bmc, power="on")
    checked = real(libvirt_bmc, check_mode=True, power="off")
    assert checked.changed and checked.after.power_state == "Off"
    assert libvirt_bmc.get(system)["PowerState"] == "On"  # check mode left it alone
    off = real(libvirt_bmc, power="off", graceful_timeout=5)
    assert off.changed and off.actions == ["GracefulShutdown"]
    assert libvirt_bmc.get(system)["PowerState"] == "Off"
    assert not real(libvirt_bmc, power="off").changed
    on = real(libvirt_bmc, power="on")
    assert on.changed and on.actions == ["On"] and on.after.power_state == "On"
    assert not real(libvirt_bmc, power="on").changed
    reset = real(libvirt_bmc, power="reset")
    assert reset.changed and reset.actions == ["ForceRestart"] and reset.after.power_state == "On"


def test_real_boot_override_persistent_and_once(libvirt_bmc: sushy.Emulator) -> None:
    system = f"/redfish/v1/Systems/{sushy.LIBVIRT_SYSTEM}"
    real(libvirt_bmc, boot_device="hdd", boot_mode="persistent")
    assert real(libvirt_bmc, check_mode=True, boot_device="pxe", boot_mode="persistent").changed
    assert libvirt_bmc.get(system)["Boot"]["BootSourceOverrideTarget"] == "Hdd"
    first = real(libvirt_bmc, boot_device="pxe", boot_mode="persistent")
    assert first.changed and first.warnings == []
    assert libvirt_bmc.get(system)["Boot"]["BootSourceOverrideTarget"] == "Pxe"
    assert not real(libvirt_bmc, boot_device="pxe", boot_mode="persistent").changed
    # sushy-tools keeps the target but always reports Continuous: Once is applied, then warned about
    once = real(libvirt_bmc, boot_device="hdd", boot_mode="once")
    assert once.changed and once.after.boot.target == "Hdd"
    assert once.warnings == ["the BMC accepted the boot override Hdd/Once but reports Hdd/Continuous"]


def test_real_wrong_password_is_a_clear_error_without_the_password(libvirt_bmc: sushy.Emulator) -> None:
    wrong = "Wrong-" + PASSWORD
    started = time.monotonic()
    with pytest.raises(RedfishAuthError, match=r"refused the credentials .*HTTP 401") as caught:
        real(libvirt_bmc, password=wrong)
    assert time.monotonic() - started < 2  # 401 is not retried
    said = everything_said(caught.value)
    assert wrong not in said and PASSWORD not in said


def test_real_unreachable_bmc_fails_after_bounded_retries() -> None:
    request = BmcRequest.from_params(
        {
            "bmc": f"http://127.0.0.1:{free_port()}",
            "username": "admin",
            "password": PASSWORD,
            "retries": 2,
        }
    )
    started = time.monotonic()
    with pytest.raises(RedfishUnreachable, match=r"connection refused \(3 attempts in 1\.\d s\)") as caught:
        connect(request).apply(request, False)
    assert 1.4 < time.monotonic() - started < 5
    assert PASSWORD not in everything_said(caught.value)


def test_real_virtual_media_insert_and_eject(fake_bmc: sushy.Emulator, image_server: str) -> None:
    image = f"{image_server}/installer.iso"
    system = FAKE_SYSTEMS[0]["uuid"]
    media = {"image": image, "state": "inserted"}
    assert real(fake_bmc, check_mode=True, system_id=system, virtual_media=media).changed
    inserted = real(fake_bmc, system_id=system, virtual_media=media)
    assert inserted.changed and inserted.warnings == []
    assert inserted.media_after.summary() == {"device": "Cd", "inserted": True, "image": image}
    assert not real(fake_bmc, system_id=system, virtual_media=media).changed
    ejected = real(fake_bmc, system_id=system, virtual_media={"state": "ejected"})
    assert ejected.changed and ejected.actions == ["eject Cd"]
    assert not ejected.media_after.inserted
    assert not real(fake_bmc, system_id=system, virtual_media={"state": "ejected"}).changed


def test_real_bmc_with_several_systems(fake_bmc: sushy.Emulator) -> None:
    with pytest.raises(RedfishError, match=r"manages 2 systems .*: set system_id"):
        real(fake_bmc)
    second = real(fake_bmc, system_id=FAKE_SYSTEMS[1]["uuid"]).after
    assert second.name == "metal-2"
    assert [nic.mac for nic in second.nics] == ["52:54:00:00:00:02"]


PLAYBOOK = """\
- name: redfish_host against sushy-tools
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    bmc_access: &bmc
      bmc: "{url}"
      username: admin
      password: "{password}"
      system_id: "{system}"
      retries: 1
  tasks:
    - name: Power on, boot from the network, enroll and inspect up to available
      berth.fleet.redfish_host:
        <<: *bmc
        power: "on"
        boot_device: pxe
        boot_mode: persistent
        name: metal-1
        lifecycle: available
        lifecycle_dir: "{state}"
        required: {{vcpus: 2, memory_mib: 8192}}
      register: first
    - name: The same again
      berth.fleet.redfish_host:
        <<: *bmc
        power: "on"
        boot_device: pxe
        boot_mode: persistent
        name: metal-1
        lifecycle: available
        lifecycle_dir: "{state}"
        required: {{vcpus: 2, memory_mib: 8192}}
      register: second
    - name: A host that is too small fails inspection
      berth.fleet.redfish_host:
        <<: *bmc
        name: metal-2
        lifecycle: inspected
        lifecycle_dir: "{state}"
        required: {{vcpus: 64}}
      register: small
      ignore_errors: true
    - name: Check
      ansible.builtin.assert:
        that:
          - first is changed
          - first.facts.power_state == "On"
          - first.facts.boot.target == "Pxe"
          - first.lifecycle.state == "available"
          - first.lifecycle.steps == ["enrolled", "inspected", "available"]
          - second is not changed
          - small is failed
          - small.msg is search("required 64 vcpus; the BMC reported 2 CPUs")
"""


def test_module_through_ansible_playbook(libvirt_bmc: sushy.Emulator, tmp_path: Path) -> None:
    state = tmp_path / "state"
    playbook = tmp_path / "redfish.yml"
    playbook.write_text(
        textwrap.dedent(PLAYBOOK).format(
            url=libvirt_bmc.url, password=PASSWORD, system=sushy.LIBVIRT_SYSTEM, state=state
        )
    )
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-vvv",
            "-i",
            "localhost,",
            "--diff",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(playbook),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert re.search(r"localhost\s+: ok=4\s+changed=2 .*failed=0 .*ignored=1", output), output[-3000:]
    assert PASSWORD not in output
    assert TOKEN not in output
    record = json.loads((state / "metal" / "metal-1.json").read_text())
    assert record["state"] == "available"
    assert PASSWORD not in (state / "metal" / "metal-1.json").read_text()
    assert json.loads((state / "metal" / "metal-2.json").read_text())["state"] == "failed"


# --- TLS through the real transport -------------------------------------------------------------


class RootHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"Id": "RootService"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def tls_bmc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An HTTPS server with a self-signed certificate for 127.0.0.1: (url, certificate)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RootHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()


def tls_client(url: str, **transport: Any) -> RedfishClient:
    return RedfishClient(url, OpenUrlTransport("admin", PASSWORD, **transport), secrets=[PASSWORD])


def test_tls_is_verified_by_default(tls_bmc: tuple[str, Path]) -> None:
    url, cert = tls_bmc
    clock = Clock()
    client = tls_client(url)
    client.sleep = clock.sleep
    with pytest.raises(RedfishUnreachable, match=r"TLS certificate verification failed.*set ca_path"):
        client.get("/redfish/v1")
    assert clock.sleeps == []  # not retried
    assert tls_client(url, ca_path=str(cert)).get("/redfish/v1") == {"Id": "RootService"}
    assert tls_client(url, validate_certs=False).get("/redfish/v1") == {"Id": "RootService"}
