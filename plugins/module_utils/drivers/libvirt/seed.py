# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cloud-init NoCloud seed images, built in memory.

A seed is an ISO 9660 image labelled ``cidata`` holding ``meta-data``, ``user-data`` and optionally
``network-config``. Rock Ridge and Joliet carry the lowercase, hyphenated names cloud-init looks for.

pycdlib stamps the volume descriptors and directory records with the current time and offers no way
to fix it, so the image bytes differ from one build to the next. The seed's identity is therefore
the sha256 of the rendered files (``content_sha256``): that, not the image, decides whether a VM's
seed has to be uploaded again.
"""

from __future__ import annotations

import hashlib
import io
import json
import traceback
from collections.abc import Mapping
from typing import Any

try:
    import pycdlib
except ImportError:
    HAS_PYCDLIB = False
    PYCDLIB_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    HAS_PYCDLIB = True
    PYCDLIB_IMPORT_ERROR = None

VOLUME_LABEL = "cidata"
# Plain ISO 9660 names (interchange level 3: up to 30 characters, uppercase) for readers without
# Rock Ridge or Joliet; Linux and cloud-init see the Rock Ridge names.
_ISO9660_NAMES = {
    "meta-data": "/META_DATA.;1",
    "user-data": "/USER_DATA.;1",
    "network-config": "/NETWORK_CONFIG.;1",
}


class SeedError(Exception):
    """A seed that cannot be rendered or built."""


def render_document(data: Mapping[str, Any]) -> bytes:
    """A YAML document for cloud-init: canonical JSON, which every YAML 1.2 parser reads."""
    try:
        return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    except (TypeError, ValueError) as exc:
        raise SeedError(f"cloud-init data cannot be serialised: {exc}") from exc


def seed_files(
    meta_data: Mapping[str, Any], user_data: str, network_config: Mapping[str, Any] | None = None
) -> dict[str, bytes]:
    """File name -> content of a NoCloud seed, in the order they are written."""
    if not isinstance(user_data, str):
        raise SeedError("user_data must be the text of the user-data file (usually '#cloud-config ...')")
    files = {"meta-data": render_document(meta_data), "user-data": user_data.encode()}
    if network_config is not None:
        files["network-config"] = render_document(network_config)
    return files


def content_sha256(files: Mapping[str, bytes]) -> str:
    """sha256 over names and contents, length-prefixed so that no two seeds share a digest."""
    digest = hashlib.sha256()
    for name in sorted(files):
        content = files[name]
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def build_iso(files: Mapping[str, bytes], label: str = VOLUME_LABEL) -> bytes:
    if not HAS_PYCDLIB:
        raise SeedError("building a cloud-init seed needs the Python library pycdlib on the controller")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=label, joliet=3, rock_ridge="1.09")
    try:
        for name, content in files.items():
            iso_path = _ISO9660_NAMES.get(name)
            if iso_path is None:
                raise SeedError(f"{name!r} is not a NoCloud seed file")
            iso.add_fp(io.BytesIO(content), len(content), iso_path, rr_name=name, joliet_path=f"/{name}")
        image = io.BytesIO()
        iso.write_fp(image)
    except pycdlib.pycdlibexception.PyCdlibException as exc:
        raise SeedError(f"cannot build the seed image: {exc}") from exc
    finally:
        iso.close()
    return image.getvalue()


def build_seed_iso(
    meta_data: Mapping[str, Any], user_data: str, network_config: Mapping[str, Any] | None = None
) -> tuple[bytes, str]:
    """(iso_bytes, content_sha256) of a NoCloud seed; the digest is stable, the bytes are not."""
    files = seed_files(meta_data, user_data, network_config)
    return build_iso(files), content_sha256(files)
