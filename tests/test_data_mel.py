"""Log-mel front end: config handling, frame arithmetic, agreement with librosa, scaling, inverses."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from transcoder.data import LogMelFrontend, MelConfig


def speech_like(sr: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Harmonic glide plus a quieter noise burst and a silent gap: a wide dynamic range."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    f0 = 120 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20)) * 0.2
    noise = 0.02 * rng.standard_normal(t.shape)
    x = voiced * (t < seconds * 0.5) + noise * (t >= seconds * 0.6)
    return x.astype(np.float32)


def test_config_round_trip_and_unknown_keys():
    cfg = MelConfig(n_mels=80, f_max=7600.0)
    assert MelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown mel config key\(s\) \['batch_size'\].*valid keys"):
        MelConfig.from_dict({"n_mels": 80, "batch_size": 8})
    data_section = {"n_mels": 80, "batch_size": 8, "num_workers": 4, "sample_rate": 22050}
    picked = MelConfig.from_dict(data_section, strict=False)
    assert (picked.n_mels, picked.sample_rate) == (80, 22050)
    assert set(MelConfig.keys()) >= {"sample_rate", "n_mels", "n_fft", "hop_length", "win_length", "f_min",
                                     "f_max", "target_length", "db_min", "db_max"}


@pytest.mark.parametrize(
    ("values", "key"),
    [({"n_mels": 0}, "n_mels"), ({"hop_length": 1.5}, "hop_length"), ({"win_length": 2048}, "win_length"),
     ({"f_max": 9000.0}, "f_max"), ({"db_min": 0.0, "db_max": -80.0}, "db_min"), ({"mel_scale": "bark"}, "mel_scale")],
)
def test_config_rejects_bad_values_naming_the_key(values, key):
    with pytest.raises(ValueError, match=key):
        MelConfig.from_dict(values)


@pytest.mark.parametrize(
    "settings",
    [
        {},  # spec default: 16 kHz, 128 mels, 1024 frames
        {"n_mels": 80},  # speech
        {"sample_rate": 22050, "n_fft": 2048, "target_length": 2048},  # music
        {"target_length": 512},  # environmental sounds
    ],
)
def test_clip_samples_give_exactly_target_length_frames(settings):
    cfg = MelConfig(**settings)
    frontend = LogMelFrontend(cfg)
    wave = torch.zeros(2, cfg.clip_samples)
    out = frontend(wave)
    assert out.shape == (2, cfg.target_length, cfg.n_mels)
    assert cfg.num_frames(cfg.num_samples(cfg.target_length)) == cfg.target_length
    assert frontend.num_frames(cfg.clip_samples + cfg.hop_length - 1) == cfg.target_length
    assert torch.all(out == -1.0)  # digital silence sits on the floor


@pytest.mark.parametrize("settings", [{}, {"n_mels": 80, "win_length": 400}, {"sample_rate": 22050, "n_fft": 2048,
                                                                             "hop_length": 256, "mel_scale": "htk"}])
def test_power_mel_matches_librosa(settings):
    cfg = MelConfig(**settings)
    frontend = LogMelFrontend(cfg)
    x = speech_like(cfg.sample_rate, 2.0)
    ours = frontend.power_mel(torch.from_numpy(x)).numpy()
    ref = librosa.feature.melspectrogram(
        y=x, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
        window="hann", center=True, pad_mode="constant", power=2.0, n_mels=cfg.n_mels, norm=None,
        htk=cfg.mel_scale == "htk",
    ).T[: ours.shape[0]]
    assert ours.shape == (len(x) // cfg.hop_length, cfg.n_mels)
    # Stated tolerance: 1e-4 of the peak power, and 0.01 dB wherever the level is above the -80 dB floor.
    assert np.abs(ours - ref).max() <= 1e-4 * ref.max()
    db_ours = frontend.power_to_db(torch.from_numpy(ours)).numpy()
    db_ref = 10 * np.log10(np.maximum(ref, 1e-30) / frontend.ref_power)
    audible = db_ref > cfg.db_min
    assert audible.mean() > 0.3
    assert np.abs(db_ours - db_ref)[audible].max() < 0.01


def test_full_scale_sine_reads_near_zero_db_and_scaling_is_affine():
    frontend = LogMelFrontend()
    sr = 16000
    t = np.arange(2 * sr) / sr
    for freq in (250.0, 1000.0, 4000.0):
        sine = torch.from_numpy(np.sin(2 * np.pi * freq * t).astype(np.float32))
        db = frontend.power_to_db(frontend.power_mel(sine))[10:-10]
        assert -3.5 < db.max().item() <= 0.0
        quieter = frontend.power_to_db(frontend.power_mel(sine * 0.1))[10:-10]
        assert (db.max() - quieter.max()).item() == pytest.approx(20.0, abs=1e-3)
    db = torch.tensor([-200.0, -80.0, -40.0, 0.0, 12.0])
    torch.testing.assert_close(frontend.db_to_model(db), torch.tensor([-1.0, -1.0, 0.0, 1.0, 1.0]))


def test_model_space_range_and_exact_inverse():
    frontend = LogMelFrontend(MelConfig(n_mels=80))
    wave = torch.from_numpy(np.stack([speech_like(16000, 3.0, seed) for seed in range(2)]))
    x = frontend(wave)
    assert x.dtype == torch.float32
    assert x.min().item() == -1.0 and x.max().item() <= 1.0
    power = frontend.power_mel(wave)
    recovered = frontend.inverse(x)
    inside = frontend.power_to_db(power) > frontend.config.db_min + 1e-3
    assert inside.float().mean() > 0.3
    torch.testing.assert_close(recovered[inside], power[inside], rtol=1e-4, atol=0)
    # Below the clamp the inverse returns the floor power.
    floor = frontend.db_to_power(torch.tensor(frontend.config.db_min))
    torch.testing.assert_close(recovered[~inside], floor.expand_as(recovered[~inside]), rtol=1e-4, atol=0)
    db = torch.linspace(-80, 0, 101)
    torch.testing.assert_close(frontend.model_to_db(frontend.db_to_model(db)), db, atol=1e-4, rtol=0)


def test_fused_forward_equals_step_by_step_and_batches_are_independent():
    frontend = LogMelFrontend()
    wave = torch.from_numpy(np.stack([speech_like(16000, 2.0, s) for s in range(3)]))
    fused = frontend(wave)
    stepwise = frontend.db_to_model(frontend.power_to_db(frontend.power_mel(wave)))
    torch.testing.assert_close(fused, stepwise, atol=1e-5, rtol=0)
    torch.testing.assert_close(frontend(wave[1]), fused[1], atol=1e-5, rtol=0)
    with_grad = frontend(wave.clone().requires_grad_(True))
    torch.testing.assert_close(with_grad.detach(), fused, atol=1e-5, rtol=0)


def test_fp32_under_bf16_autocast_and_buffers_not_in_state_dict():
    frontend = LogMelFrontend()
    wave = torch.from_numpy(speech_like(16000, 1.0))[None]
    reference = frontend(wave)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = frontend(wave.bfloat16())
    assert out.dtype == torch.float32
    # The input was rounded to bf16 (8 bits of mantissa); the computation itself stays fp32.
    assert (out - reference).abs().mean().item() < 0.01
    assert frontend.state_dict() == {}
    assert {"window", "mel_fbank"} <= {name for name, _ in frontend.named_buffers()}


def test_exposes_filterbank_and_stft_settings_for_a_vocoder():
    cfg = MelConfig(n_mels=80, n_fft=512, win_length=400, hop_length=128)
    frontend = LogMelFrontend(cfg)
    assert frontend.mel_fbank.shape == (257, 80)
    assert torch.all(frontend.mel_fbank >= 0) and frontend.mel_fbank.max().item() == pytest.approx(1.0, abs=0.01)
    kwargs = frontend.stft_kwargs
    assert (kwargs["n_fft"], kwargs["hop_length"], kwargs["win_length"]) == (512, 128, 400)
    assert kwargs["window"].shape == (400,) and kwargs["center"] is True
    x = torch.from_numpy(speech_like(16000, 1.0))
    spec = torch.stft(x, **kwargs, return_complex=True)
    manual = (spec.abs() ** 2)[:, : frontend.num_frames(x.shape[0])].T @ frontend.mel_fbank
    torch.testing.assert_close(frontend.power_mel(x), manual, rtol=1e-4, atol=1e-6)
