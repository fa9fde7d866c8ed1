"""Nested bits: every prefix of a token is a usable code; truncation, padding, training and errors."""

from __future__ import annotations

import pytest
import torch

from transcoder.models.audiobsq import AudioBSQModel
from transcoder.models.quantizer.nested import NestedBits, truncate_indices

TINY = {"patch_size": 16, "width": 32, "layers": 1, "heads": 2, "input_size": 32, "input_length": 64,
        "use_conv_module": False}


def _model(nested: dict | None = None, seed: int = 0) -> AudioBSQModel:
    torch.manual_seed(seed)
    return AudioBSQModel(audioconfig=TINY, embed_dim=18, nested_bits=nested)


def test_keep_replaces_bits_past_each_width_with_the_fill() -> None:
    nested = NestedBits(embed_dim=6, widths=[2, 4, 6])
    codes = torch.ones(2, 3, 6)
    kept = nested.keep(codes, torch.tensor([2, 4]))
    assert kept[0, :, :2].eq(1).all() and kept[0, :, 2:].eq(0).all()
    assert kept[1, :, :4].eq(1).all() and kept[1, :, 4:].eq(0).all()


def test_widths_are_drawn_from_the_given_distribution_per_sample_or_per_batch() -> None:
    torch.manual_seed(0)
    per_sample = NestedBits(embed_dim=18, widths=[9, 18], probs=[0.0, 1.0])
    assert per_sample.draw_widths(64, torch.device("cpu")).eq(18).all()
    mixed = NestedBits(embed_dim=18, widths=[9, 18])
    drawn = mixed.draw_widths(4000, torch.device("cpu"))
    assert 0.45 < drawn.eq(9).float().mean() < 0.55
    per_batch = NestedBits(embed_dim=18, widths=[9, 12, 18], per="batch")
    for _ in range(5):
        assert per_batch.draw_widths(8, torch.device("cpu")).unique().numel() == 1


@pytest.mark.parametrize("bits", [9, 12, 15])
def test_encoding_at_fewer_bits_keeps_the_first_bits_and_decodes_exactly(bits: int) -> None:
    model = _model({"widths": [9, 12, 15, 18]}).eval()
    mel = torch.rand(2, 64, 32) * 2 - 1
    with torch.no_grad():
        _, _, full = model.encode(mel)
        codes, _, info = model.encode(mel, bits=bits)
        assert codes.shape[-1] == bits and info["bits"] == bits
        assert torch.equal(info["indices"], truncate_indices(full["indices"], bits))
        assert int(info["indices"].max()) < 2**bits
        direct = model.decode(codes, info["grid"])
        from_indices = model.decode_indices(info["indices"], bits=bits)
    assert torch.equal(direct, from_indices)


def test_fewer_bits_decode_differently_from_the_full_code() -> None:
    model = _model({"widths": [9, 18]}).eval()
    mel = torch.rand(1, 64, 32) * 2 - 1
    with torch.no_grad():
        _, _, info = model.encode(mel)
        full = model.decode_indices(info["indices"])
        nine = model.decode_indices(truncate_indices(info["indices"], 9), bits=9)
    assert not torch.allclose(full, nine)


def test_a_model_without_nested_bits_refuses_fewer_bits() -> None:
    model = _model().eval()
    with pytest.raises(ValueError, match="nested_bits"):
        model.encode(torch.zeros(1, 64, 32), bits=9)
    with pytest.raises(ValueError, match="nested_bits"):
        model.decode(torch.zeros(1, 8, 9))


def test_training_decodes_from_the_drawn_width_only() -> None:
    model = _model({"widths": [9], "per": "batch"}).train()
    mel = torch.rand(2, 64, 32) * 2 - 1
    recon, _, info = model(mel)
    assert info["nested_widths"].eq(9).all()
    codes, _, info = model.encode(mel)
    flipped = torch.cat([codes[..., :9], -codes[..., 9:]], dim=-1)  # other values of the dropped bits
    expected = model.decode(model.nested_bits.keep(flipped, torch.full((2,), 9)), info["grid"])
    assert torch.allclose(recon, expected, atol=1e-6)


def test_learned_fill_is_trained_and_saved() -> None:
    model = _model({"widths": [9, 18], "probs": [1.0, 0.0], "fill": "learned"}).train()
    recon, _, _ = model(torch.rand(2, 64, 32) * 2 - 1)
    recon.square().mean().backward()
    assert model.nested_bits.fill.grad[9:].abs().sum() > 0
    assert "nested_bits.fill" in model.state_dict()


def test_a_zero_fill_model_has_the_same_weights_as_a_plain_one() -> None:
    plain, nested = _model(seed=1), _model({"widths": [9, 18]}, seed=1)
    assert plain.state_dict().keys() == nested.state_dict().keys()
    nested.load_state_dict(plain.state_dict())


@pytest.mark.parametrize("bad, message", [
    ({"widths": [9, 19]}, "widths"), ({"widths": [12, 9]}, "increasing"), ({"widths": [9], "probs": [1, 2]}, "probs"),
    ({"widths": [9], "per": "token"}, "per"), ({"widths": [9], "fill": "mean"}, "fill"),
])
def test_bad_nested_specs_name_the_key(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _model(bad)
