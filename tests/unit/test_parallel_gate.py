"""A parallel run across the load balancers (planner/parallel.py, berth.fleet.parallel_gate): who
each LB's mirror compares, and the verdict on what they all found."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.berth.fleet.plugins.filter.mirror import parallel_results, parallel_targets
from ansible_collections.berth.fleet.plugins.module_utils.common.failure import ModuleFailure
from ansible_collections.berth.fleet.plugins.module_utils.planner import journal as rollout_journal
from ansible_collections.berth.fleet.plugins.module_utils.planner.parallel import ParallelError, plan_targets
from ansible_collections.berth.fleet.plugins.module_utils.planner.timeline import build_report
from ansible_collections.berth.fleet.plugins.modules import parallel_gate
from ansible_collections.berth.fleet.plugins.plugin_utils.rollout_sampler import amend_report, report_paths

RECORDED = Path(__file__).resolve().parents[1] / "data" / "rollout-report"


def test_each_lb_compares_two_different_trusted_instances_and_the_lbs_spread_over_the_candidates() -> None:
    plan = plan_targets(["lb-dc2", "lb-dc1"], ["t1:80", "t2:80", "t3:80"], ["c1:80", "c2:80"])
    assert plan == {
        "lb-dc1": {"primary": "t1:80", "secondary": "t2:80", "candidate": "c1:80"},
        "lb-dc2": {"primary": "t2:80", "secondary": "t3:80", "candidate": "c2:80"},
    }
    alone = plan_targets(["lb"], ["t1:80"], ["c1:80"])["lb"]
    assert alone["primary"] == alone["secondary"] == "t1:80", "one trusted instance: its own noise only"
    for lbs, trusted, candidates, message in (
        ([], ["t"], ["c"], "at least one load balancer"),
        (["lb"], [], ["c"], "a trusted instance"),
        (["lb"], ["t"], [], "a candidate"),
    ):
        with pytest.raises(ParallelError, match=message):
            plan_targets(lbs, trusted, candidates)


def results(requests: int, mismatches: int, endpoint: str = "GET /items/{id}") -> dict[str, Any]:
    return {
        "requests": requests,
        "mismatches": mismatches,
        "candidate": "c1:80",
        "endpoints": {endpoint: {"requests": requests, "mismatches": mismatches, "noisy": requests}},
        "samples": [],
        "dropped": 1,
        "haproxy_dropped": 2,
    }


def gate(tmp_path: Path, per_lb: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    params = {
        "service": "orders",
        "state_dir": str(tmp_path),
        "run_id": "orders-v2-1",
        "target": "v2",
        "results": per_lb,
        "min_requests": 100,
        "max_mismatch_rate": 0.01,
        **overrides,
    }
    return parallel_gate.run(params, check_mode=False)


def test_the_gate_passes_on_every_lb_together_and_records_the_verdict(tmp_path: Path) -> None:
    outcome = gate(tmp_path, {"lb-dc1": results(60, 0), "lb-dc2": results(50, 1)})
    verdict = outcome["verdict"]
    assert verdict["passed"] and verdict["tally"]["requests"] == 110 and verdict["tally"]["mismatches"] == 1
    assert verdict["lbs"]["lb-dc1"] == {"requests": 60, "mismatches": 0, "dropped": 3, "candidate": "c1:80"}
    record = json.loads((tmp_path / "rollouts" / "orders.parallel.json").read_text())
    assert (record["run_id"], record["target"], record["passed"]) == ("orders-v2-1", "v2", True)


def test_the_gate_refuses_too_many_mismatches_naming_the_endpoint_and_too_few_requests(
    tmp_path: Path,
) -> None:
    with pytest.raises(ModuleFailure, match=r"GET /orders/\{id\}: 5 of 60.*the gate refuses") as refused:
        gate(tmp_path, {"lb-dc1": results(60, 5, "GET /orders/{id}"), "lb-dc2": results(50, 0)})
    assert not refused.value.fields["verdict"]["passed"]
    with pytest.raises(ModuleFailure, match=r"40 request\(s\) compared, fewer than the 100") as few:
        gate(tmp_path, {"lb-dc1": results(40, 0), "lb-dc2": {}})
    assert few.value.fields["verdict"]["lbs"]["lb-dc2"]["missing"]


def test_bad_gate_settings_and_check_mode_judge_nothing(tmp_path: Path) -> None:
    with pytest.raises(ModuleFailure, match="max_mismatch_rate: expected a share from 0 to 1"):
        gate(tmp_path, {"lb": results(200, 0)}, max_mismatch_rate=1.5)
    params = {"service": "o", "state_dir": str(tmp_path), "run_id": "r", "target": "v2", "results": {}}
    skipped = parallel_gate.run({**params, "min_requests": 1, "max_mismatch_rate": 0.1}, check_mode=True)
    assert skipped["skipped"] and not (tmp_path / "rollouts").exists()


def test_the_filters_give_each_lb_its_addresses_and_collect_what_each_found() -> None:
    hostvars = {
        "orders-1": {"ansible_host": "10.70.1.20", "berth_port": 8090},
        "orders-2": {"ansible_host": "10.70.2.20", "berth_port": 8090},
        "orders-3": {"ansible_host": "10.70.1.21", "berth_port": 8090},
        "lb-dc1": {"rollout_parallel": {"found": {"requests": 3}}},
        "lb-dc2": {"rollout_parallel": {"skipped": True}},
    }
    plan = parallel_targets(["lb-dc1", "lb-dc2"], hostvars, ["orders-2", "orders-1"], ["orders-3"])
    assert plan["lb-dc1"] == {
        "primary": "10.70.1.20:8090",
        "secondary": "10.70.2.20:8090",
        "candidate": "10.70.1.21:8090",
    }
    assert plan["lb-dc2"]["primary"] == "10.70.2.20:8090"
    assert parallel_results(hostvars, ["lb-dc1", "lb-dc2"], "rollout_parallel") == {
        "lb-dc1": {"requests": 3},
        "lb-dc2": {},
    }
    with pytest.raises(AnsibleFilterError, match="parallel_targets: a parallel run needs a candidate"):
        parallel_targets(["lb-dc1"], hostvars, ["orders-1"], [])


def sampled(endpoint: str) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "request": "GET /orders/7",
        "differences": ["$.total: 12 != 13"],
        "primary": {"status": 200, "headers": {"authorization": "(redacted)"}, "body": '{"total": 12}'},
        "candidate": {"status": 200, "headers": {}, "body": '{"total": 13}'},
    }


def test_the_verdict_goes_into_the_journal_of_the_rollout_it_judged_and_its_report(tmp_path: Path) -> None:
    # no rollout recorded: nothing to attach the verdict to (the record file still has it)
    alone = gate(tmp_path, {"lb-dc1": results(150, 0)})
    assert alone["journal"] == {} and (tmp_path / "rollouts" / "orders.parallel.json").exists()

    path = rollout_journal.journal_path(str(tmp_path), "orders")
    earlier = {"service": "orders", "target": "v1", "status": "complete", "run": {"id": 1}}
    rollout_journal.save(path, earlier)  # the rollout of v1 (a canary of v2 has none of its own)
    assert gate(tmp_path, {"lb-dc1": results(150, 0)})["journal"] == {}
    assert rollout_journal.load(path) == earlier
    rollout_journal.save(path, {"service": "orders", "target": "v2", "status": "complete", "run": {"id": 2}})
    bad = results(60, 5, "GET /orders/{id}")
    bad["samples"] = [sampled("GET /orders/{id}")]
    with pytest.raises(ModuleFailure) as refused:
        gate(tmp_path, {"lb-dc1": bad, "lb-dc2": results(50, 0)})
    entry = refused.value.fields["journal"]
    journal = rollout_journal.load(path)
    assert journal["parallel_run"] == entry and journal["status"] == "complete"  # nothing else changed
    assert (entry["rollout_run"], entry["run_id"], entry["target"], entry["passed"]) == (
        2,
        "orders-v2-1",
        "v2",
        False,
    )
    assert (entry["requests"], entry["mismatches"], entry["dropped"]) == (110, 5, 6)
    assert (
        entry["endpoints"]["GET /orders/{id}"]["mismatches"] == 5
        and entry["samples"][0]["request"] == "GET /orders/7"
    )
    assert "GET /orders/{id}: 5 of 60" in entry["reason"]

    # the report of that run gets the section and its page again; another run's report is left alone
    data, page = report_paths(str(tmp_path), "orders")
    data.write_text(json.dumps({"run": 1, "target": "v2", "service": "orders"}))
    assert amend_report(str(tmp_path), "orders", 2, "v2", "parallel_run", entry) == ""
    data.write_text(json.dumps({"run": 2, "target": "v1", "service": "orders"}))  # another rollout's run 2
    assert amend_report(str(tmp_path), "orders", 2, "v2", "parallel_run", entry) == ""
    assert "parallel_run" not in json.loads(data.read_text()) and not page.exists()
    recorded = json.loads((RECORDED / "journal.json").read_text())
    samples = json.loads((RECORDED / "samples.json").read_text())

    report = build_report({**recorded, "run": {**recorded["run"], "id": 2}}, samples, 0.25)
    data.write_text(json.dumps(report))
    assert amend_report(str(tmp_path), "orders", 2, "v2", "parallel_run", entry) == str(page)
    assert json.loads(data.read_text())["parallel_run"] == entry
    text = page.read_text()
    assert "Parallel run orders-v2-1: refused" in text and "GET /orders/{id}" in text
    assert "$.total: 12 != 13" in text and "candidate 200 {&quot;total&quot;: 13}" in text
    # a report made once the verdict is in the journal (a rerun's) shows it as well
    assert build_report({**recorded, "parallel_run": entry}, samples, 0.25)["parallel_run"] == entry
