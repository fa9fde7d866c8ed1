"""scripts/benchmark_lm_bits.py on tiny codes: it trains, scores every held-out token once, and its figures agree."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from transcoder.codes import UnitWriter, write_header

REPO = Path(__file__).resolve().parents[1]
BITS, NF = 4, 2


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_lm_bits", REPO / "scripts" / "benchmark_lm_bits.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_codes(folder: Path, speakers: list[str], per_speaker: int = 4) -> int:
    """Learnable codes (one value of 0..3 per utterance, out of 16); returns the valid code count."""
    write_header(folder, {"layout": "packed", "sample_rate": 16000, "hop_length": 160, "n_mels": 32,
                          "window_frames": 64, "patch_size": [16, 16], "grid_per_window": [4, NF], "bits": BITS,
                          "codes_dtype": "uint16", "tokens_per_second": 12.5, "bitrate": 50.0,
                          "checkpoint": "/x/tiny.pt", "checkpoint_sha256": "a" * 64, "weights": "model",
                          "input": {"kind": "folder", "path": "/a"}, "num_units": 1, "unit_size": 8})
    writer = UnitWriter(folder, 0, layout="packed", bits=BITS, hop_length=160, patch_t=16, sample_rate=16000)
    rng = np.random.default_rng(0)
    valid = 0
    for speaker in speakers:
        for k in range(per_speaker):
            num_samples = 6 * 16 * 160 - 100  # 6 valid rows of 8
            codes = np.full((8, NF), int(rng.integers(4)))
            writer.add(f"{speaker}/u{k}", codes, num_samples=num_samples, source="x.wav")
            valid += 6 * NF
    writer.close()
    return valid


def test_benchmark_lm_bits_trains_and_reports_consistent_figures(tmp_path: Path) -> None:
    held_out_codes = make_codes(tmp_path / "codes", ["a", "b", "c"]) // 3
    script = load_script()
    results = script.main(["--train", str(tmp_path / "codes"), "--holdout", "c/", "--views", "full", "2", "1",
                           "--seconds", "60", "--max-steps", "25", "--evals", "2", "--context-codes", "8",
                           "--batch-size", "4", "--d-model", "32", "--layers", "1", "--heads", "2", "--lr", "1e-2",
                           "--warmup", "5", "--threads", "1", "--output", str(tmp_path / "out")])
    assert results == json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["held_out_utterances"] == 4 and results["train_utterances"] == 8
    for view, groups in zip(results["views"], (1, 2, 4), strict=True):
        assert view["tokens_per_code"] == groups and view["steps"] == 25
        assert view["held_out_tokens"] == held_out_codes * groups  # every code token scored once, no padding
        first, last = view["curve"][0]["held_out_bits_per_token"], view["curve"][-1]["held_out_bits_per_token"]
        assert math.isclose(first, BITS / groups, rel_tol=0.25)  # untrained: about uniform over the vocabulary
        assert last < 0.8 * first  # a skewed, repetitive pattern is learnable
        assert math.isclose(view["lm_bits_per_second"], view["lm_bits_per_token"] * 12.5 * groups)
        assert 0 < view["unigram_entropy_bits_per_token"] <= 2 / groups


def test_adaptive_softmax_scores_a_normalised_distribution() -> None:
    script = load_script()
    torch.manual_seed(0)
    model = script.TinyCausalLM(vocab=5000, slots=2, context=4, d_model=16, layers=1, heads=2,
                                adaptive_cutoffs=[100, 1000])
    tokens = torch.tensor([[5000, 3, 4000, 7]])
    slot, zeros = torch.tensor([[-1, 0, 1, 0]]), torch.zeros(1, 4, dtype=torch.int64)
    hidden = model.hidden(tokens, slot, torch.arange(4)[None], zeros)
    log_probs = model.head.log_prob(hidden[0])
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(4), atol=1e-4)
    nll = model.nll(tokens, slot, torch.arange(4)[None], zeros, torch.tensor([[3, 4000, 7, -100]]))
    assert torch.allclose(nll, -log_probs[torch.arange(3), torch.tensor([3, 4000, 7])], atol=1e-5)
