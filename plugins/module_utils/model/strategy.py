# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How a service's new version reaches its users: ``environment.services.<name>.strategy``.

``rolling`` (the default): the instances are upgraded in place, batch by batch, within
``max_unavailable``. ``blue_green``: the service has two colours of as many instances each, placed
by the same rules on nodes of their own; a deploy installs the new version on the colour that takes
no user traffic, checks it through the load balancers' preview port, switches every load balancer
to it in one step and keeps the other colour warm for ``scale_down_delay`` seconds (docs/strategies.md).
``canary``: beside the service's instances, one canary of the new version and a fresh baseline of
the current one take a growing share of the requests (HAProxy weights on every LB), step by step,
judged by analysis steps; the last step promotes (the rest roll, batch by batch).

Written as the plain word ``rolling`` or as a mapping with exactly one key, the strategy's name,
holding its settings::

    strategy:
      blue_green:
        preview_port: 18090
        smoke: [{path: /health, status: 200}]
        analysis: {window: 10, interval: 1, max_error_rate: 0.01, min_requests: 20, inconclusive_limit: 2}
        scale_down_delay: 300
        retire: stop

    strategy:
      canary:
        baseline: true
        analysis:                  # what an {analysis: {}} step runs (a step may override keys)
          interval: 2
          count: 3
          min_requests: 20
          failure_limit: 0
          inconclusive_limit: 0
          metrics: [{metric: error_rate, pass: 0.01, fail: 0.05}]
        steps: [{weight: 10}, {analysis: {}}, {weight: 30}, {pause: 10}, {analysis: {}}]
"""

from __future__ import annotations

import re
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.model.parallel import parse_gate
from ansible_collections.berth.fleet.plugins.module_utils.model.reader import Reader, describe
from ansible_collections.berth.fleet.plugins.module_utils.model.topology import (
    CANARY_METRICS,
    ROLLING,
    Analysis,
    BlueGreen,
    Canary,
    CanaryAnalysis,
    CanaryMetric,
    CanaryStep,
    HealthCheck,
    ParallelGate,
    SmokeCheck,
    Strategy,
    dotted,
)

STRATEGIES = ("rolling", "blue_green", "canary")
STEP_KINDS = ("weight", "pause", "analysis")
UNTIL_RESUMED = "until_resumed"
# with a baseline beside it at the same weight, the canary's share stays below half: the stable
# instances keep the rest (100 is the promotion, the last step)
MAX_WEIGHT_WITH_BASELINE = 49
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
    if kind == "canary":
        return Strategy("canary", canary=_canary(reader, settings, inner))
    return Strategy("blue_green", _blue_green(reader, settings, inner, health))


def _blue_green(reader: Reader, raw: Any, key: str, health: HealthCheck) -> BlueGreen:
    body = reader.mapping(raw, key)
    reader.keys(
        body, key, ("preview_port",), ("smoke", "analysis", "scale_down_delay", "retire", "parallel_run")
    )
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
        gate=_gate(reader, body, key),
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


def _canary(reader: Reader, raw: Any, key: str) -> Canary:
    body = reader.mapping(raw, key)
    reader.keys(body, key, ("steps",), ("baseline", "analysis", "parallel_run"))
    baseline = reader.boolean(body.get("baseline", True), dotted(key, "baseline"))
    default = body.get("analysis")
    if default is not None:
        reader.mapping(default, dotted(key, "analysis"))
    steps_key = dotted(key, "steps")
    raw_steps = body["steps"]
    if not isinstance(raw_steps, list) or not raw_steps:
        raise reader.fail(
            steps_key,
            "expected a list of steps such as [{weight: 10}, {analysis: {}}, {weight: 50}], "
            f"got {describe(raw_steps)}",
        )
    steps: list[CanaryStep] = []
    for index, raw_step in enumerate(raw_steps):
        step_key = f"{steps_key}[{index}]"
        step = reader.mapping(raw_step, step_key)
        if len(step) != 1 or next(iter(step)) not in STEP_KINDS:
            raise reader.fail(
                step_key,
                f"expected a mapping with one key, {', '.join(STEP_KINDS)}, got {describe(dict(step))}",
            )
        ((kind, value),) = step.items()
        steps.append(_step(reader, kind, value, dotted(step_key, kind), default, key, baseline))
    _check_weights(reader, steps, steps_key, baseline)
    return Canary(steps=tuple(steps), baseline=baseline, gate=_gate(reader, body, key))


def _gate(reader: Reader, body: Any, key: str) -> ParallelGate | None:
    """The parallel run a release waits for (``parallel.py``); whether the service has one is the
    spec's check (``spec.py``)."""
    raw = body.get("parallel_run")
    return parse_gate(reader, raw, dotted(key, "parallel_run")) if raw is not None else None


