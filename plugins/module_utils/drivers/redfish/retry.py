# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""When a request to a BMC is tried again, and how long to wait before it.

Retries, with exponential backoff: an answer that never came (connection refused, reset, timed
out) and HTTP 5xx or 429 are retried for GET and PATCH, which are idempotent. A POST (an action) is
retried only when the BMC cannot have carried it out: connection refused, 429 or 503.
``Retry-After`` is honoured, up to ``MAX_RETRY_AFTER`` seconds. 400, 401, 403, 404 and the other
4xx are never retried.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_RETRY_AFTER = 60.0
# a POST answered with these was not carried out, so sending it again cannot act twice
_POST_NOT_PROCESSED = (429, 503)


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
