"""Canary releases of the lab's payments (strategy canary: 2 stable instances, a canary and a fresh
baseline; steps 10 %, analysis, 30 %, analysis), proven under load on the shared lab (conftest.py
``shared_lab``).

The independent load generator (tools/loadgen.py, inside the lab namespace) sends 200 short
requests/s plus 4 requests/s of 5 s requests through both load balancers (HAProxy ``retries 0``,
no redispatch) and counts every answer by the version that gave it: the canary's share and its
failures are seen from what users got, not from Berth's own report.

The tests run in order on one estate: each one says the state it starts from.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest

from tests.integration.lab import ROLLBACK
from tests.integration.test_rollout import RolloutLab, assert_no_request_lost

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, nspawn)"),
]

SERVICE = "payments"
CANARY, BASELINE = "payments-3", "payments-4"


@pytest.fixture
def lab(shared_lab: RolloutLab) -> RolloutLab:
    return shared_lab


def record(lab: RolloutLab) -> dict[str, Any]:
    path = lab.workdir / "state" / lab.environment / "rollouts" / f"{SERVICE}.canary.json"
    return dict(json.loads(path.read_text()))


def text(run: Any) -> str:
    return " ".join(run.output.split())


def stable_versions(lab: RolloutLab) -> set[str]:
    return {v for host, v in lab.versions(SERVICE).items() if host not in (CANARY, BASELINE)}


def active(lab: RolloutLab, host: str) -> str:
    state = lab.ssh.run(lab.hostvars[host]["ansible_host"], f"systemctl is-active berth-{host}.service")
    return state.stdout.strip()


def weights(lab: RolloutLab) -> dict[str, dict[str, int]]:
    """Each LB's runtime weight of every payments server (show servers state)."""
    found = {}
    for lb in lab.lbs:
        answer = lab.ssh.run(
            lab.hostvars[lb]["ansible_host"],
            "python3 -c \"import socket; s = socket.socket(socket.AF_UNIX); s.connect('/run/haproxy/admin.sock'); "
            "s.sendall(b'show servers state be_payments\\n'); print(s.makefile().read())\"",
        )
        assert answer.returncode == 0, answer.stderr
        rows = [line.split() for line in answer.stdout.splitlines()[2:] if line.strip()]
        found[lb] = {row[3]: int(row[7]) for row in rows}
    return found


def assert_retired(lab: RolloutLab) -> None:
    """The canary and its baseline stopped and at weight 0 on every LB; the stable at weight 1."""
    assert active(lab, CANARY) == active(lab, BASELINE) == "inactive"
    for lb, seen in weights(lab).items():
        assert seen == {"payments-1": 1, "payments-2": 1, CANARY: 0, BASELINE: 0}, lb


def test_first_deploy_then_a_good_canary_is_promoted_under_load(lab: RolloutLab, lab_metrics: Any) -> None:
    first = lab.deploy("-e", f"service={SERVICE}", "-e", "version=v1")
    assert first.returncode == 0, first.output[-6000:]
    assert "a first deploy: nothing runs yet that a canary could be compared with" in text(first)
    assert stable_versions(lab) == {"v1"}

    run, report = lab.deploy_under_load(
        "canary-v2", "-e", f"service={SERVICE}", "-e", "version=v2", service=SERVICE
    )
    assert run.returncode == 0, run.output[-8000:]
    assert f"start v2 (a canary of v2 beside v1): {CANARY} runs it and {BASELINE} a fresh v1" in text(run)
    assert "the canary at 10 % on every load balancer" in text(run)
    assert "the canary at 30 % on every load balancer" in text(run)
    assert text(run).count("analysis, ") == 2 and "pass - 3 of 3 measurement(s) passed" in text(run)
    assert_no_request_lost(report)
    answers = report["answers"]
    assert answers["v2"]["ok"] > 0 and answers["v1"]["ok"] > 0, answers  # both served during the steps
    assert stable_versions(lab) == {"v2"}
    assert record(lab)["status"] == "promoted"
    assert_retired(lab)
    history = record(lab)["history"]
    lab_metrics.add(
        f"canary v1 -> v2 promoted under load: {run.seconds} s, {report['short']['sent']} + "
        f"{report['long']['sent']} requests, 0 failed; v2 answered {answers['v2']['ok']} before and after "
        f"the promotion; steps {[(h['kind'], h['seconds']) for h in history]}"
    )

    again = lab.deploy("-e", f"service={SERVICE}", "-e", "version=v2")
    assert again.returncode == 0, again.output[-4000:]
    assert "every stable instance runs v2: a repair in place" in text(again)
    assert not re.search(r"changed=[1-9]", again.output), again.output[-3000:]

    # --check --diff of a canary of v3: says what it would start, changes nothing
    looked = lab.deploy("-e", f"service={SERVICE}", "-e", "version=v3", "--check", "--diff")
    assert looked.returncode == 0, looked.output[-6000:]
    assert f"start v3 (a canary of v3 beside v2): {CANARY} runs it" in text(looked)
    assert record(lab)["status"] == "promoted" and stable_versions(lab) == {"v2"}
    assert_retired(lab)


