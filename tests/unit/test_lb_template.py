"""The loadbalancer role's HAProxy configuration, rendered by Ansible from a topology inventory
(the real template, the real filters) and checked by the real ``haproxy -c``: a service in
parallel run gets its copy lines in its user frontend, and only that frontend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.unit.specs import spec

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ROLE = ROOT / "roles" / "loadbalancer"


def rendered(tmp_path: Path, raw: dict[str, object]) -> str:
    """haproxy.cfg.j2 for lb-dc1 of the spec, with the route maps under tmp_path (haproxy -c reads them)."""
    source = tmp_path / "t.berth.yml"
    source.write_text(yaml.safe_dump(raw))
    out, routes = tmp_path / "haproxy.cfg", tmp_path / "routes"
    routes.mkdir()
    play = [
        {
            "name": "render",
            "hosts": "lb-dc1",
            "gather_facts": False,
            "connection": "local",
            "vars_files": [str(ROLE / "defaults" / "main.yml"), str(ROLE / "vars" / "main.yml")],
            "tasks": [
                {
                    "name": "Render",
                    "ansible.builtin.copy": {
                        "content": "{{ lookup('ansible.builtin.template', '"
                        + str(ROLE / "templates" / "haproxy.cfg.j2")
                        + "') }}",
                        "dest": str(out),
                        "mode": "0644",
                    },
                    "delegate_to": "localhost",
                }
            ],
        }
    ]
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump(play))
    extra = {"loadbalancer_routes_dir": str(routes), "ansible_python_interpreter": sys.executable}
    run = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(source), str(playbook), "-e", json.dumps(extra)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for service in ("catalog", "orders"):
        (routes / f"{service}.map").write_text("live be_x\n")
    return out.read_text()


def test_a_service_in_parallel_run_logs_its_copies_and_haproxy_takes_the_configuration(
    tmp_path: Path,
) -> None:
    raw = spec(
        **{
            "environment.services.orders.parallel_run": {"sample": 0.25, "methods": ["GET"]},
            "environment.services.orders.strategy": {"blue_green": {"preview_port": 18090}},
        }
    )
    config = rendered(tmp_path, raw)
    frontends = {block.split("\n", 1)[0]: block for block in config.split("\nfrontend ")[1:]}
    orders = frontends["fe_orders"]
    assert "    log unix@/run/berth-mirror/orders/copies.sock len 65535 format raw local0 info\n" in orders
    assert "if { method GET } { rand(1000) lt 250 }" in orders
    assert "unix@" not in frontends["fe_orders_preview"] and "unix@" not in frontends["fe_catalog"]
    check = subprocess.run(
        ["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_database_cluster_gets_a_write_and_a_read_endpoint_checked_on_patroni(tmp_path: Path) -> None:
    from tests.unit.test_database_spec import with_databases

    config = rendered(tmp_path, with_databases())
    blocks = {block.split("\n", 1)[0]: block for block in config.split("\nlisten ")[1:]}
    assert sorted(blocks) == [
        "db_orders_db_read",
        "db_orders_db_write",
        "db_shared_db_read",
        "db_shared_db_write",
    ]
    write, read = blocks["db_orders_db_write"], blocks["db_orders_db_read"]
    assert "    mode tcp\n" in write and "    bind :15432\n" in write and "    bind :15433\n" in read
    assert "http-check send meth GET uri /primary\n" in write
    assert "http-check send meth GET uri /replica?lag=1048576\n" in read
    for block in (write, read):
        assert "on-marked-down shutdown-sessions" in block
        servers = [line.split() for line in block.splitlines() if line.strip().startswith("server ")]
        assert [s[1] for s in servers] == ["orders-db-1", "orders-db-2", "orders-db-3"]
        assert {(s[2].split(":")[1], s[-1]) for s in servers} == {("5432", "8008")}
    check = subprocess.run(
        ["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # nothing about these sections (the state file is the LB's, absent here)
    warnings = [line for line in (check.stdout + check.stderr).splitlines() if "WARNING" in line]
    assert not [w for w in warnings if "server state file" not in w], warnings
