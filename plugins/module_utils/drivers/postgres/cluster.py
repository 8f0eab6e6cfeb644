# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What Patroni says of a cluster (``GET /cluster`` of any member's REST API), and waiting until it
is whole: one leader, every other member a replica that streams from it within the lag limit.
Berth never decides a role itself: it only reads what Patroni decided.
"""

from __future__ import annotations

import json
import time
import urllib.error
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.urls import open_url

Fetch = Callable[[str, float], Any]


class ClusterError(Exception):
    """A cluster that did not become whole in time (says what it saw last)."""


def fetch_json(url: str, timeout: float) -> Any:
    answer = open_url(url, timeout=timeout, use_proxy=False)
    try:
        return json.loads(answer.read().decode())
    finally:
        answer.close()


@dataclass
class ClusterView:
    leader: str = ""
    members: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""  # the API that answered
    problems: list[str] = field(default_factory=list)

    @property
    def replicas(self) -> list[str]:
        return sorted(m["name"] for m in self.members if m.get("role") != "leader")

    @property
    def sync_standby(self) -> str:
        return next((m["name"] for m in self.members if m.get("role") == "sync_standby"), "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "leader": self.leader,
            "replicas": self.replicas,
            "sync_standby": self.sync_standby,
            "members": self.members,
            "source": self.source,
            "problems": self.problems,
        }


def _lag(member: dict[str, Any]) -> int | None:
    lag = member.get("lag")
    if isinstance(lag, int):
        return lag
    return None  # "unknown" while it has not streamed yet


def read_cluster(
    apis: Sequence[str], expected: Sequence[str], max_lag: int, fetch: Fetch = fetch_json, timeout: float = 3
) -> ClusterView:
    """The cluster as the first answering member's API sees it, with what keeps it from whole."""
    last_error = ""
    for api in apis:
        try:
            body = fetch(f"{api.rstrip('/')}/cluster", timeout)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last_error = f"{api}: {exc}"
            continue
        members = [
            {
                "name": m.get("name", ""),
                "role": m.get("role", ""),
                "state": m.get("state", ""),
                "lag": m.get("lag"),
                "timeline": m.get("timeline"),
                "host": m.get("host", ""),
            }
            for m in body.get("members", [])
        ]
        view = ClusterView(members=members, source=api)
        leaders = [m for m in members if m["role"] == "leader"]
        if len(leaders) == 1 and leaders[0]["state"] == "running":
            view.leader = leaders[0]["name"]
        else:
            view.problems.append(
                f"no running leader (members: {[(m['name'], m['role'], m['state']) for m in members]})"
            )
        seen = {m["name"]: m for m in members}
        for name in expected:
            member = seen.get(name)
            if member is None:
                view.problems.append(f"{name} is not in the cluster yet")
            elif member["role"] != "leader":
                lag = _lag(member)
                if member["state"] not in ("running", "streaming"):
                    view.problems.append(f"{name} is {member['state'] or 'in no state'}")
                elif lag is None or lag > max_lag:
                    view.problems.append(f"{name} lags {member['lag']} (at most {max_lag} bytes)")
        return view
    return ClusterView(problems=[f"no member's REST API answered (last: {last_error})"])


def wait_whole(
    apis: Sequence[str],
    expected: Sequence[str],
    max_lag: int,
    deadline_s: float,
    fetch: Fetch = fetch_json,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    interval_s: float = 1.0,
) -> tuple[ClusterView, float]:
    """Poll until the cluster is whole; the view and the seconds it took. Raises ClusterError."""
    start = clock()
    while True:
        view = read_cluster(apis, expected, max_lag, fetch)
        if not view.problems:
            return view, round(clock() - start, 2)
        if clock() - start >= deadline_s:
            raise ClusterError(f"not whole after {deadline_s:g} s: {'; '.join(view.problems)}")
        sleep(interval_s)
