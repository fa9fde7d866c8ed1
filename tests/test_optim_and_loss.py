"""AdamW parameter groups, the warm-up + cosine schedule and the training loss."""

from __future__ import annotations

import math

import pytest
import torch

from transcoder.losses import AudioTokenizerLoss
from transcoder.models.audiobsq import AudioBSQModel
from transcoder.training.optim import build_param_groups, warmup_cosine_factor


def test_no_weight_decay_on_norms_biases_and_position_embeddings() -> None:
    model = AudioBSQModel(audioconfig={"input_size": 32, "input_length": 32, "width": 32, "layers": 1, "heads": 2,
                                       "conv_kernel_size": 3})
    decayed, plain = build_param_groups(model, weight_decay=0.05)
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    plain_names = {names[id(p)] for p in plain["params"]}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    assert {"encoder.pos_embed", "decoder.pos_embed", "encoder.norm.weight", "encoder.blocks.0.norm1.bias",
            "encoder.blocks.0.conv.batch_norm.weight", "quant_embed.bias"} <= plain_names
    assert {"encoder.patch_embed.weight", "encoder.blocks.0.attn.qkv.weight",
            "encoder.blocks.0.conv.depthwise_weight", "quant_embed.weight"} <= decayed_names
    assert len(plain_names) + len(decayed_names) == len(list(model.parameters()))


def test_warmup_then_cosine() -> None:
    factors = [warmup_cosine_factor(step, warmup_steps=10, max_steps=110, min_lr_ratio=0.1) for step in range(111)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(factors[:9], factors[1:10], strict=True))
    assert factors[60] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert factors[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))


def test_loss_terms_and_codebook_weight_ramp() -> None:
    loss_fn = AudioTokenizerLoss(l1_weight=1.0, l2_weight=0.5, codebook_weight=0.2, codebook_warmup_steps=100)
    recon, target = torch.zeros(2, 4, 3), torch.full((2, 4, 3), 0.5)
    quant = torch.tensor(-2.0)
    total, terms = loss_fn(recon, target, quant, step=50)
    assert float(terms["loss/l1"]) == pytest.approx(0.5) and float(terms["loss/l2"]) == pytest.approx(0.25)
    assert float(terms["loss/codebook_weight"]) == pytest.approx(0.1)
    assert float(total) == pytest.approx(0.5 + 0.5 * 0.25 + 0.1 * -2.0)
    assert float(loss_fn(recon, target, quant, step=1000)[1]["loss/codebook_weight"]) == pytest.approx(0.2)
    assert math.isclose(float(terms["loss/total"]), float(total))
    with pytest.raises(ValueError, match="l1_weight=0, l2_weight=0"):
        AudioTokenizerLoss(l1_weight=0, l2_weight=0)


def test_adversarial_terms() -> None:
    from transcoder.losses import discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss

    real, fake = [torch.full((2, 3), 2.0), torch.zeros(4)], [torch.full((2, 3), -2.0), torch.zeros(4)]
    # Confident and right on the first discriminator (0), undecided on the second (1 + 1).
    assert discriminator_hinge_loss(real, fake).item() == pytest.approx(1.0)
    assert generator_hinge_loss([torch.full((3,), 0.5)]).item() == pytest.approx(0.5)
    features = [[torch.ones(2, 2, requires_grad=True)]]
    assert feature_matching_loss(features, [[torch.zeros(2, 2)]]).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-empty"):
        generator_hinge_loss([])
