"""Evaluation a researcher can trust: limited evaluations spread over sources, dWER only where the recogniser
understands the speech, per-source languages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from transcoder.audio.griffin_lim import GriffinLimVocoder
from transcoder.audio.mel import LogMelFrontend
from transcoder.data import build_dataset
from transcoder.evaluation.anchors import evaluate_anchors
from transcoder.evaluation.asr_guard import CEILING_DWER_LIMIT, LanguagePlan, asr_reliability, parse_languages
from transcoder.evaluation.report_html import UNRELIABLE, quality_table
from transcoder.evaluation.subset import representative_windows, sources_line

REPO = Path(__file__).resolve().parents[1]
UTTERANCE = REPO / "data" / "librivox-mini" / "LibriSpeech" / "dev-clean" / "9001" / "1" / "9001-1-0001.flac"
SR = 16000
CLIP = 16384  # 64 frames of hop 160 plus the frontend's extra samples: see _frontend


def _frontend() -> LogMelFrontend:
    return LogMelFrontend({"sample_rate": SR, "n_mels": 32, "n_fft": 512, "hop_length": 160, "target_length": 64})


def _four_voices(root: Path, files_per_voice: int = 3, windows_per_file: int = 4) -> Path:
    """``root/voice_{a,b,c,d}/clip{i}.wav``, each file ``windows_per_file`` windows of noise."""
    rng = np.random.default_rng(0)
    clip = _frontend().config.clip_samples
    for voice in "abcd":
        (root / f"voice_{voice}").mkdir(parents=True)
        for i in range(files_per_voice):
            sf.write(root / f"voice_{voice}" / f"clip{i}.wav",
                     (0.1 * rng.standard_normal(clip * windows_per_file)).astype(np.float32), SR)
    return root


def _dataset(root: Path) -> object:
    spec = {"target": "transcoder.data.AudioFolderDataset", "params": {"root": str(root)}}
    return build_dataset(spec, sample_rate=SR, clip_samples=_frontend().config.clip_samples, mode="eval")


# -- representative subsets --------------------------------------------------------------------------------
def test_a_window_limit_covers_every_source_and_spreads_over_files(tmp_path: Path) -> None:
    dataset = _dataset(_four_voices(tmp_path / "audio"))
    assert len(dataset) == 48  # 4 voices x 3 files x 4 windows; sorted order puts voice_a's 12 first
    subset = representative_windows(dataset, 8, seed=0)
    assert len(subset.indices) == 8 and subset.indices == sorted(subset.indices)
    assert subset.sources == {"voice_a": 2, "voice_b": 2, "voice_c": 2, "voice_d": 2}
    assert subset.source_kind == "top-level folder"
    files = {dataset.path(int(np.searchsorted(dataset.eval_window_ends(), i, side="right")))
             for i in subset.indices}
    assert len(files) == 8  # two files of each voice, not two windows of one file
    assert subset.indices == representative_windows(dataset, 8, seed=0).indices  # seeded
    assert subset.indices != representative_windows(dataset, 8, seed=1).indices
    assert "8 of 48 windows from 4 of 4 sources (top-level folder): voice_a 2, voice_b 2" in sources_line(subset)
    among = representative_windows(dataset, 3, seed=0, among=subset.indices)
    assert set(among.indices) <= set(subset.indices) and len(among.covered) == 3
    assert representative_windows(dataset, None).indices == list(range(48))


def test_librispeech_sources_are_speakers() -> None:
    spec = {"target": "transcoder.data.LibriSpeechDataset",
            "params": {"root": str(REPO / "data" / "librivox-mini"), "splits": ["dev-clean"]}}
    dataset = build_dataset(spec, sample_rate=SR, clip_samples=40960, mode="eval")
    subset = representative_windows(dataset, 2, seed=0)
    assert subset.source_kind == "speaker" and subset.sources == {"speaker 9001": 2}


def test_the_anchors_limited_by_batches_score_windows_of_every_source(tmp_path: Path) -> None:
    frontend = _frontend()
    dataset = _dataset(_four_voices(tmp_path / "audio"))
    result = evaluate_anchors(dataset, frontend, GriffinLimVocoder.from_frontend(frontend, n_iter=2), 1500.0,
                              external=[], batch_size=4, max_batches=2, examples=4)
    assert result["windows"] == 8
    assert result["subset"]["windows_per_source"] == {"voice_a": 2, "voice_b": 2, "voice_c": 2, "voice_d": 2}
    assert sorted(Path(e["path"]).parent.name for e in result["examples"]) == ["voice_a", "voice_b", "voice_c",
                                                                              "voice_d"]


# -- languages and the dWER guard -------------------------------------------------------------------------
def test_language_can_be_given_per_source() -> None:
    assert parse_languages("en") == LanguagePlan("en", {})
    plan = parse_languages("fr_src=fr, en_src=en")
    assert plan.english("en_src") and not plan.english("fr_src") and not plan.english("other")
    mixed = parse_languages("en,fr_src=fr")
    assert mixed.english("other") and not mixed.english("fr_src") and mixed.describe() == "en; fr_src=fr"
    assert parse_languages("en-US").english(None)
    with pytest.raises(ValueError, match="SOURCE=LANGUAGE"):
        parse_languages("=fr")
    with pytest.raises(ValueError, match="two default"):
        parse_languages("en,fr")


def test_a_source_the_recogniser_does_not_understand_is_unreliable() -> None:
    plan = parse_languages("en,fr_src=fr")
    verdict = asr_reliability(plan, ["en_ok", "en_noise", "fr_src", "silent"],
                              {"en_ok": 0.225, "en_noise": 0.565, "fr_src": 0.9, "silent": 0.0},
                              {"en_ok": 30, "en_noise": 25, "fr_src": 20, "silent": 0})
    assert verdict["en_ok"]["reliable"] and verdict["en_ok"]["reason"] is None
    assert not verdict["en_noise"]["reliable"] and f"> {CEILING_DWER_LIMIT:.2f}" in verdict["en_noise"]["reason"]
    assert not verdict["fr_src"]["reliable"] and "language fr" in verdict["fr_src"]["reason"]
    assert not verdict["silent"]["reliable"] and "no words" in verdict["silent"]["reason"]


def test_dwer_is_kept_only_for_sources_whose_ceiling_the_recogniser_understands(
        capsys: pytest.CaptureFixture[str]) -> None:
    from transcoder.evaluation import perceptual

    for name in perceptual.EVAL_EXTRA_PACKAGES:
        pytest.importorskip(name)
    audio, sr = sf.read(UTTERANCE, dtype="float32")
    noise = np.random.default_rng(0).normal(0, 0.1, audio.size).astype(np.float32)
    scorer = perceptual.PerceptualScorer(sr, language="en", dnsmos=False, ceiling="ceiling")
    # Source "clear": its ceiling is the speech itself. Source "garbled": its ceiling is speech drowned in noise
    # (as the recogniser hears French declared English: words, but not the original's).
    for source, ceiling in (("clear", audio), ("garbled", audio * 0.05 + noise)):
        path = f"{source}/utt.flac"
        scorer.add("original", path, 0, audio, source=source)
        scorer.add("ceiling", path, 0, ceiling, source=source)
        scorer.add("tokenizer", path, 0, audio * 0.5 + noise * 0.5, source=source)
    scores = scorer.compute()
    assert scorer.reliability["clear"]["reliable"] and not scorer.reliability["garbled"]["reliable"]
    assert scorer.reliability["garbled"]["ceiling_dwer"] > CEILING_DWER_LIMIT
    row = scores["tokenizer"]
    assert set(row["dwer_by_source"]) == {"clear", "garbled"} and not row["dwer_by_source"]["garbled"]["reliable"]
    assert row["dwer"]["wer"] == pytest.approx(row["dwer_by_source"]["clear"]["wer"])  # garbled left out
    assert not row["dwer_unreliable"] and "garbled" in row["note"]
    err = capsys.readouterr().err
    assert err.count("warning: dWER / WER unreliable for 1 of 2 source(s): garbled") == 1

    only_garbled = perceptual.PerceptualScorer(sr, language="garbled=en", dnsmos=False, ceiling="ceiling")
    for rendering, x in (("original", audio), ("ceiling", audio * 0.05 + noise)):
        only_garbled.add(rendering, "garbled/utt.flac", 0, x, source="garbled")
    row = only_garbled.compute()["ceiling"]
    assert row["dwer_unreliable"] and "dwer" not in row
    results = {"rates": {"bitrate": 900.0}, "spectrogram": {"mae_db": 5.0},
               "audio": {"ceiling": {"pesq": 3.0, "stoi": 0.9, "mel_mae_db": 1.0}},
               "perceptual": {"ceiling": row}}
    table_row = next(r for r in quality_table(results) if r[0].startswith("Griffin-Lim ceiling"))
    assert table_row[-2:] == [UNRELIABLE, UNRELIABLE]
