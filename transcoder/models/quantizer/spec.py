"""The model's quantizer as data: a ``{"target", "params"}`` spec (nested or flat settings), the quantizer it
builds, and the whole bits per token it makes."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from transcoder.models.quantizer.bsq import MAX_INDEX_BITS
from transcoder.utils.targets import get_obj_from_str

__all__ = ["DEFAULT_QUANTIZER", "MODEL_OWNED_QUANTIZER_KEYS", "build_quantizer", "keyword_names", "quantizer_bits",
           "quantizer_spec"]

#: The quantizer a model builds when its spec names no ``target``.
DEFAULT_QUANTIZER = "transcoder.models.quantizer.bsq.BinarySphericalQuantizer"
#: Quantizer keywords the model itself owns and passes on (they size the model's own layers).
MODEL_OWNED_QUANTIZER_KEYS = ("embed_dim", "l2_norm")


def quantizer_spec(quantizer: Mapping[str, Any] | None = None, **flat: Any) -> dict[str, Any]:
    """The model's quantizer as a ``{"target", "params"}`` spec; the one place flat settings are nested.

    Args:
        quantizer: ``{"target": dotted class path (default :data:`DEFAULT_QUANTIZER`), "params": {...}}``,
            the quantizer's own settings (``beta``, ``inv_temperature`` ...; not ``embed_dim`` / ``l2_norm``,
            which the model passes on).
        flat: the same settings given as keywords of the model itself, as configs and checkpoints written
            before the nested form do (``model.params.inv_temperature: 10``); they go into ``params``. A flat
            setting of the default quantizer (BSQ) set to ``None`` that the chosen quantizer does not take counts
            as not given, so a config built on one with flat BSQ settings switches quantizer by nulling them
            (``model.params.inv_temperature=null``).

    Raises:
        TypeError: a flat keyword the quantizer does not take (the message lists the valid ones).
        ValueError: a malformed ``quantizer`` mapping, a model-owned key inside it, or a setting given both
            flat and nested with different values.
    """
    if quantizer is None:
        quantizer = {}
    if not isinstance(quantizer, Mapping):
        raise ValueError(f"quantizer={quantizer!r}: expected a mapping {{target: ..., params: {{...}}}}")
    unknown = sorted(set(quantizer) - {"target", "params"})
    if unknown:
        raise ValueError(f"quantizer: unknown key(s) {unknown}; expected 'target' (optional, default "
                         f"{DEFAULT_QUANTIZER}) and 'params' (the quantizer's settings)")
    target = quantizer.get("target") or DEFAULT_QUANTIZER
    params = quantizer.get("params") or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"quantizer.params={params!r}: expected a mapping of the quantizer's settings")
    owned = sorted(set(params) & set(MODEL_OWNED_QUANTIZER_KEYS))
    if owned:
        raise ValueError(f"quantizer.params sets {owned}: these are the model's own keys "
                         f"(model.params.{owned[0]}), which it passes to the quantizer")
    if flat:
        accepted = keyword_names(get_obj_from_str(target)) - set(MODEL_OWNED_QUANTIZER_KEYS)
        default_settings = (set() if target == DEFAULT_QUANTIZER else
                            keyword_names(get_obj_from_str(DEFAULT_QUANTIZER)) - set(MODEL_OWNED_QUANTIZER_KEYS))
        flat = {k: v for k, v in flat.items() if not (v is None and k not in accepted and k in default_settings)}
        stray = sorted(set(flat) - accepted)
        if stray:
            inherited = [k for k in stray if k in default_settings]
            hint = (f" (a setting of {DEFAULT_QUANTIZER} inherited from a base config is dropped when set to null, "
                    f"e.g. model.params.{inherited[0]}=null)" if inherited else "")
            raise TypeError(f"AudioBSQModel got unexpected keyword(s) {stray}; the model takes audioconfig, "
                            f"embed_dim, l2_norm, clamp_range, quantizer, and (flat) the settings of {target}: "
                            f"{sorted(accepted)}{hint}")
        clash = sorted(k for k in set(flat) & set(params) if flat[k] != params[k])
        if clash:
            raise ValueError(f"quantizer setting(s) {clash} given both flat ({ {k: flat[k] for k in clash} }) and in "
                             f"quantizer.params ({ {k: params[k] for k in clash} }): give each once")
    return {"target": target, "params": {**params, **flat}}


def quantizer_bits(quantizer: nn.Module, embed_dim: int) -> int:
    """Bits per token of ``quantizer`` (its ``bits``; ``embed_dim`` for one without); ``ValueError`` unless a
    whole number in ``1..MAX_INDEX_BITS`` (codes files store ``bits``-bit indices, rates count whole bits)."""
    bits = getattr(quantizer, "bits", embed_dim)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_INDEX_BITS:
        levels = getattr(quantizer, "levels", None)
        detail = f" (levels={levels})" if levels is not None else ""
        shown = f"{bits:.4g}" if isinstance(bits, float) else repr(bits)
        raise ValueError(f"{type(quantizer).__name__} makes {shown} bits per token{detail}: the model needs a whole "
                         f"number of bits in 1..{MAX_INDEX_BITS} (codes files and bitrates); use level counts that "
                         "are powers of two (e.g. levels: [8, 8, 8, 8, 8, 8] for 18 bits)")
    return bits


def build_quantizer(spec: Mapping[str, Any], embed_dim: int, l2_norm: bool) -> nn.Module:
    """The quantizer a :func:`quantizer_spec` describes, given the model-owned ``embed_dim`` and ``l2_norm``."""
    return get_obj_from_str(spec["target"])(embed_dim=embed_dim, l2_norm=l2_norm, **spec["params"])


def keyword_names(cls: type) -> set[str]:
    """Names of the keyword parameters of ``cls.__init__``."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in inspect.signature(cls).parameters.values() if p.kind in kinds}
