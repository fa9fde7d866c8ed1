"""Long files in constant memory: streamed encode equals in-memory encode; partial windows; safe loading."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_tokenize import MEL, MODEL_PARAMS, REPO, SR, WINDOW_SAMPLES, _checkpoint, _speechlike

from transcoder.api import AudioTokenizer, load_tokenizer
from transcoder.audio.windows import WindowSegmenter, segments_of
from transcoder.models.audiobsq import AudioBSQModel
from transcoder.utils.checkpoint import CheckpointError


def _cheap_signal(samples: int, sr: int = SR) -> np.ndarray:
    """A chirp-modulated tone with noise: cheap to make, different in every window."""
    t = np.arange(samples) / sr
    rng = np.random.default_rng(0)
    wave = 0.3 * np.sin(2 * np.pi * (200 + 50 * np.sin(2 * np.pi * 0.13 * t)) * t) * (0.5 + 0.5 * np.sin(t))
    return (wave + 0.01 * rng.standard_normal(samples)).astype(np.float32)


def test_ten_minute_file_streams_to_the_in_memory_codes(tok: AudioTokenizer, tmp_path: Path) -> None:
    samples = 10 * 60 * SR + 777  # a partial last window
    path = tmp_path / "long.wav"
    sf.write(path, _cheap_signal(samples), SR, subtype="FLOAT")
    streamed = tok.encode_file(path)
    assert tok.last_num_samples == samples
    in_memory = tok.encode_wave(tok.load(path))
    assert streamed.shape == in_memory.shape == (-(-samples // WINDOW_SAMPLES) * 4, 2)
    assert torch.equal(streamed, in_memory)


@pytest.mark.parametrize("rate, channels", [(22050, 2), (SR, 2)])
def test_streamed_resampled_and_stereo_files_equal_in_memory(tok: AudioTokenizer, tmp_path: Path, rate: int,
                                                             channels: int) -> None:
    mono = _cheap_signal(int(37.3 * rate), rate)
    path = tmp_path / "x.flac"
    sf.write(path, np.stack([mono, 0.5 * mono[::-1]], axis=1)[:, :channels], rate)
    encoded = tok.encode_file_streamed(path, block_frames=10_000)  # blocks not aligned to windows
    wave = tok.load(path)
    assert encoded.num_samples == wave.numel() == len(mono) * SR // rate
    assert torch.equal(encoded.indices, tok.encode_wave(wave))


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_segments_equal_the_whole_signal_stft(pad_mode: str) -> None:
    from transcoder.audio.mel import LogMelFrontend, MelConfig

    frontend = LogMelFrontend(MelConfig(**{**MEL.to_dict(), "pad_mode": pad_mode}))
    wave = _cheap_signal(3 * WINDOW_SAMPLES + 1000)
    padded = torch.zeros(4 * WINDOW_SAMPLES)
    padded[: wave.size] = torch.from_numpy(wave)
    whole = frontend(padded).reshape(4, -1, MEL.n_mels)
    segmenter = WindowSegmenter(WINDOW_SAMPLES, MEL.hop_length, MEL.n_fft, pad_mode)
    blocks = np.array_split(wave, [1, 5000, 5001, 20000])
    windows = frontend.forward_segments(torch.from_numpy(np.stack(list(segments_of(blocks, segmenter)))))
    torch.testing.assert_close(windows, whole, rtol=0, atol=1e-6)


_PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys, tracemalloc
    import torch
    from transcoder.api import load_tokenizer
    torch.set_num_threads(1)
    tok = load_tokenizer(sys.argv[1], device="cpu", batch_size=4)
    tok.decode_to_file(tok.encode_file(sys.argv[2])[:4 * 20], sys.argv[4])  # warm-up: short file
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()  # numpy and Python allocations
    codes = tok.encode_file(sys.argv[3])
    tok.decode_to_file(codes[:4 * 20], sys.argv[4])
    traced = tracemalloc.get_traced_memory()[1]
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, traced / 2**20)
""")


