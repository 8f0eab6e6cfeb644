# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: topology
short_description: Berth topology spec as inventory, one host per placed service instance
version_added: 0.1.0
author:
  - Berth maintainers (@berth)
description:
  - Reads a Berth topology spec (a file named C(*.berth.yml) or C(*.berth.yaml)) describing the
    estate (datacenters, hypervisors, bare-metal hosts, local hosts, address pools, load balancers),
    the services and the environment policy (instances per service, spread, colocation,
    max_unavailable).
  - Validates the whole spec, places every instance (one instance per VM or host, spread across
    datacenters, capacity respected, stable under scaling) and adds one inventory host per
    instance (for example C(catalog-2)) plus one per load balancer.
  - "Groups: C(env_<environment>), C(svc_<service>), C(dc_<datacenter>), C(machine_<machine>),
    C(substrate_<vm|metal|local>), C(instances), C(lb) and C(lb_<datacenter>)."
  - "Host variables: C(ansible_host), C(berth_role), C(berth_service), C(berth_instance),
    C(berth_dc), C(berth_machine), C(berth_machine_kind), C(berth_substrate), C(berth_node),
    C(berth_address), C(berth_port), and C(berth_hypervisor) or C(berth_bmc) where they apply.
    Variables of group C(all): C(berth_environment), C(berth_colocation), C(berth_datacenters).
    Each C(svc_<service>) group carries C(berth_service_spec), the service's descriptor with its
    C(instances) and resolved C(max_unavailable) count."
  - The spec format is documented in docs/topology.md of the collection.
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: Marks this file as a Berth topology spec.
    required: true
    type: str
    choices: [berth.fleet.topology]
  estate:
    description:
      - C(datacenters), each with an C(address_pool) and its C(hypervisors), C(metal) hosts,
        C(local) hosts and C(loadbalancers).
    required: true
    type: dict
  services:
    description:
      - Each service's C(artifact), C(version), C(port), C(health) check, C(resources) per instance
        and the C(substrate) it wants (C(vm), C(metal) or C(local)).
    required: true
    type: dict
  state_dir:
    description:
      - Where Berth keeps per-environment state on the controller, under C(<state_dir>/<environment>/)
        (the operator SSH key and the known_hosts of lab nodes, rollout journals).
    type: path
    default: /var/lib/berth
    env:
      - name: BERTH_STATE_DIR
  environment:
    description:
      - C(name), C(services) (per service C(instances) and optionally C(max_unavailable)),
        C(colocation), C(spread) (C(max_skew), C(when_unsatisfiable)) and the default
        C(max_unavailable).
    required: true
    type: dict
"""

EXAMPLES = r"""
# inventories/prod/topology.berth.yml
plugin: berth.fleet.topology
estate:
  datacenters:
    dc1:
      address_pool: {cidr: 10.10.1.0/24}
      hypervisors:
        hv-a: {uri: "qemu+ssh://hv-a.dc1/system", capacity: {vcpus: 16, memory_mib: 65536}}
        hv-b: {uri: "qemu+ssh://hv-b.dc1/system", capacity: {vcpus: 16, memory_mib: 65536}}
      loadbalancers:
        lb-dc1: {address: 10.10.1.2}
services:
  catalog:
    artifact: catalog
    version: v1
    port: 8080
    health: {path: /health, status: 200}
    resources: {vcpus: 1, memory_mib: 512}
    substrate: vm
environment:
  name: prod
  spread: {max_skew: 1, when_unsatisfiable: fail}
  max_unavailable: 1
  services:
    catalog: {instances: 2}
keyed_groups:
  - key: berth_machine_kind
    prefix: kind
"""

import inspect

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable

from ansible_collections.berth.fleet.plugins.module_utils.model.inventory import (
    InventoryData,
    build_inventory,
    load_placement,
)
from ansible_collections.berth.fleet.plugins.module_utils.model.source import read_as_written
from ansible_collections.berth.fleet.plugins.module_utils.model.topology import SpecError


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "berth.fleet.topology"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith((".berth.yml", ".berth.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        raw = self._load_spec(path)
        try:
            # re-read strictly: Ansible's loader keeps the last of two equal keys, and made 1.10 a number
            placement = load_placement(raw, path, read_as_written(path))
        except SpecError as exc:
            raise AnsibleParserError(str(exc), orig_exc=exc) from exc
        # the spec is validated: only now are the constructed options read from it
        self.set_options(direct=raw, var_options=self._vars)
        self._populate(build_inventory(placement, self.get_option("state_dir")))

    def _load_spec(self, path):
        """Load the file once, without the defensive deep copy (half the parse time on big specs).

        The operator's spec is trusted as a template source (ansible-core >= 2.19 tags it so),
        which keeps vault references such as a BMC password templatable where they are used.
        """
        load = self.loader.load_from_file
        if "trusted_as_template" in inspect.signature(load).parameters:
            return load(path, cache="none", unsafe=True, trusted_as_template=True)
        return load(path, cache="none", unsafe=True)

    def _populate(self, data: InventoryData) -> None:
        for group, group_vars in data.group_vars.items():
            self.inventory.add_group(group)
            for name, value in group_vars.items():
                self.inventory.set_variable(group, name, value)
        for group, hosts in data.groups.items():
            self.inventory.add_group(group)
            for host in hosts:
                self.inventory.add_host(host, group=group)
        strict = self.get_option("strict")
        for host, host_vars in data.hosts.items():
            for name, value in host_vars.items():
                self.inventory.set_variable(host, name, value)
            # compose/keyed_groups also see the host's service descriptor
            visible = dict(host_vars, **data.service_vars(host_vars))
            self._set_composite_vars(self.get_option("compose"), visible, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), visible, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), visible, host, strict=strict)
