"""``training.init_from``: start a fresh run with some modules' weights from another run's checkpoint (e.g. a
tokenizer's encoder from an ``mae_pretrain`` run), optionally frozen for the first updates.

Loading happens only at the start of a fresh run: a resumed run restores its own checkpoint instead. Freezing
keeps DDP and the optimizer consistent: every rank still computes and all-reduces the frozen parameters'
gradients, then :meth:`transcoder.training.step.StepState.optimize` drops them (``grad = None``) before clipping
and the optimizer step while ``part.updates < freeze_steps``, so AdamW leaves those parameters, their moments
and their step counts untouched (no weight decay either); ``requires_grad`` is never toggled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from transcoder.utils.checkpoint import CheckpointError, load_checkpoint, load_weights_strict, model_weights
from transcoder.utils.targets import ConfigError


def submodule(model: nn.Module, name: str) -> nn.Module:
    """``model``'s submodule ``name`` (dotted); a ConfigError naming ``training.init_from.modules`` if absent."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        children = [child for child, _ in model.named_children()]
        raise ConfigError(f"training.init_from.modules: {name!r} is not a submodule of {type(model).__name__} "
                          f"(its modules: {children})") from None


def submodule_weights(weights: dict[str, Any], name: str) -> dict[str, Any]:
    """The entries of a state dict under ``name.``, with that prefix removed."""
    prefix = f"{name}."
    return {key[len(prefix):]: value for key, value in weights.items() if key.startswith(prefix)}


def frozen_parameters(model: nn.Module, modules: list[str]) -> list[nn.Parameter]:
    """The parameters of ``model``'s submodules ``modules``, each once."""
    seen: dict[int, nn.Parameter] = {}
    for name in modules:
        for param in submodule(model, name).parameters():
            seen.setdefault(id(param), param)
    return list(seen.values())


def load_modules(model: nn.Module, spec: dict[str, Any], ema_model: nn.Module | None = None) -> str:
    """Copy the modules ``spec["modules"]`` of the checkpoint ``spec["path"]`` (its part ``model``) into
    ``model`` (and ``ema_model``, the part's EMA copy, if given). Every tensor must fit: a missing, extra or
    differently shaped one raises :class:`CheckpointError` naming the parameter. Returns a one-line summary."""
    path = Path(spec["path"])
    if not path.is_file():
        raise FileNotFoundError(f"training.init_from.path={spec['path']!r}: no such checkpoint file")
    checkpoint = load_checkpoint(path, map_location="cpu")
    weights, kind = model_weights(checkpoint, "model", use_ema=bool(spec["use_ema"]))
    for name in spec["modules"]:
        submodule(model, name)  # a name the model lacks is a config error, whatever the checkpoint holds
        source = submodule_weights(weights, name)
        if not source:
            raise CheckpointError(f"training.init_from: checkpoint {path} holds no weights under {name + '.'!r} "
                                  f"(task {checkpoint.get('task', 'tokenizer')!r})")
        for target in (model, ema_model):
            if target is not None:
                load_weights_strict(submodule(target, name), source,
                                    f"training.init_from: module {name!r} from {path}")
    return (f"initialised {', '.join(spec['modules'])} from {path} ({kind} weights of task "
            f"{checkpoint.get('task', 'tokenizer')!r} at step {checkpoint.get('step', '?')})")
