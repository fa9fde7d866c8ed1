"""Finite scalar quantization (FSQ), the reference quantizer: index arithmetic, the level grid, straight-through
gradients, bits and rates, the model with it (decode of indices, no loss, nested bits refused), config errors, the
checkpoint allow-list and API round trip, and the benchmark grid line that switches a BSQ config to FSQ."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_tokenize import _load_script

from transcoder.api import load_tokenizer
from transcoder.audio import MelConfig
from transcoder.models.audiobsq import AudioBSQModel, bits_per_token
from transcoder.models.build import build_model
from transcoder.models.quantizer.bsq import BinarySphericalQuantizer
from transcoder.models.quantizer.fsq import FiniteScalarQuantizer
from transcoder.training.config import load_config
from transcoder.training.trainer import Trainer
from transcoder.utils.checkpoint import save_atomic
from transcoder.utils.distributed import init_distributed
from transcoder.utils.rates import token_rates
from transcoder.utils.target_registry import TRUSTED_TARGETS
from transcoder.utils.targets import check_trusted_spec

REPO = Path(__file__).resolve().parents[1]
FSQ = "transcoder.models.quantizer.fsq.FiniteScalarQuantizer"
LEVELS = [8, 8, 8, 8, 8, 8]
#: The benchmark grid line of the 18-bit FSQ reference row (scripts/benchmark_quality.py --grid), as documented.
GRID_LINE = (
    "fsq_8x6:model.params.embed_dim=6,model.params.l2_norm=false,"
    "model.params.quantizer={target: transcoder.models.quantizer.fsq.FiniteScalarQuantizer, "
    "params: {levels: [8,8,8,8,8,8]}},"
    "model.params.beta=null,model.params.gamma0=null,model.params.gamma=null,model.params.zeta=null,"
    "model.params.inv_temperature=null,model.params.persample_entropy_compute=null,"
    "model.params.cb_entropy_compute=null,model.params.group_size=null,model.params.straight_through=null,"
    "model.params.cb_entropy_ddp_average=null"
)
AUDIO_ROOT = REPO / "data" / "librivox-mini" / "LibriSpeech"
SR = 16000
MEL = MelConfig(sample_rate=SR, n_mels=32, n_fft=512, hop_length=160, target_length=64)
MODEL_PARAMS: dict[str, Any] = {
    "embed_dim": 6, "l2_norm": False, "quantizer": {"target": FSQ, "params": {"levels": LEVELS}},
    "audioconfig": {"input_size": 32, "input_length": 64, "patch_size": 16, "width": 32, "layers": 1, "heads": 2,
                    "conv_kernel_size": 3},
}


def fsq_model(seed: int = 0, **overrides: Any) -> AudioBSQModel:
    torch.manual_seed(seed)
    return AudioBSQModel(**{**MODEL_PARAMS, **overrides})


# -- the quantizer ------------------------------------------------------------------------------------------


def test_every_index_of_8x6_round_trips_through_its_code() -> None:
    quantizer = FiniteScalarQuantizer(embed_dim=6, levels=LEVELS)
    indices = torch.arange(8**6)
    codes = quantizer.indices_to_codes(indices)
    assert codes.shape == (8**6, 6) and codes.dtype == torch.float32
    assert torch.equal(quantizer.codes_to_indices(codes), indices)
    # Every code is distinct and on the grid 2k/7 - 1, k = 0..7 (symmetric, from -1 to +1).
    grid = torch.arange(8, dtype=torch.float32) * (2.0 / 7.0) - 1.0
    assert torch.equal(codes.unique(), grid.unique())
    assert codes.unique(dim=0).shape[0] == 8**6
    # Mixed radix, dimension 0 least significant: with 8 levels, bits 3i..3i+2 of the index are level i.
    levels = torch.round((codes + 1.0) * 3.5).long()
    assert torch.equal(levels, (indices[:, None] >> (3 * torch.arange(6))) & 7)


@pytest.mark.parametrize("levels", [[5, 4], [3, 2, 7], [2, 2, 2]])
def test_odd_and_mixed_level_counts_round_trip(levels: list[int]) -> None:
    quantizer = FiniteScalarQuantizer(embed_dim=len(levels), levels=levels)
    size = math.prod(levels)
    assert quantizer.codebook_size == size
    assert quantizer.bits == (math.log2(size) if size & (size - 1) else int(math.log2(size)))
    codes = quantizer.indices_to_codes(torch.arange(size))
    assert torch.equal(quantizer.codes_to_indices(codes), torch.arange(size))
    for dim, count in enumerate(levels):
        values = codes[:, dim].unique()
        torch.testing.assert_close(values, torch.linspace(-1.0, 1.0, count), rtol=0, atol=1e-6)
    if 5 in levels:  # an odd count has 0 as its middle level
        assert (codes[:, levels.index(5)] == 0).any()


def test_forward_codes_lie_on_the_grid_and_decode_from_their_indices() -> None:
    quantizer = FiniteScalarQuantizer(embed_dim=6, levels=LEVELS)
    z = torch.randn(3, 40, 6) * 2.0
    codes, loss, info = quantizer(z)
    assert codes.dtype == torch.float32 and info["indices"].dtype == torch.int64
    assert info["indices"].shape == (3, 40)
    assert int(info["indices"].min()) >= 0 and int(info["indices"].max()) < 2**18
    steps = (codes.detach() + 1.0) * 3.5
    torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-5)
    assert torch.equal(quantizer.indices_to_codes(info["indices"]), codes.detach())  # bit for bit
    assert torch.equal(quantizer.codes_to_indices(codes.detach()), info["indices"])
    assert loss.ndim == 0 and float(loss) == 0.0
    assert set(info) == {"indices", "commit_loss"}
    assert 0.0 < float(info["commit_loss"]) <= 6 * (1.0 / 7.0) ** 2 + 1e-6  # at most half a step per dim


def test_tanh_cells_are_equal_and_zero_maps_to_the_middle() -> None:
    quantizer = FiniteScalarQuantizer(embed_dim=2, levels=[8, 5])
    # tanh(z) spread evenly over (-1, 1): each of the L cells gets the same share.
    t = (torch.arange(8000, dtype=torch.float64) + 0.5) / 4000 - 1.0
    z = torch.atanh(t).float()[:, None].expand(-1, 2).contiguous()
    codes, _, _ = quantizer(z)
    for dim, count in enumerate((8, 5)):
        _, counts = codes[:, dim].unique(return_counts=True)
        assert counts.numel() == count and int(counts.max() - counts.min()) <= 1
    zero_codes, _, _ = quantizer(torch.zeros(1, 2))
    assert zero_codes.tolist() == [[pytest.approx(1.0 / 7.0), 0.0]]  # even: a half step above 0; odd: 0


def test_gradient_passes_straight_through() -> None:
    quantizer = FiniteScalarQuantizer(embed_dim=6, levels=LEVELS)
    z = (torch.randn(5, 6) * 0.5).requires_grad_()
    weights = torch.randn(5, 6)
    codes, _, _ = quantizer(z)
    (codes * weights).sum().backward()
    # d code / d z = (L / (L - 1)) * (1 - tanh(z)^2): the gradient of the bounded input, rounding skipped.
    expected = weights * (8.0 / 7.0) * (1.0 - torch.tanh(z.detach()) ** 2)
    torch.testing.assert_close(z.grad, expected)


def test_autocast_input_is_quantized_in_fp32() -> None:
    quantizer = FiniteScalarQuantizer(embed_dim=6, levels=LEVELS)
    z = torch.randn(2, 8, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes, loss, info = quantizer(z.bfloat16())
    assert codes.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.equal(quantizer.indices_to_codes(info["indices"]), codes)


def test_token_mask_selects_the_tokens_of_commit_loss() -> None:
    quantizer = FiniteScalarQuantizer(embed_dim=6, levels=LEVELS)
    z = torch.randn(2, 10, 6)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, :4] = True
    _, _, masked = quantizer(z, token_mask=mask)
    _, _, first = quantizer(z[0, :4])
    torch.testing.assert_close(masked["commit_loss"], first["commit_loss"])
    with pytest.raises(ValueError, match="token_mask has shape"):
        quantizer(z, token_mask=mask[:, :5])


def test_indices_are_checked_for_range_dtype_and_width() -> None:
    quantizer = FiniteScalarQuantizer(embed_dim=6, levels=LEVELS)
    with pytest.raises(ValueError, match=r"\[0, 262144\)"):
        quantizer.indices_to_codes(torch.tensor([2**18]))
    with pytest.raises(ValueError, match=r"\[0, 262144\)"):
        quantizer.indices_to_codes(torch.tensor([-1]))
    with pytest.raises(TypeError, match="integer"):
        quantizer.indices_to_codes(torch.zeros(3))
    with pytest.raises(ValueError, match="no nested prefixes"):
        quantizer.indices_to_codes(torch.zeros(3, dtype=torch.long), bits=9)
    assert quantizer.indices_to_codes(torch.zeros(3, dtype=torch.long), bits=18).shape == (3, 6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"embed_dim": 2, "levels": [1, 8]}, r"levels=\[1, 8\].*integer >= 2 \(got 1 at position 0\)"),
        ({"embed_dim": 2, "levels": [8, 2.5]}, r"levels=\[8, 2.5\]"),
        ({"embed_dim": 1, "levels": []}, r"levels=\[\]"),
        ({"embed_dim": 1, "levels": "8"}, r"levels='8'"),
        ({"embed_dim": 18, "levels": LEVELS}, r"embed_dim=18 .*6 entries.*model.params.embed_dim=6"),
        ({"embed_dim": 6, "levels": LEVELS, "l2_norm": True}, r"l2_norm=True.*model.params.l2_norm=false"),
        ({"embed_dim": 22, "levels": [8] * 22}, r"do not fit an int64 index"),
    ],
)
def test_bad_quantizer_settings_name_the_value(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FiniteScalarQuantizer(**kwargs)


# -- in the model -------------------------------------------------------------------------------------------


def test_bits_are_18_and_the_bitrate_900_at_50_tokens_per_second() -> None:
    assert FiniteScalarQuantizer(embed_dim=6, levels=LEVELS).bits == 18
    model = fsq_model(audioconfig={**MODEL_PARAMS["audioconfig"], "input_size": 128})
    assert model.bits == 18 and model.embed_dim == 6
    assert model.tokens_per_second(160, 16000) == 50.0
    assert token_rates(model.patch_size, 128, 160, 16000, model.bits).bits_per_second == 900.0
    assert bits_per_token(MODEL_PARAMS) == 18
    assert bits_per_token({"embed_dim": 9}) == 9  # BSQ: its embed_dim


def test_the_model_decodes_its_indices_exactly_and_adds_no_loss() -> None:
    model = fsq_model().eval()
    mel = torch.rand(2, 64, 32) * 2 - 1
    with torch.no_grad():
        codes, quant_loss, info = model.encode(mel)
        assert codes.shape == (2, 8, 6) and info["indices"].shape == (2, 4, 2) and info["bits"] == 18
        assert float(quant_loss) == 0.0
        torch.testing.assert_close(model.decode_indices(info["indices"]), model.decode(codes), rtol=0, atol=0)
        recon, forward_loss, _ = model(mel)
        assert torch.equal(recon, model.decode_indices(info["indices"]))
    assert float(forward_loss) == 0.0
    with pytest.raises(ValueError, match=r"expected codes \(B, N, 6\).*no nested prefixes"):
        model.decode(codes[..., :3])
    with pytest.raises(ValueError, match="trained for 18-bit codes only; FiniteScalarQuantizer codes have no nested"):
        model.encode(mel, bits=9)
    with pytest.raises(ValueError, match=r"\[0, 262144\)"):
        model.indices_to_codes(torch.full((1, 4, 2), 2**18))


def test_training_step_reaches_the_encoder_and_logs_no_entropies() -> None:
    model = fsq_model().train()
    recon, quant_loss, info = model(torch.rand(2, 64, 32) * 2 - 1)
    assert "per_sample_entropy" not in info and float(quant_loss) == 0.0
    recon.abs().mean().backward()
    assert float(model.encoder.patch_embed.weight.grad.abs().sum()) > 0


def test_nested_bits_with_fsq_are_refused() -> None:
    with pytest.raises(ValueError, match=r"model.params.nested_bits=.*FiniteScalarQuantizer has no nested prefixes"):
        fsq_model(nested_bits={"widths": [9, 18]})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"embed_dim": 18}, r"embed_dim=18 .*set model.params.embed_dim=6"),
        ({"l2_norm": True}, r"set model.params.l2_norm=false"),
        ({"embed_dim": 2, "quantizer": {"target": FSQ, "params": {"levels": [5, 4]}}},
         r"makes 4.322 bits per token \(levels=\[5, 4\]\).*powers of two"),
        ({"inv_temperature": 10.0}, r"unexpected keyword\(s\) \['inv_temperature'\].*inv_temperature=null"),
        ({"quantizer": {"target": FSQ, "params": {"levels": [1, 8, 8, 8, 8, 8]}}}, r"levels=\[1, 8, 8, 8, 8, 8\]"),
    ],
)
def test_bad_model_settings_name_the_key(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        fsq_model(**overrides)


def test_null_bsq_settings_are_dropped_for_fsq_only() -> None:
    nulls = {"inv_temperature": None, "beta": None, "group_size": None}
    model = fsq_model(**nulls)
    assert model.quantizer_spec == {"target": FSQ, "params": {"levels": LEVELS}}
    # BSQ keeps taking them as given: group_size null is its own default, inv_temperature null is an error.
    bsq = AudioBSQModel(audioconfig=MODEL_PARAMS["audioconfig"], embed_dim=12, group_size=None)
    assert isinstance(bsq.quantizer, BinarySphericalQuantizer) and bsq.bits == 12
    with pytest.raises(ValueError, match="inv_temperature=None"):
        AudioBSQModel(audioconfig=MODEL_PARAMS["audioconfig"], embed_dim=12, inv_temperature=None)
    with pytest.raises(TypeError, match=r"unexpected keyword\(s\) \['inv_temprature'\]"):
        fsq_model(inv_temprature=None)  # a misspelt key is no setting of BSQ: still an error


# -- checkpoints, the API, the benchmark grid --------------------------------------------------------------


def test_fsq_is_a_trusted_checkpoint_target() -> None:
    assert FSQ in TRUSTED_TARGETS
    check_trusted_spec({"target": "transcoder.models.audiobsq.AudioBSQModel", "params": MODEL_PARAMS}, "config.model")


def test_a_checkpoint_and_its_release_folder_load_with_the_same_codes(tmp_path: Path) -> None:
    from transcoder.release.export import export_release

    model = fsq_model().eval()
    config = {"model": {"target": "transcoder.models.audiobsq.AudioBSQModel", "params": MODEL_PARAMS},
              "data": {**MEL.to_dict(), "val": None}}
    path = save_atomic({"model": model.state_dict(), "ema": None, "config": config, "mel": MEL.to_dict(),
                        "step": 1, "optimizer": {}}, tmp_path / "fsq.pt")
    wave = np.random.default_rng(0).standard_normal(2 * SR).astype(np.float32) * 0.1
    mel = MelConfig.from_dict(MEL.to_dict())
    tok = load_tokenizer(path, device="cpu")
    mels = tok.frontend(torch.from_numpy(wave[: 2 * tok.window_samples]).reshape(2, -1))
    with torch.no_grad():
        direct = model.encode(mels)[2]["indices"]
    folder = export_release(path, tmp_path / "release")
    for source in (path, folder):
        tok = load_tokenizer(source, device="cpu")
        assert isinstance(tok.model.quantizer, FiniteScalarQuantizer), source
        assert tok.bits_per_token == 18 and tok.nested_widths == [18]
        assert tok.bitrate == pytest.approx(tok.tokens_per_second * 18)
        assert torch.equal(tok.encode_mel(mels).cpu(), direct), source
        indices = tok.encode_wave(wave)
        assert indices.shape[1] == 2 and 0 <= int(indices.min()) and int(indices.max()) < 2**18
        decoded = tok.decode_to_mel(indices)
        assert decoded.shape == (indices.shape[0] * 16, mel.n_mels) and bool(torch.isfinite(decoded).all())
        with pytest.raises(ValueError, match="trained for 18-bit codes only"):
            tok.check_bits(9)
    with pytest.raises(ValueError, match="--onnx: .*binary \\(BSQ\\) codes only.*FiniteScalarQuantizer"):
        export_release(path, tmp_path / "onnx", onnx=True)
    assert not (tmp_path / "onnx").exists()


def test_the_grid_line_builds_and_trains_the_fsq_model(tmp_path: Path) -> None:
    """The documented grid line on the CPU config (loaded as scripts/benchmark_quality.py loads a variant) builds an
    18-bit FSQ model; a 2-step training run writes a checkpoint whose tokenizer gives the trained model's codes."""
    benchmark = _load_script("benchmark_quality")
    name, overrides = benchmark.parse_variant(GRID_LINE)
    assert name == "fsq_8x6" and len(overrides) == 13
    config = load_config(REPO / "configs" / "tokenizer" / "audio_simple_cpu_b18.yaml",
                         [*benchmark.PRESETS["cpu"]["overrides"], *overrides])
    benchmark.check_widths(config, [18], name)
    with pytest.raises(ValueError, match="decodes 18-bit codes only"):
        benchmark.check_widths(config, [9], name)
    model = build_model(config["model"], MelConfig.from_dict(config["data"], strict=False)).train()
    assert isinstance(model.quantizer, FiniteScalarQuantizer) and model.bits == 18 and model.config.width == 192
    recon, quant_loss, _ = model(torch.rand(1, config["data"]["target_length"], config["data"]["n_mels"]) * 2 - 1)
    (recon.abs().mean() + quant_loss).backward()
    assert float(model.quant_embed.weight.grad.abs().sum()) > 0

    tiny = ["model.params.audioconfig.width=32", "model.params.audioconfig.layers=1",
            "model.params.audioconfig.heads=2", "data.n_mels=32", "data.n_fft=512", "data.target_length=64",
            "data.batch_size=2", "data.num_workers=0", f"data.train.params.root={AUDIO_ROOT}",
            f"data.val.params.root={AUDIO_ROOT}", "training.max_steps=2", "training.val_every=2",
            "training.val_max_batches=1", "training.image_every=0", "training.log_every=1",
            "training.ckpt_every=1000", "training.latest_every=1000", "training.ema_decay=null"]
    config = load_config(REPO / "configs" / "tokenizer" / "audio_simple_cpu_b18.yaml", [*overrides, *tiny])
    trainer = Trainer(config, tmp_path / "run", init_distributed("cpu"))
    trainer.fit()
    tok = load_tokenizer(tmp_path / "run" / "checkpoints" / "latest.pt", device="cpu")
    assert tok.bits_per_token == 18
    trained = trainer.model.eval()
    mel = tok.frontend(torch.from_numpy(np.random.default_rng(1).standard_normal(tok.window_samples)
                                        .astype(np.float32) * 0.1)[None])
    with torch.no_grad():
        assert torch.equal(tok.encode_mel(mel).cpu(), trained.encode(mel)[2]["indices"])
