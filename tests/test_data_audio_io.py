"""Audio decoding: formats, channel mixing, resampling, segment reads and unusable files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from transcoder.data import SF_UNKNOWN_FRAMES, AudioDecodeError, AudioFile, audio_info, load_audio, resample


def tone(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[spectrum.argmax()])


@pytest.mark.parametrize(
    ("ext", "fmt", "subtype", "sr", "tol"),
    [
        ("wav", "WAV", "PCM_16", 16000, 1e-4),
        ("wav", "WAV", "PCM_U8", 16000, 1e-2),  # 8-bit
        ("wav", "WAV", "PCM_24", 48000, 1e-4),  # 24-bit
        ("wav", "WAV", "FLOAT", 44100, 1e-6),
        ("flac", "FLAC", "PCM_16", 16000, 1e-4),
        ("flac", "FLAC", "PCM_24", 44100, 1e-4),
        ("ogg", "OGG", "VORBIS", 16000, None),
        ("opus", "OGG", "OPUS", 48000, None),
        ("mp3", "MP3", "MPEG_LAYER_III", 16000, None),
        ("mp3", "MP3", "MPEG_LAYER_III", 44100, None),
    ],
)
def test_formats_decode_to_mono_float32_at_target_rate(tmp_path, ext, fmt, subtype, sr, tol):
    x = tone(440.0, sr, 1.0)
    path = tmp_path / f"a.{ext}"
    sf.write(path, x, sr, format=fmt, subtype=subtype)
    native = load_audio(str(path))
    assert native.dtype == torch.float32 and native.ndim == 1
    assert audio_info(str(path)).sample_rate == sr
    if tol is not None:  # lossless formats round-trip up to quantisation
        assert native.shape[0] == len(x)
        assert np.abs(native.numpy() - x).max() < tol
    wave = load_audio(str(path), 16000)
    assert wave.dtype == torch.float32 and wave.ndim == 1
    assert abs(wave.shape[0] - 16000) <= 16000 * 0.02  # lossy codecs may pad a little
    assert dominant_frequency(wave.numpy(), 16000) == pytest.approx(440.0, abs=2.0)


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = tone(300, 16000, 0.5), tone(700, 16000, 0.5, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    wave = load_audio(str(path))
    np.testing.assert_allclose(wave.numpy(), (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("orig_sr", [44100, 48000, 22050, 8000])
def test_resampling_keeps_frequency_and_length(tmp_path, orig_sr):
    path = tmp_path / "tone.wav"
    sf.write(path, tone(1000.0, orig_sr, 2.0), orig_sr, subtype="FLOAT")
    wave = load_audio(str(path), 16000).numpy()
    assert wave.shape[0] == 2 * 16000
    assert dominant_frequency(wave, 16000) == pytest.approx(1000.0, abs=1.0)
    # Amplitude is preserved away from the edges (passband gain ~1).
    mid = wave[2000:-2000]
    assert np.sqrt(np.mean(mid**2)) == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)


def test_resampling_removes_content_above_new_nyquist():
    x = tone(9000.0, 44100, 1.0)  # above 8 kHz: would alias to 7 kHz
    y = resample(x, 44100, 16000)
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) < 1e-4


@pytest.mark.parametrize("orig_sr", [16000, 44100, 8000])
def test_segment_read_matches_whole_file(tmp_path, orig_sr):
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(orig_sr * 3)).astype(np.float32)
    path = tmp_path / "noise.flac"
    sf.write(path, x, orig_sr, subtype="PCM_24")
    whole = load_audio(str(path), 16000)
    for offset, n in [(0, 1000), (12345, 8000), (whole.shape[0] - 500, 8000)]:
        seg = load_audio(str(path), 16000, offset=offset, num_samples=n)
        expected = whole[offset: offset + n]
        assert seg.shape == expected.shape
        torch.testing.assert_close(seg, expected, atol=1e-5, rtol=0)


def test_segment_read_seeks_instead_of_decoding_everything(tmp_path, monkeypatch):
    sr = 16000
    path = tmp_path / "long.flac"
    sf.write(path, tone(200.0, sr, 20.0), sr)
    reads: list[int] = []
    original = sf.SoundFile.read

    def counting_read(self, frames=-1, *args, **kwargs):
        reads.append(frames)
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", counting_read)
    seg = load_audio(str(path), sr, offset=15 * sr, num_samples=sr)
    assert seg.shape[0] == sr
    assert reads == [sr]


def test_offset_outside_file_is_a_value_error(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(200, 16000, 0.1), 16000)
    with pytest.raises(ValueError, match="offset 5000 outside"):
        load_audio(str(path), 16000, offset=5000)


def _flac_with_unknown_length(path, tmp_path) -> None:
    """A FLAC file whose STREAMINFO says total_samples = 0 ("unknown"), as a streaming encoder leaves it."""
    sf.write(tmp_path / "src.flac", tone(200, 16000, 0.5), 16000)
    data = bytearray((tmp_path / "src.flac").read_bytes())
    # "fLaC" + 4-byte block header + STREAMINFO; total_samples is the low 36 bits of bytes 21..25.
    data[21] &= 0xF0
    data[22:26] = b"\0\0\0\0"
    path.write_bytes(bytes(data))


def test_unknown_length_header_is_rejected_without_seeking(tmp_path):
    path = tmp_path / "streamed.flac"
    _flac_with_unknown_length(path, tmp_path)
    assert sf.info(str(path)).frames == SF_UNKNOWN_FRAMES  # the libsndfile quirk this guards against
    with pytest.raises(AudioDecodeError, match="unknown length") as info:
        AudioFile(str(path))
    assert info.value.path == str(path)


def test_unusable_files_raise_decode_errors_naming_the_file(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    garbage = tmp_path / "garbage.flac"
    garbage.write_bytes(b"this is not audio" * 100)
    zero_bytes = tmp_path / "zero.mp3"
    zero_bytes.write_bytes(b"")
    nan = tmp_path / "nan.wav"
    x = tone(200, 16000, 0.5)
    x[100] = np.nan
    sf.write(nan, x, 16000, subtype="FLOAT")
    full = tmp_path / "full.flac"
    sf.write(full, tone(200, 16000, 3.0), 16000)
    truncated = tmp_path / "truncated.flac"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    cases = {empty: "no audio frames", garbage: "cannot open", zero_bytes: "cannot open",
             nan: "NaN or Inf", truncated: "truncated|decoding failed", tmp_path / "missing.wav": "cannot open"}
    for path, reason in cases.items():
        with pytest.raises(AudioDecodeError, match=reason) as info:
            load_audio(str(path), 16000)
        assert str(path) in str(info.value)
