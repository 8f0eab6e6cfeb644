# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The module's job on one BMC: check the request, read, compare, change unless check mode, read back.

sushy-tools always reports ``BootSourceOverrideEnabled: Continuous``, whatever was PATCHed: the
override is read back after a change and a difference becomes a warning, not a failure (real BMCs
may also apply boot settings at the next reset only).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.client import (
    RedfishClient,
    parse_bmc_url,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.errors import (
    RedfishError,
    RedfishUnsupported,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.facts import (
    BootOverride,
    MediaDevice,
    SystemFacts,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.retry import RetryPolicy
from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.system import (
    POLL_INTERVAL,
    RedfishSystem,
)
from ansible_collections.berth.fleet.plugins.module_utils.drivers.redfish.transport import (
    OpenUrlTransport,
    Transport,
)

POWER_ACTIONS = ("on", "off", "reset")
BOOT_TARGETS = {"pxe": "Pxe", "hdd": "Hdd", "cd": "Cd"}
BOOT_ENABLED = {"once": "Once", "persistent": "Continuous"}
MEDIA_STATES = ("inserted", "ejected")


@dataclass(frozen=True)
class BmcRequest:
    """Validated module parameters (the password is kept out of repr)."""

    bmc: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    validate_certs: bool = True
    ca_path: str | None = None
    system_id: str | None = None
    timeout: float = 10.0
    retries: int = 3
    power: str | None = None
    graceful_timeout: float = 60.0
    power_timeout: float = 120.0
    boot_device: str | None = None
    boot_mode: str = "once"
    media_image: str | None = None
    media_state: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> BmcRequest:
        media = params.get("virtual_media") or {}
        request = cls(
            bmc=str(params["bmc"]),
            username=params.get("username"),
            password=params.get("password"),
            validate_certs=bool(params.get("validate_certs", True)),
            ca_path=params.get("ca_path"),
            system_id=params.get("system_id"),
            timeout=float(params.get("timeout") or 10.0),
            retries=int(params.get("retries", 3)),
            power=params.get("power"),
            graceful_timeout=float(params.get("graceful_timeout", 60.0)),
            power_timeout=float(params.get("power_timeout", 120.0)),
            boot_device=params.get("boot_device"),
            boot_mode=str(params.get("boot_mode") or "once"),
            media_image=media.get("image"),
            media_state=(media.get("state") or "inserted") if media else None,
        )
        problems = request.problems()
        if problems:
            raise RedfishError("invalid parameters: " + "; ".join(problems))
        return request

    def problems(self) -> list[str]:
        problems: list[str] = []
        try:
            parse_bmc_url(self.bmc)
        except RedfishError as exc:
            problems.append(str(exc))
        if (self.username is None) != (self.password is None):
            problems.append("username and password go together")
        if self.power is not None and self.power not in POWER_ACTIONS:
            problems.append(f"power must be one of {', '.join(POWER_ACTIONS)}, not {self.power!r}")
        if self.boot_device is not None and self.boot_device not in BOOT_TARGETS:
            problems.append(f"boot_device must be one of {', '.join(BOOT_TARGETS)}, not {self.boot_device!r}")
        if self.boot_mode not in BOOT_ENABLED:
            problems.append(f"boot_mode must be one of {', '.join(BOOT_ENABLED)}, not {self.boot_mode!r}")
        if self.media_state is not None:
            if self.media_state not in MEDIA_STATES:
                problems.append(f"virtual_media.state must be one of {', '.join(MEDIA_STATES)}")
            elif self.media_state == "inserted" and not self.media_image:
                problems.append("virtual_media.state=inserted needs virtual_media.image")
        if self.timeout <= 0:
            problems.append(f"timeout must be > 0, not {self.timeout:g}")
        if self.retries < 0:
            problems.append(f"retries must be >= 0, not {self.retries}")
        for name, value in (
            ("graceful_timeout", self.graceful_timeout),
            ("power_timeout", self.power_timeout),
        ):
            if value < 0:
                problems.append(f"{name} must be >= 0, not {value:g}")
        return problems

    def secrets(self) -> list[str]:
        """What must never appear in a message: the password and the Authorization header it makes."""
        if not self.password:
            return []
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return [self.password, token]


@dataclass
class BmcOutcome:
    changed: bool
    before: SystemFacts
    after: SystemFacts
    actions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    waited: float = 0.0
    media_before: MediaDevice | None = None
    media_after: MediaDevice | None = None

    def summary(self, facts: SystemFacts, media: MediaDevice | None) -> dict[str, Any]:
        summary = facts.summary()
        if media is not None:
            summary["virtual_media"] = media.summary()
        return summary

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "changed": self.changed,
            "facts": self.after.as_dict(),
            "actions": list(self.actions),
            "waited": round(self.waited, 3),
            "diff": {
                "before": self.summary(self.before, self.media_before),
                "after": self.summary(self.after, self.media_after),
            },
        }
        if self.media_after is not None:
            result["virtual_media"] = self.media_after.summary()
        return result


class RedfishHost:
    """The module's whole BMC job: read, compare, change unless check mode, read back."""

    def __init__(self, system: RedfishSystem) -> None:
        self.system = system

    @property
    def bmc(self) -> str:
        return self.system.client.base_url

    def read(self) -> SystemFacts:
        try:
            return self.system.facts()
        except RedfishError as exc:
            self._redact(exc)
            raise

    def apply(self, request: BmcRequest, check_mode: bool, before: SystemFacts | None = None) -> BmcOutcome:
        before = before or self.read()
        outcome = BmcOutcome(changed=False, before=before, after=before)
        try:
            # the boot override and the media first: they take effect at the (re)start power may cause
            predicted = self._boot(request, check_mode, outcome, before)
            self._media(request, check_mode, outcome)
            predicted = self._power(request, check_mode, outcome, predicted)
            if check_mode or not outcome.changed:
                outcome.after = predicted
            else:
                outcome.after = self.system.facts()
                self._verify_boot(request, outcome)
        except RedfishError as exc:
            self._redact(exc)
            exc.details.update(changed=outcome.changed, actions=list(outcome.actions))
            raise
        return outcome

    def _redact(self, error: RedfishError) -> None:
        """Blank credentials a BMC may have put in what a message quotes of it (ids, names)."""
        error.args = (self.system.client.redact(str(error)),)

    def _power(
        self, request: BmcRequest, check_mode: bool, outcome: BmcOutcome, facts: SystemFacts
    ) -> SystemFacts:
        if request.power is None:
            return facts
        state = facts.power_state
        if (request.power, state) in (("on", "On"), ("off", "Off")):
            return facts
        want = "Off" if request.power == "off" else "On"
        if request.power != "reset" and state == f"Powering{want}":  # on its way already: only wait
            if not check_mode:
                outcome.waited += self.system.wait_power(want, request.power_timeout)
            return replace(facts, power_state=want)
        outcome.changed = True
        if check_mode:
            outcome.actions.append(f"power {request.power}")
            return replace(facts, power_state=want)
        if request.power == "off":
            actions, waited = self.system.power_off(facts, request.graceful_timeout, request.power_timeout)
        elif request.power == "on" or state == "Off":  # resetting a host that is off means starting it
            actions, waited = self.system.power_on(facts, request.power_timeout)
        else:
            actions, waited = self.system.power_reset(facts, request.power_timeout)
        outcome.actions.extend(actions)
        outcome.waited += waited
        return replace(facts, power_state=want)

    def _boot(
        self, request: BmcRequest, check_mode: bool, outcome: BmcOutcome, facts: SystemFacts
    ) -> SystemFacts:
        if request.boot_device is None:
            return facts
        target = BOOT_TARGETS[request.boot_device]
        enabled = BOOT_ENABLED[request.boot_mode]
        if facts.boot.target == target and facts.boot.enabled == enabled:
            return facts
        allowed = facts.boot.allowed_targets
        if allowed and target not in allowed:
            raise RedfishUnsupported(
                f"system {facts.id} does not offer boot target {target} (it offers: {', '.join(allowed)})"
            )
        outcome.changed = True
        outcome.actions.append(f"boot override {target} {enabled}")
        if not check_mode:
            self.system.set_boot(facts, target, enabled)
        return replace(facts, boot=replace(facts.boot, target=target, enabled=enabled))

    def _media(self, request: BmcRequest, check_mode: bool, outcome: BmcOutcome) -> None:
        if request.media_state is None:
            return
        device = self.system.cd_device(outcome.before)
        outcome.media_before = outcome.media_after = device
        if request.media_state == "ejected":
            eject, insert = device.inserted or bool(device.image), None
        else:
            there = device.inserted and device.image == request.media_image
            eject, insert = device.inserted and not there, None if there else request.media_image
        if not eject and not insert:
            return
        outcome.changed = True
        if eject:
            outcome.actions.append(f"eject {device.id}")
            if not check_mode:
                self.system.eject_media(device)
        if insert:
            outcome.actions.append(f"insert {insert} into {device.id}")
            if not check_mode:
                self.system.insert_media(device, insert)
        if check_mode:
            inserted = request.media_state == "inserted"
            outcome.media_after = replace(
                device, inserted=inserted, image=request.media_image if inserted else None
            )
            return
        outcome.media_after = after = self.system.media_device(device.uri)
        if request.media_state == "inserted" and not (after.inserted and after.image == request.media_image):
            outcome.warnings.append(
                f"the BMC accepted InsertMedia but {after.id} reports "
                f"inserted={after.inserted}, image={after.image}"
            )

    def _verify_boot(self, request: BmcRequest, outcome: BmcOutcome) -> None:
        if request.boot_device is None:
            return
        want = BootOverride(BOOT_TARGETS[request.boot_device], BOOT_ENABLED[request.boot_mode])
        seen = outcome.after.boot
        if (seen.target, seen.enabled) != (want.target, want.enabled):
            outcome.warnings.append(
                f"the BMC accepted the boot override {want.target}/{want.enabled} but reports "
                f"{seen.target}/{seen.enabled}"
            )


def connect(
    request: BmcRequest,
    transport: Transport | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    poll_interval: float = POLL_INTERVAL,
) -> RedfishHost:
    """The host behind ``request.bmc``, through ``open_url`` unless a transport is given."""
    transport = transport or OpenUrlTransport(
        request.username, request.password, request.validate_certs, request.ca_path
    )
    client = RedfishClient(
        request.bmc,
        transport,
        timeout=request.timeout,
        policy=RetryPolicy(retries=request.retries),
        secrets=request.secrets(),
        sleep=sleep,
        clock=clock,
    )
    return RedfishHost(
        RedfishSystem(client, request.system_id, clock=clock, sleep=sleep, poll_interval=poll_interval)
    )


def apply_request(request: BmcRequest, check_mode: bool, transport: Transport | None = None) -> BmcOutcome:
    return connect(request, transport).apply(request, check_mode)