def _step(
    reader: Reader, kind: str, value: Any, key: str, default: Any, canary_key: str, baseline: bool
) -> CanaryStep:
    if kind == "weight":
        return CanaryStep("weight", weight=reader.integer(value, key, 1, 100))
    if kind == "pause":
        if value == UNTIL_RESUMED:
            return CanaryStep("pause", pause=None)
        if isinstance(value, str):
            raise reader.fail(key, f"expected seconds or {UNTIL_RESUMED}, got {describe(value)}")
        return CanaryStep("pause", pause=_seconds(reader, value, key, 0.1))
    overrides = reader.mapping(value if value is not None else {}, key)
    merged = {**dict(default or {}), **dict(overrides)}
    where = key if "metrics" in overrides or default is None else dotted(canary_key, "analysis")
    return CanaryStep("analysis", analysis=_canary_analysis(reader, merged, key, where, baseline))


def _canary_analysis(
    reader: Reader, body: dict[str, Any], key: str, where: str, baseline: bool
) -> CanaryAnalysis:
    allowed = ("interval", "count", "min_requests", "failure_limit", "inconclusive_limit", "metrics")
    reader.keys(body, key, (), allowed)
    metrics_raw = body.get("metrics")
    if not isinstance(metrics_raw, list) or not metrics_raw:
        raise reader.fail(
            dotted(where, "metrics"),
            "an analysis needs at least one metric (in the step, or in the canary's analysis), "
            f"such as [{{metric: error_rate, pass: 0.01, fail: 0.05}}], got {describe(metrics_raw)}",
        )
    count = reader.integer(body.get("count", 3), dotted(key, "count"), 1, 1000)
    failure_limit = reader.integer(body.get("failure_limit", 0), dotted(key, "failure_limit"), 0, 1000)
    inconclusive_limit = reader.integer(
        body.get("inconclusive_limit", 0), dotted(key, "inconclusive_limit"), 0, 1000
    )
    if failure_limit + inconclusive_limit >= count:
        raise reader.fail(
            dotted(key, "count"),
            f"expected more than failure_limit + inconclusive_limit ({failure_limit} + "
            f"{inconclusive_limit}) measurements, got {count}: an analysis with no passing "
            "measurement would pass",
        )
    metrics = tuple(
        _metric(reader, raw, f"{dotted(where, 'metrics')}[{index}]", baseline)
        for index, raw in enumerate(metrics_raw)
    )
    return CanaryAnalysis(
        interval=_seconds(reader, body.get("interval", 2), dotted(key, "interval"), 0.1),
        count=count,
        min_requests=reader.integer(body.get("min_requests", 20), dotted(key, "min_requests"), 1),
        failure_limit=failure_limit,
        inconclusive_limit=inconclusive_limit,
        metrics=metrics,
    )


def _metric(reader: Reader, raw: Any, key: str, baseline: bool) -> CanaryMetric:
    body = reader.mapping(raw, key)
    reader.keys(body, key, ("metric", "fail"), ("pass",))
    name = reader.choice(body["metric"], dotted(key, "metric"), CANARY_METRICS)
    if name.endswith("_vs_baseline") and not baseline:
        raise reader.fail(dotted(key, "metric"), f"{name} compares with the baseline, and baseline is false")
    number = _rate if name.startswith("error_rate") else _positive
    fail_above = number(reader, body["fail"], dotted(key, "fail"))
    pass_at = number(reader, body.get("pass", fail_above), dotted(key, "pass"))
    if pass_at > fail_above:
        raise reader.fail(
            dotted(key, "pass"),
            f"expected at most fail ({fail_above:g}): a value passes at or below pass, fails above fail, "
            f"and is inconclusive in between; got {pass_at:g}",
        )
    return CanaryMetric(metric=name, pass_at=pass_at, fail_above=fail_above)


def _check_weights(reader: Reader, steps: list[CanaryStep], key: str, baseline: bool) -> None:
    last = 0
    for index, step in enumerate(steps):
        where = f"{key}[{index}]"
        if step.kind == "analysis" and last == 0:
            raise reader.fail(
                where, "an analysis before the first weight step would judge a canary no request reaches"
            )
        if step.kind != "weight":
            continue
        if step.weight <= last:
            raise reader.fail(
                dotted(where, "weight"),
                f"expected weights that increase: more than {last}, got {step.weight}",
            )
        if step.weight == 100 and index != len(steps) - 1:
            raise reader.fail(
                dotted(where, "weight"), "100 promotes the canary: it can only be the last step"
            )
        if baseline and MAX_WEIGHT_WITH_BASELINE < step.weight < 100:
            raise reader.fail(
                dotted(where, "weight"),
                f"expected at most {MAX_WEIGHT_WITH_BASELINE} (the baseline takes as much as the canary, "
                f"the stable instances the rest) or 100 (the promotion), got {step.weight}; "
                "baseline: false allows up to 99",
            )
        last = step.weight


def _positive(reader: Reader, raw: Any, key: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        raise reader.fail(key, f"expected a number above 0, got {describe(raw)}")
    return float(raw)
