# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A bare-metal host through its BMC's Redfish API: discover, read, power, boot override, virtual media.

Standard library and ansible's ``open_url`` only. The HTTP transport is injected, so retries, error
mapping and planning are unit-tested on a fake BMC; the default transport is tested against
sushy-tools.

What this relies on, and why it is done this way:

- Authentication is HTTP basic on every request, with no Redfish session: a session must be
  deleted on every exit path or it holds one of the BMC's few session slots until it times out.
- The password only ever goes into the ``Authorization`` header. Messages are built from the
  method, the path and the BMC's own error text, and every message goes through ``redact()``,
  which blanks the password (and the encoded header) should a BMC echo it back.
- TLS is verified by default (``validate_certs``, ``ca_path``). Redirects are not followed (a
  redirect would send the credentials on to wherever the BMC points) and no HTTP proxy is used.
- Retries, with exponential backoff: an answer that never came (connection refused, reset,
  timed out) and HTTP 5xx or 429 are retried for GET and PATCH, which are idempotent. A POST (an
  action) is retried only when the BMC cannot have carried it out: connection refused, 429 or
  503. ``Retry-After`` is honoured, up to ``MAX_RETRY_AFTER`` seconds. 400, 401, 403, 404 and the
  other 4xx are never retried.
- A BMC that demands ``If-Match`` on PATCH (HTTP 428) gets the resource's ETag, fetched afresh.
- sushy-tools always reports ``BootSourceOverrideEnabled: Continuous``, whatever was PATCHed:
  the override is read back after a change and a difference becomes a warning, not a failure
  (real BMCs may also apply boot settings at the next reset only).
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import json
import socket
import ssl
import time
import urllib.error
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import open_url

SERVICE_ROOT = "/redfish/v1"
POWER_ACTIONS = ("on", "off", "reset")
BOOT_TARGETS = {"pxe": "Pxe", "hdd": "Hdd", "cd": "Cd"}
BOOT_ENABLED = {"once": "Once", "persistent": "Continuous"}
MEDIA_STATES = ("inserted", "ejected")
REDACTED = "********"
MAX_RETRY_AFTER = 60.0
POLL_INTERVAL = 1.0

# ResetType values by preference, for each thing this module does with power
_RESET_PREFERENCES = {
    "on": ("On", "ForceOn"),
    "graceful_off": ("GracefulShutdown",),
    "force_off": ("ForceOff",),
    "reset": ("ForceRestart", "GracefulRestart", "PowerCycle"),
}
# a POST answered with these was not carried out, so sending it again cannot act twice
_POST_NOT_PROCESSED = (429, 503)


