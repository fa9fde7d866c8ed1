"""Raw samples: the streaming encoder takes exactly what the offline API takes and gives the same codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_streaming import MEL, ROW, _model, _wave

from transcoder.api import waveform_to_mono
from transcoder.audio.mel import LogMelFrontend
from transcoder.streaming import StreamEncoder, encode_offline


@pytest.mark.parametrize("dtype, scale", [(np.int16, 2.0 ** 15), (np.int32, 2.0 ** 31)])
def test_integer_pcm_pushed_in_chunks_gives_the_offline_codes(dtype: type, scale: float) -> None:
    frontend, model = LogMelFrontend(MEL), _model(1)
    pcm = (_wave(6 * ROW + 100).double().numpy() * (scale - 1)).astype(dtype)
    offline = encode_offline(model, frontend, torch.from_numpy(pcm.astype(np.float64) / scale).float())
    assert torch.equal(waveform_to_mono(pcm), torch.from_numpy((pcm / scale).astype(np.float32)))
    encoder = StreamEncoder(model, frontend)
    streamed = torch.cat([encoder.push(pcm[a:a + 500]) for a in range(0, pcm.size, 500)] + [encoder.finish()])
    assert torch.equal(streamed, offline)
    encoder = StreamEncoder(model, frontend)  # a torch integer tensor is read the same way
    streamed = torch.cat([encoder.push(torch.from_numpy(pcm[a:a + 700])) for a in range(0, pcm.size, 700)]
                         + [encoder.finish()])
    assert torch.equal(streamed, offline)


@pytest.mark.parametrize("bad", [np.zeros(64, np.complex64), np.zeros(64, bool), np.zeros(64, np.uint16),
                                 np.array(["0.1"] * 64)])
def test_unsupported_sample_dtypes_are_refused_offline_and_streamed(bad: np.ndarray) -> None:
    with pytest.raises(TypeError, match=f"got dtype {bad.dtype}"):
        waveform_to_mono(bad)
    encoder = StreamEncoder(_model(0), LogMelFrontend(MEL))
    with pytest.raises(TypeError, match=f"got dtype {bad.dtype}"):
        encoder.push(bad)


def test_streamed_non_finite_and_multichannel_chunks_are_refused() -> None:
    encoder = StreamEncoder(_model(0), LogMelFrontend(MEL))
    with pytest.raises(ValueError, match="NaN or Inf"):
        encoder.push(np.array([0.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="mix channels down"):
        encoder.push(np.zeros((2, 100), np.float32))
    assert encoder.push(torch.zeros(10, dtype=torch.bfloat16)).shape == (0, 2)
