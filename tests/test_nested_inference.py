"""Nested bits at inference: k-bit codes through the API, the codes format, the CLIs and streaming."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from test_tokenize import HOP, MEL, MODEL_PARAMS, SR, WINDOW_FRAMES, WINDOW_SAMPLES, _speechlike, tokenize_script

from transcoder.api import AudioTokenizer, load_tokenizer
from transcoder.audio.mel import LogMelFrontend, MelConfig
from transcoder.codes import CodesFile, CodesFormatError, CodesIndex, check_header, read_header, write_header
from transcoder.models.audiobsq import AudioBSQModel
from transcoder.models.quantizer.nested import truncate_indices
from transcoder.streaming import StreamDecoder, StreamEncoder, decode_offline, encode_offline

NESTED = {"widths": [6, 9, 12], "fill": "learned"}


def _nested_model(params: dict[str, Any], seed: int = 0) -> AudioBSQModel:
    torch.manual_seed(seed)
    model = AudioBSQModel(**params, nested_bits=NESTED)
    with torch.no_grad():  # a fill away from zero, so a decoder that forgot it would differ
        model.nested_bits.fill.uniform_(-0.5, 0.5)
    return model.eval()


def _nested_checkpoint(path: Path, seed: int = 0) -> Path:
    params = {**MODEL_PARAMS, "nested_bits": NESTED}
    model = _nested_model(MODEL_PARAMS, seed)
    config = {"model": {"target": "transcoder.models.audiobsq.AudioBSQModel", "params": params},
              "data": {**MEL.to_dict(), "val": None}}
    torch.save({"model": model.state_dict(), "ema": None, "config": config, "mel": MEL.to_dict(), "step": 3,
                "optimizer": {}}, path)
    return path


@pytest.fixture(scope="module")
def nested_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _nested_checkpoint(tmp_path_factory.mktemp("nested") / "nested.pt")


@pytest.fixture(scope="module")
def ntok(nested_ckpt: Path) -> AudioTokenizer:
    return load_tokenizer(nested_ckpt, device="cpu", batch_size=4)


def _model_mel_at(tok: AudioTokenizer, indices: torch.Tensor, bits: int) -> torch.Tensor:
    """The model's own decode of whole windows of ``bits``-bit indices (rows, Nf) -> (rows * pt, n_mels)."""
    windows = indices.reshape(-1, tok.time_rows_per_window, tok.n_freq_patches)
    with torch.inference_mode():
        return tok.model.decode_indices(windows, bits=bits).reshape(-1, tok.mel_config.n_mels)


# --------------------------------------------------------------------------------------------------
# API
# --------------------------------------------------------------------------------------------------


def test_every_encode_path_truncates_and_decodes_at_k_bits(ntok: AudioTokenizer, tmp_path: Path) -> None:
    assert ntok.nested_widths == [6, 9, 12] and ntok.codes_spec.nested
    wave = _speechlike(2 * WINDOW_SAMPLES / SR + 0.1)
    full = ntok.encode_wave(wave)
    nine = ntok.encode_wave(wave, bits=9)
    assert torch.equal(nine, truncate_indices(full, 9)) and int(nine.max()) < 2**9
    assert not torch.equal(nine, full)  # the test data use the high bits
    path = tmp_path / "x.wav"
    sf.write(path, wave, SR, subtype="FLOAT")
    assert torch.equal(ntok.encode_file(path, bits=9), nine)
    encoded = ntok.encode_waves([wave], bits=9)[0]
    assert torch.equal(encoded.indices, nine) and encoded.bits == 9
    segments = ntok._segmenter()
    from transcoder.audio.windows import segments_of

    windows = ntok.encode_segments(list(segments_of([wave], segments)), bits=9)
    assert torch.equal(windows.reshape(-1, ntok.n_freq_patches), nine)
    assert ntok.rates_at(9).bits_per_second == pytest.approx(ntok.tokens_per_second * 9)

    mel = ntok.decode_to_mel(nine, bits=9)
    torch.testing.assert_close(mel, _model_mel_at(ntok, nine, 9), rtol=0, atol=0)
    assert not torch.allclose(mel, ntok.decode_to_mel(full))
    # a partial last window is completed with the silent window's first 9 bits
    rows = nine.shape[0] - 1
    partial = ntok.decode_to_mel(nine[:rows], bits=9)
    assert partial.shape == (rows * ntok.patch_size[0], ntok.mel_config.n_mels)
    out = ntok.decode_codes(nine, num_samples=len(wave), bits=9)
    assert out.shape == (len(wave),) and torch.isfinite(out).all()
    ntok.decode_to_file(nine, tmp_path / "y.wav", num_samples=len(wave), bits=9)
    assert sf.info(tmp_path / "y.wav").frames == len(wave)


