"""Berth's execution environment: build it with ansible-builder and podman, and run a playbook in it.

    .venv/bin/python tools/ee.py [all] [--keep-run]   # every step below, each timed
    .venv/bin/python tools/ee.py requirements [--check]
    .venv/bin/python tools/ee.py context [--context DIR]
    .venv/bin/python tools/ee.py clean                 # remove Berth's podman storage (its images)

`all`:
1. podman and runc from Debian (apt-get, only when missing);
2. Berth's own Debian rootfs, the lab's base image (berth.fleet's image builder: reused when cached,
   built with debootstrap when not);
3. that rootfs imported as the EE's base image (`tar | podman import`; skipped when the image
   already holds this rootfs);
4. `ansible-builder build` of execution-environment.yml (which runs `ansible-builder create` first);
5. tools/ee_smoke.yml run inside the image with `ansible-runner run --process-isolation`.

Every podman call, including the ones ansible-builder and ansible-runner make, reads Berth's own
podman configuration and storage (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF; written to build/ee/,
images under /var/lib/berth/containers): the machine's /etc/containers and its podman storage are
never used. docs/awx.md says what each setting is for and what was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the collection, through the checkout's ansible_collections/ link
from ansible_collections.berth.fleet.plugins.module_utils.local.image import (
    DEFAULT_MIRROR,
    DEFAULT_SUITE,
    ImageBuilder,
    ImageResult,
    ImageSpec,
    find_debian_mirror,
    mounts_below,
    read_apt_sources,
)

BIN = Path(sys.executable).parent
EE_FILE = ROOT / "execution-environment.yml"
REQUIREMENTS = ROOT / "requirements.txt"
WORK = ROOT / "build" / "ee"
SMOKE_PLAYBOOK = ROOT / "tools" / "ee_smoke.yml"
SMOKE_INVENTORY = ROOT / "inventories" / "prod" / "topology.berth.yml"
# the lab's base image: the same name and cache as roles/local_estate, so the EE's base is that rootfs
LAB_DEFAULTS = ROOT / "roles" / "local_estate" / "defaults" / "main.yml"
APT_PACKAGES = ("podman", "runc")
BASE_LABEL = "berth.base_image_id"

# The host files a build's pip and apt need to reach their indexes the way the host does: the trust
# store (this machine reaches PyPI through a TLS proxy whose CA only the host's bundle has) and the
# site-wide pip settings (index, cert). Mounted read-only into every container, never copied into a
# layer; user-level pip config and file:// indexes stay on the host.
HOST_SETTINGS: tuple[Path, ...] = (Path("/etc/ssl/certs/ca-certificates.crt"), Path("/etc/pip.conf"))


class EEError(Exception):
    """A step that failed, with what it ran and the end of its output."""


# ---------------------------------------------------------------------------------------------------
# what the files say


def project_dependencies(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    with pyproject.open("rb") as handle:
        dependencies: list[str] = tomllib.load(handle)["project"]["dependencies"]
    return dependencies


def requirements_text(dependencies: Sequence[str]) -> str:
    """The collection's requirements.txt: pyproject's [project].dependencies, in their order."""
    header = (
        "# berth.fleet's Python requirements, for ansible-builder (meta/execution-environment.yml).\n"
        "# Generated from pyproject.toml's [project].dependencies: do not edit, run\n"
        "#   .venv/bin/python tools/ee.py requirements\n"
        "# (introspect leaves out ansible-core and PyYAML: the image has them already)\n"
    )
    return header + "".join(f"{line}\n" for line in dependencies)


def requirements_current() -> bool:
    wanted = requirements_text(project_dependencies())
    return REQUIREMENTS.is_file() and REQUIREMENTS.read_text() == wanted


def ee_definition(path: Path = EE_FILE) -> dict[str, Any]:
    definition: dict[str, Any] = yaml.safe_load(path.read_text())
    return definition


def collection_tarball(definition: Mapping[str, Any]) -> Path:
    """Where the EE definition takes the collection from (its one additional build file)."""
    (entry,) = definition["additional_build_files"]
    return ROOT / str(entry["src"])


def base_image_name(definition: Mapping[str, Any]) -> str:
    name: str = definition["images"]["base_image"]["name"]
    return name


def ee_tag() -> str:
    version: str = yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]
    return f"localhost/berth/fleet-ee:{version}"


# ---------------------------------------------------------------------------------------------------
# Berth's podman: its own configuration and storage


@dataclass(frozen=True)
class Engine:
    """Where Berth's podman configuration is written and where its images and run state live.

    Keep run_dir short: with it 80 characters deep (pytest's tmp_path) every container start took
    20 s instead of 0.3 s (conmon's sockets live below it, and a unix socket path has 108 bytes).
    """

    config_dir: Path = WORK
    storage: Path = Path("/var/lib/berth/containers")
    run_dir: Path = Path("/run/berth/containers")
    host_settings: tuple[Path, ...] = HOST_SETTINGS

    @property
    def containers_conf(self) -> Path:
        return self.config_dir / "containers.conf"

    @property
    def storage_conf(self) -> Path:
        return self.config_dir / "storage.conf"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CONTAINERS_CONF": str(self.containers_conf),
            "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
        }

    def containers_conf_text(self) -> str:
        volumes = [f"{path}:{path}:ro" for path in self.host_settings if path.is_file()]
        return (
            "# Berth's own podman configuration (CONTAINERS_CONF), written by tools/ee.py (docs/awx.md).\n"
            "[containers]\n"
            "# podman's defaults fail here: 'setrlimit RLIMIT_NOFILE: Operation not permitted'\n"
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            "# the host's network: the build's pip and apt reach PyPI and Debian the way the host does\n"
            'netns = "host"\n'
            "# the host's trust store and site-wide pip settings, read-only, in builds and runs\n"
            f"volumes = {json.dumps(volumes)}\n"
            "\n"
            "[engine]\n"
            "# crun refuses this machine's hybrid cgroups: 'cgroups in hybrid mode not supported'\n"
            'runtime = "runc"\n'
            f'tmp_dir = "{self.run_dir / "libpod"}"\n'
        )

    def storage_conf_text(self) -> str:
        return (
            "# Berth's own podman storage (CONTAINERS_STORAGE_CONF), written by tools/ee.py.\n"
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{self.storage}"\n'
            f'runroot = "{self.run_dir / "storage"}"\n'
        )

    def write(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        for path, text in (
            (self.containers_conf, self.containers_conf_text()),
            (self.storage_conf, self.storage_conf_text()),
        ):
            scratch = path.with_suffix(".tmp")
            scratch.write_text(text)
            os.replace(scratch, path)

    def podman(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", *args], capture_output=True, text=True, env=self.env(), check=False, **kwargs
        )

    def images(self) -> list[str]:
        listed = self.podman("images", "--all", "--quiet", "--no-trunc")
        return listed.stdout.split() if listed.returncode == 0 else []

    def remove_all(self) -> list[str]:
        """Every container and image in this storage, then the storage itself; what was mounted."""
        if shutil.which("podman"):
            self.write()
            self.podman("rm", "--all", "--force")
            self.podman("rmi", "--all", "--force")
        leftovers: list[str] = []
        mountinfo = Path("/proc/self/mountinfo").read_text()
        for top in (self.storage, self.run_dir):
            for point in mounts_below(mountinfo, top):
                leftovers.append(point)
                subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
            shutil.rmtree(top, ignore_errors=True)
        return leftovers


# ---------------------------------------------------------------------------------------------------
# running things, timed


@contextmanager
def step(title: str, waits_for: str, timings: dict[str, float]) -> Iterator[None]:
    print(f"\n== {title}: waiting for {waits_for}", flush=True)
    started = time.monotonic()
    try:
        yield
    except BaseException:
        print(f"   {title}: failed after {time.monotonic() - started:.1f} s", flush=True)
        raise
    timings[title] = round(time.monotonic() - started, 1)
    print(f"   {title}: done in {timings[title]:.1f} s", flush=True)


def run(argv: Sequence[str], env: Mapping[str, str] | None = None, **kwargs: Any) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, env=env, check=False, **kwargs)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-25:])
        raise EEError(f"command failed (rc={result.returncode}): {shlex.join(argv)}\n{tail}")
    return str(result.stdout)


def stream(argv: Sequence[str], log: Path, env: Mapping[str, str]) -> None:
    """Run argv with all its output in log, echoing the build's FROM, RUN and COPY steps as they start."""
    started = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        out.write(f"$ {shlex.join(argv)}\n")
        proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(env)
        )
        assert proc.stdout is not None
        _echo_steps(proc.stdout, out, started)
        rc = proc.wait()
    if rc != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise EEError(f"command failed (rc={rc}): {shlex.join(argv)} (whole log: {log})\n{tail}")


def _echo_steps(lines: IO[str], out: IO[str], started: float) -> None:
    for line in lines:
        out.write(line)
        text = line.strip()
        instruction = text.partition(": ")[2]
        if ("STEP " in text and instruction.startswith(("FROM ", "RUN ", "COPY "))) or text.startswith(
            "Successfully tagged"
        ):
            print(f"   {time.monotonic() - started:6.1f} s  {text[:130]}", flush=True)


# ---------------------------------------------------------------------------------------------------
# the steps


def write_requirements() -> None:
    REQUIREMENTS.write_text(requirements_text(project_dependencies()))


def build_collection(target: Path) -> Path:
    """This checkout as a collection tarball at target (built beside it, then renamed into place).

    A tarball of the same files (the same MANIFEST.json and FILES.json, which hold every file's
    sha256) is left as it is: its bytes, and so the image build's cached layers, stay valid.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as scratch:
        run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", scratch, str(ROOT)])
        (built,) = Path(scratch).glob("berth-fleet-*.tar.gz")
        if not target.is_file() or _manifests(built) != _manifests(target):
            os.replace(built, target)
    return target


def _manifests(tarball: Path) -> tuple[bytes, ...]:
    with tarfile.open(tarball) as archive:
        members = [archive.extractfile(name) for name in ("MANIFEST.json", "FILES.json")]
        return tuple(member.read() if member else b"" for member in members)


def _builder_argv(command: str, context: Path) -> list[str]:
    if not requirements_current():
        raise EEError("requirements.txt is not what pyproject.toml says: run tools/ee.py requirements")
    build_collection(collection_tarball(ee_definition()))
    return [str(BIN / "ansible-builder"), command, "--file", str(EE_FILE), "--context", str(context)]


def create_context(context: Path) -> Path:
    """`ansible-builder create`: the build context (Containerfile, _build/) in context."""
    run([*_builder_argv("create", context), "--output-filename", "Containerfile"])
    return context


def ensure_podman(engine: Engine) -> str:
    missing = [pkg for pkg in APT_PACKAGES if not _dpkg_installed(pkg)]
    if missing:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES]
        try:
            run(install, env=env)
        except EEError:
            run(["apt-get", "update", "-qq"], env=env)
            run(install, env=env)
    engine.write()
    version = run(["podman", "--version"], env=engine.env()).strip()
    return f"{version} ({'installed ' + ' '.join(missing) if missing else 'already installed'})"


def _dpkg_installed(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and result.stdout.endswith(" installed")


def lab_image_spec() -> ImageSpec:
    """The ImageSpec roles/local_estate builds (its name and cache; the controller's Debian mirror)."""
    defaults = yaml.safe_load(LAB_DEFAULTS.read_text())
    mirror = find_debian_mirror(read_apt_sources(), DEFAULT_SUITE) or DEFAULT_MIRROR
    spec = ImageSpec(
        name=defaults["local_estate_image_name"],
        mirror=mirror,
        images_dir=Path(defaults["local_estate_images_dir"]),
    )
    spec.validate()
    return spec


def ensure_rootfs() -> ImageResult:
    return ImageBuilder(lab_image_spec()).ensure("present", check_mode=False)


def image_facts(engine: Engine, name: str) -> dict[str, Any] | None:
    inspected = engine.podman("image", "inspect", name)
    if inspected.returncode != 0:
        return None
    facts: dict[str, Any] = json.loads(inspected.stdout)[0]
    return facts


def image_labels(facts: Mapping[str, Any] | None) -> dict[str, str]:
    labels: dict[str, str] = ((facts or {}).get("Config") or {}).get("Labels") or {}
    return labels


def import_base(engine: Engine, rootfs: ImageResult, name: str) -> bool:
    """The rootfs as podman image name; False when name already holds this very rootfs."""
    old = image_facts(engine, name)
    if image_labels(old).get(BASE_LABEL) == rootfs.image_id:
        return False
    tar = subprocess.Popen(
        ["tar", "-C", rootfs.rootfs, "--numeric-owner", "--xattrs", "-cf", "-", "."],
        stdout=subprocess.PIPE,
    )
    try:
        run(
            [
                "podman",
                "import",
                "--change",
                f"LABEL={BASE_LABEL}={rootfs.image_id}",
                "--change",
                'CMD=["/bin/bash"]',
                "--message",
                f"Berth base rootfs {rootfs.image_dir}",
                "-",
                name,
            ],
            env=engine.env(),
            stdin=tar.stdout,
        )
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0:
            raise EEError(f"tar of {rootfs.rootfs} failed (rc={tar.returncode})")
    if old:
        engine.podman("rmi", old["Id"])  # the previous rootfs, untagged now (kept if still in use)
    return True


def build_ee(engine: Engine, tag: str, context: Path, log: Path) -> dict[str, Any]:
    """`ansible-builder build` (create, then podman build); the image's facts after."""
    argv = [*_builder_argv("build", context), "--container-runtime", "podman", "--tag", tag, "-v", "3"]
    stream(argv, log, engine.env())
    # the previous image of this tag and the stage images builds leave (3 GB after five builds):
    # Berth's own storage, so nothing of anyone else's; the base stage's layers stay as cache
    engine.podman("image", "prune", "--force")
    facts = image_facts(engine, tag)
    if facts is None:
        raise EEError(f"ansible-builder build finished but there is no image {tag}")
    return {
        "id": facts["Id"][:12],
        "created": facts["Created"],
        "size_mb": round(facts["Size"] / 1e6),
        "labels": image_labels(facts),
    }


SMOKE_REPORT_TASK = "Report what ran where"
SMOKE_MODULE_TASK = "A berth.fleet module drives libvirt through libvirt-python (the in-process test driver)"


def run_in_ee(engine: Engine, tag: str, keep: bool = False) -> dict[str, Any]:
    """tools/ee_smoke.yml in the image with ansible-runner; what it saw (raises when it failed)."""
    data = Path(tempfile.mkdtemp(prefix="berth-ee-run-"))
    ident = f"smoke-{uuid.uuid4().hex[:8]}"
    try:
        (data / "project").mkdir()
        shutil.copy(SMOKE_PLAYBOOK, data / "project" / "smoke.yml")
        (data / "inventory").mkdir()
        shutil.copy(SMOKE_INVENTORY, data / "inventory" / "topology.berth.yml")
        (data / "env").mkdir()
        envvars = {
            # the inventory is a Berth spec and nothing else; a spec that does not parse fails the run
            "ANSIBLE_INVENTORY_ENABLED": "berth.fleet.topology",
            "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true",
            "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true",
        }
        (data / "env" / "envvars").write_text(yaml.safe_dump(envvars))
        argv = [
            str(BIN / "ansible-runner"),
            "run",
            str(data),
            "--playbook",
            "smoke.yml",
            "--ident",
            ident,
            "--process-isolation",
            "--process-isolation-executable",
            "podman",
            "--container-image",
            tag,
            # the image runs as uid 1000, which cannot write the artifacts dir this uid owns;
            # ansible-runner passes the same --user to docker itself, not to podman
            f"--container-option=--user={os.getuid()}",
        ]
        result = subprocess.run(argv, capture_output=True, text=True, env=engine.env(), check=False)
        artifacts = data / "artifacts" / ident
        status, rc = _read(artifacts / "status"), _read(artifacts / "rc")
        if result.returncode != 0 or status != "successful":
            tail = "\n".join(result.stdout.strip().splitlines()[-30:])
            raise EEError(
                f"ansible-runner in {tag}: status {status!r}, rc {rc!r}\n{shlex.join(argv)}\n{tail}"
            )
        command = json.loads(_read(artifacts / "command") or "{}").get("command", [])
        return {
            "status": status,
            "rc": rc,
            "command": command,
            "report": _task_result(artifacts, SMOKE_REPORT_TASK).get("msg", {}),
            "module_changed": _task_result(artifacts, SMOKE_MODULE_TASK).get("changed"),
            "stdout_tail": result.stdout.strip().splitlines()[-3:],
            "private_data_dir": str(data),
        }
    finally:
        # a runner killed mid-run leaves its container behind: remove it by the name runner gave it
        engine.podman("rm", "--force", "--ignore", f"ansible_runner_{ident}")
        if not keep:
            shutil.rmtree(data, ignore_errors=True)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _task_result(artifacts: Path, task: str) -> dict[str, Any]:
    for event_file in sorted((artifacts / "job_events").glob("*.json")):
        event = json.loads(event_file.read_text())
        data = event.get("event_data", {})
        if event.get("event") == "runner_on_ok" and data.get("task") == task:
            found: dict[str, Any] = data.get("res", {})
            return found
    return {}


# ---------------------------------------------------------------------------------------------------


def all_steps(engine: Engine, keep_run: bool = False) -> dict[str, Any]:
    timings: dict[str, float] = {}
    definition = ee_definition()
    base, tag = base_image_name(definition), ee_tag()
    with step("podman", "apt-get install podman runc, unless installed", timings):
        print(f"   {ensure_podman(engine)}")
        print(f"   CONTAINERS_CONF={engine.containers_conf} CONTAINERS_STORAGE_CONF={engine.storage_conf}")
    with step("rootfs", "Berth's base rootfs (cached, else debootstrap: about a minute)", timings):
        rootfs = ensure_rootfs()
        print(f"   {rootfs.rootfs} ({'built' if rootfs.built else 'cached'}, image {rootfs.image_id})")
    with step("import", f"tar {rootfs.rootfs} | podman import {base}", timings):
        imported = import_base(engine, rootfs, base)
        print(f"   {base}: {'imported' if imported else 'holds this rootfs already, kept'}")
    log = engine.config_dir / "build.log"
    with step("build", f"ansible-builder build {tag} (podman build, log {log})", timings):
        image = build_ee(engine, tag, engine.config_dir / "context", log)
        print(f"   {tag}: image {image['id']}, {image['size_mb']} MB, created {image['created']}")
    with step("run", f"ansible-runner run --process-isolation tools/ee_smoke.yml in {tag}", timings):
        ran = run_in_ee(engine, tag, keep=keep_run)
        print(
            f"   {ran['status']}, rc {ran['rc']}; in the image: {json.dumps(ran['report'].get('python', {}))}"
        )
        for line in ran["stdout_tail"]:
            print(f"   | {line}")
    print("\n== seconds: " + ", ".join(f"{name} {seconds}" for name, seconds in timings.items()))
    return {"timings": timings, "image": image, "run": ran, "imported": imported, "rootfs": rootfs}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    everything = sub.add_parser("all", help="podman, rootfs, import, build, run (the default)")
    everything.add_argument("--keep-run", action="store_true", help="keep ansible-runner's private data dir")
    requirements = sub.add_parser("requirements", help="write requirements.txt from pyproject.toml")
    requirements.add_argument("--check", action="store_true", help="only fail when it is out of date")
    context = sub.add_parser("context", help="ansible-builder create (with a fresh collection tarball)")
    context.add_argument("--context", type=Path, default=WORK / "context")
    sub.add_parser("clean", help="remove Berth's podman storage: its images and containers")
    args = parser.parse_args(argv)
    engine = Engine()
    try:
        if args.command == "requirements":
            if args.check:
                current = requirements_current()
                print(f"{REQUIREMENTS.name} is {'current' if current else 'out of date'}")
                return 0 if current else 1
            write_requirements()
            print(f"wrote {REQUIREMENTS}")
        elif args.command == "context":
            print(f"build context: {create_context(args.context)}")
        elif args.command == "clean":
            images = len(engine.images())
            engine.remove_all()
            print(f"removed {images} image(s) and {engine.storage}")
        else:
            all_steps(engine, keep_run=getattr(args, "keep_run", False))
    except EEError as exc:
        print(f"tools/ee.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
