# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP to a BMC: the request and answer types, and the default transport over ansible's ``open_url``.

- Authentication is HTTP basic on every request, with no Redfish session: a session must be
  deleted on every exit path or it holds one of the BMC's few session slots until it times out.
- The password only ever goes into the ``Authorization`` header (and is kept out of repr).
- TLS is verified by default (``validate_certs``, ``ca_path``). Redirects are not followed (a
  redirect would send the credentials on to wherever the BMC points) and no HTTP proxy is used.
- A request that gets no HTTP answer raises NoAnswer, which says whether the request may have
  reached the BMC and whether another try makes sense (the retries are the client's).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.error
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import open_url


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
