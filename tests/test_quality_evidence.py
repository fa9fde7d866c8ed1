"""Quality evidence: the trivial pooled-mel codec and the other anchors, DNSMOS / dWER (the ``eval`` extra),
the listening page and the benchmark's held-out voice."""

from __future__ import annotations

import argparse
import html.parser
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from transcoder.audio.griffin_lim import GriffinLimVocoder
from transcoder.audio.mel import LogMelFrontend
from transcoder.data import build_dataset
from transcoder.evaluation import perceptual
from transcoder.evaluation.anchors import ExternalCodec, PooledMelCodec, default_external_codecs, evaluate_anchors
from transcoder.evaluation.report_html import ReportExample, markdown_table, quality_table, write_report

REPO = Path(__file__).resolve().parents[1]
UTTERANCE = REPO / "data" / "librivox-mini" / "LibriSpeech" / "dev-clean" / "9001" / "1" / "9001-1-0001.flac"
LIBRIVOX = REPO / "data" / "librivox-mini"


# -- the trivial codec ----------------------------------------------------------------------------------------
def test_pooled_mel_codec_rate_is_exact_and_the_grid_is_what_it_says() -> None:
    codec = PooledMelCodec(4, 12, 3, -80.0, 0.0, 100.0)
    assert codec.bitrate == 900.0  # 25 cells/s x 12 bands x 3 bits
    grids = PooledMelCodec.exact_rate_grids(900.0, 100.0, 128, -80.0, 0.0)
    assert all(g.bitrate == 900.0 for g in grids)
    assert any((g.time_pool, g.n_bands, g.bits) == (4, 12, 3) for g in grids)
    mel = torch.linspace(-80, 0, 10 * 128).reshape(1, 10, 128)
    codes = codec.encode(mel)
    assert codes.shape == (1, 3, 12) and codes.min() >= 0 and codes.max() < 8  # ceil(10 / 4) cells
    assert codec(mel).shape == mel.shape
    # A mel that is constant within every cell comes back to within half a quantisation step (10 dB / 2).
    cells = torch.tensor([[-70.0, -20.0], [-40.0, -5.0]])  # (time cells, bands)
    flat = cells.repeat_interleave(4, 0).repeat_interleave(64, 1)[None]  # (1, 8, 128)
    two_band = PooledMelCodec(4, 2, 3, -80.0, 0.0, 100.0)
    assert (two_band(flat) - flat).abs().max() <= 5.0 + 1e-5
    with pytest.raises(ValueError, match="no pooled-mel grid"):
        PooledMelCodec.exact_rate_grids(901.0, 100.0, 128, -80.0, 0.0, max_time_pool=2, max_bits=2)


def _frontend_and_data(seconds_limit: int = 1) -> tuple[LogMelFrontend, GriffinLimVocoder, object]:
    frontend = LogMelFrontend({"sample_rate": 16000, "n_mels": 128, "n_fft": 1024, "hop_length": 160,
                               "target_length": 64})
    vocoder = GriffinLimVocoder.from_frontend(frontend, n_iter=4)
    spec = {"target": "transcoder.data.AudioFolderDataset", "params": {"root": str(UTTERANCE.parent)}}
    dataset = build_dataset(spec, sample_rate=16000, clip_samples=frontend.config.clip_samples, mode="eval")
    return frontend, vocoder, dataset


def test_anchors_are_scored_on_the_same_windows_and_missing_tools_are_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    from transcoder.evaluation import anchors as anchors_module

    monkeypatch.setattr(anchors_module.shutil, "which", lambda tool: None)
    codecs, notes = default_external_codecs()
    assert codecs == [] and len(notes) == 4 and all("not on PATH" in n and "\n" not in n for n in notes)
    frontend, vocoder, dataset = _frontend_and_data()
    result = evaluate_anchors(dataset, frontend, vocoder, 900.0, batch_size=4, max_batches=1, examples=1)
    trivial = next(name for name in result["rows"] if name.startswith("trivial"))
    rows = result["rows"]
    assert set(rows) == {trivial, "griffin-lim ceiling"} and result["notes"] == notes
    assert rows[trivial]["bitrate"] == 900.0 and rows[trivial]["mae_db"] > 1.0  # lossy
    assert rows["griffin-lim ceiling"]["mae_db"] == 0.0  # the true mel itself
    assert rows["griffin-lim ceiling"]["mel_mae_db"] < rows[trivial]["mel_mae_db"]  # rendered, re-analysed
    assert 1.0 <= rows[trivial]["pesq"] <= 4.6 and 0.0 <= rows[trivial]["stoi"] <= 1.0
    # The rendered grid is the best of every exact-rate grid.
    assert rows[trivial]["mae_db"] == pytest.approx(min(g["mae_db"] for g in result["trivial"]), rel=1e-6)
    assert result["windows"] == 4 and len(result["examples"]) == 1
    assert set(result["examples"][0]["audio"]) == set(rows)


@pytest.mark.skipif(shutil.which("opusenc") is None or shutil.which("c2enc") is None,
                    reason="opus-tools / codec2 not installed")
