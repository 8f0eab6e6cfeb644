# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bindings, the driver's one error and how libvirt's own errors become it.

The libvirt bindings are imported here and only here: the other files take ``libvirt`` from this
one, so that without the bindings every module still loads and says what is missing
(``LIBVIRT_IMPORT_ERROR``). Every ``libvirt.libvirtError`` leaves the driver as a ``LibvirtError``
whose message is one sentence naming the object and the URI.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from ansible_collections.berth.fleet.plugins.module_utils.common.rules import libvirt_name_problem

# the binding is re-exported: the other files of the package use it from here, so that each of
# them loads (and says what is missing) where libvirt-python is not installed
__all__ = [
    "HAS_LIBVIRT",
    "LIBVIRT_IMPORT_ERROR",
    "Conn",
    "LibvirtError",
    "libvirt",
    "name_problems",
    "no_stray_libvirt_errors",
    "reason",
    "refuse_invalid",
    "translated",
]

try:
    import libvirt  # no stubs: pyproject sets ignore_missing_imports
except ImportError:
    libvirt = None
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR = None

# Connection, stream, pool, volume, network and domain objects of the untyped libvirt bindings.
Conn = Any
_P = ParamSpec("_P")
_R = TypeVar("_R")


class LibvirtError(Exception):
    """Anything that stops a libvirt object from being read, validated or changed."""


def reason(exc: Exception) -> str:
    """The message of a libvirt error, as the end of one of our sentences."""
    message = exc.get_error_message() if hasattr(exc, "get_error_message") else None
    return str(message or exc).strip().rstrip(".")


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn a libvirt error raised inside the block into ``LibvirtError("<what>: <reason>")``."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise LibvirtError(f"{what}: {reason(exc)}") from exc


class _OnUri(Protocol):
    @property
    def uri(self) -> str: ...


_OnUriT = TypeVar("_OnUriT", bound=_OnUri)


def no_stray_libvirt_errors(
    method: Callable[Concatenate[_OnUriT, _P], _R],
) -> Callable[Concatenate[_OnUriT, _P], _R]:
    """A safety net for the public operations: a libvirt error that no narrower context caught still
    leaves as a LibvirtError."""

    @functools.wraps(method)
    def wrapper(manager: _OnUriT, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with translated(f"libvirt failed on {manager.uri}"):
            return method(manager, *args, **kwargs)

    return wrapper


# --- parameters ---------------------------------------------------------------------------------


def name_problems(name: str, what: str) -> list[str]:
    """``[]`` or the one problem with a libvirt name, prefixed with what it names."""
    problem = libvirt_name_problem(name)
    return [f"{what} {problem}"] if problem else []


def refuse_invalid(kind: str, name: str, problems: list[str]) -> None:
    """One error listing every problem of a request's parameters, if it has any."""
    if problems:
        raise LibvirtError(f"invalid parameters for {kind} {name!r}: " + "; ".join(problems))
