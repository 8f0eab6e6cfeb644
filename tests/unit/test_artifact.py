"""Artifacts: reproducible bytes, immutable versions, atomic files, verification, parameter checks."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.spec import (
    ArtifactError,
    ArtifactSpec,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.store import ArtifactBuilder
from ansible_collections.berth.fleet.plugins.module_utils.drivers.artifact.verify import (
    parse_checksum_line,
    verify_artifact,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "services" / "sample"
BIN = Path(sys.executable).parent


def make_source(root: Path) -> Path:
    source = root / "src"
    (source / "lib").mkdir(parents=True)
    (source / "app.py").write_text("print('hello')\n")
    (source / "lib" / "util.py").write_text("X = 1\n")
    (source / "run.sh").write_text("#!/bin/sh\n")
    (source / "run.sh").chmod(0o750)
    (source / "versions.yml").write_text("versions: {}\n")  # release definitions: not content
    (source / "__pycache__").mkdir()
    (source / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0junk")
    (source / ".hidden").write_text("no\n")
    return source


def build(
    source: Path,
    dest: Path,
    version: str = "v1",
    check_mode: bool = False,
    force: bool = False,
    **flags: object,
):
    spec = ArtifactSpec(name="catalog", version=version, dest=dest, source=source, build_flags=flags)
    return ArtifactBuilder(spec).ensure("present", check_mode, force=force)


# --- reproducibility --------------------------------------------------------------------------------


def test_build_writes_tarball_and_sha256sum_file(tmp_path: Path) -> None:
    dest = tmp_path / "artifacts"
    result = build(make_source(tmp_path), dest)
    assert (result.changed, result.action) == (True, "built")
    tarball = dest / "catalog-v1.tar.gz"
    assert result.path == str(tarball)
    assert result.size == tarball.stat().st_size
    assert (dest / "catalog-v1.tar.gz.sha256").read_text() == f"{result.sha256}  catalog-v1.tar.gz\n"
    assert oct(tarball.stat().st_mode & 0o777) == "0o644"
    # sha256sum itself agrees (the deploy role may use either)
    check = subprocess.run(
        ["sha256sum", "-c", "catalog-v1.tar.gz.sha256"], cwd=dest, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert [p.name for p in dest.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_members_are_sorted_and_normalised(tmp_path: Path) -> None:
    result = build(make_source(tmp_path), tmp_path / "a", broken_health=True)
    assert result.files == [
        "catalog-v1",
        "catalog-v1/app.py",
        "catalog-v1/lib",
        "catalog-v1/lib/util.py",
        "catalog-v1/run.sh",
        "catalog-v1/version.json",
    ]
    with tarfile.open(result.path) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == result.files
        assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {(0, 0, "root", "root", 0)}
        modes = {m.name: oct(m.mode) for m in members}
        assert modes["catalog-v1"] == modes["catalog-v1/lib"] == "0o755"
        assert modes["catalog-v1/app.py"] == "0o644"
        assert modes["catalog-v1/run.sh"] == "0o755"  # the owner-exec bit survives, normalised
        assert not any(m.pax_headers for m in members)
        build_info = json.loads(tar.extractfile("catalog-v1/version.json").read())  # type: ignore[union-attr]
    assert build_info == {
        "format": 1,
        "artifact": "catalog",
        "version": "v1",
        "build_flags": {"broken_health": True},
    }
    raw = Path(result.path).read_bytes()
    assert raw[3] == 0, "gzip header must carry no file name (FLG=0)"
    assert raw[4:8] == b"\0\0\0\0", "gzip header must carry time 0"


def test_same_inputs_same_bytes_whatever_the_checkout(tmp_path: Path) -> None:
    first = build(make_source(tmp_path / "one"), tmp_path / "a")
    # another checkout: other times, other umask-ish modes, another directory
    other = shutil.copytree(tmp_path / "one" / "src", tmp_path / "two" / "src")
    for path in other.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
        if path.is_file() and path.name != "run.sh":
            path.chmod(0o600)
    second = build(other, tmp_path / "b")
    assert first.sha256 == second.sha256
    assert Path(first.path).read_bytes() == Path(second.path).read_bytes()


def test_rerun_is_unchanged_and_leaves_the_file_alone(tmp_path: Path) -> None:
    source, dest = make_source(tmp_path), tmp_path / "a"
    first = build(source, dest)
    inode = os.stat(first.path).st_ino
    second = build(source, dest)
    assert (second.changed, second.action, second.sha256) == (False, "unchanged", first.sha256)
    assert os.stat(first.path).st_ino == inode


def test_same_content_compressed_differently_is_unchanged(tmp_path: Path) -> None:
    """A different zlib would compress the same tar differently: that is not a new artifact."""
    source, dest = make_source(tmp_path), tmp_path / "a"
    first = build(source, dest)
    tarball = Path(first.path)
    recompressed = gzip.compress(gzip.decompress(tarball.read_bytes()), compresslevel=1, mtime=0)
    assert recompressed != tarball.read_bytes()
    tarball.write_bytes(recompressed)
    result = build(source, dest)
    assert (result.changed, result.action) == (True, "checksum_written")
    assert tarball.read_bytes() == recompressed  # kept, not replaced
    assert verify_artifact(tarball) == result.sha256
    assert build(source, dest).changed is False


def test_missing_checksum_file_is_rewritten(tmp_path: Path) -> None:
    source, dest = make_source(tmp_path), tmp_path / "a"
    first = build(source, dest)
    checksum = Path(first.checksum_path)
    checksum.unlink()
    result = build(source, dest)
    assert (result.changed, result.action) == (True, "checksum_written")
    checksum.write_text("0" * 64 + "  catalog-v1.tar.gz\n")
    assert build(source, dest).action == "checksum_written"
    assert verify_artifact(Path(first.path)) == first.sha256


# --- immutability ---------------------------------------------------------------------------------


def test_changed_content_of_a_built_version_is_refused(tmp_path: Path) -> None:
    source, dest = make_source(tmp_path), tmp_path / "a"
    first = build(source, dest)
    before = Path(first.path).read_bytes()
    (source / "app.py").write_text("print('changed')\n")
    with pytest.raises(
        ArtifactError, match=r"catalog-v1 already exists .* with different content .* immutable .*force=true"
    ):
        build(source, dest)
    with pytest.raises(ArtifactError, match="immutable"):
        build(source, dest, broken_health=True)  # other flags are other content too
    assert Path(first.path).read_bytes() == before
    assert verify_artifact(Path(first.path)) == first.sha256
    # a new version of the changed source is fine
    assert build(source, dest, version="v2").action == "built"


def test_force_replaces_a_built_version(tmp_path: Path) -> None:
    source, dest = make_source(tmp_path), tmp_path / "a"
    first = build(source, dest)
    (source / "app.py").write_text("print('changed')\n")
    result = build(source, dest, force=True)
    assert (result.changed, result.action) == (True, "rebuilt")
    assert result.sha256 != first.sha256
    assert verify_artifact(Path(result.path)) == result.sha256
    assert result.diff == {
        "before": {"path": result.path, "sha256": first.sha256},
        "after": {"path": result.path, "sha256": result.sha256},
    }


def test_unreadable_existing_artifact_is_refused_not_overwritten(tmp_path: Path) -> None:
    source, dest = make_source(tmp_path), tmp_path / "a"
    dest.mkdir()
    (dest / "catalog-v1.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ArtifactError, match=r"cannot be read .*immutable"):
        build(source, dest)
    assert build(source, dest, force=True).action == "rebuilt"


# --- check mode, diff, absent ----------------------------------------------------------------------


def test_check_mode_predicts_exactly_and_writes_nothing(tmp_path: Path) -> None:
    source, dest = make_source(tmp_path), tmp_path / "a"
    predicted = build(source, dest, check_mode=True)
    assert (predicted.changed, predicted.action) == (True, "built")
    assert not dest.exists()
    assert predicted.diff["before"]["sha256"] is None
    real = build(source, dest)
    assert (real.sha256, real.size) == (predicted.sha256, predicted.size)
    assert build(source, dest, check_mode=True).changed is False
    (source / "app.py").write_text("print('changed')\n")
    with pytest.raises(ArtifactError, match="immutable"):
        build(source, dest, check_mode=True)
    assert build(source, dest, check_mode=True, force=True).action == "rebuilt"
    assert verify_artifact(Path(real.path)) == real.sha256  # check mode touched nothing


def test_absent_removes_both_files(tmp_path: Path) -> None:
    source, dest = make_source(tmp_path), tmp_path / "a"
    built = build(source, dest)
    spec = ArtifactSpec(name="catalog", version="v1", dest=dest)
    checked = ArtifactBuilder(spec).ensure("absent", check_mode=True)
    assert checked.changed and Path(built.path).exists()
    removed = ArtifactBuilder(spec).ensure("absent", check_mode=False)
    assert (removed.changed, removed.action) == (True, "removed")
    assert removed.diff["before"]["sha256"] == built.sha256
    assert list(dest.iterdir()) == []
    again = ArtifactBuilder(spec).ensure("absent", check_mode=False)
    assert (again.changed, again.action) == (False, "absent")


# --- verification ---------------------------------------------------------------------------------


def test_verify_accepts_the_artifact_and_refuses_a_tampered_one(tmp_path: Path) -> None:
    built = build(make_source(tmp_path), tmp_path / "a")
    tarball = Path(built.path)
    assert verify_artifact(tarball) == built.sha256
    data = bytearray(tarball.read_bytes())
    data[100] ^= 0xFF
    tarball.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"does not match .* corrupt or was replaced"):
        verify_artifact(tarball)


def test_verify_refuses_a_checksum_of_another_file(tmp_path: Path) -> None:
    built = build(make_source(tmp_path), tmp_path / "a")
    tarball = Path(built.path)
    Path(built.checksum_path).write_text(f"{built.sha256}  catalog-v2.tar.gz\n")
    with pytest.raises(
        ArtifactError, match=re.escape("is the checksum of 'catalog-v2.tar.gz', not of 'catalog-v1.tar.gz'")
    ):
        verify_artifact(tarball)


def test_verify_needs_the_checksum_file(tmp_path: Path) -> None:
    built = build(make_source(tmp_path), tmp_path / "a")
    Path(built.checksum_path).unlink()
    with pytest.raises(ArtifactError, match=r"cannot read the checksum"):
        verify_artifact(Path(built.path))


def test_verify_with_an_explicit_checksum_path(tmp_path: Path) -> None:
    built = build(make_source(tmp_path), tmp_path / "a")
    moved = tmp_path / "elsewhere.sha256"
    shutil.move(built.checksum_path, moved)
    assert verify_artifact(Path(built.path), moved) == built.sha256


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a" * 64 + "  x.tar.gz\n", ("a" * 64, "x.tar.gz")),
        ("A" * 64 + " *x.tar.gz\r\n", ("a" * 64, "x.tar.gz")),  # binary-mode marker, CRLF
        ("\n" + "b" * 64 + "  x.tar.gz\n\n", ("b" * 64, "x.tar.gz")),
    ],
)
def test_parse_checksum_line(text: str, expected: tuple[str, str]) -> None:
    assert parse_checksum_line(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected one '<sha256>  <file>' line, found 0"),
        ("a" * 64 + "  x\n" + "b" * 64 + "  y\n", "found 2"),
        ("a" * 63 + "  x\n", "not a sha256sum line"),
        ("a" * 64 + "x\n", "not a sha256sum line"),
        ("g" * 64 + "  x\n", "not a sha256sum line"),
    ],
)
def test_parse_checksum_line_refuses(text: str, message: str) -> None:
    with pytest.raises(ArtifactError, match=re.escape(message)):
        parse_checksum_line(text)


# --- parameters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "Catalog"}, "name: 'Catalog' is not an artifact name"),
        ({"name": "../etc"}, "name: '../etc' is not an artifact name"),
        ({"name": "catalog-"}, "name: 'catalog-' is not an artifact name"),
        ({"name": "a" * 33}, "is not an artifact name"),
        ({"version": "latest"}, "version: 'latest' is not a version such as v2, 1.4.0 or 2.0.0-rc1"),
        ({"version": "v1/../../x"}, "version: 'v1/../../x' is not a version"),
        ({"version": "1.2 3"}, "is not a version"),
        ({"version": ""}, "is not a version"),
        ({"dest": Path("relative/dir")}, "dest: must be an absolute path, got 'relative/dir'"),
        ({"source": None}, "source: required to build an artifact"),
        ({"source": Path("services/sample")}, "source: must be an absolute path"),
        ({"source": Path("/nonexistent/berth")}, "source: /nonexistent/berth is not a directory"),
        ({"build_flags": {"Broken": True}}, "build_flags: 'Broken' is not a flag name"),
        (
            {"build_flags": {"nested": {"a": 1}}},
            "build_flags.nested: expected a string, number, boolean or null, got dict",
        ),
        ({"build_flags": {"ratio": float("nan")}}, "build_flags.ratio: expected a finite number"),
        ({"build_flags": ["broken_health"]}, "build_flags: expected a mapping"),
    ],
)
def test_bad_parameters_are_refused_before_anything_is_written(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    params: dict[str, object] = {
        "name": "catalog",
        "version": "v1",
        "dest": tmp_path / "a",
        "source": make_source(tmp_path),
        "build_flags": {},
    }
    params.update(changes)
    with pytest.raises(ArtifactError, match=re.escape(message)):
        ArtifactBuilder(ArtifactSpec(**params)).ensure("present", check_mode=False)  # type: ignore[arg-type]
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("version", ["v1", "v12", "1.2.3", "v1.2", "2", "1.2.3-rc.1", "v2-hotfix"])
def test_good_versions(tmp_path: Path, version: str) -> None:
    ArtifactSpec(name="catalog", version=version, dest=tmp_path, source=tmp_path).validate()


def test_bad_source_trees(tmp_path: Path) -> None:
    source = make_source(tmp_path)
    (source / "link.py").symlink_to(source / "app.py")
    with pytest.raises(ArtifactError, match=r"link.py is a symlink"):
        build(source, tmp_path / "a")
    (source / "link.py").unlink()
    (source / "version.json").write_text("{}")
    with pytest.raises(ArtifactError, match=r"version.json must not exist: version.json is generated"):
        build(source, tmp_path / "a")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(ArtifactError, match=r"holds no files"):
        build(empty, tmp_path / "a")


# --- the module and the playbook, for real ---------------------------------------------------------


def run_ansible(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*argv], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_module_fails_with_one_clear_message(tmp_path: Path) -> None:
    result = run_ansible(
        str(BIN / "ansible"), "localhost", "-i", "localhost,", "-c", "local", "-m", "berth.fleet.artifact_build",
        "-a", f"name=catalog version=latest source={SAMPLE} dest={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "version: 'latest' is not a version" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_playbook_builds_every_version_then_changes_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "artifacts"
    argv = (
        str(BIN / "ansible-playbook"),
        "playbooks/build_artifacts.yml",
        "-e",
        f"build_artifacts_dest={dest}",
    )
    first = run_ansible(*argv, "--check")
    assert first.returncode == 0, first.stdout + first.stderr
    assert not dest.exists()
    second = run_ansible(*argv)
    assert second.returncode == 0, second.stdout + second.stderr
    assert re.search(r"localhost\s+: ok=2\s+changed=1 ", second.stdout), second.stdout
    third = run_ansible(*argv)
    assert re.search(r"localhost\s+: ok=2\s+changed=0 ", third.stdout), third.stdout
    names = sorted(p.name for p in dest.iterdir())
    versions = yaml.safe_load((ROOT / "services" / "sample" / "versions.yml").read_text())["versions"]
    assert set(versions) >= {"v1", "v2", "v3", "v4", "v5"}
    assert names == sorted(
        f"{svc}-{v}.tar.gz{ext}"
        for svc in ("catalog", "orders", "payments")
        for v in versions
        for ext in ("", ".sha256")
    )
    for tarball in dest.glob("*.tar.gz"):
        verify_artifact(tarball)
    with tarfile.open(dest / "orders-v3.tar.gz") as tar:
        assert sorted(tar.getnames()) == [
            "orders-v3",
            "orders-v3/app.py",
            "orders-v3/migrations",
            "orders-v3/migrations/001_items.expand.sql",
            "orders-v3/store.py",
            "orders-v3/version.json",
        ]
        info = json.load(io.BytesIO(tar.extractfile("orders-v3/version.json").read()))  # type: ignore[union-attr]
    assert info["build_flags"]["broken_health"] is True


# --- a release's migrations ---------------------------------------------------------------------------


def with_migrations(root: Path) -> Path:
    source = make_source(root)
    (source / "migrations").mkdir()
    (source / "migrations" / "001_items.expand.sql").write_text("CREATE TABLE items (key text);\n")
    (source / "migrations" / "002_note.expand.sql").write_text("ALTER TABLE items ADD COLUMN note text;\n")
    (source / "migrations" / "003_note_required.contract.sql").write_text(
        "ALTER TABLE items ALTER note SET NOT NULL;\n"
    )
    return source


def test_a_version_packs_only_the_migrations_it_lists_and_says_each_ones_phase(tmp_path: Path) -> None:
    import hashlib

    source = with_migrations(tmp_path)
    listed = ("001_items.expand.sql", "002_note.expand.sql")
    spec = ArtifactSpec(name="catalog", version="v2", dest=tmp_path / "out", source=source, migrations=listed)
    ArtifactBuilder(spec).ensure("present", False)
    with tarfile.open(spec.path) as tar:
        names = sorted(tar.getnames())
        info = json.loads(tar.extractfile("catalog-v2/version.json").read())  # type: ignore[union-attr]
    assert "catalog-v2/migrations/001_items.expand.sql" in names
    assert "catalog-v2/migrations/003_note_required.contract.sql" not in names
    assert info["migrations"] == [
        {
            "id": "001_items",
            "phase": "expand",
            "file": "migrations/001_items.expand.sql",
            "sha256": hashlib.sha256(
                (source / "migrations" / "001_items.expand.sql").read_bytes()
            ).hexdigest(),
        },
        {
            "id": "002_note",
            "phase": "expand",
            "file": "migrations/002_note.expand.sql",
            "sha256": hashlib.sha256(
                (source / "migrations" / "002_note.expand.sql").read_bytes()
            ).hexdigest(),
        },
    ]
    # a version that lists none is what it was before migrations existed: no folder, no key
    plain = ArtifactSpec(name="catalog", version="v1", dest=tmp_path / "out", source=source)
    ArtifactBuilder(plain).ensure("present", False)
    with tarfile.open(plain.path) as tar:
        assert not [n for n in tar.getnames() if "migrations" in n]
        assert "migrations" not in json.loads(tar.extractfile("catalog-v1/version.json").read())  # type: ignore[union-attr]
    # adding a migration file for a later release changes no built version
    (source / "migrations" / "004_more.expand.sql").write_text("SELECT 1;\n")
    assert not ArtifactBuilder(spec).ensure("present", False).changed


@pytest.mark.parametrize(
    ("names", "fragment"),
    [
        (("items.sql",), "is not a migration file name"),
        (("001_items.forward.sql",), "is not a migration file name"),
        (("002_note.expand.sql", "001_items.expand.sql"), "comes after 002_note: list them in order"),
        (("001_items.expand.sql", "001_items.expand.sql"), "001_items is listed twice"),
        (("009_missing.expand.sql",), "is not a regular file"),
    ],
)
def test_malformed_migrations_are_refused_before_anything_is_built(
    tmp_path: Path, names: tuple[str, ...], fragment: str
) -> None:
    source = with_migrations(tmp_path)
    spec = ArtifactSpec(name="catalog", version="v2", dest=tmp_path / "out", source=source, migrations=names)
    with pytest.raises(ArtifactError, match=re.escape(fragment)):
        ArtifactBuilder(spec).ensure("present", False)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
