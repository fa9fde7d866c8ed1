"""Release folders: export a checkpoint, load the folder (same codes, nothing unpickled, the checkpoint's model
builder), the model card with its metrics, the vocoder in the folder, bad folders, and the Hub-name route offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_tokenize import REPO, _checkpoint, _load_script
from test_vocoder import _vocoder_checkpoint

import transcoder.models.build as build
from transcoder.api import load_tokenizer
from transcoder.release.card import metric_rows
from transcoder.release.export import export_release
from transcoder.release.folder import ReleaseFormatError
from transcoder.release.hub import is_hub_name, resolve_source

AUDIO = sorted((REPO / "data" / "librivox-mini" / "LibriSpeech").rglob("*.flac"))
export_script = _load_script("export_tokenizer")


@pytest.fixture(scope="module")
def ema_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint whose EMA weights differ from its raw weights (random, seeds 0 and 1)."""
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=0, ema_seed=1)


@pytest.fixture(scope="module")
def folder(ema_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_release(ema_ckpt, tmp_path_factory.mktemp("release") / "tiny-tokenizer")


def _codes(tok: Any) -> list[torch.Tensor]:
    return [tok.encode_file(path) for path in AUDIO]


def test_folder_holds_plain_files_and_gives_the_checkpoint_codes(ema_ckpt: Path, folder: Path) -> None:
    assert len(AUDIO) >= 4
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "audio-bsq-vit-release" and config["format_version"] == 1
    assert config["weights"] == "ema" and config["codes"]["bits_per_token"] == 12
    assert config["rates"] == {"tokens_per_second": 12.5, "bits_per_second": 150.0}
    checkpoint = load_tokenizer(ema_ckpt, device="cpu", batch_size=4)
    released = load_tokenizer(folder, device="cpu", batch_size=4)
    assert released.weights == "ema" and released.rates == checkpoint.rates
    for a, b in zip(_codes(checkpoint), _codes(released), strict=True):
        assert torch.equal(a, b)
        assert torch.equal(checkpoint.decode_to_mel(a), released.decode_to_mel(b))
    # --weights model ships the raw weights: the checkpoint's codes without EMA, which differ from the EMA codes
    raw = export_release(ema_ckpt, folder.parent / "raw", weights="model")
    raw_codes = _codes(load_tokenizer(raw, device="cpu"))
    assert all(torch.equal(a, b) for a, b in zip(_codes(load_tokenizer(ema_ckpt, device="cpu", use_ema=False)),
                                                  raw_codes, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(_codes(released), raw_codes, strict=True))


def test_loading_a_folder_unpickles_nothing_and_uses_the_checkpoint_builder(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.load called while loading a release folder")

    built: list[dict[str, Any]] = []
    original = build.build_model

    def spy(spec: dict[str, Any], grid: Any) -> Any:
        built.append(spec)
        return original(spec, grid)

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(build, "build_model", spy)
    tok = load_tokenizer(folder, device="cpu")
    config = json.loads((folder / "config.json").read_text())
    assert [spec["target"] for spec in built] == [config["model"]["target"]]
    assert tok.tokens_per_second == 12.5


def test_bad_folders_and_backends_are_one_line_errors(folder: Path, ema_ckpt: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "README.md"):
        (broken / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(ReleaseFormatError, match=r"model\.safetensors is missing") as missing:
        load_tokenizer(broken, device="cpu")
    assert "\n" not in str(missing.value)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ReleaseFormatError, match="cannot be read as safetensors"):
        load_tokenizer(broken, device="cpu")
    config = json.loads((folder / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ReleaseFormatError, match=r"config\.json: key 'format_version' is 99"):
        load_tokenizer(broken, device="cpu")
    (broken / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "mel"}))
    with pytest.raises(ReleaseFormatError, match="key 'mel' must be a dict"):
        load_tokenizer(broken, device="cpu")
    (broken / "config.json").unlink()
    with pytest.raises(ReleaseFormatError, match=r"config\.json is missing"):
        load_tokenizer(broken, device="cpu")
    with pytest.raises(ValueError, match=r"backend='tf': expected one of \['torch', 'onnx'\]"):
        load_tokenizer(folder, backend="tf")
    with pytest.raises(ValueError, match="is a checkpoint file"):
        load_tokenizer(ema_ckpt, backend="onnx")
    with pytest.raises(ReleaseFormatError, match="key 'onnx' is None; this folder has no ONNX graphs"):
        load_tokenizer(folder, backend="onnx")


def test_export_is_atomic_and_refuses_to_overwrite(ema_ckpt: Path, folder: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileExistsError, match="exists"):
        export_release(ema_ckpt, folder)
    import transcoder.release.export as export

    def fail(*args: Any, **kwargs: Any) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "model_card", fail)
    with pytest.raises(OSError, match=r"could not write release folder .*late \(No space left on device\)"):
        export_release(ema_ckpt, tmp_path / "late")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary sibling
    with pytest.raises(ValueError, match="holds no EMA weights"):
        export_release(_checkpoint(tmp_path / "plain.pt"), tmp_path / "x", weights="ema")


def _metrics_single() -> dict[str, Any]:
    return {"rates": {"bits_per_token": 12, "bitrate": 150.0, "tokens_per_second": 12.5},
            "spectrogram": {"mae_db": 7.125, "mse_db": 90.0}, "audio": {"recon": {"pesq": 1.2345, "stoi": 0.6789}},
            "dataset": {"target": "transcoder.data.LibriSpeechDataset", "params": {"root": "data/dev-clean"}}}


def _front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_model_card_renders_the_metrics_it_was_given(ema_ckpt: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(_metrics_single()))
    out = tmp_path / "card"
    assert export_script.main([str(ema_ckpt), str(out), "--metrics", str(metrics), "--name", "org/tiny",
                               "--license", "cc-by-4.0"]) == 0
    assert "wrote" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    matter = _front_matter(card)
    assert matter["library_name"] == "transcoder" and matter["license"] == "cc-by-4.0"
    assert matter["pipeline_tag"] == "audio-to-audio" and "audio-tokenizer" in matter["tags"]
    (result,) = matter["model-index"][0]["results"]
    assert matter["model-index"][0]["name"] == "org/tiny"
    assert result["dataset"]["name"] == "data/dev-clean"
    assert {m["type"]: m["value"] for m in result["metrics"]} == {"mel_mae_db": 7.125, "pesq": 1.2345,
                                                                    "stoi": 0.6789}
    assert "| 12 | 150 | 7.125 | 1.234 | 0.679 |" in card and 'load_tokenizer("org/tiny")' in card
    # one row per width (evaluate_audio_tokenizer.py --bits 9,12): both in the model index, null scores left out
    rows = {"bits": [6, 12], "rows": [{"bits": 6, "bitrate": 75.0, "mae_db": 9.5, "pesq": None, "stoi": 0.5},
                                      {"bits": 12, "bitrate": 150.0, "mae_db": 7.0, "pesq": 1.5, "stoi": 0.75}]}
    metrics.write_text(json.dumps(rows))
    assert export_script.main([str(ema_ckpt), str(out), "--metrics", str(metrics), "--overwrite",
                               "--dataset", "openslr/librispeech_asr"]) == 0
    matter = _front_matter((out / "README.md").read_text())
    assert matter["datasets"] == ["openslr/librispeech_asr"]
    values = [{m["type"]: m["value"] for m in r["metrics"]} for r in matter["model-index"][0]["results"]]
    assert values == [{"mel_mae_db": 9.5, "stoi": 0.5}, {"mel_mae_db": 7.0, "pesq": 1.5, "stoi": 0.75}]
    with pytest.raises(ValueError, match="expected 'rows' or 'rates'"):
        metric_rows({"checkpoint": "x"})
    metrics.write_text("{not json")
    assert export_script.main([str(ema_ckpt), str(tmp_path / "bad"), "--metrics", str(metrics)]) == 2
    assert f"--metrics {metrics} cannot be read as JSON" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_card_names_the_training_data_without_metrics(folder: Path, tmp_path: Path) -> None:
    matter = _front_matter((folder / "README.md").read_text())
    assert "model-index" not in matter and matter["license"] == "mit"
    # test_tokenize's checkpoint has no datasets: no datasets key rather than an invented one
    assert "datasets" not in matter
    with_data = export_release(_checkpoint(tmp_path / "d.pt", data_root="corpus/my-speech/"), tmp_path / "d")
    assert _front_matter((with_data / "README.md").read_text())["datasets"] == ["corpus/my-speech"]
    assert json.loads((with_data / "config.json").read_text())["datasets"] == ["corpus/my-speech"]


def test_the_vocoder_travels_with_the_folder(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "tok.pt")
    vocoder = _vocoder_checkpoint(tmp_path / "voc.pt")
    out = export_release(ckpt, tmp_path / "with-vocoder", vocoder=vocoder)
    assert {"vocoder.safetensors", "vocoder_config.json"} <= {p.name for p in out.iterdir()}
    released = load_tokenizer(out, device="cpu")
    reference = load_tokenizer(ckpt, device="cpu", vocoder=vocoder)
    assert released.renderer_name == "neural"
    codes = reference.encode_file(AUDIO[0])
    assert torch.equal(released.decode_codes(codes), reference.decode_codes(codes))
    assert "neural vocoder shipped in this folder" in (out / "README.md").read_text()


def test_hub_names_and_paths() -> None:
    assert is_hub_name("org/model") and is_hub_name("my-org/tokenizer.v2")
    assert not is_hub_name("outputs/best.pt") and not is_hub_name(Path("org/model")) and not is_hub_name("a/b/c")
    assert resolve_source("outputs/best.pt") == Path("outputs/best.pt")


def test_a_hub_name_without_huggingface_hub_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ModuleNotFoundError, match=r"^'org/model' is not a local path; .* needs huggingface_hub: "
                                                  r"pip install -e '\.\[hub\]'$"):
        load_tokenizer("org/model", device="cpu")


