# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Field paths into a JSON answer, as comparison rules name them: ``updated_at``,
``items[*].etag``, ``meta.*``, ``rows[2].cells[*]`` - names joined by dots, each with optional
``[n]`` or ``[*]``; a name may be ``*`` (any key). The spec checks them (model), the comparison
uses them (planner)."""

from __future__ import annotations

import re
from typing import Any, Union

_SEGMENT = r"(?:[A-Za-z_][A-Za-z0-9_-]*|\*)(?:\[(?:\d+|\*)\])*"
FIELD_PATH_RE = re.compile(rf"^{_SEGMENT}(?:\.{_SEGMENT})*$")
_PART_RE = re.compile(r"([^.\[\]]+)|\[(\d+|\*)\]")

FieldPath = tuple[Union[str, int], ...]  # noqa: UP007 - evaluated at import; sanity's pylint refuses `|` here


class FieldPathError(ValueError):
    """Not a field path; the message says what one looks like."""


def parse_field_path(text: Any) -> FieldPath:
    """``items[*].price`` as ("items", "*", "price"): keys, indexes and the ``*`` of any key or index."""
    if not isinstance(text, str) or not FIELD_PATH_RE.match(text):
        raise FieldPathError(
            f"{text!r} is not a field path: expected names joined by dots, each with optional [n] or [*], "
            "such as updated_at, items[*].etag or meta.*"
        )
    parts: list[str | int] = []
    for name, index in _PART_RE.findall(text):
        if name:
            parts.append(name)
        else:
            parts.append("*" if index == "*" else int(index))
    return tuple(parts)


def render(path: FieldPath) -> str:
    """A path as a difference names it: ``$.items[2].price``."""
    text = "$"
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text