def test_peak_memory_does_not_grow_with_length(ckpt: Path, tmp_path: Path) -> None:
    """Peak memory of encoding a 2.5- and a 10-minute file after a warm-up on a short one: the process's
    peak RSS must not rise and numpy / Python allocations stay small. The in-memory path allocates
    about 110 MiB of numpy arrays for the 10-minute file (38 MiB of samples and its copies) plus its
    whole-signal STFT in torch; streaming holds about one window at a time."""
    short = tmp_path / "short.wav"
    sf.write(short, _cheap_signal(20 * SR), SR, subtype="PCM_16")
    peaks = {}
    for minutes in (2.5, 10):
        path = tmp_path / f"{minutes}.wav"
        sf.write(path, _cheap_signal(int(minutes * 60 * SR)), SR, subtype="PCM_16")
        result = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(ckpt), str(short), str(path),
                                 str(tmp_path / "o.wav")], capture_output=True, text=True, timeout=300, cwd=REPO,
                                env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, result.stderr
        peaks[minutes] = [float(v) for v in result.stdout.split()[-2:]]  # (RSS rise, traced peak) in MiB
    for rss_rise, traced in peaks.values():
        assert rss_rise < 16 and traced < 8, peaks
    assert peaks[10][1] < peaks[2.5][1] + 1, peaks


def test_partial_last_window_is_decoded_at_its_encoded_positions(tok: AudioTokenizer) -> None:
    codes = tok.encode_wave(_speechlike(2 * WINDOW_SAMPLES / SR, seed=3))
    silence = tok.silence_codes()
    assert torch.equal(silence, tok.encode_wave(np.zeros(WINDOW_SAMPLES, dtype=np.float32)))
    partial = codes[:6]  # one full window + 2 of 4 rows
    mel = tok.decode_to_mel(partial)
    assert mel.shape == (6 * 16, MEL.n_mels)
    completed = torch.cat([partial, silence[2:]])
    torch.testing.assert_close(mel, tok.decode_to_mel(completed)[: 6 * 16], rtol=0, atol=0)
    # A short chunk decoded on its own (the old behaviour) sees other position embeddings.
    with torch.no_grad():
        alone = tok.model.decode_indices(partial[4:].unsqueeze(0))[0]
    assert not torch.allclose(mel[64:], alone, atol=1e-3)
    assert tok.decode_codes(partial).shape == (6 * 16 * MEL.hop_length,)


# --------------------------------------------------------------------------------------------------
# safe loading
# --------------------------------------------------------------------------------------------------


class Payload:
    """Anything but tensors and plain data: must never be unpickled from a checkpoint."""

    def __reduce__(self):  # noqa: ANN204
        return (print, ("this ran while loading",))


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path / "ok.pt")
    state = torch.load(path, weights_only=True)
    state["extra"] = Payload()
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_tokenizer(tmp_path / "evil.pt", device="cpu")


def test_format_2_checkpoint_loads(tmp_path: Path) -> None:
    old = torch.load(_checkpoint(tmp_path / "f1.pt", seed=0, ema_seed=1), weights_only=True)
    path = tmp_path / "f2.pt"
    torch.save({"format": 2, "task": "tokenizer", "models": {"model": old["model"]}, "ema": {"model": old["ema"]},
                "optim": {}, "state": {}, "step": 9, "config": old["config"], "mel": old["mel"]}, path)
    ema, raw = load_tokenizer(path, device="cpu"), load_tokenizer(path, device="cpu", use_ema=False)
    assert (ema.weights, raw.weights, ema.checkpoint_step) == ("ema", "model", 9)
    key = "quant_embed.weight"
    assert torch.equal(ema.model.state_dict()[key], old["ema"][key])
    assert torch.equal(raw.model.state_dict()[key], old["model"][key])
    # Weights that do not fit give one line naming the file and the parameter.
    torch.manual_seed(0)
    wider = AudioBSQModel(**{**MODEL_PARAMS, "embed_dim": 10}).state_dict()
    torch.save({"format": 2, "models": {"model": wider}, "config": old["config"], "mel": old["mel"]}, path)
    with pytest.raises(CheckpointError, match=r"f2\.pt.*quant_embed.*shape") as info:
        load_tokenizer(path, device="cpu")
    assert "\n" not in str(info.value)
