"""SpecAugment: masks only in train mode, bounded band widths, per-sample masks, torch RNG."""

from __future__ import annotations

import pytest
import torch

from transcoder.data import SpecAugment


def masked_cells(out: torch.Tensor, fill: float) -> torch.Tensor:
    return out == fill


def test_eval_mode_is_identity_and_train_mode_masks_a_copy():
    aug = SpecAugment(time_masks=2, time_width=20, freq_masks=2, freq_width=10)
    x = torch.rand(4, 200, 64)  # values in [0, 1): never equal to the -1 fill
    original = x.clone()
    aug.eval()
    assert aug(x) is x
    aug.train()
    torch.manual_seed(0)
    out = aug(x)
    torch.testing.assert_close(x, original)  # input untouched: the clean target stays clean
    mask = masked_cells(out, -1.0)
    assert mask.any()
    torch.testing.assert_close(out[~mask], x[~mask])


def test_masks_are_full_bands_of_bounded_width():
    aug = SpecAugment(time_masks=1, time_width=15, freq_masks=1, freq_width=7, fill_value=-5.0).train()
    torch.manual_seed(1)
    x = torch.zeros(64, 120, 40)
    mask = masked_cells(aug(x), -5.0)
    time_rows = mask.all(dim=2)  # (B, T): frames masked across every bin
    freq_cols = mask.all(dim=1)  # (B, F): bins masked across every frame
    # Every masked cell belongs to a full time band or a full frequency band.
    assert torch.equal(mask, time_rows[:, :, None] | freq_cols[:, None, :])
    assert time_rows.sum(1).max().item() <= 15 and freq_cols.sum(1).max().item() <= 7
    assert time_rows.sum(1).max().item() >= 10  # widths are drawn up to the maximum
    # One contiguous band per axis: the mask changes value at most twice along the axis.
    assert ((time_rows[:, 1:] != time_rows[:, :-1]).sum(1) <= 2).all()
    assert ((freq_cols[:, 1:] != freq_cols[:, :-1]).sum(1) <= 2).all()
    # Vectorised over the batch, yet different per sample.
    assert len({tuple(row.nonzero().flatten().tolist()) for row in time_rows}) > 10


def test_reproducible_with_torch_seed_and_generator():
    aug = SpecAugment().train()
    x = torch.zeros(3, 300, 80)
    torch.manual_seed(7)
    a = aug(x)
    torch.manual_seed(7)
    b = aug(x)
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(3)
    c = aug(x, generator=g)
    g.manual_seed(3)
    assert torch.equal(c, aug(x, generator=g))


def test_zero_masks_and_widths_larger_than_input():
    x = torch.rand(2, 10, 8)
    assert torch.equal(SpecAugment(time_masks=0, freq_masks=0).train()(x), x)
    out = SpecAugment(time_masks=3, time_width=50, freq_masks=0).train()(x)
    assert out.shape == x.shape


def test_rejects_bad_settings_and_shapes():
    with pytest.raises(ValueError, match="time_width"):
        SpecAugment(time_width=-1)
    with pytest.raises(ValueError, match=r"\(B, T, F\)"):
        SpecAugment().train()(torch.zeros(10, 8))
