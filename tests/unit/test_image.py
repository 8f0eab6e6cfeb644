"""The base image's pure logic and the builder's bookkeeping, with debootstrap replaced by a fake."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from ansible_collections.berth.fleet.plugins.module_utils.common.command import CommandResult
from ansible_collections.berth.fleet.plugins.module_utils.local import image as _image
from ansible_collections.berth.fleet.plugins.module_utils.local.image import (
    BASE_PACKAGES,
    ImageBuilder,
    ImageError,
    ImageSpec,
    debootstrap_argv,
    find_debian_mirror,
    overlay_lowerdirs,
    parse_dpkg_status,
    tree_checksum,
)
from ansible_collections.berth.fleet.plugins.module_utils.local.image import spec as _image_spec

# This machine's own apt configuration (deb822), plus a one-line list for the other format.
DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""
ONE_LINE = """\
# a comment
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] https://packages.cloud.google.com/apt cloud-sdk-bookworm main
deb http://mirror.example/debian/ bookworm main contrib
"""

DPKG_STATUS = """\
Package: dpkg
Status: install ok installed
Architecture: amd64
Version: 1.21.22

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u10
Description: GNU C Library
 continuation: with a colon

Package: libfoo1
Status: install ok installed
Architecture: i386
Version: 1.0

Package: removed-thing
Status: deinstall ok config-files
Architecture: amd64
Version: 0.1

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2025b-0+deb12u1
"""


def spec(tmp_path: Path, **overrides: object) -> ImageSpec:
    values: dict[str, object] = {"name": "lab", "images_dir": tmp_path / "images"}
    values.update(overrides)
    return ImageSpec(**values)  # type: ignore[arg-type]


# --- identity -----------------------------------------------------------------------------------


def test_image_id_is_a_stable_hash_of_the_inputs(tmp_path: Path) -> None:
    base = spec(tmp_path)
    assert base.image_id == spec(tmp_path).image_id
    assert len(base.image_id) == 12
    assert base.image_dir == tmp_path / "images" / f"lab-{base.image_id}"
    assert base.rootfs == base.image_dir / "rootfs"


def test_package_order_and_duplicates_do_not_change_the_id(tmp_path: Path) -> None:
    a = spec(tmp_path, extra_packages=("jq", "vim-tiny"))
    b = spec(tmp_path, extra_packages=("vim-tiny", "jq", "jq", "curl"))
    assert a.image_id == b.image_id
    assert a.packages == tuple(sorted({*BASE_PACKAGES, "jq", "vim-tiny"}))


def test_inputs_that_change_content_change_the_id_and_the_mirror_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = spec(tmp_path).image_id
    assert spec(tmp_path, extra_packages=("jq",)).image_id != base
    assert spec(tmp_path, suite="trixie").image_id != base
    assert spec(tmp_path, mirror="http://other.example/debian").image_id == base
    monkeypatch.setattr(_image_spec, "RECIPE_VERSION", _image_spec.RECIPE_VERSION + 1)
    assert spec(tmp_path).image_id != base


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"name": "Lab!"}, "invalid image name"),
        ({"suite": "Bookworm"}, "invalid suite"),
        ({"extra_packages": ("ok", "bad pkg")}, "bad pkg"),
        ({"mirror": "ftp://x/debian"}, "mirror"),
        ({"images_dir": Path("relative")}, "absolute"),
    ],
)
def test_validation(tmp_path: Path, overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ImageError, match=fragment):
        spec(tmp_path, **overrides).validate()


def test_debootstrap_argv(tmp_path: Path) -> None:
    argv = debootstrap_argv(spec(tmp_path), Path("/x/rootfs"))
    assert argv[:3] == ["debootstrap", "--variant=minbase", "--components=main"]
    assert argv[3] == "--include=" + ",".join(sorted(BASE_PACKAGES))
    assert argv[4:] == ["bookworm", "/x/rootfs", "http://deb.debian.org/debian"]


# --- apt sources --------------------------------------------------------------------------------


def test_mirror_from_deb822_skips_security() -> None:
    assert find_debian_mirror({"debian.sources": DEB822}, "bookworm") == "http://deb.debian.org/debian"
    assert find_debian_mirror({"debian.sources": DEB822}, "trixie") is None


def test_mirror_from_one_line_lists() -> None:
    assert find_debian_mirror({"x.list": ONE_LINE}, "bookworm") == "http://mirror.example/debian"


def test_disabled_deb822_stanza_is_ignored() -> None:
    text = "Types: deb\nURIs: http://a.example/debian\nSuites: bookworm\nEnabled: no\n"
    assert find_debian_mirror({"a.sources": text}, "bookworm") is None


def test_read_apt_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list.d" / "ignored.save").write_text(ONE_LINE)
    assert list(_image.read_apt_sources(tmp_path)) == ["debian.sources"]


# --- dpkg, checksum, mounts ---------------------------------------------------------------------


def test_parse_dpkg_status_keeps_installed_packages_with_foreign_arch_qualified() -> None:
    assert parse_dpkg_status(DPKG_STATUS) == {
        "dpkg": "1.21.22",
        "libc6": "2.36-9+deb12u10",
        "libfoo1:i386": "1.0",
        "tzdata": "2025b-0+deb12u1",
    }


def make_tree(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("ID=debian\n")
    (root / "bin").mkdir()
    (root / "bin" / "sh").write_bytes(b"\x7fELF")
    (root / "bin" / "dash").symlink_to("sh")


def test_tree_checksum_tracks_content_modes_and_links_but_not_times(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    make_tree(root)
    first = tree_checksum(root)
    assert first.startswith("sha256:") and tree_checksum(root) == first
    os.utime(root / "etc" / "os-release", (1, 1))
    assert tree_checksum(root) == first
    (root / "etc" / "os-release").write_text("ID=ubuntu\n")
    changed_content = tree_checksum(root)
    assert changed_content != first
    os.chmod(root / "bin" / "sh", 0o700)
    changed_mode = tree_checksum(root)
    assert changed_mode != changed_content
    (root / "bin" / "dash").unlink()
    (root / "bin" / "dash").symlink_to("/bin/sh")
    assert tree_checksum(root) != changed_mode


def test_overlay_lowerdirs_from_mountinfo() -> None:
    mountinfo = (
        "46 27 0:39 / /var/lib/berth/machines/a/merged rw,relatime - overlay overlay "
        "rw,lowerdir=/var/lib/berth/images/x-1/rootfs,upperdir=/u,workdir=/w,uuid=on\n"
        "47 27 0:40 / /m rw - overlay overlay rw,lowerdir=/l1:/with\\040space,upperdir=/u2,workdir=/w2\n"
        "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
    )
    assert overlay_lowerdirs(mountinfo) == ["/var/lib/berth/images/x-1/rootfs", "/l1", "/with space"]


def test_mounts_below_lists_leftovers_deepest_first() -> None:
    partial = Path("/var/lib/berth/images/.lab-1.partial")
    mountinfo = (
        "22 1 254:0 / / rw - ext4 /dev/vda rw\n"
        f"50 22 0:5 / {partial}/rootfs/proc rw - proc proc rw\n"
        f"51 22 0:6 / {partial}/rootfs/dev rw - tmpfs nodev rw\n"
        f"52 51 0:7 /null {partial}/rootfs/dev/null rw - devtmpfs udev rw\n"
        "53 22 0:8 / /var/lib/berth/images/.lab-1.partial-other rw - tmpfs x rw\n"
    )
    assert _image.mounts_below(mountinfo, partial) == [
        f"{partial}/rootfs/dev/null",
        f"{partial}/rootfs/dev",
        f"{partial}/rootfs/proc",
    ]


# --- the builder, with a fake debootstrap -------------------------------------------------------


class FakeDebootstrap:
    """Writes a tiny 'rootfs' where debootstrap would, with a dpkg status for the requested packages."""

    def __init__(self, fail: bool = False, skip: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail
        self.skip = skip

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        args = list(argv)
        self.calls.append(args)
        if args[0] == "systemctl":
            return CommandResult(0, "", "")
        assert args[0] == "debootstrap"
        target = Path(args[-2])
        make_tree(target)
        if self.fail:
            return CommandResult(1, "", "E: Couldn't download packages: systemd")
        packages = ["dpkg"] + [pkg for pkg in args[3].split("=", 1)[1].split(",") if pkg != self.skip]
        status = "".join(
            f"Package: {pkg}\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0\n\n"
            for pkg in packages
        )
        (target / "var/lib/dpkg").mkdir(parents=True)
        (target / "var/lib/dpkg/status").write_text(status)
        (target / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
        (target / "etc/hostname").write_text("build-host\n")
        (target / "etc/ssh").mkdir()
        for key in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_host_rsa_key"):
            (target / "etc/ssh" / key).write_text("secret")
        (target / "var/lib/dbus").mkdir(parents=True)
        (target / "var/lib/dbus/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
        (target / "var/cache/apt/archives").mkdir(parents=True)
        (target / "var/cache/apt/archives/systemd_252_amd64.deb").write_bytes(b"deb")
        # what postgresql-15's and etcd-server's installs leave: a 15/main cluster, a one-member etcd
        for leftover in (
            "etc/postgresql/15/main",
            "var/lib/postgresql/15/main/base",
            "var/lib/etcd/default/member",
        ):
            (target / leftover).mkdir(parents=True)
        (target / "etc/postgresql-common").mkdir()
        (target / "etc/postgresql-common/createcluster.conf").write_text("ssl = on\n")
        return CommandResult(0, "I: Base system installed successfully.\n", "")


@pytest.fixture
def no_root_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageBuilder, "_preflight", lambda self: None)


@pytest.mark.usefixtures("no_root_needed")
def test_build_then_reuse(tmp_path: Path) -> None:
    fake = FakeDebootstrap()
    image = spec(tmp_path)
    built = ImageBuilder(image, runner=fake, mountinfo_path=tmp_path / "none").ensure(
        "present", check_mode=False
    )
    assert built.changed and built.built
    assert built.rootfs == str(image.rootfs)
    rootfs = image.rootfs
    assert (rootfs / "etc/machine-id").read_text() == ""
    assert os.readlink(rootfs / "var/lib/dbus/machine-id") == "/etc/machine-id"
    assert list((rootfs / "etc/ssh").glob("ssh_host_*")) == []
    assert "PermitRootLogin prohibit-password" in (rootfs / "etc/ssh/sshd_config.d/berth.conf").read_text()
    assert (rootfs / "etc/hostname").read_text() == "localhost\n"
    assert "no DNS" in (rootfs / "etc/resolv.conf").read_text()
    assert list((rootfs / "var/cache/apt/archives").iterdir()) == []
    # only Patroni runs PostgreSQL, only a dcs member runs etcd, each in a cluster of its own
    assert (
        not (rootfs / "var/lib/postgresql/15/main").exists()
        and not (rootfs / "etc/postgresql/15/main").exists()
    )
    assert not (rootfs / "var/lib/etcd/default").exists() and (rootfs / "var/lib/etcd").is_dir()
    assert "create_main_cluster = false" in (rootfs / "etc/postgresql-common/createcluster.conf").read_text()
    disabled = next(call for call in fake.calls if call[:1] == ["systemctl"] and "disable" in call)
    assert {"etcd.service", "patroni.service", "postgresql.service", "haproxy.service"} <= set(disabled)
    assert ["systemctl", f"--root={image.partial_dir / 'rootfs'}", "enable", "systemd-networkd.service"] == (
        fake.calls[1][:4]
    )
    manifest = json.loads(image.manifest_path.read_text())
    assert manifest["image_id"] == image.image_id
    assert manifest["checksum"] == built.checksum == tree_checksum(rootfs)
    assert set(manifest["packages"]) == {*image.packages, "dpkg"}
    assert manifest["inputs"]["recipe_version"] == _image.RECIPE_VERSION
    assert not image.partial_dir.exists()

    again = ImageBuilder(image, runner=fake).ensure("present", check_mode=False, verify=True)
    assert not again.changed and not again.built
    assert again.checksum == built.checksum
    assert len([call for call in fake.calls if call[0] == "debootstrap"]) == 1


@pytest.mark.usefixtures("no_root_needed")
def test_verify_detects_a_modified_image(tmp_path: Path) -> None:
    image = spec(tmp_path)
    ImageBuilder(image, runner=FakeDebootstrap()).ensure("present", check_mode=False)
    (image.rootfs / "etc/os-release").write_text("tampered\n")
    with pytest.raises(ImageError, match="does not match its manifest"):
        ImageBuilder(image, runner=FakeDebootstrap()).ensure("present", check_mode=False, verify=True)


def test_check_mode_builds_nothing(tmp_path: Path) -> None:
    fake = FakeDebootstrap()
    result = ImageBuilder(spec(tmp_path), runner=fake).ensure("present", check_mode=True)
    assert result.changed and not result.built and result.checksum is None
    assert fake.calls == [] and not (tmp_path / "images").exists()


@pytest.mark.usefixtures("no_root_needed")
@pytest.mark.parametrize(("fake", "message"), [(FakeDebootstrap(fail=True), "Couldn't download")])
def test_a_failed_build_leaves_no_image_and_no_partial(
    tmp_path: Path, fake: FakeDebootstrap, message: str
) -> None:
    image = spec(tmp_path)
    with pytest.raises(ImageError, match=message):
        ImageBuilder(image, runner=fake).ensure("present", check_mode=False)
    assert not image.image_dir.exists() and not image.partial_dir.exists()


@pytest.mark.usefixtures("no_root_needed")
def test_a_package_missing_after_debootstrap_fails_the_build(tmp_path: Path) -> None:
    image = spec(tmp_path)
    with pytest.raises(ImageError, match="haproxy"):
        ImageBuilder(image, runner=FakeDebootstrap(skip="haproxy")).ensure("present", check_mode=False)
    assert not image.image_dir.exists()


@pytest.mark.usefixtures("no_root_needed")
def test_an_interrupted_build_is_discarded_and_rebuilt(tmp_path: Path) -> None:
    image = spec(tmp_path)
    (image.partial_dir / "rootfs" / "proc").mkdir(parents=True)
    (image.partial_dir / "half-written").write_text("x")
    # a killed debootstrap can leave /proc mounted in the target: it is detached before removal
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"50 22 0:5 / {image.partial_dir}/rootfs/proc rw - proc proc rw\n")
    fake = FakeDebootstrap()

    def runner(argv: Sequence[str]) -> CommandResult:
        if argv[0] == "umount":
            mountinfo.write_text("")
            fake.calls.append(list(argv))
            return CommandResult(0, "", "")
        return fake(argv)

    result = ImageBuilder(image, runner=runner, mountinfo_path=mountinfo).ensure("present", check_mode=False)
    assert fake.calls[0] == ["umount", "--lazy", f"{image.partial_dir}/rootfs/proc"]
    assert result.built and not image.partial_dir.exists()
    assert not (image.image_dir / "half-written").exists()


@pytest.mark.usefixtures("no_root_needed")
def test_a_partial_build_that_stays_mounted_is_not_removed(tmp_path: Path) -> None:
    image = spec(tmp_path)
    (image.partial_dir / "rootfs" / "dev").mkdir(parents=True)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"51 22 0:6 / {image.partial_dir}/rootfs/dev rw - tmpfs nodev rw\n")
    builder = ImageBuilder(image, runner=lambda argv: CommandResult(32, "", "busy"), mountinfo_path=mountinfo)
    with pytest.raises(ImageError, match="still mounted"):
        builder.ensure("present", check_mode=False)
    assert (image.partial_dir / "rootfs" / "dev").is_dir()


@pytest.mark.usefixtures("no_root_needed")
def test_force_and_absent_refuse_an_image_in_use(tmp_path: Path) -> None:
    image = spec(tmp_path)
    ImageBuilder(image, runner=FakeDebootstrap()).ensure("present", check_mode=False)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        f"46 27 0:39 / /m rw - overlay overlay rw,lowerdir={image.rootfs},upperdir=/u,workdir=/w\n"
    )
    busy = ImageBuilder(image, runner=FakeDebootstrap(), mountinfo_path=mountinfo)
    with pytest.raises(ImageError, match="lowerdir of a mounted overlay"):
        busy.ensure("present", check_mode=False, force=True)
    with pytest.raises(ImageError, match="lowerdir of a mounted overlay"):
        busy.ensure("absent", check_mode=False)
    assert image.rootfs.is_dir()


@pytest.mark.usefixtures("no_root_needed")
def test_absent_removes_the_image(tmp_path: Path) -> None:
    image = spec(tmp_path)
    builder = ImageBuilder(image, runner=FakeDebootstrap(), mountinfo_path=tmp_path / "none")
    builder.ensure("present", check_mode=False)
    assert builder.ensure("absent", check_mode=True).changed and image.image_dir.exists()
    assert builder.ensure("absent", check_mode=False).changed
    assert not image.image_dir.exists()
    assert not builder.ensure("absent", check_mode=False).changed


@pytest.mark.usefixtures("no_root_needed")
def test_force_rebuilds_in_place(tmp_path: Path) -> None:
    image = spec(tmp_path)
    fake = FakeDebootstrap()
    builder = ImageBuilder(image, runner=fake, mountinfo_path=tmp_path / "none")
    builder.ensure("present", check_mode=False)
    rebuilt = builder.ensure("present", check_mode=False, force=True)
    assert rebuilt.built and image.rootfs.is_dir()
    assert len([call for call in fake.calls if call[0] == "debootstrap"]) == 2
    assert sorted(p.name for p in (tmp_path / "images").iterdir() if not p.name.endswith(".lock")) == [
        image.image_dir.name
    ]
