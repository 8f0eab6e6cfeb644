"""A parallel run before a blue-green switch and before a canary's first step, on the shared lab
(conftest.py ``shared_lab``): orders (blue-green) and payments (canary), with ``parallel_run`` and
a gate added to their inventory, under the independent load generator through both load balancers
(HAProxy ``retries 0``, no redispatch).

Each LB's frontend copies its users' GETs to its berth-mirror, which replays them to two instances
of the live colour (the stable track) and one of the new colour (the canary). The sample service's ``GET /`` answers carry the
instance - noise, which the two trusted instances never agree on - its pid and the version, both
ignored by the rules (every lab machine has its own PID namespace: two instances may well have the
same pid, so the pid is not noise the trusted pair always show); v6 answers exactly like v1, v2
has another greeting.

The tests run in order on one estate: each one says the state it starts from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import pytest
import yaml

from tests.integration import test_rollout_canary as canary
from tests.integration.test_rollout import RolloutLab, assert_no_request_lost
from tests.integration.test_rollout_blue_green import SERVICE, served, text

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, nspawn)"),
]

GATE = {"min_requests": 400, "max_mismatch_rate": 0.01, "max_seconds": 120}


@pytest.fixture(scope="module")
def lab(shared_lab: RolloutLab) -> RolloutLab:
    """The shared lab seen through an inventory whose orders is in parallel run, with orders v1 live."""
    raw = yaml.safe_load(shared_lab.spec.read_text())
    orders = raw["environment"]["services"][SERVICE]
    orders["parallel_run"] = {"compare": {"ignore_fields": ["version", "pid"]}}
    orders["strategy"]["blue_green"]["parallel_run"] = GATE
    payments = raw["environment"]["services"][canary.SERVICE]
    payments["parallel_run"] = {"compare": {"ignore_fields": ["version", "pid"]}}
    payments["strategy"]["canary"]["parallel_run"] = GATE
    spec = shared_lab.workdir / "parallel.berth.yml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    if set(served(shared_lab).values()) != {"v1"}:  # on its own, this module starts from nothing
        first = shared_lab.deploy("-e", f"service={SERVICE}", "-e", "version=v1", "-e", "replace_warm=true")
        assert first.returncode == 0, first.output[-6000:]
    if canary.stable_versions(shared_lab) != {"v1"}:
        first = shared_lab.deploy("-e", f"service={canary.SERVICE}", "-e", "version=v1")
        assert first.returncode == 0, first.output[-6000:]
    return dataclasses.replace(shared_lab, spec=spec)


def deploy(lab: RolloutLab, version: str) -> tuple[Any, dict[str, Any]]:
    """orders to ``version`` under load (onto the colour kept warm, if one is)."""
    return lab.deploy_under_load(
        f"parallel-{version}",
        "-e",
        f"service={SERVICE}",
        "-e",
        f"version={version}",
        "-e",
        "replace_warm=true",
        service=SERVICE,
    )


def verdict(lab: RolloutLab, service: str = SERVICE) -> dict[str, Any]:
    path = lab.workdir / "state" / lab.environment / "rollouts" / f"{service}.parallel.json"
    return dict(json.loads(path.read_text()))


def journal_and_report(lab: RolloutLab, found: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The verdict as the rollout journal of the candidate colour's rollout and its report keep it
    (the same summary in both; the page shows it); and the page."""
    rollouts = lab.workdir / "state" / lab.environment / "rollouts"
    journal = json.loads((rollouts / f"{SERVICE}.json").read_text())
    entry = journal["parallel_run"]
    assert (entry["run_id"], entry["passed"], entry["reason"]) == (
        found["run_id"],
        found["passed"],
        found["reason"],
    )
    assert entry["rollout_run"] == journal["run"]["id"] and entry["target"] == journal["target"]
    report = json.loads((rollouts / f"{SERVICE}.report.json").read_text())
    assert report["run"] == journal["run"]["id"] and report["parallel_run"] == entry
    page = (rollouts / f"{SERVICE}.report.html").read_text()
    assert f"Parallel run {found['run_id']}: {'passed' if found['passed'] else 'refused'}" in page
    return entry, page


