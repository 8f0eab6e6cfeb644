"""A real sushy-tools Redfish emulator for tests, on 127.0.0.1 with HTTP basic auth.

Two backends, both in-process (no libvirtd, no real domain):

- ``libvirt`` over ``test:///default``: libvirt's built-in test driver holds one running domain,
  ``test`` (2 vCPUs, 8 GiB, one NIC aa:bb:cc:dd:ee:ff); Reset really starts and stops it, at once.
  Its virtual media cannot work (the test driver has no volume upload).
- ``fake``: sushy's fake driver, with the systems given; virtual media works (the image is
  downloaded from its URL), but power changes land 1 to 11 s later, so tests do not power it.

Every emulator gets its own state directory and is killed by PID when stopped.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt

from tests.ports import free_port

EMULATOR = Path(sys.executable).parent / "sushy-emulator"
LIBVIRT_SYSTEM = "6695eb01-f6a4-8304-79aa-97f2502e193f"  # the uuid of test:///default's domain


@dataclass
class Emulator:
    url: str
    username: str
    password: str
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str) -> dict[str, Any]:
        """A resource as the emulator serves it, bypassing the code under test."""
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Basic {token}"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=5) as response:
            return dict(json.load(response))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def start(
    workdir: Path,
    driver: str = "libvirt",
    username: str = "admin",
    password: str = "admin",
    fake_systems: list[dict[str, Any]] | None = None,
    ready_timeout: float = 20.0,
) -> Emulator:
    workdir.mkdir(parents=True, exist_ok=True)
    htpasswd = workdir / "htpasswd"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{username}:{hashed}\n")
    settings: dict[str, Any] = {
        "SUSHY_EMULATOR_AUTH_FILE": str(htpasswd),
        "SUSHY_EMULATOR_STATE_DIR": str(workdir / "state"),
    }
    if driver == "libvirt":
        settings["SUSHY_EMULATOR_LIBVIRT_URI"] = "test:///default"
    elif driver == "fake":
        settings["SUSHY_EMULATOR_FAKE_DRIVER"] = True
        if fake_systems is not None:
            settings["SUSHY_EMULATOR_FAKE_SYSTEMS"] = fake_systems
    else:
        raise ValueError(f"unknown sushy driver {driver!r}")
    config = workdir / "emulator.conf"
    config.write_text("".join(f"{key} = {value!r}\n" for key, value in settings.items()))
    port = free_port()
    log = workdir / "emulator.log"
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(EMULATOR), "--interface", "127.0.0.1", "--port", str(port), "--config", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
    emulator = Emulator(f"http://127.0.0.1:{port}", username, password, process, log)
    deadline = time.monotonic() + ready_timeout
    while True:
        try:
            emulator.get("/redfish/v1/Systems")
            return emulator
        except (urllib.error.URLError, OSError, ValueError):
            if process.poll() is not None or time.monotonic() > deadline:
                emulator.stop()
                raise RuntimeError(f"sushy-emulator did not come up:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.1)
