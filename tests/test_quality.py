"""The token-quality levers: quantizer entropy only when needed (and averaged over DDP ranks), scaled
straight-through, codebook-weight ramps, SpecAugment targets, the multi-scale loss, the budget schedule,
the mel-GAN task (discriminator isolation, exact resume) and the quality benchmark script."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import assert_same_training_state
from torch import nn

from transcoder.losses import AudioTokenizerGanLoss, AudioTokenizerLoss
from transcoder.models.mel_discriminator import MultiScaleMelDiscriminator
from transcoder.models.quantizer.bsq import BinarySphericalQuantizer
from transcoder.training.config import load_config
from transcoder.training.optim import BudgetClock, warmup_budget_factor
from transcoder.training.trainer import Trainer
from transcoder.utils.checkpoint import load_checkpoint
from transcoder.utils.distributed import init_distributed
from transcoder.utils.targets import ConfigError

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO / "data" / "librivox-mini" / "LibriSpeech"
DEMO = REPO / "configs" / "tokenizer" / "audio_demo_librivox_mini.yaml"
TINY = [f"data.train.params.root={DATA_ROOT}", f"data.val.params.root={DATA_ROOT}", "data.target_length=64",
        "data.batch_size=4", "data.num_workers=0", "model.params.audioconfig.width=32",
        "model.params.audioconfig.layers=1", "model.params.audioconfig.heads=2", "training.log_every=2",
        "training.val_every=1000", "training.image_every=0", "training.latest_every=1000",
        "training.ckpt_every=1000", "training.max_steps=8", "optimizer.warmup_steps=2"]
GAN = ["task=tokenizer_gan", "loss.params.disc_start=2", "disc_optimizer.lr=2e-4", "disc_optimizer.warmup_steps=2",
       "discriminator.params={channels: 4, layers: 2, num_scales: 2}", "training.ema_decay=0.9"]
ENTROPY_KEYS = {"per_sample_entropy", "codebook_entropy", "entropy_loss"}


def trainer(output_dir: Path, *overrides: str) -> Trainer:
    return Trainer(load_config(DEMO, [*TINY, *overrides]), output_dir, init_distributed("cpu"))


# -- quantizer ------------------------------------------------------------------------------------------------
def test_entropies_only_when_a_loss_needs_them() -> None:
    quantizer = BinarySphericalQuantizer(embed_dim=18, group_size=9)
    z = torch.randn(4, 10, 18)
    _, train_loss, train_info = quantizer.train()(z)
    assert ENTROPY_KEYS <= set(train_info) and train_loss.ndim == 0 and torch.isfinite(train_loss)
    codes, eval_loss, eval_info = quantizer.eval()(z)
    assert not ENTROPY_KEYS & set(eval_info) and eval_info["indices"].shape == (4, 10)
    assert float(eval_loss) == 0.0  # beta=0: the commitment term alone
    _, _, forced = quantizer.eval()(z, compute_entropy=True)
    torch.testing.assert_close(forced["codebook_entropy"], train_info["codebook_entropy"])
    assert torch.equal(codes, quantizer.train()(z)[0])


def test_scaled_straight_through_divides_the_gradient_by_sqrt_d() -> None:
    z = torch.randn(6, 18)
    results = {}
    for mode in ("unit", "scaled"):
        quantizer = BinarySphericalQuantizer(embed_dim=18, straight_through=mode).eval()
        leaf = z.clone().requires_grad_(True)
        codes, _, info = quantizer(leaf)
        (codes * torch.arange(18.0)).sum().backward()
        results[mode] = (codes.detach(), leaf.grad)
    assert torch.equal(results["unit"][0], results["scaled"][0])  # identical values
    torch.testing.assert_close(results["scaled"][1], results["unit"][1] / math.sqrt(18))
    with pytest.raises(ValueError, match="straight_through='x'"):
        BinarySphericalQuantizer(embed_dim=18, straight_through="x")  # type: ignore[arg-type]


def _ddp_entropy_worker(rank: int, world: int, init_file: str, out_dir: str, mode: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        z = torch.randn(2 * 24, 6) * 3
        local = z[rank * 24:(rank + 1) * 24].clone().requires_grad_(True)
        quantizer = BinarySphericalQuantizer(embed_dim=6, group_size=3, cb_entropy_compute=mode,
                                             cb_entropy_ddp_average=True, inv_temperature=5.0)
        _, codebook = quantizer.soft_entropies(torch.nn.functional.normalize(local, dim=-1))
        codebook.backward()
        torch.save({"entropy": codebook.detach(), "grad": local.grad}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["group", "analytical"])
def test_codebook_entropy_averaged_over_two_gloo_ranks_equals_the_whole_batch(tmp_path: Path, mode: str) -> None:
    mp.spawn(_ddp_entropy_worker, args=(2, str(tmp_path / "init"), str(tmp_path), mode), nprocs=2, join=True)
    torch.manual_seed(0)
    z = (torch.randn(48, 6) * 3).requires_grad_(True)
    single = BinarySphericalQuantizer(embed_dim=6, group_size=3, cb_entropy_compute=mode, inv_temperature=5.0)
    _, expected = single.soft_entropies(torch.nn.functional.normalize(z, dim=-1))
    expected.backward()
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(result["entropy"], expected.detach())
        # Each rank's gradient is the whole-batch entropy's gradient on its own tokens.
        torch.testing.assert_close(result["grad"], z.grad[rank * 24:(rank + 1) * 24])
    local = BinarySphericalQuantizer(embed_dim=6, group_size=3, cb_entropy_compute=mode, inv_temperature=5.0)
    _, half = local.soft_entropies(torch.nn.functional.normalize(z[:24].detach(), dim=-1))
    assert not torch.allclose(half, expected.detach())  # without averaging a rank sees only its half


# -- losses ---------------------------------------------------------------------------------------------------
def test_codebook_ramps_up_from_zero_or_down_from_three_times() -> None:
    up = AudioTokenizerLoss(codebook_weight=0.1, codebook_warmup_steps=10, codebook_ramp="up")
    down = AudioTokenizerLoss(codebook_weight=0.1, codebook_warmup_steps=10, codebook_ramp="down")
    assert [round(up.codebook_weight_at(s), 4) for s in (0, 5, 10, 50)] == [0.0, 0.05, 0.1, 0.1]
    assert [round(down.codebook_weight_at(s), 4) for s in (0, 5, 10, 50)] == [0.3, 0.2, 0.1, 0.1]
    with pytest.raises(ValueError, match="codebook_ramp='sideways'"):
        AudioTokenizerLoss(codebook_ramp="sideways")


def test_multiscale_loss_is_zero_for_a_perfect_reconstruction_and_adds_to_the_total() -> None:
    target = torch.rand(2, 32, 16)
    loss = AudioTokenizerLoss(multiscale_weight=2.0, multiscale_scales=[[2, 4], 8])
    assert loss.multiscale_scales == [(2, 4), (8, 8)]
    total, terms = loss(target.clone(), target, torch.tensor(0.0), 0)
    assert float(total) == 0.0 and float(terms["loss/multiscale"]) == 0.0
    recon = (target + 0.3 * torch.randn_like(target)).requires_grad_(True)
    total, terms = loss(recon, target, torch.tensor(0.0), 0)
    plain, _ = AudioTokenizerLoss()(recon, target, torch.tensor(0.0), 0)
    torch.testing.assert_close(total, plain + 2.0 * terms["loss/multiscale"])
    total.backward()
    assert torch.isfinite(recon.grad).all()
    # Pooling averages the noise away: the coarse error is smaller than the per-cell one.
    assert float(terms["loss/multiscale"]) < float(terms["loss/l1"])
    with pytest.raises(ValueError, match="multiscale_weight=-1"):
        AudioTokenizerLoss(multiscale_weight=-1)


def test_adaptive_gan_weight_is_the_gradient_norm_ratio() -> None:
    layer = nn.Parameter(torch.randn(3, 4))
    loss = AudioTokenizerGanLoss(disc_weight=0.5)
    weight = loss.gan_weight((2 * layer).sum(), (4 * layer).sum(), layer)
    torch.testing.assert_close(weight, torch.tensor(0.25), rtol=1e-3, atol=0)
    fixed = AudioTokenizerGanLoss(disc_weight=0.5, adaptive_weight=False)
    assert float(fixed.gan_weight((2 * layer).sum(), (4 * layer).sum(), layer)) == 0.5
    assert not AudioTokenizerGanLoss(disc_start=3).gan_active(2) and AudioTokenizerGanLoss(disc_start=3).gan_active(3)


def test_mel_discriminator_shapes() -> None:
    disc = MultiScaleMelDiscriminator(channels=4, layers=2, num_scales=3)
    logits, features = disc(torch.randn(2, 64, 32))
    assert [tuple(t.shape) for t in logits] == [(2, 1, 16, 8), (2, 1, 8, 4), (2, 1, 4, 2)]
    assert len(features) == 3 and all(len(layers) == 3 for layers in features)
    with pytest.raises(ValueError, match="num_scales=0"):
        MultiScaleMelDiscriminator(num_scales=0)


# -- task switches --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("apply_to", ["input", "input_and_target"])
def test_specaugment_masks_the_target_only_when_asked(tmp_path: Path, apply_to: str) -> None:
    run = trainer(tmp_path, f"data.specaugment={{time_masks: 2, time_width: 20, freq_masks: 2, freq_width: 16, "
                            f"apply_to: {apply_to}}}")
    torch.manual_seed(0)
    audio = torch.randn(3, run.mel_config.clip_samples) * 0.1
    model_input, target = run.task.model_input(audio, augment=True)
    clean, _ = run.task.model_input(audio, augment=False)
    assert not torch.equal(model_input, clean)  # the input is masked in both modes
    assert torch.equal(target, model_input if apply_to == "input_and_target" else clean)


def test_switch_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.specaugment.apply_to='target'"):
        load_config(DEMO, [*TINY, "data.specaugment.apply_to=target"])
    with pytest.raises(ConfigError, match="optimizer.schedule=budget needs training.budget_seconds"):
        load_config(DEMO, [*TINY, "optimizer.schedule=budget"])
    with pytest.raises(ConfigError, match="optimizer.schedule='linear'"):
        load_config(DEMO, [*TINY, "optimizer.schedule=linear"])
    with pytest.raises(ConfigError, match="training.budget_seconds=-1"):
        load_config(DEMO, [*TINY, "training.budget_seconds=-1"])


@pytest.mark.parametrize("switch", [
    ["model.params.straight_through=scaled"], ["model.params.inv_temperature=10.0"],
    ["loss.params.codebook_ramp=down", "loss.params.codebook_warmup_steps=3"], ["loss.params.multiscale_weight=1.0"],
    ["model.params.audioconfig.use_conv_module=false"], ["training.ema_decay=0.99"],
    ["model.params.audioconfig.output_conv_channels=4"], ["model.params.audioconfig.decoder_layers=2"],
    ["model.params.audioconfig.input_norm=per_bin", "model.params.audioconfig.input_norm_batches=1"],
    ["loss.params.silence_weight=0.25"],
])
def test_each_switch_trains_with_finite_losses(tmp_path: Path, switch: list[str]) -> None:
    run = trainer(tmp_path, "training.max_steps=2", "training.log_every=1", *switch)
    run.fit()
    assert run.state.step == 2 and run.state.skipped_steps == 0
    assert all(math.isfinite(v) for entry in run.history for k, v in entry.items() if k.startswith("loss/"))


def test_budget_schedule_and_stop(tmp_path: Path) -> None:
    assert warmup_budget_factor(0, 4, 0.0) == 0.25
    assert warmup_budget_factor(10, 4, 0.5) == pytest.approx(0.5)
    assert warmup_budget_factor(10, 4, 1.0, min_lr_ratio=0.1) == pytest.approx(0.1)
    clock = BudgetClock(10.0)
    clock.seconds = 5.0
    assert clock.progress == 0.5 and not clock.spent
    run = trainer(tmp_path, "optimizer.schedule=budget", "training.budget_seconds=0.001", "training.max_steps=50")
    run.fit()
    assert run.state.step == 1  # the budget is spent after the first step
    assert run.parts["model"].lr == pytest.approx(1e-3 * 0.1)  # the cosine ended (at the demo's min_lr_ratio 0.1)
    assert load_checkpoint(tmp_path / "checkpoints" / "latest.pt")["budget_clock_seconds"] > 0.001


# -- the GAN task ---------------------------------------------------------------------------------------------
def test_discriminator_step_updates_only_the_discriminator(tmp_path: Path) -> None:
    run = trainer(tmp_path, *GAN, "loss.params.disc_start=0")
    state = run.step_state
    gen, disc = state.parts["model"], state.parts["discriminator"]
    original = state.optimize
    checked = []

    def checking_optimize(name: str, loss: torch.Tensor) -> bool:
        before_gen = [p.detach().clone() for p in gen.model.parameters()]
        before_disc = [p.detach().clone() for p in disc.model.parameters()]
        applied = original(name, loss)
        gen_same = all(torch.equal(p, q) for p, q in zip(gen.model.parameters(), before_gen, strict=True))
        disc_same = all(torch.equal(p, q) for p, q in zip(disc.model.parameters(), before_disc, strict=True))
        checked.append((name, applied, gen_same, disc_same, torch.isfinite(loss).item()))
        return applied

    state.optimize = checking_optimize  # type: ignore[method-assign]
    terms, _ = run.task.step(state, {"audio": torch.randn(2, run.mel_config.clip_samples) * 0.1})
    assert checked == [("discriminator", True, True, False, True), ("model", True, False, True, True)]
    assert all(torch.isfinite(v) for v in terms.values()) and float(terms["gan/weight"]) > 0


def test_gan_task_resumes_bitwise(tmp_path: Path) -> None:
    straight = trainer(tmp_path / "straight", *GAN)
    assert list(straight.parts) == ["model", "discriminator"]
    straight.fit()
    assert straight.parts["model"].updates == 8 and straight.parts["discriminator"].updates == 6  # from step 2
    trainer(tmp_path / "split", *GAN).fit(stop_at_step=4)
    resumed = trainer(tmp_path / "split", *GAN)
    assert resumed.state.step == 4
    resumed.fit()
    assert_same_training_state(tmp_path / "straight" / "checkpoints" / "latest.pt",
                               tmp_path / "split" / "checkpoints" / "latest.pt")


# -- the benchmark --------------------------------------------------------------------------------------------
def _benchmark() -> object:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import benchmark_quality
    finally:
        sys.path.pop(0)
    return benchmark_quality


def test_benchmark_prints_its_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _benchmark()
    from transcoder.evaluation.grid import parse_variant, split_overrides

    assert split_overrides("a=1,b=[1,2],c={x: 1, y: 2}") == ["a=1", "b=[1,2]", "c={x: 1, y: 2}"]
    assert parse_variant("lr:optimizer.lr=1e-3") == ("lr", ["optimizer.lr=1e-3"])
    code = bench.main(["--config", str(DEMO), "--preset", "tiny", "--steps", "2", "--train", str(DATA_ROOT),
                       "--val", str(DATA_ROOT), "--output", str(tmp_path), "--audio-batches", "1",
                       "--eval-batch-size", "2", "--num-audio", "0", "--set", "data.target_length=64",
                       "--variant", "plain:", "--variant", "ema:training.ema_decay=0.9"])
    out = capsys.readouterr().out
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("| plain") or line.startswith("| ema")]
    assert [row.split("|")[2].strip() for row in rows] == ["raw", "raw", "ema"]
    assert (tmp_path / "results.json").is_file() and (tmp_path / "results.md").is_file()
    assert float(rows[0].split("|")[8]) > 0  # MAE in dB
    assert "| seen |" in rows[0] and "trivial pooled-mel" in out  # the evaluation set, the anchors


def _tiny_grid(tmp_path: Path, grid_text: str, steps: int) -> tuple[Path, list[str]]:
    """A grid file of ``grid_text`` → (output folder, benchmark_quality arguments at the tiny preset, no audio)."""
    grid, output = tmp_path / "grid.txt", tmp_path / "out"
    grid.write_text(grid_text)
    return output, ["--config", str(DEMO), "--preset", "tiny", "--steps", str(steps), "--train", str(DATA_ROOT),
                    "--val", str(DATA_ROOT), "--output", str(output), "--audio-batches", "0", "--eval-max-batches",
                    "1", "--set", "data.target_length=64", "--set", "training.ema_decay=null", "--grid", str(grid)]


def test_benchmark_grid_appends_each_run_and_skips_finished_ones(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bench = _benchmark()
    output, args = _tiny_grid(tmp_path, "# two variants\nplain:\nlr:optimizer.lr=2e-3  # a comment\n", steps=1)
    grid = tmp_path / "grid.txt"
    assert bench.main([*args, "--seeds", "0"]) == 0
    results = output / "results.jsonl"
    first = bench.read_results(results)
    assert [(r["variant"], r["seed"], r["samples_seen"]) for r in first] == [("plain", 0, 4), ("lr", 0, 4)]
    assert first[1]["overrides"] == ["optimizer.lr=2e-3"]
    capsys.readouterr()
    assert bench.main([*args, "--seeds", "0,3"]) == 0  # seed 0 is done: only the seed-3 runs are trained
    out = capsys.readouterr().out
    assert "2 (variant, seed) run(s) already in" in out
    rows = bench.read_results(results)
    assert rows[:2] == first and [(r["variant"], r["seed"]) for r in rows[2:]] == [("plain", 3), ("lr", 3)]
    assert (output / "plain_s3" / "checkpoints" / "latest.pt").is_file()
    with results.open("a") as handle:
        handle.write('{"variant": "torn", "se')  # a run killed while appending
    assert len(bench.read_results(results)) == 4
    grid.write_text("plain:optimizer.lr=1e-4\n")  # the same name with other overrides
    assert bench.main([*args, "--seeds", "0"]) == 2
    assert "variant 'plain' (seed 0) is in the results file with overrides []" in capsys.readouterr().err


def test_per_bin_norm_takes_its_statistics_from_the_first_training_batches_and_keeps_them() -> None:
    from transcoder.models.audiobsq import AudioBSQModel

    model = AudioBSQModel(audioconfig={"input_length": 32, "input_size": 16, "patch_size": 8, "width": 16,
                                       "layers": 1, "heads": 2, "use_conv_module": False, "input_norm": "per_bin",
                                       "input_norm_batches": 2})
    scale = torch.linspace(0.1, 0.5, 16)
    first, second = torch.randn(3, 32, 16) * scale - 0.5, torch.randn(3, 32, 16) * scale - 0.5
    padded = torch.cat([second, torch.full((1, 32, 16), 9.0)])  # a padding-only item: not counted
    model.train()
    model(first)
    model(padded, valid_frames=torch.tensor([32, 32, 32, 0]))
    both = torch.cat([first, second]).reshape(-1, 16)
    torch.testing.assert_close(model.input_norm.mean, both.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.input_norm.std, both.std(0, unbiased=False), atol=1e-5, rtol=0)
    frozen = model.input_norm.mean.clone()
    model(torch.randn(3, 32, 16) + 3.0)  # after input_norm_batches: frozen
    assert torch.equal(model.input_norm.mean, frozen)
    state = model.state_dict()
    assert {"input_norm.mean", "input_norm.std"} <= set(state)
    model.eval()
    with torch.no_grad():
        normalized = model.input_norm.normalize(first)
        torch.testing.assert_close(model.input_norm.denormalize(normalized), first)
    with pytest.raises(ValueError, match="audioconfig.input_norm='global'"):
        AudioBSQModel(audioconfig={"input_norm": "global"})


def test_decoder_depth_and_silence_weighting() -> None:
    from transcoder.models.audiobsq import AudioBSQModel

    model = AudioBSQModel(audioconfig={"input_length": 32, "input_size": 16, "patch_size": 8, "width": 16,
                                       "layers": 1, "decoder_layers": 3, "heads": 2, "use_conv_module": False})
    assert (len(model.encoder.blocks), len(model.decoder.blocks)) == (1, 3)
    with pytest.raises(ValueError, match="audioconfig.decoder_layers=0"):
        AudioBSQModel(audioconfig={"decoder_layers": 0})
    target = torch.zeros(1, 4, 2)
    target[0, :2] = -0.9  # two near-silent frames
    recon = target.clone()
    recon[0, 0] += 0.4  # error 0.4 in a silent frame
    recon[0, 3] += 0.2  # error 0.2 in a loud frame
    plain = AudioTokenizerLoss(codebook_weight=0.0)
    weighted = AudioTokenizerLoss(codebook_weight=0.0, silence_weight=0.5)
    assert plain.reconstruction(recon, target)[0].item() == pytest.approx((0.4 + 0.2) / 4)
    assert weighted.reconstruction(recon, target)[0].item() == pytest.approx((0.5 * 0.4 + 0.2) / 3)
    with pytest.raises(ValueError, match="silence_weight=-1"):
        AudioTokenizerLoss(silence_weight=-1)


def test_benchmark_scores_every_width_of_a_nested_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _benchmark()
    args = ["--config", str(DEMO), "--preset", "tiny", "--steps", "1", "--train", str(DATA_ROOT), "--val",
            str(DATA_ROOT), "--output", str(tmp_path), "--audio-batches", "0", "--eval-max-batches", "1",
            "--set", "data.target_length=64", "--bits", "9,18"]
    assert bench.main([*args, "--variant", "fixed:"]) == 2  # refused before training: no nested bits
    assert "nested_bits" in capsys.readouterr().err and not (tmp_path / "fixed").exists()
    assert bench.main([*args, "--variant", "nested:model.params.nested_bits={widths: [9, 18]}"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| nested")]
    assert [(int(r[4]), float(r[12])) for r in rows] == [(9, 900.0), (18, 1800.0)]  # 100 tokens/s x bits


def test_benchmark_budget_mode_ends_the_cosine_at_the_budget(tmp_path: Path) -> None:
    bench = _benchmark()
    code = bench.main(["--config", str(DEMO), "--preset", "tiny", "--budget-seconds", "0.001", "--train",
                       str(DATA_ROOT), "--val", str(DATA_ROOT), "--output", str(tmp_path), "--audio-batches", "0",
                       "--eval-max-batches", "1", "--set", "data.target_length=64", "--variant", "b:"])
    assert code == 0
    config = load_config(tmp_path / "b" / "config.yaml")
    assert config["optimizer"]["schedule"] == "budget" and config["training"]["budget_seconds"] == 0.001
    assert config["training"]["max_steps"] == 10**9  # the budget ends the run, not the preset's step count
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt")["step"] == 1


def test_benchmark_passes_the_vocoder_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _benchmark()
    calls = []
    monkeypatch.setattr(bench, "load_tokenizer", lambda checkpoint, **kwargs: calls.append((checkpoint, kwargs)))
    bench.load_scored_tokenizer(tmp_path / "x.pt", "cpu", True, "voc.pt")
    expected = {"device": "cpu", "use_ema": True, "vocoder": "voc.pt", "trust_config": False}
    assert calls == [(tmp_path / "x.pt", expected)]


def test_seam_ratio_sees_patch_boundary_steps() -> None:
    from transcoder.evaluation.seams import seam_ratio

    torch.manual_seed(0)
    target = torch.cumsum(torch.randn(2, 32, 32) * 0.05, dim=2)  # smooth along frequency
    assert seam_ratio(target.clone(), target, 8, 2) == pytest.approx(1.0)
    offsets = torch.randn(2, 32, 4).repeat_interleave(8, dim=2)  # one offset per 8-bin patch
    assert seam_ratio(target + offsets, target, 8, 2) > 2.0
    assert seam_ratio(target + offsets, target, 8, 1) == pytest.approx(1.0, abs=0.3)  # time axis unaffected


def test_seam_scores_of_a_patch_spanning_the_whole_band_have_no_frequency_seam(monkeypatch) -> None:
    """2 x 128 patches (one full-band token per 20 ms) have no patch boundary along frequency: that ratio is
    None (no seams), the time ratio is still measured, and the benchmark's table prints "-" for it."""
    import types

    from transcoder.evaluation import evaluate as evaluate_module
    from transcoder.evaluation.seams import seam_scores

    torch.manual_seed(0)
    frames, bins = 32, 16
    tok = types.SimpleNamespace(device=torch.device("cpu"), patch_size=(4, bins),
                                frontend=lambda audio: audio.reshape(audio.shape[0], frames, bins))
    offsets = torch.randn(1, frames // 4, 1).repeat_interleave(4, dim=1)  # one offset per 4-frame patch
    monkeypatch.setattr(evaluate_module, "reconstruct", lambda tok, mel, bits: (mel + offsets, None, None))
    dataset = [{"audio": torch.cumsum(torch.randn(frames * bins) * 0.05, 0)} for _ in range(3)]
    scores = seam_scores(tok, dataset, batch_size=2)
    assert scores["freq"] is None
    assert scores["time"] > 2.0
    bench = _benchmark()
    assert bench._ratio(scores["freq"]) == "-" and bench._ratio(1.234) == "1.23"


def test_output_conv_head_starts_as_identity_and_learns() -> None:
    from transcoder.models.audiobsq import AudioBSQModel

    model = AudioBSQModel(audioconfig={"input_size": 32, "input_length": 64, "patch_size": 8, "width": 32,
                                       "layers": 1, "heads": 2, "output_conv_channels": 4})
    mel = torch.randn(2, 64, 32)
    assert torch.equal(model.decoder.output_conv(mel), mel)
    recon, loss, _ = model(mel)
    assert recon.shape == mel.shape
    ((recon - mel).abs().mean() + loss).backward()
    assert model.decoder.output_conv.conv_out.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="audioconfig.output_conv_channels=-1"):
        AudioBSQModel(audioconfig={"output_conv_channels": -1})


