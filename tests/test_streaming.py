"""Causal variant and streaming API: causality, streamed == offline for any chunking, bounded state."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from transcoder.api import load_tokenizer
from transcoder.audio.mel import LogMelFrontend, MelConfig
from transcoder.models.audiobsq import AudioBSQModel, AudioConfig
from transcoder.streaming import (
    CausalFrontendStream,
    StreamDecoder,
    StreamEncoder,
    algorithmic_latency,
    causal_mel,
    decode_offline,
    encode_offline,
)

SR, HOP, PT = 16000, 160, 4
ROW = PT * HOP  # samples per code row
MEL = MelConfig(sample_rate=SR, n_mels=16, n_fft=512, hop_length=HOP, target_length=32)


def _params(lookahead: int, context: int = 3, kernel: int = 3, layers: int = 2) -> dict[str, Any]:
    return {"embed_dim": 10, "audioconfig": {
        "input_size": 16, "input_length": 32, "patch_size": [PT, 8], "width": 16, "layers": layers, "heads": 2,
        "conv_kernel_size": kernel, "causal": True, "lookahead": lookahead, "context": context}}


def _model(lookahead: int, seed: int = 0, **kwargs: Any) -> AudioBSQModel:
    torch.manual_seed(seed)
    model = AudioBSQModel(**_params(lookahead, **kwargs)).double().eval()
    model.quantizer.float()  # the quantizer works in fp32 whatever the input (its buffers too)
    for module in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model


def _wave(samples: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / SR
    return (0.3 * torch.sin(2 * torch.pi * (300 + 200 * t) * t) + 0.05 * torch.randn(samples, generator=g)).float()


def _chunks(wave: Tensor, seed: int, largest: int) -> list[Tensor]:
    rng = np.random.default_rng(seed)
    cuts = [0]
    while cuts[-1] < wave.numel():
        cuts.append(min(wave.numel(), cuts[-1] + int(rng.integers(1, largest))))
    return [wave[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def _stream_encode(encoder: StreamEncoder, chunks: list[Tensor]) -> Tensor:
    return torch.cat([encoder.push(c) for c in chunks] + [encoder.finish()])


@pytest.fixture(scope="module")
def frontend() -> LogMelFrontend:
    return LogMelFrontend(MEL)


def test_config_keys_are_validated() -> None:
    with pytest.raises(ValueError, match="lookahead=1 needs causal"):
        AudioConfig.from_dict({"lookahead": 1, "width": 16, "heads": 2})
    with pytest.raises(ValueError, match="context"):
        AudioConfig.from_dict({"causal": True, "context": 0, "width": 16, "heads": 2})
    with pytest.raises(ValueError, match="even head size"):
        AudioConfig.from_dict({"causal": True, "width": 18, "heads": 2})
    with pytest.raises(ValueError, match="causal model"):
        StreamEncoder(AudioBSQModel(audioconfig={"input_size": 16, "input_length": 32, "patch_size": [PT, 8],
                                                 "width": 16, "layers": 1, "heads": 2}).eval(), LogMelFrontend(MEL))


def test_causal_front_end_stream_equals_offline_and_reads_no_future(frontend: LogMelFrontend) -> None:
    wave = _wave(5 * ROW + 77)
    offline = causal_mel(frontend, wave[None])[0]
    assert offline.shape == (wave.numel() // HOP, 16)
    stream = CausalFrontendStream(frontend)
    streamed = torch.cat([stream.push(c) for c in _chunks(wave, 0, 700)])
    torch.testing.assert_close(streamed, offline, rtol=0, atol=1e-5)
    changed = wave.clone()
    changed[10 * HOP:] += 0.5  # frame t reads samples < (t + 1) * hop only
    after = causal_mel(frontend, changed[None])[0]
    assert torch.equal(after[:10], offline[:10]) and not torch.equal(after[10], offline[10])


@pytest.mark.parametrize("lookahead", [0, 2])
def test_audio_after_t_plus_lookahead_changes_no_earlier_code(frontend: LogMelFrontend, lookahead: int) -> None:
    model = _model(lookahead)
    wave = _wave(16 * ROW)
    base = encode_offline(model, frontend, wave)
    cut_row = 9  # change every sample from the start of row 9 on
    changed = wave.clone()
    changed[cut_row * ROW:] = 0.5 * torch.randn(changed[cut_row * ROW:].shape)
    after = encode_offline(model, frontend, changed)
    unchanged_rows = cut_row - lookahead  # rows r with (r + 1 + lookahead) * ROW <= cut_row * ROW
    assert torch.equal(after[:unchanged_rows], base[:unchanged_rows])
    assert not torch.equal(after[unchanged_rows:], base[unchanged_rows:])
    # ... and the mel the decoder makes from those codes is causal too (decoder lookahead 0).
    mel_base, mel_after = decode_offline(model, base), decode_offline(model, after)
    assert torch.equal(mel_base[: unchanged_rows * PT], mel_after[: unchanged_rows * PT])


@pytest.mark.parametrize("lookahead, kernel", [(0, 3), (2, 5)])
def test_streamed_codes_equal_offline_for_random_chunkings(frontend: LogMelFrontend, lookahead: int,
                                                           kernel: int) -> None:
    model = _model(lookahead, kernel=kernel)
    wave = _wave(23 * ROW + 123)  # a partial last row; context 3 rows << 24 rows: the window slides
    offline = encode_offline(model, frontend, wave)
    assert offline.shape == (24, 2)
    for seed, largest in [(0, 50), (1, 3 * ROW), (2, 9 * ROW)]:
        streamed = _stream_encode(StreamEncoder(model, frontend), _chunks(wave, seed, largest))
        assert torch.equal(streamed, offline), f"chunking seed {seed}"
    one_shot = _stream_encode(StreamEncoder(model, frontend), [wave])
    assert torch.equal(one_shot, offline)


def test_codes_are_emitted_as_soon_as_determined(frontend: LogMelFrontend) -> None:
    lookahead = 2
    encoder = StreamEncoder(_model(lookahead), frontend)
    emitted = [encoder.push(torch.zeros(ROW)).shape[0] for _ in range(6)]
    assert emitted == [0, 0, 1, 1, 1, 1]  # row r appears with the samples of row r + lookahead
    assert algorithmic_latency(encoder.model, frontend)["total_samples"] == (1 + lookahead) * ROW
    assert encoder.finish().shape[0] == lookahead


def test_streamed_mel_equals_offline_decode(frontend: LogMelFrontend) -> None:
    model = _model(1)
    indices = torch.randint(0, 2**10, (30, 2), generator=torch.Generator().manual_seed(3))
    offline = decode_offline(model, indices)
    for seed in range(3):
        decoder = StreamDecoder(model)
        rng = np.random.default_rng(seed)
        cuts = np.unique(np.r_[0, rng.integers(0, 30, 6), 30])
        mels = [decoder.push(indices[a:b]).mel for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        mels.append(decoder.finish().mel)
        torch.testing.assert_close(torch.cat(mels), offline, rtol=0, atol=1e-12)


def test_state_stays_bounded_over_a_long_stream(frontend: LogMelFrontend) -> None:
    model = _model(2, context=4, layers=2)
    encoder, decoder = StreamEncoder(model, frontend), StreamDecoder(model)
    enc_sizes, dec_sizes = [], []
    rng = np.random.default_rng(0)
    for _ in range(300):  # 300 rows of 40 ms = 12 s
        codes = encoder.push(torch.from_numpy(rng.standard_normal(ROW).astype(np.float32) * 0.1))
        decoder.push(codes)
        enc_sizes.append(encoder.state_elements())
        dec_sizes.append(decoder.state_elements())
    assert max(enc_sizes[200:]) == max(enc_sizes[20:40]) and max(dec_sizes[200:]) == max(dec_sizes[20:40])
    # keys + values of at most context - 1 + lookahead + 1 rows per block, for 2 blocks, 2 bands, width 16
    assert max(enc_sizes) < 2 * 2 * (4 + 2 + 1) * 2 * 16 + 2 * (2 + 1) * 2 * 16 * 2 + 2 * 2 * 2 * 16 + 512


def _causal_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    params = _params(1)
    model = AudioBSQModel(**params)
    config = {"model": {"target": "transcoder.models.audiobsq.AudioBSQModel", "params": params},
              "data": {**MEL.to_dict(), "val": None}}
    torch.save({"model": model.state_dict(), "ema": None, "config": config, "mel": MEL.to_dict(), "step": 3,
                "optimizer": {}}, path)
    return path


def test_causal_checkpoint_streams_through_the_api(tmp_path: Path) -> None:
    tok = load_tokenizer(_causal_checkpoint(tmp_path / "causal.pt"), device="cpu")
    assert tok.model.config.causal and tok.model.config.lookahead == 1
    wave = _wave(10 * ROW + 300, seed=4)
    offline = encode_offline(tok.model, tok.frontend, wave)
    encoder = tok.stream_encoder()
    codes = _stream_encode(encoder, _chunks(wave, 5, 2 * ROW))
    assert torch.equal(codes, offline) and codes.shape == (11, tok.n_freq_patches)
    decoder = tok.stream_decoder(audio=True, margin_frames=4, min_frames=8)
    chunks = [decoder.push(codes[a:a + 3]) for a in range(0, 11, 3)] + [decoder.finish()]
    mel = torch.cat([c.mel for c in chunks])
    torch.testing.assert_close(mel, decode_offline(tok.model, codes), rtol=0, atol=1e-5)
    audio = np.concatenate([c.audio for c in chunks])
    assert audio.shape == (11 * ROW,) and np.isfinite(audio).all() and np.abs(audio).max() > 0


def test_causal_model_trains(frontend: LogMelFrontend) -> None:
    torch.manual_seed(0)
    model = AudioBSQModel(**_params(1)).train()
    model.set_grad_checkpointing(True)
    mel = causal_mel(frontend, _wave(8 * ROW)[None].repeat(2, 1))
    recon, quant_loss, info = model(mel)
    assert recon.shape == mel.shape and info["indices"].shape == (2, 8, 2)
    ((recon - mel).abs().mean() + quant_loss).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_stream_audio_demo_reports_latency_and_rtf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    import soundfile as sf

    script = Path(__file__).resolve().parents[1] / "scripts" / "stream_audio.py"
    spec = importlib.util.spec_from_file_location("stream_audio", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    audio = tmp_path / "x.wav"
    sf.write(audio, _wave(6 * ROW + 50).numpy(), SR)
    ckpt = _causal_checkpoint(tmp_path / "causal.pt")
    out = tmp_path / "streamed.wav"
    rc = module.main([str(audio), "--checkpoint", str(ckpt), "--chunk-ms", "15", "--audio", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "lookahead 40 ms = 80 ms" in printed and "real-time factor (process CPU time)" in printed
    assert "offline causal model's: True" in printed and "mel frames 28" in printed
    assert sf.info(str(out)).frames == 6 * ROW + 50
    late = re.search(r"late chunks: (none|\d+) of (\d+)", printed)  # every input chunk counted, late or not
    assert late is not None and int(late.group(2)) == -(-(6 * ROW + 50) // round(0.015 * SR)), printed


def test_streaming_applies_the_per_bin_standardisation(frontend: LogMelFrontend) -> None:
    """A model trained with ``input_norm: per_bin`` streams the codes and mels of its offline encode / decode."""
    torch.manual_seed(0)
    params = _params(1)
    params["audioconfig"]["input_norm"] = "per_bin"
    model = AudioBSQModel(**params).double().eval()
    model.quantizer.float()
    model.input_norm.mean.uniform_(-0.6, -0.2)  # statistics far from the identity map
    model.input_norm.std.uniform_(0.2, 0.5)
    wave = _wave(11 * ROW + 57)
    offline = encode_offline(model, frontend, wave)
    streamed = _stream_encode(StreamEncoder(model, frontend), _chunks(wave, 0, 2 * ROW))
    assert torch.equal(streamed, offline)
    plain = AudioBSQModel(**_params(1)).double().eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("input_norm.")})
    plain.quantizer.float()
    assert not torch.equal(encode_offline(plain, frontend, wave), offline)  # the standardisation matters
    decoder = StreamDecoder(model)
    mel = torch.cat([decoder.push(offline[:5]).mel, decoder.push(offline[5:]).mel, decoder.finish().mel])
    torch.testing.assert_close(mel, decode_offline(model, offline), rtol=0, atol=1e-12)
