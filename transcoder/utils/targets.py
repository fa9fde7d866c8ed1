"""Building objects from ``target`` + ``params`` specs, and the error every config problem raises.

This sits below every other layer so that models, audio, data, tasks and training can all build
objects from a spec and report a bad config the same way, without importing the trainer.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from transcoder.utils.target_registry import TRUSTED_TARGETS

#: Longest rendering of a config value inside an error message (a value can be huge: an expanded YAML alias).
MAX_RENDERED_CHARS = 300


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, key and what was expected.

    ``key``: the dotted config key the error is about, when the raiser knows it (the config loader uses
    it to name the file or command-line override that set the key).
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(bounded_message(message))
        self.key = key


def bounded_message(message: str, limit: int = 3 * MAX_RENDERED_CHARS) -> str:
    """``message`` cut in the middle to about ``limit`` characters (its start names the key, its end says
    what was expected), so an error never prints an unbounded value."""
    if len(message) <= limit:
        return message
    head, tail = message[: 2 * limit // 3], message[-limit // 3:]
    return f"{head} ...({len(message) - len(head) - len(tail)} characters cut)... {tail}"


class UntrustedTargetError(ConfigError):
    """A ``target`` in a checkpoint's config that is not one of the project's own classes (nothing imported)."""


def bounded_repr(value: Any, limit: int = MAX_RENDERED_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters (with a note of the full length), for error messages.

    Containers are rendered piece by piece with a budget, so a value of millions of elements (an expanded
    YAML alias) costs no more than ``limit`` characters of work.
    """
    parts: list[str] = []
    budget = [limit + 1]

    def emit(text: str) -> None:
        if budget[0] > 0:
            parts.append(text[: budget[0]])
            budget[0] -= len(text)

    def visit(node: Any, depth: int) -> None:
        if budget[0] <= 0:
            return
        if isinstance(node, Mapping) and depth < 50:
            emit("{")
            for i, (key, item) in enumerate(node.items()):
                if budget[0] <= 0:
                    break
                emit(", " if i else "")
                emit(f"{key!r}: ")
                visit(item, depth + 1)
            emit("}")
        elif isinstance(node, list | tuple) and depth < 50:
            emit("[" if isinstance(node, list) else "(")
            for i, item in enumerate(node):
                if budget[0] <= 0:
                    break
                emit(", " if i else "")
                visit(item, depth + 1)
            emit("]" if isinstance(node, list) else ")")
        else:
            text = repr(node) if not isinstance(node, str | bytes) or len(node) <= limit else repr(node[: limit + 1])
            emit(text)

    visit(value, 0)
    text = "".join(parts)
    return text if len(text) <= limit else text[:limit] + "...(truncated)"


def check_trusted_target(key: str, target: Any, trust_config: bool = False) -> None:
    """Refuse a ``target`` that a checkpoint's config may not name, before anything is imported.

    ``target`` must be one of :data:`~transcoder.utils.target_registry.TRUSTED_TARGETS` (the project's own
    models, quantizers, losses, datasets and renderers) unless ``trust_config`` (the caller's explicit
    choice, ``--trust-config`` on the command line, for a checkpoint of their own extension). ``key`` is
    the dotted config key, for the message.

    Raises:
        UntrustedTargetError: one line naming the key and the target.
    """
    if trust_config and isinstance(target, str):
        return
    if not isinstance(target, str) or target not in TRUSTED_TARGETS:
        raise UntrustedTargetError(
            f"{key}.target={bounded_repr(target, 120)} is not one of this project's classes; a checkpoint may "
            "only name the project's own models, quantizers, losses, datasets and renderers, so nothing was "
            "imported (pass trust_config=True / --trust-config only for a checkpoint of your own code)", key=key)


def check_trusted_spec(spec: Any, key: str, trust_config: bool = False, *, _nested: bool = False) -> None:
    """:func:`check_trusted_target` for every ``target`` anywhere inside ``spec`` (a model's nested
    ``quantizer.target`` included), before any of them is imported. A nested ``target: null`` means the
    owner's default (one of the project's classes) and passes."""
    if isinstance(spec, Mapping):
        if "target" in spec and not (_nested and spec["target"] is None):
            check_trusted_target(key, spec["target"], trust_config)
        for name, value in spec.items():
            if name != "target":
                check_trusted_spec(value, f"{key}.{name}", trust_config, _nested=True)
    elif isinstance(spec, list | tuple):
        for index, value in enumerate(spec):
            check_trusted_spec(value, f"{key}[{index}]", trust_config, _nested=True)


def get_obj_from_str(dotted: str) -> Any:
    """Import ``package.module.Name`` and return ``Name``."""
    module_name, _, attr = dotted.rpartition(".")
    if not module_name:
        raise ConfigError(f"target {dotted!r}: expected a dotted path such as transcoder.data.AudioFolderDataset")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"target {dotted!r} cannot be imported: {err}") from err


def instantiate(spec: dict[str, Any], **extra: Any) -> Any:
    """Build ``target(**params, **extra)``; a bad parameter names the target and the key."""
    cls = get_obj_from_str(spec["target"])
    params = {**(spec.get("params") or {}), **extra}
    try:
        return cls(**params)
    except TypeError as err:
        raise ConfigError(f"cannot build {spec['target']} with params {sorted(params)}: {err}") from err
