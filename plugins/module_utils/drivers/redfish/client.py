# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""JSON over HTTP to one BMC: URLs, requests with retries, error mapping, redaction, ETags.

- Messages are built from the method, the path and the BMC's own error text, and every message
  goes through ``redact()``, which blanks the password (and the encoded ``Authorization`` header)
  should a BMC echo it back.
- A BMC that demands ``If-Match`` on PATCH (HTTP 428) gets the resource's ETag, fetched afresh.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.errors import (
    RedfishAuthError,
    RedfishError,
    RedfishUnreachable,
    RedfishUnsupported,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.retry import (
    RetryPolicy,
    may_retry,
    parse_retry_after,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.transport import (
    HttpRequest,
    HttpResponse,
    NoAnswer,
    Transport,
)

REDACTED = "********"


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
