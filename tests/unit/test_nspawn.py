"""nspawn machines without root: validation, rendered files, /proc and cgroup parsing, state files,
and the manager against a fake /proc, a fake ssh-keygen and a fake rootfs."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.common.command import CommandResult
from ansible_collections.berth.fleet.plugins.module_utils.common.procfs import mount_points, parse_proc_stat
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn import machine as _nspawn
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn import process as _process
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.argv import nspawn_argv
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.cgroups import (
    Hierarchy,
    limit_writes,
    machine_cgroups,
    parse_cgroup_hierarchies,
    read_cgroup_limits,
    remove_cgroups,
)
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.config import (
    MachineRequest,
    RunState,
    config_from_json,
    config_to_json,
    machine_files,
    render_network_unit,
    validate_request,
)
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.errors import NspawnError
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.machine import NspawnMachine
from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.proc import (
    is_our_nspawn,
    listening_ports,
    local_ipv4_addresses,
)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDhUH0qPgdRIKSNg9wTEvc08OG+VP02bR7KiajaPkVJL berth@test"

# This machine: cgroup v1 controllers, name=systemd, and an empty cgroup2 at /sys/fs/cgroup/unified.
MOUNTINFO_HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PROC_CGROUP_HYBRID = """\
9:name=systemd:/
8:pids:/
4:memory:/process_api/0d3b
2:cpuacct:/
1:cpu:/
0::/
"""
MOUNTINFO_V2 = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
PROC_CGROUP_V2 = "0::/user.slice/session-1.scope\n"

FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.77.1.0/24 2 0 2
        +-- 10.77.1.0/28 2 0 2
           |-- 10.77.1.0
              /24 link UNICAST
           |-- 10.77.1.10
              /32 host LOCAL
        |-- 10.77.1.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
"""
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1145 1
   1: 0A4D010A:0016 0A4D0101:C350 01 00000000:00000000 00:00000000 00000000     0        0 1146 1
   2: 0100007F:0050 00000000:0000 06 00000000:00000000 00:00000000 00000000     0        0 1147 1
