# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parallel run's mirror on a load balancer (standard library and ``common/compare.py`` only, so
that the LB host runs it with its own python3).

- ``copies``: the HAProxy lines that log a copy of each sampled request, and the parser of a copy
- ``daemon``: ``berth-mirror``, which replays copies to two trusted instances and the candidate
  off the users' path and keeps the tally
"""
