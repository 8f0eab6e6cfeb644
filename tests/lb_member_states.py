"""What berth.fleet.lb_member must do from every starting state to every target: one table, used
by the unit tests (fake HAProxy) and the integration tests (real HAProxy), so the two agree."""

from __future__ import annotations

# (start, target): (changed, admin after, operational after, failure expected in the message)
EXPECTED: dict[tuple[str, str], tuple[bool, str, str, str | None]] = {
    ("UP", "ready"): (False, "ready", "UP", None),
    ("UP", "drain"): (True, "drain", "UP", None),
    ("UP", "maint"): (True, "maint", "MAINT", None),
    ("UP", "weight"): (True, "ready", "UP", None),
    ("DOWN", "ready"): (False, "ready", "DOWN", "L7STS 503"),
    ("DOWN", "drain"): (True, "drain", "DOWN", None),
    ("DOWN", "maint"): (True, "maint", "MAINT", None),
    ("DOWN", "weight"): (True, "ready", "DOWN", None),
    ("DRAIN", "ready"): (True, "ready", "UP", None),
    ("DRAIN", "drain"): (False, "drain", "UP", None),
    ("DRAIN", "maint"): (True, "maint", "MAINT", None),
    ("DRAIN", "weight"): (True, "drain", "UP", None),
    ("MAINT", "ready"): (True, "ready", "UP", None),
    ("MAINT", "drain"): (False, "maint", "MAINT", None),
    ("MAINT", "maint"): (False, "maint", "MAINT", None),
    ("MAINT", "weight"): (True, "maint", "MAINT", None),
}
