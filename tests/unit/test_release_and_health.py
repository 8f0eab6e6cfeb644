"""Release staging/switching (on a temp dir) and the health gate logic (with a fake clock)."""

from __future__ import annotations

import io
import multiprocessing
import tarfile
from pathlib import Path

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.common.fs import sha256_file
from ansible_collections.berth.fleet.plugins.module_utils.drivers.node.health import (
    GatePolicy,
    HealthGateError,
    wait_healthy,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.node.release import (
    ReleaseError,
    ReleaseManager,
    ReleaseRequest,
)


def make_package(path: Path, version: str, evil: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in ((f"catalog-{version}/app.py", b"print('hi')\n"), (evil, b"x")):
            if name is None:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def request(
    root: Path, version: str, state: str = "current", package: Path | None = None, **kw: object
) -> ReleaseRequest:
    sha = sha256_file(package) if package else None
    return ReleaseRequest(
        instance="catalog-1",
        artifact="catalog",
        version=version,
        state=state,
        package=package,
        sha256=kw.get("sha256", sha),
        root=root,  # type: ignore[arg-type]
    )


def test_stage_switch_revert_and_idempotence(tmp_path: Path) -> None:
    root = tmp_path / "opt"
    v1 = make_package(tmp_path / "v1.tgz", "v1")
    v2 = make_package(tmp_path / "v2.tgz", "v2")
    first = ReleaseManager(request(root, "v1", package=v1), check_mode=False).run()
    assert first.changed and first.current == "v1" and first.previous is None
    assert (root / "instances/catalog-1/current/app.py").read_text() == "print('hi')\n"
    assert not ReleaseManager(request(root, "v1", package=v1), check_mode=False).run().changed
    staged = ReleaseManager(request(root, "v2", "present", package=v2), check_mode=False).run()
    assert staged.changed and staged.current == "v1"  # staged beside, not switched
    checked = ReleaseManager(request(root, "v2", package=v2), check_mode=True).run()
    assert checked.changed and checked.current == "v2"
    assert (root / "instances/catalog-1/current").resolve().name == "catalog-v1"  # check mode changed nothing
    switched = ReleaseManager(request(root, "v2", package=v2), check_mode=False).run()
    assert (switched.current, switched.previous) == ("v2", "v1")
    reverted = ReleaseManager(request(root, "", "reverted"), check_mode=False).run()
    assert (reverted.current, reverted.previous) == ("v1", "v2")
    assert (root / "instances/catalog-1/current").resolve().name == "catalog-v1"


def _stage_in_another_process(root: str, instance: str, package: str, sha256: str) -> bool:
    req = ReleaseRequest(instance, "catalog", "v1", "current", Path(package), sha256, Path(root))
    return ReleaseManager(req, check_mode=False).run().changed


def test_colocated_instances_staging_the_same_release_at_once_both_succeed(tmp_path: Path) -> None:
    """CI colocates instances on one node: they share releases/catalog-v1 and stage it together."""
    root = tmp_path / "opt"
    package = make_package(tmp_path / "v1.tgz", "v1")
    sha = sha256_file(package)
    instances = [f"catalog-{n}" for n in range(1, 9)]
    with multiprocessing.get_context("fork").Pool(len(instances)) as pool:
        changed = pool.starmap(
            _stage_in_another_process, [(str(root), name, str(package), sha) for name in instances]
        )
    assert all(changed)  # each instance's current link was switched
    assert [p.name for p in (root / "releases").iterdir()] == ["catalog-v1"]  # extracted once, no leftovers
    for name in instances:
        assert (root / "instances" / name / "current" / "app.py").read_text() == "print('hi')\n"


def test_wrong_checksum_and_unsafe_members_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "opt"
    v1 = make_package(tmp_path / "v1.tgz", "v1")
    with pytest.raises(ReleaseError, match="refusing to use it"):
        ReleaseManager(request(root, "v1", package=v1, sha256="0" * 64), check_mode=False).run()
    evil = make_package(tmp_path / "evil.tgz", "v9", evil="../../etc/passwd")
    with pytest.raises(ReleaseError, match="would land outside"):
        ReleaseManager(request(root, "v9", package=evil), check_mode=False).run()
    assert not (root / "releases" / "catalog-v9").exists()
    with pytest.raises(ReleaseError, match="no previous release"):
        ReleaseManager(request(root, "", "reverted"), check_mode=False).run()


def test_a_staged_version_is_immutable(tmp_path: Path) -> None:
    root = tmp_path / "opt"
    ReleaseManager(
        request(root, "v1", package=make_package(tmp_path / "a.tgz", "v1")), check_mode=False
    ).run()
    other = make_package(tmp_path / "b.tgz", "v1", evil="catalog-v1/extra.txt")
    with pytest.raises(ReleaseError, match="a version is immutable"):
        ReleaseManager(request(root, "v1", package=other), check_mode=False).run()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_gate_opens_after_rise_and_min_healthy_time() -> None:
    clock = FakeClock()
    answers = iter([503, None, 200, 503, 200, 200, 200] + [200] * 100)

    def probe(url: str, timeout: float) -> tuple[int | None, str]:
        status = next(answers)
        return status, f"HTTP {status}"

    policy = GatePolicy("http://127.0.0.1:1/health", rise=3, interval=0.25, min_healthy_time=1.0)
    outcome = wait_healthy(policy, probe=probe, clock=clock, sleep=clock.sleep)
    assert outcome.risen_after == 1.5  # the 3rd passing check in a row (7th check)
    assert outcome.waited == 2.5
    assert outcome.failures == 3


def test_gate_fails_at_the_deadline_with_what_it_saw() -> None:
    clock = FakeClock()
    policy = GatePolicy("http://127.0.0.1:1/health", timeout=3, fall=0)
    with pytest.raises(HealthGateError, match=r"not healthy within 3 s: last check HTTP 503"):
        wait_healthy(policy, probe=lambda url, timeout: (503, "HTTP 503"), clock=clock, sleep=clock.sleep)
    with pytest.raises(HealthGateError, match="rise must be >= 1"):
        wait_healthy(GatePolicy("http://x/", rise=0))


def test_gate_fails_fast_on_definite_failures_and_waits_for_an_instance_still_starting() -> None:
    clock = FakeClock()
    policy = GatePolicy("http://127.0.0.1:1/health", timeout=90, interval=0.25, fall=3)
    with pytest.raises(HealthGateError, match=r"answers HTTP 503 .* 3 times in a row after 0\.5 s"):
        wait_healthy(policy, probe=lambda url, timeout: (503, "HTTP 503"), clock=clock, sleep=clock.sleep)
    # refused connections (still starting) are not failures of the release: only the deadline ends them
    clock = FakeClock()
    answers = iter([None] * 20 + [503, 503, None, 503, 503] + [200] * 20)

    def probe(url: str, timeout: float) -> tuple[int | None, str]:
        status = next(answers)
        return status, "no answer (refused)" if status is None else f"HTTP {status}"

    outcome = wait_healthy(
        GatePolicy("http://127.0.0.1:1/health", timeout=90, fall=3, min_healthy_time=0),
        probe=probe,
        clock=clock,
        sleep=clock.sleep,
    )
    assert outcome.risen_after is not None and outcome.failures == 25
    with pytest.raises(HealthGateError, match="fall must be >= 0"):
        wait_healthy(GatePolicy("http://x/", fall=-1))


def test_the_query_without_a_module_run_reads_what_the_module_reads(tmp_path: Path) -> None:
    """The action plugin of ``release`` answers ``state=query`` with one shell command
    (``query_command``, parsed by ``parse_query``): the same answer as the module's."""
    import subprocess

    from ansible_collections.berth.fleet.plugins.module_utils.drivers.node.release import (
        parse_query,
        query_command,
    )

    root = tmp_path / "opt"

    def both() -> tuple[dict, dict]:
        query = request(root, "", "query")
        module = ReleaseManager(query, check_mode=False).run().as_dict()
        shell = subprocess.run(["sh", "-c", query_command(query)], capture_output=True, text=True, check=True)
        assert shell.stderr == ""
        return parse_query(shell.stdout).as_dict(), module

    fast, module = both()
    assert fast == module and fast["current"] is None  # nothing installed yet
    ReleaseManager(request(root, "v1", package=make_package(tmp_path / "v1.tgz", "v1")), False).run()
    ReleaseManager(request(root, "v2", package=make_package(tmp_path / "v2.tgz", "v2")), False).run()
    fast, module = both()
    assert fast == module and (fast["current"], fast["previous"]) == ("v2", "v1")
    with pytest.raises(ReleaseError, match="instance"):
        query_command(ReleaseRequest("Bad Name;rm", "catalog", "", "query", None, None, root))
