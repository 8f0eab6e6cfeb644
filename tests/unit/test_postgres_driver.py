"""The database cluster driver (drivers/postgres, issue 14): Patroni's and etcd's configuration of
a member from the inventory's view of it, the checks of the vault's passwords, and reading
Patroni's view of a cluster (a fake REST API here; the lab test runs the real one)."""

from __future__ import annotations

from typing import Any

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.drivers.postgres import cluster, config
from ansible_collections.berth.fleet.plugins.module_utils.model.inventory import (
    build_inventory,
    load_placement,
)
from tests.unit.test_database_spec import with_databases

PASSWORDS = {
    "postgres": "p" * 16,
    "replicator": "r" * 16,
    "rewind": "w" * 16,
    "patroni_api": "a" * 16,
    "owners": {"orders": "o" * 16, "catalog_items": "c" * 16},
}


def member(host: str) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    data = build_inventory(load_placement(with_databases(), "test.berth.yml"))
    host_vars = data.hosts[host]
    return (
        {"name": host, "address": host_vars["berth_address"]},
        host_vars.get("berth_member_spec", {}),
        data.group_vars["all"]["berth_dcs_members"],
    )


def test_patroni_config_has_the_cluster_wide_settings_in_bootstrap_and_pg_hba_from_the_placement() -> None:
    me, spec, dcs = member("orders-db-2")
    conf = config.patroni_config(me, spec, dcs, "test", PASSWORDS)
    assert (conf["scope"], conf["name"], conf["namespace"]) == ("orders-db", "orders-db-2", "/berth/test/")
    assert conf["etcd3"]["hosts"] == [f"{m['address']}:2379" for m in dcs]
    boot = conf["bootstrap"]["dcs"]
    assert (boot["ttl"], boot["loop_wait"], boot["retry_timeout"]) == (20, 5, 5)
    assert boot["synchronous_mode"] is True and boot["synchronous_node_count"] == 1  # 3 members
    assert boot["postgresql"]["use_slots"] and boot["postgresql"]["use_pg_rewind"]
    assert boot["postgresql"]["parameters"]["max_replication_slots"] >= 3
    pg = conf["postgresql"]
    assert (
        pg["connect_address"] == f"{me['address']}:5432"
        and pg["data_dir"] == "/var/lib/postgresql/15/orders-db"
    )
    assert pg["pg_hba"] == spec["access"]["hba"] and pg["pg_hba"]
    assert pg["authentication"]["replication"] == {"username": "replicator", "password": "r" * 16}
    assert conf["restapi"]["connect_address"] == f"{me['address']}:8008"


def test_a_cluster_of_fewer_than_three_members_does_not_promise_synchronous_replication() -> None:
    me, spec, dcs = member("shared-db-1")  # 2 members
    conf = config.patroni_config(me, spec, dcs, "test", PASSWORDS)
    assert conf["bootstrap"]["dcs"]["synchronous_mode"] is False
    assert "synchronous_node_count" not in conf["bootstrap"]["dcs"]


def test_missing_or_weak_passwords_are_named_by_key_and_never_shown() -> None:
    me, spec, dcs = member("orders-db-1")
    bad = {**PASSWORDS, "rewind": "", "owners": {"orders": "short"}, "postgres": "x'" * 8}
    problems = config.password_problems(bad, ["orders"])
    assert problems == [
        "berth_db_passwords.postgres: expected no newline, NUL, quote or backslash (it goes into connection strings)",
        "berth_db_passwords.rewind: expected a password (a non-empty string)",
        "berth_db_passwords.owners.orders: expected at least 12 characters",
    ]
    assert "short" not in " ".join(problems)
    with pytest.raises(config.ConfigError, match=r"berth_db_passwords\.rewind"):
        config.patroni_config(me, spec, dcs, "test", bad)
    assert config.password_problems(None, []) and config.password_problems(PASSWORDS, ["orders"]) == []


def test_patroni_timing_that_could_lose_the_leader_key_while_retrying_is_refused() -> None:
    config.check_timing(20, 5, 5)
    with pytest.raises(config.ConfigError, match="must not exceed ttl"):
        config.check_timing(10, 5, 5)


def test_etcd_advertises_the_members_lab_address_and_starts_a_new_cluster_of_every_member() -> None:
    dcs = member("dcs-1")[2]
    text = config.etcd_environment({"name": "dcs-2"}, dcs, "test")
    values = dict(line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))
    me = dcs[1]
    assert values["ETCD_ADVERTISE_CLIENT_URLS"] == f'"http://{me["address"]}:2379"'
    assert "127.0.0.1" not in values["ETCD_ADVERTISE_CLIENT_URLS"]
    assert (
        values["ETCD_INITIAL_CLUSTER"].count("=http://") == 3
        and values["ETCD_INITIAL_CLUSTER_STATE"] == '"new"'
    )
    with pytest.raises(config.ConfigError, match="not an etcd member"):
        config.etcd_environment({"name": "dcs-9"}, dcs, "test")


def patroni(*members: tuple[str, str, str, Any]) -> dict[str, Any]:
    return {"members": [{"name": n, "role": r, "state": s, "lag": lag} for n, r, s, lag in members]}


def test_a_cluster_is_whole_with_one_running_leader_and_every_replica_streaming_within_the_lag() -> None:
    names = ["db-1", "db-2", "db-3"]
    whole = patroni(
        ("db-1", "leader", "running", None),
        ("db-2", "sync_standby", "streaming", 0),
        ("db-3", "replica", "running", 10),
    )
    view = cluster.read_cluster(["http://a"], names, 100, fetch=lambda url, t: whole)
    assert view.problems == [] and view.leader == "db-1" and view.sync_standby == "db-2"
    assert view.replicas == ["db-2", "db-3"]
    lagging = patroni(("db-1", "leader", "running", None), ("db-2", "replica", "streaming", 5000))
    view = cluster.read_cluster(["http://a"], names, 100, fetch=lambda url, t: lagging)
    assert view.problems == ["db-2 lags 5000 (at most 100 bytes)", "db-3 is not in the cluster yet"]


def test_the_first_api_that_answers_is_read_and_waiting_gives_up_saying_what_it_saw() -> None:
    answers: list[str] = []

    def fetch(url: str, timeout: float) -> Any:
        answers.append(url)
        if url.startswith("http://down"):
            raise OSError("connection refused")
        return patroni(("db-1", "replica", "running", None))

    view = cluster.read_cluster(["http://down", "http://up"], ["db-1"], 100, fetch=fetch)
    assert view.source == "http://up" and answers == ["http://down/cluster", "http://up/cluster"]
    clock = iter([0.0, 0.0, 1.0, 2.0, 3.0])
    with pytest.raises(cluster.ClusterError, match="not whole after 2 s: no running leader"):
        cluster.wait_whole(
            ["http://up"], ["db-1"], 100, 2, fetch=fetch, sleep=lambda s: None, clock=lambda: next(clock)
        )
