"""A checkpoint is data, never code: the config stored in it may name only the project's own classes
(checked before anything is imported), through the API and every script that loads a checkpoint; the
weights must be finite and of the model's dtype; encoding never returns codes of non-finite activations."""

from __future__ import annotations

import importlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from test_tokenize import MEL, MODEL_PARAMS, SR, _checkpoint, _load_script

from transcoder.api import load_tokenizer
from transcoder.models.audiobsq import AudioBSQModel
from transcoder.models.build import build_checkpoint_spec, derive_input_grid
from transcoder.tasks import task_class
from transcoder.training.config import load_config
from transcoder.utils.checkpoint import CheckpointError, load_checkpoint, save_atomic
from transcoder.utils.target_registry import TRUSTED_TARGETS
from transcoder.utils.targets import UntrustedTargetError, check_trusted_spec, check_trusted_target

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for folder in ("tokenizer", "vocoder", "pretrain")
                 for p in (REPO / "configs" / folder).glob("*.yaml"))
HOSTILE = ["os.system", "subprocess.call", "builtins.eval", "importlib.import_module"]


class ExtendedBSQModel(AudioBSQModel):
    """A researcher's own model class (outside the allow-list): loads only with ``trust_config``."""


def _hostile_params(target: str, marker: Path) -> dict[str, Any]:
    """Parameters under which ``target`` would create ``marker`` if it were ever called."""
    command = f"touch {marker}"
    return {"os.system": {"command": command},
            "subprocess.call": {"args": ["touch", str(marker)]},
            "builtins.eval": {"source": f"open({str(marker)!r}, 'w')"},
            "importlib.import_module": {"name": "marker_module"}}[target]


@pytest.fixture
def marker_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module on the path that creates ``tmp_path/marker`` when imported (the ``import_module`` payload)."""
    marker = tmp_path / "marker"
    (tmp_path / "marker_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("marker_module", None)
    return marker


def _hostile_checkpoint(path: Path, target: str, marker: Path, nested: bool = False) -> Path:
    """The tiny tokenizer checkpoint with its embedded model config replaced by ``target`` (checksum
    recomputed, as anyone can): at the top level, or as the model's nested quantizer."""
    state = torch.load(_checkpoint(path.with_suffix(".src.pt")), weights_only=True)
    if nested:
        params = {**MODEL_PARAMS, "quantizer": {"target": target, "params": _hostile_params(target, marker)}}
        state["config"]["model"] = {"target": "transcoder.models.audiobsq.AudioBSQModel", "params": params}
    else:
        state["config"]["model"] = {"target": target, "params": _hostile_params(target, marker)}
    save_atomic(state, path)
    return path


@pytest.mark.parametrize("target", HOSTILE)
@pytest.mark.parametrize("nested", [False, True], ids=["model", "quantizer"])
def test_api_refuses_a_checkpoint_naming_code(tmp_path: Path, marker_module: Path, target: str, nested: bool) -> None:
    path = _hostile_checkpoint(tmp_path / "hostile.pt", target, marker_module, nested)
    key = "config.model.params.quantizer.target" if nested else "config.model.target"
    with pytest.raises(CheckpointError, match=rf"{path}: {key}='{target}' is not one of this project's classes"):
        load_tokenizer(path, device="cpu")
    assert not marker_module.exists()
    assert "marker_module" not in sys.modules


def test_refusal_happens_before_any_import(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: calls.append(name))
    with pytest.raises(UntrustedTargetError, match="^data.val.target='evil.module.Thing' is not"):
        check_trusted_spec({"target": "evil.module.Thing", "params": {}}, "data.val")
    with pytest.raises(UntrustedTargetError, match="model.target=42"):
        check_trusted_target("model", 42)
    assert calls == []


def test_trust_config_loads_a_checkpoint_of_your_own_class(tmp_path: Path) -> None:
    state = torch.load(_checkpoint(tmp_path / "src.pt"), weights_only=True)
    state["config"]["model"]["target"] = f"{__name__}.ExtendedBSQModel"
    save_atomic(state, tmp_path / "own.pt")
    with pytest.raises(CheckpointError, match="ExtendedBSQModel' is not one of this project's classes"):
        load_tokenizer(tmp_path / "own.pt", device="cpu")
    tok = load_tokenizer(tmp_path / "own.pt", device="cpu", trust_config=True)
    assert type(tok.model) is ExtendedBSQModel


def test_every_registered_target_is_a_project_class() -> None:
    for name in TRUSTED_TARGETS:
        module, _, attr = name.rpartition(".")
        obj = getattr(importlib.import_module(module), attr)
        assert callable(obj) and obj.__module__.startswith("transcoder."), name


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_a_checkpoint_of_every_shipped_config_loads(path: Path) -> None:
    """Every target of every shipped config (models, losses, datasets) is allowed, and its models build from a
    checkpoint's copy of the config without trust_config (on the meta device, so nothing is allocated)."""
    config = load_config(path)
    check_trusted_spec(config, "config")
    with torch.device("meta"):
        for section in task_class(config["task"]).model_sections:
            spec = config[section]
            if section == "model" and config["task"] != "vocoder":
                spec = derive_input_grid(spec, MEL.__class__.from_dict(config["data"], strict=False))
            model = build_checkpoint_spec(spec, path, f"config.{section}")
            assert sum(p.numel() for p in model.parameters()) > 0


