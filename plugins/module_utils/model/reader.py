# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Typed accessors over raw YAML: each raises a SpecError that names the key path and says what
was expected, describing what it got the way its author wrote it (a boolean is a boolean, an
unquoted 1.10 was a number)."""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from ansible_collections.berth.fleet.plugins.module_utils.common.rules import (
    VERSION_EXPECTED,
    name_problem,
    version_problem,
)
from ansible_collections.berth.fleet.plugins.module_utils.model.source import AsWritten
from ansible_collections.berth.fleet.plugins.module_utils.model.topology import SpecError, dotted

T = TypeVar("T")


class Reader:
    """Typed accessors over raw YAML data that raise SpecError with the key path."""

    def __init__(self, source: str, written: AsWritten | None = None) -> None:
        self.source = source
        self.written = written or AsWritten()

    def fail(self, key: str, expected: str) -> SpecError:
        return SpecError(self.source, key, expected)

    def mapping(self, raw: Any, key: str) -> Mapping[str, Any]:
        if not isinstance(raw, Mapping):
            raise self.fail(key, f"expected a mapping, got {describe(raw)}")
        for name in raw:
            if not isinstance(name, str):
                raise self.fail(key, f"expected string keys, got {describe(name)}")
        return raw

    def keys(
        self, raw: Mapping[str, Any], key: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
    ) -> None:
        allowed = required + optional
        for name in raw:
            if name not in allowed:
                raise self.fail(
                    dotted(key, name), f"unknown key (allowed: {', '.join(allowed)}){suggest(name, allowed)}"
                )
        for name in required:
            if name not in raw:
                raise self.fail(dotted(key, name), "is required")

    def string(self, raw: Any, key: str, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
        if not isinstance(raw, str) or not raw:
            raise self.fail(key, f"expected a non-empty string, got {describe(raw)}")
        if pattern is not None and not pattern.match(raw):
            raise self.fail(key, f"expected {what}, got {raw!r}")
        return raw

    def ruled(self, raw: Any, key: str, problem: Callable[[str], str | None], what: str) -> str:
        """A string that passes one of the `common.rules` (so no later step refuses it)."""
        value = self.string(raw, key)
        if problem(value) is not None:
            raise self.fail(key, f"expected {what}, got {value!r}")
        return value

    def name(self, raw: Any, key: str) -> str:
        value = self.string(raw, key)
        problem = name_problem(value)
        if problem is not None:
            raise self.fail(key, problem)
        return value

    def integer(self, raw: Any, key: str, minimum: int, maximum: int | None = None) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise self.fail(key, f"expected an integer, got {describe(raw)}")
        if raw < minimum or (maximum is not None and raw > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise self.fail(key, f"expected an integer {bound}, got {raw}")
        return int(raw)

    def boolean(self, raw: Any, key: str) -> bool:
        if not isinstance(raw, bool):
            raise self.fail(key, f"expected true or false, got {describe(raw)}")
        return raw

    def choice(self, raw: Any, key: str, choices: tuple[str, ...]) -> str:
        if raw not in choices:
            raise self.fail(key, f"expected one of {', '.join(choices)}, got {raw!r}{suggest(raw, choices)}")
        return str(raw)

    def address(self, raw: Any, key: str) -> ipaddress.IPv4Address:
        try:
            return ipaddress.IPv4Address(self.string(raw, key))
        except ipaddress.AddressValueError:
            raise self.fail(key, f"expected an IPv4 address, got {raw!r}") from None

    def version(self, raw: Any, key: str) -> str:
        """A release version: a YAML string (an unquoted 1.10 is the number 1.1) that follows the rule."""
        if isinstance(raw, str):
            problem = version_problem(raw)
            if problem is not None:
                raise self.fail(key, problem)
            return raw
        if raw is None or isinstance(raw, Mapping | list):
            raise self.fail(key, f"expected {VERSION_EXPECTED} as a string, got {describe(raw)}")
        written = self.written.text(key)
        if written is None:  # not read from a file: all that is known is what YAML made of it
            raise self.fail(
                key, f"expected a version as a string, got {describe(raw)}: quote it: version: '{raw}'"
            )
        read = f"expected a version as a string: YAML read the unquoted {written} as {describe(raw)}"
        problem = version_problem(written)
        if problem is not None:  # `version: yes` quoted is still no version
            raise self.fail(key, f"{read}; quoted, it would still be wrong: {problem}")
        raise self.fail(key, f"{read}; quote it: version: '{written}'")

    def named_entries(
        self, raw: Any, key: str, parse: Callable[[str, Mapping[str, Any], str], T], allow_empty: bool = True
    ) -> tuple[T, ...]:
        """A mapping of name -> mapping, parsed entry by entry."""
        if raw is None and allow_empty:
            return ()
        entries = self.mapping(raw, key)
        if not entries and not allow_empty:
            raise self.fail(key, "expected at least one entry")
        result = []
        for entry_name, body in entries.items():
            entry_key = dotted(key, entry_name)
            self.name(entry_name, entry_key)
            result.append(parse(entry_name, self.mapping(body, entry_key), entry_key))
        return tuple(result)


def suggest(name: object, known: Iterable[str]) -> str:
    """The did-you-mean tail of a message: "; did you mean 'port'?" or ""."""
    hint = difflib.get_close_matches(str(name), list(known), n=1)
    return f"; did you mean '{hint[0]}'?" if hint else ""


def describe(raw: Any) -> str:
    if raw is None:
        return "nothing (null)"
    # bool before int: True is an int to Python, a boolean to whoever wrote it
    kind = {bool: "boolean", dict: "mapping", list: "list", str: "string", int: "integer", float: "number"}
    for python_type, label in kind.items():
        if isinstance(raw, python_type):
            return f"{label} {raw!r}" if python_type in (str, int, float, bool) else label
    if isinstance(raw, datetime.date):  # YAML reads an unquoted 2026-01-05 as a date
        return f"date {raw.isoformat()}"
    return type(raw).__name__
