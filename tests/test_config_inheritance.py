"""Configs that inherit (``base:``): every shipped config resolves and builds, none restates its base,
errors name the file (or command-line override) that set the offending key, ``--print-config``."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from transcoder.api import load_model_from_checkpoint
from transcoder.audio import MelConfig
from transcoder.models.audiobsq import AudioBSQModel
from transcoder.models.quantizer.bsq import BinarySphericalQuantizer
from transcoder.tasks import task_class
from transcoder.training import cli
from transcoder.training.config import load_config
from transcoder.utils.config_files import read_config_chain, read_config_file
from transcoder.utils.targets import ConfigError, instantiate

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for folder in ("tokenizer", "vocoder", "pretrain")
                 for p in (REPO / "configs" / folder).glob("*.yaml"))
BASES = sorted((REPO / "configs" / "base").glob("*.yaml"))
DEMO = REPO / "configs" / "tokenizer" / "audio_demo_librivox_mini.yaml"


def _ids(paths: list[Path]) -> list[str]:
    return [f"{p.parent.name}/{p.name}" for p in paths]


def test_there_are_shipped_configs_and_bases() -> None:
    assert len(SHIPPED) >= 16 and len(BASES) >= 2


@pytest.mark.parametrize("path", SHIPPED, ids=_ids(SHIPPED))
def test_shipped_config_resolves_and_builds(path: Path) -> None:
    """Each shipped config is a base plus deltas, resolves, and builds its models and loss (on the meta
    device: shapes and arguments are checked, no memory is allocated, so the 36-bit large model is cheap)."""
    raw = yaml.safe_load(path.read_text())
    assert "base" in raw, f"{path.name} inherits from nothing: state a base and only the deltas"
    config = load_config(path)
    assert "base" not in config
    with torch.device("meta"):
        for section in task_class(config["task"]).model_sections:
            model = instantiate(config[section])
            assert sum(p.numel() for p in model.parameters()) > 0
    instantiate(config["loss"])


def _restated(base: dict[str, Any], child: dict[str, Any], path: tuple[str, ...] = ()) -> list[str]:
    """Keys of ``child`` whose value the merged ``base`` already holds (mirrors the merge rules)."""
    found = []
    for key, value in child.items():
        if key not in base:
            continue
        inherited = base[key]
        if isinstance(inherited, dict) and isinstance(value, dict):
            if "target" in inherited and "target" in value and inherited["target"] != value["target"]:
                continue  # another class: the base's mapping is replaced wholesale, nothing is restated
            found += _restated(inherited, value, (*path, key))
        elif inherited == value:
            found.append(".".join((*path, key)))
    return found


@pytest.mark.parametrize("path", SHIPPED + BASES, ids=_ids(SHIPPED + BASES))
def test_no_config_restates_its_base(path: Path) -> None:
    chain = read_config_chain(path)
    if len(chain) == 1:
        return
    base = read_config_file(chain[1][0]).values
    assert _restated(base, chain[0][1]) == [], f"{path.name} restates values its base already sets"


def test_streaming_configs_carry_the_recipe_of_their_offline_sibling() -> None:
    """The streaming configs differ from their offline configs in the causal keys only (same recipe)."""
    causal_keys = {"causal", "lookahead", "context", "rope_base"}
    for streaming, offline in (("audio_speech_streaming_b18.yaml", "audio_speech_bsq_b18_80mel.yaml"),
                               ("audio_demo_streaming_librivox_mini.yaml", "audio_demo_librivox_mini.yaml")):
        a = load_config(REPO / "configs" / "tokenizer" / streaming)
        b = load_config(REPO / "configs" / "tokenizer" / offline)
        a_audio, b_audio = a["model"]["params"].pop("audioconfig"), b["model"]["params"].pop("audioconfig")
        assert a == b, streaming
        assert {k for k in a_audio if a_audio[k] != b_audio.get(k)} <= causal_keys and a_audio["causal"] is True
        assert a["model"]["params"]["inv_temperature"] == 10.0 and a["data"]["specaugment"] is None
        assert a["loss"]["params"]["codebook_warmup_steps"] == 0


# -- merge rules and errors ------------------------------------------------------------------------

def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_merge_rules_child_wins_target_change_replaces_null_removes(tmp_path: Path) -> None:
    _write(tmp_path, "base/b.yaml", f"base: {DEMO}\n")  # an absolute base path works too
    child = _write(tmp_path, "c.yaml", "base: base/b.yaml\n"
                   "model: {params: {audioconfig: {width: 64}}}\n"
                   "loss: {target: transcoder.losses.AudioTokenizerGanLoss, params: {disc_start_step: 5}}\n"
                   "data: {val: null}\n"
                   "optimizer: {betas: [0.5, 0.6]}\n")
    demo, config = load_config(DEMO), load_config(child)
    audio = config["model"]["params"]["audioconfig"]
    assert audio["width"] == 64 and audio["layers"] == demo["model"]["params"]["audioconfig"]["layers"]  # deep merge
    assert config["loss"]["params"] == {"disc_start_step": 5}  # another target: the base's params are dropped
    assert config["data"]["val"] is None and config["data"]["train"] == demo["data"]["train"]
    assert config["optimizer"]["betas"] == [0.5, 0.6] and config["optimizer"]["lr"] == demo["optimizer"]["lr"]


def test_chain_error_names_the_base_file_that_set_the_key(tmp_path: Path) -> None:
    root = _write(tmp_path, "root.yaml", f"base: {DEMO}\ntraining: {{max_step: 5}}\n")
    _write(tmp_path, "mid.yaml", "base: root.yaml\noptimizer: {lr: 0.002}\n")
    leaf = _write(tmp_path, "leaf.yaml", "base: mid.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_config(leaf)
    message = str(info.value)
    assert message.startswith(f"{root} (base of {leaf}): unknown key(s) ['max_step'] in section 'training'"), message
    _write(tmp_path, "root.yaml", f"base: {DEMO}\ntraining: {{seed: -3}}\n")  # a bad value, not a bad key
    with pytest.raises(ConfigError, match=r"root\.yaml \(base of .*leaf\.yaml\): training\.seed=-3"):
        load_config(leaf)
    _write(tmp_path, "leaf.yaml", "base: mid.yaml\ntraining: {seed: -4}\n")  # set in the named file itself
    with pytest.raises(ConfigError) as info:
        load_config(leaf)
    assert str(info.value).startswith(f"{leaf}: training.seed=-4"), str(info.value)


def test_cycle_missing_base_and_bad_base_name_the_file(tmp_path: Path) -> None:
    a = _write(tmp_path, "a.yaml", "base: b.yaml\n")
    _write(tmp_path, "b.yaml", "base: ./a.yaml\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: the base chain has a cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(a)
    missing = _write(tmp_path, "m.yaml", "base: nowhere/x.yaml\n")
    with pytest.raises(ConfigError, match=r"m\.yaml: base='nowhere/x\.yaml': no such config file"):
        load_config(missing)
    bad = _write(tmp_path, "n.yaml", "base: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"n\.yaml: base=\['a\.yaml'\]: expected the path of a config file"):
        load_config(bad)
    _write(tmp_path, "broken.yaml", "training: [\n")
    child = _write(tmp_path, "child.yaml", "base: broken.yaml\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config(child)


def test_override_errors_are_attributed_to_the_override_not_the_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(DEMO, ["training.foo=1"])
    message = str(info.value)
    assert message.startswith("command-line override training.foo=1: unknown key(s) ['foo'] in section 'training'")
    assert DEMO.name not in message
    with pytest.raises(ConfigError, match=r"^command-line override training\.seed=-1: training\.seed=-1"):
        load_config(DEMO, ["training.seed=-1"])
    with pytest.raises(ConfigError, match=r"^command-line override data\.specaugment\.tim=1: .*\['tim'\]"):
        load_config(DEMO, ["data.specaugment.tim=1"])


def test_print_config_prints_the_resolved_yaml_and_exits_0(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    streaming = REPO / "configs" / "tokenizer" / "audio_speech_streaming_b18.yaml"
    assert cli.run([str(streaming), "--print-config", "training.max_steps=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == load_config(streaming, ["training.max_steps=7"])
    assert printed["training"]["max_steps"] == 7 and printed["model"]["params"]["audioconfig"]["causal"] is True
    assert cli.run([str(streaming), "--print-config", "training.nope=1"]) == 2
    assert "command-line override training.nope=1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- code defaults equal the recipe; old checkpoints are unaffected ----------------------------------

def test_code_default_inv_temperature_is_the_recipe_and_old_checkpoints_keep_their_codes(tmp_path: Path) -> None:
    recipe = yaml.safe_load((REPO / "configs" / "base" / "tokenizer.yaml").read_text())["model"]["params"]
    default = inspect.signature(BinarySphericalQuantizer).parameters["inv_temperature"].default
    assert default == recipe["inv_temperature"]
    assert AudioBSQModel(audioconfig={"width": 32, "layers": 1, "heads": 2, "input_size": 32, "input_length": 32,
                                      "use_conv_module": False}).quantizer.inv_temperature == recipe["inv_temperature"]
    # A checkpoint trained under the old default (1.0) whose config does not state it, loaded today.
    mel = MelConfig(n_mels=32, target_length=32)
    params = {"embed_dim": 6, "group_size": 3, "audioconfig": {"patch_size": 8, "width": 32, "layers": 1,
                                                               "heads": 2, "use_conv_module": False,
                                                               "input_size": 32, "input_length": 32}}
    torch.manual_seed(0)
    old = AudioBSQModel(**params, inv_temperature=1.0).eval()
    path = tmp_path / "old.pt"
    torch.save({"model": old.state_dict(), "ema": None, "mel": mel.to_dict(), "step": 1, "optimizer": {},
                "config": {"model": {"target": "transcoder.models.audiobsq.AudioBSQModel", "params": params},
                           "data": mel.to_dict()}}, path)
    loaded, _, _ = load_model_from_checkpoint(path)
    assert loaded.quantizer.inv_temperature == 10.0
    x = torch.rand(3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x)[2]["indices"], old(x)[2]["indices"])
        assert torch.equal(loaded(x)[0], old(x)[0])


def test_a_checkpoint_of_the_previous_layout_loads_and_encodes_as_before(tmp_path: Path) -> None:
    """A checkpoint written before ``input_norm`` / ``decoder_layers`` existed (its config names neither, its weights
    hold no ``input_norm.*`` buffers) builds the model it was trained as: same codes and reconstruction, whatever
    today's base config says."""
    mel = MelConfig(n_mels=32, target_length=32)
    audioconfig = {"patch_size": 8, "width": 32, "layers": 1, "heads": 2, "use_conv_module": False,
                   "input_size": 32, "input_length": 32}
    params = {"embed_dim": 6, "group_size": 3, "audioconfig": audioconfig}
    torch.manual_seed(0)
    old = AudioBSQModel(**params).eval()
    state = old.state_dict()
    assert not any(k.startswith("input_norm.") for k in state)
    path = tmp_path / "previous_layout.pt"
    torch.save({"model": state, "ema": None, "mel": mel.to_dict(), "step": 1, "optimizer": {},
                "config": {"model": {"target": "transcoder.models.audiobsq.AudioBSQModel", "params": params},
                           "data": mel.to_dict()}}, path)
    loaded, _, _ = load_model_from_checkpoint(path)
    assert loaded.input_norm is None and len(loaded.decoder.blocks) == 1
    x = torch.rand(3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x)[2]["indices"], old(x)[2]["indices"])
        assert torch.equal(loaded(x)[0], old(x)[0])


def test_evaluation_data_config_reads_the_base_chain() -> None:
    """``evaluate_audio_tokenizer.py --data-config`` finds a data split that a config inherits."""
    from transcoder.evaluation.evaluate import dataset_spec

    streaming = REPO / "configs" / "tokenizer" / "audio_speech_streaming_b18.yaml"
    assert "data" not in yaml.safe_load(streaming.read_text())
    assert dataset_spec({}, data_config=str(streaming)) == load_config(streaming)["data"]["val"]
