"""Instantiate a dataset from a YAML ``{"target": "...", "params": {...}}`` spec."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset

__all__ = ["build_dataset", "resolve_target"]

#: Keyword arguments the training code passes; the YAML params must not contradict them.
_CALLER_KEYS = ("sample_rate", "clip_samples", "mode")


def resolve_target(target: str) -> Any:
    """``"transcoder.data.LibriSpeechDataset"`` (or a bare name from ``transcoder.data``) → the class."""
    if not isinstance(target, str) or not target:
        raise ValueError(f"dataset target must be a non-empty string such as "
                         f"'transcoder.data.LibriSpeechDataset', got {target!r}")
    module_name, _, attr = target.rpartition(".")
    module_name = module_name or "transcoder.data"
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"dataset target '{target}': cannot import module '{module_name}' ({err})") from err
    if not hasattr(module, attr):
        known = sorted(n for n in getattr(module, "__all__", dir(module)) if n.endswith("Dataset"))
        raise ValueError(f"dataset target '{target}': module '{module_name}' has no '{attr}'; "
                         f"datasets there: {known}")
    return getattr(module, attr)


def build_dataset(spec: Mapping[str, Any], *, sample_rate: int, clip_samples: int, mode: str) -> Dataset:
    """Build ``target(**params, sample_rate=..., clip_samples=..., mode=...)``.

    ``spec`` is ``{"target": "transcoder.data.LibriSpeechDataset", "params": {"root": ..., ...}}``.
    Unknown params, missing required params and params contradicting the caller's
    ``sample_rate``/``clip_samples``/``mode`` raise ``ValueError`` naming the key and the valid ones.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"dataset spec must be a mapping with 'target' and 'params', got {type(spec).__name__}")
    extra = sorted(set(spec) - {"target", "params"})
    if extra or "target" not in spec:
        raise ValueError(f"dataset spec keys {sorted(spec)}: expected 'target' (required) and 'params'"
                         + (f"; unknown: {extra}" if extra else ""))
    target = spec["target"]
    params = dict(spec.get("params") or {})
    cls = resolve_target(target)
    if not callable(cls):
        raise ValueError(f"dataset target '{target}' is not a class or callable")

    signature = inspect.signature(cls)
    accepted = {n: p for n, p in signature.parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    settable = sorted(n for n in accepted if n not in _CALLER_KEYS)
    unknown = sorted(k for k in params if k not in accepted and not takes_any)
    if unknown:
        raise ValueError(f"dataset '{target}': unknown param(s) {unknown}; valid params: {settable}")
    caller = {"sample_rate": sample_rate, "clip_samples": clip_samples, "mode": mode}
    lacking = [k for k in caller if k not in accepted and not takes_any]
    if lacking:
        raise ValueError(f"dataset '{target}' does not take {lacking}; a dataset target must accept the "
                         f"keywords {list(_CALLER_KEYS)} (see transcoder.data.AudioClipDataset)")
    for key, value in caller.items():
        if key in params and params[key] != value:
            raise ValueError(f"dataset '{target}': params.{key}={params[key]!r} contradicts {key}={value!r} "
                             f"set by the training code (from the mel config / phase); remove it from params")
        params[key] = value
    missing = sorted(n for n, p in accepted.items() if p.default is p.empty and n not in params)
    if missing:
        raise ValueError(f"dataset '{target}': missing required param(s) {missing}; valid params: {settable}")
    return cls(**params)
