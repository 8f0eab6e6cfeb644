"""Blue-green deploys of the lab's orders (strategy blue_green: two colours of 4 instances, spread
over both DCs), proven under load on the shared lab (conftest.py ``shared_lab``).

The independent load generator (tools/loadgen.py, inside the lab namespace) sends 200 short
requests/s plus 4 requests/s of 5 s requests through both load balancers (HAProxy ``retries 0``,
no redispatch) and records, per load balancer, when the version that answered changed: the
switch is seen from the answers users get, not from Berth's own report of it.

The tests run in order on one estate: each one says the state it starts from.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest

from tests.integration.lab import ROLLBACK, ROOT
from tests.integration.test_rollout import RolloutLab, assert_no_request_lost

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, nspawn)"),
]

SERVICE = "orders"
SWITCH = ROOT / "playbooks" / "switch.yml"
ROUTES = "/etc/haproxy/berth-routes/orders.map"


@pytest.fixture
def lab(shared_lab: RolloutLab) -> RolloutLab:
    return shared_lab


def colours(lab: RolloutLab) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for host in lab.instances(SERVICE):
        found.setdefault(lab.hostvars[host]["berth_colour"], []).append(host)
    return found


def served(lab: RolloutLab) -> dict[str, str]:
    """The version each load balancer's users get now."""
    port = lab.hostvars[lab.instances(SERVICE)[0]]["berth_port"]
    return {
        lb: lab.get(f"http://{lab.hostvars[lb]['ansible_host']}:{port}/").get("version", "") for lb in lab.lbs
    }


def map_files(lab: RolloutLab) -> dict[str, str]:
    found = {}
    for lb in lab.lbs:
        answer = lab.ssh.run(lab.hostvars[lb]["ansible_host"], f"cat {ROUTES}")
        assert answer.returncode == 0, answer.stderr
        found[lb] = re.findall(r"^live (\S+)$", answer.stdout, re.M)[0]
    return found


def record(lab: RolloutLab) -> dict[str, Any]:
    path = lab.workdir / "state" / lab.environment / "rollouts" / f"{SERVICE}.colours.json"
    return dict(json.loads(path.read_text()))


def switches_seen(report: dict[str, Any]) -> dict[str, list[list[Any]]]:
    """Per load balancer, the moments the version its users got changed: [[t, version], ...]."""
    return dict(report["versions"])


def text(run: Any) -> str:
    return " ".join(run.output.split())


