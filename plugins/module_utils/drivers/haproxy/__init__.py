# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A backend server's place in rotation, through HAProxy's Runtime API (standard library only).

- ``runtime``: the unix socket transport, its errors, the parsers of ``show servers state`` / ``show stat``
- ``state``: ServerState and the admin/operational flags; a whole backend read in two round trips
- ``plan``: MemberRequest and its validation, plan_change, admin_steps and predict (pure)
- ``wait``: polling until every server of a list is UP or idle, and what a timeout says of each
- ``member``: HaproxyServer (read, change, wait) and apply_request, lb_member's whole job
- ``step``: StepRequest and LbStep, lb_step's whole job (ready, wait UP, drain, wait idle)
"""
