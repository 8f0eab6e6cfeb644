"""NoCloud seed images: file contents, the digest that decides re-uploads, and the ISO read back."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pycdlib
import pytest
import yaml

from ansible_collections.berth.fleet.plugins.module_utils.drivers.libvirt.seed import (
    SeedError,
    build_iso,
    build_seed_iso,
    content_sha256,
    seed_files,
)

META = {"instance-id": "web-1-v1", "local-hostname": "web-1"}
USER = "#cloud-config\nssh_keys:\n  ed25519_private: |\n    -----BEGIN OPENSSH PRIVATE KEY-----\n"
NETWORK = {"version": 2, "ethernets": {"eth0": {"addresses": ["10.77.1.10/24"], "dhcp4": False}}}


def read_back(iso: bytes) -> tuple[dict[str, bytes], dict[str, bytes], str]:
    """Files by Rock Ridge name, files by Joliet name, and the primary volume identifier."""
    reader = pycdlib.PyCdlib()
    reader.open_fp(io.BytesIO(iso))
    try:
        rock_ridge, joliet = {}, {}
        for name in ("meta-data", "user-data", "network-config"):
            for files, key in ((rock_ridge, "rr_path"), (joliet, "joliet_path")):
                out = io.BytesIO()
                try:
                    reader.get_file_from_iso_fp(out, **{key: f"/{name}"})
                except pycdlib.pycdlibexception.PyCdlibInvalidInput:
                    continue
                files[name] = out.getvalue()
        label = reader.pvd.volume_identifier.decode().strip()
    finally:
        reader.close()
    return rock_ridge, joliet, label


def test_seed_files_are_yaml_documents_and_the_raw_user_data() -> None:
    files = seed_files(META, USER, NETWORK)
    assert list(files) == ["meta-data", "user-data", "network-config"]
    assert yaml.safe_load(files["meta-data"]) == META
    assert yaml.safe_load(files["network-config"]) == NETWORK
    assert files["user-data"] == USER.encode()
    assert "network-config" not in seed_files(META, USER)


def test_the_iso_has_label_cidata_and_lowercase_long_names() -> None:
    iso, _sha = build_seed_iso(META, USER, NETWORK)
    rock_ridge, joliet, label = read_back(iso)
    assert label == "cidata"
    assert rock_ridge == seed_files(META, USER, NETWORK)
    assert joliet == rock_ridge
    assert iso[0x8001:0x8006] == b"CD001"  # a plain ISO 9660 image: the primary volume descriptor


def test_without_network_config_the_iso_has_two_files() -> None:
    rock_ridge, _joliet, _label = read_back(build_seed_iso(META, USER)[0])
    assert sorted(rock_ridge) == ["meta-data", "user-data"]


@pytest.mark.skipif(shutil.which("blkid") is None, reason="needs blkid (util-linux)")
def test_blkid_sees_what_cloud_init_looks_for(tmp_path: Path) -> None:
    image = tmp_path / "seed.iso"
    image.write_bytes(build_seed_iso(META, USER)[0])
    probe = subprocess.run(["blkid", "-p", str(image)], capture_output=True, text=True, check=False)
    assert 'LABEL="cidata"' in probe.stdout and 'TYPE="iso9660"' in probe.stdout, probe


def test_the_digest_is_stable_and_follows_every_input() -> None:
    _iso, sha = build_seed_iso(META, USER, NETWORK)
    assert build_seed_iso(dict(reversed(META.items())), USER, NETWORK)[1] == sha  # key order is irrelevant
    others = {
        build_seed_iso({**META, "instance-id": "web-1-v2"}, USER, NETWORK)[1],
        build_seed_iso(META, USER + "\n", NETWORK)[1],
        build_seed_iso(META, USER)[1],
        build_seed_iso(META, USER, {"version": 1})[1],
    }
    assert sha not in others and len(others) == 4


def test_the_digest_cannot_be_fooled_by_moving_bytes_between_files() -> None:
    assert content_sha256({"meta-data": b"ab", "user-data": b"c"}) != content_sha256(
        {"meta-data": b"a", "user-data": b"bc"}
    )


def test_the_digest_does_not_depend_on_the_image_timestamps() -> None:
    # pycdlib stamps the current time into the image; idempotency rests on the digest alone.
    first, second = build_seed_iso(META, USER), build_seed_iso(META, USER)
    assert first[1] == second[1]
    assert read_back(first[0])[0] == read_back(second[0])[0]


def test_bad_inputs_raise_seed_errors() -> None:
    with pytest.raises(SeedError, match="user_data must be the text"):
        seed_files(META, {"not": "text"})  # type: ignore[arg-type]
    with pytest.raises(SeedError, match="cannot be serialised"):
        seed_files({"when": object()}, USER)
    with pytest.raises(SeedError, match="not a NoCloud seed file"):
        build_iso({"vendor-data": b""})
