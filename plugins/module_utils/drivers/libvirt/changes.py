# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an ``ensure`` does: every change is recorded, and performed unless in check mode."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.errors import LibvirtError


@dataclass
class Outcome:
    """What an ``ensure`` call did (or, in check mode, would do)."""

    name: str
    state: str
    before: dict[str, Any]
    after: dict[str, Any]
    actions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.actions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "name": self.name,
            "state": self.state,
            "actions": self.actions,
            **self.facts,
            "diff": {"before": self.before, "after": self.after},
        }


class Changes:
    """Records every mutation and performs it unless in check mode."""

    def __init__(self, check_mode: bool) -> None:
        self.check_mode = check_mode
        self.actions: list[str] = []
        self.warnings: list[str] = []

    def apply(self, description: str, action: Callable[[], object]) -> None:
        self.actions.append(description)
        if not self.check_mode:
            action()

    def missing(self, message: str) -> None:
        """A missing prerequisite: an error, except in check mode where an earlier task may create it."""
        if not self.check_mode:
            raise LibvirtError(message)
        self.warnings.append(f"check mode: {message}; assuming an earlier task creates it")

    def outcome(
        self, name: str, state: str, before: dict[str, Any], after: dict[str, Any], facts: dict[str, Any]
    ) -> Outcome:
        """The outcome of the ``ensure`` that recorded these changes."""
        return Outcome(name, state, before, after, self.actions, self.warnings, facts)