"""


def request(**overrides: object) -> MachineRequest:
    values: dict[str, object] = {
        "name": "web-1",
        "rootfs": "/var/lib/berth/images/lab-1/rootfs",
        "namespace": "berth-t",
        "bridge": "bl-dc1",
        "address": "10.77.1.10/24",
        "gateway": "10.77.1.1",
        "authorized_key": KEY,
    }
    values.update(overrides)
    return MachineRequest(**values)  # type: ignore[arg-type]


# --- validation and resolution ------------------------------------------------------------------


def test_a_valid_request_has_no_problems() -> None:
    assert validate_request(request()) == []


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"name": "Web_1"}, "name"),
        ({"name": "-web"}, "name"),
        ({"name": "a" * 65}, "name"),
        ({"state": "started"}, "state"),
        ({"hostname": "web 1"}, "hostname"),
        ({"namespace": "../x"}, "namespace"),
        ({"bridge": "a-very-long-bridge"}, "at most 15"),
        ({"rootfs": "relative/rootfs"}, "absolute"),
        ({"rootfs": "/a,b/rootfs"}, "overlayfs"),
        ({"address": "10.77.1.10"}, "prefix"),
        ({"address": "10.77.1.300/24"}, "address"),
        ({"gateway": "gw"}, "gateway"),
        ({"authorized_key": "not a key"}, "authorized_key"),
        ({"cpu_quota": -1}, "cpu_quota"),
        ({"memory_max": 8}, "memory_max"),
        ({"memory_max": -5}, "memory_max"),
        ({"machines_dir": Path("rel")}, "machines_dir"),
        ({"wait_timeout": 0}, "wait_timeout"),
    ],
)
def test_invalid_requests_are_reported(overrides: dict[str, object], fragment: str) -> None:
    problems = validate_request(request(**overrides))
    assert any(fragment in problem for problem in problems), problems


def test_from_params_raises_one_clear_message() -> None:
    with pytest.raises(NspawnError, match=r"invalid parameters for machine 'web-1': address"):
        MachineRequest.from_params({"name": "web-1", "address": "10.77.1.10"})


def test_creating_needs_rootfs_namespace_bridge_address_and_key() -> None:
    bare = MachineRequest(name="web-1")
    with pytest.raises(NspawnError, match="rootfs, namespace, bridge, address, authorized_key"):
        bare.resolve(None)
    # check mode: the image, key or bridge may come from earlier tasks that did not run
    assert bare.resolve(None, strict=False).name == "web-1"


def test_resolve_defaults_hostname_and_keeps_recorded_values() -> None:
    config = request().resolve(None)
    assert config.hostname == "web-1" and config.ip == "10.77.1.10"
    again = MachineRequest(name="web-1", namespace="berth-t").resolve(config)
    assert again == config  # nothing given: everything kept (limits were unset and stay unset)


def test_omitted_limits_are_kept_and_zero_lifts_them() -> None:
    limited = request(cpu_quota=50, memory_max=256).resolve(None)
    kept = MachineRequest(name="web-1", namespace="berth-t").resolve(limited)
    assert (kept.cpu_quota, kept.memory_max) == (50, 256)
    lifted = MachineRequest(name="web-1", namespace="berth-t", cpu_quota=0, memory_max=0).resolve(limited)
    assert (lifted.cpu_quota, lifted.memory_max) == (None, None)
    assert validate_request(request(cpu_quota=0, memory_max=0)) == []


def test_resolve_refuses_to_move_a_machine_to_another_rootfs() -> None:
    config = request().resolve(None)
    with pytest.raises(NspawnError, match="Recreate it"):
        request(rootfs="/var/lib/berth/images/lab-2/rootfs").resolve(config)


@pytest.mark.parametrize(
    ("gateway", "fragment"), [("10.77.2.1", "not in the machine's subnet"), ("10.77.1.10", "own")]
)
def test_resolve_checks_the_gateway(gateway: str, fragment: str) -> None:
    with pytest.raises(NspawnError, match=fragment):
        request(gateway=gateway).resolve(None)


# --- files written into the machine -------------------------------------------------------------


def test_network_unit_and_hosts() -> None:
    config = request(hostname="web-1.dc1.lab").resolve(None)
    unit = render_network_unit(config)
    assert "[Match]\nName=host0\n" in unit
    assert "Address=10.77.1.10/24\nGateway=10.77.1.1\n" in unit
    assert "LinkLocalAddressing=no" in unit
    files = machine_files(config)
    assert files["etc/hostname"] == ("web-1.dc1.lab\n", 0o644)
    assert "10.77.1.10\tweb-1.dc1.lab web-1\n" in files["etc/hosts"][0]
    assert files["root/.ssh/authorized_keys"] == (KEY + "\n", 0o600)
    assert "Gateway" not in render_network_unit(request(gateway=None).resolve(None))


def test_nspawn_argv_enters_only_the_lab_network_namespace() -> None:
    argv = nspawn_argv(request().resolve(None), Path("/m/web-1/merged"))
    assert argv[:3] == ["nsenter", "--net=/run/netns/berth-t", "systemd-nspawn"]
    for flag in ("--boot", "--register=no", "--keep-unit", "--console=passive", "--network-bridge=bl-dc1"):
        assert flag in argv
    assert "--machine=web-1" in argv and argv[-2:] == ["-D", "/m/web-1/merged"]
    assert not any(arg.startswith("--property") for arg in argv)  # ignored without systemd as PID 1


def test_binds_are_host_paths_bound_at_the_same_path_and_a_boot_setting(tmp_path: Path) -> None:
    shared = tmp_path / "state"
    shared.mkdir()
    config = request(binds=(str(shared),)).resolve(None)
    argv = nspawn_argv(config, Path("/m/web-1/merged"))
    assert f"--bind={shared}" in argv and argv.index(f"--bind={shared}") < argv.index("-D")
    assert config.boot_relevant() != request().resolve(None).boot_relevant()  # a running machine restarts
    assert config_from_json(config_to_json(config)) == config
    old_record = config_to_json(request().resolve(None)).replace('  "binds": [],\n', "")
    assert config_from_json(old_record).binds == ()  # machines made before binds existed
    assert request().resolve(config).binds == config.binds  # omitted keeps them
    assert request(binds=()).resolve(config).binds == ()
    for bad, why in (("state", "must be an absolute host path"), (str(tmp_path / "none"), "does not exist")):
        with pytest.raises(NspawnError, match=why):
            MachineRequest.from_params({"name": "web-1", "binds": [bad]})


# --- records ------------------------------------------------------------------------------------


def test_config_and_run_state_round_trip() -> None:
    config = request(cpu_quota=50, memory_max=256).resolve(None)
    assert config_from_json(config_to_json(config)) == config
    run = RunState(
        pid=42, start_ticks=123, cgroups={"memory": "/sys/fs/cgroup/memory/berth/web-1"}, started_at=1.5
    )
    assert RunState.from_json(run.to_json()) == run


# --- /proc parsing ------------------------------------------------------------------------------


def test_parse_proc_stat_survives_odd_process_names() -> None:
    fields = " ".join(str(n) for n in range(5, 53))  # field numbers 5.. as their own values
    parsed = parse_proc_stat(f"4242 (a) b (c)) S 17 {fields}")
    assert (parsed.state, parsed.ppid) == ("S", 17)
    assert parsed.start_ticks == 22


@pytest.mark.parametrize(
    ("cmdline", "ours"),
    [
        (b"systemd-nspawn\0--boot\0--machine=web-1\0-D\0/m\0", True),
        (b"/usr/bin/systemd-nspawn\0--machine=web-1\0", True),
        (b"systemd-nspawn\0--machine=web-10\0", False),
        (b"sleep\0--machine=web-1\0", False),
        (b"nsenter\0--net=/run/netns/x\0systemd-nspawn\0--machine=web-1\0", False),
        (b"", False),
    ],
)
def test_is_our_nspawn(cmdline: bytes, ours: bool) -> None:
    assert is_our_nspawn(cmdline, "web-1") is ours


def test_mount_points_unescapes() -> None:
    info = "46 27 0:39 / /var/lib/berth/machines/a\\040b/merged rw - overlay overlay rw\n"
    assert "/var/lib/berth/machines/a b/merged" in mount_points(info)


def test_listening_ports_and_local_addresses() -> None:
    assert listening_ports(TCP) == {22}
    assert local_ipv4_addresses(FIB_TRIE) == {"10.77.1.10", "127.0.0.1"}


# --- cgroups ------------------------------------------------------------------------------------


def test_hybrid_hierarchies_and_machine_cgroups_nest_under_the_callers_cgroup() -> None:
    hierarchies = parse_cgroup_hierarchies(
        MOUNTINFO_HYBRID, PROC_CGROUP_HYBRID, {"/sys/fs/cgroup/unified": ""}
    )
    roles = {role: h.mount for h in hierarchies for role in h.roles()}
    assert roles == {
        "cpu": "/sys/fs/cgroup/cpu",
        "memory": "/sys/fs/cgroup/memory",
        "systemd": "/sys/fs/cgroup/systemd",
        "unified": "/sys/fs/cgroup/unified",
    }
    assert machine_cgroups(hierarchies, "web-1") == {
        "cpu": "/sys/fs/cgroup/cpu/berth/web-1",
        "memory": "/sys/fs/cgroup/memory/process_api/0d3b/berth/web-1",
        "systemd": "/sys/fs/cgroup/systemd/berth/web-1",
        "unified": "/sys/fs/cgroup/unified/berth/web-1",
    }


def test_v1_limits_and_lifting_them() -> None:
    hierarchies = parse_cgroup_hierarchies(MOUNTINFO_HYBRID, PROC_CGROUP_HYBRID)
    cgroups = machine_cgroups(hierarchies, "web-1")
    assert limit_writes(hierarchies, cgroups, cpu_quota=50, memory_max=256) == [
        ("/sys/fs/cgroup/memory/process_api/0d3b/berth/web-1/memory.limit_in_bytes", str(256 * 1024 * 1024)),
        ("/sys/fs/cgroup/cpu/berth/web-1/cpu.cfs_period_us", "100000"),
        ("/sys/fs/cgroup/cpu/berth/web-1/cpu.cfs_quota_us", "50000"),
    ]
    lifted = dict(limit_writes(hierarchies, cgroups, cpu_quota=None, memory_max=None))
    assert lifted["/sys/fs/cgroup/cpu/berth/web-1/cpu.cfs_quota_us"] == "-1"
    assert lifted["/sys/fs/cgroup/memory/process_api/0d3b/berth/web-1/memory.limit_in_bytes"] == "-1"


def test_v2_limits() -> None:
    hierarchies = parse_cgroup_hierarchies(
        MOUNTINFO_V2, PROC_CGROUP_V2, {"/sys/fs/cgroup": "cpuset cpu io memory pids"}
    )
    cgroups = machine_cgroups(hierarchies, "web-1")
    directory = "/sys/fs/cgroup/user.slice/session-1.scope/berth/web-1"
    assert set(cgroups.values()) == {directory} and set(cgroups) == {"unified", "systemd", "memory", "cpu"}
    assert limit_writes(hierarchies, cgroups, cpu_quota=150, memory_max=64) == [
        (f"{directory}/memory.max", str(64 * 1024 * 1024)),
        (f"{directory}/cpu.max", "150000 100000"),
    ]
    assert limit_writes(hierarchies, cgroups, None, None) == [
        (f"{directory}/memory.max", "max"),
        (f"{directory}/cpu.max", "max 100000"),
    ]


def test_a_limit_without_its_controller_is_an_error() -> None:
    hierarchies = parse_cgroup_hierarchies(MOUNTINFO_V2, PROC_CGROUP_V2, {"/sys/fs/cgroup": "pids"})
    cgroups = machine_cgroups(hierarchies, "web-1")
    with pytest.raises(NspawnError, match="memory_max"):
        limit_writes(hierarchies, cgroups, cpu_quota=None, memory_max=64)
    with pytest.raises(NspawnError, match="cpu_quota"):
        limit_writes(hierarchies, cgroups, cpu_quota=50, memory_max=None)
    assert limit_writes(hierarchies, cgroups, None, None) == []


def test_read_cgroup_limits(tmp_path: Path) -> None:
    hierarchies = [
        Hierarchy(str(tmp_path / "memory"), 1, frozenset({"memory"}), "/"),
        Hierarchy(str(tmp_path / "cpu"), 1, frozenset({"cpu"}), "/"),
    ]
    cgroups = machine_cgroups(hierarchies, "web-1")
    for path in cgroups.values():
        os.makedirs(path)
    Path(cgroups["memory"], "memory.limit_in_bytes").write_text(f"{256 * 1024 * 1024}\n")
    Path(cgroups["cpu"], "cpu.cfs_quota_us").write_text("50000\n")
    assert read_cgroup_limits(hierarchies, cgroups) == {"cpu_quota": 50, "memory_max": 256}
    Path(cgroups["memory"], "memory.limit_in_bytes").write_text("9223372036854771712\n")
    Path(cgroups["cpu"], "cpu.cfs_quota_us").write_text("-1\n")
    assert read_cgroup_limits(hierarchies, cgroups) == {"cpu_quota": None, "memory_max": None}


def test_remove_cgroups_removes_trees_bottom_up_and_the_empty_berth_parent(tmp_path: Path) -> None:
    top = tmp_path / "berth" / "web-1"
    (top / "payload" / "system.slice" / "ssh.service").mkdir(parents=True)
    (top / "supervisor").mkdir()
    (tmp_path / "berth" / "web-2").mkdir()
    assert remove_cgroups([str(top)]) == []
    assert not top.exists() and (tmp_path / "berth").exists()  # web-2 still lives there
    assert remove_cgroups([str(tmp_path / "berth" / "web-2")]) == []
    assert not (tmp_path / "berth").exists()


# --- the manager against fakes ------------------------------------------------------------------


class FakeTools:
    """ssh-keygen writes a key pair; ip/mount/umount succeed and are recorded."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        args = list(argv)
        self.calls.append(args)
        if args[0] == "ssh-keygen":
            target = Path(args[args.index("-f") + 1])
            target.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
            os.chmod(target, 0o600)
            Path(f"{target}.pub").write_text(f"ssh-ed25519 AAAAHOSTKEY{len(self.calls)} root@{args[-3]}\n")
        return CommandResult(0, "", "")


