"""The neural vocoder: generator shapes and frame alignment, losses, the GAN task on the shared trainer
(own-part updates, bitwise resume, fine-tune mode), loading through the API and the CLIs' ``--vocoder``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import assert_same_training_state
from test_tokenize import MEL, REPO, SR, _checkpoint, _speechlike, evaluate_script, tokenize_script

from transcoder.api import load_tokenizer
from transcoder.audio.mel import LogMelFrontend, MelConfig
from transcoder.audio.neural_vocoder import load_vocoder
from transcoder.audio.render import ChunkedRenderer
from transcoder.losses.vocoder import VocoderLoss
from transcoder.models.discriminators import VocoderDiscriminator
from transcoder.models.vocoder import VocosGenerator
from transcoder.training.config import load_config
from transcoder.training.trainer import Trainer
from transcoder.utils.checkpoint import CheckpointError, load_checkpoint, save_atomic
from transcoder.utils.distributed import init_distributed
from transcoder.utils.targets import ConfigError

DATA_ROOT = REPO / "data" / "librivox-mini" / "LibriSpeech"
DEMO = REPO / "configs" / "vocoder" / "vocoder_demo_librivox_mini.yaml"
TINY_GEN = {"size": None, "dim": 16, "intermediate_dim": 32, "num_layers": 1}
TINY_DISC = {"periods": [2, 3], "period_channels": [4, 4], "resolutions": [[256, 64, 256]], "stft_channels": 4}
TINY = [
    "model.params.size=null", "model.params.dim=16", "model.params.intermediate_dim=32", "model.params.num_layers=1",
    "discriminator.params.periods=[2,3]", "discriminator.params.period_channels=[4,4]",
    "discriminator.params.resolutions=[[256,64,256]]", "discriminator.params.stft_channels=4",
    f"data.train.params.root={DATA_ROOT}", f"data.val.params.root={DATA_ROOT}", "data.target_length=20",
    "data.batch_size=2", "data.num_workers=0", "loss.params.disc_start_step=2", "training.log_every=2",
    "training.val_every=3", "training.val_max_batches=1", "training.image_every=0", "training.latest_every=1000",
    "training.ckpt_every=1000", "training.ema_decay=0.9", "training.max_steps=8",
]


def vocoder_trainer(output_dir: Path, *overrides: str) -> Trainer:
    return Trainer(load_config(DEMO, [*TINY, *overrides]), output_dir, init_distributed("cpu"))


def _vocoder_checkpoint(path: Path, mel: MelConfig = MEL) -> Path:
    """A format-2 vocoder checkpoint (random tiny generator) with ``mel``'s settings."""
    torch.manual_seed(0)
    params = {**TINY_GEN, "n_mels": mel.n_mels, "n_fft": mel.n_fft, "hop_length": mel.hop_length}
    generator = VocosGenerator(**params)
    save_atomic({"format": 2, "task": "vocoder", "models": {"model": generator.state_dict()}, "ema": {},
                 "config": {"task": "vocoder", "model": {"target": "transcoder.models.vocoder.VocosGenerator",
                                                         "params": params}},
                 "mel": mel.to_dict(), "step": 3}, path)
    return path


# -- the generator ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [1, 7, 64, 101])
@pytest.mark.parametrize("win_length", [None, 400])
def test_generator_gives_hop_samples_per_frame(frames: int, win_length: int | None) -> None:
    mel = MelConfig(n_mels=32, n_fft=512, hop_length=160, win_length=win_length)
    generator = VocosGenerator(32, 512, 160, win_length, **TINY_GEN)
    wave = generator(torch.rand(3, frames, 32) * 2 - 1)
    assert wave.shape == (3, frames * 160) and wave.dtype == torch.float32 and torch.isfinite(wave).all()
    # The front end gives back exactly one frame per input frame.
    assert LogMelFrontend(mel)(wave).shape == (3, frames, 32)


