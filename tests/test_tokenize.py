"""The checkpoint API and the tokenize / evaluate scripts, on a tiny model checkpoint built here."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from transcoder.api import AudioTokenizer, codes_dtype, load_tokenizer
from transcoder.audio.mel import MelConfig
from transcoder.codes import CodesIndex
from transcoder.data.corpus import utterance_ids
from transcoder.models.audiobsq import AudioBSQModel

REPO = Path(__file__).resolve().parents[1]
SR = 16000
HOP = 160
WINDOW_FRAMES = 64
WINDOW_SAMPLES = WINDOW_FRAMES * HOP  # 0.64 s
MODEL_PARAMS: dict[str, Any] = {
    "embed_dim": 12,
    "audioconfig": {"input_size": 32, "input_length": WINDOW_FRAMES, "patch_size": 16, "width": 32,
                    "layers": 1, "heads": 2, "conv_kernel_size": 3},
}
MEL = MelConfig(sample_rate=SR, n_mels=32, n_fft=512, hop_length=HOP, target_length=WINDOW_FRAMES)


def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tokenize_script = _load_script("tokenize_audio")
evaluate_script = _load_script("evaluate_audio_tokenizer")


def _checkpoint(path: Path, seed: int = 0, ema_seed: int | None = None, data_root: str | None = None) -> Path:
    torch.manual_seed(seed)
    model = AudioBSQModel(**MODEL_PARAMS)
    ema = None
    if ema_seed is not None:
        torch.manual_seed(ema_seed)
        ema = AudioBSQModel(**MODEL_PARAMS).state_dict()
    data = {**MEL.to_dict(), "val": None}
    if data_root is not None:
        data["val"] = {"target": "transcoder.data.AudioFolderDataset", "params": {"root": data_root}}
    config = {"model": {"target": "transcoder.models.audiobsq.AudioBSQModel", "params": MODEL_PARAMS},
              "data": data}
    torch.save({"model": model.state_dict(), "ema": ema, "config": config, "mel": MEL.to_dict(), "step": 7,
                "optimizer": {}}, path)
    return path


def _speechlike(seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 10))
    envelope = 0.3 + 0.7 * np.abs(np.sin(2 * np.pi * 2.0 * t))
    return (0.3 * voiced * envelope + 0.002 * rng.standard_normal(t.shape)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# API
# --------------------------------------------------------------------------------------------------


def test_properties(tok: AudioTokenizer) -> None:
    assert tok.sample_rate == SR
    assert tok.bits_per_token == 12
    assert tok.patch_size == (16, 16)
    assert tok.time_rows_per_window == 4 and tok.n_freq_patches == 2 and tok.tokens_per_window == 8
    window_seconds = tok.window_samples / tok.sample_rate
    assert tok.tokens_per_window / window_seconds == pytest.approx(tok.tokens_per_second)  # the numbers add up
    # 100 frames/s / 16 frames per token row x 2 frequency patches
    assert tok.tokens_per_second == pytest.approx(12.5)
    assert tok.bitrate == pytest.approx(150.0)
    assert tok.weights == "model"
    assert tok.checkpoint_step == 7
    assert not tok.model.training
    assert codes_dtype(12) == np.uint16 and codes_dtype(18) == np.uint32 and codes_dtype(40) == np.int64


def test_long_signal_roundtrip_restores_length(tok: AudioTokenizer) -> None:
    samples = 3 * WINDOW_SAMPLES + 1234  # longer than a window, not a multiple of the hop
    wave = _speechlike(samples / SR)
    codes = tok.encode_wave(wave, SR)
    assert codes.dtype == torch.int64
    assert codes.shape == (4 * tok.time_rows_per_window, tok.n_freq_patches)
    assert tok.last_num_samples == samples
    assert int(codes.min()) >= 0 and int(codes.max()) < 2**12
    out = tok.decode_codes(codes, num_samples=samples)
    assert out.shape == (samples,)
    assert torch.isfinite(out).all()
    mel = tok.decode_to_mel(codes)
    assert mel.shape == (4 * WINDOW_FRAMES, 32)
    assert float(mel.min()) >= -1.0 and float(mel.max()) <= 1.0
    power = tok.decode_to_mel(codes, space="power")
    assert bool((power > 0).all())
    assert tok.decode_codes(codes).shape == (4 * WINDOW_SAMPLES,)


def test_windows_match_the_model(tok: AudioTokenizer) -> None:
    """Window split + concatenation agrees with running the model on the padded mel's windows."""
    samples = 2 * WINDOW_SAMPLES + 500
    wave = torch.from_numpy(_speechlike(samples / SR, seed=1))
    codes = tok.encode_wave(wave)
    padded = torch.zeros(3 * WINDOW_SAMPLES)
    padded[:samples] = wave
    with torch.no_grad():
        mel = tok.frontend(padded).reshape(3, WINDOW_FRAMES, 32)
        recon, _, info = tok.model(mel)
    assert torch.equal(codes, info["indices"].reshape(-1, 2))
    torch.testing.assert_close(tok.decode_to_mel(codes), recon.reshape(-1, 32))


