# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One ComputerSystem behind a BMC: locate it, read its facts, power, boot override, virtual media."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.client import RedfishClient
from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.errors import (
    RedfishError,
    RedfishTimeout,
    RedfishUnsupported,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.facts import (
    BootOverride,
    MediaDevice,
    Nic,
    SystemFacts,
)

SERVICE_ROOT = "/redfish/v1"
POLL_INTERVAL = 1.0

# ResetType values by preference, for each thing this module does with power
_RESET_PREFERENCES = {
    "on": ("On", "ForceOn"),
    "graceful_off": ("GracefulShutdown",),
    "force_off": ("ForceOff",),
    "reset": ("ForceRestart", "GracefulRestart", "PowerCycle"),
}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _link(document: Mapping[str, Any], key: str) -> str | None:
    value = document.get(key)
    return _str(value.get("@odata.id")) if isinstance(value, dict) else None


def _members(collection: Mapping[str, Any]) -> list[str]:
    links = (
        _str(member.get("@odata.id"))
        for member in collection.get("Members") or []
        if isinstance(member, dict)
    )
    return [link for link in links if link]


def memory_mib(gib: Any) -> int | None:
    if isinstance(gib, bool) or not isinstance(gib, (int, float)):
        return None
    return round(float(gib) * 1024)


def choose_reset(kind: str, allowed: tuple[str, ...] | None) -> str | None:
    """The ResetType for ``kind`` among what the BMC advertises (the preferred one when it does not say)."""
    preferences = _RESET_PREFERENCES[kind]
    if allowed is None:
        return preferences[0]
    return next((value for value in preferences if value in allowed), None)


class RedfishSystem:
    """One ComputerSystem behind a BMC: located once, then read and changed."""

    def __init__(
        self,
        client: RedfishClient,
        system_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.client = client
        self.system_id = system_id
        self.clock = clock
        self.sleep = sleep
        self.poll_interval = poll_interval
        self._uri: str | None = None

    # locating and reading

    def locate(self) -> str:
        if self._uri is None:
            self._uri = self._find_system()
        return self._uri

    def _find_system(self) -> str:
        root = self.client.get(SERVICE_ROOT)
        systems_link = _link(root, "Systems")
        if not systems_link:
            raise RedfishUnsupported(f"the BMC at {self.client.base_url} has no Systems collection")
        members = _members(self.client.get(systems_link))
        if not members:
            raise RedfishError(f"the BMC at {self.client.base_url} manages no ComputerSystem")
        if self.system_id is None:
            if len(members) == 1:
                return members[0]
            ids = ", ".join(member.rstrip("/").rsplit("/", 1)[-1] for member in members)
            raise RedfishError(
                f"the BMC at {self.client.base_url} manages {len(members)} systems ({ids}): set system_id"
            )
        for member in members:
            if member.rstrip("/").rsplit("/", 1)[-1] == self.system_id:
                return member
        for member in members:  # an Id need not be the last path segment
            if self.client.get(member).get("Id") == self.system_id:
                return member
        ids = ", ".join(member.rstrip("/").rsplit("/", 1)[-1] for member in members)
        raise RedfishError(
            f"the BMC at {self.client.base_url} has no system {self.system_id!r} (it has: {ids})"
        )

    def facts(self) -> SystemFacts:
        uri = self.locate()
        system = self.client.get(uri)
        processors = system.get("ProcessorSummary") or {}
        memory = system.get("MemorySummary") or {}
        boot = system.get("Boot") or {}
        reset = (system.get("Actions") or {}).get("#ComputerSystem.Reset") or {}
        managers = (system.get("Links") or {}).get("ManagedBy") or []
        return SystemFacts(
            id=str(system.get("Id") or uri.rstrip("/").rsplit("/", 1)[-1]),
            uri=uri,
            name=_str(system.get("Name")),
            uuid=_str(system.get("UUID")),
            manufacturer=_str(system.get("Manufacturer")),
            model=_str(system.get("Model")),
            serial_number=_str(system.get("SerialNumber")),
            power_state=_str(system.get("PowerState")),
            processor_count=_int(processors.get("Count")),
            logical_processor_count=_int(processors.get("LogicalProcessorCount")),
            memory_mib=memory_mib(memory.get("TotalSystemMemoryGiB")),
            nics=self._nics(system),
            boot=BootOverride(
                target=_str(boot.get("BootSourceOverrideTarget")),
                enabled=_str(boot.get("BootSourceOverrideEnabled")),
                mode=_str(boot.get("BootSourceOverrideMode")),
                allowed_targets=tuple(boot.get("BootSourceOverrideTarget@Redfish.AllowableValues") or ()),
            ),
            reset_types=self._reset_types(reset),
            reset_target=_str(reset.get("target")),
            manager_uri=_str(managers[0].get("@odata.id"))
            if managers and isinstance(managers[0], dict)
            else None,
        )

    def _nics(self, system: Mapping[str, Any]) -> tuple[Nic, ...]:
        link = _link(system, "EthernetInterfaces")
        if not link:
            return ()
        nics = []
        for member in _members(self.client.get(link)):
            nic = self.client.get(member)
            mac = _str(nic.get("MACAddress")) or _str(nic.get("PermanentMACAddress"))
            nics.append(
                Nic(id=str(nic.get("Id") or member.rsplit("/", 1)[-1]), mac=mac.lower() if mac else None)
            )
        return tuple(nics)

    def _reset_types(self, reset: Mapping[str, Any]) -> tuple[str, ...] | None:
        allowed = reset.get("ResetType@Redfish.AllowableValues")
        if isinstance(allowed, list):
            return tuple(str(value) for value in allowed)
        info_link = _str(reset.get("@Redfish.ActionInfo"))
        if not info_link:
            return None
        for parameter in self.client.get(info_link).get("Parameters") or []:
            if isinstance(parameter, dict) and parameter.get("Name") == "ResetType":
                return tuple(str(value) for value in parameter.get("AllowableValues") or ())
        return None

    def power_state(self) -> str | None:
        return _str(self.client.get(self.locate()).get("PowerState"))

    # power

    def reset(self, facts: SystemFacts, reset_type: str) -> None:
        if not facts.reset_target:
            raise RedfishUnsupported(f"system {facts.id} offers no ComputerSystem.Reset action")
        if facts.reset_types is not None and reset_type not in facts.reset_types:
            raise RedfishUnsupported(
                f"system {facts.id} does not accept ResetType {reset_type} "
                f"(it accepts: {', '.join(facts.reset_types) or 'none'})"
            )
        self.client.post(facts.reset_target, {"ResetType": reset_type})

    def wait_power(self, want: str, timeout: float) -> float:
        """Poll until PowerState is ``want``; the seconds waited, or RedfishTimeout (after a last look)."""
        started = self.clock()
        deadline = started + timeout
        while True:
            state = self.power_state()
            now = self.clock()
            if state == want:
                return now - started
            if now >= deadline:
                raise RedfishTimeout(
                    f"system {self.system_id or self.locate()} is still {state} after {now - started:.1f} s, "
                    f"not {want}",
                    state=state,
                    waited=round(now - started, 3),
                )
            self.sleep(min(self.poll_interval, deadline - now))

    def _reset_type(self, facts: SystemFacts, kind: str, purpose: str) -> str:
        reset_type = choose_reset(kind, facts.reset_types)
        if reset_type is None:
            wanted = ", ".join(_RESET_PREFERENCES[kind])
            raise RedfishUnsupported(f"system {facts.id} accepts no ResetType that {purpose} ({wanted})")
        return reset_type

    def power_on(self, facts: SystemFacts, timeout: float) -> tuple[list[str], float]:
        reset_type = self._reset_type(facts, "on", "powers it on")
        self.reset(facts, reset_type)
        return [reset_type], self.wait_power("On", timeout)

    def power_off(
        self, facts: SystemFacts, graceful_timeout: float, timeout: float
    ) -> tuple[list[str], float]:
        """GracefulShutdown, then ForceOff when the host is still on after ``graceful_timeout`` seconds."""
        graceful = choose_reset("graceful_off", facts.reset_types)
        force = choose_reset("force_off", facts.reset_types)
        if graceful is None or (force is not None and graceful_timeout <= 0):
            force = self._reset_type(facts, "force_off", "powers it off")
            self.reset(facts, force)
            return [force], self.wait_power("Off", timeout)
        self.reset(facts, graceful)
        try:
            return [graceful], self.wait_power("Off", timeout if force is None else graceful_timeout)
        except RedfishTimeout as exc:
            if force is None:
                raise
            waited = float(exc.details.get("waited", graceful_timeout))
            still = exc.details.get("state")
        self.reset(facts, force)
        actions = [graceful, f"{force} (still {still} after {waited:g} s)"]
        return actions, waited + self.wait_power("Off", timeout)

    def power_reset(self, facts: SystemFacts, timeout: float) -> tuple[list[str], float]:
        reset_type = self._reset_type(facts, "reset", "restarts it")
        self.reset(facts, reset_type)
        return [reset_type], self.wait_power("On", timeout)

    # boot override

    def set_boot(self, facts: SystemFacts, target: str, enabled: str) -> None:
        self.client.patch(
            facts.uri, {"Boot": {"BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": enabled}}
        )

    # virtual media

    def media_devices(self, facts: SystemFacts) -> list[MediaDevice]:
        """Virtual media of the system's manager (the classic place), else of the system itself."""
        collection = None
        if facts.manager_uri:
            collection = _link(self.client.get(facts.manager_uri), "VirtualMedia")
        if not collection:
            collection = _link(self.client.get(facts.uri), "VirtualMedia")
        if not collection:
            raise RedfishUnsupported(
                f"virtual media is not supported by this BMC: neither system {facts.id} nor its manager "
                "has a VirtualMedia collection"
            )
        return [self.media_device(member) for member in _members(self.client.get(collection))]

    def media_device(self, uri: str) -> MediaDevice:
        media = self.client.get(uri)
        actions = media.get("Actions") or {}
        return MediaDevice(
            uri=uri,
            id=str(media.get("Id") or uri.rsplit("/", 1)[-1]),
            media_types=tuple(str(kind) for kind in media.get("MediaTypes") or ()),
            inserted=media.get("Inserted") is True,
            image=_str(media.get("Image")),
            insert_target=_str((actions.get("#VirtualMedia.InsertMedia") or {}).get("target")),
            eject_target=_str((actions.get("#VirtualMedia.EjectMedia") or {}).get("target")),
        )

    def cd_device(self, facts: SystemFacts) -> MediaDevice:
        devices = self.media_devices(facts)
        for device in devices:
            if {"CD", "DVD"} & set(device.media_types):
                return device
        found = (
            ", ".join(f"{device.id} ({'/'.join(device.media_types) or '?'})" for device in devices) or "none"
        )
        raise RedfishUnsupported(
            f"virtual media is not supported by this BMC: no CD/DVD device (devices: {found})"
        )

    def insert_media(self, device: MediaDevice, image: str) -> None:
        if not device.insert_target:
            raise RedfishUnsupported(
                f"inserting virtual media is not supported by this BMC: {device.id} has no InsertMedia action"
            )
        self.client.post(device.insert_target, {"Image": image, "Inserted": True, "WriteProtected": True})

    def eject_media(self, device: MediaDevice) -> None:
        if not device.eject_target:
            raise RedfishUnsupported(
                f"ejecting virtual media is not supported by this BMC: {device.id} has no EjectMedia action"
            )
        self.client.post(device.eject_target, {})
