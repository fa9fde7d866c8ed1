"""YAML configs in the original BSQ-ViT ``target`` + ``params`` style, validated on load.

A config has five sections: ``model``, ``loss``, ``data``, ``optimizer`` and ``training``.
Every key is checked against the schema below: an unknown or misspelt key is an error naming it
and the valid keys (the original silently ignored keys such as ``grad_clip_norm``). Command-line
overrides ``key.sub=value`` are parsed as YAML values (``training.max_steps=100``,
``optimizer.betas=[0.9,0.95]``). A config may inherit from another with ``base: <path>``
(:mod:`transcoder.utils.config_files`); only the merged result is validated.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from transcoder.audio.mel import MelConfig
from transcoder.utils.config_files import MergedConfig, check_expanded_size, read_config_file
from transcoder.utils.targets import ConfigError, bounded_repr, get_obj_from_str, instantiate

__all__ = ["ConfigError", "config_to_yaml", "get_obj_from_str", "instantiate", "load_config", "resolve_config",
           "save_config"]

# Defaults of every section; `None` means "no default, may be left out".
OPTIMIZER_DEFAULTS: dict[str, Any] = {
    "lr": 1e-4,  # peak learning rate (per the global batch; not rescaled automatically)
    "betas": [0.9, 0.99],
    "eps": 1e-8,
    "weight_decay": 1e-4,  # not applied to norms, biases or position embeddings
    "warmup_steps": 1000,
    "min_lr_ratio": 0.0,  # the cosine decays to lr * min_lr_ratio at max_steps
    "grad_clip_norm": 1.0,  # clipping is on by default; null or 0 turns it off
    "schedule": "cosine",  # cosine: over training.max_steps; budget: over training.budget_seconds (see optim.py)
}
TRAINING_DEFAULTS: dict[str, Any] = {
    "max_steps": 100000,
    "budget_seconds": None,  # stop after this many seconds of training (and end a `budget` schedule there)
    "seed": 0,
    "precision": "auto",  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    "log_every": 50,
    "val_every": 2000,  # 0: never validate (as image_every: 0 never logs media)
    "val_max_batches": None,  # None: the whole validation split
    "ckpt_every": 5000,  # a numbered checkpoint besides `latest`
    "latest_every": 500,  # refresh `latest` for crash recovery
    "image_every": 2000,  # spectrogram images and Griffin-Lim audio in TensorBoard
    "num_images": 2,
    "ema_decay": None,  # e.g. 0.999 keeps EMA weights; None disables
    "ema_warmup": True,  # ramp the EMA decay up as min(ema_decay, (1 + t) / (10 + t)) over the first updates
    "compile": False,  # torch.compile the model
    "grad_checkpointing": None,  # None keeps the model's own setting
    "sync_batchnorm": False,  # SyncBatchNorm for the conv module under DDP
    "max_nonfinite_steps": 10,  # abort after this many non-finite losses in a row
    "deterministic": False,  # torch.use_deterministic_algorithms (slower on GPU)
    "skip_resource_check": False,  # start even when the start-up check finds the run cannot fit in memory
    "vocoder": None,  # a vocoder checkpoint (scripts/train_vocoder.py) for TensorBoard audio; None: Griffin-Lim
    # Start a fresh run (never a resumed one) with some modules' weights from another run's checkpoint, e.g.
    # {path: runs/mae/checkpoints/latest.pt, modules: [encoder], use_ema: false, freeze_steps: 0}; see
    # INIT_FROM_DEFAULTS and transcoder.training.init_from
    "init_from": None,
}
INIT_FROM_DEFAULTS: dict[str, Any] = {
    "path": None,  # required: a format-2 checkpoint (e.g. of an mae_pretrain run)
    "modules": ["encoder"],  # submodules of part `model`, loaded from the checkpoint's part `model`
    "use_ema": False,  # take the checkpoint's EMA weights (when it has them) instead of the raw ones
    "freeze_steps": 0,  # the loaded modules get no update for the first N applied updates
}
LOSS_DEFAULTS: dict[str, Any] = {"target": "transcoder.losses.AudioTokenizerLoss", "params": {}}
DATA_DEFAULTS: dict[str, Any] = {
    # the log-mel front end's settings (MelConfig: sample_rate, n_mels, n_fft, hop_length, target_length,
    # ...), saved with every checkpoint
    **MelConfig().to_dict(),
    # loading
    "batch_size": 8,  # per process
    "val_batch_size": None,  # defaults to batch_size
    "num_workers": 4,
    "prefetch_factor": 2,
    "pin_memory": True,
    "loader_timeout": 600,  # seconds without a batch from the workers before the run stops (null: wait forever)
    "train": None,  # {target, params}
    "val": None,  # {target, params} or null
    # {time_masks, time_width, freq_masks, freq_width, fill_value, apply_to: input | input_and_target} or null
    "specaugment": None,
}
SECTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "loss": LOSS_DEFAULTS,
    "data": DATA_DEFAULTS,
    "optimizer": OPTIMIZER_DEFAULTS,
    "training": TRAINING_DEFAULTS,
}
TARGET_KEYS = {"target", "params"}


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML config and its ``base:`` chain, apply ``key.sub=value`` overrides, validate and fill defaults.

    An error names where the offending key was set: the file (``<base> (base of <file>)`` for a key
    inherited from a base) or the command-line override.
    """
    path = Path(path)
    merged = read_config_file(path)
    for override in overrides or []:
        keys, value = apply_override(merged.values, override)
        merged.record(keys, value, f"command-line override {override}")
    try:
        return resolve_config(merged.values)
    except ConfigError as err:
        raise ConfigError(f"{_source_of(err, merged, path)}: {err}", key=err.key) from None


