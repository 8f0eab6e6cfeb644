"""The lab's emulated BMC (lab_bmc): validation, identity of a running emulator, what stop touches."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.common.command import CommandResult
from ansible_collections.berth.fleet.plugins.module_utils.local import labbmc as _labbmc
from ansible_collections.berth.fleet.plugins.module_utils.local.labbmc import BmcSpec, LabBmc, LabBmcError


def spec(tmp_path: Path, **changes: str) -> BmcSpec:
    values = {
        "name": "bm-1",
        "domain": "lab-bm-1",
        "address": "http://127.0.0.1:18201",
        "username": "berth",
        "password": "s3cret-pass",
    }
    values.update(changes)
    return BmcSpec(base_dir=tmp_path, **values)


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("https://127.0.0.1:18201", "must be http://127.0.0.1:<port>"),
        ("http://10.0.0.5:8000", "must be http://127.0.0.1:<port>"),
        ("http://127.0.0.1", "must be http://127.0.0.1:<port>"),
    ],
)
def test_a_lab_bmc_listens_on_loopback_only(tmp_path: Path, address: str, problem: str) -> None:
    with pytest.raises(LabBmcError, match=problem):
        spec(tmp_path, address=address).validate()


@pytest.mark.parametrize("field", ["name", "domain", "username", "password"])
def test_empty_identity_is_refused(tmp_path: Path, field: str) -> None:
    with pytest.raises(LabBmcError):
        spec(tmp_path, **{field: ""}).validate()


def test_the_fingerprint_follows_the_configuration_but_never_holds_the_password(tmp_path: Path) -> None:
    base = LabBmc(spec(tmp_path)).fingerprint("uuid-1")
    assert "s3cret-pass" not in base
    assert LabBmc(spec(tmp_path)).fingerprint("uuid-1") == base
    for changed in (
        LabBmc(spec(tmp_path, password="other-pass")).fingerprint("uuid-1"),
        LabBmc(spec(tmp_path, address="http://127.0.0.1:18202")).fingerprint("uuid-1"),
        LabBmc(spec(tmp_path)).fingerprint("uuid-2"),
    ):
        assert changed != base


def test_a_missing_domain_is_a_clear_error_before_anything_starts(tmp_path: Path) -> None:
    def runner(argv: object) -> CommandResult:
        return CommandResult(1, "", "error: failed to get domain 'lab-bm-1'")

    with pytest.raises(LabBmcError, match="the domain 'lab-bm-1' that plays this host does not exist"):
        LabBmc(spec(tmp_path), runner=runner).running(check_mode=False)
    assert not (tmp_path / "bm-1").exists()


def test_stop_never_kills_a_process_berth_did_not_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    killed: list[int] = []
    monkeypatch.setattr(_labbmc.os, "kill", lambda pid, sig: killed.append(pid))
    directory = tmp_path / "bm-1"
    directory.mkdir()
    # our own pid, but another start time: a reused pid is somebody else's process
    (directory / "record.json").write_text(json.dumps({"pid": os.getpid(), "start_time": "1"}))
    bmc = LabBmc(spec(tmp_path))
    assert bmc.running_pid() is None
    changed, status = bmc.stopped(check_mode=False)
    assert killed == [] and status["pid"] is None and changed  # only its files are removed
    assert not directory.exists()
    assert bmc.stopped(check_mode=False) == (False, {"name": "bm-1", "pid": None})
