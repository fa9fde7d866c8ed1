"""MAE pre-training (task ``mae_pretrain``) and tokenizers initialised from it (``training.init_from``): masking,
visible/masked bookkeeping, the masked-only loss, exact resume, DDP, loading the encoder exactly, freezing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import assert_same_training_state
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn

from transcoder.losses.masked import MaskedPatchLoss
from transcoder.models.audiobsq import AudioTransformerEncoder
from transcoder.models.mae import AudioMAE, MaskedAudioEncoder, MaskSpec, scatter_tokens, take_tokens
from transcoder.models.patching import patchify, unpatchify
from transcoder.training.config import load_config
from transcoder.training.trainer import Trainer
from transcoder.utils.checkpoint import CheckpointError, load_checkpoint
from transcoder.utils.distributed import init_distributed
from transcoder.utils.targets import ConfigError

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO / "data" / "librivox-mini" / "LibriSpeech"
MAE = REPO / "configs" / "pretrain" / "mae_demo_librivox_mini.yaml"
DEMO = REPO / "configs" / "tokenizer" / "audio_demo_librivox_mini.yaml"
SCRIPT = REPO / "scripts" / "main_audio_tokenizer.py"

COMMON = [
    f"data.train.params.root={DATA_ROOT}", f"data.val.params.root={DATA_ROOT}", "data.target_length=64",
    "model.params.audioconfig.width=32", "model.params.audioconfig.layers=1", "model.params.audioconfig.heads=2",
    "data.batch_size=4", "data.num_workers=0", "training.log_every=2", "training.val_every=1000",
    "training.image_every=0", "training.latest_every=1000", "training.ckpt_every=1000",
]
TINY_MAE = [*COMMON, "model.params.decoder_width=16", "model.params.decoder_layers=1", "model.params.decoder_heads=2"]
AUDIO = {"input_size": 16, "input_length": 32, "patch_size": [4, 4], "width": 16, "layers": 2, "heads": 2,
         "conv_kernel_size": 3}


def mae_trainer(output_dir: Path, *overrides: str) -> Trainer:
    return Trainer(load_config(MAE, [*TINY_MAE, *overrides]), output_dir, init_distributed("cpu"))


def tokenizer_trainer(output_dir: Path, *overrides: str) -> Trainer:
    return Trainer(load_config(DEMO, [*COMMON, *overrides]), output_dir, init_distributed("cpu"))


def init_from(path: Path, **extra: Any) -> str:
    fields = ", ".join([f"path: {path}", *(f"{key}: {value}" for key, value in extra.items())])
    return f"training.init_from={{{fields}}}"


# -- masking -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "ratio", "expected"), [
    ("unstructured", 0.8, round(0.8 * 96)), ("unstructured", 0.5, 48), ("unstructured", 0.0, 0),
    ("time", 0.75, 9 * 8), ("frequency", 0.5, 4 * 12), ("time_frequency", 0.75, 96 - 6 * 4),
])
def test_mask_drops_exactly_the_requested_share(mode: str, ratio: float, expected: int) -> None:
    grid = (12, 8)
    spec = MaskSpec(ratio, mode)
    assert spec.num_masked(grid) == expected
    visible, masked, mask = spec.sample(5, grid, torch.device("cpu"))
    assert visible.shape == (5, 96 - expected) and masked.shape == (5, expected)
    assert (mask.sum(1) == expected).all()
    for row in range(5):
        assert torch.equal(torch.cat([visible[row], masked[row]]).sort().values, torch.arange(96))
        assert (visible[row].diff() > 0).all() and (masked[row].diff() > 0).all()  # ascending, no repeats
        assert not mask[row, visible[row]].any() and mask[row, masked[row]].all()
    lines = mask.reshape(5, *grid)
    if mode == "time":  # whole time rows: a row is all masked or all visible
        assert (lines.all(2) | ~lines.any(2)).all() and (lines.all(2).sum(1) == 9).all()
    if mode == "frequency":
        assert (lines.all(1) | ~lines.any(1)).all() and (lines.all(1).sum(1) == 4).all()
    if mode == "unstructured" and 0 < ratio:  # masks differ between samples
        assert not all(torch.equal(mask[0], mask[row]) for row in range(1, 5))


def test_mask_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"mask_ratio=1.0: expected a number in \[0, 1\)"):
        MaskSpec(1.0, "unstructured")
    with pytest.raises(ValueError, match="mask_mode='patches'"):
        MaskSpec(0.5, "patches")
    with pytest.raises(ValueError, match="masks every token"):
        MaskSpec(0.99, "time").num_masked((4, 8))
    with pytest.raises(ValueError, match="encoder_conv='full'"):
        AudioMAE(AUDIO, encoder_conv="full")


# -- bookkeeping ---------------------------------------------------------------------------------------
class CopyDecoder(nn.Module):
    """Returns its input tokens: what reaches the decoder is what comes out."""

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        return tokens


def test_a_copying_model_reconstructs_visible_patches_exactly() -> None:
    patch_dim = 16  # 4 x 4 patches: decoder width = patch size so the copy is shape-preserving
    model = AudioMAE(AUDIO, mask_ratio=0.75, decoder_width=patch_dim, decoder_heads=2)
    # The encoder hands back the visible patches themselves; the decoder copies its input.
    model.encoder.forward_visible = lambda mel, visible, conv: take_tokens(patchify(mel, (4, 4)), visible)
    model.decoder_embed = nn.Identity()
    model.decoder = CopyDecoder()
    mel = torch.randn(3, 32, 16)
    out = model(mel)
    assert torch.equal(out.target, patchify(mel, (4, 4)))
    keep = ~out.mask
    assert torch.equal(out.pred[keep], out.target[keep])  # every visible patch back at its own position
    assert torch.equal(out.pred[out.mask], model.mask_token.detach()[0].expand(int(out.mask.sum()), -1))
    # scatter_tokens inverts take_tokens at the given positions.
    tokens = torch.randn(3, 32, 5)
    back = scatter_tokens(take_tokens(tokens, out.visible), out.visible, torch.zeros(1, 1, 5), 32)
    assert torch.equal(back[keep], tokens[keep]) and not back[out.mask].any()


@pytest.mark.parametrize("conv", ["zero_fill", "skip"])
def test_visible_encoder_matches_full_encoder_and_ignores_masked_patches(conv: str) -> None:
    torch.manual_seed(0)
    encoder = MaskedAudioEncoder(AudioMAE(AUDIO).config).eval()
    mel = torch.randn(2, 32, 16)
    everything = torch.arange(32).expand(2, -1)
    if conv == "zero_fill":  # all tokens visible: the same computation as the ordinary forward
        torch.testing.assert_close(encoder.forward_visible(mel, everything, conv), encoder(mel)[0])
    else:  # skip: the ordinary forward without the conv modules
        plain = AudioTransformerEncoder(AudioMAE({**AUDIO, "use_conv_module": False}).config).eval()
        plain.load_state_dict({k: v for k, v in encoder.state_dict().items() if ".conv." not in k})
        torch.testing.assert_close(encoder.forward_visible(mel, everything, conv), plain(mel)[0])
    # Masked patches are dropped: changing them does not change what the visible tokens encode.
    visible, _, mask = MaskSpec(0.75, "unstructured").sample(2, (8, 4), mel.device)
    patches = patchify(mel, (4, 4))
    altered = torch.where(mask.unsqueeze(-1), torch.randn_like(patches) * 5, patches)
    altered_mel = unpatchify(altered, (8, 4), (4, 4))
    assert torch.equal(patchify(altered_mel, (4, 4))[~mask], patches[~mask])
    torch.testing.assert_close(encoder.forward_visible(altered_mel, visible, conv),
                               encoder.forward_visible(mel, visible, conv), rtol=0, atol=1e-6)
    assert encoder.forward_visible(mel, visible, conv).shape == (2, 8, 16)


def test_skip_mode_leaves_conv_modules_out_of_training() -> None:
    model = AudioMAE(AUDIO, encoder_conv="skip")
    conv_params = [p for name, p in model.named_parameters() if ".conv." in name]
    assert conv_params and not any(p.requires_grad for p in conv_params)
    model(torch.randn(2, 32, 16)).pred.sum().backward()
    assert all(p.grad is None for p in conv_params)
    assert all(p.grad is not None for name, p in model.named_parameters() if ".conv." not in name)


# -- loss ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_ignores_visible_patches(norm_pix: bool) -> None:
    loss_fn = MaskedPatchLoss(norm_pix_loss=norm_pix)
    patches = torch.randn(2, 10, 6) * 3 + 1
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[:, [1, 4, 7]] = True
    pred = torch.randn(2, 10, 6, requires_grad=True)
    loss, terms = loss_fn(pred, patches, mask)
    target = loss_fn.target(patches)
    expected = (pred - target).pow(2).mean(-1)[mask].mean()
    torch.testing.assert_close(loss, expected)
    assert terms["loss/total"] == loss.detach()
    loss.backward()
    assert not pred.grad[~mask].any() and pred.grad[mask].abs().sum() > 0
    wild = pred.detach().clone()
    wild[~mask] = float("nan")  # whatever the visible predictions are
    assert torch.equal(loss_fn(wild, patches, mask)[0], loss.detach())
    if norm_pix:  # targets normalised per patch
        torch.testing.assert_close(target.mean(-1), torch.zeros(2, 10), atol=1e-5, rtol=0)
        torch.testing.assert_close(target.var(-1, unbiased=False), torch.ones(2, 10), atol=1e-4, rtol=0)
        assert loss_fn(target, patches, mask)[0] == 0


# -- the task on the trainer ---------------------------------------------------------------------------
def test_mae_resume_is_bitwise_exact_with_validation_and_images(tmp_path: Path) -> None:
    common = ("training.max_steps=8", "training.val_every=3", "training.ema_decay=0.9", "training.image_every=3")
    straight = mae_trainer(tmp_path / "straight", *common)
    straight.fit()
    mae_trainer(tmp_path / "split", *common).fit(stop_at_step=4)
    resumed = mae_trainer(tmp_path / "split", *common)
    assert resumed.state.step == 4
    resumed.fit()
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "latest.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "latest.pt")
    assert a["task"] == "mae_pretrain" and a["step"] == b["step"] == 8
    assert_same_training_state(tmp_path / "straight" / "checkpoints" / "latest.pt",
                               tmp_path / "split" / "checkpoints" / "latest.pt")
    assert a["state"]["best_val_loss"] == b["state"]["best_val_loss"] < float("inf")
    events = EventAccumulator(str(tmp_path / "straight" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {"loss/masked_mse", "val/loss", "mae/visible_share"} <= set(events.Tags()["scalars"])
    assert set(events.Tags()["images"]) == {"mae/0", "mae/1"}
    losses = [entry["loss/total"] for entry in straight.history]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_mae_config_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.specaugment=.*set data.specaugment to null"):
        load_config(MAE, [*TINY_MAE, "data.specaugment={time_masks: 1}"])
    with pytest.raises(ConfigError, match="loss.target=.*MaskedPatchLoss"):
        load_config(MAE, [*TINY_MAE, "loss.target=transcoder.losses.AudioTokenizerLoss"])
    with pytest.raises(ValueError, match="mask_ratio=0.95"):
        mae_trainer(tmp_path, "model.params.mask_ratio=0.95", "model.params.mask_mode=time")


def test_mae_trains_under_two_process_ddp_with_skipped_conv(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    command = [torchrun, "--standalone", "--nproc_per_node=2", str(SCRIPT), str(MAE), "--output-dir",
               str(tmp_path), "--device", "cpu", *TINY_MAE, "training.max_steps=3", "model.params.encoder_conv=skip"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "weights identical on all 2 ranks" in result.stderr
    assert load_checkpoint(tmp_path / "checkpoints" / "latest.pt")["world_size"] == 2


# -- init_from and freezing ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mae_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("mae")
    mae_trainer(output, "training.max_steps=2").fit()
    return output / "checkpoints" / "latest.pt"


def encoder_params(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in model.encoder.named_parameters()}


def test_init_from_loads_exactly_the_encoder(tmp_path: Path, mae_checkpoint: Path) -> None:
    pretrained = load_checkpoint(mae_checkpoint)["models"]["model"]
    trainer = tokenizer_trainer(tmp_path / "init", init_from(mae_checkpoint), "training.ema_decay=0.9")
    scratch = tokenizer_trainer(tmp_path / "scratch")  # same seed: the same initial weights
    loaded, fresh = trainer.model.state_dict(), scratch.model.state_dict()
    encoder_keys = [key for key in loaded if key.startswith("encoder.")]
    assert encoder_keys
    for key, tensor in loaded.items():
        if key.startswith("encoder."):
            assert torch.equal(tensor, pretrained[key]), key
            assert torch.equal(trainer.parts["model"].ema.module.state_dict()[key], pretrained[key]), key
        else:  # the quantizer and decoder are untouched
            assert torch.equal(tensor, fresh[key]), key
    assert "initialised encoder from" in (tmp_path / "init" / "train.log").read_text()


def test_init_from_mismatches_are_clear_errors(tmp_path: Path, mae_checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match=r"module 'encoder'.*parameter pos_embed has shape \(1, 64, 32\) "
                                              r"in the checkpoint but \(1, 64, 48\)"):
        tokenizer_trainer(tmp_path / "a", init_from(mae_checkpoint), "model.params.audioconfig.width=48")
    with pytest.raises(CheckpointError, match=r"missing \['blocks.1"):
        tokenizer_trainer(tmp_path / "b", init_from(mae_checkpoint), "model.params.audioconfig.layers=2")
    with pytest.raises(ConfigError, match="'encodr' is not a submodule"):
        tokenizer_trainer(tmp_path / "c", init_from(mae_checkpoint, modules="[encodr]"))
    with pytest.raises(CheckpointError, match="holds no weights under 'post_quant_embed.'"):
        tokenizer_trainer(tmp_path / "d", init_from(mae_checkpoint, modules="[post_quant_embed]"))
    with pytest.raises(FileNotFoundError, match="training.init_from.path="):
        tokenizer_trainer(tmp_path / "e", init_from(tmp_path / "none.pt"))
    for bad, message in (("freeze_steps: -1", "training.init_from.freeze_steps=-1"),
                         ("modules: []", "training.init_from.modules=\\[\\]"),
                         ("freeze: 3", r"unknown key\(s\) \['freeze'\] in training.init_from")):
        with pytest.raises(ConfigError, match=message):
            load_config(DEMO, [*COMMON, f"training.init_from={{path: x.pt, {bad}}}"])


def test_freezing_keeps_the_encoder_for_n_updates_and_resume_does_not_reload(tmp_path: Path,
                                                                           mae_checkpoint: Path) -> None:
    pretrained = {key.removeprefix("encoder."): value
                  for key, value in load_checkpoint(mae_checkpoint)["models"]["model"].items()}
    overrides = (init_from(mae_checkpoint, freeze_steps=2), "training.max_steps=4", "optimizer.weight_decay=0.1")
    first = tokenizer_trainer(tmp_path, *overrides)
    decoder_before = first.model.decoder.pos_embed.detach().clone()
    first.fit(stop_at_step=2)
    assert first.parts["model"].updates == 2
    for name, param in encoder_params(first.model).items():
        assert torch.equal(param, pretrained[name]), f"{name} moved while frozen"
    assert not torch.equal(first.model.decoder.pos_embed, decoder_before)  # the rest trained
    second = tokenizer_trainer(tmp_path, *overrides)  # resumes at step 2, still loads nothing
    assert second.resumed_from is not None and second.state.step == 2
    assert (tmp_path / "train.log").read_text().count("initialised encoder from") == 1
    second.fit()
    moved = encoder_params(second.model)
    assert any(not torch.equal(param, pretrained[name]) for name, param in moved.items())
    third = tokenizer_trainer(tmp_path, *overrides, "training.max_steps=4")  # at the end: the checkpoint's weights
    for name, param in encoder_params(third.model).items():
        assert torch.equal(param, moved[name]), name