def test_batched_files_equal_single_files(tok: AudioTokenizer) -> None:
    waves = [_speechlike(s, seed=i) for i, s in enumerate((0.3, 1.7, 2.9))]
    batched = tok.encode_waves(waves)
    for wave, enc in zip(waves, batched, strict=True):
        assert torch.equal(enc.indices, tok.encode_wave(wave))
        assert enc.num_samples == len(wave)


def test_other_sample_rate_is_resampled(tok: AudioTokenizer) -> None:
    wave = _speechlike(1.5, sr=8000)
    tok.encode_wave(wave, 8000)
    assert tok.last_num_samples == 1.5 * SR
    stereo = np.stack([wave, wave])
    assert torch.equal(tok.encode_wave(stereo, 8000), tok.encode_wave(wave, 8000))


def test_bad_inputs_raise_clear_errors(tok: AudioTokenizer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\(n_time_tokens, 2\)"):
        tok.decode_codes(torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"2\^12"):
        tok.decode_codes(torch.full((4, 2), 2**12))
    with pytest.raises(TypeError, match="integers"):
        tok.decode_codes(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="NaN"):
        tok.encode_wave(np.full(1000, np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="empty"):
        tok.encode_wave(np.zeros(0, dtype=np.float32))
    bad = tmp_path / "bad.pt"
    torch.save({"weights": {}}, bad)
    with pytest.raises(RuntimeError, match="bad.pt"):
        load_tokenizer(bad, device="cpu")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_tokenizer(tmp_path / "missing.pt", device="cpu")


def test_ema_weights_are_chosen(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path / "ema.pt", seed=0, ema_seed=1)
    with_ema = load_tokenizer(path, device="cpu")
    raw = load_tokenizer(path, device="cpu", use_ema=False)
    assert with_ema.weights == "ema" and raw.weights == "model"
    state = torch.load(path, weights_only=True)
    key = "quant_embed.weight"
    torch.testing.assert_close(with_ema.model.state_dict()[key], state["ema"][key])
    torch.testing.assert_close(raw.model.state_dict()[key], state["model"][key])


# --------------------------------------------------------------------------------------------------
# scripts/tokenize_audio.py
# --------------------------------------------------------------------------------------------------


@pytest.fixture()
def audio_tree(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """Folder with nested files at two sample rates, one long file and one corrupt file."""
    root = tmp_path / "audio"
    (root / "spk1" / "ch2").mkdir(parents=True)
    lengths = {}
    for rel, seconds, sr, seed in (("a.wav", 0.5, SR, 0), ("spk1/b.flac", 2.3, SR, 1),
                                   ("spk1/ch2/long.wav", 4.01, 22050, 2)):
        wave = _speechlike(seconds, sr=sr, seed=seed)
        sf.write(root / rel, wave, sr)
        lengths[rel] = len(wave) if sr == SR else len(wave) * SR // sr
    (root / "spk1" / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    return root, lengths


def test_encode_decode_folder(ckpt: Path, audio_tree: tuple[Path, dict[str, int]], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    root, lengths = audio_tree
    codes_dir = tmp_path / "codes"
    with pytest.warns(tokenize_script.FileSkipWarning, match=r"corrupt\.wav"):
        rc = tokenize_script.main(["encode", "-c", str(ckpt), str(root), str(codes_dir), "--num-workers", "0",
                                   "--batch-size", "3", "--quiet"])
    assert rc == 0
    assert "3 files, 1 failed" in capsys.readouterr().out
    header = json.loads((codes_dir / "codes.json").read_text())
    assert header["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert header["sample_rate"] == SR and header["bits"] == 12 and header["patch_size"] == [16, 16]
    assert header["grid_per_window"] == [4, 2] and header["layout"] == "files"  # a folder's default layout
    index = CodesIndex.open(codes_dir)
    assert sorted(u.id for u in index) == ["a", "spk1/b", "spk1/ch2/long"]
    assert [f["source"] for f in index.failed] == ["spk1/corrupt.wav"]
    long_entry = index["spk1/ch2/long"]
    assert long_entry.extra["source_sample_rate"] == 22050
    assert abs(long_entry.num_samples - lengths["spk1/ch2/long.wav"]) <= 1
    assert long_entry.valid_rows == math.ceil(math.ceil(long_entry.num_samples / HOP) / 16)
    codes = np.load(codes_dir / "spk1/ch2/long.npy")
    assert codes.dtype == np.uint16
    windows = math.ceil(long_entry.num_samples / WINDOW_SAMPLES)
    assert codes.shape == (long_entry.rows, 2) == (windows * 4, 2)

    wav_dir = tmp_path / "wav"
    assert tokenize_script.main(["decode", "-c", str(ckpt), str(codes_dir), str(wav_dir), "--quiet"]) == 0
    for utt in index:
        info = sf.info(wav_dir / f"{utt.id}.wav")
        assert info.samplerate == SR
        assert info.frames == utt.num_samples

    mel_dir = tmp_path / "mel"
    assert tokenize_script.main(["decode", "-c", str(ckpt), str(codes_dir / "spk1" / "b.npy"), str(mel_dir),
                                 "--mel", "--quiet"]) == 0
    mel = np.load(mel_dir / "spk1" / "b.mel.npy")
    assert mel.shape == (math.ceil(index["spk1/b"].num_samples / HOP), 32)
    assert mel.min() >= MEL.db_min - 1e-3 and mel.max() <= MEL.db_max + 1e-3


def test_decode_refuses_codes_of_another_checkpoint(ckpt: Path, audio_tree: tuple[Path, dict[str, int]],
                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = audio_tree
    codes_dir = tmp_path / "codes"
    with pytest.warns(tokenize_script.FileSkipWarning):
        tokenize_script.main(["encode", "-c", str(ckpt), str(root / "spk1"), str(codes_dir), "--num-workers", "0",
                              "--quiet"])
    other = _checkpoint(tmp_path / "other.pt", seed=3)
    assert tokenize_script.main(["decode", "-c", str(other), str(codes_dir), str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and str(ckpt.resolve()) in err and str(other) in err  # both checkpoints named
    with pytest.warns(UserWarning, match="sha256"):
        assert tokenize_script.main(["decode", "-c", str(other), str(codes_dir), str(tmp_path / "o"), "--quiet",
                                     "--force"]) == 0


def test_single_file_and_all_failed_exit_code(ckpt: Path, audio_tree: tuple[Path, dict[str, int]],
                                              tmp_path: Path) -> None:
    root, _ = audio_tree
    out = tmp_path / "single"
    assert tokenize_script.main(["encode", "-c", str(ckpt), str(root / "a.wav"), str(out), "--num-workers", "0",
                                 "--quiet"]) == 0
    assert CodesIndex.open(out)["a"].num_samples == SR // 2
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.wav").write_bytes(b"not audio")
    (broken / "y.flac").write_bytes(b"")
    # A real process: the exit status and the warning text as a user sees them.
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "tokenize_audio.py"), "encode", "-c", str(ckpt),
                             str(broken), str(tmp_path / "none"), "--num-workers", "1", "--quiet"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 1, result.stderr
    assert "0 files, 2 failed" in result.stdout
    assert "warning: skipping" in result.stderr and "x.wav" in result.stderr and "y.flac" in result.stderr


def test_utterance_ids_avoid_collisions() -> None:
    assert utterance_ids(["a.wav", "a.flac", "d/b.mp3"]) == ["a.wav", "a.flac", "d/b"]


# --------------------------------------------------------------------------------------------------
# scripts/evaluate_audio_tokenizer.py
# --------------------------------------------------------------------------------------------------


def test_evaluate_script(audio_tree: tuple[Path, dict[str, int]], tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = audio_tree
    path = _checkpoint(tmp_path / "eval.pt", data_root=str(root))
    out = tmp_path / "eval"
    rc = evaluate_script.main([str(path), "--output", str(out), "--batch-size", "4", "--max-batches", "2",
                               "--num-audio", "2", "--num-workers", "0", "--metric-workers", "1", "--quiet",
                               "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr()
    table = printed.out
    # The CLI prints each warning as one line (transcoder.utils.messages), naming the skipped file.
    assert any(line.startswith("warning: ") and "corrupt" in line for line in printed.err.splitlines()), printed.err
    assert "GL(input) ceiling" in table and "PESQ-WB" in table
    assert f"examples (spectrogram PNGs, input / reconstruction WAVs): {out / 'examples'}" in table
    results = json.loads((out / "metrics.json").read_text())
    assert results["windows"] == 8 and results["processes"] == 1
    assert results["dataset"]["target"] == "transcoder.data.AudioFolderDataset"
    assert results["spectrogram"]["mae_db"] > 0
    assert results["spectrogram"]["mse_db"] >= results["spectrogram"]["mae_db"] ** 2 - 1e-6
    assert results["codebook"]["num_tokens"] > 0 and len(results["codebook"]["bit_balance"]) == 12
    assert results["rates"]["bitrate"] == pytest.approx(150.0)
    for side in ("recon", "ceiling"):
        assert set(results["audio"][side]) >= {"pesq", "stoi", "si_snr"}
    # A random tokenizer is far below the vocoder ceiling.
    assert results["audio"]["ceiling"]["stoi"] > results["audio"]["recon"]["stoi"]
    assert len(list((out / "examples").glob("*.png"))) == 2
    assert len(list((out / "examples").glob("*.wav"))) == 6
    # --audio-dir overrides the checkpoint's data.val; --no-audio-metrics skips Griffin-Lim scores.
    rc = evaluate_script.main([str(path), "--output", str(tmp_path / "eval2"), "--audio-dir",
                               str(root / "spk1" / "ch2"), "--no-audio-metrics", "--num-audio", "0",
                               "--num-workers", "0", "--quiet"])
    assert rc == 0
    results = json.loads((tmp_path / "eval2" / "metrics.json").read_text())
    assert "audio" not in results and results["files"] == 1
    assert results["windows"] == math.ceil(4.01 * SR / WINDOW_SAMPLES)


def _eval_json(ckpt_path: Path, root: Path, out: Path, *extra: str) -> dict[str, Any]:
    rc = evaluate_script.main([str(ckpt_path), "--output", str(out), "--audio-dir", str(root), "--num-audio", "0",
                               "--num-workers", "0", "--metric-workers", "1", "--gl-iters", "4", "--quiet",
                               "--device", "cpu", *extra])
    assert rc == 0
    return json.loads((out / "metrics.json").read_text())


def test_evaluate_window_scores_do_not_depend_on_batch_size(ckpt: Path, tmp_path: Path) -> None:
    root = tmp_path / "audio"
    root.mkdir()
    sf.write(root / "a.wav", _speechlike(3 * WINDOW_SAMPLES / SR, seed=3), SR)  # 3 full windows
    runs = {bs: _eval_json(ckpt, root, tmp_path / f"bs{bs}", "--batch-size", str(bs)) for bs in (1, 3)}
    clips = {bs: run["per_clip"] for bs, run in runs.items()}
    assert [c["offset"] for c in clips[1]] == [c["offset"] for c in clips[3]] == [0, WINDOW_SAMPLES,
                                                                                  2 * WINDOW_SAMPLES]
    for one, three in zip(clips[1], clips[3], strict=True):
        for key in ("pesq", "stoi", "ceiling_pesq", "ceiling_stoi"):
            assert math.isfinite(one[key]) and one[key] == pytest.approx(three[key], abs=1e-4), key
    assert [c["index"] for c in clips[1]] == [c["index"] for c in clips[3]] == [0, 1, 2]
    # Each window has its own phase seed (seed + index): the windows are not rendered alike.
    assert len({round(c["ceiling_stoi"], 6) for c in clips[1]}) == 3
    # SI-SNR of a random-phase rendering stays in the JSON but is flagged in the table.
    assert "si_snr" in runs[1]["audio"]["recon"]
    assert "SI-SNR (dB, not meaningful)" in evaluate_script.format_table(runs[1])


def test_evaluate_leaves_windows_that_failed_to_decode_out_of_every_metric(ckpt: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good", tmp_path / "mixed"
    good.mkdir()
    bad.mkdir()
    clean = _speechlike(2 * WINDOW_SAMPLES / SR, seed=4)
    for folder in (good, bad):
        sf.write(folder / "a.wav", clean, SR, subtype="FLOAT")
    broken = _speechlike(3 * WINDOW_SAMPLES / SR, seed=5)
    broken[WINDOW_SAMPLES + 7] = np.nan  # window 1 of b.wav fails; windows 0 and 2 decode
    sf.write(bad / "b.wav", broken, SR, subtype="FLOAT")
    sf.write(good / "b.wav", np.delete(broken, slice(WINDOW_SAMPLES, 2 * WINDOW_SAMPLES)), SR, subtype="FLOAT")
    mixed = _eval_json(ckpt, bad, tmp_path / "out_mixed", "--batch-size", "2", "--no-audio-metrics")
    err = capsys.readouterr().err  # the CLI prints each warning as one line
    assert any(line.startswith("warning: ") and "NaN or Inf" in line for line in err.splitlines()), err
    reference = _eval_json(ckpt, good, tmp_path / "out_good", "--batch-size", "2", "--no-audio-metrics")
    assert mixed["windows"] == reference["windows"] == 4 and mixed["files"] == 2
    assert mixed["num_skipped_windows"] == 1
    assert mixed["skipped_windows"] == [{"index": 3, "path": str(bad / "b.wav"), "offset": WINDOW_SAMPLES}]
    assert mixed["skipped_files"] == [str(bad / "b.wav")]
    assert [(Path(c["path"]).name, c["offset"]) for c in mixed["per_clip"]] == [
        ("a.wav", 0), ("a.wav", WINDOW_SAMPLES), ("b.wav", 0), ("b.wav", 2 * WINDOW_SAMPLES)]
    assert mixed["audio_seconds"] == pytest.approx(4 * WINDOW_SAMPLES / SR)
    # The same windows without the bad one score the same: the zero window counted nowhere.
    for key in ("mse_db", "mae_db", "l1_model"):
        assert mixed["spectrogram"][key] == pytest.approx(reference["spectrogram"][key], rel=1e-5), key
    assert mixed["codebook"]["num_tokens"] == reference["codebook"]["num_tokens"]
    assert mixed["codebook"]["distinct_codes"] == reference["codebook"]["distinct_codes"]
    table = evaluate_script.format_table(mixed)
    assert "1 windows that failed to decode" in table
