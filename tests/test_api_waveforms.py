"""transcoder.api.waveform_to_mono: every common array layout and sample type gives the same mono signal."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from transcoder.api import waveform_to_mono


@pytest.fixture()
def stereo() -> np.ndarray:
    t = np.arange(4800) / 48000
    return (np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)], 1) * 0.3).astype(np.float32)


def test_soundfile_and_torchaudio_layouts_agree(stereo: np.ndarray) -> None:
    expected = torch.from_numpy(stereo.mean(1))
    for layout in (stereo, stereo.T, torch.from_numpy(stereo.T)):  # (S, C), (C, S), tensor (C, S)
        torch.testing.assert_close(waveform_to_mono(layout), expected)
    mono_2d = stereo[:, :1]  # soundfile.read(always_2d=True) of a mono file
    assert waveform_to_mono(mono_2d).shape == (4800,)


def test_integer_pcm_is_scaled(tmp_path, stereo: np.ndarray) -> None:
    sf.write(tmp_path / "a.wav", stereo, 48000, subtype="PCM_24")
    as_float = waveform_to_mono(sf.read(tmp_path / "a.wav", dtype="float32")[0])
    for dtype in ("int16", "int32"):
        torch.testing.assert_close(waveform_to_mono(sf.read(tmp_path / "a.wav", dtype=dtype)[0]), as_float,
                                   atol=1e-4, rtol=0)
    offset_binary = np.round(stereo[:, 0] * 127 + 128).astype(np.uint8)
    torch.testing.assert_close(waveform_to_mono(offset_binary), torch.from_numpy(stereo[:, 0]), atol=1e-2, rtol=0)


def test_ambiguous_layout_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot tell channels from samples"):
        waveform_to_mono(np.zeros((100, 120), dtype=np.float32))
