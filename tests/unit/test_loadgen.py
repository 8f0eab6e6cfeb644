"""The load generator's record of which version each load balancer served (tools/loadgen.py):
a late answer to a request sent before the switch was seen is no change; one sent after it is."""

from __future__ import annotations

import argparse
import json
import time

from tools.loadgen import Load


def load() -> Load:
    generator = Load(argparse.Namespace())
    generator.started = time.monotonic()
    return generator


def answer(version: str) -> bytes:
    return json.dumps({"version": version}).encode()


def versions_seen(generator: Load, target: str = "lb1:8080") -> list[str]:
    return [version for _t, version in generator.versions[target]]


def test_a_straggler_sent_before_the_switch_was_seen_is_no_change() -> None:
    generator = load()
    before_switch = time.monotonic()
    generator.saw_version("lb1:8080", 200, answer("v1"), before_switch)
    generator.saw_version("lb1:8080", 200, answer("v2"), time.monotonic())
    generator.saw_version("lb1:8080", 200, answer("v1"), before_switch)  # in flight across the switch
    assert versions_seen(generator) == ["v1", "v2"]
    assert generator.answers == {"v1": {"ok": 2, "failed": 0}, "v2": {"ok": 1, "failed": 0}}


def test_an_old_answer_to_a_request_sent_after_the_switch_was_seen_is_a_change() -> None:
    generator = load()
    generator.saw_version("lb1:8080", 200, answer("v1"), time.monotonic())
    generator.saw_version("lb1:8080", 200, answer("v2"), time.monotonic())
    generator.saw_version("lb1:8080", 200, answer("v1"), time.monotonic())  # the LB went back: a flap
    assert versions_seen(generator) == ["v1", "v2", "v1"]


def test_failed_answers_and_bodies_without_a_version_change_nothing() -> None:
    generator = load()
    generator.saw_version("lb1:8080", 200, answer("v1"), time.monotonic())
    generator.saw_version("lb1:8080", 503, answer("v2"), time.monotonic())
    generator.saw_version("lb1:8080", 200, b"not json", time.monotonic())
    generator.saw_version("lb2:8080", 200, answer("v2"), time.monotonic())
    assert versions_seen(generator) == ["v1"] and versions_seen(generator, "lb2:8080") == ["v2"]
    assert generator.answers["v2"] == {"ok": 1, "failed": 1}