def test_external_codecs_round_trip_speech() -> None:
    audio, sr = sf.read(UTTERANCE, dtype="float32")
    audio = audio[: sr * 2]
    for codec in (ExternalCodec("opus", 12000), ExternalCodec("codec2", 3200)):
        decoded = codec(audio, sr)
        assert decoded.shape == audio.shape
        # Aligned and similar (not a shifted or silent copy): the envelopes correlate strongly.
        env = [np.convolve(np.abs(x), np.ones(400) / 400, mode="same") for x in (audio, decoded)]
        assert np.corrcoef(*env)[0, 1] > 0.8, codec.name
    frontend, vocoder, dataset = _frontend_and_data()
    rows = evaluate_anchors(dataset, frontend, vocoder, 900.0, external=[ExternalCodec("opus", 12000)],
                            batch_size=2, max_batches=1)["rows"]
    # A waveform codec's mel error is its decoded audio's log-mel against the input's (a number, not NaN).
    assert 0.0 < rows["opus 12 kbit/s"]["mae_db"] < rows[next(n for n in rows if n.startswith("trivial"))]["mae_db"]


# -- DNSMOS / dWER ---------------------------------------------------------------------------------------------
def test_missing_eval_extra_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    real = perceptual.importlib.util.find_spec
    monkeypatch.setattr(perceptual.importlib.util, "find_spec",
                        lambda name, *a: None if name == "speechmos" else real(name, *a))
    with pytest.raises(perceptual.MissingExtraError, match=r"extra 'eval' \(missing: speechmos\)"):
        perceptual.require_eval_extra()
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import evaluate_audio_tokenizer
    finally:
        sys.path.pop(0)
    code = evaluate_audio_tokenizer.main(["missing.pt", "--output", "unused", "--perceptual"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "'eval'" in err and "pip install" in err


def test_word_error_rate_normalises_and_skips_empty_references() -> None:
    pytest.importorskip("jiwer")
    assert perceptual.normalize_text("He said: 'DON'T,  go!'") == "he said don't go"
    result = perceptual.word_error_rate(["The cat sat", ""], ["the cat sat down", "noise"])
    assert result["wer"] == pytest.approx(1 / 3) and result["insertions"] == 1
    assert result["utterances"] == 1 and result["empty_references"] == 1
    assert np.isnan(perceptual.word_error_rate([""], ["x"])["wer"])


def test_reference_transcripts_come_from_the_dataset_per_file() -> None:
    spec = {"target": "transcoder.data.LibriSpeechDataset", "params": {"root": str(LIBRIVOX), "splits": ["dev-clean"]}}
    dataset = build_dataset(spec, sample_rate=16000, clip_samples=40960, mode="eval")
    item = dataset[0]
    assert "transcript" not in item  # eval items carry no metadata: the scorers look it up per file
    assert perceptual.transcript_of(dataset, item["file_index"]).startswith("AND MISTER JOHN")
    folder = build_dataset({"target": "transcoder.data.AudioFolderDataset", "params": {"root": str(LIBRIVOX)}},
                           sample_rate=16000, clip_samples=40960, mode="eval")
    assert perceptual.transcript_of(folder, 0) is None


def test_dnsmos_and_dwer_rank_the_original_above_a_degraded_rendering() -> None:
    for name in perceptual.EVAL_EXTRA_PACKAGES:
        pytest.importorskip(name)
    audio, sr = sf.read(UTTERANCE, dtype="float32")
    rng = np.random.default_rng(0)
    noisy = audio + rng.normal(0, 1, audio.size).astype(np.float32) * np.sqrt(np.mean(audio ** 2))  # 0 dB SNR
    scorer = perceptual.PerceptualScorer(sr, language="en")
    half = audio.size // 2
    transcript = "HE WAS NOT UNTIL THIS BLOWS YOUNG MAN"
    for name, x in (("original", audio), ("noisy", noisy)):
        scorer.add(name, str(UTTERANCE), half, x[half:])  # windows arrive in any order
        scorer.add(name, str(UTTERANCE), 0, x[:half], transcript if name == "original" else None)
    scores = scorer.compute()
    assert scores["original"]["dwer"]["wer"] == 0.0 and scores["original"]["dwer"]["words"] > 3
    assert scores["noisy"]["dwer"]["wer"] > 0.3
    assert scores["noisy"]["wer"]["wer"] > scores["original"]["wer"]["wer"]
    for name in ("original", "noisy"):
        assert set(scores[name]["dnsmos"]) == {"sig", "bak", "ovrl", "p808"}
        assert all(1.0 <= v <= 5.0 for v in scores[name]["dnsmos"].values())
    assert scores["original"]["dnsmos"]["ovrl"] > scores["noisy"]["dnsmos"]["ovrl"] + 0.5
    other = perceptual.PerceptualScorer(sr, language="it", dnsmos=False)
    other.add("original", "x.wav", 0, audio[:1600])
    row = other.compute()["original"]
    assert "dwer" not in row and "English" in row["note"]


# -- the listening page ------------------------------------------------------------------------------------------
class _Collect(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_report_is_one_self_contained_page(tmp_path: Path) -> None:
    sr = 16000
    t = np.arange(sr // 2) / sr
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    frontend = LogMelFrontend({"sample_rate": sr, "n_mels": 32, "n_fft": 512, "hop_length": 160})

    def mel_db(audio: np.ndarray) -> np.ndarray:
        return frontend.model_to_db(frontend(torch.from_numpy(audio)[None]))[0].numpy()

    examples = [ReportExample(f"clip {i}", {"original": tone, "tokenizer + Griffin-Lim": tone * 0.5,
                                            "opus 6 kbit/s": tone * 0.9}) for i in range(2)]
    results = {"rates": {"bitrate": 900.0}, "spectrogram": {"mae_db": 5.5},
               "audio": {"recon": {"pesq": 1.5, "stoi": 0.7, "mel_mae_db": 6.0},
                         "ceiling": {"pesq": 3.5, "stoi": 0.95, "mel_mae_db": 1.0}},
               "perceptual": {"original": {"dnsmos": {"sig": 3.5, "bak": 4.0, "ovrl": 3.1, "p808": 3.8}}}}
    anchors = {"rows": {"trivial pooled-mel 4f x 12b x 3bit": {"bitrate": 900.0, "mae_db": 6.1, "pesq": 1.2},
                        "griffin-lim ceiling": {"mae_db": 0.0}}, "notes": []}
    rows = quality_table(results, anchors)
    assert [r[0] for r in rows] == ["original", "tokenizer + Griffin-Lim", "Griffin-Lim ceiling (true mel)",
                                    "trivial pooled-mel 4f x 12b x 3bit"]  # the duplicate ceiling is left out
    assert "| tokenizer + Griffin-Lim | 900 | 5.500 |" in markdown_table(rows)
    path = write_report(tmp_path / "r" / "report.html", title="T <&>", table_columns=["rendering", "bit/s",
                        "MAE"], table_rows=[r[:3] for r in rows], examples=examples, sample_rate=sr,
                        mel_fn=mel_db, notes=["codec2 skipped"], meta="step 1")
    text = path.read_text()
    parser = _Collect()
    parser.feed(text)
    audio = [a for tag, a in parser.tags if tag == "audio"]
    images = [a for tag, a in parser.tags if tag == "img"]
    assert len(audio) == len(images) == 6  # 2 examples x 3 renderings, each with its spectrogram
    assert all(a["src"].startswith("data:audio/wav;base64,") for a in audio)
    assert all(a["src"].startswith("data:image/png;base64,") for a in images)
    assert sum(tag == "tr" for tag, _ in parser.tags) == 1 + len(rows) + 6
    assert "http://" not in text and "https://" not in text and "T &lt;&amp;&gt;" in text
    assert not (tmp_path / "r" / "report.html.tmp").exists()


# -- the benchmark's unseen voice -------------------------------------------------------------------------------
def _bench() -> object:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import benchmark_quality
    finally:
        sys.path.pop(0)
    return benchmark_quality


def test_holdout_source_trains_without_the_voice_and_scores_it_apart(tmp_path: Path) -> None:
    bench = _bench()
    for split in ("train", "val"):
        for source in ("a_voice", "asterisk_it_IT_m_Carlo", "b_voice"):
            (tmp_path / split / source).mkdir(parents=True)
    args = argparse.Namespace(train=str(tmp_path / "train"), val=str(tmp_path / "val"), output=str(tmp_path / "o"),
                              holdout_source="auto", english=str(LIBRIVOX), language=None)
    plan = bench.plan_holdout(args)
    assert plan["unseen"] == ["asterisk_it_IT_m_Carlo"] and plan["seen"] == ["a_voice", "b_voice"]
    assert sorted(p.name for p in Path(plan["train"]).iterdir()) == ["a_voice", "b_voice"]
    assert sorted(p.name for p in Path(plan["sets"]["seen"][0]).iterdir()) == ["a_voice", "b_voice"]
    assert plan["sets"]["unseen"][0] == str(tmp_path / "val" / "asterisk_it_IT_m_Carlo")
    assert plan["sets"]["english"] == (str(LIBRIVOX), "en")
    assert bench.dataset_spec_for(str(LIBRIVOX))["target"] == "transcoder.data.LibriSpeechDataset"
    args.holdout_source = "b_voice"  # a second plan in the same folder drops the stale link
    plan = bench.plan_holdout(args)
    assert sorted(p.name for p in Path(plan["train"]).iterdir()) == ["a_voice", "asterisk_it_IT_m_Carlo"]
    args.holdout_source = "nobody"
    with pytest.raises(ValueError, match="'nobody': not a source folder"):
        bench.plan_holdout(args)
    args.holdout_source, args.english = "none", None
    assert bench.plan_holdout(args)["unseen"] == [] and list(bench.plan_holdout(args)["sets"]) == ["seen"]