def test_widths_are_checked_early_with_clear_errors(ntok: AudioTokenizer, tok: AudioTokenizer) -> None:
    wave = _speechlike(0.3)
    with pytest.raises(ValueError, match=r"bits=13: expected an integer in 1\.\.12"):
        ntok.encode_wave(wave, bits=13)
    with pytest.raises(ValueError, match="model.params.nested_bits"):
        tok.encode_wave(wave, bits=9)  # a model trained without nested bits
    with pytest.raises(ValueError, match="model.params.nested_bits"):
        tok.stream_encoder(bits=9)
    full = ntok.encode_wave(wave)
    with pytest.raises(ValueError, match=r"9-bit indices must lie in \[0, 2\^9\)"):
        ntok.decode_codes(full, bits=9)  # 12-bit values declared as 9-bit


# --------------------------------------------------------------------------------------------------
# codes format
# --------------------------------------------------------------------------------------------------


def test_codes_file_records_the_width_and_checks_values(ntok: AudioTokenizer, tok: AudioTokenizer,
                                                        tmp_path: Path) -> None:
    wave = _speechlike(0.9)
    nine = ntok.encode_wave(wave, bits=9)
    path = CodesFile(nine.numpy(), len(wave), SR, 9, "x.wav", model_bits=12).save(tmp_path / "x.npz")
    loaded = ntok.load_codes(path)
    assert (loaded.bits, loaded.model_bits) == (9, 12)
    assert np.array_equal(loaded.indices, nine.numpy())
    ntok.decode_file(path, tmp_path / "x.wav")
    assert sf.info(tmp_path / "x.wav").frames == len(wave)
    with pytest.raises(CodesFormatError, match="model.params.nested_bits"):
        tok.load_codes(path)  # a 12-bit model without nested bits cannot decode 9-bit codes
    bad = nine.numpy().copy()
    bad[0, 0] = 2**9
    CodesFile(bad, len(wave), SR, 9, model_bits=12).save(tmp_path / "bad.npz")
    with pytest.raises(CodesFormatError, match=r"\[0, 2\^9\), got min \d+ max 512"):
        ntok.load_codes(tmp_path / "bad.npz")
    CodesFile(nine.numpy(), len(wave), SR, 9).save(tmp_path / "nine_bit_model.npz")  # no model_bits: a 9-bit model
    with pytest.raises(CodesFormatError, match="codes of a 9-bit model"):
        ntok.load_codes(tmp_path / "nine_bit_model.npz")


def _header(bits: int, model_bits: int | None) -> dict[str, Any]:
    header = {"layout": "packed", "sample_rate": SR, "hop_length": HOP, "n_mels": 32, "window_frames": 64,
              "patch_size": [16, 16], "grid_per_window": [4, 2], "bits": bits, "codes_dtype": "uint16",
              "checkpoint": "/x/n.pt", "checkpoint_sha256": "b" * 64, "weights": "model",
              "input": {"kind": "folder", "path": "/audio"}, "num_units": 1, "unit_size": 4}
    if model_bits is not None:
        header["model_bits"] = model_bits
    return header


