# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How a service's new version reaches its users: ``environment.services.<name>.strategy``.

``rolling`` (the default): the instances are upgraded in place, batch by batch, within
``max_unavailable``. ``blue_green``: the service has two colours of as many instances each, placed
by the same rules on nodes of their own; a deploy installs the new version on the colour that takes
no user traffic, checks it through the load balancers' preview port, switches every load balancer
to it in one step and keeps the other colour warm for ``scale_down_delay`` seconds (docs/strategies.md).

Written as the plain word ``rolling`` or as a mapping with exactly one key, the strategy's name,
holding its settings::

    strategy:
      blue_green:
        preview_port: 18090
        smoke: [{path: /health, status: 200}]
        analysis: {window: 10, interval: 1, max_error_rate: 0.01, min_requests: 20, inconclusive_limit: 2}
        scale_down_delay: 300
        retire: stop
"""

from __future__ import annotations

import re
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.model.reader import Reader, describe
from ansible_collections.berth.fleet.plugins.module_utils.model.topology import (
    ROLLING,
    Analysis,
    BlueGreen,
    HealthCheck,
    SmokeCheck,
    Strategy,
    dotted,
)

STRATEGIES = ("rolling", "blue_green")
URL_PATH_RE = re.compile(r"^/\S*$")
RETIRE = ("stop", "keep")
MAX_PORT = 65535


def parse_strategy(reader: Reader, raw: Any, key: str, health: HealthCheck) -> Strategy:
    """The strategy at ``key`` (absent: rolling); ``health`` is the service's, the default smoke check."""
    if raw is None or raw == "rolling":
        return ROLLING
    if isinstance(raw, str):
        reader.choice(raw, key, STRATEGIES)
        raise reader.fail(
            key, f"the {raw} strategy needs its settings: expected a mapping such as {{{raw}: {{...}}}}"
        )
    body = reader.mapping(raw, key)
    if len(body) != 1:
        raise reader.fail(
            key,
            "expected rolling, or a mapping with exactly one key - the strategy's name "
            f"({', '.join(STRATEGIES)}) - holding its settings, got {describe(dict(body))}",
        )
    ((kind, settings),) = body.items()
    reader.choice(kind, key, STRATEGIES)
    inner = dotted(key, kind)
    if kind == "rolling":
        if settings not in (None, {}):
            raise reader.fail(inner, "has no settings (max_unavailable is the service's own key)")
        return ROLLING
    return Strategy("blue_green", _blue_green(reader, settings, inner, health))


def _blue_green(reader: Reader, raw: Any, key: str, health: HealthCheck) -> BlueGreen:
    body = reader.mapping(raw, key)
    reader.keys(body, key, ("preview_port",), ("smoke", "analysis", "scale_down_delay", "retire"))
    smoke_raw = body.get("smoke", [{"path": health.path, "status": health.status}])
    if not isinstance(smoke_raw, list) or not smoke_raw:
        raise reader.fail(
            dotted(key, "smoke"),
            f"expected a list of at least one {{path, status}}, got {describe(smoke_raw)}",
        )
    smoke = []
    for index, check in enumerate(smoke_raw):
        check_key = f"{dotted(key, 'smoke')}[{index}]"
        entry = reader.mapping(check, check_key)
        reader.keys(entry, check_key, ("path",), ("status",))
        smoke.append(
            SmokeCheck(
                path=reader.string(
                    entry["path"], dotted(check_key, "path"), URL_PATH_RE, "a URL path such as /health"
                ),
                status=reader.integer(entry.get("status", 200), dotted(check_key, "status"), 100, 599),
            )
        )
    return BlueGreen(
        preview_port=reader.integer(body["preview_port"], dotted(key, "preview_port"), 1, MAX_PORT),
        smoke=tuple(smoke),
        analysis=_analysis(reader, body["analysis"], dotted(key, "analysis")) if "analysis" in body else None,
        scale_down_delay=reader.integer(
            body.get("scale_down_delay", 300), dotted(key, "scale_down_delay"), 0
        ),
        retire=reader.choice(body.get("retire", "stop"), dotted(key, "retire"), RETIRE),
    )


def _analysis(reader: Reader, raw: Any, key: str) -> Analysis:
    body = reader.mapping(raw, key)
    reader.keys(body, key, ("window", "max_error_rate", "min_requests"), ("interval", "inconclusive_limit"))
    window = _seconds(reader, body["window"], dotted(key, "window"), 1.0)
    interval = _seconds(reader, body.get("interval", 1), dotted(key, "interval"), 0.1)
    if interval > window:
        raise reader.fail(
            dotted(key, "interval"), f"expected at most the window ({window:g} s), got {interval:g}"
        )
    return Analysis(
        window=window,
        interval=interval,
        max_error_rate=_rate(reader, body["max_error_rate"], dotted(key, "max_error_rate")),
        min_requests=reader.integer(body["min_requests"], dotted(key, "min_requests"), 1),
        inconclusive_limit=reader.integer(
            body.get("inconclusive_limit", 2), dotted(key, "inconclusive_limit"), 0, 100
        ),
    )


def _seconds(reader: Reader, raw: Any, key: str, minimum: float) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < minimum or raw > 86400:
        raise reader.fail(key, f"expected seconds between {minimum:g} and 86400, got {describe(raw)}")
    return float(raw)


def _rate(reader: Reader, raw: Any, key: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 <= raw <= 1:
        raise reader.fail(key, f"expected a rate from 0 to 1 (0.01 is 1 %), got {describe(raw)}")
    return float(raw)
