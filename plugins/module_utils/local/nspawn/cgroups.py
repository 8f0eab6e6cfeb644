# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-machine cgroups, in cgroup v1, v2 or a hybrid of both.

systemd is not PID 1 on the machines this runs on, so nspawn cannot register a scope and ignores
``--property=``. Each machine therefore gets its own cgroup in every hierarchy Berth uses, created
directly in cgroupfs under the caller's cgroup; resource limits are written there and the nspawn
process joins them before it execs. A separate cgroup per machine also stops two machines' systemd
instances from sharing one ``payload`` cgroup, which is what nspawn does when started from the root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ansible_collections.berth.fleet.plugins.module_utils.local.nspawn.errors import NspawnError

CPU_PERIOD_US = 100_000

_V1_CONTROLLERS = frozenset(
    {
        *("blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "hugetlb", "memory", "misc"),
        *("net_cls", "net_prio", "perf_event", "pids", "rdma"),
    }
)


@dataclass(frozen=True)
class Hierarchy:
    mount: str
    version: int
    controllers: frozenset[str]  # v1: mount options such as {"memory"} or {"name=systemd"}; v2: enabled ones
    own_path: str  # the caller's cgroup in this hierarchy

    def roles(self) -> set[str]:
        if self.version == 2:
            return {"unified"} | ({"memory", "cpu"} & self.controllers)
        found = set()
        if "name=systemd" in self.controllers:
            found.add("systemd")
        found |= {"memory", "cpu"} & self.controllers
        return found


def versions_by_role(hierarchies: Sequence[Hierarchy]) -> dict[str, int]:
    """Which cgroup version carries each controller ("memory", "cpu", ...) on this host."""
    return {role: h.version for h in hierarchies for role in h.roles()}


def parse_cgroup_hierarchies(
    mountinfo: str, proc_self_cgroup: str, v2_controllers: Mapping[str, str] | None = None
) -> list[Hierarchy]:
    """The cgroup hierarchies mounted here and where the caller sits in each of them.

    ``v2_controllers`` maps a cgroup2 mount point to the text of the caller's ``cgroup.controllers``
    there (the controllers a child cgroup could use); it is read by the caller to keep this pure.
    """
    own: dict[frozenset[str], str] = {}
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            key = frozenset(parts[1].split(",")) if parts[1] else frozenset({"<v2>"})
            own[key] = parts[2]
    hierarchies: list[Hierarchy] = []
    for line in mountinfo.splitlines():
        if " - " not in line:
            continue
        pre, post = line.split(" - ", 1)
        post_fields = post.split(" ")
        fstype = post_fields[0]
        mount_point = pre.split(" ")[4]
        options = set(post_fields[2].split(",")) if len(post_fields) > 2 else set()
        if fstype == "cgroup":
            controllers = frozenset(
                opt for opt in options if opt in _V1_CONTROLLERS or opt.startswith("name=")
            )
            if controllers in own:
                hierarchies.append(Hierarchy(mount_point, 1, controllers, own[controllers]))
        elif fstype == "cgroup2" and frozenset({"<v2>"}) in own:
            text = (v2_controllers or {}).get(mount_point, "")
            hierarchies.append(Hierarchy(mount_point, 2, frozenset(text.split()), own[frozenset({"<v2>"})]))
    return hierarchies


def machine_cgroups(hierarchies: Sequence[Hierarchy], name: str) -> dict[str, str]:
    """Role -> cgroup directory for one machine: <mount><caller's cgroup>/berth/<name>."""
    paths: dict[str, str] = {}
    for hierarchy in hierarchies:
        directory = os.path.join(hierarchy.mount, hierarchy.own_path.lstrip("/"), "berth", name)
        for role in sorted(hierarchy.roles()):
            paths.setdefault(role, directory)
    if "systemd" not in paths and "unified" in paths:
        paths["systemd"] = paths["unified"]
    return paths


def limit_writes(
    hierarchies: Sequence[Hierarchy],
    cgroups: Mapping[str, str],
    cpu_quota: int | None,
    memory_max: int | None,
) -> list[tuple[str, str]]:
    """(file, value) pairs that set, or lift, a machine's limits in its cgroups."""
    version = versions_by_role(hierarchies)
    writes: list[tuple[str, str]] = []
    if "memory" in cgroups:
        directory = cgroups["memory"]
        if version.get("memory") == 2:
            value = str(memory_max * 1024 * 1024) if memory_max else "max"
            writes.append((os.path.join(directory, "memory.max"), value))
        else:
            value = str(memory_max * 1024 * 1024) if memory_max else "-1"
            writes.append((os.path.join(directory, "memory.limit_in_bytes"), value))
    elif memory_max:
        raise NspawnError("memory_max is set but no memory cgroup controller is available on this machine")
    if "cpu" in cgroups:
        directory = cgroups["cpu"]
        quota = cpu_quota * CPU_PERIOD_US // 100 if cpu_quota else None
        if version.get("cpu") == 2:
            writes.append((os.path.join(directory, "cpu.max"), f"{quota or 'max'} {CPU_PERIOD_US}"))
        else:
            writes.append((os.path.join(directory, "cpu.cfs_period_us"), str(CPU_PERIOD_US)))
            writes.append((os.path.join(directory, "cpu.cfs_quota_us"), str(quota or -1)))
    elif cpu_quota:
        raise NspawnError("cpu_quota is set but no cpu cgroup controller is available on this machine")
    return writes


def read_cgroup_limits(hierarchies: Sequence[Hierarchy], cgroups: Mapping[str, str]) -> dict[str, int | None]:
    """The limits currently written in a machine's cgroups (None: unlimited or not readable)."""
    version = versions_by_role(hierarchies)
    limits: dict[str, int | None] = {"cpu_quota": None, "memory_max": None}
    if "memory" in cgroups:
        name = "memory.max" if version.get("memory") == 2 else "memory.limit_in_bytes"
        raw = _read_text(os.path.join(cgroups["memory"], name)).strip()
        if raw.isdigit() and int(raw) < 1 << 50:
            limits["memory_max"] = int(raw) // (1024 * 1024)
    if "cpu" in cgroups:
        if version.get("cpu") == 2:
            raw = _read_text(os.path.join(cgroups["cpu"], "cpu.max")).split(" ")[0]
        else:
            raw = _read_text(os.path.join(cgroups["cpu"], "cpu.cfs_quota_us")).strip()
        if raw.isdigit():
            limits["cpu_quota"] = int(raw) * 100 // CPU_PERIOD_US
    return limits


def _read_text(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def discover_hierarchies() -> list[Hierarchy]:
    mountinfo = Path("/proc/self/mountinfo").read_text()
    own = Path("/proc/self/cgroup").read_text()
    v2: dict[str, str] = {}
    own_v2 = next((line.split(":", 2)[2] for line in own.splitlines() if line.startswith("0::")), None)
    for line in mountinfo.splitlines():
        if " - cgroup2 " in line and own_v2 is not None:
            mount_point = line.split(" ")[4]
            v2[mount_point] = _read_text(os.path.join(mount_point, own_v2.lstrip("/"), "cgroup.controllers"))
    return parse_cgroup_hierarchies(mountinfo, own, v2)


def create_cgroups(hierarchies: Sequence[Hierarchy], cgroups: Mapping[str, str]) -> None:
    for directory in sorted(set(cgroups.values())):
        os.makedirs(directory, exist_ok=True)
    for hierarchy in hierarchies:
        if hierarchy.version != 2:
            continue
        wanted = {"memory", "cpu"} & hierarchy.controllers
        if not wanted:
            continue
        # cgroup v2 hands a controller to a child only when every ancestor enables it for its children.
        berth_dir = os.path.dirname(cgroups["unified"])
        for directory in (os.path.dirname(berth_dir), berth_dir):
            try:
                with open(os.path.join(directory, "cgroup.subtree_control"), "w") as handle:
                    handle.write(" ".join(f"+{ctrl}" for ctrl in sorted(wanted)))
            except OSError as exc:
                raise NspawnError(
                    f"cannot enable {', '.join(sorted(wanted))} for child cgroups of {directory}: {exc}"
                ) from exc


def write_limits(writes: Sequence[tuple[str, str]]) -> None:
    for path, value in writes:
        try:
            with open(path, "w") as handle:
                handle.write(value)
        except OSError as exc:
            raise NspawnError(f"cannot write {value} to {path}: {exc}") from exc


def remove_cgroups(directories: Sequence[str], timeout: float = 5.0) -> list[str]:
    """Remove each cgroup tree bottom-up (and its 'berth' parent if now empty); return what remains."""
    deadline = time.monotonic() + timeout
    remaining: list[str] = []
    for top in sorted(set(directories)):
        while os.path.isdir(top):
            try:
                for current, subdirs, _files in os.walk(top, topdown=False):
                    for sub in subdirs:
                        os.rmdir(os.path.join(current, sub))
                os.rmdir(top)
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                    remaining.append(top)
                    break
                time.sleep(0.05)
        parent = os.path.dirname(top)
        if os.path.basename(parent) == "berth":
            with contextlib.suppress(OSError):
                os.rmdir(parent)
    return remaining


def memory_usage_bytes(hierarchies: Sequence[Hierarchy], cgroups: Mapping[str, str]) -> int | None:
    if "memory" not in cgroups:
        return None
    version = versions_by_role(hierarchies)
    name = "memory.current" if version.get("memory") == 2 else "memory.usage_in_bytes"
    raw = _read_text(os.path.join(cgroups["memory"], name)).strip()
    return int(raw) if raw.isdigit() else None


class MachineCgroups:
    """One machine's cgroups: the hierarchies (discovered on first use) and its directories in them."""

    def __init__(self, name: str, hierarchies: Sequence[Hierarchy] | None = None) -> None:
        self.name = name
        self._hierarchies = list(hierarchies) if hierarchies is not None else None

    @property
    def hierarchies(self) -> list[Hierarchy]:
        if self._hierarchies is None:
            self._hierarchies = discover_hierarchies()
        return self._hierarchies

    def planned(self, name: str | None = None) -> dict[str, str]:
        """Role -> directory where a machine's cgroups go now (under the caller's cgroup)."""
        return machine_cgroups(self.hierarchies, self.name if name is None else name)

    def of(self, recorded: Mapping[str, str] | None) -> dict[str, str]:
        """The cgroups a started machine recorded, else where they would be now."""
        if recorded:
            return dict(recorded)
        return self.planned()

    def enforced_limits(self, cgroups: Mapping[str, str]) -> dict[str, int | None]:
        return read_cgroup_limits(self.hierarchies, cgroups)

    def set_limits(self, cgroups: Mapping[str, str], cpu_quota: int | None, memory_max: int | None) -> None:
        write_limits(limit_writes(self.hierarchies, cgroups, cpu_quota, memory_max))

    def create(self, cgroups: Mapping[str, str]) -> None:
        create_cgroups(self.hierarchies, cgroups)

    def memory_usage(self, cgroups: Mapping[str, str]) -> int | None:
        return memory_usage_bytes(self.hierarchies, cgroups)
