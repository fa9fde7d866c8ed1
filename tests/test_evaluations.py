"""Metrics and the Griffin-Lim vocoder against hand-computed values and reference solvers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchaudio
from scipy.optimize import nnls as scipy_nnls

from transcoder.audio.griffin_lim import GriffinLimVocoder, nnls_mel_inverse
from transcoder.evaluation.metrics import (
    CodebookUsage,
    bitrate,
    code_entropy,
    mel_l1,
    pesq_wb,
    si_snr,
    spectrogram_mae_db,
    spectrogram_mse_db,
    stoi,
    tokens_per_second,
)

# --------------------------------------------------------------------------------------------------
# spectrogram errors
# --------------------------------------------------------------------------------------------------


def test_mse_mae_hand_computed() -> None:
    target = torch.zeros(1, 2, 2)
    pred = torch.tensor([[[0.0, 2.0], [4.0, -2.0]]])
    assert spectrogram_mse_db(pred, target).item() == pytest.approx((0 + 4 + 16 + 4) / 4)
    assert spectrogram_mae_db(pred, target).item() == pytest.approx((0 + 2 + 4 + 2) / 4)
    assert mel_l1(pred / 80, target).item() == pytest.approx(2 / 80)


def test_per_example_reduction() -> None:
    target = torch.zeros(2, 3, 4)
    pred = torch.stack([torch.full((3, 4), 1.0), torch.full((3, 4), -3.0)])
    np.testing.assert_allclose(spectrogram_mse_db(pred, target, reduction="none").numpy(), [1.0, 9.0])
    np.testing.assert_allclose(spectrogram_mae_db(pred, target, reduction="none").numpy(), [1.0, 3.0])
    assert spectrogram_mae_db(pred, target, reduction="sum").item() == pytest.approx(12 * 1 + 12 * 3)


def test_shape_mismatch_and_bad_reduction_raise() -> None:
    with pytest.raises(ValueError, match="shape"):
        spectrogram_mse_db(torch.zeros(1, 4, 2), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="reduction"):
        mel_l1(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), reduction="median")


# --------------------------------------------------------------------------------------------------
# codebook usage
# --------------------------------------------------------------------------------------------------


def test_entropy_of_known_histogram() -> None:
    usage = CodebookUsage(bits=2)
    usage.update(torch.tensor([[0, 0], [1, 2]]))
    stats = usage.compute()
    # p = (1/2, 1/4, 1/4): H = 1.5 bits, perplexity 2^1.5.
    assert stats.entropy_bits == pytest.approx(1.5)
    assert stats.perplexity == pytest.approx(2**1.5)
    assert stats.distinct_codes == 3
    assert stats.num_tokens == 4
    assert stats.codebook_size == 4
    assert stats.usage == pytest.approx(3 / 4)
    # bit 0 is set in index 1 only; bit 1 in index 2 only.
    assert stats.bit_balance == pytest.approx([0.25, 0.25])
    assert code_entropy(torch.tensor([5, 5, 0, 5, 5])) == pytest.approx(2.0)
    assert code_entropy(torch.tensor([0, 0])) == 0.0


def test_uniform_codes_have_full_entropy_and_balanced_bits() -> None:
    usage = CodebookUsage(bits=3)
    usage.update(torch.arange(8).repeat(5))
    stats = usage.compute()
    assert stats.entropy_bits == pytest.approx(3.0)
    assert stats.bit_balance == pytest.approx([0.5, 0.5, 0.5])
    assert stats.bit_entropy_bits == pytest.approx(3.0)
    assert stats.usage == pytest.approx(1.0)


def test_streaming_equals_one_batch_and_merge() -> None:
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 2**18, (6, 64, 8), generator=gen)
    data[:, :10] = 12345  # a repeated code
    whole = CodebookUsage(18)
    whole.update(data)
    streamed = CodebookUsage(18)
    for batch in data.split(2):
        streamed.update(batch)
    a, b = whole.compute(), streamed.compute()
    assert a == b
    first, second = CodebookUsage(18), CodebookUsage(18)
    first.update(data[:3])
    second.update(data[3:])
    first.merge(second)
    assert first.compute() == a
    ref_counts = np.unique(data.numpy(), return_counts=True)[1]
    p = ref_counts / ref_counts.sum()
    assert a.entropy_bits == pytest.approx(float(-(p * np.log2(p)).sum()))
    assert a.distinct_codes == len(ref_counts)


def test_wide_codes_without_table() -> None:
    usage = CodebookUsage(bits=60)
    big = torch.tensor([2**59 + 3, 2**59 + 3, 7, 2**60 - 1])
    usage.update(big)
    stats = usage.compute()
    assert stats.distinct_codes == 3
    assert stats.codebook_size == 2**60
    assert stats.entropy_bits == pytest.approx(1.5)
    assert stats.bit_balance[59] == pytest.approx(0.75)
    assert stats.bit_balance[58] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="2\\^60"):
        usage.update(torch.tensor([2**60]))
    with pytest.raises(TypeError):
        usage.update(torch.tensor([1.0]))


def _ddp_worker(rank: int, world: int, init_file: str, queue: mp.Queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    usage = CodebookUsage(4)
    usage.update(torch.tensor([rank, rank, 15]))
    usage.all_reduce()
    if rank == 0:
        queue.put(usage.compute().to_dict())
    dist.destroy_process_group()


def test_all_reduce_merges_ranks(tmp_path) -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, str(tmp_path / "init"), queue)) for r in range(2)]
    for p in procs:
        p.start()
    result = queue.get(timeout=60)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert result["num_tokens"] == 6
    assert result["distinct_codes"] == 3  # 0, 1, 15
    # counts 2, 2, 2 -> log2(3) bits
    assert result["entropy_bits"] == pytest.approx(math.log2(3))


# --------------------------------------------------------------------------------------------------
# rates
# --------------------------------------------------------------------------------------------------


def test_tokens_per_second_and_bitrate() -> None:
    assert tokens_per_second(16, 128, 160, 16000) == pytest.approx(50.0)
    assert bitrate((16, 16), 128, 160, 16000, 18) == pytest.approx(900.0)
    assert tokens_per_second((8, 32), 64, 256, 22050) == pytest.approx(22050 / 256 / 8 * 2)
    with pytest.raises(ValueError, match="n_mels=100"):
        tokens_per_second(16, 100, 160, 16000)


# --------------------------------------------------------------------------------------------------
# waveform metrics
# --------------------------------------------------------------------------------------------------


def _speechlike(seconds: float = 2.0, sr: int = 16000, seed: int = 0) -> torch.Tensor:
    """Amplitude-modulated harmonic signal with pauses, enough for PESQ's voice activity detector."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sr)) / sr
    f0 = 140 + 30 * torch.sin(2 * math.pi * 0.7 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / sr
    voiced = sum(torch.sin(k * phase) / k for k in range(1, 12))
    envelope = (torch.sin(2 * math.pi * 2.5 * t).clamp_min(0)) ** 0.5
    return 0.3 * voiced * envelope + 0.003 * torch.randn(t.shape, generator=gen)


def test_si_snr_scaled_copy_and_known_noise() -> None:
    ref = _speechlike().unsqueeze(0)
    assert si_snr(0.5 * ref, ref).item() > 100
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(ref.shape, generator=gen)
    ref0 = ref - ref.mean()
    noise = noise - noise.mean()
    noise = noise - (noise * ref0).sum() / ref0.square().sum() * ref0  # orthogonal to the reference
    noise = noise * (ref0.norm() / noise.norm()) / 10  # 20 dB below
    assert si_snr(2.0 * ref0 + 2.0 * noise, ref0).item() == pytest.approx(20.0, abs=1e-3)
    assert si_snr(ref0 + noise * 10, ref0).item() == pytest.approx(0.0, abs=1e-3)
    # batch of two: per-signal values
    batch = si_snr(torch.cat([ref0, ref0 + noise]), torch.cat([ref0, ref0]))
    assert batch.shape == (2,)
    assert batch[1].item() == pytest.approx(20.0, abs=1e-3)


def test_pesq_and_stoi() -> None:
    ref = _speechlike(3.0)
    assert pesq_wb(ref, ref, 16000) > 4.4
    assert stoi(ref, ref, 16000) == pytest.approx(1.0, abs=1e-6)
    gen = torch.Generator().manual_seed(2)
    noisy = ref + 0.1 * torch.randn(ref.shape, generator=gen)
    assert pesq_wb(ref, noisy, 16000) < pesq_wb(ref, ref, 16000) - 1.0
    assert stoi(ref, noisy, 16000) < 0.99
    # other sample rates are resampled to 16 kHz for PESQ
    ref22 = torchaudio.functional.resample(ref, 16000, 22050)
    assert pesq_wb(ref22, ref22, 22050) > 4.4


def test_pesq_on_silence_returns_nan_with_warning() -> None:
    silence = torch.zeros(32000)
    with pytest.warns(UserWarning, match="PESQ skipped"):
        value = pesq_wb(silence, silence, 16000)
    assert math.isnan(value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(stoi(torch.zeros(800), torch.zeros(800), 16000))


@pytest.mark.parametrize("samples", [10, 100, 300, 420])
def test_stoi_of_a_clip_shorter_than_its_frame_is_nan_not_an_error(samples: int) -> None:
    # The tail window of a file can hold only a few samples; pystoi itself raises on those.
    clip = _speechlike(3.0)[:samples]
    with pytest.warns(UserWarning, match="STOI skipped"):
        assert math.isnan(stoi(clip, clip, 16000))


# --------------------------------------------------------------------------------------------------
# vocoder
# --------------------------------------------------------------------------------------------------


def _fbank(n_fft: int = 512, n_mels: int = 40, sr: int = 16000) -> torch.Tensor:
    return torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, sr / 2, n_mels, sr, norm="slaney",
                                                 mel_scale="slaney")


def test_nnls_inverse_nonnegative_and_close() -> None:
    fb = _fbank()
    gen = torch.Generator().manual_seed(0)
    spec = torch.rand(2, 20, fb.shape[0], generator=gen) ** 4  # (B, T, n_freqs), non-negative
    mel = spec @ fb
    est = nnls_mel_inverse(mel, fb, n_iter=300)
    assert est.shape == spec.shape
    assert bool((est >= 0).all())
    rel = ((est @ fb - mel).norm() / mel.norm()).item()
    assert rel < 1e-2
    clipped = nnls_mel_inverse(mel, fb, n_iter=0)
    assert bool((clipped >= 0).all())
    assert rel < ((clipped @ fb - mel).norm() / mel.norm()).item()
    # Objective within a hair of scipy's exact active-set NNLS for a few frames.
    a = fb.T.double().numpy()
    for frame in range(3):
        m = mel[0, frame].double().numpy()
        _, exact_res = scipy_nnls(a, m)
        ours = np.linalg.norm(a @ est[0, frame].double().numpy() - m)
        assert ours <= exact_res + 1e-2 * np.linalg.norm(m)


def test_nnls_rejects_mismatched_fbank() -> None:
    with pytest.raises(ValueError, match="mel bands"):
        nnls_mel_inverse(torch.rand(1, 4, 30), _fbank(n_mels=40))
    with pytest.raises(ValueError, match="negative"):
        nnls_mel_inverse(torch.rand(1, 4, 40), -_fbank(n_mels=40))


def test_griffin_lim_renders_a_tone() -> None:
    sr, n_fft, hop = 16000, 512, 128
    fb = _fbank(n_fft=n_fft, n_mels=64)
    # torch.stft's convention: S // hop + 1 frames (this repo's front end drops the last one).
    vocoder = GriffinLimVocoder(fb, n_fft=n_fft, hop_length=hop, n_iter=32, last_frame_dropped=False)
    t = torch.arange(sr) / sr
    wave = 0.5 * torch.sin(2 * math.pi * 1000 * t)
    power = torch.stft(wave, n_fft, hop, n_fft, torch.hann_window(n_fft), return_complex=True).abs() ** 2
    mel = (power.T @ fb).unsqueeze(0)  # (1, T, n_mels)
    out = vocoder(mel, length=wave.numel(), seed=0)
    assert out.shape == (1, wave.numel())
    again = vocoder(mel, length=wave.numel(), seed=0)
    assert torch.equal(out, again)
    spectrum = torch.fft.rfft(out[0]).abs()
    peak_hz = spectrum.argmax().item() * sr / wave.numel()
    assert abs(peak_hz - 1000) < 40
    # Same energy within a factor ~1.5.
    assert 0.66 < (out.norm() / wave.norm()).item() < 1.5
    unbatched = vocoder(mel[0], seed=0)
    assert unbatched.shape == ((mel.shape[1] - 1) * hop,)
    torch.testing.assert_close(unbatched, out[0, : unbatched.numel()])


def test_griffin_lim_matches_the_front_end() -> None:
    """With the repo's front end (S // hop frames): the default length is S and the result is speech-like."""
    from transcoder.audio.mel import LogMelFrontend, MelConfig

    frontend = LogMelFrontend(MelConfig(n_mels=64, n_fft=512, hop_length=128))
    vocoder = GriffinLimVocoder.from_frontend(frontend)
    assert vocoder.floor_power is not None
    assert vocoder.floor_fill_power == pytest.approx(vocoder.floor_power / 100)
    wave = _speechlike(2.0)[: 2 * 16000 // 128 * 128]
    mel = frontend(wave[None])
    out = vocoder(frontend.inverse(mel), seed=0)
    assert out.shape == wave[None].shape
    assert 0.5 < (out.norm() / wave.norm()).item() < 2.0
    # The rendered audio's mel is close to the mel it came from (Griffin-Lim is not exact).
    err = (frontend.model_to_db(frontend(out)) - frontend.model_to_db(mel)).abs().mean().item()
    assert err < 2.0
    assert stoi(wave, out[0], 16000) > 0.9


def test_vocoder_validates_settings() -> None:
    with pytest.raises(ValueError, match="n_fft=1024"):
        GriffinLimVocoder(_fbank(n_fft=512), n_fft=1024, hop_length=160)
    with pytest.raises(ValueError, match=r"expected \(512,\)"):
        GriffinLimVocoder(_fbank(), n_fft=512, hop_length=128, window=torch.hann_window(400))
    vocoder = GriffinLimVocoder(_fbank(), n_fft=512, hop_length=128)
    with pytest.raises(ValueError, match="bins"):
        vocoder(torch.rand(1, 10, 39))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_vocoder_on_gpu() -> None:
    fb = _fbank()
    vocoder = GriffinLimVocoder(fb, n_fft=512, hop_length=128).cuda()
    mel = torch.rand(2, 30, fb.shape[1], device="cuda")
    out = vocoder(mel)
    assert out.device.type == "cuda" and out.shape == (2, 29 * 128)
    assert torch.isfinite(out).all()


def test_seeded_rendering_leaves_the_global_rng_alone() -> None:
    vocoder = GriffinLimVocoder(_fbank(), n_fft=512, hop_length=128, n_iter=2, nnls_iter=2)
    mel = torch.rand(1, 12, 40)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = vocoder(mel, seed=5)
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(vocoder(mel, seed=5), first)
    assert not torch.equal(vocoder(mel, seed=6), first)
