# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A service's parallel run, ``environment.services.<name>.parallel_run``, and the gate a
blue-green or canary strategy may set on it (``strategy.<kind>.parallel_run``)::

    parallel_run:
      sample: 0.5                     # the share of eligible requests copied (default 1)
      methods: [GET, HEAD]            # the default; a method with side effects needs allow_unsafe
      allow_unsafe: false
      queue: 1000                     # copies that may wait; more are dropped (and counted)
      timeout: 2                      # seconds an answer of the candidate may take
      compare:
        mode: json                    # json | text | status
        ignore_fields: [updated_at, items[*].etag]
        ignore_headers: [date, x-request-id]
        compare_headers: [content-type]
        redact_headers: [x-api-key]   # authorization, cookie and set-cookie always are
        redact_fields: [card.number]

    strategy:
      blue_green:
        ...
        parallel_run: {min_requests: 200, max_mismatch_rate: 0.001, max_seconds: 300}

Every value is checked here, before anything is touched (issue 13).
"""

from __future__ import annotations

import re
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.fieldpath import (
    FieldPathError,
    parse_field_path,
)
from ansible_collections.berth.fleet.plugins.module_utils.model.reader import Reader, describe
from ansible_collections.berth.fleet.plugins.module_utils.model.topology import (
    CompareRules,
    ParallelGate,
    ParallelRun,
    dotted,
)

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
METHODS = (*SAFE_METHODS, "POST", "PUT", "PATCH", "DELETE")
MODES = ("json", "text", "status")
DEFAULT_GATE_SECONDS = 300  # how long a gate waits for its min_requests by default
HEADER_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


def parse_parallel_run(reader: Reader, raw: Any, key: str) -> ParallelRun:
    body = reader.mapping(raw, key)
    reader.keys(body, key, (), ("sample", "methods", "allow_unsafe", "queue", "timeout", "compare"))
    sample = _rate(reader, body.get("sample", 1), dotted(key, "sample"), above_zero=True)
    allow_unsafe = reader.boolean(body.get("allow_unsafe", False), dotted(key, "allow_unsafe"))
    methods = _methods(reader, body.get("methods", ["GET", "HEAD"]), dotted(key, "methods"), allow_unsafe)
    timeout = body.get("timeout", 2)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0.1 <= timeout <= 60:
        raise reader.fail(dotted(key, "timeout"), f"expected seconds from 0.1 to 60, got {describe(timeout)}")
    return ParallelRun(
        sample=sample,
        methods=methods,
        allow_unsafe=allow_unsafe,
        queue=reader.integer(body.get("queue", 1000), dotted(key, "queue"), 1, 1_000_000),
        timeout=float(timeout),
        compare=_compare(reader, body.get("compare", {}), dotted(key, "compare")),
    )


def parse_gate(reader: Reader, raw: Any, key: str) -> ParallelGate:
    body = reader.mapping(raw, key)
    reader.keys(body, key, ("min_requests", "max_mismatch_rate"), ("max_seconds",))
    max_seconds = body.get("max_seconds", DEFAULT_GATE_SECONDS)
    seconds_ok = isinstance(max_seconds, int | float) and not isinstance(max_seconds, bool)
    if not seconds_ok or not 1 <= max_seconds <= 86400:
        raise reader.fail(
            dotted(key, "max_seconds"),
            f"expected the seconds the parallel run may take to compare min_requests, from 1 to 86400, "
            f"got {describe(max_seconds)}",
        )
    return ParallelGate(
        min_requests=reader.integer(body["min_requests"], dotted(key, "min_requests"), 1),
        max_mismatch_rate=_rate(reader, body["max_mismatch_rate"], dotted(key, "max_mismatch_rate")),
        max_seconds=float(max_seconds),
    )


def _methods(reader: Reader, raw: Any, key: str, allow_unsafe: bool) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        raise reader.fail(key, f"expected a list of HTTP methods such as [GET, HEAD], got {describe(raw)}")
    methods = []
    for index, method in enumerate(raw):
        name = reader.choice(method, f"{key}[{index}]", METHODS)
        if name not in SAFE_METHODS and not allow_unsafe:
            raise reader.fail(
                f"{key}[{index}]",
                f"{name} has side effects: a copy would run them twice; it is copied only with "
                "allow_unsafe: true (for an endpoint that is idempotent or writes nowhere shared)",
            )
        methods.append(name)
    return tuple(dict.fromkeys(methods))


def _compare(reader: Reader, raw: Any, key: str) -> CompareRules:
    body = reader.mapping(raw, key)
    allowed = (
        "mode",
        "ignore_fields",
        "ignore_headers",
        "compare_headers",
        "redact_headers",
        "redact_fields",
    )
    reader.keys(body, key, (), allowed)
    return CompareRules(
        mode=reader.choice(body.get("mode", "json"), dotted(key, "mode"), MODES),
        ignore_fields=_fields(reader, body.get("ignore_fields", []), dotted(key, "ignore_fields")),
        ignore_headers=_headers(reader, body.get("ignore_headers", []), dotted(key, "ignore_headers")),
        compare_headers=_headers(
            reader, body.get("compare_headers", ["content-type"]), dotted(key, "compare_headers")
        ),
        redact_headers=_headers(reader, body.get("redact_headers", []), dotted(key, "redact_headers")),
        redact_fields=_fields(reader, body.get("redact_fields", []), dotted(key, "redact_fields")),
    )


def _fields(reader: Reader, raw: Any, key: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise reader.fail(
            key, f"expected a list of field paths such as [updated_at, items[*].etag], got {describe(raw)}"
        )
    for index, path in enumerate(raw):
        try:
            parse_field_path(path)
        except FieldPathError as exc:
            raise reader.fail(f"{key}[{index}]", str(exc)) from None
    return tuple(raw)


def _headers(reader: Reader, raw: Any, key: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise reader.fail(
            key, f"expected a list of header names such as [date, x-request-id], got {describe(raw)}"
        )
    for index, name in enumerate(raw):
        if not isinstance(name, str) or not HEADER_RE.match(name):
            raise reader.fail(f"{key}[{index}]", f"expected an HTTP header name, got {describe(name)}")
    return tuple(name.lower() for name in raw)


def _rate(reader: Reader, raw: Any, key: str, above_zero: bool = False) -> float:
    number = not isinstance(raw, bool) and isinstance(raw, int | float)
    if not number or raw > 1 or raw < 0 or (above_zero and raw == 0):
        lowest = "above 0" if above_zero else "from 0"
        raise reader.fail(key, f"expected a rate {lowest} to 1 (0.01 is 1 %), got {describe(raw)}")
    return float(raw)
