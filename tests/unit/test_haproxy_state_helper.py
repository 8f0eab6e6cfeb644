"""The loadbalancer role's berth-haproxy-state helper: which saved server states may come back.

Pure parts only; the helper against a real HAProxy is tests/integration/test_lb_state.py.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

HELPER = Path(__file__).resolve().parents[2] / "roles" / "loadbalancer" / "files" / "berth-haproxy-state"


def load_helper() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("berth_haproxy_state", str(HELPER))
    spec = importlib.util.spec_from_loader("berth_haproxy_state", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


helper = load_helper()

CONFIG = """\
global
    stats socket /run/haproxy/admin.sock mode 600 level admin
    server-state-file /var/lib/haproxy/server-state

defaults
    mode http
    load-server-state-from-file global

frontend fe_catalog
    bind :8080
    default_backend be_catalog

backend be_catalog  # the catalog instances
    default-server inter 250ms rise 2 fall 2
    server catalog-1 10.73.1.10:8080 check
    server catalog-2 10.73.2.10:8080 check
#   server catalog-9 10.73.2.99:8080 check
listen orders
    bind :8081
    server orders-1 10.73.1.20:8081 check
"""

HEADER = (
    "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight "
    "srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state "
    "srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl "
    "srv_check_port srv_check_addr srv_agent_addr srv_agent_port"
)


def row(backend: str, server: str, address: str, port: int, admin: int = 0, be_id: int = 3) -> str:
    return f"{be_id} {backend} 1 {server} {address} 2 {admin} 1 1 12 6 3 4 6 0 0 0 - {port} - 0 0 - - 0"


def dump(*rows: str) -> str:
    return "\n".join(["1", HEADER, *rows]) + "\n\n"


def test_servers_in_config_reads_backends_and_listen_sections_only() -> None:
    assert helper.servers_in_config(CONFIG) == {
        ("be_catalog", "catalog-1"): ("10.73.1.10", "8080"),
        ("be_catalog", "catalog-2"): ("10.73.2.10", "8080"),
        ("orders", "orders-1"): ("10.73.1.20", "8081"),
    }


def test_only_servers_placed_identically_keep_their_state() -> None:
    state = dump(
        row("be_catalog", "catalog-1", "10.73.1.10", 8080, admin=1),  # unchanged: kept
        row("be_catalog", "catalog-2", "10.73.2.10", 8090, admin=1),  # port moved: dropped
        row("be_catalog", "catalog-3", "10.73.1.11", 8080),  # no longer placed: dropped
        row("orders", "orders-1", "10.73.9.20", 8081),  # address moved: dropped
    )
    text, kept, dropped = helper.keep_matching(state, CONFIG)
    assert (kept, dropped) == (1, 3)
    lines = text.splitlines()
    assert lines[:2] == ["1", HEADER]
    assert lines[2:] == [row("be_catalog", "catalog-1", "10.73.1.10", 8080, admin=1)]


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        ("", "format version 1"),
        ("2\n# be_id be_name\n", "format version 1"),
        ("1\nno header\n", "format version 1"),
        ("1\n# be_id be_name srv_id srv_name\n", "no srv_addr column"),
        (dump("3 be_catalog 1 catalog-1"), "short line"),
    ],
)
def test_a_dump_that_is_not_a_server_state_is_refused(state: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        helper.keep_matching(state, CONFIG)


@pytest.fixture
def fake_socket(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A Runtime API socket that answers every command with the text in answers[0]."""
    path = tmp_path / "admin.sock"
    answers: list[str] = [""]
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _peer = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(answers[0].encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path, answers
    finally:
        stop.set()
        server.close()
        thread.join(timeout=5)


def test_save_writes_the_filtered_dump_atomically(
    tmp_path: Path, fake_socket: tuple[Path, list[str]]
) -> None:
    path, answers = fake_socket
    config, state = tmp_path / "haproxy.cfg", tmp_path / "server-state"
    config.write_text(CONFIG)
    answers[0] = dump(
        row("be_catalog", "catalog-1", "10.73.1.10", 8080, admin=1), row("be_catalog", "gone", "10.0.0.1", 1)
    )
    message = helper.save(str(path), str(config), str(state))
    assert message == f"saved 1 server state(s) to {state}; 1 not placed identically in {config} dropped"
    assert state.read_text().splitlines()[2:] == [row("be_catalog", "catalog-1", "10.73.1.10", 8080, admin=1)]
    assert state.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".server-state.")] == []

    answers[0] = "Unknown command\n"
    message = helper.save(str(path), str(config), str(state))
    assert "cannot use the server state dump" in message and not state.exists()


def test_save_without_haproxy_keeps_the_last_file(tmp_path: Path) -> None:
    config, state = tmp_path / "haproxy.cfg", tmp_path / "server-state"
    config.write_text(CONFIG)
    state.write_text("last saved\n")
    message = helper.save(str(tmp_path / "missing.sock"), str(config), str(state))
    assert "not answering" in message and state.read_text() == "last saved\n"


def test_filter_before_start(tmp_path: Path) -> None:
    config, state = tmp_path / "haproxy.cfg", tmp_path / "server-state"
    config.write_text(CONFIG)
    assert helper.filter_file(str(config), str(state)) == f"no {state}: servers start from the configuration"
    kept = row("be_catalog", "catalog-2", "10.73.2.10", 8080, admin=1)
    state.write_text(dump(kept))
    unchanged = state.stat().st_mtime_ns
    assert helper.filter_file(str(config), str(state)) == f"{state}: 1 server state(s) apply"
    assert state.stat().st_mtime_ns == unchanged  # nothing dropped: not rewritten
    state.write_text(dump(kept, row("be_catalog", "catalog-1", "10.73.1.10", 9999)))
    assert "1 server state(s) apply, 1 not placed identically" in helper.filter_file(str(config), str(state))
    assert state.read_text().splitlines()[2:] == [kept]


def test_main_always_exits_0_and_says_what_it_did(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG)
    argv = ["filter", "--config", str(config), "--state", str(tmp_path / "none")]
    assert helper.main(argv) == 0
    assert capsys.readouterr().err.startswith("berth-haproxy-state filter: no ")
