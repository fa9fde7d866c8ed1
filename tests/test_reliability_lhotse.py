"""A CutSet without supervisions under the default per_supervision says so instead of "no audio files"."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from test_data_lhotse import CLIP, SR, make_corpus

from transcoder.data import LhotseCutsDataset


def test_cuts_without_supervisions_are_counted_and_the_switch_is_named(tmp_path: Path) -> None:
    lhotse = pytest.importorskip("lhotse")
    rec_path, sup_path, _ = make_corpus(tmp_path)
    bare = tmp_path / "bare_cuts.jsonl.gz"
    lhotse.CutSet.from_manifests(recordings=lhotse.load_manifest(rec_path)).to_file(bare)
    with pytest.raises(FileNotFoundError, match=r"2 cut\(s\) of .*bare_cuts.jsonl.gz.* have no supervision.*"
                                                r"per_supervision: false uses whole cuts"):
        LhotseCutsDataset(str(bare), sample_rate=SR, clip_samples=CLIP)
    assert LhotseCutsDataset(str(bare), per_supervision=False, sample_rate=SR, clip_samples=CLIP).num_files == 2
    # Mixed: the cuts with supervisions are used, the others counted in a warning.
    supervised = lhotse.CutSet.from_manifests(recordings=lhotse.load_manifest(rec_path),
                                              supervisions=lhotse.load_manifest(sup_path))
    mixed = tmp_path / "mixed_cuts.jsonl.gz"
    lhotse.CutSet.from_cuts([*supervised.subset(first=1), *lhotse.load_manifest(bare).subset(last=1)]).to_file(mixed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = LhotseCutsDataset(str(mixed), sample_rate=SR, clip_samples=CLIP)
    assert dataset.num_files == 2  # the two supervisions of rec0
    assert any("1 cut(s)" in str(w.message) and "have no supervision" in str(w.message) for w in caught)
