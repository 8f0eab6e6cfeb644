# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Human-readable views of a placement (used by `make demo` and the placement playbook)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

COLUMNS = ("host", "dc", "machine", "node", "address", "port")


def placement_rows(hosts: Sequence[str], hostvars: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, ...]]:
    """One row per host, from the variables the topology inventory plugin set."""
    rows = []
    for host in hosts:
        host_vars = hostvars[host]
        port = host_vars.get("berth_port")
        rows.append(
            (
                host,
                str(host_vars.get("berth_dc", "")),
                str(host_vars.get("berth_machine") or "-"),
                str(host_vars.get("berth_node", "")),
                str(host_vars.get("berth_address", "")),
                "-" if port is None else str(port),
            )
        )
    return sorted(rows, key=lambda row: (row[1], row[2], row[0]))


def render_table(title: str, rows: Sequence[tuple[str, ...]], columns: Sequence[str] = COLUMNS) -> str:
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([title, line(columns), rule, *(line(r) for r in rows)]) + "\n"