@pytest.fixture
def lab(tmp_path: Path) -> dict[str, Path]:
    rootfs = tmp_path / "image" / "rootfs"
    (rootfs / "usr/lib/systemd").mkdir(parents=True)
    (rootfs / "usr/lib/systemd/systemd").write_text("")
    for directory, mode in (
        ("etc", 0o755),
        ("etc/ssh", 0o755),
        ("root", 0o700),
        ("etc/systemd/network", 0o755),
    ):
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
        os.chmod(rootfs / directory, mode)
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text("22 1 254:0 / / rw - ext4 /dev/vda rw\n")
    return {"rootfs": rootfs, "machines": tmp_path / "machines", "proc": proc}


def machine(lab: dict[str, Path], tools: FakeTools | None = None, **overrides: object) -> NspawnMachine:
    values: dict[str, object] = {"rootfs": str(lab["rootfs"]), "machines_dir": lab["machines"]}
    values.update(overrides)
    return NspawnMachine(request(**values), runner=tools or FakeTools(), hierarchies=[], proc=lab["proc"])


def fake_process(proc: Path, pid: int, cmdline: bytes, start_ticks: int = 777, state: str = "S") -> None:
    fields = " ".join(["0"] * 17) + f" {start_ticks} " + " ".join(["0"] * 30)
    (proc / str(pid)).mkdir(parents=True, exist_ok=True)
    (proc / str(pid) / "stat").write_text(f"{pid} (proc) {state} 1 {fields}\n")
    (proc / str(pid) / "cmdline").write_bytes(cmdline)


