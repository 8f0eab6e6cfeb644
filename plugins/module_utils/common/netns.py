# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where named network namespaces live (``ip netns add`` bind-mounts them here)."""

from __future__ import annotations

from pathlib import Path

NETNS_DIR = Path("/run/netns")


def netns_path(namespace: str) -> Path:
    return NETNS_DIR / namespace
