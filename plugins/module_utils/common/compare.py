# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parallel run: how two answers to the same request are compared, and what counts as a mismatch.

The method is Diffy's. Each sampled request is answered three times: by a trusted instance (the
primary), by a second trusted instance (the secondary) and by the candidate. The differences
between the two trusted answers are noise - timestamps, ids, ordering - and a difference of the
candidate's counts only where the trusted pair agree. A request whose candidate answer differs
from the primary only where the secondary does too is a match.

Answers are compared as the rules say (``Rules``): ``status`` compares the status code only;
``text`` the status, the compared headers and the body as bytes; ``json`` the same, with the body
parsed and compared value by value, so that a difference has a path (``$.items[2].price``) and
``ignore_fields`` can leave paths out (``updated_at``, ``items[*].etag``, ``meta.*``).

What a parallel run publishes (``Tally``): per endpoint (method and path, with numeric and
uuid-like segments folded to ``{id}``) the requests compared, the mismatches and the noise; a few
sampled differences, bounded, with the headers and fields the rules name redacted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.common.fieldpath import (
    FieldPath,
    FieldPathError,
    render,
)
from ansible_collections.berth.fleet.plugins.module_utils.common.fieldpath import (
    parse_field_path as _parse,
)

MODES = ("json", "text", "status")
DEFAULT_COMPARED_HEADERS = ("content-type",)
DEFAULT_REDACTED_HEADERS = ("authorization", "cookie", "set-cookie", "proxy-authorization")
REDACTED = "<redacted>"
MAX_SAMPLES_PER_ENDPOINT = 3
MAX_SAMPLES = 20
MAX_SAMPLE_CHARS = 300

_ID_SEGMENT_RE = re.compile(r"^(?:\d+|[0-9a-fA-F]{8,}(?:-[0-9a-fA-F]{4,}){0,4})$")


class CompareError(ValueError):
    """Comparison rules that cannot be used; the message says which and why."""


Path = FieldPath


def parse_field_path(text: Any) -> FieldPath:
    """A field path of the rules (``common/fieldpath.py``), refused as a ``CompareError``."""
    try:
        return _parse(text)
    except FieldPathError as exc:
        raise CompareError(str(exc)) from None


@dataclass(frozen=True)
class Rules:
    mode: str = "json"
    ignore_fields: tuple[Path, ...] = ()
    ignore_headers: frozenset[str] = frozenset()
    compare_headers: tuple[str, ...] = DEFAULT_COMPARED_HEADERS
    redact_headers: frozenset[str] = frozenset(DEFAULT_REDACTED_HEADERS)
    redact_fields: tuple[Path, ...] = ()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Rules:
        """The rules from their settings (validated by the spec already; refused here too)."""
        mode = str(settings.get("mode", "json"))
        if mode not in MODES:
            raise CompareError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
        return cls(
            mode=mode,
            ignore_fields=tuple(parse_field_path(p) for p in settings.get("ignore_fields", ())),
            ignore_headers=frozenset(_lower(settings.get("ignore_headers", ()))),
            compare_headers=_lower(settings.get("compare_headers", DEFAULT_COMPARED_HEADERS)),
            redact_headers=frozenset(_lower(settings.get("redact_headers", ())) + DEFAULT_REDACTED_HEADERS),
            redact_fields=tuple(parse_field_path(p) for p in settings.get("redact_fields", ())),
        )


def _lower(names: Iterable[Any]) -> tuple[str, ...]:
    return tuple(str(name).lower() for name in names)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


def _matches(pattern: Path, path: Path) -> bool:
    """Whether ``path`` is ``pattern`` or lies below it (``*`` matches any one key or index)."""
    if len(path) < len(pattern):
        return False
    return all(want == "*" or want == got for want, got in zip(pattern, path, strict=False))