_KEY_AT_START = re.compile(r"([A-Za-z_]\w*(?:\.\w+)*)(?:=| must be | is required)")


def _source_of(err: ConfigError, merged: MergedConfig, path: Path) -> str:
    """The file or override that set the key ``err`` is about (the named file when that is unknown)."""
    key = err.key
    if key is None:
        match = _KEY_AT_START.match(str(err))
        key = match.group(1) if match else None
    label = merged.origin(tuple(key.split("."))) if key else None
    if label is None or label == str(path):
        return str(path)
    if label in {str(file) for file in merged.files}:
        return f"{label} (base of {path})"
    return label


def config_to_yaml(config: dict[str, Any]) -> str:
    """A (resolved) config as YAML text, key order kept (what :func:`save_config` writes)."""
    return yaml.safe_dump(config, sort_keys=False)


def apply_override(config: dict[str, Any], override: str) -> tuple[tuple[str, ...], Any]:
    """Set ``a.b.c=value`` in ``config`` in place; the value is parsed as YAML. Returns the key path and value."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected KEY.SUB=VALUE")
    dotted, value = override.split("=", 1)
    keys = dotted.strip().split(".")
    node = config
    for key in keys[:-1]:
        if node.get(key) is None:  # a missing or null section (e.g. data.specaugment: null) starts empty
            node[key] = {}
        child = node[key]
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {key!r} is not a section")
        node = child
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({_one_line(err)}); quote "
                          "lists and mappings as one shell word, e.g. 'optimizer.betas=[0.9,0.95]'") from None
    check_expanded_size(parsed, f"override {bounded_repr(override, 120)}")
    node[keys[-1]] = parsed
    return tuple(keys), parsed


def _one_line(err: BaseException) -> str:
    """A YAML error (which spans several lines with a source excerpt) as one line."""
    return " ".join(part.strip() for part in str(err).splitlines() if part.strip())


def resolve_config(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate ``raw`` against the schema and return a new dict with every default filled in.

    The top-level ``task`` (default ``tokenizer``) decides which model sections (``{target, params}``)
    and optimizer sections the config has besides the common ``loss`` / ``data`` / ``training``.
    """
    from transcoder.tasks import task_class

    task = raw.get("task", "tokenizer")
    cls = task_class(task)
    model_sections = list(cls.model_sections)
    optimizer_sections = list(dict.fromkeys(cls.optimizer_sections.values()))
    section_defaults = {**SECTION_DEFAULTS, **{name: OPTIMIZER_DEFAULTS for name in optimizer_sections}}
    _reject_unknown(raw, {"task", *model_sections, *section_defaults, *cls.extra_keys}, "top level")
    config: dict[str, Any] = {"task": task}
    for key, default in cls.extra_keys.items():  # task-specific top-level settings (checked by the task)
        config[key] = copy.deepcopy(raw.get(key, default))
    for section in model_sections:
        if section not in raw and section in cls.default_model_sections:
            config[section] = _target_spec(cls.default_model_sections[section], section)
            continue
        if section not in raw:
            raise ConfigError(f"missing section {section!r} (target + params)")
        given = raw[section]
        if isinstance(given, dict) and "target" not in given and section in cls.default_model_sections:
            given = {**cls.default_model_sections[section], **given}  # params only: the default target
        config[section] = _target_spec(given, section)
    for section, defaults in section_defaults.items():
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"section {section!r} must be a mapping, got {type(given).__name__}")
        if section == "loss":
            config[section] = _target_spec({**defaults, **given}, "loss")
            continue
        _reject_unknown(given, set(defaults), f"section {section!r}")
        config[section] = {**copy.deepcopy(defaults), **copy.deepcopy(given)}
    data = config["data"]
    if data["train"] is None:
        raise ConfigError("data.train is required: {target: transcoder.data.AudioFolderDataset, params: {root: ...}}")
    data["train"] = _target_spec(data["train"], "data.train")
    if data["val"] is not None:
        data["val"] = _target_spec(data["val"], "data.val")
    precision = config["training"]["precision"]
    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ConfigError(f"training.precision={precision!r}: expected auto, bf16, fp16 or fp32")
    _check_values(config, optimizer_sections)
    cls.resolve_config(config)
    return config


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


