# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rollout report as a page: one self-contained HTML file with a plotly timeline.

The page is made from the report (``planner.timeline.build_report``) alone: requests/s, 5xx/s and
servers UP per load balancer, one row each, over one time axis; below them one line per batch
with its drain, its cycle, its health gate and its return to UP on every LB; each batch shaded
across the whole plot from the moment it began to drain until it was UP again. plotly.js is
inlined (about 4.8 MB), so the page opens from disk, offline, anywhere. plotly is imported here,
when a page is made, and only here.
"""

from __future__ import annotations

import html
from typing import Any

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
PHASES = {  # bar name -> colour
    "drain": "#f0a030",
    "cycle (stop, switch, start, gate)": "#8fb3d9",
    "health gate": "#2e8b57",
    "UP again on every LB": "#7f7f7f",
}
ROWS = {  # y axis -> (domain, title)
    "y": ((0.72, 1.0), "requests/s"),
    "y2": ((0.53, 0.67), "5xx/s"),
    "y3": ((0.31, 0.48), "servers UP"),
    "y4": ((0.0, 0.25), "batches"),
}


def series_names(report: dict[str, Any]) -> list[str]:
    """The names the page's legend shows, in order (what a test looks for in the rendered page)."""
    names = []
    for lb in report["lbs"]:
        names += [f"requests/s {lb}", f"5xx/s {lb}", f"servers UP {lb}"]
    return [*names, *PHASES]


def _bars(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One horizontal bar trace per phase, one bar per batch (a batch's row is its label)."""
    bars: dict[str, dict[str, list[Any]]] = {
        name: {"y": [], "base": [], "x": [], "text": []} for name in PHASES
    }

    def add(name: str, row: str, start: float | None, end: float | None, text: str) -> None:
        if start is None or end is None:
            return
        bars[name]["y"].append(row)
        bars[name]["base"].append(start)
        bars[name]["x"].append(round(max(end - start, 0.05), 3))  # a bar too short to see still shows
        bars[name]["text"].append(text)

    for batch in report["batches"]:
        row = f"batch {batch['batch']}: {', '.join(batch['hosts'])}"
        add("drain", row, batch["drain_started"], batch["drained"], f"drain {batch['drain_wait'] or 0:.2f} s")
        if batch["cycle_started"] is not None and batch["cycle_ended"] is not None:
            seconds = batch["cycle_ended"] - batch["cycle_started"]
            add(
                "cycle (stop, switch, start, gate)",
                row,
                batch["cycle_started"],
                batch["cycle_ended"],
                f"cycle {seconds:.2f} s",
            )
        for host, cycle in batch["cycles"].items():
            if cycle["ended"] is not None and cycle["gate"] is not None:
                add(
                    "health gate",
                    row,
                    cycle["ended"] - cycle["gate"],
                    cycle["ended"],
                    f"{host}: gate {cycle['gate']:.2f} s, healthy after {cycle['risen_after'] or 0:.2f} s",
                )
        add(
            "UP again on every LB",
            row,
            batch["ready_started"],
            batch["back"],
            f"UP on every LB after {batch['ready_wait'] or 0:.2f} s",
        )
    traces = []
    for name, phase in bars.items():
        traces.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": name,
                "legendgroup": "batches",
                "xaxis": "x",
                "yaxis": "y4",
                "y": phase["y"],
                "base": phase["base"],
                "x": phase["x"],
                "text": phase["text"],
                "textposition": "none",
                "width": 0.35 if name == "health gate" else 0.7,
                "marker": {"color": PHASES[name]},
                "hovertemplate": "%{text}<br>from %{base:.2f} s<extra>%{y}</extra>",
            }
        )
    return traces


