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
from transcoder.data import build_dataset, collate_audio
from transcoder.evaluation.evaluate import evaluate_tokenizer, write_metrics_json
from transcoder.evaluation.metrics import CodebookUsage
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