def test_header_width_is_a_run_setting_and_old_headers_read_as_full_width(tmp_path: Path) -> None:
    write_header(tmp_path / "a", _header(9, 12))
    assert read_header(tmp_path / "a")["model_bits"] == 12
    with pytest.raises(CodesFormatError, match="bits=9, this run has bits=12"):
        write_header(tmp_path / "a", _header(12, 12))
    # A folder written before model_bits existed holds full-width codes: a resume at full width agrees.
    check_header(_header(12, None), _header(12, 12), tmp_path)
    with pytest.raises(CodesFormatError, match="model_bits=12, this run has model_bits=18"):
        check_header(_header(12, None), _header(12, 18), tmp_path)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "codes.json").write_text(json.dumps(
        {"format": "audio-bsq-vit-codes", "format_version": 3, **_header(12, 9)}))
    with pytest.raises(CodesFormatError, match="1 <= bits <= model_bits"):
        read_header(tmp_path / "b")


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def test_cli_encode_bits_then_decode_gives_the_models_k_bit_mel(nested_ckpt: Path, ntok: AudioTokenizer,
                                                                ckpt: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "audio"
    root.mkdir()
    wave = _speechlike(1.5, seed=4)
    sf.write(root / "a.wav", wave, SR, subtype="FLOAT")
    codes_dir = tmp_path / "codes"
    args = ["encode", "-c", str(nested_ckpt), str(root), str(codes_dir), "--num-workers", "0", "--quiet"]
    assert tokenize_script.main([*args, "--bits", "9"]) == 0
    header = json.loads((codes_dir / "codes.json").read_text())
    assert (header["bits"], header["model_bits"], header["codes_dtype"]) == (9, 12, "uint16")
    assert header["bitrate"] == pytest.approx(ntok.tokens_per_second * 9)
    index = CodesIndex.open(codes_dir)
    codes = index.codes("a")
    assert np.array_equal(codes, truncate_indices(ntok.encode_wave(wave), 9).numpy())

    mel_dir = tmp_path / "mel"
    assert tokenize_script.main(["decode", "-c", str(nested_ckpt), str(codes_dir), str(mel_dir), "--mel",
                                 "--mel-space", "model", "--quiet"]) == 0
    mel = np.load(mel_dir / "a.mel.npy")
    expected = _model_mel_at(ntok, torch.from_numpy(codes.astype(np.int64)), 9)[: math.ceil(len(wave) / HOP)]
    np.testing.assert_array_equal(mel, expected.numpy())

    capsys.readouterr()
    assert tokenize_script.main([*args, "--bits", "12"]) == 2  # the folder was written at 9 bits
    assert "bits=9, this run has bits=12" in capsys.readouterr().err
    assert tokenize_script.main(["encode", "-c", str(ckpt), str(root), str(tmp_path / "c2"), "--num-workers", "0",
                                 "--quiet", "--bits", "9"]) == 2  # a model without nested bits
    assert "model.params.nested_bits" in capsys.readouterr().err
    assert tokenize_script.main(["decode", "-c", str(ckpt), str(codes_dir), str(tmp_path / "o"), "--quiet"]) == 2
    assert "model.params.nested_bits" in capsys.readouterr().err
    assert tokenize_script.main(["decode", "-c", str(nested_ckpt), str(codes_dir), str(tmp_path / "o"), "--quiet",
                                 "--bits", "6"]) == 2
    assert "record 9 bits" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# streaming
# --------------------------------------------------------------------------------------------------

HOP_S, PT = 160, 4
ROW = PT * HOP_S
STREAM_MEL = MelConfig(sample_rate=SR, n_mels=16, n_fft=512, hop_length=HOP_S, target_length=32)
CAUSAL_PARAMS = {"embed_dim": 12, "audioconfig": {
    "input_size": 16, "input_length": 32, "patch_size": [PT, 8], "width": 16, "layers": 2, "heads": 2,
    "conv_kernel_size": 3, "causal": True, "lookahead": 1, "context": 3}}


def test_streaming_at_a_reduced_width_equals_offline() -> None:
    model = _nested_model(CAUSAL_PARAMS, seed=1)
    frontend = LogMelFrontend(STREAM_MEL)
    tok = AudioTokenizer(model, STREAM_MEL, device="cpu")
    g = torch.Generator().manual_seed(0)
    t = torch.arange(17 * ROW + 55) / SR
    wave = (0.3 * torch.sin(2 * torch.pi * (300 + 200 * t) * t) + 0.05 * torch.randn(t.numel(), generator=g))
    full = encode_offline(model, frontend, wave)
    for bits in (6, 9):
        offline = encode_offline(model, frontend, wave, bits=bits)
        assert torch.equal(offline, truncate_indices(full, bits))
        encoder = tok.stream_encoder(bits=bits)
        chunks = [wave[i:i + 777] for i in range(0, wave.numel(), 777)]
        streamed = torch.cat([encoder.push(c.numpy()) for c in chunks] + [encoder.finish()])
        assert torch.equal(streamed, offline)

        reference = decode_offline(model, offline, bits=bits)
        decoder = StreamDecoder(model, bits=bits)
        mels = [decoder.push(offline[a:a + 5]).mel for a in range(0, offline.shape[0], 5)] + [decoder.finish().mel]
        torch.testing.assert_close(torch.cat(mels), reference, rtol=0, atol=1e-5)
        assert not torch.allclose(reference, decode_offline(model, full), atol=1e-3)
    with pytest.raises(ValueError, match=r"6-bit indices must lie in \[0, 2\^6\)"):
        StreamDecoder(model, bits=6).push(full)
    with pytest.raises(ValueError, match="nested_bits"):
        StreamEncoder(AudioBSQModel(**CAUSAL_PARAMS).eval(), frontend, bits=6)
    assert WINDOW_FRAMES == 64  # the tiny checkpoint's window (shared constants stay in step)


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------


def test_evaluate_scores_every_width_as_its_own_row(nested_ckpt: Path, ntok: AudioTokenizer, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from test_tokenize import evaluate_script

    from transcoder.data import build_dataset
    from transcoder.evaluation.evaluate import evaluate_tokenizer

    root = tmp_path / "audio"
    root.mkdir()
    sf.write(root / "a.wav", _speechlike(2 * WINDOW_SAMPLES / SR, seed=5), SR)
    out = tmp_path / "eval"
    rc = evaluate_script.main([str(nested_ckpt), "--output", str(out), "--audio-dir", str(root), "--bits", "6,12",
                               "--no-audio-metrics", "--num-audio", "0", "--num-workers", "0", "--quiet",
                               "--device", "cpu"])
    assert rc == 0
    assert "| 6 | 75 |" in capsys.readouterr().out  # 12.5 tokens/s x 6 bits
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["bits"] == [6, 12] and [r["bitrate"] for r in summary["rows"]] == [75.0, 150.0]
    six = json.loads((out / "bits-6" / "metrics.json").read_text())
    assert six["rates"]["bits_per_token"] == 6 and six["rates"]["model_bits"] == 12
    assert len(six["codebook"]["bit_balance"]) == 6 and six["codebook"]["distinct_codes"] <= 2**6
    # The 6-bit score is the model's decode of the 6-bit codes.
    dataset = build_dataset({"target": "transcoder.data.AudioFolderDataset", "params": {"root": str(root)}},
                            sample_rate=SR, clip_samples=WINDOW_SAMPLES, mode="eval")
    direct = evaluate_tokenizer(ntok, dataset, audio_metrics=False, num_audio=0, bits=6)
    assert direct["spectrogram"]["mae_db"] == pytest.approx(six["spectrogram"]["mae_db"])
    assert direct["spectrogram"]["mae_db"] != pytest.approx(summary["rows"][1]["mae_db"])
    with pytest.raises(ValueError, match="nested_bits"):
        evaluate_tokenizer(load_tokenizer(_plain(tmp_path), device="cpu"), dataset, bits=6)
    assert evaluate_script.main([str(nested_ckpt), "--output", str(out), "--audio-dir", str(root), "--bits", "6,13",
                                 "--quiet", "--device", "cpu"]) == 2
    assert "bits=13" in capsys.readouterr().err


def _plain(tmp_path: Path) -> Path:
    from test_tokenize import _checkpoint

    return _checkpoint(tmp_path / "plain.pt")