def test_check_mode_on_a_fresh_machine_touches_nothing(lab: dict[str, Path]) -> None:
    tools = FakeTools()
    result = machine(lab, tools, state="present").ensure(check_mode=True)
    assert result.changed and result.after["state"] == "stopped"
    assert result.before == {"state": "absent"}
    assert not lab["machines"].exists() and tools.calls == []
    assert result.as_dict()["host_key"] is None


def test_present_creates_the_upper_layer_with_berths_files(lab: dict[str, Path]) -> None:
    result = machine(lab, state="present", hostname="web-1.dc1").ensure(check_mode=False)
    assert result.changed and result.state == "stopped"
    upper = lab["machines"] / "web-1" / "upper"
    assert (upper / "etc/hostname").read_text() == "web-1.dc1\n"
    assert "Address=10.77.1.10/24" in (upper / "etc/systemd/network/10-host0.network").read_text()
    assert (upper / "root/.ssh/authorized_keys").read_text() == KEY + "\n"
    assert stat.S_IMODE((upper / "root/.ssh/authorized_keys").stat().st_mode) == 0o600
    # directories created in the upper layer keep the lower layer's modes (/root stays private)
    assert stat.S_IMODE((upper / "root").stat().st_mode) == 0o700
    assert stat.S_IMODE((upper / "root/.ssh").stat().st_mode) == 0o700
    assert stat.S_IMODE((upper / "etc").stat().st_mode) == 0o755
    assert (upper / "etc/ssh/ssh_host_ed25519_key").is_file()
    assert result.host_key is not None and result.host_key.startswith("ssh-ed25519 AAAAHOSTKEY")
    returned = result.as_dict()
    assert returned["known_hosts_line"] == f"10.77.1.10 {result.host_key}"
    recorded = json.loads((lab["machines"] / "web-1" / "machine.json").read_text())
    assert recorded["address"] == "10.77.1.10/24" and recorded["hostname"] == "web-1.dc1"