def test_a_rerun_over_a_finished_run_folder_times_only_its_own_steps(tmp_path: Path) -> None:
    """A grid stopped after training (e.g. in the evaluation) resumes the finished run folder: the row keeps
    the trained step count and says where it resumed, and reports no step rate rather than steps over ~0 s."""
    bench = _benchmark()
    args = ["--config", str(DEMO), "--preset", "tiny", "--steps", "2", "--train", str(DATA_ROOT), "--val",
            str(DATA_ROOT), "--output", str(tmp_path), "--audio-batches", "0", "--eval-max-batches", "1",
            "--set", "data.target_length=64", "--no-anchors", "--variant", "r:"]
    assert bench.main(args) == 0
    first = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {(r["steps"], r["resumed_at_step"]) for r in first} == {(2, 0)} and first[0]["steps_per_second"] > 0
    (tmp_path / "results.jsonl").unlink()  # as if the evaluation had failed before the rows were written
    assert bench.main(args) == 0
    again = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {(r["steps"], r["resumed_at_step"], r["steps_per_second"]) for r in again} == {(2, 2, None)}
    assert [r["spectrogram"]["mae_db"] for r in again] == [r["spectrogram"]["mae_db"] for r in first]


def test_benchmark_common_floor_is_in_every_row_and_a_rerun_keeps_it(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    bench = _benchmark()
    output = tmp_path / "out"
    args = ["--config", str(DEMO), "--preset", "tiny", "--steps", "1", "--train", str(DATA_ROOT), "--val",
            str(DATA_ROOT), "--output", str(output), "--audio-batches", "0", "--eval-max-batches", "1",
            "--set", "data.target_length=64", "--variant", "plain:", "--common-floor-db", "-60"]
    assert bench.main(args) == 0
    rows = bench.read_results(output / "results.jsonl")
    assert rows
    for row in rows:
        spectrogram = row["spectrogram"]
        assert spectrogram["common_floor_db"] == -60.0
        assert 0.0 <= spectrogram["mae_db_common_floor"] <= spectrogram["mae_db"]
    capsys.readouterr()
    assert bench.main([*args[:-1], "-50"]) == 2  # the finished rows were scored above another floor
    assert "were scored with another --common-floor-db than -50.0" in capsys.readouterr().err


def test_benchmark_grid_records_a_diverging_variant_and_goes_on(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    bench = _benchmark()
    output, args = _tiny_grid(
        tmp_path, "diverges:optimizer.lr=1e30,optimizer.warmup_steps=0,training.max_nonfinite_steps=1\nplain:\n", 3)
    assert bench.main(args) == 0
    captured = capsys.readouterr()
    assert "warning: variant diverges failed: " in captured.err and "non-finite" in captured.err
    rows = bench.read_results(output / "results.jsonl")
    assert [row["variant"] for row in rows] == ["diverges", "plain"]
    assert rows[0]["failed"].startswith("diverged: ") and "spectrogram" not in rows[0]
    assert rows[1]["spectrogram"]["mae_db"] > 0
    assert "| diverges | - | - | - |" in captured.out and "failed: diverged" in captured.out
    assert bench.main(args) == 0  # a rerun counts the failed variant as done
    assert "2 (variant, seed) run(s) already in" in capsys.readouterr().out
