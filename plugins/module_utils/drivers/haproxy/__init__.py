# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A backend server's place in rotation, through HAProxy's Runtime API (standard library only).

- ``runtime``: the unix socket transport, its errors, the parsers of ``show servers state`` / ``show stat``
- ``state``: ServerState and the admin/operational flags; one backend's answers paired into states
- ``plan``: MemberRequest and its validation, plan_change and predict (pure)
- ``member``: HaproxyServer (read, change, wait) and apply_request, lb_member's whole job
"""
