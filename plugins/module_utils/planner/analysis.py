# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The verdict of an analysis window, from a backend's own counters on every load balancer.

A sample is what every load balancer has counted for the backend so far (HTTP requests, 5xx
answers - HAProxy's own 503s included), summed. A verdict compares the last sample with the first:

* ``fail`` as soon as the window holds at least ``min_requests`` requests and more than
  ``max_error_rate`` of them failed (so a bad release is switched back on its first evidence, not at
  the end of the window);
* ``pass`` only at the end of the window, with at least ``min_requests`` requests and an error rate
  within the limit;
* ``inconclusive`` otherwise: too few requests for a verdict. No data, or too little, is never a
  pass (the false passes users report against progressive-delivery tools come from exactly that).

Counters are cumulative since HAProxy started: a load balancer whose count went down was restarted,
and what it counted since then is its part.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


@dataclass(frozen=True)
class Counts:
    requests: int
    errors: int


@dataclass(frozen=True)
class Verdict:
    status: str
    requests: int
    errors: int
    reason: str

    @property
    def rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.rate, 4),
            "reason": self.reason,
        }


def grown(first: Mapping[str, Counts], last: Mapping[str, Counts]) -> Counts:
    """What every load balancer counted between two reads (a restarted one: since its restart)."""
    requests = errors = 0
    for lb, now in last.items():
        before = first.get(lb, Counts(0, 0))
        restarted = now.requests < before.requests or now.errors < before.errors
        requests += now.requests if restarted else now.requests - before.requests
        errors += now.errors if restarted else now.errors - before.errors
    return Counts(requests, errors)


def judge(seen: Counts, max_error_rate: float, min_requests: int, window_over: bool) -> Verdict:
    rate = seen.errors / seen.requests if seen.requests else 0.0
    summary = (
        f"{seen.errors} of {seen.requests} requests failed ({rate:.2%}; at most {max_error_rate:.2%} allowed)"
    )
    if seen.requests >= min_requests and rate > max_error_rate:
        return Verdict(FAIL, seen.requests, seen.errors, summary)
    if seen.requests < min_requests:
        return Verdict(
            INCONCLUSIVE,
            seen.requests,
            seen.errors,
            f"{seen.requests} requests, fewer than the {min_requests} a verdict needs",
        )
    if window_over:
        return Verdict(PASS, seen.requests, seen.errors, summary)
    return Verdict(INCONCLUSIVE, seen.requests, seen.errors, f"the window is not over yet: {summary}")