def test_present_twice_is_idempotent_and_keeps_the_host_key(lab: dict[str, Path]) -> None:
    first = machine(lab, state="present").ensure(check_mode=False)
    tools = FakeTools()
    second = machine(lab, tools, state="present").ensure(check_mode=False)
    assert not second.changed and second.actions == []
    assert second.host_key == first.host_key
    assert not any(call[0] == "ssh-keygen" for call in tools.calls)


def test_reconfiguring_a_stopped_machine_rewrites_its_files(lab: dict[str, Path]) -> None:
    machine(lab, state="present").ensure(check_mode=False)
    result = machine(lab, state="present", address="10.77.1.11/24").ensure(check_mode=False)
    assert result.changed and result.actions == ["reconfigure address"]
    assert result.before["address"] == "10.77.1.10/24" and result.after["address"] == "10.77.1.11/24"
    upper = lab["machines"] / "web-1" / "upper"
    assert "Address=10.77.1.11/24" in (upper / "etc/systemd/network/10-host0.network").read_text()


def test_running_needs_the_lab_network_and_says_so(
    lab: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_nspawn, "netns_path", lambda namespace: lab["proc"] / "no-such-netns")
    with pytest.raises(NspawnError, match="network namespace berth-t does not exist"):
        machine(lab, state="running").ensure(check_mode=False)
    assert not (lab["machines"] / "web-1").exists()  # validated before anything was touched
    checked = machine(lab, state="running").ensure(check_mode=True)
    assert checked.changed and any("does not exist" in warning for warning in checked.warnings)