def _hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay ``folder`` out as the Hub cache does after a download: ``models--org--name/{refs/main, snapshots/<sha>}``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for path in folder.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())


def test_a_hub_name_loads_from_the_cache_offline(folder: Path, tmp_path: Path) -> None:
    home = tmp_path / "hf"
    _hub_cache(home / "hub", "org/tiny-tokenizer", folder)
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    script = ("import sys, torch; from transcoder.api import load_tokenizer\n"
              "tok = load_tokenizer('org/tiny-tokenizer', device='cpu')\n"
              f"torch.save(tok.encode_file({str(AUDIO[0])!r}), sys.argv[1])\n"
              "print(tok.checkpoint_path)\n"
              "try:\n    load_tokenizer('org/not-cached', device='cpu')\n"
              "except FileNotFoundError as err:\n    print('MISSING', err)\n")
    codes_path = tmp_path / "codes.pt"
    run = subprocess.run([sys.executable, "-c", script, str(codes_path)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert str(home / "hub" / "models--org--tiny-tokenizer" / "snapshots") in run.stdout
    assert "MISSING 'org/not-cached' is not a local path and could not be fetched" in run.stdout
    expected = load_tokenizer(folder, device="cpu").encode_file(AUDIO[0])
    assert torch.equal(torch.load(codes_path), expected)
