"""Parallel run's comparison (common/compare.py): Diffy's noise rule, the rules, the tally and the gate.

Pure functions on answers built here; the mechanism that copies real requests to the candidate is
issue 13's next part and will have its own integration test under load."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.common.compare import (
    REDACTED,
    Answer,
    CompareError,
    Rules,
    Tally,
    differences,
    endpoint,
    field_path_problems,
    gate,
    judge,
    merge,
    parse_field_path,
)


def answer(body: Any, status: int = 200, **headers: str) -> Answer:
    return Answer(status, {"Content-Type": "application/json", **headers}, json.dumps(body).encode())


def test_json_differences_have_paths() -> None:
    one = answer({"id": 1, "items": [{"price": 3}, {"price": 4}], "total": 7})
    other = answer({"id": 1, "items": [{"price": 3}, {"price": 5}], "total": 8, "extra": True})
    assert differences(one, other, Rules()) == ["$.extra", "$.items[1].price", "$.total"]


def test_status_only_and_text_modes() -> None:
    one, other = answer({"a": 1}), answer({"a": 2})
    assert differences(one, other, Rules(mode="status")) == []
    assert differences(one, answer({"a": 1}, status=500), Rules(mode="status")) == ["status"]
    assert differences(one, other, Rules(mode="text")) == ["body"]


def test_ignored_fields_and_headers() -> None:
    one = answer({"at": 1, "items": [{"etag": "a", "n": 1}]}, **{"X-Request-Id": "1"})
    other = answer({"at": 2, "items": [{"etag": "b", "n": 1}]}, **{"X-Request-Id": "2"})
    rules = Rules.from_settings(
        {"ignore_fields": ["at", "items[*].etag"], "compare_headers": ["x-request-id"]}
    )
    assert differences(one, other, rules) == ["header x-request-id"]
    rules = Rules.from_settings(
        {
            "ignore_fields": ["at", "items[*].etag"],
            "compare_headers": ["x-request-id"],
            "ignore_headers": ["X-Request-Id"],
        }
    )
    assert differences(one, other, rules) == []


def test_a_difference_the_trusted_pair_also_show_is_noise() -> None:
    primary = answer({"id": "a1", "at": 100, "price": 3})
    secondary = answer({"id": "b2", "at": 101, "price": 3})
    noisy_candidate = answer({"id": "c3", "at": 102, "price": 3})
    verdict = judge(primary, secondary, noisy_candidate, Rules())
    assert not verdict.mismatch and verdict.noise == ("$.at", "$.id")
    wrong = judge(primary, secondary, answer({"id": "c3", "at": 102, "price": 4}), Rules())
    assert wrong.mismatch and wrong.candidate == ("$.price",)


def test_noise_covers_what_lies_below_it() -> None:
    primary, secondary = answer({"meta": {"id": 1}}), answer({"meta": None})
    verdict = judge(primary, secondary, answer({"meta": {"id": 2, "x": 1}}), Rules())
    assert not verdict.mismatch


def test_endpoints_fold_ids() -> None:
    assert endpoint("get", "/orders/123?x=1") == "GET /orders/{id}"
    assert endpoint("GET", "/orders/3f2a9c1e-4b2d-4c1a-9e7f-1a2b3c4d5e6f/items") == "GET /orders/{id}/items"
    assert endpoint("HEAD", "/") == "HEAD /"


def test_the_tally_counts_per_endpoint_and_keeps_few_redacted_samples() -> None:
    rules = Rules.from_settings({"redact_fields": ["card.number"]})
    tally = Tally(rules)
    good = answer({"price": 3, "card": {"number": "4111"}}, Authorization="Bearer s3cret")
    bad = answer({"price": 4, "card": {"number": "4111"}}, Authorization="Bearer s3cret")
    for n in range(10):
        tally.add("GET", f"/orders/{n}", good, good, bad if n % 2 else good)
    tally.add("GET", "/health", good, good, good)
    data = tally.as_dict()
    assert data["requests"] == 11 and data["mismatches"] == 5
    assert data["endpoints"]["GET /orders/{id}"] == {
        "requests": 10,
        "mismatches": 5,
        "noisy": 0,
        "mismatch_rate": 0.5,
    }
    assert len(data["samples"]) == 3  # at most 3 per endpoint
    shown = json.dumps(data["samples"])
    assert "s3cret" not in shown and "4111" not in shown and REDACTED in shown
    assert data["samples"][0]["differences"] == ["$.price"]


def test_the_gate_needs_enough_requests_and_a_low_rate() -> None:
    tally = Tally(Rules())
    same = answer({"a": 1})
    for _n in range(5):
        tally.add("GET", "/a", same, same, same)
    passed, why = gate(tally.as_dict(), min_requests=10, max_mismatch_rate=0.01)
    assert not passed and "5 request(s) compared, fewer than the 10" in why
    for _n in range(5):
        tally.add("GET", "/b", same, same, answer({"a": 2}))
    passed, why = gate(tally.as_dict(), min_requests=10, max_mismatch_rate=0.01)
    assert not passed and "GET /b: 5 of 5" in why
    assert gate({"requests": 100, "mismatch_rate": 0.0, "endpoints": {}}, 10, 0.01)[0]


@pytest.mark.parametrize("bad", ["", "a..b", "a[x]", "[0]", "a.", 5, "a b"])
def test_field_paths_are_checked(bad: Any) -> None:
    with pytest.raises(CompareError, match="is not a field path"):
        parse_field_path(bad)
    assert field_path_problems(["ok", bad])


def test_field_paths_parse() -> None:
    assert parse_field_path("items[*].etag") == ("items", "*", "etag")
    assert parse_field_path("meta.*") == ("meta", "*")
    assert parse_field_path("rows[2].cells[*]") == ("rows", 2, "cells", "*")
    with pytest.raises(CompareError, match="mode: expected one of json, text, status"):
        Rules.from_settings({"mode": "xml"})


def test_the_tallies_of_every_lb_merge_into_one_and_the_gate_reads_it() -> None:
    one = {
        "requests": 3,
        "dropped": 1,
        "haproxy_dropped": 2,
        "endpoints": {"GET /a": {"requests": 3, "mismatches": 1, "noisy": 3}},
        "samples": [{"endpoint": "GET /a", "differences": ["$.x"]}] * 3,
    }
    other = {
        "requests": 5,
        "candidate_failures": 1,
        "endpoints": {
            "GET /a": {"requests": 1, "mismatches": 0, "noisy": 1},
            "GET /b": {"requests": 4, "mismatches": 1, "noisy": 0},
        },
        "samples": [{"endpoint": "GET /a"}, {"endpoint": "GET /b"}],
    }
    merged = merge([one, other])
    assert (merged["requests"], merged["mismatches"], merged["mismatch_rate"]) == (8, 2, 0.25)
    assert (merged["dropped"], merged["haproxy_dropped"], merged["candidate_failures"]) == (1, 2, 1)
    assert merged["endpoints"]["GET /a"] == {
        "requests": 4,
        "mismatches": 1,
        "noisy": 4,
        "mismatch_rate": 0.25,
    }
    assert [s["endpoint"] for s in merged["samples"]] == ["GET /a"] * 3 + ["GET /b"]
    assert gate(merged, 8, 0.3)[0] and not gate(merged, 9, 0.3)[0]
