"""Core model and BSQ quantizer: shapes, index arithmetic, gradients, precision, config errors."""

from __future__ import annotations

import math

import pytest
import torch

from transcoder.models.audiobsq import PRESETS, AudioBSQModel, AudioConfig
from transcoder.models.quantizer.bsq import BinarySphericalQuantizer


def tiny_model(**overrides) -> AudioBSQModel:
    audioconfig = {"input_size": 32, "input_length": 64, "patch_size": 16, "width": 32, "layers": 2,
                   "heads": 2, "use_conv_module": True, "conv_kernel_size": 3}
    audioconfig.update(overrides.pop("audioconfig", {}))
    torch.manual_seed(0)
    return AudioBSQModel(audioconfig=audioconfig, **{"embed_dim": 18, **overrides})


@pytest.mark.parametrize(
    ("patch_size", "frames", "bins"),
    [(16, 64, 32), ([16, 8], 64, 32), ([4, 16], 128, 32), ((8, 32), 32, 32)],
)
def test_shapes_for_patch_sizes_and_lengths(patch_size, frames: int, bins: int) -> None:
    model = tiny_model(audioconfig={"patch_size": patch_size, "input_size": bins})
    pt, pf = model.patch_size
    mel = torch.randn(2, frames, bins)
    recon, loss, info = model(mel)
    assert recon.shape == mel.shape
    assert loss.ndim == 0
    assert info["indices"].shape == (2, frames // pt, bins // pf)
    assert info["indices"].dtype == torch.int64
    codes, _, _ = model.encode(mel)
    assert codes.shape == (2, (frames // pt) * (bins // pf), 18)
    torch.testing.assert_close(codes.norm(dim=-1), torch.ones(codes.shape[:2]))


@pytest.mark.parametrize("frames", [16, 48, 64, 160])
def test_other_lengths_resample_time_position_embedding(frames: int) -> None:
    model = tiny_model().eval()
    mel = torch.rand(1, frames, 32) * 2 - 1
    with torch.no_grad():
        recon, _, info = model(mel)
    assert recon.shape == (1, frames, 32)
    assert info["grid"] == (frames // 16, 2)
    assert recon.min() >= -1 and recon.max() <= 1  # clamp_range outside training


def test_bad_input_shapes_raise_value_errors_naming_the_numbers() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="T=50.*time patch 16"):
        model(torch.randn(1, 50, 32))
    with pytest.raises(ValueError, match="32 mel bins"):
        model(torch.randn(1, 64, 40))
    with pytest.raises(ValueError, match=r"\(B, T, F\)"):
        model(torch.randn(64, 32))


@pytest.mark.parametrize("bits", [9, 18, 36, 62])
def test_index_round_trip_is_exact(bits: int) -> None:
    quantizer = BinarySphericalQuantizer(embed_dim=bits)
    generator = torch.Generator().manual_seed(bits)
    z = torch.randn(257, bits, generator=generator)
    codes, _, info = quantizer(z)
    indices = info["indices"]
    assert indices.dtype == torch.int64
    assert int(indices.min()) >= 0 and int(indices.max()) < 2**bits
    torch.testing.assert_close(quantizer.indices_to_codes(indices), codes.detach(), rtol=0, atol=0)
    # Bits read back one at a time agree with the sign pattern (no float rounding at 36/62 bits).
    for dim in (0, bits // 2, bits - 1):
        assert torch.equal((indices >> dim) & 1, (z[:, dim] > 0).long())
    extreme = torch.tensor([0, 2**bits - 1])
    torch.testing.assert_close(quantizer.codes_to_indices(quantizer.indices_to_codes(extreme)), extreme)


def test_index_of_a_known_code() -> None:
    quantizer = BinarySphericalQuantizer(embed_dim=4)
    _, _, info = quantizer(torch.tensor([[1.0, -1.0, 1.0, 1.0]]))
    assert info["indices"].tolist() == [1 + 4 + 8]


def test_decode_indices_equals_continuous_path_exactly() -> None:
    model = tiny_model().eval()
    mel = torch.randn(3, 64, 32)
    with torch.no_grad():
        codes, _, info = model.encode(mel)
        torch.testing.assert_close(model.decode(codes), model.decode_indices(info["indices"]), rtol=0, atol=0)
        recon, _, _ = model(mel)
        torch.testing.assert_close(recon, model.decode_indices(info["indices"]), rtol=0, atol=0)


def test_gradients_reach_encoder_through_straight_through_estimator() -> None:
    model = tiny_model()
    recon, quant_loss, _ = model(torch.randn(2, 64, 32))
    ((recon - 0.5) ** 2).mean().backward()
    for name in ("encoder.patch_embed.weight", "encoder.pos_embed", "quant_embed.weight",
                 "encoder.blocks.0.conv.depthwise_weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("mode", ["analytical", "group"])
def test_entropies_are_finite_and_bounded(mode: str) -> None:
    bits = 18
    quantizer = BinarySphericalQuantizer(embed_dim=bits, persample_entropy_compute=mode,
                                         cb_entropy_compute=mode, group_size=9)
    _, loss, info = quantizer(torch.randn(512, bits) * 5)
    upper = bits * math.log(2)
    for key in ("per_sample_entropy", "codebook_entropy"):
        value = float(info[key])
        assert math.isfinite(value) and -1e-5 <= value <= upper + 1e-4, (key, value)
    assert torch.isfinite(loss)
    # With a sharp temperature, a batch collapsed onto one code has (near) zero codebook entropy,
    # while uniformly random signs reach (near) the maximum.
    sharp = BinarySphericalQuantizer(embed_dim=bits, persample_entropy_compute=mode, cb_entropy_compute=mode,
                                     group_size=9, inv_temperature=100.0)
    _, _, collapsed = sharp(torch.ones(64, bits))
    _, _, spread = sharp(torch.randn(4096, bits))
    assert float(spread["codebook_entropy"]) > 0.9 * upper
    assert float(collapsed["codebook_entropy"]) < 0.05 * upper


def test_analytical_and_group_entropy_agree_for_independent_bits() -> None:
    z = torch.randn(300, 6)
    analytical = BinarySphericalQuantizer(embed_dim=6, persample_entropy_compute="analytical",
                                          cb_entropy_compute="analytical")
    grouped = BinarySphericalQuantizer(embed_dim=6, persample_entropy_compute="group",
                                       cb_entropy_compute="group", group_size=3)
    _, _, a = analytical(z)
    _, _, g = grouped(z)
    # Per token the soft distribution factorises over bits, so per-sample entropies are equal.
    torch.testing.assert_close(a["per_sample_entropy"], g["per_sample_entropy"], rtol=1e-4, atol=1e-5)
    # The grouped codebook entropy keeps correlations inside a group: never above the per-bit sum.
    assert float(g["codebook_entropy"]) <= float(a["codebook_entropy"]) + 1e-5


def test_checkpointed_and_plain_gradients_are_equal() -> None:
    mel = torch.randn(2, 64, 32)

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = tiny_model(audioconfig={"grad_checkpointing": checkpointing, "drop_path": 0.1})
        torch.manual_seed(1)
        recon, quant_loss, _ = model(mel)
        (recon.abs().mean() + quant_loss).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], rtol=1e-5, atol=1e-6, msg=name)


def test_checkpointing_updates_batchnorm_statistics_once() -> None:
    mel = torch.randn(2, 64, 32)
    states = []
    for checkpointing in (False, True):
        model = tiny_model(audioconfig={"grad_checkpointing": checkpointing})
        recon, quant_loss, _ = model(mel)
        (recon.abs().mean() + quant_loss).backward()
        states.append({k: v for k, v in model.state_dict().items() if "batch_norm" in k})
    plain, checkpointed = states
    assert plain and all(int(v) == 1 for k, v in checkpointed.items() if k.endswith("num_batches_tracked"))
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=0, msg=name)
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d))


