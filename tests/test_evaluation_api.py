"""Evaluation from Python: one metrics implementation for validation and evaluation; strict metrics.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_tokenize import SR, WINDOW_SAMPLES, _checkpoint, _speechlike

from transcoder.api import load_tokenizer
from transcoder.audio.mel import LogMelFrontend, MelConfig
from transcoder.data import build_dataset, collate_audio
from transcoder.evaluation.evaluate import evaluate_tokenizer, write_metrics_json
from transcoder.evaluation.metrics import CodebookUsage
from transcoder.evaluation.reconstruction import ReconstructionMetrics
from transcoder.training.validation import ValidationMetrics


def test_validation_and_evaluation_agree_and_exclude_padding(tmp_path: Path) -> None:
    tok = load_tokenizer(_checkpoint(tmp_path / "c.pt"), device="cpu", batch_size=4)
    root = tmp_path / "audio"
    root.mkdir()
    sf.write(root / "a.wav", _speechlike(1.3 * WINDOW_SAMPLES / SR, seed=1), SR, subtype="FLOAT")  # padded window
    sf.write(root / "b.wav", _speechlike(2 * WINDOW_SAMPLES / SR, seed=2), SR, subtype="FLOAT")
    spec = {"target": "transcoder.data.AudioFolderDataset", "params": {"root": str(root)}}
    dataset = build_dataset(spec, sample_rate=SR, clip_samples=WINDOW_SAMPLES, mode="eval")
    results = evaluate_tokenizer(tok, dataset, batch_size=8, audio_metrics=False)  # Python, writes nothing

    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=collate_audio)))
    with torch.no_grad():
        mel = tok.frontend(batch["audio"])
        recon, quant_loss, info = tok.model(mel)
    validation = ValidationMetrics(tok.frontend, tok.bits_per_token, torch.device("cpu"))
    validation.update(recon, mel, quant_loss, info["indices"], torch.as_tensor(batch["num_valid"]))
    val = validation.compute()
    spectro, codebook = results["spectrogram"], results["codebook"]
    assert val["val/mse_db"] == pytest.approx(spectro["mse_db"], rel=1e-9)
    assert val["val/mae_db"] == pytest.approx(spectro["mae_db"], rel=1e-9)
    assert val["val/l1"] == pytest.approx(spectro["l1_model"], rel=1e-9)
    assert val["val/clips"] == results["windows"] == 4
    assert val["val/distinct_codes"] == codebook["distinct_codes"]
    assert val["val/code_entropy_bits"] == pytest.approx(codebook["entropy_bits"])
    # Padding excluded: a.wav's second window holds 0.3 windows = 20 frames -> 2 of 4 token rows.
    assert codebook["num_tokens"] == (4 + 2 + 4 + 4) * tok.n_freq_patches
    valid_rows = [4, 2, 4, 4]
    expected = CodebookUsage(tok.bits_per_token)
    expected.update(torch.cat([info["indices"][b, :r] for b, r in enumerate(valid_rows)]))
    assert codebook["distinct_codes"] == expected.compute().distinct_codes


def test_metrics_json_is_strict_json_with_null_for_nan(tmp_path: Path) -> None:
    path = write_metrics_json(tmp_path / "m.json", {"pesq": float("nan"), "nested": [1.0, float("inf")],
                                                    "ok": 2.5, "n": np.float32(1.5),
                                                    "m": np.float64("nan")})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    assert data == {"pesq": None, "nested": [1.0, None], "ok": 2.5, "n": 1.5, "m": None}
    assert math.isfinite(data["ok"])


def test_common_floor_mae_ignores_errors_below_the_floor_and_keeps_those_above() -> None:
    frontend = LogMelFrontend(MelConfig())  # db_min -80
    target_db = torch.full((2, 8, frontend.config.n_mels), -30.0)
    target_db[:, :, :72] = -75.0  # 72 of 128 bins below a -60 dB floor
    recon_db = target_db.clone()
    recon_db[:, :, :64] = -65.0  # 10 dB off, but below the floor on both sides: 0 above it
    recon_db[:, :, 64:72] = -50.0  # 25 dB off, one side below the floor: 10 dB above it
    recon_db[:, :, 72:] += 2.0  # 2 dB off above the floor
    recon_db[1, 4:] = 0.0  # frames past num_valid: never counted
    metrics = ReconstructionMetrics(frontend, bits=4, patch_t=4, common_floor_db=-60.0)
    indices = torch.zeros(2, 2, 1, dtype=torch.long)
    num_valid = torch.tensor([8 * frontend.hop_length, 4 * frontend.hop_length])
    metrics.update(frontend.db_to_model(recon_db), frontend.db_to_model(target_db), 0.0, indices, num_valid)
    summary = metrics.compute()
    assert summary.mae_db == pytest.approx((64 * 10.0 + 8 * 25.0 + 56 * 2.0) / 128, rel=1e-5)
    assert summary.mae_db_common_floor == pytest.approx((8 * 10.0 + 56 * 2.0) / 128, rel=1e-5)
    plain = ReconstructionMetrics(frontend, bits=4, patch_t=4)
    plain.update(frontend.db_to_model(recon_db), frontend.db_to_model(target_db), 0.0, indices, num_valid)
    assert plain.compute().mae_db_common_floor is None


def test_evaluation_reports_the_common_floor_mae_when_asked(tmp_path: Path) -> None:
    tok = load_tokenizer(_checkpoint(tmp_path / "c.pt"), device="cpu", batch_size=4)
    root = tmp_path / "audio"
    root.mkdir()
    sf.write(root / "a.wav", _speechlike(2 * WINDOW_SAMPLES / SR, seed=3), SR, subtype="FLOAT")
    spec = {"target": "transcoder.data.AudioFolderDataset", "params": {"root": str(root)}}
    dataset = build_dataset(spec, sample_rate=SR, clip_samples=WINDOW_SAMPLES, mode="eval")
    plain = evaluate_tokenizer(tok, dataset, batch_size=8, audio_metrics=False)["spectrogram"]
    floored = evaluate_tokenizer(tok, dataset, batch_size=8, audio_metrics=False, common_floor_db=-40.0)["spectrogram"]
    assert "mae_db_common_floor" not in plain
    assert floored["common_floor_db"] == -40.0
    assert floored["mae_db"] == pytest.approx(plain["mae_db"], rel=1e-12)
    # Clamping both sides can only shrink each error.
    assert 0.0 <= floored["mae_db_common_floor"] < floored["mae_db"]
    for below_own_floor in (-100.0, float("nan")):  # the model's db_min is -80: such a clamp would change nothing
        with pytest.raises(ValueError, match="at or above this model's own floor data.db_min=-80"):
            evaluate_tokenizer(tok, dataset, batch_size=8, audio_metrics=False, common_floor_db=below_own_floor)
