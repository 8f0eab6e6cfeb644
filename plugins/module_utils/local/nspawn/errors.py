# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one error of the nspawn substrate, shared by every part of it."""

from __future__ import annotations


class NspawnError(Exception):
    """Anything that stops a machine from being validated, created, started, stopped or removed."""