def test_a_recorded_pid_that_is_not_our_nspawn_is_never_signalled(
    lab: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    machine(lab, state="present").ensure(check_mode=False)
    state_file = lab["machines"] / "web-1" / "state.json"
    state_file.write_text(RunState(pid=4242, start_ticks=777, cgroups={}, started_at=0).to_json())
    fake_process(lab["proc"], 4242, b"sleep\x00--machine=web-1\x00")  # PID reused by something else

    def refuse(pid: int, sig: int) -> None:
        raise AssertionError(f"signalled {pid}")

    monkeypatch.setattr(_process.os, "kill", refuse)
    observed = machine(lab).observe()
    assert observed.run is None and observed.stale_run is not None and observed.state == "stopped"
    result = machine(lab, state="stopped").ensure(check_mode=False)
    assert result.actions == ["clean up after a machine that died"]
    assert not state_file.exists()


@pytest.mark.parametrize(
    ("cmdline", "start_ticks", "state", "ours"),
    [
        (b"systemd-nspawn\x00--machine=web-1\x00", 777, "S", True),
        (b"systemd-nspawn\x00--machine=web-1\x00", 778, "S", False),  # same PID, started later: reused
        (b"systemd-nspawn\x00--machine=web-1\x00", 777, "Z", False),  # exited, not yet reaped
        (b"systemd-nspawn\x00--machine=web-2\x00", 777, "S", False),
    ],
)
def test_is_ours_checks_start_time_state_and_cmdline(
    lab: dict[str, Path], cmdline: bytes, start_ticks: int, state: str, ours: bool
) -> None:
    fake_process(lab["proc"], 4242, cmdline, start_ticks=start_ticks, state=state)
    assert machine(lab)._is_ours(4242, 777) is ours


def test_a_running_machine_is_reported_running_without_changes(
    lab: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    machine(lab, state="present").ensure(check_mode=False)
    (lab["machines"] / "web-1" / "state.json").write_text(
        RunState(pid=4242, start_ticks=777, cgroups={}, started_at=0).to_json()
    )
    fake_process(lab["proc"], 4242, b"systemd-nspawn\x00--machine=web-1\x00")
    monkeypatch.setattr(_nspawn, "netns_path", lambda namespace: lab["proc"])
    result = machine(lab, state="running", wait=False).ensure(check_mode=False)
    assert not result.changed and result.state == "running" and result.pid == 4242


def test_absent_removes_the_machine_directory(lab: dict[str, Path]) -> None:
    machine(lab, state="present").ensure(check_mode=False)
    assert machine(lab, state="absent").ensure(check_mode=True).changed
    assert (lab["machines"] / "web-1").exists()
    result = machine(lab, state="absent").ensure(check_mode=False)
    assert result.changed and result.state == "absent"
    assert not (lab["machines"] / "web-1").exists()
    assert not machine(lab, state="absent").ensure(check_mode=False).changed


def test_a_changed_rootfs_is_refused(lab: dict[str, Path], tmp_path: Path) -> None:
    machine(lab, state="present").ensure(check_mode=False)
    other = tmp_path / "other" / "rootfs"
    (other / "usr/lib/systemd").mkdir(parents=True)
    (other / "usr/lib/systemd/systemd").write_text("")
    with pytest.raises(NspawnError, match="Recreate it"):
        machine(lab, state="present", rootfs=str(other)).ensure(check_mode=False)


def test_a_machine_that_ran_out_of_inotify_instances_says_what_to_do() -> None:
    from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.process import boot_hint

    console = (
        "Welcome to Debian GNU/Linux 12 (bookworm)!\n"
        "Failed to create control group inotify object: Too many open files\n"
        "Failed to allocate manager object: Too many open files\n"
    )
    hint = boot_hint(console)
    assert hint.startswith("the host ran out of inotify instances (fs.inotify.max_user_instances = ")
    assert "sysctl -w fs.inotify.max_user_instances=1024" in hint
    assert boot_hint("Welcome to Debian GNU/Linux 12 (bookworm)!\nReached target multi-user.target\n") == ""
