"""The controller's ssh socket forwards (common/sshforward.py): built from a host's Ansible
connection variables, private on disk, and honest about failures. The lab's rollout tests use
them for real (a forwarded HAProxy Runtime API socket per load balancer, through real sshd)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.common.sshforward import (
    ForwardError,
    SocketForward,
    SshTarget,
    private_directory,
)


def test_the_target_is_what_ansible_uses_for_the_host() -> None:
    target = SshTarget.from_hostvars(
        "lb-dc1",
        {
            "ansible_host": "10.70.1.2",
            "ansible_user": "root",
            "ansible_port": 2222,
            "ansible_ssh_private_key_file": "/keys/id",
            "ansible_ssh_common_args": "-o UserKnownHostsFile=/k -o StrictHostKeyChecking=yes -o 'ProxyCommand=nc %h %p'",
            "ansible_ssh_extra_args": "-o ConnectTimeout=5",
        },
    )
    argv = target.ssh("-O", "check")
    assert argv[:2] == ["ssh", "-o"] and argv[-1] == "10.70.1.2"
    assert "StrictHostKeyChecking=yes" in argv and "ProxyCommand=nc %h %p" in argv  # split as a shell would
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "root"
    assert argv[argv.index("-i") + 1] == "/keys/id" and "ConnectTimeout=5" in argv
    assert SshTarget.from_hostvars("lb", {}).ssh()[-1] == "lb"  # no ansible_host: the inventory name


def test_only_ssh_connections_can_forward() -> None:
    with pytest.raises(ForwardError, match="lb-dc1: ansible_connection is 'local'"):
        SshTarget.from_hostvars("lb-dc1", {"ansible_connection": "local"})


def test_the_socket_directory_is_private_and_refused_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    directory = private_directory("lb-runtime:/run/haproxy/admin.sock")
    assert directory.parent == tmp_path and stat.S_IMODE(directory.stat().st_mode) == 0o700
    # a Unix socket path must stay short (108 bytes): what Berth adds below TMPDIR is under 40
    assert len(str(directory / "lb-dc1.ctl")) - len(str(tmp_path)) < 40
    assert private_directory("lb-runtime:/run/haproxy/admin.sock") == directory
    os.chmod(directory, 0o755)
    with pytest.raises(ForwardError, match="mode 0700: refusing to use it"):
        private_directory("lb-runtime:/run/haproxy/admin.sock")


def test_a_forward_that_cannot_be_set_up_names_the_host_and_why(tmp_path: Path) -> None:
    # an address that nothing answers on: ssh fails quickly (no ProxyCommand, port 9 on loopback)
    target = SshTarget(
        "lb-dc9", "127.0.0.1", port=9, args=("-o", "ConnectTimeout=2", "-o", "StrictHostKeyChecking=yes")
    )
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    forward = SocketForward(target, "/run/haproxy/admin.sock", directory)
    with pytest.raises(
        ForwardError, match=r"lb-dc9: cannot forward /run/haproxy/admin.sock over ssh to 127.0.0.1 \(rc=255\)"
    ):
        forward.ensure()
    assert not forward.running() and not forward.local_path.exists()


def test_two_estates_with_the_same_lb_name_never_share_a_forward(tmp_path: Path) -> None:
    lab = SocketForward(SshTarget("lb-dc1", "10.70.1.2"), "/run/haproxy/admin.sock", tmp_path)
    bench = SocketForward(SshTarget("lb-dc1", "10.71.1.2"), "/run/haproxy/admin.sock", tmp_path)
    assert lab.local_path != bench.local_path and lab.control_path != bench.control_path
    assert lab.local_path.name.startswith("lb-dc1-") and len(str(lab.control_path)) < 100