def figure(report: dict[str, Any]) -> dict[str, Any]:
    """The plotly figure of a report, as a plain dict."""
    traces: list[dict[str, Any]] = []
    for index, lb in enumerate(report["lbs"]):
        colour = PALETTE[index % len(PALETTE)]
        series = report["series"][lb]
        common = {"type": "scatter", "mode": "lines", "x": series["t"], "legendgroup": lb, "xaxis": "x"}
        # the LBs often agree on 5xx/s and servers UP: the first ones are drawn wider, to show under the rest
        wide = 2 + 2 * (len(report["lbs"]) - 1 - index)
        traces += [
            {
                **common,
                "name": f"requests/s {lb}",
                "y": series["requests_per_s"],
                "yaxis": "y",
                "line": {"color": colour, "width": 2},
            },
            {
                **common,
                "name": f"5xx/s {lb}",
                "y": series["errors_5xx_per_s"],
                "yaxis": "y2",
                "line": {"color": colour, "width": wide, "dash": "dot"},
            },
            {
                **common,
                "name": f"servers UP {lb}",
                "y": series["servers_up"],
                "yaxis": "y3",
                "line": {"color": colour, "width": wide, "shape": "hv"},
            },
        ]
    traces += _bars(report)
    shapes, notes = [], []
    for batch in report["batches"]:
        start = batch["drain_started"]
        end = batch["back"] if batch["back"] is not None else batch["cycle_ended"]
        if start is None or end is None:
            continue
        shapes.append(
            {
                "type": "rect",
                "xref": "x",
                "yref": "paper",
                "x0": start,
                "x1": end,
                "y0": 0,
                "y1": 1,
                "fillcolor": "rgba(240, 160, 48, 0.10)" if batch["batch"] % 2 else "rgba(31, 119, 180, 0.08)",
                "line": {"width": 0},
                "layer": "below",
            }
        )
        notes.append(
            {
                "xref": "x",
                "yref": "paper",
                "x": (start + end) / 2,
                "y": 1.0,
                "yanchor": "bottom",
                "showarrow": False,
                "text": f"batch {batch['batch']}",
                "font": {"size": 11},
            }
        )
    last_read = [float(seen["last"]) for seen in report["coverage"].values() if seen["last"] is not None]
    layout: dict[str, Any] = {
        "template": "plotly_white",
        "height": 900,
        "margin": {"t": 40, "l": 70, "r": 20, "b": 60},
        "barmode": "overlay",
        "hovermode": "closest",
        "shapes": shapes,
        "annotations": notes,
        "legend": {"orientation": "v", "x": 1.01, "y": 1},
        "xaxis": {
            "anchor": "y4",
            "title": {"text": f"seconds since {report['started_at_utc']}"},
            "range": [0, max(float(report["seconds"]), *last_read, 1.0)],
            "showspikes": True,
        },
    }
    for axis, (domain, title) in ROWS.items():
        name = "yaxis" if axis == "y" else f"yaxis{axis[1:]}"
        layout[name] = {
            "domain": list(domain),
            "title": {"text": title},
            "anchor": "x",
            "rangemode": "tozero",
        }
    layout["yaxis4"].update({"autorange": "reversed", "rangemode": None, "title": {"text": ""}})
    layout["yaxis3"]["dtick"] = 1
    return {"data": traces, "layout": layout}


def _summary(report: dict[str, Any]) -> str:
    title = f"{report['service']} to {report['target']}: {report['status']}"
    lines = [
        f"<h1>{html.escape(title)}</h1>",
        "<p>"
        + html.escape(
            f"run {report['run']}, started {report['started_at_utc']}, {report['seconds']:.1f} s; every load "
            f"balancer's counters of be_{report['service']} read every {report['interval']:g} s "
            f"(by {report['sampler']}'s rollout task)"
        )
        + "</p>",
    ]
    if report.get("reason"):
        lines.append(
            f"<p class=halt>halted at {html.escape(str(report['halted_at']))}: "
            f"{html.escape(str(report['reason']))}</p>"
        )
    return "\n".join(lines)


def _tables(report: dict[str, Any]) -> str:
    rows = [
        "<h2>Load balancers</h2><table><tr><th>LB</th><th>requests</th><th>5xx</th><th>fewest UP</th>"
        "<th>reads</th><th>failed reads</th><th>longest gap (s)</th></tr>"
    ]
    for lb in report["lbs"]:
        total, seen = report["totals"][lb], report["coverage"][lb]
        cells = (
            lb,
            total["requests"],
            total["errors_5xx"],
            total["fewest_up"],
            seen["reads"],
            seen["failed"],
            seen["max_gap"],
        )
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    rows.append("</table>")
    rows.append(
        "<h2>Batches</h2><table><tr><th>batch</th><th>instances</th><th>seconds</th><th>drain (s)</th>"
        "<th>healthy after (s)</th><th>UP on every LB after (s)</th><th>finished</th></tr>"
    )
    for batch in report["batches"]:
        cells = (
            batch["batch"],
            ", ".join(batch["hosts"]),
            batch["seconds"],
            batch["drain_wait"],
            batch["risen_after"],
            batch["ready_wait"],
            "yes" if batch["finished"] else "no",
        )
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    rows.append("</table>")
    rows.append(_parallel_run(report.get("parallel_run") or {}))
    if report["warnings"]:
        rows.append("<h2>Warnings</h2><ul>")
        rows += [f"<li>{html.escape(warning)}</li>" for warning in report["warnings"]]
        rows.append("</ul>")
    return "\n".join(rows)


