"""The ONNX route: ``export_release(onnx=True)`` writes encoder.onnx / decoder.onnx, and ``load_tokenizer(folder,
backend="onnx")`` gives the PyTorch codes and mels on the bundled audio, through the same tokenizer API.

The model is the shipped demo config (Conformer conv module, output conv head, 8x8 patches of 64 mels, 18 bits)
at width 32 with one layer per side and random weights, so the graphs hold every kind of layer the shipped
models use; the streaming demo config checks a causal model the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from test_tokenize import REPO

from transcoder.api import load_tokenizer
from transcoder.audio.mel import MelConfig
from transcoder.models.build import build_model
from transcoder.release.export import export_release
from transcoder.release.folder import ReleaseFormatError
from transcoder.training.config import load_config

AUDIO = sorted((REPO / "data" / "librivox-mini" / "LibriSpeech").rglob("*.flac"))
DEMO = REPO / "configs" / "tokenizer" / "audio_demo_librivox_mini.yaml"
SMALL = ["model.params.audioconfig.width=32", "model.params.audioconfig.layers=1", "model.params.audioconfig.heads=2"]
#: The most tokens allowed to differ between the backends (a sign flip of a projection within float error).
MAX_DIFFERING = 0.001


STREAMING = REPO / "configs" / "tokenizer" / "audio_demo_streaming_librivox_mini.yaml"


def _release(config_path: Path, tmp: Path) -> Path:
    """A random-weight model of a shipped config at :data:`SMALL` size, exported with its ONNX graphs."""
    config = load_config(config_path, SMALL)
    mel = MelConfig.from_dict(config["data"], strict=False)
    torch.manual_seed(0)
    model = build_model(config["model"], mel)
    torch.save({"format": 2, "task": "tokenizer", "models": {"model": model.state_dict()}, "ema": {},
                "config": config, "mel": mel.to_dict(), "step": 0}, tmp / "model.pt")
    return export_release(tmp / "model.pt", tmp / "release", onnx=True)


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _release(DEMO, tmp_path_factory.mktemp("onnx"))


def test_the_graphs_are_valid_onnx_dynamic_in_batch(onnx_folder: Path) -> None:
    config = json.loads((onnx_folder / "config.json").read_text())
    assert config["onnx"]["encoder"] == "encoder.onnx" and config["onnx"]["decoder"] == "decoder.onnx"
    for name, first in (("encoder.onnx", "mel"), ("decoder.onnx", "indices")):
        graph = onnx.load(str(onnx_folder / name))
        onnx.checker.check_model(graph)
        (inp,) = graph.graph.input
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert inp.name == first and dims[0] == "batch"
    assert config["onnx"]["encoder_io"]["input"] == ["mel", "float32", ["batch", 128, 64]]
    assert config["onnx"]["decoder_io"]["input"] == ["indices", "int64", ["batch", 16, 8]]


def test_onnx_backend_gives_the_pytorch_codes_and_mels(onnx_folder: Path) -> None:
    torch_tok = load_tokenizer(onnx_folder, device="cpu", batch_size=3)
    onnx_tok = load_tokenizer(onnx_folder, backend="onnx", batch_size=3)
    assert onnx_tok.backend == "onnx" and "backend=onnx" in repr(onnx_tok)
    assert onnx_tok.codes_spec == torch_tok.codes_spec
    total = differing = 0
    for path in AUDIO:
        expected, got = torch_tok.encode_file(path), onnx_tok.encode_file(path)
        assert got.shape == expected.shape and got.dtype == torch.int64
        total += expected.numel()
        differing += int((got != expected).sum())
        mel_torch, mel_onnx = torch_tok.decode_to_mel(expected), onnx_tok.decode_to_mel(expected)
        assert mel_onnx.shape == mel_torch.shape
        assert float((mel_onnx - mel_torch).abs().max()) <= 1e-4, path.name
    print(f"ONNX vs PyTorch: {differing} of {total} tokens differ on {len(AUDIO)} bundled files")
    assert total > 1000 and differing <= MAX_DIFFERING * total, f"{differing} of {total} tokens differ"
    # batches of any size: one window alone gives the codes it gets inside a batch
    windows = torch_tok._mel_windows(onnx_tok.load(AUDIO[0]))
    assert windows.shape[0] >= 3
    assert torch.equal(onnx_tok.encode_mel(windows[:1]), onnx_tok.encode_mel(windows)[:1])
    wave = onnx_tok.decode_codes(onnx_tok.encode_file(AUDIO[0]), num_samples=onnx_tok.last_num_samples)
    assert wave.shape == (onnx_tok.last_num_samples,) and torch.isfinite(wave).all()


def test_a_causal_model_exports_too(tmp_path: Path) -> None:
    folder = _release(STREAMING, tmp_path)
    torch_tok, onnx_tok = load_tokenizer(folder, device="cpu"), load_tokenizer(folder, backend="onnx")
    assert torch_tok.model.config.causal
    codes = torch_tok.encode_file(AUDIO[0])
    assert int((onnx_tok.encode_file(AUDIO[0]) != codes).sum()) <= MAX_DIFFERING * codes.numel()
    assert float((onnx_tok.decode_to_mel(codes) - torch_tok.decode_to_mel(codes)).abs().max()) <= 1e-4


def test_onnx_backend_refuses_what_it_cannot_run(onnx_folder: Path) -> None:
    tok = load_tokenizer(onnx_folder, backend="onnx")
    with pytest.raises(ValueError, match="streaming runs the PyTorch model"):
        tok.stream_encoder()
    with pytest.raises(ValueError, match="backend='onnx' runs on the CPU"):
        load_tokenizer(onnx_folder, backend="onnx", device="meta")
    (onnx_folder / "decoder.onnx").rename(onnx_folder / "decoder.moved")
    try:
        with pytest.raises(ReleaseFormatError, match=r"decoder\.onnx is missing \(config\.json names it under "
                                                     r"'onnx\.decoder'\)"):
            load_tokenizer(onnx_folder, backend="onnx")
    finally:
        (onnx_folder / "decoder.moved").rename(onnx_folder / "decoder.onnx")
