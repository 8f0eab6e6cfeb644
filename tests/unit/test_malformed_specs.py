"""The malformed-spec corpus: every broken spec fails `ansible-inventory` with one clear message
naming the file, the key path and what was expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.specs import DELETE, spec

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_INVENTORY = str(Path(sys.executable).parent / "ansible-inventory")

HV = {"uri": "qemu:///system", "capacity": {"vcpus": 8, "memory_mib": 8192}, "bridge": "br0"}
METAL = {
    "address": "10.90.1.10",
    "hardware": {"vcpus": 8, "memory_mib": 8192},
    "bmc": {"address": "bmc.invalid", "username": "admin", "password": "{{ vault_bmc }}"},
}
SECRET = "hunter2-correct-horse"

# id -> (changes to the valid base spec, expected message after "<file>: ")
CORPUS: dict[str, tuple[Any, str]] = {
    "unknown-top-key": (
        {"servics": {}},
        "servics: unknown key (allowed: estate, services, environment",
    ),
    "did-you-mean-port": (
        {"services.catalog.prot": 8080},
        "services.catalog.prot: unknown key (allowed: artifact, version, port, health, resources, substrate, database); "
        "did you mean 'port'?",
    ),
    "did-you-mean-max-skew": (
        {"environment.spread.max_skw": 1},
        "environment.spread.max_skw: unknown key (allowed: max_skew, when_unsatisfiable); did you mean 'max_skew'?",
    ),
    "strategy-unknown": (
        {"environment.services.orders.strategy": "blue-green"},
        "environment.services.orders.strategy: expected one of rolling, blue_green, canary, got 'blue-green'; "
        "did you mean 'blue_green'?",
    ),
    "strategy-two-names": (
        {"environment.services.orders.strategy": {"rolling": {}, "blue_green": {"preview_port": 18090}}},
        "environment.services.orders.strategy: expected rolling, or a mapping with exactly one key",
    ),
    "strategy-blue-green-without-settings": (
        {"environment.services.orders.strategy": "blue_green"},
        "environment.services.orders.strategy: the blue_green strategy needs its settings",
    ),
    "canary-weights-not-increasing": (
        {"environment.services.orders.strategy": {"canary": {"steps": [{"weight": 20}, {"weight": 10}]}}},
        "environment.services.orders.strategy.canary.steps[1].weight: expected weights that increase: "
        "more than 20, got 10",
    ),
    "canary-weight-over-100": (
        {"environment.services.orders.strategy": {"canary": {"steps": [{"weight": 120}]}}},
        "environment.services.orders.strategy.canary.steps[0].weight: expected an integer between 1 and 100, "
        "got 120",
    ),
    "canary-weight-over-half-beside-a-baseline": (
        {"environment.services.orders.strategy": {"canary": {"steps": [{"weight": 60}]}}},
        "environment.services.orders.strategy.canary.steps[0].weight: expected at most 49 (the baseline takes "
        "as much as the canary, the stable instances the rest) or 100 (the promotion), got 60",
    ),
    "canary-promotion-not-last": (
        {"environment.services.orders.strategy": {"canary": {"steps": [{"weight": 100}, {"pause": 5}]}}},
        "environment.services.orders.strategy.canary.steps[0].weight: 100 promotes the canary: "
        "it can only be the last step",
    ),
    "canary-analysis-without-metrics": (
        {"environment.services.orders.strategy": {"canary": {"steps": [{"weight": 10}, {"analysis": {}}]}}},
        "environment.services.orders.strategy.canary.steps[1].analysis.metrics: an analysis needs at least "
        "one metric (in the step, or in the canary's analysis)",
    ),
    "canary-analysis-before-any-weight": (
        {
            "environment.services.orders.strategy": {
                "canary": {
                    "analysis": {"metrics": [{"metric": "error_rate", "fail": 0.05}]},
                    "steps": [{"analysis": {}}, {"weight": 10}],
                }
            }
        },
        "environment.services.orders.strategy.canary.steps[0]: an analysis before the first weight step "
        "would judge a canary no request reaches",
    ),
    "canary-unknown-metric": (
        {
            "environment.services.orders.strategy": {
                "canary": {
                    "steps": [{"weight": 10}, {"analysis": {"metrics": [{"metric": "latency", "fail": 1}]}}]
                }
            }
        },
        "environment.services.orders.strategy.canary.steps[1].analysis.metrics[0].metric: expected one of "
        "error_rate, error_rate_vs_baseline, response_time, response_time_vs_baseline, got 'latency'",
    ),
    "canary-pass-above-fail": (
        {
            "environment.services.orders.strategy": {
                "canary": {
                    "analysis": {"metrics": [{"metric": "error_rate", "pass": 0.2, "fail": 0.05}]},
                    "steps": [{"weight": 10}, {"analysis": {}}],
                }
            }
        },
        "environment.services.orders.strategy.canary.analysis.metrics[0].pass: expected at most fail (0.05)",
    ),
    "canary-rate-over-one": (
        {
            "environment.services.orders.strategy": {
                "canary": {
                    "analysis": {"metrics": [{"metric": "error_rate", "fail": 5}]},
                    "steps": [{"weight": 10}, {"analysis": {}}],
                }
            }
        },
        "environment.services.orders.strategy.canary.analysis.metrics[0].fail: expected a rate from 0 to 1",
    ),
    "canary-no-room-for-a-passing-measurement": (
        {
            "environment.services.orders.strategy": {
                "canary": {
                    "analysis": {
                        "count": 2,
                        "inconclusive_limit": 2,
                        "metrics": [{"metric": "error_rate", "fail": 0.05}],
                    },
                    "steps": [{"weight": 10}, {"analysis": {}}],
                }
            }
        },
        "environment.services.orders.strategy.canary.steps[1].analysis.count: expected more than failure_limit + "
        "inconclusive_limit (0 + 2) measurements, got 2: an analysis with no passing measurement would pass",
    ),
    "canary-against-a-baseline-it-does-not-have": (
        {
            "environment.services.orders.strategy": {
                "canary": {
                    "baseline": False,
                    "analysis": {"metrics": [{"metric": "error_rate_vs_baseline", "fail": 0.01}]},
                    "steps": [{"weight": 10}, {"analysis": {}}],
                }
            }
        },
        "environment.services.orders.strategy.canary.analysis.metrics[0].metric: error_rate_vs_baseline compares "
        "with the baseline, and baseline is false",
    ),
    "canary-unknown-step": (
        {"environment.services.orders.strategy": {"canary": {"steps": [{"weight": 10}, {"wait": 5}]}}},
        "environment.services.orders.strategy.canary.steps[1]: expected a mapping with one key, weight, pause, "
        "analysis, got",
    ),
    "canary-pause-not-seconds": (
        {
            "environment.services.orders.strategy": {
                "canary": {"steps": [{"weight": 10}, {"pause": "forever"}]}
            }
        },
        "environment.services.orders.strategy.canary.steps[1].pause: expected seconds or until_resumed, "
        "got string 'forever'",
    ),
    "canary-no-steps": (
        {"environment.services.orders.strategy": {"canary": {"steps": []}}},
        "environment.services.orders.strategy.canary.steps: expected a list of steps such as",
    ),
    "canary-no-room-for-the-canary": (
        {"environment.services.catalog.strategy": {"canary": {"steps": [{"weight": 10}]}}},
        "environment.services.catalog.strategy: canary needs a canary instance and a baseline instance of "
        "catalog on machines of their own, and the estate has no room for it: 6 instances but only 4 usable "
        "hypervisor machine(s)",
    ),
    "parallel-run-field-path": (
        {
            "environment.services.orders.parallel_run": {
                "compare": {"ignore_fields": ["updated_at", "items[x]"]}
            }
        },
        "environment.services.orders.parallel_run.compare.ignore_fields[1]: 'items[x]' is not a field path: "
        "expected names joined by dots, each with optional [n] or [*], such as updated_at, items[*].etag or meta.*",
    ),
    "parallel-run-sample-outside-0-1": (
        {"environment.services.orders.parallel_run": {"sample": 1.5}},
        "environment.services.orders.parallel_run.sample: expected a rate above 0 to 1 (0.01 is 1 %), got",
    ),
    "parallel-run-post-not-by-default": (
        {"environment.services.orders.parallel_run": {"methods": ["GET", "POST"]}},
        "environment.services.orders.parallel_run.methods[1]: POST has side effects: a copy would run them twice; "
        "it is copied only with allow_unsafe: true",
    ),
    "parallel-run-compare-mode": (
        {"environment.services.orders.parallel_run": {"compare": {"mode": "xml"}}},
        "environment.services.orders.parallel_run.compare.mode: expected one of json, text, status, got 'xml'",
    ),
    "parallel-run-gate-rate-outside-0-1": (
        {
            "environment.services.orders.parallel_run": {},
            "environment.services.orders.strategy": {
                "blue_green": {
                    "preview_port": 18090,
                    "parallel_run": {"min_requests": 100, "max_mismatch_rate": 2},
                }
            },
        },
        "environment.services.orders.strategy.blue_green.parallel_run.max_mismatch_rate: expected a rate from 0 "
        "to 1 (0.01 is 1 %), got integer 2",
    ),
    "parallel-run-gate-max-seconds-not-seconds": (
        {
            "environment.services.orders.parallel_run": {},
            "environment.services.orders.strategy": {
                "blue_green": {
                    "preview_port": 18090,
                    "parallel_run": {"min_requests": 100, "max_mismatch_rate": 0.01, "max_seconds": "5m"},
                }
            },
        },
        "environment.services.orders.strategy.blue_green.parallel_run.max_seconds: expected the seconds the "
        "parallel run may take to compare min_requests, from 1 to 86400, got string '5m'",
    ),
    "parallel-run-gate-on-a-service-not-in-parallel-run": (
        {
            "environment.services.orders.strategy": {
                "canary": {
                    "steps": [{"weight": 10}],
                    "parallel_run": {"min_requests": 100, "max_mismatch_rate": 0.01},
                }
            }
        },
        "environment.services.orders.strategy.canary.parallel_run: a gate on a parallel run, and orders has none "
        "here: give environment.services.orders.parallel_run its settings, or drop the gate",
    ),
    "database-name-not-a-postgresql-name": (
        {"services.orders.database": {"name": "Orders-DB"}},
        "services.orders.database.name: expected a PostgreSQL name: lower-case letters, digits and '_', a "
        "letter or '_' first, at most 63 characters, got string 'Orders-DB'",
    ),
    "database-name-berth-uses": (
        {"services.orders.database": {"name": "postgres"}},
        "services.orders.database.name: expected a name of the service's own, got 'postgres': Berth uses it itself",
    ),
    "database-without-a-mode-here": (
        {"services.orders.database": {}},
        "environment.services.orders.database: is required: orders has a database (services.orders.database); "
        "say how this environment provides it: {mode: shared} or {mode: dedicated, replicas: N}",
    ),
    "database-mode-unknown": (
        {"services.orders.database": {}, "environment.services.orders.database": {"mode": "sharded"}},
        "environment.services.orders.database.mode: expected one of shared, dedicated, got 'sharded'",
    ),
    "database-for-a-service-without-one": (
        {"environment.services.catalog.database": {"mode": "shared"}},
        "environment.services.catalog.database: catalog declares no database: give services.catalog.database "
        "(its name) first, or drop this",
    ),
    "database-shared-with-replicas-of-its-own": (
        {
            "services.orders.database": {},
            "environment.services.orders.database": {"mode": "shared", "replicas": 2},
        },
        "environment.services.orders.database.replicas: a shared database lives on the shared cluster: its "
        "replicas and resources are environment.databases.shared's (members, resources)",
    ),
    "database-shared-without-a-shared-cluster": (
        {"services.orders.database": {}, "environment.services.orders.database": {"mode": "shared"}},
        "environment.databases.shared: is required: orders use(s) the shared cluster (database mode shared); "
        "give its members, e.g. shared: {members: 1}",
    ),
    "database-replicas-not-a-count": (
        {
            "services.orders.database": {},
            "environment.services.orders.database": {"mode": "dedicated", "replicas": "two"},
        },
        "environment.services.orders.database.replicas: expected an integer, got string 'two'",
    ),
    "database-failover-with-one-etcd-member": (
        {
            "services.orders.database": {},
            "environment.services.orders.database": {"mode": "dedicated", "replicas": 1},
            "environment.databases": {"dcs": {"members": 1}},
        },
        "environment.databases.dcs.members: a cluster with replicas fails over through etcd: one etcd member is "
        "a single point of failure for every cluster; expected 3 or 5",
    ),
    "database-even-etcd-members": (
        {
            "services.orders.database": {},
            "environment.services.orders.database": {"mode": "dedicated"},
            "environment.databases": {"dcs": {"members": 2}},
        },
        "environment.databases.dcs.members: expected 1, 3 or 5 etcd members (a majority must survive a loss), "
        "got integer 2",
    ),
    "blue-green-needs-preview-port": (
        {"environment.services.orders.strategy": {"blue_green": {}}},
        "environment.services.orders.strategy.blue_green.preview_port: is required",
    ),
    "blue-green-preview-port-taken": (
        {"environment.services.orders.strategy": {"blue_green": {"preview_port": 8080}}},
        "environment.services.orders.strategy.blue_green.preview_port: expected a port no load balancer "
        "binds yet: 8080 is the port of service catalog",
    ),
    "blue-green-unknown-setting": (
        {"environment.services.orders.strategy": {"blue_green": {"preview_port": 18090, "scale_down": 60}}},
        "environment.services.orders.strategy.blue_green.scale_down: unknown key (allowed: preview_port, smoke, "
        "analysis, scale_down_delay, retire, parallel_run); did you mean 'scale_down_delay'?",
    ),
    "blue-green-smoke-empty": (
        {"environment.services.orders.strategy": {"blue_green": {"preview_port": 18090, "smoke": []}}},
        "environment.services.orders.strategy.blue_green.smoke: expected a list of at least one {path, status}",
    ),
    "blue-green-smoke-path": (
        {
            "environment.services.orders.strategy": {
                "blue_green": {"preview_port": 18090, "smoke": [{"path": "health"}]}
            }
        },
        "environment.services.orders.strategy.blue_green.smoke[0].path: expected a URL path such as /health, "
        "got 'health'",
    ),
    "blue-green-analysis-without-metrics": (
        {
            "environment.services.orders.strategy": {
                "blue_green": {"preview_port": 18090, "analysis": {"window": 10}}
            }
        },
        "environment.services.orders.strategy.blue_green.analysis.max_error_rate: is required",
    ),
    "blue-green-error-rate-over-one": (
        {
            "environment.services.orders.strategy": {
                "blue_green": {
                    "preview_port": 18090,
                    "analysis": {"window": 10, "max_error_rate": 5, "min_requests": 10},
                }
            }
        },
        "environment.services.orders.strategy.blue_green.analysis.max_error_rate: expected a rate from 0 to 1 "
        "(0.01 is 1 %), got integer 5",
    ),
    "blue-green-retire": (
        {"environment.services.orders.strategy": {"blue_green": {"preview_port": 18090, "retire": "delete"}}},
        "environment.services.orders.strategy.blue_green.retire: expected one of stop, keep, got 'delete'",
    ),
    "blue-green-no-room-for-second-colour": (
        {"environment.services.catalog.strategy": {"blue_green": {"preview_port": 18080}}},
        "environment.services.catalog.strategy: blue_green needs a second colour of 4 instance(s) of catalog "
        "on machines of their own, and the estate has no room for it: 8 instances but only 4 usable hypervisor "
        "machine(s)",
    ),
    "port-not-integer": (
        {"services.catalog.port": "eighty"},
        "services.catalog.port: expected an integer, got string 'eighty'",
    ),
    "port-out-of-range": (
        {"services.catalog.port": 70000},
        "services.catalog.port: expected an integer between 1 and 65535, got 70000",
    ),
    "negative-instances": (
        {"environment.services.catalog.instances": -1},
        "environment.services.catalog.instances: expected an integer >= 0, got -1",
    ),
    "instances-not-integer": (
        {"environment.services.catalog.instances": "four"},
        "environment.services.catalog.instances: expected an integer, got string 'four'",
    ),
    "zero-vcpus": (
        {"services.catalog.resources.vcpus": 0},
        "services.catalog.resources.vcpus: expected an integer between 1 and 4096, got 0",
    ),
    "max-unavailable-zero": (
        {"environment.max_unavailable": 0},
        "environment.max_unavailable: expected an integer >= 1, got 0",
    ),
    "max-unavailable-above-instances": (
        {"environment.services.catalog.max_unavailable": 5},
        "environment.services.catalog.max_unavailable: expected at most the service's 4 instances, got 5",
    ),
    "max-unavailable-percent-rounds-to-zero": (
        {"environment.services.catalog.max_unavailable": "10%"},
        "environment.services.catalog.max_unavailable: 10% of 4 instances rounds down to 0",
    ),
    "max-unavailable-bad-percent": (
        {"environment.max_unavailable": "150%"},
        "environment.max_unavailable: expected an integer or a percentage between 1% and 100%, got '150%'",
    ),
    "max-skew-zero": (
        {"environment.spread.max_skew": 0},
        "environment.spread.max_skew: expected an integer >= 1, got 0",
    ),
    "when-unsatisfiable-unknown": (
        {"environment.spread.when_unsatisfiable": "ignore"},
        "environment.spread.when_unsatisfiable: expected one of fail, schedule_anyway, got 'ignore'",
    ),
    "substrate-unknown": (
        {"services.catalog.substrate": "docker"},
        "services.catalog.substrate: expected one of vm, metal, local, got 'docker'",
    ),
    "unknown-service-in-environment": (
        {"environment.services.catalgo": {"instances": 1}},
        "environment.services.catalgo: unknown service (declared: catalog, orders); did you mean 'catalog'?",
    ),
    "service-without-instances": (
        {"environment.services.orders": DELETE},
        "environment.services.orders: is required: every declared service needs an instance count here",
    ),
    "lb-on-unknown-machine": (
        {"estate.datacenters.dc1.loadbalancers.lb-dc1.machine": "hv-z"},
        "estate.datacenters.dc1.loadbalancers.lb-dc1.machine: expected a hypervisor or local machine of "
        "datacenter dc1 (hv-a, hv-b), got 'hv-z'",
    ),
    "execution-node-on-unknown-machine": (
        {"estate.datacenters.dc1.execution_nodes": {"exec-dc1": {"address": "10.90.1.3", "machine": "hv-c"}}},
        "estate.datacenters.dc1.execution_nodes.exec-dc1.machine: expected a hypervisor or local machine of "
        "datacenter dc1 (hv-a, hv-b), got 'hv-c'",
    ),
    "execution-node-named-like-a-load-balancer": (
        {"estate.datacenters.dc1.execution_nodes": {"lb-dc1": {"address": "10.90.1.3"}}},
        "estate.datacenters.dc1.execution_nodes.lb-dc1: duplicate name: 'lb-dc1' is already declared at "
        "estate.datacenters.dc1.loadbalancers.lb-dc1",
    ),
    "duplicate-machine-name": (
        {"estate.datacenters.dc2.hypervisors.hv-a": HV},
        "estate.datacenters.dc2.hypervisors.hv-a: duplicate name: 'hv-a' is already declared at "
        "estate.datacenters.dc1.hypervisors.hv-a",
    ),
    "hypervisor-without-bridge": (
        {"estate.datacenters.dc1.hypervisors.hv-b.bridge": DELETE},
        "estate.datacenters.dc1.hypervisors.hv-b.bridge: is required: the host bridge that carries datacenter "
        "dc1's network on this hypervisor (only a lab estate defaults it to its DC bridge)",
    ),
    "hypervisor-domain-type": (
        {"estate.datacenters.dc1.hypervisors.hv-a.domain_type": "xen"},
        "estate.datacenters.dc1.hypervisors.hv-a.domain_type: expected one of kvm, qemu, got 'xen'",
    ),
    "hypervisor-pool-path": (
        {"estate.datacenters.dc1.hypervisors.hv-a.pool": {"path": "pool"}},
        "estate.datacenters.dc1.hypervisors.hv-a.pool.path: expected an absolute path, got 'pool'",
    ),
    "service-disk": (
        {"services.catalog.resources.disk_gib": 0},
        "services.catalog.resources.disk_gib: expected an integer between 1 and 65536, got 0",
    ),
    "duplicate-address": (
        {"estate.datacenters.dc1.loadbalancers.lb-dc1.address": "10.90.1.1"},
        "estate.datacenters.dc1.loadbalancers.lb-dc1.address: duplicate address 10.90.1.1: already used by "
        "estate.datacenters.dc1.address_pool.gateway",
    ),
    "metal-address-outside-pool": (
        {"estate.datacenters.dc1.metal": {"bm-1": dict(METAL, address="192.0.2.10")}},
        "estate.datacenters.dc1.metal.bm-1.address: expected an address inside 10.90.1.0/24, got 192.0.2.10",
    ),
    "bad-cidr": (
        {"estate.datacenters.dc1.address_pool": {"cidr": "10.90.1.0/33"}},
        "estate.datacenters.dc1.address_pool.cidr: expected an IPv4 network such as 10.1.0.0/24",
    ),
    "overlapping-pools": (
        {"estate.datacenters.dc2.address_pool": {"cidr": "10.90.0.0/16", "start": "10.90.3.16"}},
        "estate.datacenters.dc2.address_pool.cidr: expected a network apart from datacenter dc1's 10.90.1.0/24",
    ),
    "pool-too-small": (
        {
            "estate.datacenters.dc1.address_pool": {
                "cidr": "10.90.1.0/24",
                "start": "10.90.1.16",
                "end": "10.90.1.20",
            }
        },
        "estate.datacenters.dc1.address_pool: too small: instance orders-1 needs slot 17 but "
        "10.90.1.16-10.90.1.20 holds 5 addresses",
    ),
    "block-size-too-small": (
        {"estate.datacenters.dc1.address_pool.block_size": 1},
        "estate.datacenters.dc1.address_pool.block_size: service catalog needs more than 1 addresses in dc1",
    ),
    "instances-exceed-machines": (
        {"environment.services.catalog.instances": 5},
        "environment.services.catalog.instances: 5 instances but only 4 usable hypervisor machine(s): "
        "environment.colocation is false, so no two instances of a service share a machine",
    ),
    "skew-impossible": (
        {"estate.datacenters.dc2.hypervisors": DELETE, "environment.services.catalog.instances": 2},
        "environment.services.catalog.instances: cannot place catalog-2 (needs 1 vCPU / 512 MiB on a hypervisor) "
        "within spread max_skew 1 (instances per datacenter so far: dc1: 1, dc2: 0)",
    ),
    "instance-larger-than-any-machine": (
        {"services.orders.resources.vcpus": 64},
        "environment.services.orders.instances: each instance needs 64 vCPU / 512 MiB; no hypervisor machine "
        "is that large (hv-a, hv-b, hv-c, hv-d)",
    ),
    "bmc-literal-password": (
        {"estate.datacenters.dc1.metal": {"bm-1": dict(METAL, bmc=dict(METAL["bmc"], password=SECRET))}},
        "estate.datacenters.dc1.metal.bm-1.bmc.password: expected a vault reference such as "
        "'{{ vault_bmc_password }}', not a literal secret",
    ),
    "bmc-address-with-credentials": (
        {
            "estate.datacenters.dc1.metal": {
                "bm-1": dict(METAL, bmc=dict(METAL["bmc"], address=f"https://admin:{SECRET}@10.90.1.250"))
            }
        },
        "estate.datacenters.dc1.metal.bm-1.bmc.address: expected no credentials in the address (use username "
        "and password)",
    ),
    "bmc-address-with-path": (
        {
            "estate.datacenters.dc1.metal": {
                "bm-1": dict(METAL, bmc=dict(METAL["bmc"], address="https://bmc/redfish/v1"))
            }
        },
        "estate.datacenters.dc1.metal.bm-1.bmc.address: expected a host name, IP address or http(s):// URL without "
        "a path, got 'https://bmc/redfish/v1'",
    ),
    "bmc-ipmi-url": (
        {
            "estate.datacenters.dc1.metal": {
                "bm-1": dict(METAL, bmc=dict(METAL["bmc"], driver="ipmi", address="http://bmc"))
            }
        },
        "estate.datacenters.dc1.metal.bm-1.bmc.address: expected a host name or IP address without a path, "
        "got 'http://bmc'",
    ),
    "bmc-ca-path-relative": (
        {
            "estate.datacenters.dc1.metal": {
                "bm-1": dict(METAL, bmc=dict(METAL["bmc"], ca_path="certs/ca.pem"))
            }
        },
        "estate.datacenters.dc1.metal.bm-1.bmc.ca_path: expected an absolute path, got 'certs/ca.pem'",
    ),
    "health-path-relative": (
        {"services.catalog.health.path": "health"},
        "services.catalog.health.path: expected a URL path starting with '/', got 'health'",
    ),
    "service-name-uppercase": (
        {"services.Catalog": spec()["services"]["catalog"]},
        "services.Catalog: expected a name of lowercase letters, digits and '-'",
    ),
    "estate-missing": ({"estate": DELETE}, "estate: is required"),
    "no-datacenters": ({"estate.datacenters": {}}, "estate.datacenters: expected at least one entry"),
    "duplicate-service-port": (
        {"services.orders.port": 8080},
        "services.orders.port: expected a port no other service uses, got 8080 (also services.catalog)",
    ),
    "colocated-port-clash": (
        {
            "environment.colocation": True,
            "estate.datacenters.dc2": DELETE,
            "estate.datacenters.dc1.hypervisors.hv-b": DELETE,
            "services.orders.port": 8081,
        },
        "services.orders.port: orders-1 would listen on test-hv-a:8081, already used by catalog-2",
    ),
    "lb-inside-allocation-range": (
        {"estate.datacenters.dc1.loadbalancers.lb-dc1.address": "10.90.1.40"},
        "estate.datacenters.dc1.loadbalancers.lb-dc1.address: expected an address outside the allocation range "
        "10.90.1.16-10.90.1.254",
    ),
    "colocation-not-boolean": (
        {"environment.colocation": "yes"},
        "environment.colocation: expected true or false, got string 'yes'",
    ),
    "metal-service-without-metal": (
        {"services.orders.substrate": "metal"},
        "environment.services.orders.instances: 2 instance(s) with substrate metal need a metal machine, "
        "and the estate declares none",
    ),
    "lab-bridge-names-collide": (
        {
            "estate.lab_namespace": "berth-test",
            "estate.datacenters.dc2": DELETE,
            "estate.datacenters.frankfurt-east-1": {"address_pool": {"cidr": "10.91.1.0/24"}},
            "estate.datacenters.frankfurt-east-2": {"address_pool": {"cidr": "10.91.2.0/24"}},
            "environment.services.catalog.instances": 1,
            "environment.services.orders.instances": 1,
            "environment.spread.when_unsatisfiable": "schedule_anyway",
        },
        "estate.datacenters.frankfurt-east-2: expected datacenter names that differ in their first 12 characters "
        "(the lab bridge 'br-frankfurt-ea' would also serve frankfurt-east-1)",
    ),
    "lab-namespace-bad-name": (
        {"estate.lab_namespace": "berth lab"},
        "estate.lab_namespace: expected a network namespace name (letters, digits, '.', '_', '-'), got 'berth lab'",
    ),
    "version-missing": ({"services.catalog.version": DELETE}, "services.catalog.version: is required"),
    # --- the classes of holes a new user's corpus found (each accepted a spec that broke later)
    # every generated name against every other name and the built-in groups
    "lb-named-like-an-instance": (
        {"estate.datacenters.dc1.loadbalancers": {"catalog-1": {"address": "10.90.1.2"}}},
        "estate.datacenters.dc1.loadbalancers.catalog-1: expected a name no other inventory host or group has: "
        "'catalog-1', the inventory host of a load balancer, is also the inventory host of instance 1 of service "
        "catalog (services.catalog)",
    ),
    "lb-named-like-a-builtin-group": (
        {"estate.datacenters.dc1.loadbalancers": {"lb": {"address": "10.90.1.2"}}},
        "estate.datacenters.dc1.loadbalancers.lb: expected a name no other inventory host or group has: 'lb', the "
        "inventory host of a load balancer, is also the inventory group of every load balancer",
    ),
    "metal-host-named-like-a-node": (
        {"estate.datacenters.dc1.metal": {"test-orders-1": dict(METAL, address="10.90.1.10")}},
        "estate.datacenters.dc1.metal.test-orders-1: expected a name no other node has: 'test-orders-1', the "
        "bare-metal host test-orders-1, is also the node of orders-1, named <env>-<service>-<n> (services.orders)",
    ),
    # every derived value checked where it is derived
    "node-name-longer-than-a-dns-label": (
        {
            "environment.name": "the-environment-name-is-32-chars",
            "services.catalog": DELETE,
            "services.catalog-service-name-is-32-chars": spec()["services"]["catalog"],
            "environment.services.catalog": DELETE,
            "environment.services.catalog-service-name-is-32-chars": {"instances": 4},
        },
        "services.catalog-service-name-is-32-chars: expected a shorter name: the node of "
        "catalog-service-name-is-32-chars-1, named <env>-<service>-<n>, "
        "'the-environment-name-is-32-chars-catalog-service-name-is-32-chars-1' is 67 characters: a node name is one "
        "DNS label of at most 63",
    ),
    "libvirt-network-name-too-long": (
        {
            "environment.name": "the-environment-name-is-32-chars",
            "estate.datacenters.dc2": DELETE,
            "estate.datacenters.datacenter-name-of-32-characters": spec()["estate"]["datacenters"]["dc2"],
        },
        "estate.datacenters.datacenter-name-of-32-characters: expected a shorter datacenter or environment name: "
        "the libvirt network of this datacenter (berth-<environment>-<datacenter>), "
        "'berth-the-environment-name-is-32-chars-datacenter-name-of-32-characters' must be 1-63",
    ),
    "colocated-port-past-65535": (
        {
            "environment.colocation": True,
            "estate.datacenters.dc2": DELETE,
            "estate.datacenters.dc1.hypervisors.hv-b": DELETE,
            "services.catalog.port": 65534,
        },
        "services.catalog.port: catalog-3 would listen on test-hv-a:65536, past 65535 (colocated instances of a "
        "service take consecutive ports from its base port, here 4): expected a base port of at most 65532",
    ),
    # one name and version rule (common.rules) for the spec, the preflights and the drivers
    "version-with-a-space": (
        {"services.catalog.version": "v1 beta"},
        "services.catalog.version: expected a version such as v2, 1.4.0 or 2.0.0-rc1",
    ),
    "version-not-a-string": (
        {"services.catalog.version": 2},
        "services.catalog.version: expected a version as a string: YAML read the unquoted 2 as integer 2; quote "
        "it: version: '2'",
    ),
    "artifact-is-a-path": (
        {"services.catalog.artifact": "../../tmp/evil"},
        "services.catalog.artifact: expected a name of lowercase letters, digits and '-' (max 32, starting with a "
        "letter), got '../../tmp/evil'",
    ),
    "bridge-reserved-name": (
        {"estate.datacenters.dc1.hypervisors.hv-a.bridge": "all"},
        "estate.datacenters.dc1.hypervisors.hv-a.bridge: expected a Linux bridge name (at most 15 letters, digits, "
        "'.', '_' or '-'; not lo, all or default), got 'all'",
    ),
    # one clear message, with a did-you-mean where a name was mistyped
    "plugin-mistyped": (
        {"plugin": "berth.fleet.topolgy"},
        "plugin: expected one of berth.fleet.topology, got 'berth.fleet.topolgy'; did you mean "
        "'berth.fleet.topology'?",
    ),
    "plugin-missing": ({"plugin": DELETE}, "plugin: is required"),
    "port-is-a-boolean": (
        {"services.catalog.port": True},
        "services.catalog.port: expected an integer, got boolean True",
    ),
    "lb-machine-mistyped": (
        {"estate.datacenters.dc1.loadbalancers.lb-dc1.machine": "hv-aa"},
        "estate.datacenters.dc1.loadbalancers.lb-dc1.machine: expected a hypervisor or local machine of "
        "datacenter dc1 (hv-a, hv-b), got 'hv-aa'; did you mean 'hv-a'?",
    ),
    "capacity-summarised": (
        {"services.orders.resources.vcpus": 8},
        "environment.services.catalog.instances: cannot place catalog-3 (needs 1 vCPU / 512 MiB on a hypervisor) "
        "within spread max_skew 1 (instances per datacenter so far: dc1: 1, dc2: 1); available: dc1: 2 "
        "hypervisor(s), 1 already run catalog, the roomiest of the others: hv-b 0/8 vCPU 7680/8192 MiB free; dc2: "
        "2 hypervisor(s), 1 already run catalog, the roomiest of the others: hv-d 0/8 vCPU 7680/8192 MiB free",
    ),
}

# What YAML shows only as written, so these edit the text of the dumped base spec:
# id -> ((text of the base spec, what to write instead, first occurrence only), expected message)
TEXT_CORPUS: dict[str, tuple[tuple[str, str], str]] = {
    "version-read-as-a-number": (
        ("version: v1", "version: 1.10"),
        "services.catalog.version: expected a version as a string: YAML read the unquoted 1.10 as number 1.1; "
        "quote it: version: '1.10'",
    ),
    "version-read-as-octal": (
        ("version: v1", "version: 010"),
        "services.catalog.version: expected a version as a string: YAML read the unquoted 010 as integer 8; "
        "quote it: version: '010'",
    ),
    "duplicate-key": (
        ("  orders:\n", "  catalog:\n    artifact: catalog\n  orders:\n"),
        "services.catalog: duplicate key: defined at line 42 and again at line 53 (YAML keeps only the last, so "
        "the first would be dropped without a word): expected each key once",
    ),
}


def materialise(changes: dict[str, Any]) -> dict[str, Any]:
    raw = spec(**{k: v for k, v in changes.items() if "." in k})
    for key, value in changes.items():
        if "." not in key:
            if value is DELETE:
                del raw[key]
            else:
                raw[key] = value
    return raw


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 25


def test_base_spec_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "base.berth.yml"
    path.write_text(yaml.safe_dump(spec()))
    result = subprocess.run(
        [ANSIBLE_INVENTORY, "-i", str(path), "--list"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_malformed_spec_fails_with_one_clear_message(case: str, tmp_path: Path) -> None:
    changes, expected = CORPUS[case]
    path = tmp_path / f"{case}.berth.yml"
    path.write_text(yaml.safe_dump(materialise(changes), sort_keys=False))
    assert_refused(path, expected)


@pytest.mark.parametrize("case", sorted(TEXT_CORPUS))
def test_spec_text_fails_with_one_clear_message(case: str, tmp_path: Path) -> None:
    (old, new), expected = TEXT_CORPUS[case]
    base = yaml.safe_dump(spec(), sort_keys=False)
    assert old in base
    path = tmp_path / f"{case}.berth.yml"
    path.write_text(base.replace(old, new, 1))
    assert_refused(path, expected)


def assert_refused(path: Path, expected: str) -> None:
    result = subprocess.run(
        [ANSIBLE_INVENTORY, "-i", str(path), "--list"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"{path}: {expected}" in output, output
    # one parser, one message (no fallback parsers adding their own complaints)
    assert output.count("Failed to parse inventory with") == 2, output
    assert SECRET not in output


def test_a_capacity_refusal_stays_one_line_however_large_the_datacenter() -> None:
    """40 machines, all taken: the refusal counts them and shows the roomiest, not every one."""
    from ansible_collections.berth.fleet.plugins.module_utils.model.placement import place
    from ansible_collections.berth.fleet.plugins.module_utils.model.spec import parse_topology
    from ansible_collections.berth.fleet.plugins.module_utils.model.topology import SpecError

    small = dict(HV, capacity={"vcpus": 2, "memory_mib": 8192})
    raw = spec(
        **{
            "estate.datacenters.dc1.hypervisors": {f"hv-{n}": small for n in range(40)},
            "estate.datacenters.dc2": DELETE,
            "services.catalog.resources.vcpus": 2,
            "environment.services": {"catalog": {"instances": 40}, "orders": {"instances": 1}},
        }
    )
    with pytest.raises(SpecError) as refused:
        place(parse_topology(raw, "big.berth.yml"))
    message = str(refused.value)
    assert (
        "available: dc1: 40 hypervisor(s), 39 already run catalog, the roomiest of the others: hv-1 1/2 vCPU"
        in (message)
    )
    assert len(message) < 400, message
