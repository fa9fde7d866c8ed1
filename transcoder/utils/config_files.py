"""Reading a YAML config file together with the configs it inherits from (``base:``).

A config may name one base config, ``base: ../base/tokenizer.yaml`` (a path relative to the file
that names it); the base may name its own base, and so on. The chain is merged from the root down:

* mappings merge key by key, the inheriting file's value wins;
* any other value (a number, a string, a list, ``null``) replaces the base's value wholesale, so
  ``data.val: null`` removes a base's validation set and a list is never appended to;
* a ``{target, params}`` mapping whose ``target`` differs from the base's replaces the base's
  mapping wholesale: parameters meant for another class are never carried over.

Every merged key remembers the layer that set it (:class:`MergedConfig`), so a bad key or value can
be reported against the file (or command-line override) that introduced it. Validation against the
schema is not done here (see :mod:`transcoder.training.config`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from transcoder.utils.targets import ConfigError

__all__ = ["BASE_KEY", "ConfigLayer", "MergedConfig", "merge_layer", "read_config_chain", "read_config_file",
           "read_yaml_mapping"]

#: The top-level key naming the config a file inherits from.
BASE_KEY = "base"

KeyPath = tuple[str, ...]


@dataclass(frozen=True)
class ConfigLayer:
    """One source of config values: a YAML file of the chain or one command-line override."""

    label: str  # how errors name it: the file's path, or "command-line override a.b=1"
    values: dict[str, Any]


@dataclass
class MergedConfig:
    """A merged config and, for every key path it holds, the label of the layer that set it."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[KeyPath, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)  # the chain, the named file first, its root base last

    def record(self, path: KeyPath, value: Any, label: str) -> None:
        """Note that ``label`` set ``path`` (and every key below it) to ``value``."""
        _set_origins(self.origins, path, value, label)

    def origin(self, path: KeyPath) -> str | None:
        """The layer that set ``path`` (or its nearest set ancestor); ``None`` when no layer did."""
        for end in range(len(path), 0, -1):
            label = self.origins.get(path[:end])
            if label is not None:
                return label
        return None


def _one_line(err: BaseException) -> str:
    """A YAML error (which spans several lines with a source excerpt) as one line."""
    return " ".join(part.strip() for part in str(err).splitlines() if part.strip())


#: Most values (scalars, list items, mapping entries) a config may hold once its YAML aliases are expanded.
MAX_EXPANDED_VALUES = 100_000


def check_expanded_size(value: Any, where: str, limit: int = MAX_EXPANDED_VALUES) -> None:
    """Refuse YAML whose aliases expand to more than ``limit`` values (an alias bomb: a few lines that
    expand to billions of items once copied, merged or printed). The count stops at ``limit``, so the
    check itself is cheap; shared (aliased) nodes are counted at every place they appear."""
    count = 0
    stack = [value]
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            raise ConfigError(f"{where}: its YAML aliases expand to more than {limit} values (an alias bomb?); "
                              "refused")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """One YAML file as a mapping; a missing, unreadable, non-text or non-mapping file is a ConfigError."""
    if path.is_dir() or not path.exists():
        raise ConfigError(f"config file {path} does not exist (or is a directory)")
    try:
        with path.open(encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text (UTF-8) YAML file: byte {err.start} cannot be decoded") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(err)}") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror or err}") from None
    raw = {} if raw is None else raw
    check_expanded_size(raw, str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections model/loss/data/optimizer/training")
    return raw


def read_config_chain(path: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """``path`` and its bases as ``(file, values without 'base')``, the named file first.

    Raises ConfigError naming the file for a missing base, a ``base`` that is not a path, or a cycle
    (the message shows the whole chain).
    """
    chain: list[tuple[Path, dict[str, Any]]] = []
    seen: list[Path] = []
    current = Path(path)
    while True:
        resolved = current.resolve()
        if resolved in seen:
            loop = " -> ".join(str(p) for p in [*[c for c, _ in chain], current])
            raise ConfigError(f"{chain[0][0]}: the base chain has a cycle: {loop}")
        seen.append(resolved)
        raw = read_yaml_mapping(current)
        base = raw.pop(BASE_KEY, None)
        chain.append((current, raw))
        if base is None:
            return chain
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"{current}: base={base!r}: expected the path of a config file, relative to "
                              f"{current.parent}")
        parent = current.parent / base
        if not parent.is_file():
            raise ConfigError(f"{current}: base={base!r}: no such config file ({parent})")
        current = parent


def _is_replacement(base: Any, child: Any) -> bool:
    """A ``{target, params}`` mapping that names another target replaces its base wholesale."""
    return (isinstance(base, dict) and isinstance(child, dict) and "target" in base and "target" in child
            and base["target"] != child["target"])


def _set_origins(origins: dict[KeyPath, str], path: KeyPath, value: Any, label: str) -> None:
    for key in [k for k in origins if k[:len(path)] == path]:
        del origins[key]
    origins[path] = label
    if isinstance(value, dict):
        for key, sub in value.items():
            _set_origins(origins, (*path, str(key)), sub, label)


def merge_layer(merged: MergedConfig, layer: ConfigLayer) -> None:
    """Merge ``layer`` into ``merged`` in place (its values win; see the module docstring)."""

    def merge(target: dict[str, Any], values: dict[str, Any], path: KeyPath) -> None:
        for key, value in values.items():
            sub_path = (*path, str(key))
            current = target.get(key)
            if isinstance(current, dict) and isinstance(value, dict) and not _is_replacement(current, value):
                merged.origins[sub_path] = merged.origins.get(sub_path, layer.label)
                merge(current, value, sub_path)
            else:
                target[key] = copy.deepcopy(value)
                _set_origins(merged.origins, sub_path, value, layer.label)

    merge(merged.values, layer.values, ())


def read_config_file(path: str | Path) -> MergedConfig:
    """A config file with its base chain merged (the ``base`` key removed), with each key's origin."""
    chain = read_config_chain(path)
    merged = MergedConfig(files=[file for file, _ in chain])
    for file, values in reversed(chain):
        merge_layer(merged, ConfigLayer(str(file), values))
    return merged