FLOAT_KEYS = {"optimizer": ("lr", "eps", "weight_decay", "min_lr_ratio", "grad_clip_norm"),
              "training": ("ema_decay", "budget_seconds")}


def _coerce_floats(config: dict[str, Any], optimizer_sections: list[str]) -> None:
    """PyYAML reads ``1e-4`` (no dot) as a string; accept it as the number it obviously is."""
    float_keys = {**FLOAT_KEYS, **{name: FLOAT_KEYS["optimizer"] for name in optimizer_sections}}
    for section, keys in float_keys.items():
        for key in keys:
            value = config[section][key]
            if isinstance(value, str):
                try:
                    config[section][key] = float(value)
                except ValueError:
                    raise ConfigError(f"{section}.{key}={value!r}: expected a number") from None


def _check_values(config: dict[str, Any], optimizer_sections: list[str]) -> None:
    """Reject values that would only fail (or silently misbehave) mid-run."""
    _coerce_floats(config, optimizer_sections)
    positive = [("data", "batch_size"), ("data", "num_workers", 0), ("data", "prefetch_factor"),
                ("training", "max_steps"),
                ("training", "log_every"), ("training", "val_every", 0), ("training", "ckpt_every"),
                ("training", "latest_every"), ("training", "max_nonfinite_steps"), ("training", "image_every", 0),
                ("training", "num_images", 0), *((name, "warmup_steps", 0) for name in optimizer_sections)]
    for section, key, *minimum in positive:
        low = minimum[0] if minimum else 1
        value = config[section][key]
        if not _is_int(value) or value < low:
            kind = "a positive integer" if low == 1 else f"an integer >= {low}"
            raise ConfigError(f"{section}.{key}={value!r}: expected {kind}")
    timeout = config["data"]["loader_timeout"]
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0):
        raise ConfigError(f"data.loader_timeout={timeout!r}: expected null or a positive number of seconds")
    for section, key in (("data", "val_batch_size"), ("training", "val_max_batches")):
        value = config[section][key]
        if value is not None and (not _is_int(value) or value < 1):
            raise ConfigError(f"{section}.{key}={value!r}: expected null or a positive integer")
    seed = config["training"]["seed"]
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"training.seed={seed!r}: expected an integer in [0, {MAX_SEED}]")
    for section, key in (("data", "pin_memory"), ("training", "compile"), ("training", "sync_batchnorm"),
                         ("training", "deterministic"), ("training", "ema_warmup"),
                         ("training", "skip_resource_check")):
        value = config[section][key]
        if not isinstance(value, bool):
            raise ConfigError(f"{section}.{key}={value!r}: expected true or false")
    vocoder = config["training"]["vocoder"]
    if vocoder is not None and (not isinstance(vocoder, str) or not vocoder):
        raise ConfigError(f"training.vocoder={vocoder!r}: expected null or the path of a vocoder checkpoint")
    checkpointing = config["training"]["grad_checkpointing"]
    if checkpointing is not None and not isinstance(checkpointing, bool):
        raise ConfigError(f"training.grad_checkpointing={checkpointing!r}: expected null, true or false")
    config["training"]["init_from"] = _check_init_from(config["training"]["init_from"])
    _check_mel(config["data"])
    _check_specaugment(config["data"]["specaugment"])
    ema = config["training"]["ema_decay"]
    if ema is not None and (isinstance(ema, bool) or not isinstance(ema, int | float) or not 0 < ema < 1):
        raise ConfigError(f"training.ema_decay={ema!r}: expected null or a number in (0, 1)")
    budget = config["training"]["budget_seconds"]
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float) or budget <= 0):
        raise ConfigError(f"training.budget_seconds={budget!r}: expected null or a positive number of seconds")
    for name in optimizer_sections:
        _check_optimizer(config[name], name)
        if config[name]["schedule"] == "budget" and budget is None:
            raise ConfigError(f"{name}.schedule=budget needs training.budget_seconds (a positive number); "
                              "or use schedule=cosine")