class RedfishError(Exception):
    """Anything that stops a host from being read or changed through its BMC.

    ``status`` is the HTTP status when the BMC answered; ``details`` carries what the caller should
    still report on failure (changed, actions). Messages never contain credentials.
    """

    def __init__(self, message: str, status: int | None = None, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.details: dict[str, Any] = details


class RedfishAuthError(RedfishError):
    """The BMC refused the credentials (401) or the account lacks a privilege (403)."""


class RedfishUnreachable(RedfishError):
    """No HTTP answer from the BMC, after the retries."""


class RedfishUnsupported(RedfishError):
    """The BMC does not offer what was asked (an action, a reset type, a boot target, virtual media)."""


class RedfishTimeout(RedfishError):
    """The system did not reach the wanted power state in time."""


# --- HTTP ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 10.0


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)  # names lower-cased

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class NoAnswer(Exception):
    """No HTTP answer. ``sent``: the request may have reached the BMC; ``retriable``: worth another try."""

    def __init__(self, reason: str, sent: bool, retriable: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent
        self.retriable = retriable


Transport = Callable[[HttpRequest], HttpResponse]


def _lower_headers(headers: Any) -> dict[str, str]:
    if headers is None:
        return {}
    return {str(name).lower(): str(value) for name, value in headers.items()}


def describe_no_answer(reason: object, timeout: float) -> NoAnswer:
    """Classify why no answer came: what to tell the operator, and whether trying again makes sense."""
    if isinstance(reason, ssl.SSLCertVerificationError):
        return NoAnswer(
            f"TLS certificate verification failed ({reason.verify_message or reason}): set ca_path to the "
            "CA that signed the BMC's certificate, or validate_certs: false for a lab BMC",
            sent=False,
            retriable=False,
        )
    if isinstance(reason, ssl.SSLError):
        return NoAnswer(f"TLS error ({reason})", sent=False, retriable=False)
    if isinstance(reason, ConnectionRefusedError):
        return NoAnswer("connection refused", sent=False)
    if isinstance(reason, socket.gaierror):
        return NoAnswer(f"cannot resolve the BMC's name ({reason})", sent=False, retriable=False)
    if isinstance(reason, TimeoutError):
        return NoAnswer(f"no answer within {timeout:g} s", sent=True)
    if isinstance(reason, (ConnectionError, http.client.HTTPException)):
        return NoAnswer(f"connection lost ({type(reason).__name__}: {reason})", sent=True)
    if isinstance(reason, OSError):
        return NoAnswer(f"{reason.strerror or reason}", sent=False)
    return NoAnswer(str(reason), sent=True)


class OpenUrlTransport:
    """HTTP(S) through ansible's ``open_url``: basic auth sent up front, no redirects, no proxy."""

    def __init__(
        self,
        username: str | None = None,
        password: str | None = None,
        validate_certs: bool = True,
        ca_path: str | None = None,
    ) -> None:
        self.username = username
        self._password = password
        self.validate_certs = validate_certs
        self.ca_path = ca_path

    def __repr__(self) -> str:
        return (
            f"OpenUrlTransport(username={self.username!r}, validate_certs={self.validate_certs}, "
            f"ca_path={self.ca_path!r})"
        )

    def __call__(self, request: HttpRequest) -> HttpResponse:
        headers = {"Accept": "application/json", "OData-Version": "4.0", **request.headers}
        if request.body is not None:
            headers["Content-Type"] = "application/json"
        try:
            with open_url(
                request.url,
                data=request.body,
                headers=headers,
                method=request.method,
                use_proxy=False,
                timeout=request.timeout,
                validate_certs=self.validate_certs,
                ca_path=self.ca_path,
                url_username=self.username,
                url_password=self._password,
                force_basic_auth=self.username is not None,
                follow_redirects="none",
                use_netrc=False,
            ) as response:
                return HttpResponse(int(response.status), response.read(), _lower_headers(response.headers))
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read() if exc.fp is not None else b""
            except (OSError, AttributeError):
                body = b""
            return HttpResponse(exc.code, body, _lower_headers(exc.headers))
        except urllib.error.URLError as exc:
            raise describe_no_answer(exc.reason, request.timeout) from None
        except UrlsConnectionError as exc:
            raise NoAnswer(str(exc), sent=False, retriable=False) from None
        except (OSError, http.client.HTTPException) as exc:
            raise describe_no_answer(exc, request.timeout) from None


# --- retries ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3  # tries after the first
    backoff: float = 0.5  # seconds before the first retry, doubled for each next one
    max_delay: float = 30.0

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based): the BMC's Retry-After when it gave one."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_RETRY_AFTER)
        return float(min(self.backoff * 2 ** (retry - 1), self.max_delay))


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds from a Retry-After header: delay-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now())


def may_retry(method: str, status: int) -> bool:
    if method == "POST":
        return status in _POST_NOT_PROCESSED
    return status == 429 or status >= 500


def redfish_message(body: bytes) -> str:
    """The BMC's own explanation in a Redfish error body (``error.message`` and extended info)."""
    try:
        document = json.loads(body or b"{}")
    except ValueError:
        return " ".join(body.decode("utf-8", errors="replace").split())[:300]
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return ""
    parts = [str(error.get("message") or "")]
    for info in error.get("@Message.ExtendedInfo") or []:
        if isinstance(info, dict) and info.get("Message") and info["Message"] not in parts:
            parts.append(str(info["Message"]))
    return "; ".join(part for part in parts if part)[:500]


def parse_bmc_url(address: str) -> str:
    """``https://host[:port]`` from the ``bmc`` parameter; refuses credentials in it (never echoing them)."""
    parsed = urllib.parse.urlsplit(address.strip())
    if parsed.username is not None or parsed.password is not None:
        raise RedfishError("bmc must not carry credentials (user:password@): use username and password")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise RedfishError(
            f"bmc must be a URL like https://10.0.0.5 or http://127.0.0.1:8000, not {address!r}"
        )
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        raise RedfishError(f"bmc must be the BMC's address only (no path), not {address!r}")
    try:
        parsed.port  # noqa: B018 -- raises on a malformed port
    except ValueError:
        raise RedfishError(f"bmc has an invalid port: {address!r}") from None
    return f"{parsed.scheme}://{parsed.netloc}"


