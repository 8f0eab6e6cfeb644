# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: route_maps
short_description: The route map of every blue-green service, as a load balancer first writes it
version_added: 0.4.0
author:
  - Berth maintainers (@berth)
description:
  - For every service of the inventory whose strategy is blue_green, the map file its frontends
    choose their backend from - C(path) (O(directory)/<service>.map), C(content) (C(live) on the
    first colour, C(preview) on the second) and C(mode) - the O(initial_files) of
    M(berth.fleet.lb_config), written only where no map exists yet.
  - M(berth.fleet.lb_route) switches the map afterwards; the filter P(berth.fleet.colour_routes#filter)
    gives the routes that make a colour live.
options:
  _input:
    description: C(groups).
    type: dict
    required: true
  hostvars:
    description: C(hostvars).
    type: dict
    required: true
  directory:
    description: Where the maps live on the load balancers.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: The route maps of this inventory's blue-green services
  ansible.builtin.debug:
    msg: "{{ groups | berth.fleet.route_maps(hostvars, '/etc/haproxy/berth-routes') }}"
"""

RETURN = r"""
_value:
  description: One dict per blue-green service with service, path, content and mode.
  type: list
  elements: dict
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.berth.fleet.plugins.module_utils.drivers.haproxy.routes import render_map


def colour_routes(spec, live):
    """The routes that make ``live`` the colour users reach, the other one the preview's."""
    colours = dict(spec.get("colours") or {})
    if live not in colours:
        raise AnsibleFilterError(
            f"colour_routes: {live!r} is not a colour of this service ({', '.join(colours)})"
        )
    other = next(name for name in colours if name != live)
    return {"live": colours[live]["backend"], "preview": colours[other]["backend"]}


def route_maps(groups, hostvars, directory):
    found = []
    for group in sorted(groups):
        members = groups[group]
        if not group.startswith("svc_") or not members:
            continue
        spec = hostvars[members[0]]["berth_service_spec"]
        colours = list(spec.get("colours") or {})
        if not colours:
            continue
        service = hostvars[members[0]]["berth_service"]
        found.append(
            {
                "service": service,
                "path": f"{directory.rstrip('/')}/{service}.map",
                "content": render_map(colour_routes(spec, colours[0])),
                "mode": "0644",
            }
        )
    return found


class FilterModule:
    def filters(self):
        return {"route_maps": route_maps, "colour_routes": colour_routes}