def test_a_canary_failing_one_request_in_ten_is_aborted_at_once(lab: RolloutLab, lab_metrics: Any) -> None:
    assert stable_versions(lab) == {"v2"}  # the previous test promoted v2
    run, report = lab.deploy_under_load(
        "canary-v4", "-e", f"service={SERVICE}", "-e", "version=v4", service=SERVICE
    )
    assert run.returncode != 0
    assert "ABORTED: the canary of payments v4 was aborted: step 2 (analysis) failed" in text(run)
    reason = r"failed: error_rate 0\.\d+ > 0\.02; .*\(canary \d+ of \d+ failed, baseline 0 of \d+\)"
    assert re.search(reason, text(run)), record(lab)["reason"]
    answers = report["answers"]
    # only the canary failed requests: every other answer, and every connection, was fine
    assert report["short"]["errors"] == report["long"]["errors"] == 0
    assert all(counted["failed"] == 0 for version, counted in answers.items() if version != "v4"), answers
    failed = report["short"]["non_2xx"] + report["long"]["non_2xx"]
    assert failed == answers["v4"]["failed"] > 0
    # what the users met is what the weight and the exposure allow: 10 % share x 10 % errors x rate
    history = record(lab)["history"]
    weighted = next(h for h in history if h["kind"] == "weight")
    judged = next(h for h in history if h["kind"] == "analysis")
    exposure = judged["at"] - weighted["at"]
    allowed = 0.10 * 0.10 * report["short_rate"] * exposure * 1.5 + 5
    assert failed <= allowed, (failed, allowed, exposure)
    assert record(lab)["status"] == "aborted" and record(lab)["reason"].startswith("step 2 (analysis) failed")
    assert stable_versions(lab) == {"v2"}
    assert_retired(lab)
    lab_metrics.add(
        f"canary v4 (10 % errors) aborted by its analysis: exposed {exposure:.1f} s at 10 %, {failed} failed "
        f"requests of {report['short']['sent']} (the weight and the exposure allow {allowed:.0f}); "
        f"v4 answered {answers['v4']['ok'] + answers['v4']['failed']}"
    )


def test_a_canary_no_request_reaches_pauses_and_is_never_promoted(lab: RolloutLab) -> None:
    assert stable_versions(lab) == {"v2"}
    paused = lab.deploy("-e", f"service={SERVICE}", "-e", "version=v1")  # no load: no request at all
    assert paused.returncode != 0
    assert "PAUSED: the canary of payments v1 is paused at 10 %: step 2 (analysis) inconclusive" in text(
        paused
    )
    assert "the canary had 0 request(s), fewer than the 15 a verdict needs" in text(paused)
    assert "no data is never a pass" in text(paused)
    assert record(lab)["status"] == "paused" and stable_versions(lab) == {"v2"}

    other = lab.deploy("-e", f"service={SERVICE}", "-e", "version=v3")
    assert other.returncode != 0 and "a deploy of v3 has to wait" in text(other)
    plain = lab.deploy("-e", f"service={SERVICE}")
    assert plain.returncode != 0 and "say what to do with -e action=resume" in text(plain)

    resumed = lab.deploy("-e", f"service={SERVICE}", "-e", "action=resume")
    assert resumed.returncode != 0
    assert "inconclusive again after a resume, a failure" in text(resumed)
    assert record(lab)["status"] == "aborted" and stable_versions(lab) == {"v2"}
    assert_retired(lab)


def test_an_operator_promotes_a_paused_canary_and_a_rollback_aborts_one(lab: RolloutLab) -> None:
    assert stable_versions(lab) == {"v2"}
    paused = lab.deploy("-e", f"service={SERVICE}", "-e", "version=v1")
    assert paused.returncode != 0 and record(lab)["status"] == "paused"
    run, report = lab.deploy_under_load(
        "canary-promote", "-e", f"service={SERVICE}", "-e", "action=promote", service=SERVICE
    )
    assert run.returncode == 0, run.output[-6000:]
    assert "promote v1 (promoted by the operator)" in text(run)
    assert_no_request_lost(report)
    assert stable_versions(lab) == {"v1"} and record(lab)["status"] == "promoted"
    assert_retired(lab)

    paused = lab.deploy("-e", f"service={SERVICE}", "-e", "version=v2")
    assert paused.returncode != 0 and record(lab)["status"] == "paused"
    back = lab.deploy("-e", f"service={SERVICE}", playbook=ROLLBACK)
    assert back.returncode == 0, back.output[-6000:]
    assert "abort v2 (rolled back: the canary retires)" in text(back)
    assert record(lab)["status"] == "aborted" and stable_versions(lab) == {"v1"}
    assert_retired(lab)


def test_canary_commands_are_refused_where_they_mean_nothing(lab: RolloutLab) -> None:
    nothing = lab.deploy("-e", f"service={SERVICE}", "-e", "action=promote")
    assert nothing.returncode != 0
    assert "action=promote: no canary of this service is in progress" in text(nothing)
    rolling = lab.deploy("-e", "service=catalog", "-e", "action=abort")
    assert rolling.returncode != 0
    assert "resume, promote and abort are for a canary service; nothing was changed" in text(rolling)
    assert stable_versions(lab) == {"v1"}