def test_frame_t_is_centred_on_sample_t_times_hop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spectrum with one non-zero frame k (flat magnitude, linear phase pi * bin: an impulse in the middle of
    the frame's n_fft buffer) becomes an impulse at sample k * hop, where the front end centres frame k."""
    generator = VocosGenerator(32, 512, 160, **TINY_GEN)
    frames = 12
    for k in (0, 5, 11):
        spec = torch.zeros(1, 257, frames + 1, dtype=torch.complex64)
        spec[0, :, k] = torch.tensor([(-1.0) ** b for b in range(257)])
        monkeypatch.setattr(generator, "spectrum", lambda mel, s=spec: s)
        wave = generator(torch.zeros(1, frames, 32))[0]
        assert int(wave.abs().argmax()) == k * 160


def test_sizes_and_bad_settings() -> None:
    base = VocosGenerator(100, 1024, 256, size="base")
    assert 13.0e6 < sum(p.numel() for p in base.parameters()) < 14.0e6  # Vocos' mel vocoder: 13.5 M
    with pytest.raises(ValueError, match="size='huge'"):
        VocosGenerator(32, 512, 160, size="huge")
    with pytest.raises(ValueError, match="hop_length <= win_length"):
        VocosGenerator(32, 512, 600, size="tiny")


# -- losses ----------------------------------------------------------------------------------------------
def test_losses_are_finite_and_a_tiny_overfit_lowers_the_mel_loss() -> None:
    torch.manual_seed(0)
    real = torch.from_numpy(_speechlike(0.5))[None]  # (1, 8000)
    frontend = LogMelFrontend(MelConfig(n_mels=32, n_fft=512, hop_length=160))
    mel = frontend(real)
    generator = VocosGenerator(32, 512, 160, size=None, dim=32, intermediate_dim=64, num_layers=2)
    disc = VocoderDiscriminator(**TINY_DISC)
    loss_fn = VocoderLoss(SR, disc_start_step=0)
    fake = generator(mel)
    d_loss, d_terms = loss_fn.discriminator(disc(real), disc(fake.detach()))
    g_loss, g_terms = loss_fn.generator(fake, real, disc(real), disc(fake))
    assert torch.isfinite(d_loss) and torch.isfinite(g_loss)
    assert set(g_terms) == {"loss/total", "loss/mel", "loss/gen_mpd", "loss/fm_mpd", "loss/gen_mrd", "loss/fm_mrd"}
    assert all(torch.isfinite(v) for v in [*d_terms.values(), *g_terms.values()])
    optimizer = torch.optim.AdamW(generator.parameters(), lr=2e-3, betas=(0.8, 0.9))
    losses = []
    for _ in range(40):
        loss, terms = loss_fn.generator(generator(mel), real, None, None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(terms["loss/mel"]))
    assert losses[-1] < 0.7 * losses[0], losses[::10]


# -- the task on the trainer -----------------------------------------------------------------------------
def test_each_update_changes_only_its_own_part(tmp_path: Path) -> None:
    trainer = vocoder_trainer(tmp_path, "loss.params.disc_start_step=0")
    state = trainer.step_state
    parts = state.parts
    original = state.optimize
    seen: list[str] = []

    def checked_optimize(name: str, loss: torch.Tensor) -> bool:
        before = {part: [p.detach().clone() for p in parts[part].model.parameters()] for part in parts}
        applied = original(name, loss)
        for part, params in before.items():
            changed = [not torch.equal(p, q) for p, q in zip(parts[part].model.parameters(), params, strict=True)]
            assert any(changed) if part == name else not any(changed), (name, part)
        seen.append(name)
        return applied

    state.optimize = checked_optimize
    batch = {"audio": torch.from_numpy(np.stack([_speechlike(0.2, seed=i) for i in range(2)]))}
    terms, info = trainer.task.step(state, batch)
    assert seen == ["discriminator", "model"] and info["adversarial"]
    assert all(p.requires_grad for p in parts["discriminator"].model.parameters())  # unfrozen again
    assert torch.isfinite(terms["loss/total"]) and float(terms["loss/disc"]) > 0


def test_gan_task_trains_and_resumes_bitwise(tmp_path: Path) -> None:
    straight = vocoder_trainer(tmp_path / "straight")
    straight.fit()
    gen, disc = straight.parts["model"], straight.parts["discriminator"]
    assert gen.updates == 8 and disc.updates == 6  # the discriminators start after 2 generator updates
    last = straight.history[-1]
    assert {"loss/mel", "loss/gen_mpd", "loss/fm_mrd", "loss/disc_mpd", "train/lr/discriminator"} <= set(last)
    assert last["train/adversarial"] == 1.0

    vocoder_trainer(tmp_path / "split").fit(stop_at_step=4)
    resumed = vocoder_trainer(tmp_path / "split")
    assert resumed.state.step == 4
    resumed.fit()
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "latest.pt")
    assert a["task"] == "vocoder" and set(a["ema"]) == {"model"} and a["optim"]["discriminator"]["optimizer"]["state"]
    assert_same_training_state(tmp_path / "straight" / "checkpoints" / "latest.pt",
                               tmp_path / "split" / "checkpoints" / "latest.pt")

    # The trained checkpoint loads as a renderer (EMA weights) and maps (B, T, F) -> (B, T * hop).
    vocoder = load_vocoder(tmp_path / "straight" / "checkpoints" / "latest.pt")
    assert vocoder.mel_config.n_mels == 64 and not vocoder.training
    assert vocoder(torch.zeros(2, 30, 64)).shape == (2, 30 * 160)


