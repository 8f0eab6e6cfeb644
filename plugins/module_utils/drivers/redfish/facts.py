# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What is read of a system through its BMC: identity, hardware, power, boot override, virtual media."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Nic:
    id: str
    mac: str | None


@dataclass(frozen=True)
class BootOverride:
    target: str | None  # BootSourceOverrideTarget: Pxe, Hdd, Cd, None, ...
    enabled: str | None  # BootSourceOverrideEnabled: Disabled, Once, Continuous
    mode: str | None = None  # BootSourceOverrideMode: UEFI, Legacy
    allowed_targets: tuple[str, ...] = ()  # empty when the BMC does not say

    def summary(self) -> dict[str, Any]:
        return {"target": self.target, "enabled": self.enabled}


@dataclass(frozen=True)
class SystemFacts:
    id: str
    uri: str
    name: str | None
    uuid: str | None
    manufacturer: str | None
    model: str | None
    serial_number: str | None
    power_state: str | None
    processor_count: int | None  # ProcessorSummary.Count: processors (often sockets)
    logical_processor_count: int | None  # ProcessorSummary.LogicalProcessorCount: threads
    memory_mib: int | None
    nics: tuple[Nic, ...]
    boot: BootOverride
    reset_types: tuple[str, ...] | None  # None: the BMC does not say which it accepts
    reset_target: str | None = None
    manager_uri: str | None = None

    @property
    def cpus(self) -> int | None:
        """What a guest would call vCPUs: logical processors when reported, else processors."""
        return self.logical_processor_count or self.processor_count

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for internal in ("reset_target", "manager_uri"):
            data.pop(internal)
        data["cpus"] = self.cpus
        data["nics"] = [asdict(nic) for nic in self.nics]
        data["boot"] = {**asdict(self.boot), "allowed_targets": list(self.boot.allowed_targets)}
        data["reset_types"] = None if self.reset_types is None else list(self.reset_types)
        return data

    def summary(self) -> dict[str, Any]:
        return {"power_state": self.power_state, "boot": self.boot.summary()}


@dataclass(frozen=True)
class MediaDevice:
    uri: str
    id: str
    media_types: tuple[str, ...]
    inserted: bool
    image: str | None
    insert_target: str | None
    eject_target: str | None

    def summary(self) -> dict[str, Any]:
        return {"device": self.id, "inserted": self.inserted, "image": self.image}