def test_bf16_autocast_runs_and_quantizer_stays_fp32() -> None:
    model = tiny_model()
    seen: dict[str, torch.dtype] = {}
    model.quantizer.register_forward_hook(lambda _m, _i, out: seen.update(codes=out[0].dtype, loss=out[1].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        recon, quant_loss, info = model(torch.randn(2, 64, 32))
    assert seen == {"codes": torch.float32, "loss": torch.float32}
    assert quant_loss.dtype == torch.float32 and info["codebook_entropy"].dtype == torch.float32
    assert recon.dtype == torch.bfloat16 and torch.isfinite(recon.float()).all()
    (recon.float().mean() + quant_loss).backward()


def test_spec_usage_example_with_reduced_size() -> None:
    # The README's example with a smaller width so the test stays fast on a CPU.
    config = {"input_size": 128, "input_length": 1024, "patch_size": 16, "width": 64, "layers": 1, "heads": 4,
              "use_conv_module": True}
    model = AudioBSQModel(audioconfig=config, embed_dim=18, l2_norm=True)
    audio = torch.randn(1, 1024, 128)
    reconstructed, quant_loss, info = model(audio)
    encoded, _, _ = model.encode(audio)
    assert reconstructed.shape == (1, 1024, 128) and encoded.shape == (1, 512, 18)
    assert model.tokens_per_second(hop_length=160, sample_rate=16000) == 50.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"audioconfig": {"input_length": 100}}, "input_length=100 is not a multiple of the time patch 16"),
        ({"audioconfig": {"patch_size": [16, 5]}}, "input_size=32 is not a multiple of the frequency patch 5"),
        ({"audioconfig": {"patch_size": [1, 2, 3]}}, "patch_size"),
        ({"audioconfig": {"width": 30, "heads": 4}}, "width=30 is not divisible by heads=4"),
        ({"audioconfig": {"conv_kernel_size": 4}}, "conv_kernel_size=4"),
        ({"audioconfig": {"grad_checkpoint": True}}, r"unknown audioconfig key\(s\) \['grad_checkpoint'\]"),
        ({"embed_dim": 64}, "embed_dim=64"),
        ({"group_size": 4}, "group_size"),
        ({"persample_entropy_compute": "exact"}, "persample_entropy_compute='exact'"),
        ({"clamp_range": (1.0, -1.0)}, "clamp_range"),
        ({"inv_temperature": 0.0}, "inv_temperature"),
    ],
)
def test_bad_config_values_raise_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_model(**kwargs)