def test_first_deploy_then_v2_switches_every_lb_at_once_under_load(lab: RolloutLab, lab_metrics: Any) -> None:
    first = lab.deploy("-e", f"service={SERVICE}", "-e", "version=v1")
    assert first.returncode == 0, first.output[-6000:]
    # nothing was live: the first colour's empty map; v1 goes to the other colour, no analysis
    assert "blue is live on every load balancer (nothing deployed); v1 goes to green" in text(first)
    assert "a first deploy: no analysis, nothing to go back to" in text(first)
    assert set(served(lab).values()) == {"v1"} and set(map_files(lab).values()) == {"be_orders_green"}
    green = colours(lab)["green"]
    assert {lab.hostvars[h]["berth_dc"] for h in green} == {"dc1", "dc2"}  # the colour is spread

    run, report = lab.deploy_under_load(
        "bg-v2", "-e", f"service={SERVICE}", "-e", "version=v2", service=SERVICE
    )
    assert run.returncode == 0, run.output[-6000:]
    assert "v2 goes to blue (now nothing), then every LB switches to it" in text(run)
    assert "analysis passed" in text(run)
    assert_no_request_lost(report)
    seen = switches_seen(report)
    assert sorted(seen) == sorted(f"{lab.hostvars[lb]['ansible_host']}:8090" for lb in lab.lbs)
    for changes in seen.values():  # v1 until the switch, then only v2: no answer from v1 afterwards
        assert [version for _t, version in changes] == ["v1", "v2"], changes
    moments = [changes[1][0] for changes in seen.values()]
    # the LBs switched in one step: their users' first v2 answers within a fraction of a second
    assert max(moments) - min(moments) < 0.5, seen
    switch = record(lab)["switches"][-1]
    assert (switch["from"], switch["to"], switch["to_version"], switch["reason"]) == (
        "green",
        "blue",
        "v2",
        "deploy",
    )
    assert switch["disagreed_for"] < 0.1
    lab_metrics.add(
        f"blue-green v1 -> v2 under load: {run.seconds} s, {report['short']['sent']} + {report['long']['sent']} "
        f"requests, 0 failed; LBs committed {switch['disagreed_for'] * 1000:.1f} ms apart, users' first v2 "
        f"{(max(moments) - min(moments)) * 1000:.0f} ms apart"
    )

    # a reload of HAProxy reads the map file again: the switch stays
    for lb in lab.lbs:
        reloaded = lab.ssh.run(lab.hostvars[lb]["ansible_host"], "systemctl reload haproxy")
        assert reloaded.returncode == 0, reloaded.stderr
    assert set(served(lab).values()) == {"v2"} and set(map_files(lab).values()) == {"be_orders_blue"}

    # --check --diff of a deploy to the other colour: says what would switch, changes nothing
    looked = lab.deploy("-e", f"service={SERVICE}", "-e", "version=v1", "--check", "--diff")
    assert looked.returncode == 0, looked.output[-6000:]
    assert "v1 goes to green (now v1), the warm way back: a switch back" in text(looked)
    # the maps after, in the diff (YAML or JSON, as the callback's result_format says)
    assert re.search(r'^\+\s*"?live"?: "?be_orders_green', looked.output, re.M), looked.output[-4000:]
    assert set(served(lab).values()) == {"v2"} and set(map_files(lab).values()) == {"be_orders_blue"}
    assert record(lab)["switches"][-1]["to_version"] == "v2"

    again = lab.deploy("-e", f"service={SERVICE}", "-e", "version=v2")
    assert again.returncode == 0, again.output[-4000:]
    assert "it runs v2 already: repair it in place, no switch" in text(again)
    assert not re.search(r"changed=[1-9]", again.output), again.output[-3000:]


def test_rollback_switches_back_to_the_warm_colour_under_load(lab: RolloutLab, lab_metrics: Any) -> None:
    assert set(served(lab).values()) == {"v2"}  # the previous test left blue (v2) live, green (v1) warm
    run, report = lab.deploy_under_load(
        "bg-back", "-e", f"service={SERVICE}", playbook=ROLLBACK, service=SERVICE
    )
    assert run.returncode == 0, run.output[-6000:]
    assert "v1 goes to green (now v1), the warm way back: a switch back" in text(run)
    assert "nothing to do, every instance runs it and is in rotation" in text(run)  # no install, no restart
    assert_no_request_lost(report)
    assert all([v for _t, v in changes] == ["v2", "v1"] for changes in switches_seen(report).values())
    switch = record(lab)["switches"][-1]
    assert (switch["to"], switch["to_version"], switch["reason"]) == ("green", "v1", "rollback")
    assert set(served(lab).values()) == {"v1"}
    lab_metrics.add(
        f"blue-green switch back (rollback.yml) under load: {run.seconds} s for the command, the switch "
        f"{switch['disagreed_for'] * 1000:.1f} ms apart across the LBs, 0 failed"
    )


def test_a_release_that_fails_its_smoke_checks_never_reaches_a_user(lab: RolloutLab) -> None:
    assert set(served(lab).values()) == {"v1"}  # green (v1) live, blue (v2) warm
    refused = lab.deploy("-e", f"service={SERVICE}", "-e", "version=v5")
    assert refused.returncode != 0
    assert "blue still runs v2, kept warm until" in text(refused)
    assert "say -e replace_warm=true to deploy onto it anyway; nothing was changed" in text(refused)

    run, report = lab.deploy_under_load(
        "bg-smoke", "-e", f"service={SERVICE}", "-e", "version=v5", "-e", "replace_warm=true", service=SERVICE
    )
    assert run.returncode != 0
    assert "orders stays on green: blue did not pass its smoke checks through the preview port" in text(run)
    assert "failed /: Status code was 500" in text(run)
    for kind in ("short", "long"):  # no user request failed ...
        assert report[kind]["non_2xx"] == report[kind]["errors"] == 0, report[kind]["failure_samples"]
    # ... the only 5xx either LB counted is its own smoke check's, through the preview port
    assert [c["hrsp_5xx"] for c in report["counters"].values()] == [1] * len(lab.lbs), report["counters"]
    assert all([v for _t, v in changes] == ["v1"] for changes in switches_seen(report).values())
    assert set(map_files(lab).values()) == {"be_orders_green"}