def _walk(a: Any, b: Any, path: Path, out: list[Path]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.append((*path, key))
            else:
                _walk(a[key], b[key], (*path, key), out)
    elif isinstance(a, list) and isinstance(b, list):
        for index in range(max(len(a), len(b))):
            if index >= len(a) or index >= len(b):
                out.append((*path, index))
            else:
                _walk(a[index], b[index], (*path, index), out)
    elif type(a) is not type(b) or a != b:
        out.append(path)


def differences(one: Answer, other: Answer, rules: Rules) -> list[str]:
    """Where two answers differ, as the rules compare them: ``status``, ``header <name>``,
    ``body`` (text, or a body that is not JSON in json mode) or the JSON paths that differ."""
    found = []
    if one.status != other.status:
        found.append("status")
    if rules.mode == "status":
        return found
    for name in rules.compare_headers:
        if name in rules.ignore_headers:
            continue
        if _header(one, name) != _header(other, name):
            found.append(f"header {name}")
    if rules.mode == "text":
        return found + (["body"] if one.body != other.body else [])
    try:
        left, right = json.loads(one.body or b"null"), json.loads(other.body or b"null")
    except ValueError:
        return found + (["body"] if one.body != other.body else [])
    paths: list[Path] = []
    _walk(left, right, (), paths)
    found += [render(p) for p in paths if not any(_matches(ignored, p) for ignored in rules.ignore_fields)]
    return found


def _header(answer: Answer, name: str) -> str | None:
    for key, value in answer.headers.items():
        if key.lower() == name:
            return value
    return None


@dataclass(frozen=True)
class Verdict:
    mismatch: bool
    candidate: tuple[str, ...]  # where the candidate differs from the primary and the trusted pair agree
    noise: tuple[str, ...]  # where the two trusted answers differ


def judge(primary: Answer, secondary: Answer, candidate: Answer, rules: Rules) -> Verdict:
    """Diffy's verdict on one request: the candidate's differences less the trusted pair's."""
    noise = differences(primary, secondary, rules)
    against = differences(primary, candidate, rules)
    real = tuple(d for d in against if d not in noise and not _below_noise(d, noise))
    return Verdict(bool(real), real, tuple(noise))


def _below_noise(difference: str, noise: Sequence[str]) -> bool:
    """A difference inside a subtree the trusted pair already differ on (``$.meta`` covers ``$.meta.id``)."""
    return any(
        difference.startswith(n + ".") or difference.startswith(n + "[") for n in noise if n.startswith("$")
    )


def endpoint(method: str, target: str) -> str:
    """``GET /orders/123?x=1`` as ``GET /orders/{id}``: the endpoint a result is counted under."""
    path = target.split("?", 1)[0]
    segments = ["{id}" if _ID_SEGMENT_RE.match(s) else s for s in path.split("/")]
    return f"{method.upper()} {'/'.join(segments) or '/'}"


def redact(answer: Answer, rules: Rules) -> dict[str, Any]:
    """An answer as a sample shows it: redacted headers and fields, the body cut short."""
    headers = {k: (REDACTED if k.lower() in rules.redact_headers else v) for k, v in answer.headers.items()}
    try:
        body: Any = json.loads(answer.body or b"null")
        for pattern in rules.redact_fields:
            body = _redact_value(body, pattern, ())
        text = json.dumps(body, sort_keys=True)
    except ValueError:
        text = answer.body.decode("utf-8", "replace")
    return {"status": answer.status, "headers": headers, "body": text[:MAX_SAMPLE_CHARS]}


def _redact_value(value: Any, pattern: Path, path: Path) -> Any:
    if path and _matches(pattern, path) and len(path) == len(pattern):
        return REDACTED
    if isinstance(value, dict):
        return {k: _redact_value(v, pattern, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(v, pattern, (*path, i)) for i, v in enumerate(value)]
    return value


@dataclass
class EndpointCounts:
    requests: int = 0
    mismatches: int = 0
    noisy: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "mismatches": self.mismatches,
            "noisy": self.noisy,
            "mismatch_rate": round(self.mismatches / self.requests, 4) if self.requests else 0.0,
        }


@dataclass
class Tally:
    """What a parallel run found so far: per endpoint, and a bounded set of sampled differences."""

    rules: Rules
    endpoints: dict[str, EndpointCounts] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0  # copies the bounded queue let go rather than wait

    def add(self, method: str, target: str, primary: Answer, secondary: Answer, candidate: Answer) -> Verdict:
        verdict = judge(primary, secondary, candidate, self.rules)
        name = endpoint(method, target)
        counts = self.endpoints.setdefault(name, EndpointCounts())
        counts.requests += 1
        counts.noisy += bool(verdict.noise)
        if verdict.mismatch:
            counts.mismatches += 1
            mine = sum(1 for s in self.samples if s["endpoint"] == name)
            if mine < MAX_SAMPLES_PER_ENDPOINT and len(self.samples) < MAX_SAMPLES:
                self.samples.append(
                    {
                        "endpoint": name,
                        "request": f"{method.upper()} {target.split('?', 1)[0]}",
                        "differences": list(verdict.candidate),
                        "primary": redact(primary, self.rules),
                        "candidate": redact(candidate, self.rules),
                    }
                )
        return verdict

    @property
    def requests(self) -> int:
        return sum(c.requests for c in self.endpoints.values())

    @property
    def mismatches(self) -> int:
        return sum(c.mismatches for c in self.endpoints.values())

    def as_dict(self) -> dict[str, Any]:
        requests = self.requests
        return {
            "requests": requests,
            "mismatches": self.mismatches,
            "mismatch_rate": round(self.mismatches / requests, 4) if requests else 0.0,
            "dropped": self.dropped,
            "endpoints": {name: counts.as_dict() for name, counts in sorted(self.endpoints.items())},
            "samples": list(self.samples),
        }


SUMMED = ("received", "malformed", "unjudged", "candidate_failures", "dropped", "haproxy_dropped")


def merge(tallies: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The tallies of every load balancer's mirror as one: counts summed per endpoint, the rates
    recomputed, the samples kept within the same bounds."""
    endpoints: dict[str, EndpointCounts] = {}
    samples: list[dict[str, Any]] = []
    summed = dict.fromkeys(SUMMED, 0)
    for tally in tallies:
        for key in SUMMED:
            summed[key] += int(tally.get(key) or 0)
        for name, raw in dict(tally.get("endpoints") or {}).items():
            counts = endpoints.setdefault(name, EndpointCounts())
            counts.requests += int(raw.get("requests", 0))
            counts.mismatches += int(raw.get("mismatches", 0))
            counts.noisy += int(raw.get("noisy", 0))
        for sample in tally.get("samples") or []:
            mine = sum(1 for s in samples if s.get("endpoint") == sample.get("endpoint"))
            if mine < MAX_SAMPLES_PER_ENDPOINT and len(samples) < MAX_SAMPLES:
                samples.append(dict(sample))
    requests = sum(c.requests for c in endpoints.values())
    mismatches = sum(c.mismatches for c in endpoints.values())
    return {
        "requests": requests,
        "mismatches": mismatches,
        "mismatch_rate": round(mismatches / requests, 4) if requests else 0.0,
        **summed,
        "endpoints": {name: counts.as_dict() for name, counts in sorted(endpoints.items())},
        "samples": samples,
    }


def gate(tally: Mapping[str, Any], min_requests: int, max_mismatch_rate: float) -> tuple[bool, str]:
    """Whether a release may go on after this parallel run: enough compared requests (too few is
    never a pass) and a mismatch rate within the limit; the reason either way, naming the worst
    endpoints."""
    requests, rate = int(tally.get("requests", 0)), float(tally.get("mismatch_rate", 0.0))
    if requests < min_requests:
        return False, f"{requests} request(s) compared, fewer than the {min_requests} the gate needs"
    worst = sorted(
        ((name, c) for name, c in dict(tally.get("endpoints", {})).items() if c.get("mismatches")),
        key=lambda item: -float(item[1].get("mismatch_rate", 0)),
    )
    named = "; ".join(f"{name}: {c['mismatches']} of {c['requests']}" for name, c in worst[:5])
    if rate > max_mismatch_rate:
        return False, f"mismatch rate {rate:.2%} above {max_mismatch_rate:.2%} ({named})"
    return True, f"mismatch rate {rate:.2%} within {max_mismatch_rate:.2%} of {requests} request(s)" + (
        f" ({named})" if named else ""
    )


def field_path_problems(paths: Iterable[Any]) -> list[str]:
    """The field paths that are not paths, each with why (for the spec's refusal)."""
    problems = []
    for path in paths:
        try:
            parse_field_path(path)
        except CompareError as exc:
            problems.append(str(exc))
    return problems
