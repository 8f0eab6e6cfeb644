"""instance_install's node side (drivers/node/install.py) on a temp dir: the artifact crosses the
wire only when the node lacks it, a rerun touches nothing, check mode writes nothing, bad input
changes nothing. (The integration tests run it over SSH on lab nodes through deploy.yml.)"""

from __future__ import annotations

import getpass
import grp
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.common.command import CommandResult
from ansible_collections.berth.fleet.plugins.module_utils.common.fs import sha256_file
from ansible_collections.berth.fleet.plugins.module_utils.drivers.node.install import (
    Installer,
    InstallError,
    InstallRequest,
    files_from,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.node.release import ReleaseRequest
from tests.unit.test_release_and_health import make_package

ME = getpass.getuser()
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


class Commands:
    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        self.seen.append(list(argv))
        return CommandResult(0, "", "")


def built(tmp_path: Path) -> Path:
    """The artifact on the controller."""
    package = tmp_path / "built" / "catalog-v2.tar.gz"
    if not package.exists():
        package.parent.mkdir(parents=True)
        make_package(package, "v2")
    return package


def install_request(
    tmp_path: Path, upload: Path | None = None, user: str = ME, files: tuple = (), sha: str | None = None
) -> InstallRequest:
    return InstallRequest(
        release=ReleaseRequest(
            instance="catalog-1",
            artifact="catalog",
            version="v2",
            state="present",
            package=tmp_path / "node" / "artifacts" / "catalog-v2.tar.gz",
            sha256=sha or sha256_file(built(tmp_path)),
            root=tmp_path / "node" / "opt",
        ),
        user=user,
        files=files
        or files_from(
            [
                {
                    "path": str(tmp_path / "node/etc/catalog-1.json"),
                    "content": "{}\n",
                    "mode": "0640",
                    "group": MY_GROUP,
                    "owner": ME,
                },
                {
                    "path": str(tmp_path / "node/etc/systemd/berth-catalog-1.service"),
                    "content": "[Unit]\n",
                    "owner": ME,
                    "group": MY_GROUP,
                },
            ]
        ),
        upload=upload,
    )


def sent(tmp_path: Path) -> Path:
    """What the action plugin would have transferred into the task's temporary directory."""
    upload = tmp_path / "tmpdir" / "catalog-v2.tar.gz"
    upload.parent.mkdir(exist_ok=True)
    upload.write_bytes(built(tmp_path).read_bytes())
    return upload


def test_asks_for_the_artifact_then_installs_then_touches_nothing(tmp_path: Path) -> None:
    first = Installer(install_request(tmp_path), check_mode=False, runner=Commands()).run()
    assert first.needs_package and not first.changed and not (tmp_path / "node").exists()

    commands = Commands()
    second = Installer(install_request(tmp_path, upload=sent(tmp_path)), False, commands).run()
    assert second.changed and not second.needs_package
    assert second.actions[0].startswith("copy catalog-v2.tar.gz")
    assert any(a.startswith("extract") for a in second.actions)
    assert (tmp_path / "node/opt/releases/catalog-v2/app.py").is_file()
    config = tmp_path / "node/etc/catalog-1.json"
    assert config.read_text() == "{}\n" and config.stat().st_mode & 0o7777 == 0o640
    assert oct((tmp_path / "node/artifacts/catalog-v2.tar.gz").stat().st_mode & 0o777) == "0o644"
    assert commands.seen == []  # the user exists
    assert [d["after_header"] for d in second.diff] == [
        str(config),
        str(tmp_path / "node/etc/systemd/berth-catalog-1.service"),
    ]

    again = Installer(install_request(tmp_path), check_mode=False, runner=Commands()).run()
    assert not again.changed and not again.needs_package and again.actions == []


def test_a_node_holding_the_artifact_needs_no_transfer(tmp_path: Path) -> None:
    Installer(install_request(tmp_path, upload=sent(tmp_path)), False, Commands()).run()
    release = tmp_path / "node/opt/releases/catalog-v2"
    for path in sorted(release.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    release.rmdir()
    result = Installer(install_request(tmp_path), check_mode=False, runner=Commands()).run()
    assert not result.needs_package and result.changed and (release / "app.py").is_file()


def test_check_mode_reports_and_writes_nothing(tmp_path: Path) -> None:
    commands = Commands()
    result = Installer(install_request(tmp_path, user="berth-nosuchuser"), True, commands).run()
    assert result.changed and not result.needs_package
    assert result.actions[:3] == [
        "copy catalog-v2.tar.gz to " + str(tmp_path / "node/artifacts"),
        "extract catalog-v2.tar.gz into " + str(tmp_path / "node/opt/releases/catalog-v2"),
        "create system user berth-nosuchuser",
    ]
    assert len(result.diff) == 2 and result.diff[0]["before"] == "" and result.diff[0]["after"] == "{}\n"
    assert commands.seen == [] and not (tmp_path / "node").exists()


def test_a_missing_user_is_created_as_a_system_user(tmp_path: Path) -> None:
    commands = Commands()
    request = install_request(tmp_path, upload=sent(tmp_path), user="berth-nosuchuser")
    Installer(request, check_mode=False, runner=commands).run()
    assert commands.seen == [
        [
            "useradd",
            "--system",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
            "--home-dir",
            "/nonexistent",
            "--no-create-home",
            "berth-nosuchuser",
        ]
    ]


def test_mode_only_change_is_reported_without_a_content_diff(tmp_path: Path) -> None:
    Installer(install_request(tmp_path, upload=sent(tmp_path)), False, Commands()).run()
    config = tmp_path / "node/etc/catalog-1.json"
    config.chmod(0o644)
    result = Installer(install_request(tmp_path), check_mode=False, runner=Commands()).run()
    assert result.actions == [f"set {config} to {ME}:{MY_GROUP} 0640"] and result.diff == []
    assert config.stat().st_mode & 0o7777 == 0o640


def test_a_corrupt_transfer_is_refused_and_nothing_is_staged(tmp_path: Path) -> None:
    upload = sent(tmp_path)
    upload.write_bytes(b"not the artifact")
    with pytest.raises(InstallError, match="refusing to use it"):
        Installer(install_request(tmp_path, upload=upload), False, Commands()).run()
    assert not (tmp_path / "node/opt/releases").exists()


def test_a_version_is_immutable(tmp_path: Path) -> None:
    Installer(install_request(tmp_path, upload=sent(tmp_path)), False, Commands()).run()
    with pytest.raises(InstallError, match="a version is immutable"):
        Installer(install_request(tmp_path, sha="0" * 64), check_mode=False, runner=Commands()).run()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"user": "Root!"}, "is not a system user name"),
        ({"files": files_from([{"path": "etc/x", "content": ""}])}, "must be an absolute path"),
        ({"files": files_from([{"path": "/etc/x", "content": ""}] * 2)}, "each path once"),
    ],
)
def test_bad_input_is_refused_before_anything_is_touched(tmp_path: Path, change: dict, message: str) -> None:
    request = install_request(tmp_path, upload=sent(tmp_path))
    bad = InstallRequest(**{**request.__dict__, **change})
    with pytest.raises(InstallError, match=message):
        Installer(bad, check_mode=False, runner=Commands()).run()
    assert not (tmp_path / "node").exists()


def test_a_mode_that_is_not_octal_is_refused() -> None:
    with pytest.raises(InstallError, match="is not octal"):
        files_from([{"path": "/etc/x", "content": "", "mode": "rw-r--r--"}])
