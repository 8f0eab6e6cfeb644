# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Health gate: an instance is healthy after `rise` consecutive passing checks and then
`min_healthy_time` seconds without a failure, within a deadline. It fails fast: `fall` consecutive
definite failures (the instance answers, with the wrong HTTP status) fail the gate at once; the
deadline is for an instance that does not answer yet (still starting). Stdlib only (runs on the node)."""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field

from ansible.module_utils.urls import open_url


class HealthGateError(Exception):
    """The instance did not become healthy in time; says what the last check saw."""


@dataclass(frozen=True)
class GatePolicy:
    url: str
    expect_status: int = 200
    rise: int = 3
    interval: float = 0.25
    min_healthy_time: float = 2.0
    timeout: float = 60.0
    request_timeout: float = 1.0
    fall: int = 3  # 0: never fail before the deadline

    def validate(self) -> None:
        problems = []
        if not self.url.startswith(("http://", "https://")):
            problems.append(f"url must be http(s)://..., got {self.url!r}")
        if not 100 <= self.expect_status <= 599:
            problems.append(f"expect_status must be an HTTP status, got {self.expect_status}")
        if self.rise < 1:
            problems.append(f"rise must be >= 1, got {self.rise}")
        if not 0 < self.interval <= 5:
            problems.append(f"interval must be > 0 and <= 5 s, got {self.interval}")
        if self.min_healthy_time < 0:
            problems.append(f"min_healthy_time must be >= 0, got {self.min_healthy_time}")
        if self.fall < 0:
            problems.append(f"fall must be >= 0, got {self.fall}")
        if self.timeout <= 0:
            problems.append(f"timeout must be > 0, got {self.timeout}")
        if problems:
            raise HealthGateError("; ".join(problems))


@dataclass
class GateOutcome:
    checks: int = 0
    failures: int = 0
    last: str = "no check yet"
    risen_after: float | None = None
    waited: float = 0.0
    history: list[str] = field(default_factory=list)


def http_probe(url: str, timeout: float) -> tuple[int | None, str]:
    """(status, description); status None when no HTTP answer came back."""
    try:
        with open_url(url, timeout=timeout, follow_redirects="none", use_proxy=False) as response:
            return int(response.status), f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"no answer ({reason})"


def wait_healthy(
    policy: GatePolicy,
    probe: Callable[[str, float], tuple[int | None, str]] = http_probe,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> GateOutcome:
    policy.validate()
    outcome = GateOutcome()
    start = clock()
    consecutive = 0
    wrong_answers = 0  # in a row: the instance answers, and says it is not healthy
    healthy_since: float | None = None
    while True:
        status, description = probe(policy.url, policy.request_timeout)
        now = clock()
        outcome.checks += 1
        outcome.last = description
        if status == policy.expect_status:
            wrong_answers = 0
            consecutive += 1
            if consecutive >= policy.rise and healthy_since is None:
                healthy_since = now
                outcome.risen_after = round(now - start, 3)
            if healthy_since is not None and now - healthy_since >= policy.min_healthy_time:
                outcome.waited = round(now - start, 3)
                return outcome
        else:
            if healthy_since is not None or consecutive:
                outcome.history.append(
                    f"{round(now - start, 2)} s: {description} after {consecutive} passing"
                )
            outcome.failures += 1
            consecutive = 0
            healthy_since = None
            wrong_answers = wrong_answers + 1 if status is not None else 0
            if policy.fall and wrong_answers >= policy.fall:
                raise HealthGateError(
                    f"{policy.url} answers {description} (expected HTTP {policy.expect_status}) "
                    f"{wrong_answers} times in a row after {round(now - start, 2)} s: the release is "
                    f"unhealthy, not starting (fall {policy.fall}; {outcome.checks} checks)"
                )
        if now - start >= policy.timeout:
            raise HealthGateError(
                f"{policy.url} not healthy within {policy.timeout} s: last check {outcome.last} "
                f"(expected HTTP {policy.expect_status}; {outcome.checks} checks, {outcome.failures} failed; "
                f"needs {policy.rise} passing in a row, then {policy.min_healthy_time} s without a failure)"
            )
        sleep(policy.interval)
