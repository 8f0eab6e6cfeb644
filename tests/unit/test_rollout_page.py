"""The rollout report's page (plugins/plugin_utils/rollout_page.py) in Debian's Chromium, headless:
a page made from a journal and samples recorded on the lab (catalog v1 -> v2, 4 batches of 1, under
the usual load), with no lab."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.planner.timeline import build_report
from ansible_collections.berth.fleet.plugins.plugin_utils import rollout_page
from tests.chromium import assert_report_page_renders, colour_pixels, render, texts_of_class

RECORDED = Path(__file__).resolve().parents[1] / "data" / "rollout-report"


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    journal = json.loads((RECORDED / "journal.json").read_text())
    samples = json.loads((RECORDED / "samples.json").read_text())
    return build_report(journal, samples, 0.25)


def test_the_recorded_run_is_what_the_page_shows(report: dict[str, Any]) -> None:
    assert report["status"] == "complete" and report["lbs"] == ["lb-dc1", "lb-dc2"]
    assert [b["hosts"] for b in report["batches"]] == [[f"catalog-{n}"] for n in range(1, 5)]
    assert report["warnings"] == []
    assert all(seen["max_gap"] <= 0.3 for seen in report["coverage"].values()), report["coverage"]


def test_the_page_is_self_contained(report: dict[str, Any]) -> None:
    page = rollout_page.render(report)
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)  # nothing loaded from anywhere
    assert "Plotly.newPlot" in page and len(page) > 3_000_000  # plotly.js inlined


def test_chromium_renders_the_plot_with_every_series(report: dict[str, Any], tmp_path: Path) -> None:
    page = tmp_path / "catalog.report.html"
    page.write_text(rollout_page.render(report))
    rendered = assert_report_page_renders(page, report)
    assert "requests/s lb-dc2" in texts_of_class(rendered.dom, "legendtext")


def test_a_page_whose_plot_did_not_draw_fails_those_checks(report: dict[str, Any], tmp_path: Path) -> None:
    """The checks above see the plot itself: the same page without plotly.js shows its title and
    tables but no legend and none of the lines' colours."""
    page = tmp_path / "broken.report.html"
    text = rollout_page.render(report)
    start = text.rindex("<script", 0, text.index("plotly.js v"))  # the library's own script element
    page.write_text(text[:start] + text[text.index("</script>", start) + len("</script>") :])
    rendered = render(page)
    assert "catalog to v2: complete" in rendered.dom
    assert texts_of_class(rendered.dom, "legendtext") == []
    assert colour_pixels(rendered.png, rollout_page.PALETTE[0]) < 50
    with pytest.raises(AssertionError, match=r"^\[\]"):  # what the legend check saw: nothing
        assert_report_page_renders(page, report)