def test_fine_tune_mode_feeds_the_tokenizer_reconstruction(tmp_path: Path) -> None:
    tokenizer = _checkpoint(tmp_path / "tok.pt")  # 32 mels, 64-frame windows
    mel32 = ["data.n_mels=32", "data.target_length=128", f"tokenizer_checkpoint={tokenizer}"]
    trainer = vocoder_trainer(tmp_path / "run", *mel32, "training.max_steps=1")
    task = trainer.task
    audio = torch.from_numpy(np.stack([_speechlike(128 * 160 / SR, seed=i) for i in range(2)]))
    recon = task.model_input(audio)
    model = load_tokenizer(tokenizer, device="cpu").model
    windows = task.frontend(audio).reshape(4, 64, 32)  # two whole tokenizer windows per segment
    assert torch.allclose(recon, model(windows)[0].reshape(2, 128, 32))
    assert not torch.allclose(recon, task.frontend(audio), atol=1e-2)
    trainer.fit()
    assert trainer.state.step == 1

    with pytest.raises(ConfigError, match="whole tokenizer windows of 64 frames"):
        load_config(DEMO, [*TINY, "data.n_mels=32", "data.target_length=100", f"tokenizer_checkpoint={tokenizer}"])
    with pytest.raises(ConfigError, match=r"mel settings differ \(data.n_mels=64 but the tokenizer has 32\)"):
        load_config(DEMO, [*TINY, "data.target_length=128", f"tokenizer_checkpoint={tokenizer}"])
    with pytest.raises(ConfigError, match="tokenizer_checkpoint=.*nope.pt: no such file"):
        load_config(DEMO, [*TINY, f"tokenizer_checkpoint={tmp_path / 'nope.pt'}"])


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.params.n_mels=80 but data.n_mels gives 64"):
        load_config(DEMO, [*TINY, "model.params.n_mels=80"])
    with pytest.raises(ConfigError, match="the vocoder task needs transcoder.losses.VocoderLoss"):
        load_config(DEMO, [*TINY, "loss.target=transcoder.losses.AudioTokenizerLoss", "loss.params={}"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['tokenizer_checkpoint'\] in top level"):
        load_config(REPO / "configs" / "tokenizer" / "audio_demo_librivox_mini.yaml", ["tokenizer_checkpoint=x"])


# -- rendering through the API ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("tok") / "tok.pt")


@pytest.fixture(scope="module")
def vocoder_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _vocoder_checkpoint(tmp_path_factory.mktemp("voc") / "voc.pt")


def test_tokenizer_decodes_through_the_vocoder(tokenizer_ckpt: Path, vocoder_ckpt: Path, tmp_path: Path) -> None:
    plain = load_tokenizer(tokenizer_ckpt, device="cpu")
    tok = load_tokenizer(tokenizer_ckpt, device="cpu", vocoder=vocoder_ckpt)
    assert plain.renderer_name == "griffin-lim" and tok.renderer_name == "neural"
    wave = _speechlike(1.5)
    codes = tok.encode_wave(wave)
    out = tok.decode_codes(codes, num_samples=len(wave))
    mel = tok.decode_to_mel(codes)
    expected = tok.neural_vocoder(mel[None])[0, :len(wave)]
    assert out.shape == (len(wave),) and torch.allclose(out, expected)
    assert not torch.allclose(out, plain.decode_codes(codes, num_samples=len(wave)))
    # The streamed decode renders window by window with the vocoder (seed-free: deterministic).
    path = tok.decode_to_file(codes, tmp_path / "x.wav", num_samples=len(wave))
    streamed, rate = sf.read(path, dtype="float32")
    again, _ = sf.read(tok.decode_to_file(codes, tmp_path / "y.wav", num_samples=len(wave), seed=5), dtype="float32")
    assert rate == SR and streamed.shape == (len(wave),) and np.array_equal(streamed, again)
    # Inside a window, away from the crossfades, the streamed render equals the one-shot render.
    assert np.allclose(streamed[2000:6000], out.numpy()[2000:6000], atol=1e-3)
    # A module works as well as a path.
    module = load_vocoder(vocoder_ckpt)
    from_module = load_tokenizer(tokenizer_ckpt, device="cpu", vocoder=module)
    assert torch.equal(from_module.decode_codes(codes), tok.decode_codes(codes))


class _Ones:
    """A perfectly coherent "renderer": every frame renders to ones."""

    kind, sample_rate, hop_length = "ones", 1000, 10

    def __init__(self, coherent: bool) -> None:
        self.coherent = coherent

    def render(self, mel: torch.Tensor, length: int | None = None, seed: int | None = None) -> torch.Tensor:
        return torch.ones(mel.shape[0], length)

    def describe(self) -> dict[str, str]:
        return {"type": self.kind}


def test_amplitude_crossfade_of_coherent_renderings_keeps_the_level() -> None:
    windows = [torch.zeros(20, 4) for _ in range(3)]
    flat = np.concatenate(list(ChunkedRenderer(_Ones(coherent=True), 20, margin=4).blocks(windows)))
    assert flat.shape == (600,) and np.allclose(flat, 1.0, atol=1e-6)
    power = np.concatenate(list(ChunkedRenderer(_Ones(coherent=False), 20, margin=4).blocks(windows)))
    assert power.max() > 1.3  # equal power overshoots on coherent signals: why the vocoder uses amplitude


def test_mismatched_mel_settings_are_a_clear_error(tokenizer_ckpt: Path, tmp_path: Path) -> None:
    other = MelConfig(sample_rate=SR, n_mels=40, n_fft=512, hop_length=128, target_length=64)
    wrong = _vocoder_checkpoint(tmp_path / "wrong.pt", other)
    with pytest.raises(ValueError, match=r"n_mels: 40 vs 32, hop_length: 128 vs 160"):
        load_tokenizer(tokenizer_ckpt, device="cpu", vocoder=wrong)
    with pytest.raises(TypeError, match="NeuralVocoder"):
        load_tokenizer(tokenizer_ckpt, device="cpu", vocoder=torch.nn.Identity())
    with pytest.raises(CheckpointError, match="not by a vocoder run"):
        load_vocoder(tokenizer_ckpt)
    # training.vocoder of a tokenizer run is checked against its data block when the task is built.
    from test_training import make_trainer

    with pytest.raises(ValueError, match=r"training.vocoder.*n_mels: 40 vs 64"):
        make_trainer(tmp_path / "run", f"training.vocoder={wrong}")


def test_tokenizer_run_renders_tensorboard_audio_with_the_vocoder(tmp_path: Path) -> None:
    from test_training import make_trainer

    demo_mel = MelConfig(sample_rate=SR, n_mels=64, n_fft=512, hop_length=160, target_length=100)
    vocoder = _vocoder_checkpoint(tmp_path / "voc.pt", demo_mel)
    trainer = make_trainer(tmp_path / "run", f"training.vocoder={vocoder}", "training.max_steps=1",
                           "training.image_every=1")
    calls: list[tuple[int, ...]] = []
    original = trainer.task.renderer.forward
    trainer.task.renderer.forward = lambda mel, length=None: calls.append(tuple(mel.shape)) or original(mel, length)
    trainer.fit()
    assert len(calls) == 2  # input and reconstruction


# -- command lines ---------------------------------------------------------------------------------------
def test_clis_accept_vocoder(tokenizer_ckpt: Path, vocoder_ckpt: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "a.wav", _speechlike(1.0), SR)
    out = tmp_path / "eval"
    assert evaluate_script.main([str(tokenizer_ckpt), "--output", str(out), "--audio-dir", str(audio),
                                 "--num-audio", "1", "--num-workers", "0", "--metric-workers", "1", "--gl-iters", "4",
                                 "--quiet", "--device", "cpu", "--vocoder", str(vocoder_ckpt)]) == 0
    table = capsys.readouterr().out
    assert "audio (neural vocoder)" in table and "voc(input) ceiling" in table and "GL(input) ceiling" in table
    results = json.loads((out / "metrics.json").read_text())
    assert set(results["audio"]) == {"recon", "ceiling", "vocoder_recon", "vocoder_ceiling"}
    assert results["windows"] == 2  # the second window is short: STOI needs more valid audio than it has
    assert results["audio"]["vocoder_ceiling"]["stoi_clips"] == results["audio"]["ceiling"]["stoi_clips"] == 1
    assert {"vocoder_pesq", "vocoder_ceiling_stoi", "ceiling_pesq", "pesq", "vocoder_ceiling_mel_mae_db",
            "ceiling_mel_mae_db"} <= set(results["per_clip"][0])
    assert 0 < results["audio"]["ceiling"]["mel_mae_db"] < results["audio"]["vocoder_ceiling"]["mel_mae_db"]
    assert len(list((out / "examples").glob("*_vocoder_*.wav"))) == 2

    codes = tmp_path / "codes"
    assert tokenize_script.main(["encode", "-c", str(tokenizer_ckpt), str(audio), str(codes), "--num-workers", "0",
                                 "--quiet"]) == 0
    wavs = tmp_path / "wav"
    assert tokenize_script.main(["decode", "-c", str(tokenizer_ckpt), str(codes), str(wavs), "--quiet",
                                 "--vocoder", str(vocoder_ckpt)]) == 0
    assert sf.info(wavs / "a.wav").frames == SR
    wrong = _vocoder_checkpoint(tmp_path / "wrong.pt", MelConfig(n_mels=40, n_fft=512, hop_length=160))
    assert tokenize_script.main(["decode", "-c", str(tokenizer_ckpt), str(codes), str(wavs), "--quiet",
                                 "--vocoder", str(wrong)]) == 2
    assert "n_mels: 40 vs 32" in capsys.readouterr().err


def test_train_vocoder_script_checks_the_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_tokenize import _load_script

    script = _load_script("train_vocoder")
    tokenizer_demo = REPO / "configs" / "tokenizer" / "audio_demo_librivox_mini.yaml"
    assert script.main([str(tokenizer_demo), "--output-dir", str(tmp_path / "run")]) == 2
    assert "this script trains task 'vocoder'" in capsys.readouterr().err
    assert script.main([str(DEMO), "--output-dir", str(tmp_path / "run"), "--device", "cpu", *TINY,
                        "training.max_steps=2"]) == 0
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").is_file()



def test_benchmark_script_reports_both_phases_and_rtf(tmp_path: Path) -> None:
    from test_tokenize import _load_script

    out = tmp_path / "bench.json"
    script = _load_script("benchmark_train")
    assert script.main([str(DEMO), "--steps", "1", "--warmup", "0", "--device", "cpu", "--batch-size", "2",
                        "--infer-seconds", "0.5", "--json", str(out), *TINY]) == 0
    results = json.loads(out.read_text())
    assert results["segment_seconds"] == pytest.approx(0.2)
    assert results["warmup_segments_per_second"] > 0 and results["adversarial_segments_per_second"] > 0
    assert results["adversarial_step_ms"] > results["warmup_step_ms"]  # the discriminators cost time
    assert results["inference_rtf"] > 0
