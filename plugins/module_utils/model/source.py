# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The spec file as written: what a loaded YAML mapping no longer shows.

Ansible's loader keeps the last of two equal keys (with a warning at most) and turns an unquoted
``1.10`` into the number 1.1 before the spec parser sees the data. Re-reading the file's node tree
(composed, never constructed, so ``!vault`` and ``!unsafe`` tags need no constructor) refuses a
duplicate key with the lines of both definitions, and keeps the text of a version that YAML read
as something other than a string, so the refusal can show what was written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

try:
    import yaml
except ImportError:  # module_utils import without PyYAML; the controller that reads specs has it
    HAS_YAML = False
else:
    HAS_YAML = True

from ansible_collections.berth.fleet.plugins.module_utils.model.topology import SpecError, dotted

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class AsWritten:
    """Texts of plain scalars a string was expected for, by key path (``services.web.version``)."""

    scalars: Mapping[str, str] = field(default_factory=dict)

    def text(self, key: str) -> str | None:
        return self.scalars.get(key)


def read_as_written(path: str) -> AsWritten:
    """Re-read a spec file strictly; raises SpecError on a duplicate key."""
    return as_written(Path(path).read_bytes(), path)


def as_written(text: str | bytes, source: str) -> AsWritten:
    if not HAS_YAML:  # pragma: no cover - ansible-core itself depends on PyYAML
        return AsWritten()
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return AsWritten()  # not YAML this reader knows: the loader that read the spec reports it
    scalars: dict[str, str] = {}
    _walk(root, "", source, scalars, set())
    return AsWritten(scalars)


def _walk(node: object, key: str, source: str, scalars: dict[str, str], seen: set[int]) -> None:
    if isinstance(node, yaml.ScalarNode):
        plain = not node.style  # None from PyYAML, "" from libyaml
        if plain and node.tag != _STR_TAG and key.startswith("services.") and key.endswith(".version"):
            scalars[key] = node.value
        return
    if not isinstance(node, yaml.MappingNode | yaml.SequenceNode) or id(node) in seen:
        return  # nothing, or an alias of a node already read
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, dotted(key, str(index)), source, scalars, seen)
        return
    lines: dict[tuple[str, str], int] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            continue  # `<<: *defaults`: keys written next to it override the merged ones, by design
        name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
        line = key_node.start_mark.line + 1
        child = dotted(key, name)
        if isinstance(key_node, yaml.ScalarNode):
            if (key_node.tag, name) in lines:
                raise SpecError(
                    source,
                    child,
                    f"duplicate key: defined at line {lines[(key_node.tag, name)]} and again at line {line} "
                    "(YAML keeps only the last, so the first would be dropped without a word): "
                    "expected each key once",
                )
            lines[(key_node.tag, name)] = line
        _walk(value_node, child, source, scalars, seen)
