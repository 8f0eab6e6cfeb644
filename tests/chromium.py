"""A page as Debian's Chromium renders it, headless: its screenshot and its DOM after its scripts ran.

Each call starts one Chromium (its own process group, a fresh profile in a temporary directory),
waits for it, then ends whatever that group left running and removes the profile. Chromium runs
offline here: no first-run, no background networking, no component updates, no sync.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
WINDOW = (1400, 1000)
# virtual time: Chromium runs the page's scripts (plotly draws the plot) for this long before it
# takes the screenshot or dumps the DOM, however long that takes in real time
BUDGET_MS = 10000


def chromium(url: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    if not os.access(CHROMIUM, os.X_OK):
        raise AssertionError(f"{CHROMIUM} is missing: `make deps` installs Debian's chromium (APT_PACKAGES)")
    profile = tempfile.mkdtemp(prefix="berth-chromium-")
    argv = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={BUDGET_MS}", *args, url]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        # its helpers (zygote, renderer, GPU and network services) are in its process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


@dataclass
class Rendered:
    png: bytes
    dom: str


def render(page: Path) -> Rendered:
    """``page`` rendered by Chromium: a screenshot of the window and the DOM its scripts made."""
    size = f"--window-size={WINDOW[0]},{WINDOW[1]}"
    with tempfile.TemporaryDirectory(prefix="berth-shot-") as directory:
        shot = Path(directory) / "page.png"
        taken = chromium(page.resolve().as_uri(), size, f"--screenshot={shot}")
        assert taken.returncode == 0 and shot.exists(), taken.stderr[-3000:]
        png = shot.read_bytes()
    dumped = chromium(page.resolve().as_uri(), size, "--dump-dom")
    assert dumped.returncode == 0 and dumped.stdout, dumped.stderr[-3000:]
    return Rendered(png, dumped.stdout)


class _Texts(HTMLParser):
    """The text of every element whose class list has ``wanted``."""

    def __init__(self, wanted: str) -> None:
        super().__init__()
        self.wanted = wanted
        self.depth = 0
        self.texts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if self.depth:
            self.depth += 1
        elif self.wanted in classes:
            self.depth = 1
            self.texts.append("")

    def handle_endtag(self, tag: str) -> None:
        if self.depth:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.texts[-1] += data


def texts_of_class(dom: str, wanted: str) -> list[str]:
    parser = _Texts(wanted)
    parser.feed(dom)
    return parser.texts


def count_of_class(dom: str, wanted: str) -> int:
    return len(texts_of_class(dom, wanted))


# --- the rollout report's page ---------------------------------------------------------------------


def colour_pixels(png: bytes, colour: str, tolerance: int = 24) -> int:
    """How many pixels of the screenshot are ``colour`` (``#rrggbb``), give or take ``tolerance``."""
    from PIL import Image  # the test extra (pyproject.toml)

    wanted = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=image.width * image.height) or []
    near = [
        int(count)
        for count, rgb in colours
        if isinstance(rgb, tuple) and all(abs(a - b) <= tolerance for a, b in zip(rgb, wanted, strict=True))
    ]
    return sum(near)


def distinct_colours(png: bytes) -> int:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    return len(image.getcolors(maxcolors=image.width * image.height) or [])


def assert_report_page_renders(page: Path, report: dict[str, Any]) -> Rendered:
    """The report's page, opened in Chromium, shows its plot: every series in the legend plotly drew,
    a line per series, the batches, and a screenshot that is not blank (each LB's colour and the
    drain's are on it)."""
    from ansible_collections.berth.fleet.plugins.plugin_utils import rollout_page

    rendered = render(page)
    drawn = texts_of_class(rendered.dom, "legendtext")
    assert drawn == rollout_page.series_names(report), drawn
    assert count_of_class(rendered.dom, "js-line") >= 3 * len(report["lbs"])  # the lines themselves
    assert count_of_class(rendered.dom, "bars") >= 1
    notes = texts_of_class(rendered.dom, "annotation-text")
    assert notes == [f"batch {b['batch']}" for b in report["batches"] if b["drain_started"] is not None], (
        notes
    )
    assert distinct_colours(rendered.png) > 50, "the screenshot is blank"
    for index, _lb in enumerate(report["lbs"]):
        colour = rollout_page.PALETTE[index % len(rollout_page.PALETTE)]
        assert colour_pixels(rendered.png, colour) > 500, f"no line of colour {colour} on the screenshot"
    assert colour_pixels(rendered.png, rollout_page.PHASES["drain"]) > 500, "no drain bar on the screenshot"
    return rendered
