"""Blue-green planning (planner/bluegreen.py), the colours record, and the analysis verdicts
(planner/analysis.py, modules/lb_analysis.py over a scripted counter source)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.common.failure import ModuleFailure
from ansible_collections.berth.fleet.plugins.module_utils.planner.analysis import Counts, grown, judge
from ansible_collections.berth.fleet.plugins.module_utils.planner.bluegreen import (
    BlueGreenError,
    plan_colours,
    previous_version,
    read_record,
    record_retired,
    record_switch,
)
from ansible_collections.berth.fleet.plugins.modules import lb_analysis

COLOURS = {
    "blue": {"backend": "be_orders_blue", "group": "colour_orders_blue"},
    "green": {"backend": "be_orders_green", "group": "colour_orders_green"},
}
BLUE_LIVE = {"live": "be_orders_blue", "preview": "be_orders_green"}
GREEN_LIVE = {"live": "be_orders_green", "preview": "be_orders_blue"}


def members(version: str, up: bool = True, count: int = 2) -> list[dict[str, Any]]:
    return [
        {"name": f"x-{i}", "dc": f"dc{i}", "ordinal": i, "version": version, "up": up} for i in range(count)
    ]


def plan(maps: dict[str, dict[str, str]], blue: str, green: str, target: str, record=None, **kw: Any):
    return plan_colours(
        COLOURS,
        {"blue": members(blue), "green": members(green)},
        maps,
        record or {"switches": []},
        target,
        kw.pop("replace_warm", False),
        now=kw.pop("now", 1000.0),
    )


def test_a_deploy_goes_to_the_idle_colour_and_swaps_the_routes() -> None:
    found = plan({"lb-1": BLUE_LIVE, "lb-2": BLUE_LIVE}, "v1", "", "v2")
    assert (found.live, found.idle, found.live_version, found.idle_version) == ("blue", "green", "v1", "")
    assert found.routes_now == BLUE_LIVE and found.routes_after == GREEN_LIVE and not found.in_place
    # the first deploy of an empty estate: the first colour is live (the LB's first map), nothing on it
    first = plan({"lb-1": BLUE_LIVE}, "", "", "v1")
    assert (first.idle, first.in_place) == ("green", False)


def test_the_live_version_again_repairs_in_place() -> None:
    assert plan({"lb-1": GREEN_LIVE}, "v1", "v2", "v2").in_place
    mixed = plan_colours(
        COLOURS,
        {"blue": members("v1"), "green": members("v2") + members("")},
        {"lb": GREEN_LIVE},
        {},
        "v2",
        False,
    )
    assert mixed.in_place  # a lost instance (nothing installed) is repaired on the live colour


def test_lbs_that_disagree_or_route_elsewhere_are_refused() -> None:
    with pytest.raises(BlueGreenError, match=r"disagree on the live colour \(lb-1: blue, lb-2: green\)"):
        plan({"lb-1": BLUE_LIVE, "lb-2": GREEN_LIVE}, "v1", "v2", "v3")
    with pytest.raises(BlueGreenError, match="routes users to be_catalog, not to a colour"):
        plan({"lb-1": {"live": "be_catalog"}}, "v1", "v2", "v3")
    with pytest.raises(BlueGreenError, match="no load balancer reported"):
        plan({}, "v1", "v2", "v3")


def test_the_warm_colour_is_kept_for_the_way_back(tmp_path: Path) -> None:
    record = record_switch(
        str(tmp_path),
        "orders",
        {"from": "blue", "to": "green", "from_version": "v1", "to_version": "v2"},
        300,
        now=1000.0,
    )
    assert read_record(str(tmp_path), "orders") == record and record["warm_until"] == 1300.0
    assert previous_version(record) == "v1"
    maps = {"lb-1": GREEN_LIVE}
    with pytest.raises(BlueGreenError, match=r"blue still runs v1, kept warm until .* \(200 s from now\)"):
        plan(maps, "v1", "v2", "v3", record, now=1100.0)
    back = plan(maps, "v1", "v2", "v1", record, now=1100.0)  # the switch back itself
    assert back.warm and back.idle == "blue" and back.routes_after == BLUE_LIVE
    assert plan(maps, "v1", "v2", "v3", record, now=1100.0, replace_warm=True).idle == "blue"
    assert not plan(maps, "v1", "v2", "v3", record, now=1400.0).warm  # the delay is over


def test_nothing_to_roll_back_to_before_a_switch(tmp_path: Path) -> None:
    with pytest.raises(BlueGreenError, match="nothing to roll back to"):
        previous_version(read_record(str(tmp_path), "orders"))
    (tmp_path / "rollouts").mkdir()
    (tmp_path / "rollouts" / "orders.colours.json").write_text("[1]")
    with pytest.raises(BlueGreenError, match="not a colours record"):
        read_record(str(tmp_path), "orders")


def test_verdicts_never_pass_on_too_little_data() -> None:
    assert judge(Counts(0, 0), 0.01, 20, window_over=True).status == "inconclusive"
    assert judge(Counts(19, 0), 0.01, 20, window_over=True).status == "inconclusive"
    assert judge(Counts(20, 0), 0.01, 20, window_over=False).status == "inconclusive"
    assert judge(Counts(200, 2), 0.01, 20, window_over=True).status == "pass"
    failed = judge(Counts(100, 10), 0.01, 20, window_over=False)  # fails before the window ends
    assert failed.status == "fail" and "10 of 100 requests failed (10.00%" in failed.reason
    # a restarted LB counts from its restart
    assert grown(
        {"a": Counts(100, 5), "b": Counts(50, 0)}, {"a": Counts(130, 5), "b": Counts(10, 1)}
    ) == Counts(40, 1)


class Counters:
    """show servers state / show stat answers of one backend whose counters grow per read."""

    def __init__(self, per_read: tuple[int, int]) -> None:
        self.per_read = per_read
        self.requests = self.errors = 0

    def __call__(self, command: str) -> str:
        if command.startswith("show servers state"):
            return (
                "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
                "srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health "
                "srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord "
                "srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n"
                "3 be_orders_green 1 orders-5 10.0.0.5 2 0 1 1 10 6 3 4 6 0 0 0 - 8090 - 0 0 - - 0\n"
            )
        self.requests += self.per_read[0]
        self.errors += self.per_read[1]
        header = "# pxname,svname,status,req_tot,hrsp_5xx,\n"
        return (
            header
            + f"be_orders_green,orders-5,UP,{self.requests},{self.errors},\nbe_orders_green,BACKEND,UP,{self.requests},{self.errors},\n"
        )


def analyse(per_read: tuple[int, int], **params: Any) -> dict[str, Any]:
    clock = [0.0]
    base = {
        "backend": "be_orders_green",
        "window": 3,
        "interval": 1,
        "max_error_rate": 0.01,
        "min_requests": 20,
        "inconclusive_limit": 1,
    }
    base.update(params)
    return lb_analysis.analyse(
        {"lb-1": Counters(per_read), "lb-2": Counters(per_read)},
        base,
        clock=lambda: clock[0],
        sleep=lambda seconds: clock.__setitem__(0, clock[0] + seconds),
    )


def test_the_analysis_passes_fails_fast_and_calls_no_traffic_inconclusive() -> None:
    good = analyse((10, 0))
    assert good["verdict"]["status"] == "pass" and good["windows"] == 1 and good["seconds"] == 3.0
    with pytest.raises(ModuleFailure) as bad:
        analyse((10, 2))
    assert bad.value.fields["verdict"]["status"] == "fail" and bad.value.fields["seconds"] == 1.0
    with pytest.raises(ModuleFailure) as idle:
        analyse((0, 0))
    assert idle.value.fields["verdict"]["status"] == "inconclusive" and idle.value.fields["windows"] == 2
    assert "no data is never a pass" in str(idle.value)


def test_a_warm_colour_is_retired_once_its_delay_is_over_by_a_run_that_stays_live(tmp_path: Path) -> None:
    state = str(tmp_path)
    record = record_switch(
        state,
        "orders",
        {"from": "blue", "to": "green", "from_version": "v1", "to_version": "v2"},
        300,
        now=1000.0,
    )
    maps = {"lb-1": GREEN_LIVE}
    assert plan(maps, "v1", "v2", "v2", record, now=1200.0).retire == ""  # still warm
    due = plan(maps, "v1", "v2", "v2", record, now=1400.0)  # a reconcile after the delay
    assert due.in_place and due.retire == "blue"
    assert plan(maps, "v1", "v2", "v3", record, now=1400.0).retire == ""  # a deploy replaces it instead
    kept = plan_colours(
        COLOURS,
        {"blue": members("v1"), "green": members("v2")},
        maps,
        record,
        "v2",
        False,
        now=1400.0,
        retire="keep",
    )
    assert kept.retire == ""
    retired = record_retired(state, "orders", "blue", now=1401.0)
    assert (retired["retired"], retired["warm"]) == ("blue", "")
    assert plan(maps, "v1", "v2", "v2", retired, now=1500.0).retire == ""  # once
    again = record_switch(
        state,
        "orders",
        {"from": "green", "to": "blue", "from_version": "v2", "to_version": "v3"},
        300,
        now=2000.0,
    )
    assert again["retired"] == "" and again["warm"] == "green"