def test_indices_to_codes_rejects_bad_indices() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\[0, 2\^18\)"):
        model.indices_to_codes(torch.full((1, 4, 2), 2**18))
    with pytest.raises(TypeError, match="integer"):
        model.indices_to_codes(torch.zeros(1, 4, 2))


def test_presets_match_the_spec_variants() -> None:
    assert PRESETS["small_b9"]["embed_dim"] == 9 and PRESETS["large_b36"]["audioconfig"]["layers"] == 24
    model = AudioBSQModel.from_preset("small_b9", audioconfig={"layers": 1, "input_length": 64})
    assert model.embed_dim == 9 and model.config.width == 512 and model.config.layers == 1
    assert AudioConfig.from_dict({"patch_size": [16, 8]}).grid == (64, 16)


# --------------------------------------------------------------------------------------------------
# The quantizer as a nested spec; flat settings (older configs and checkpoints) still build the same model
# --------------------------------------------------------------------------------------------------

QUANTIZER_SETTINGS = {"beta": 0.25, "gamma0": 0.5, "gamma": 2.0, "zeta": 0.7, "inv_temperature": 10.0,
                      "group_size": 6, "persample_entropy_compute": "group", "cb_entropy_compute": "analytical",
                      "straight_through": "scaled", "cb_entropy_ddp_average": True}