def test_a_release_that_fails_its_analysis_is_switched_back_at_once(
    lab: RolloutLab, lab_metrics: Any
) -> None:
    assert set(served(lab).values()) == {"v1"}  # green (v1) live, blue (v5, not warm) idle
    run, report = lab.deploy_under_load(
        "bg-analysis", "-e", f"service={SERVICE}", "-e", "version=v4", service=SERVICE
    )
    assert run.returncode != 0
    assert "orders v4 on blue failed its post-switch analysis" in text(run)
    assert "every load balancer is back on green (v1)" in text(run)
    seen = switches_seen(report)
    exposure = 0.0
    for changes in seen.values():  # v1, v4 while exposed, then v1 again for good
        assert [v for _t, v in changes] == ["v1", "v4", "v1"], changes
        exposure = max(exposure, changes[2][0] - changes[1][0])
    assert exposure < 3.0, seen
    failed = sum(report[kind]["non_2xx"] + report[kind]["errors"] for kind in ("short", "long"))
    # v4 fails one request in ten: at 200 req/s, what the users met is what the exposure allows
    allowed = 0.1 * report["short_rate"] * exposure * 1.5 + 5
    assert 0 < failed <= allowed, (failed, allowed, report["short"]["failure_samples"])
    assert set(served(lab).values()) == {"v1"} and set(map_files(lab).values()) == {"be_orders_green"}
    assert record(lab)["switches"][-1]["reason"].startswith("analysis: ")
    lab_metrics.add(
        f"blue-green v4 (10 % errors) switched back by its analysis: exposed {exposure:.2f} s, "
        f"{failed} failed requests of {report['short']['sent']} (allowed by the exposure: {allowed:.0f})"
    )


def test_a_colour_past_its_warm_time_retires_on_the_next_run_that_stays_live(lab: RolloutLab) -> None:
    # the previous test switched back from v4: the colour it left (blue) is warm for 0 s
    assert set(served(lab).values()) == {"v1"} and record(lab)["warm"] == "blue"
    run, report = lab.deploy_under_load(
        "bg-retire", "-e", f"service={SERVICE}", "-e", "version=v1", service=SERVICE
    )
    assert run.returncode == 0, run.output[-6000:]
    assert "the warm time of blue is over: it retires now" in text(run)
    assert_no_request_lost(report)
    blue = colours(lab)["blue"]
    for host in blue:
        state = lab.ssh.run(lab.hostvars[host]["ansible_host"], f"systemctl is-active berth-{host}.service")
        assert state.stdout.strip() == "inactive", (host, state.stdout)
    assert record(lab)["retired"] == "blue"  # once: the next run finds nothing to retire (unit-tested)


def test_switch_by_hand_refuses_a_colour_with_nothing_in_rotation(lab: RolloutLab) -> None:
    assert record(lab)["retired"] == "blue"  # the previous test retired blue: nothing of it serves
    run = lab.deploy("-e", f"service={SERVICE}", "-e", "colour=blue", playbook=SWITCH)
    assert run.returncode != 0
    assert "nothing was switched: be_orders_blue has no server in rotation on" in text(run)
    assert set(served(lab).values()) == {"v1"}
    same = lab.deploy("-e", f"service={SERVICE}", "-e", "colour=green", playbook=SWITCH)
    assert same.returncode == 0 and "already sent users to green" in text(same)
    bad = lab.deploy("-e", f"service={SERVICE}", "-e", "colour=purple", playbook=SWITCH)
    assert bad.returncode != 0 and "colour: expected one of blue, green, got purple" in text(bad)
