"""Lhotse manifests as a dataset: the optional-extra error (always), manifests and shards round trip (with lhotse)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_training import DEMO, TINY  # tests/ is on sys.path under pytest

from transcoder.data import (
    AudioSkipWarning,
    LhotseCutsDataset,
    MissingExtraError,
    ShardIndexDataset,
    build_dataset,
    load_audio,
    write_dataset_shards,
)
from transcoder.training.config import load_config
from transcoder.training.trainer import Trainer
from transcoder.utils.distributed import init_distributed

SR = 16000
CLIP = 4000


def test_missing_lhotse_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lhotse", None)  # makes `import lhotse` fail, installed or not
    spec = {"target": "transcoder.data.LhotseCutsDataset", "params": {"cuts": str(tmp_path / "cuts.jsonl.gz")}}
    with pytest.raises(MissingExtraError, match=r'optional \'lhotse\' extra.*pip install -e "\.\[lhotse\]"'):
        build_dataset(spec, sample_rate=SR, clip_samples=CLIP, mode="train")
    # Through the trainer it is a config error naming the data block (exit code 2 from the CLI).
    config = load_config(DEMO, [*TINY, f"data.train={spec}".replace("'", ""), "data.val=null"])
    with pytest.raises(ValueError, match=r"data\.train: .*pip install -e \"\.\[lhotse\]\""):
        Trainer(config, tmp_path / "run", init_distributed("cpu"))


# --- with lhotse installed ------------------------------------------------------------------------
def make_corpus(tmp: Path, bad: bool = False) -> tuple[Path, Path, list[tuple[str, float, float]]]:
    """Two recordings (16 kHz FLAC, 22.05 kHz WAV) with 3 supervisions; manifests written like `lhotse prepare`."""
    lhotse = pytest.importorskip("lhotse")
    audio = tmp / "audio"
    audio.mkdir(parents=True)
    recordings, supervisions, segments = [], [], []
    for i, (sr, ext) in enumerate([(SR, "flac"), (22050, "wav")]):
        t = np.arange(int(sr * 2.0)) / sr
        path = audio / f"rec{i}.{ext}"
        sf.write(path, (0.3 * np.sin(2 * np.pi * (300 + 100 * i) * t * (1 + t))).astype(np.float32), sr)
        recording = lhotse.Recording.from_file(str(path), recording_id=f"rec{i}")
        recordings.append(recording)
        for j, (start, duration) in enumerate([(0.25, 0.5), (1.0, 0.75)][: 2 - i]):
            supervisions.append(lhotse.SupervisionSegment(id=f"rec{i}-{j}", recording_id=f"rec{i}", start=start,
                                                          duration=duration, speaker=f"spk{i}", text=f"TEXT {i} {j}"))
            segments.append((str(path), start, duration))
    if bad:
        broken = audio / "broken.flac"
        sf.write(broken, np.zeros(SR, dtype=np.float32), SR)
        recordings.append(lhotse.Recording.from_file(str(broken), recording_id="broken"))
        broken.write_bytes(b"fLaC" + bytes(300))  # corrupt after the manifest was written
        supervisions.append(lhotse.SupervisionSegment(id="broken-0", recording_id="broken", start=0.0, duration=0.5))
    rec_path, sup_path = tmp / "corpus_recordings_train.jsonl.gz", tmp / "corpus_supervisions_train.jsonl.gz"
    lhotse.RecordingSet.from_recordings(recordings).to_file(rec_path)
    lhotse.SupervisionSet.from_segments(supervisions).to_file(sup_path)
    return rec_path, sup_path, segments


def reference(path: str, start: float, duration: float, offset: int, n: int) -> torch.Tensor:
    """The segment's samples at 16 kHz, decoded from the file (start counted at the file's own rate)."""
    rate = sf.info(path).samplerate
    first = int(start * rate + 0.5)  # Lhotse rounds half up
    whole = load_audio(path)[first: first + int(duration * rate + 0.5)].numpy()
    from transcoder.data import resample

    return torch.from_numpy(resample(whole, rate, SR)[offset: offset + n].copy())


def test_recordings_and_supervisions_give_one_item_per_segment(tmp_path: Path) -> None:
    rec_path, sup_path, segments = make_corpus(tmp_path)
    ds = LhotseCutsDataset(recordings=str(rec_path), supervisions=str(sup_path), sample_rate=SR, clip_samples=CLIP,
                           mode="eval")
    assert ds.num_files == 3
    assert [ds.metadata(i)["text"] for i in range(3)] == ["TEXT 0 0", "TEXT 0 1", "TEXT 1 0"]
    assert [ds.metadata(i)["speaker"] for i in range(3)] == ["spk0", "spk0", "spk1"]
    expected_windows = sum(-(-round(d * SR) // CLIP) for _, _, d in segments)
    assert len(ds) == expected_windows
    for i in range(len(ds)):
        item = ds[i]
        file_index = item["file_index"]
        path, start, duration = segments[file_index]
        ref = reference(path, start, duration, item["offset"], item["num_valid"])
        # 16 kHz: the exact samples; 22.05 kHz: window-by-window resampling vs. the whole segment's (~1e-6).
        torch.testing.assert_close(item["audio"][: item["num_valid"]], ref, atol=1e-4 if "wav" in path else 0,
                                   rtol=0)


def test_cuts_manifest_round_trip_matches_recordings_and_supervisions(tmp_path: Path) -> None:
    lhotse = pytest.importorskip("lhotse")
    rec_path, sup_path, _ = make_corpus(tmp_path)
    cuts = lhotse.CutSet.from_manifests(recordings=lhotse.load_manifest(rec_path),
                                        supervisions=lhotse.load_manifest(sup_path))
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    from_cuts = build_dataset({"target": "transcoder.data.LhotseCutsDataset",
                               "params": {"cuts": str(tmp_path / "cuts.jsonl.gz")}},
                              sample_rate=SR, clip_samples=CLIP, mode="train")
    from_manifests = LhotseCutsDataset(recordings=str(rec_path), supervisions=str(sup_path), sample_rate=SR,
                                       clip_samples=CLIP)
    assert [from_cuts.metadata(i) for i in range(3)] == [from_manifests.metadata(i) for i in range(3)]
    for i in range(3):
        assert torch.equal(from_cuts[(i, 7)]["audio"], from_manifests[(i, 7)]["audio"])
    # Whole recordings (music / AudioSet style: one item per cut, no supervisions needed).
    whole = LhotseCutsDataset(recordings=str(rec_path), per_supervision=False, sample_rate=SR, clip_samples=CLIP,
                              mode="eval")
    assert whole.num_files == 2 and len(whole) == -(-2 * SR // CLIP) * 2


def test_bad_recording_is_skipped_and_counted(tmp_path: Path) -> None:
    rec_path, sup_path, _ = make_corpus(tmp_path, bad=True)
    ds = LhotseCutsDataset(recordings=str(rec_path), supervisions=str(sup_path), sample_rate=SR, clip_samples=CLIP)
    assert ds.num_files == 4
    with pytest.warns(AudioSkipWarning, match="broken.flac"):
        item = ds[(3, 0)]  # falls back to the next cut
    assert item["skipped"] == [str(tmp_path / "audio" / "broken.flac")] and ds.num_skipped == 1


def test_lhotse_cuts_to_shards_keep_segments(tmp_path: Path) -> None:
    rec_path, sup_path, _ = make_corpus(tmp_path)
    ds = LhotseCutsDataset(recordings=str(rec_path), supervisions=str(sup_path), sample_rate=SR, clip_samples=CLIP,
                           mode="eval")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_dataset_shards(ds, str(tmp_path / "shards"), max_records=2)
    index = ShardIndexDataset(str(tmp_path / "shards"), sample_rate=SR, clip_samples=CLIP, mode="eval")
    assert len(index) == len(ds)
    for i in range(len(ds)):
        assert torch.equal(index[i]["audio"], ds[i]["audio"]) and index[i]["offset"] == ds[i]["offset"]