def test_a_parallel_run_that_would_decide_nothing_is_refused_before_anything_is_touched(
    lab: RolloutLab,
) -> None:
    raw = yaml.safe_load(lab.spec.read_text())
    services = raw["environment"]["services"]
    services["catalog"]["parallel_run"] = {}  # catalog rolls: nothing to copy requests to
    del services[SERVICE]["strategy"]["blue_green"]["parallel_run"]  # orders: a parallel run, no gate
    spec = lab.workdir / "parallel-refused.berth.yml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    refused = dataclasses.replace(lab, spec=spec)
    for service, message in (
        ("catalog", "environment.services.catalog.parallel_run: a rolling deploy has no candidate to copy"),
        (SERVICE, "expected a gate in environment.services.orders.strategy.blue_green.parallel_run"),
    ):
        run = refused.deploy("-e", f"service={service}", "-e", "version=v6")
        assert run.returncode != 0 and message in text(run), text(run)[-2000:]
        assert "changed=0" in run.output and not re.search("changed=[1-9]", run.output)
    assert set(served(lab).values()) == {"v1"}


def test_a_release_that_differs_only_in_noise_passes_the_gate_and_goes_live_under_load(
    lab: RolloutLab, lab_metrics: Any
) -> None:
    assert set(served(lab).values()) == {"v1"}
    run, report = deploy(lab, "v6")
    assert run.returncode == 0, run.output[-6000:]
    assert_no_request_lost(report)
    found = verdict(lab)
    assert found["passed"] and found["target"] == "v6", found["reason"]
    tally = found["tally"]
    assert tally["requests"] >= GATE["min_requests"] and tally["mismatches"] == 0
    # every answer's instance differs between the trusted pair: noise, and only noise
    assert tally["endpoints"]["GET /"]["noisy"] == tally["endpoints"]["GET /"]["requests"]
    assert all(lb["requests"] > 0 for lb in found["lbs"].values()), found["lbs"]  # each LB its own users'
    assert f"parallel run: mismatch rate 0.00% within 1.00% of {tally['requests']} request(s)" in text(run)
    assert "is judged, in seconds at most 120" in text(run)  # the gate's own max_seconds
    assert set(served(lab).values()) == {"v6"}
    entry, page = journal_and_report(lab, found)
    assert entry["requests"] == tally["requests"] and "GET /" in page
    lab_metrics.add(
        f"parallel run v1 -> v6 (blue-green, gate {GATE['min_requests']} requests): {run.seconds} s in all, "
        f"{tally['requests']} compared, 0 mismatches, {tally['dropped'] + tally['haproxy_dropped']} dropped; "
        f"users {report['short']['sent']} + {report['long']['sent']} requests, 0 failed, "
        f"p99 {report['short']['latency_ms'].get('p99')} ms"
    )


def test_a_release_that_answers_one_endpoint_differently_is_refused_before_any_user_reaches_it(
    lab: RolloutLab,
) -> None:
    assert set(served(lab).values()) == {"v6"}
    run, report = deploy(lab, "v2")
    assert run.returncode != 0, run.output[-6000:]
    said = text(run)
    assert "the gate refuses the release" in said and "GET /: " in said, said[-3000:]
    assert "no user request reached" in said
    assert_no_request_lost(report)
    assert set(served(lab).values()) == {"v6"}
    assert report["answers"].get("v2", {"ok": 0})["ok"] == 0, "no user got an answer of v2"
    found = verdict(lab)
    assert not found["passed"] and found["tally"]["endpoints"]["GET /"]["mismatch_rate"] == 1.0
    sample = found["tally"]["samples"][0]
    assert sample["differences"] == ["$.greeting"], sample
    entry, page = journal_and_report(lab, found)
    assert entry["samples"][0]["differences"] == ["$.greeting"] and "$.greeting" in page


def test_a_canary_whose_answers_differ_is_aborted_before_its_first_step(lab: RolloutLab) -> None:
    assert canary.stable_versions(lab) == {"v1"}
    run, report = lab.deploy_under_load(
        "parallel-canary-v2", "-e", f"service={canary.SERVICE}", "-e", "version=v2", service=canary.SERVICE
    )
    assert run.returncode != 0, run.output[-6000:]
    said = text(run)
    assert "ABORTED" in said and "parallel run: mismatch rate 100.00% above 1.00% (GET /: " in said, said[
        -3000:
    ]
    assert "(no user request reached it)" in said
    assert_no_request_lost(report)
    assert report["answers"].get("v2", {"ok": 0})["ok"] == 0, "no user got an answer of the canary"
    assert canary.stable_versions(lab) == {"v1"} and canary.record(lab)["status"] == "aborted"
    canary.assert_retired(lab)
    assert not verdict(lab, canary.SERVICE)["passed"]