def test_nested_and_flat_quantizer_settings_build_the_same_model() -> None:
    nested = tiny_model(quantizer={"target": "transcoder.models.quantizer.bsq.BinarySphericalQuantizer",
                                   "params": QUANTIZER_SETTINGS})
    flat = tiny_model(**QUANTIZER_SETTINGS)
    no_target = tiny_model(quantizer={"params": QUANTIZER_SETTINGS})
    for model in (nested, flat, no_target):
        assert isinstance(model.quantizer, BinarySphericalQuantizer)
        assert model.quantizer_spec == {"target": "transcoder.models.quantizer.bsq.BinarySphericalQuantizer",
                                        "params": QUANTIZER_SETTINGS}
        for key, value in QUANTIZER_SETTINGS.items():
            assert getattr(model.quantizer, key) == value, key
        assert model.quantizer.embed_dim == 18 and model.quantizer.l2_norm
    # Partly flat, partly nested: merged; the same value given twice is fine.
    mixed = tiny_model(quantizer={"params": {"beta": 0.25, "gamma": 2.0}}, beta=0.25, inv_temperature=10.0)
    assert (mixed.quantizer.beta, mixed.quantizer.gamma, mixed.quantizer.inv_temperature) == (0.25, 2.0, 10.0)
    # The seed usage: the model's own keys only, quantizer defaults.
    seed = AudioBSQModel(audioconfig={"input_size": 32, "input_length": 64, "width": 32, "layers": 1, "heads": 2},
                         embed_dim=18, l2_norm=True)
    assert seed.quantizer.inv_temperature == BinarySphericalQuantizer(embed_dim=18).inv_temperature


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"inv_temprature": 10.0}, TypeError, r"unexpected keyword\(s\) \['inv_temprature'\].*inv_temperature"),
        ({"quantizer": {"params": {"embed_dim": 9}}}, ValueError, r"quantizer.params sets \['embed_dim'\]"),
        ({"quantizer": {"inv_temperature": 10.0}}, ValueError, r"quantizer: unknown key\(s\) \['inv_temperature'\]"),
        ({"quantizer": {"params": {"beta": 0.1}}, "beta": 0.2}, ValueError, r"\['beta'\] given both flat"),
        ({"quantizer": {"target": "transcoder.models.nowhere.Quantizer"}}, ValueError, "cannot be imported"),
        ({"quantizer": {"params": {"group_size": 7}}}, ValueError, r"group_size \(got 7\)"),
    ],
)
def test_bad_quantizer_specs_name_the_key(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        tiny_model(**kwargs)


def test_checkpoint_with_flat_quantizer_keys_loads(tmp_path) -> None:
    from transcoder.api import load_model_from_checkpoint
    from transcoder.audio.mel import MelConfig
    from transcoder.utils.checkpoint import save_atomic

    # A format-2 checkpoint as written before the nested spec: the quantizer's settings sit flat in
    # model.params (input_size / input_length come from the data block).
    params = {"embed_dim": 18, "l2_norm": True, **QUANTIZER_SETTINGS,
              "audioconfig": {"patch_size": 16, "width": 32, "layers": 2, "heads": 2, "conv_kernel_size": 3}}
    model = tiny_model(**QUANTIZER_SETTINGS)
    mel = MelConfig(n_mels=32, n_fft=512, target_length=64)
    config = {"model": {"target": "transcoder.models.audiobsq.AudioBSQModel", "params": params},
              "data": mel.to_dict()}
    save_atomic({"format": 2, "task": "tokenizer", "models": {"model": model.state_dict()}, "ema": {},
                 "config": config, "mel": mel.to_dict(), "step": 3}, tmp_path / "flat.pt")
    loaded, _, state = load_model_from_checkpoint(tmp_path / "flat.pt")
    assert loaded.quantizer_spec["params"] == QUANTIZER_SETTINGS
    assert loaded.quantizer.inv_temperature == 10.0 and loaded.quantizer.straight_through == "scaled"
    mel_batch = torch.randn(2, 64, 32)
    torch.testing.assert_close(loaded(mel_batch)[0], model.eval()(mel_batch)[0])


# --------------------------------------------------------------------------------------------------
# Padded tokens count nowhere in the quantizer's training statistics
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["analytical", "group"])
def test_quantizer_statistics_leave_masked_tokens_out(mode: str) -> None:
    quantizer = BinarySphericalQuantizer(embed_dim=6, group_size=3, beta=0.5, persample_entropy_compute=mode,
                                         cb_entropy_compute=mode, inv_temperature=5.0).train()
    z = torch.randn(2, 8, 6)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 3:] = False
    z_padded = z.clone()
    z_padded[~mask] = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])  # a constant "padding" token
    _, loss_masked, info_masked = quantizer(z_padded, token_mask=mask)
    _, loss_valid, info_valid = quantizer(z[mask])
    for key in ("codebook_entropy", "per_sample_entropy", "commit_loss"):
        torch.testing.assert_close(info_masked[key], info_valid[key])
    torch.testing.assert_close(loss_masked, loss_valid)
    # Every token is still quantized; without the mask the padding lowers the codebook entropy.
    codes, _, info_all = quantizer(z_padded)
    assert torch.equal(info_masked["indices"], info_all["indices"]) and codes.shape == z.shape
    assert info_all["codebook_entropy"] < info_valid["codebook_entropy"]
    # No token left: zero statistics, no NaN.
    _, loss_none, info_none = quantizer(z, token_mask=torch.zeros(2, 8, dtype=torch.bool))
    assert loss_none.item() == 0.0 and info_none["codebook_entropy"].item() == 0.0
    with pytest.raises(ValueError, match="token_mask"):
        quantizer(z, token_mask=mask[:, :4])


def test_model_entropy_over_a_padded_batch_equals_the_entropy_without_the_padding() -> None:
    model = tiny_model(audioconfig={"use_conv_module": False}, beta=0.5).train()  # 4x2 token grid, pt=16
    mel = torch.randn(2, 64, 32)
    valid_frames = torch.tensor([64, 20])  # item 1: frames 20.. are padding → rows 0-1 hold audio
    _, loss, info = model(mel, valid_frames=valid_frames)
    features, _ = model.encoder(mel)
    z = model.quant_embed(features)  # (2, 8, 18)
    keep = torch.ones(2, 4, 2, dtype=torch.bool)
    keep[1, 2:] = False
    _, loss_valid, info_valid = model.quantizer(z[keep.flatten(1)])
    for key in ("codebook_entropy", "per_sample_entropy", "commit_loss"):
        torch.testing.assert_close(info[key], info_valid[key])
    torch.testing.assert_close(loss, loss_valid)
    _, _, info_all = model(mel)
    assert not torch.allclose(info_all["codebook_entropy"], info_valid["codebook_entropy"])
