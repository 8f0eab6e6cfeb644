# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Server weights of one backend, set through the Runtime API and read back.

``set weight <backend>/<server> <w>`` changes the server's user weight at once (0-256; ``100%`` puts
back the weight of the configuration). With ``balance roundrobin`` (what Berth's backends use) the
weight is dynamic: the next requests follow it, and a server of weight 0 gets none while its health
checks go on. HAProxy keeps the weight across a reload only through the server-state file (Berth's
``berth-haproxy-state`` saves it before every reload). Every weight is read back
(``show servers state``) before the call returns.
"""

from __future__ import annotations

from collections.abc import Mapping

from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.runtime import (
    HaproxyError,
    Transport,
    parse_servers_state,
    refusal,
)

CONFIGURED = "100%"  # the weight of the configuration


def set_weights(
    transport: Transport, backend: str, weights: Mapping[str, int | str], check_mode: bool = False
) -> tuple[bool, dict[str, int]]:
    """Every server of ``weights`` to its weight (an int, or ``100%`` for the configured one):
    whether any changed, and the user weights HAProxy reports afterwards, by server (in check
    mode: the weights it would report; nothing is sent). Raises ``HaproxyError`` when HAProxy
    refuses a command or reports another weight than the one set."""
    before = parse_servers_state(transport(f"show servers state {backend}"), backend)
    unknown = sorted(set(weights) - set(before))
    if unknown:
        raise HaproxyError(f"backend {backend} has no server {', '.join(unknown)}")
    wanted: dict[str, int] = {}
    for server, weight in weights.items():
        if weight != CONFIGURED and not (isinstance(weight, int) and 0 <= weight <= 256):
            raise HaproxyError(f"weight of {server}: expected 0 to 256 or {CONFIGURED}, got {weight!r}")
        wanted[server] = before[server].initial_weight if weight == CONFIGURED else int(weight)
    due = {s: w for s, w in weights.items() if before[s].user_weight != wanted[s] or wanted[s] < 0}
    if check_mode or not due:
        return bool(due), {s: wanted[s] if s in due else before[s].user_weight for s in weights}
    for server, weight in due.items():
        answer = transport(f"set weight {backend}/{server} {weight}").strip()
        if answer:
            raise HaproxyError(f"HAProxy refused 'set weight {backend}/{server} {weight}': {refusal(answer)}")
    after = parse_servers_state(transport(f"show servers state {backend}"), backend)
    seen = {server: after[server].user_weight for server in weights}
    wrong = {s: (w, seen[s]) for s, w in wanted.items() if w >= 0 and seen[s] != w}
    if wrong:
        raise HaproxyError(
            f"{backend}: HAProxy reports other weights than the ones set: "
            + ", ".join(f"{s} {got} (set {want})" for s, (want, got) in wrong.items())
        )
    return True, seen