def _check_init_from(value: Any) -> dict[str, Any] | None:
    """``training.init_from`` with its defaults filled in (or None); a bad value names its key."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"training.init_from={value!r}: expected null or a mapping with keys "
                          f"{sorted(INIT_FROM_DEFAULTS)}")
    _reject_unknown(value, set(INIT_FROM_DEFAULTS), "training.init_from")
    spec = {**copy.deepcopy(INIT_FROM_DEFAULTS), **copy.deepcopy(value)}
    if not isinstance(spec["path"], str) or not spec["path"]:
        raise ConfigError(f"training.init_from.path={spec['path']!r}: expected the path of a checkpoint")
    modules = spec["modules"]
    if (not isinstance(modules, list) or not modules
            or not all(isinstance(m, str) and m and not m.startswith(".") for m in modules)):
        raise ConfigError(f"training.init_from.modules={modules!r}: expected a non-empty list of submodule "
                          "names, e.g. [encoder]")
    if not isinstance(spec["use_ema"], bool):
        raise ConfigError(f"training.init_from.use_ema={spec['use_ema']!r}: expected true or false")
    if not _is_int(spec["freeze_steps"]) or spec["freeze_steps"] < 0:
        raise ConfigError(f"training.init_from.freeze_steps={spec['freeze_steps']!r}: expected an integer >= 0")
    return spec


def _check_optimizer(optim: dict[str, Any], section: str) -> None:
    if optim["schedule"] not in ("cosine", "budget"):
        raise ConfigError(f"{section}.schedule={optim['schedule']!r}: expected cosine or budget")
    clip = optim["grad_clip_norm"]
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, int | float) or clip < 0):
        raise ConfigError(f"{section}.grad_clip_norm={clip!r}: expected null, 0 (off) or a positive number")
    if not isinstance(optim["lr"], int | float) or optim["lr"] <= 0:
        raise ConfigError(f"{section}.lr={optim['lr']!r}: expected a positive number")
    if not (isinstance(optim["min_lr_ratio"], int | float) and 0 <= optim["min_lr_ratio"] <= 1):
        raise ConfigError(f"{section}.min_lr_ratio={optim['min_lr_ratio']!r}: expected a number in [0, 1]")
    betas = optim["betas"]
    if not (isinstance(betas, list | tuple) and len(betas) == 2 and all(0 <= b < 1 for b in betas)):
        raise ConfigError(f"{section}.betas={betas!r}: expected two numbers in [0, 1)")


#: ``training.seed`` + rank seeds NumPy, which takes 32-bit seeds; leave room for the ranks.
MAX_SEED = 2**31 - 1
SPECAUGMENT_KEYS = ("time_masks", "time_width", "freq_masks", "freq_width", "fill_value", "apply_to")
#: ``data.specaugment.apply_to``: mask the model input only (the target stays clean), or input and target alike.
SPECAUGMENT_TARGETS = ("input", "input_and_target")


def _check_mel(data: dict[str, Any]) -> None:
    """The data section's log-mel settings, checked by :class:`MelConfig` (named as ``data.<key>``)."""
    try:
        MelConfig.from_dict(data, strict=False)
    except (TypeError, ValueError) as err:
        message = str(err).replace("MelConfig.", "data.").replace("MelConfig ", "data.")
        raise ConfigError(message.replace("MelConfig", "data")) from None


def _check_specaugment(spec: Any) -> None:
    if spec is None:
        return
    if not isinstance(spec, dict):
        raise ConfigError(f"data.specaugment={spec!r}: expected null or a mapping with keys {list(SPECAUGMENT_KEYS)}")
    _reject_unknown(spec, set(SPECAUGMENT_KEYS), "data.specaugment")
    for key, value in spec.items():
        if key == "apply_to":
            if value not in SPECAUGMENT_TARGETS:
                raise ConfigError(f"data.specaugment.apply_to={value!r}: expected one of {list(SPECAUGMENT_TARGETS)}")
        elif key == "fill_value":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"data.specaugment.fill_value={value!r}: expected a number")
        elif not _is_int(value) or value < 0:
            raise ConfigError(f"data.specaugment.{key}={value!r}: expected an integer >= 0")


def _reject_unknown(given: dict[str, Any], valid: set[str], where: str) -> None:
    unknown = sorted(set(given) - valid)
    if unknown:
        prefix = "" if where == "top level" else where.removeprefix("section ").strip("'") + "."
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(valid)}",
                          key=f"{prefix}{unknown[0]}")


def _target_spec(spec: Any, where: str) -> dict[str, Any]:
    if not isinstance(spec, dict) or "target" not in spec:
        raise ConfigError(f"{where} must be a mapping with 'target' (a dotted class path) and 'params'")
    _reject_unknown(spec, TARGET_KEYS, where)
    params = spec.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}.params must be a mapping, got {type(params).__name__}")
    return {"target": str(spec["target"]), "params": copy.deepcopy(params)}


def save_config(config: dict[str, Any], path: str | Path) -> None:
    """Write the resolved config as YAML (key order kept)."""
    Path(path).write_text(config_to_yaml(config))