class RedfishClient:
    """JSON over HTTP to one BMC, with retries, error mapping and redaction."""

    def __init__(
        self,
        base_url: str,
        transport: Transport,
        timeout: float = 10.0,
        policy: RetryPolicy | None = None,
        secrets: Sequence[str] = (),
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = parse_bmc_url(base_url)
        self.transport = transport
        self.timeout = timeout
        self.policy = policy or RetryPolicy()
        self._secrets = tuple(secret for secret in secrets if secret)
        self.sleep = sleep
        self.clock = clock

    def __repr__(self) -> str:
        return f"RedfishClient({self.base_url!r})"

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            parsed = urllib.parse.urlsplit(path)
            if f"{parsed.scheme}://{parsed.netloc}" != self.base_url:
                raise RedfishError(self.redact(f"the BMC links to another host ({path}): not followed"))
            return path
        return self.base_url + "/" + path.lstrip("/")

    def request(
        self,
        method: str,
        path: str,
        payload: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        body = None if payload is None else json.dumps(payload).encode()
        request = HttpRequest(method, self.url(path), body, dict(headers or {}), self.timeout)
        started = self.clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.transport(request)
            except NoAnswer as exc:
                repeatable = exc.retriable and not (exc.sent and method == "POST")
                if repeatable and attempt <= self.policy.retries:
                    self.sleep(self.policy.delay(attempt))
                    continue
                tries = f" ({attempt} attempts in {self.clock() - started:.1f} s)" if attempt > 1 else ""
                raise RedfishUnreachable(
                    self.redact(
                        f"cannot reach the BMC at {self.base_url}: {method} {path}: {exc.reason}{tries}"
                    ),
                    attempts=attempt,
                ) from None
            if response.status < 300:
                return response
            if may_retry(method, response.status) and attempt <= self.policy.retries:
                self.sleep(self.policy.delay(attempt, parse_retry_after(response.header("Retry-After"))))
                continue
            raise self._http_error(method, path, response, attempt)

    def _http_error(self, method: str, path: str, response: HttpResponse, attempts: int) -> RedfishError:
        status = response.status
        said = redfish_message(response.body)
        detail = f": {said}" if said else ""
        where = f"{method} {path}"
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        error: RedfishError
        if status == 401:
            error = RedfishAuthError(
                f"the BMC at {self.base_url} refused the credentials (HTTP 401 on {where}){detail}: "
                "check username and password",
                status,
            )
        elif status == 403:
            error = RedfishAuthError(
                f"the BMC account may not {where} (HTTP 403){detail}: it needs a role with that privilege",
                status,
            )
        elif 300 <= status < 400:
            location = response.header("Location") or "?"
            error = RedfishError(
                f"the BMC redirected {where} to {location} (HTTP {status}): redirects are not followed, "
                "set bmc to the address it redirects to",
                status,
            )
        elif status in (405, 501):
            error = RedfishUnsupported(f"the BMC does not support {where} (HTTP {status}){detail}", status)
        elif status == 404:
            error = RedfishError(f"the BMC has no {path} (HTTP 404 on {method}){detail}", status)
        else:
            error = RedfishError(f"the BMC answered {where} with HTTP {status}{detail}{tries}", status)
        error.args = (self.redact(str(error)),)
        return error

    def get(self, path: str) -> dict[str, Any]:
        return self._json(self.request("GET", path), "GET", path)

    def get_with_etag(self, path: str) -> tuple[dict[str, Any], str | None]:
        response = self.request("GET", path)
        return self._json(response, "GET", path), response.header("ETag")

    def post(self, path: str, payload: Mapping[str, Any]) -> HttpResponse:
        return self.request("POST", path, payload)

    def patch(self, path: str, payload: Mapping[str, Any]) -> HttpResponse:
        try:
            return self.request("PATCH", path, payload)
        except RedfishError as exc:
            if exc.status != 428:
                raise
        _document, etag = self.get_with_etag(path)
        if not etag:
            raise RedfishError(
                self.redact(f"the BMC demands If-Match on PATCH {path} but gives no ETag"), 428
            )
        return self.request("PATCH", path, payload, {"If-Match": etag})

    def _json(self, response: HttpResponse, method: str, path: str) -> dict[str, Any]:
        try:
            document = json.loads(response.body or b"{}")
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise RedfishError(
                self.redact(f"the BMC answered {method} {path} with something else than a JSON object")
            )
        return document


# --- the model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Nic:
    id: str
    mac: str | None


@dataclass(frozen=True)
class BootOverride:
    target: str | None  # BootSourceOverrideTarget: Pxe, Hdd, Cd, None, ...
    enabled: str | None  # BootSourceOverrideEnabled: Disabled, Once, Continuous
    mode: str | None = None  # BootSourceOverrideMode: UEFI, Legacy
    allowed_targets: tuple[str, ...] = ()  # empty when the BMC does not say

    def summary(self) -> dict[str, Any]:
        return {"target": self.target, "enabled": self.enabled}


@dataclass(frozen=True)
class SystemFacts:
    id: str
    uri: str
    name: str | None
    uuid: str | None
    manufacturer: str | None
    model: str | None
    serial_number: str | None
    power_state: str | None
    processor_count: int | None  # ProcessorSummary.Count: processors (often sockets)
    logical_processor_count: int | None  # ProcessorSummary.LogicalProcessorCount: threads
    memory_mib: int | None
    nics: tuple[Nic, ...]
    boot: BootOverride
    reset_types: tuple[str, ...] | None  # None: the BMC does not say which it accepts
    reset_target: str | None = None
    manager_uri: str | None = None

    @property
    def cpus(self) -> int | None:
        """What a guest would call vCPUs: logical processors when reported, else processors."""
        return self.logical_processor_count or self.processor_count

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for internal in ("reset_target", "manager_uri"):
            data.pop(internal)
        data["cpus"] = self.cpus
        data["nics"] = [asdict(nic) for nic in self.nics]
        data["boot"] = {**asdict(self.boot), "allowed_targets": list(self.boot.allowed_targets)}
        data["reset_types"] = None if self.reset_types is None else list(self.reset_types)
        return data

    def summary(self) -> dict[str, Any]:
        return {"power_state": self.power_state, "boot": self.boot.summary()}


@dataclass(frozen=True)
class MediaDevice:
    uri: str
    id: str
    media_types: tuple[str, ...]
    inserted: bool
    image: str | None
    insert_target: str | None
    eject_target: str | None

    def summary(self) -> dict[str, Any]:
        return {"device": self.id, "inserted": self.inserted, "image": self.image}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _link(document: Mapping[str, Any], key: str) -> str | None:
    value = document.get(key)
    return _str(value.get("@odata.id")) if isinstance(value, dict) else None


def _members(collection: Mapping[str, Any]) -> list[str]:
    links = (
        _str(member.get("@odata.id"))
        for member in collection.get("Members") or []
        if isinstance(member, dict)
    )
    return [link for link in links if link]


def memory_mib(gib: Any) -> int | None:
    if isinstance(gib, bool) or not isinstance(gib, (int, float)):
        return None
    return round(float(gib) * 1024)


def choose_reset(kind: str, allowed: tuple[str, ...] | None) -> str | None:
    """The ResetType for ``kind`` among what the BMC advertises (the preferred one when it does not say)."""
    preferences = _RESET_PREFERENCES[kind]
    if allowed is None:
        return preferences[0]
    return next((value for value in preferences if value in allowed), None)


# --- one system ---------------------------------------------------------------------------------


class RedfishSystem:
    """One ComputerSystem behind a BMC: located once, then read and changed."""

    def __init__(
        self,
        client: RedfishClient,
        system_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.client = client
        self.system_id = system_id
        self.clock = clock
        self.sleep = sleep
        self.poll_interval = poll_interval
        self._uri: str | None = None

    # locating and reading

    def locate(self) -> str:
        if self._uri is None:
            self._uri = self._find_system()
        return self._uri

    def _find_system(self) -> str:
        root = self.client.get(SERVICE_ROOT)
        systems_link = _link(root, "Systems")
        if not systems_link:
            raise RedfishUnsupported(f"the BMC at {self.client.base_url} has no Systems collection")
        members = _members(self.client.get(systems_link))
        if not members:
            raise RedfishError(f"the BMC at {self.client.base_url} manages no ComputerSystem")
        if self.system_id is None:
            if len(members) == 1:
                return members[0]
            ids = ", ".join(member.rstrip("/").rsplit("/", 1)[-1] for member in members)
            raise RedfishError(
                f"the BMC at {self.client.base_url} manages {len(members)} systems ({ids}): set system_id"
            )
        for member in members:
            if member.rstrip("/").rsplit("/", 1)[-1] == self.system_id:
                return member
        for member in members:  # an Id need not be the last path segment
            if self.client.get(member).get("Id") == self.system_id:
                return member
        ids = ", ".join(member.rstrip("/").rsplit("/", 1)[-1] for member in members)
        raise RedfishError(
            f"the BMC at {self.client.base_url} has no system {self.system_id!r} (it has: {ids})"
        )

    def facts(self) -> SystemFacts:
        uri = self.locate()
        system = self.client.get(uri)
        processors = system.get("ProcessorSummary") or {}
        memory = system.get("MemorySummary") or {}
        boot = system.get("Boot") or {}
        reset = (system.get("Actions") or {}).get("#ComputerSystem.Reset") or {}
        managers = (system.get("Links") or {}).get("ManagedBy") or []
        return SystemFacts(
            id=str(system.get("Id") or uri.rstrip("/").rsplit("/", 1)[-1]),
            uri=uri,
            name=_str(system.get("Name")),
            uuid=_str(system.get("UUID")),
            manufacturer=_str(system.get("Manufacturer")),
            model=_str(system.get("Model")),
            serial_number=_str(system.get("SerialNumber")),
            power_state=_str(system.get("PowerState")),
            processor_count=_int(processors.get("Count")),
            logical_processor_count=_int(processors.get("LogicalProcessorCount")),
            memory_mib=memory_mib(memory.get("TotalSystemMemoryGiB")),
            nics=self._nics(system),
            boot=BootOverride(
                target=_str(boot.get("BootSourceOverrideTarget")),
                enabled=_str(boot.get("BootSourceOverrideEnabled")),
                mode=_str(boot.get("BootSourceOverrideMode")),
                allowed_targets=tuple(boot.get("BootSourceOverrideTarget@Redfish.AllowableValues") or ()),
            ),
            reset_types=self._reset_types(reset),
            reset_target=_str(reset.get("target")),
            manager_uri=_str(managers[0].get("@odata.id"))
            if managers and isinstance(managers[0], dict)
            else None,
        )

    def _nics(self, system: Mapping[str, Any]) -> tuple[Nic, ...]:
        link = _link(system, "EthernetInterfaces")
        if not link:
            return ()
        nics = []
        for member in _members(self.client.get(link)):
            nic = self.client.get(member)
            mac = _str(nic.get("MACAddress")) or _str(nic.get("PermanentMACAddress"))
            nics.append(
                Nic(id=str(nic.get("Id") or member.rsplit("/", 1)[-1]), mac=mac.lower() if mac else None)
            )
        return tuple(nics)

    def _reset_types(self, reset: Mapping[str, Any]) -> tuple[str, ...] | None:
        allowed = reset.get("ResetType@Redfish.AllowableValues")
        if isinstance(allowed, list):
            return tuple(str(value) for value in allowed)
        info_link = _str(reset.get("@Redfish.ActionInfo"))
        if not info_link:
            return None
        for parameter in self.client.get(info_link).get("Parameters") or []:
            if isinstance(parameter, dict) and parameter.get("Name") == "ResetType":
                return tuple(str(value) for value in parameter.get("AllowableValues") or ())
        return None

    def power_state(self) -> str | None:
        return _str(self.client.get(self.locate()).get("PowerState"))

    # power

    def reset(self, facts: SystemFacts, reset_type: str) -> None:
        if not facts.reset_target:
            raise RedfishUnsupported(f"system {facts.id} offers no ComputerSystem.Reset action")
        if facts.reset_types is not None and reset_type not in facts.reset_types:
            raise RedfishUnsupported(
                f"system {facts.id} does not accept ResetType {reset_type} "
                f"(it accepts: {', '.join(facts.reset_types) or 'none'})"
            )
        self.client.post(facts.reset_target, {"ResetType": reset_type})

    def wait_power(self, want: str, timeout: float) -> float:
        """Poll until PowerState is ``want``; the seconds waited, or RedfishTimeout (after a last look)."""
        started = self.clock()
        deadline = started + timeout
        while True:
            state = self.power_state()
            now = self.clock()
            if state == want:
                return now - started
            if now >= deadline:
                raise RedfishTimeout(
                    f"system {self.system_id or self.locate()} is still {state} after {now - started:.1f} s, "
                    f"not {want}",
                    state=state,
                    waited=round(now - started, 3),
                )
            self.sleep(min(self.poll_interval, deadline - now))

    def _reset_type(self, facts: SystemFacts, kind: str, purpose: str) -> str:
        reset_type = choose_reset(kind, facts.reset_types)
        if reset_type is None:
            wanted = ", ".join(_RESET_PREFERENCES[kind])
            raise RedfishUnsupported(f"system {facts.id} accepts no ResetType that {purpose} ({wanted})")
        return reset_type

    def power_on(self, facts: SystemFacts, timeout: float) -> tuple[list[str], float]:
        reset_type = self._reset_type(facts, "on", "powers it on")
        self.reset(facts, reset_type)
        return [reset_type], self.wait_power("On", timeout)

    def power_off(
        self, facts: SystemFacts, graceful_timeout: float, timeout: float
    ) -> tuple[list[str], float]:
        """GracefulShutdown, then ForceOff when the host is still on after ``graceful_timeout`` seconds."""
        graceful = choose_reset("graceful_off", facts.reset_types)
        force = choose_reset("force_off", facts.reset_types)
        if graceful is None or (force is not None and graceful_timeout <= 0):
            force = self._reset_type(facts, "force_off", "powers it off")
            self.reset(facts, force)
            return [force], self.wait_power("Off", timeout)
        self.reset(facts, graceful)
        try:
            return [graceful], self.wait_power("Off", timeout if force is None else graceful_timeout)
        except RedfishTimeout as exc:
            if force is None:
                raise
            waited = float(exc.details.get("waited", graceful_timeout))
            still = exc.details.get("state")
        self.reset(facts, force)
        actions = [graceful, f"{force} (still {still} after {waited:g} s)"]
        return actions, waited + self.wait_power("Off", timeout)

    def power_reset(self, facts: SystemFacts, timeout: float) -> tuple[list[str], float]:
        reset_type = self._reset_type(facts, "reset", "restarts it")
        self.reset(facts, reset_type)
        return [reset_type], self.wait_power("On", timeout)

    # boot override

    def set_boot(self, facts: SystemFacts, target: str, enabled: str) -> None:
        self.client.patch(
            facts.uri, {"Boot": {"BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": enabled}}
        )

    # virtual media

    def media_devices(self, facts: SystemFacts) -> list[MediaDevice]:
        """Virtual media of the system's manager (the classic place), else of the system itself."""
        collection = None
        if facts.manager_uri:
            collection = _link(self.client.get(facts.manager_uri), "VirtualMedia")
        if not collection:
            collection = _link(self.client.get(facts.uri), "VirtualMedia")
        if not collection:
            raise RedfishUnsupported(
                f"virtual media is not supported by this BMC: neither system {facts.id} nor its manager "
                "has a VirtualMedia collection"
            )
        return [self.media_device(member) for member in _members(self.client.get(collection))]

    def media_device(self, uri: str) -> MediaDevice:
        media = self.client.get(uri)
        actions = media.get("Actions") or {}
        return MediaDevice(
            uri=uri,
            id=str(media.get("Id") or uri.rsplit("/", 1)[-1]),
            media_types=tuple(str(kind) for kind in media.get("MediaTypes") or ()),
            inserted=media.get("Inserted") is True,
            image=_str(media.get("Image")),
            insert_target=_str((actions.get("#VirtualMedia.InsertMedia") or {}).get("target")),
            eject_target=_str((actions.get("#VirtualMedia.EjectMedia") or {}).get("target")),
        )

    def cd_device(self, facts: SystemFacts) -> MediaDevice:
        devices = self.media_devices(facts)
        for device in devices:
            if {"CD", "DVD"} & set(device.media_types):
                return device
        found = (
            ", ".join(f"{device.id} ({'/'.join(device.media_types) or '?'})" for device in devices) or "none"
        )
        raise RedfishUnsupported(
            f"virtual media is not supported by this BMC: no CD/DVD device (devices: {found})"
        )

    def insert_media(self, device: MediaDevice, image: str) -> None:
        if not device.insert_target:
            raise RedfishUnsupported(
                f"inserting virtual media is not supported by this BMC: {device.id} has no InsertMedia action"
            )
        self.client.post(device.insert_target, {"Image": image, "Inserted": True, "WriteProtected": True})

    def eject_media(self, device: MediaDevice) -> None:
        if not device.eject_target:
            raise RedfishUnsupported(
                f"ejecting virtual media is not supported by this BMC: {device.id} has no EjectMedia action"
            )
        self.client.post(device.eject_target, {})


# --- the request and the whole job --------------------------------------------------------------


@dataclass(frozen=True)
class BmcRequest:
    """Validated module parameters (the password is kept out of repr)."""

    bmc: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    validate_certs: bool = True
    ca_path: str | None = None
    system_id: str | None = None
    timeout: float = 10.0
    retries: int = 3
    power: str | None = None
    graceful_timeout: float = 60.0
    power_timeout: float = 120.0
    boot_device: str | None = None
    boot_mode: str = "once"
    media_image: str | None = None
    media_state: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> BmcRequest:
        media = params.get("virtual_media") or {}
        request = cls(
            bmc=str(params["bmc"]),
            username=params.get("username"),
            password=params.get("password"),
            validate_certs=bool(params.get("validate_certs", True)),
            ca_path=params.get("ca_path"),
            system_id=params.get("system_id"),
            timeout=float(params.get("timeout") or 10.0),
            retries=int(params.get("retries", 3)),
            power=params.get("power"),
            graceful_timeout=float(params.get("graceful_timeout", 60.0)),
            power_timeout=float(params.get("power_timeout", 120.0)),
            boot_device=params.get("boot_device"),
            boot_mode=str(params.get("boot_mode") or "once"),
            media_image=media.get("image"),
            media_state=(media.get("state") or "inserted") if media else None,
        )
        problems = request.problems()
        if problems:
            raise RedfishError("invalid parameters: " + "; ".join(problems))
        return request

    def problems(self) -> list[str]:
        problems: list[str] = []
        try:
            parse_bmc_url(self.bmc)
        except RedfishError as exc:
            problems.append(str(exc))
        if (self.username is None) != (self.password is None):
            problems.append("username and password go together")
        if self.power is not None and self.power not in POWER_ACTIONS:
            problems.append(f"power must be one of {', '.join(POWER_ACTIONS)}, not {self.power!r}")
        if self.boot_device is not None and self.boot_device not in BOOT_TARGETS:
            problems.append(f"boot_device must be one of {', '.join(BOOT_TARGETS)}, not {self.boot_device!r}")
        if self.boot_mode not in BOOT_ENABLED:
            problems.append(f"boot_mode must be one of {', '.join(BOOT_ENABLED)}, not {self.boot_mode!r}")
        if self.media_state is not None:
            if self.media_state not in MEDIA_STATES:
                problems.append(f"virtual_media.state must be one of {', '.join(MEDIA_STATES)}")
            elif self.media_state == "inserted" and not self.media_image:
                problems.append("virtual_media.state=inserted needs virtual_media.image")
        if self.timeout <= 0:
            problems.append(f"timeout must be > 0, not {self.timeout:g}")
        if self.retries < 0:
            problems.append(f"retries must be >= 0, not {self.retries}")
        for name, value in (
            ("graceful_timeout", self.graceful_timeout),
            ("power_timeout", self.power_timeout),
        ):
            if value < 0:
                problems.append(f"{name} must be >= 0, not {value:g}")
        return problems

    def secrets(self) -> list[str]:
        """What must never appear in a message: the password and the Authorization header it makes."""
        if not self.password:
            return []
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return [self.password, token]


@dataclass
class BmcOutcome:
    changed: bool
    before: SystemFacts
    after: SystemFacts
    actions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    waited: float = 0.0
    media_before: MediaDevice | None = None
    media_after: MediaDevice | None = None

    def summary(self, facts: SystemFacts, media: MediaDevice | None) -> dict[str, Any]:
        summary = facts.summary()
        if media is not None:
            summary["virtual_media"] = media.summary()
        return summary

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "changed": self.changed,
            "facts": self.after.as_dict(),
            "actions": list(self.actions),
            "waited": round(self.waited, 3),
            "diff": {
                "before": self.summary(self.before, self.media_before),
                "after": self.summary(self.after, self.media_after),
            },
        }
        if self.media_after is not None:
            result["virtual_media"] = self.media_after.summary()
        return result


class RedfishHost:
    """The module's whole BMC job: read, compare, change unless check mode, read back."""

    def __init__(self, system: RedfishSystem) -> None:
        self.system = system

    @property
    def bmc(self) -> str:
        return self.system.client.base_url

    def read(self) -> SystemFacts:
        try:
            return self.system.facts()
        except RedfishError as exc:
            self._redact(exc)
            raise

    def apply(self, request: BmcRequest, check_mode: bool, before: SystemFacts | None = None) -> BmcOutcome:
        before = before or self.read()
        outcome = BmcOutcome(changed=False, before=before, after=before)
        try:
            # the boot override and the media first: they take effect at the (re)start power may cause
            predicted = self._boot(request, check_mode, outcome, before)
            self._media(request, check_mode, outcome)
            predicted = self._power(request, check_mode, outcome, predicted)
            if check_mode or not outcome.changed:
                outcome.after = predicted
            else:
                outcome.after = self.system.facts()
                self._verify_boot(request, outcome)
        except RedfishError as exc:
            self._redact(exc)
            exc.details.update(changed=outcome.changed, actions=list(outcome.actions))
            raise
        return outcome

    def _redact(self, error: RedfishError) -> None:
        """Blank credentials a BMC may have put in what a message quotes of it (ids, names)."""
        error.args = (self.system.client.redact(str(error)),)

    def _power(
        self, request: BmcRequest, check_mode: bool, outcome: BmcOutcome, facts: SystemFacts
    ) -> SystemFacts:
        if request.power is None:
            return facts
        state = facts.power_state
        if (request.power, state) in (("on", "On"), ("off", "Off")):
            return facts
        want = "Off" if request.power == "off" else "On"
        if request.power != "reset" and state == f"Powering{want}":  # on its way already: only wait
            if not check_mode:
                outcome.waited += self.system.wait_power(want, request.power_timeout)
            return replace(facts, power_state=want)
        outcome.changed = True
        if check_mode:
            outcome.actions.append(f"power {request.power}")
            return replace(facts, power_state=want)
        if request.power == "off":
            actions, waited = self.system.power_off(facts, request.graceful_timeout, request.power_timeout)
        elif request.power == "on" or state == "Off":  # resetting a host that is off means starting it
            actions, waited = self.system.power_on(facts, request.power_timeout)
        else:
            actions, waited = self.system.power_reset(facts, request.power_timeout)
        outcome.actions.extend(actions)
        outcome.waited += waited
        return replace(facts, power_state=want)

    def _boot(
        self, request: BmcRequest, check_mode: bool, outcome: BmcOutcome, facts: SystemFacts
    ) -> SystemFacts:
        if request.boot_device is None:
            return facts
        target = BOOT_TARGETS[request.boot_device]
        enabled = BOOT_ENABLED[request.boot_mode]
        if facts.boot.target == target and facts.boot.enabled == enabled:
            return facts
        allowed = facts.boot.allowed_targets
        if allowed and target not in allowed:
            raise RedfishUnsupported(
                f"system {facts.id} does not offer boot target {target} (it offers: {', '.join(allowed)})"
            )
        outcome.changed = True
        outcome.actions.append(f"boot override {target} {enabled}")
        if not check_mode:
            self.system.set_boot(facts, target, enabled)
        return replace(facts, boot=replace(facts.boot, target=target, enabled=enabled))

    def _media(self, request: BmcRequest, check_mode: bool, outcome: BmcOutcome) -> None:
        if request.media_state is None:
            return
        device = self.system.cd_device(outcome.before)
        outcome.media_before = outcome.media_after = device
        if request.media_state == "ejected":
            eject, insert = device.inserted or bool(device.image), None
        else:
            there = device.inserted and device.image == request.media_image
            eject, insert = device.inserted and not there, None if there else request.media_image
        if not eject and not insert:
            return
        outcome.changed = True
        if eject:
            outcome.actions.append(f"eject {device.id}")
            if not check_mode:
                self.system.eject_media(device)
        if insert:
            outcome.actions.append(f"insert {insert} into {device.id}")
            if not check_mode:
                self.system.insert_media(device, insert)
        if check_mode:
            inserted = request.media_state == "inserted"
            outcome.media_after = replace(
                device, inserted=inserted, image=request.media_image if inserted else None
            )
            return
        outcome.media_after = after = self.system.media_device(device.uri)
        if request.media_state == "inserted" and not (after.inserted and after.image == request.media_image):
            outcome.warnings.append(
                f"the BMC accepted InsertMedia but {after.id} reports "
                f"inserted={after.inserted}, image={after.image}"
            )

    def _verify_boot(self, request: BmcRequest, outcome: BmcOutcome) -> None:
        if request.boot_device is None:
            return
        want = BootOverride(BOOT_TARGETS[request.boot_device], BOOT_ENABLED[request.boot_mode])
        seen = outcome.after.boot
        if (seen.target, seen.enabled) != (want.target, want.enabled):
            outcome.warnings.append(
                f"the BMC accepted the boot override {want.target}/{want.enabled} but reports "
                f"{seen.target}/{seen.enabled}"
            )


def connect(
    request: BmcRequest,
    transport: Transport | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    poll_interval: float = POLL_INTERVAL,
) -> RedfishHost:
    """The host behind ``request.bmc``, through ``open_url`` unless a transport is given."""
    transport = transport or OpenUrlTransport(
        request.username, request.password, request.validate_certs, request.ca_path
    )
    client = RedfishClient(
        request.bmc,
        transport,
        timeout=request.timeout,
        policy=RetryPolicy(retries=request.retries),
        secrets=request.secrets(),
        sleep=sleep,
        clock=clock,
    )
    return RedfishHost(
        RedfishSystem(client, request.system_id, clock=clock, sleep=sleep, poll_interval=poll_interval)
    )


def apply_request(request: BmcRequest, check_mode: bool, transport: Transport | None = None) -> BmcOutcome:
    return connect(request, transport).apply(request, check_mode)