# -- every script that loads a checkpoint --------------------------------------------------------


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    sf.write(root / "a.wav", 0.1 * np.sin(np.arange(SR) / 10).astype(np.float32), SR)
    return root


def _script_runs(tmp_path: Path, ckpt: Path, audio: Path) -> dict[str, tuple[Any, list[str]]]:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_0000001.pt").write_bytes(ckpt.read_bytes())
    return {
        "tokenize encode": (_load_script("tokenize_audio"),
                            ["encode", "-c", str(ckpt), str(audio), str(tmp_path / "codes"), "--num-workers", "0",
                             "--quiet", "--device", "cpu"]),
        "tokenize decode": (_load_script("tokenize_audio"),
                            ["decode", "-c", str(ckpt), str(tmp_path / "none.npy"), str(tmp_path / "wav"), "--quiet",
                             "--device", "cpu"]),
        "evaluate": (_load_script("evaluate_audio_tokenizer"),
                     [str(ckpt), "--output", str(tmp_path / "eval"), "--audio-dir", str(audio), "--quiet",
                      "--device", "cpu", "--num-workers", "0"]),
        "stream": (_load_script("stream_audio"), [str(audio / "a.wav"), "--checkpoint", str(ckpt)]),
        "quality_curve": (_load_script("quality_curve"),
                          ["--run", str(run), "--heldout", str(audio), "--output", str(tmp_path / "curve")]),
    }


@pytest.mark.parametrize("target", HOSTILE)
def test_every_script_refuses_a_checkpoint_naming_code(tmp_path: Path, marker_module: Path, audio_dir: Path,
                                                       target: str, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _hostile_checkpoint(tmp_path / "hostile.pt", target, marker_module)
    np.save(tmp_path / "none.npy", np.zeros((4, 2), dtype=np.int64))
    for name, (script, argv) in _script_runs(tmp_path, ckpt, audio_dir).items():
        assert script.main(argv) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"config.model.target='{target}' is not one of this project's classes" in err[0], \
            (name, err)
        assert not marker_module.exists(), name
    assert not (tmp_path / "codes").exists() and not (tmp_path / "eval" / "metrics.json").exists()


def test_scripts_take_trust_config(tmp_path: Path, audio_dir: Path) -> None:
    state = torch.load(_checkpoint(tmp_path / "src.pt"), weights_only=True)
    state["config"]["model"]["target"] = f"{__name__}.ExtendedBSQModel"
    ckpt = save_atomic(state, tmp_path / "own.pt")
    tokenize = _load_script("tokenize_audio")
    argv = ["encode", "-c", str(ckpt), str(audio_dir), str(tmp_path / "codes"), "--num-workers", "0", "--quiet",
            "--device", "cpu"]
    assert tokenize.main(argv) == 2
    assert tokenize.main([*argv, "--trust-config"]) == 0


# -- weights -------------------------------------------------------------------------------------


def _damaged(tmp_path: Path, damage: str) -> Path:
    state = load_checkpoint(_checkpoint(tmp_path / "src.pt"))
    weights = state["model"]
    name = "quant_embed.weight"  # the encoder's last layer: every token's latent reads it
    if damage == "nan":
        weights[name] = weights[name].clone()
        weights[name][0, 0] = float("nan")
    elif damage == "inf":
        weights[name] = weights[name].clone()
        weights[name][-1, -1] = float("inf")
    else:
        weights[name] = (weights[name] * 100).to(torch.int64)
    state["damaged"] = name
    return save_atomic(state, tmp_path / f"{damage}.pt")


@pytest.mark.parametrize("damage", ["nan", "inf", "int64"])
def test_damaged_weights_are_refused_with_the_parameter_name(tmp_path: Path, damage: str) -> None:
    path = _damaged(tmp_path, damage)
    name = load_checkpoint(path)["damaged"]
    expected = "holds NaN or Inf" if damage != "int64" else "is torch.int64 in the checkpoint but torch.float32"
    with pytest.raises(CheckpointError, match=rf"parameter {name} {expected}"):
        load_tokenizer(path, device="cpu")


def test_nonfinite_override_warns_and_encoding_still_refuses(tmp_path: Path) -> None:
    path = _damaged(tmp_path, "nan")
    with pytest.warns(RuntimeWarning, match=r"loading 1 parameter\(s\) with NaN or Inf"):
        tok = load_tokenizer(path, device="cpu", allow_nonfinite=True)
    with pytest.raises(FloatingPointError, match="NaN or Inf activations"):
        tok.encode_wave(np.random.default_rng(0).standard_normal(SR).astype(np.float32))


def test_a_sound_checkpoint_loads_without_a_warning(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        tok = load_tokenizer(_checkpoint(tmp_path / "ok.pt"), device="cpu")
    assert tok.encode_wave(np.zeros(SR, dtype=np.float32)).shape[1] == 2


@pytest.mark.parametrize("target", HOSTILE)
def test_a_release_folder_naming_code_is_refused(tmp_path: Path, marker_module: Path, target: str) -> None:
    """A release folder's config.json is data too: the same allow-list, before any import."""
    from transcoder.release.export import export_release
    from transcoder.release.folder import ReleaseFormatError

    folder = tmp_path / "release"
    export_release(_checkpoint(tmp_path / "tok.pt"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["model"] = {"target": target, "params": _hostile_params(target, marker_module)}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ReleaseFormatError, match=rf"config.model.target='{target}' is not one of this project's"):
        load_tokenizer(folder, device="cpu")
    assert not marker_module.exists() and "marker_module" not in sys.modules
