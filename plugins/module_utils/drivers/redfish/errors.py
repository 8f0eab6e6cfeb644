# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What stops a host from being read or changed through its BMC: RedfishError and its kinds."""

from __future__ import annotations

from typing import Any


class RedfishError(Exception):
    """Anything that stops a host from being read or changed through its BMC.

    ``status`` is the HTTP status when the BMC answered; ``details`` carries what the caller should
    still report on failure (changed, actions). Messages never contain credentials.
    """

    def __init__(self, message: str, status: int | None = None, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.details: dict[str, Any] = details


class RedfishAuthError(RedfishError):
    """The BMC refused the credentials (401) or the account lacks a privilege (403)."""


class RedfishUnreachable(RedfishError):
    """No HTTP answer from the BMC, after the retries."""


class RedfishUnsupported(RedfishError):
    """The BMC does not offer what was asked (an action, a reset type, a boot target, virtual media)."""


class RedfishTimeout(RedfishError):
    """The system did not reach the wanted power state in time."""