def _cells(values: tuple[Any, ...], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(str(v))}</{tag}>" for v in values) + "</tr>"


def _parallel_run(run: dict[str, Any]) -> str:
    """The verdict of the parallel run that judged this release, if one did: the gate, the counts,
    per endpoint and per LB, and the sampled differences (bounded and redacted by the mirror)."""
    if not run:
        return ""
    verdict = "passed" if run.get("passed") else "refused"
    gate = run.get("gate") or {}
    parts = [
        f"<h2 id=parallel-run>Parallel run {html.escape(str(run.get('run_id', '')))}: {verdict}</h2>",
        f"<p class={'ok' if run.get('passed') else 'halt'}>{html.escape(str(run.get('reason', '')))}</p>",
        "<p>"
        + html.escape(
            f"gate: at least {gate.get('min_requests')} compared, mismatch rate at most "
            f"{float(gate.get('max_mismatch_rate') or 0):.2%}; compared {run.get('requests', 0)}, mismatches "
            f"{run.get('mismatches', 0)} ({float(run.get('mismatch_rate') or 0):.2%}), copies dropped "
            f"{run.get('dropped', 0)}, not judged {run.get('unjudged', 0)}, failed at the candidate "
            f"{run.get('candidate_failures', 0)}"
        )
        + "</p>",
        "<table>"
        + _cells(("endpoint", "compared", "mismatches", "noise (the trusted pair differ)", "rate"), "th"),
    ]
    for name, counts in sorted(dict(run.get("endpoints") or {}).items()):
        rate = f"{float(counts.get('mismatch_rate') or 0):.2%}"
        parts.append(
            _cells((name, counts.get("requests"), counts.get("mismatches"), counts.get("noisy"), rate))
        )
    parts.append("</table>")
    parts.append(
        "<table>" + _cells(("load balancer", "candidate", "compared", "mismatches", "dropped"), "th")
    )
    for lb, seen in sorted(dict(run.get("lbs") or {}).items()):
        candidate = "(its mirror could not be read)" if seen.get("missing") else seen.get("candidate")
        parts.append(
            _cells((lb, candidate, seen.get("requests"), seen.get("mismatches"), seen.get("dropped")))
        )
    parts.append("</table>")
    samples = list(run.get("samples") or [])
    if samples:
        parts.append("<h3>Sampled differences (redacted)</h3>")
        for sample in samples:
            trusted, candidate = sample.get("primary") or {}, sample.get("candidate") or {}
            parts.append(
                f"<details><summary>{html.escape(str(sample.get('request', '')))}: "
                f"{html.escape('; '.join(map(str, sample.get('differences') or [])))}</summary><pre>"
                + html.escape(
                    f"trusted   {trusted.get('status')} {trusted.get('body', '')}\n"
                    f"candidate {candidate.get('status')} {candidate.get('body', '')}"
                )
                + "</pre></details>"
            )
    return "\n".join(parts)


STYLE = """
body { font-family: sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.3em; margin: 0.2em 0; } h2 { font-size: 1.1em; margin-top: 1.5em; }
p { margin: 0.2em 0; } .halt { color: #b00; } .ok { color: #070; }
pre { white-space: pre-wrap; margin: 0.2em 1em; font-size: 0.9em; } h3 { font-size: 1em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
"""


def render(report: dict[str, Any]) -> str:
    """The page (raises ImportError when plotly is not installed)."""
    import plotly.io  # only here, when a page is made

    plot = plotly.io.to_html(
        figure(report),
        full_html=False,
        include_plotlyjs=True,
        div_id="timeline",
        default_height="900px",
        default_width="100%",
        config={"displaylogo": False, "responsive": True},
    )
    title = html.escape(f"rollout of {report['service']} to {report['target']}")
    return (
        f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{title}</title>"
        f"<style>{STYLE}</style></head>\n<body>\n{_summary(report)}\n{plot}\n{_tables(report)}\n"
        f"<p>The data: {html.escape(str(report['service']))}.report.json, next to this page.</p>\n"
        "</body></html>\n"
    )


def preload() -> None:
    """Import plotly and what its first page needs (its validators load on first use), so that
    the page made once the rollout ended takes a tenth of a second, not three."""
    import plotly.io  # only here, when a page is made

    plotly.io.to_html(
        {
            "data": [
                {"type": "scatter", "x": [0], "y": [0]},
                {"type": "bar", "orientation": "h", "x": [1], "y": ["a"], "base": [0]},
            ],
            "layout": {
                "template": "plotly_white",
                "shapes": [{"type": "rect"}],
                "annotations": [{"text": "a"}],
            },
        },
        include_plotlyjs=False,
        full_html=False,
    )
