"""Listing never stops on one bad directory entry: symlink loops, dangling symlinks and names that are not
UTF-8 are skipped, named and counted, in the datasets, in prepare_shards and in training."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest
from test_training import DATA_ROOT, make_trainer

from transcoder.data import AudioFolderDataset, AudioSkipWarning, ShardManifest, write_dataset_shards
from transcoder.data.listing import scan_files


def bad_tree(root: Path) -> Path:
    """Two good FLACs plus a self-referencing symlink, a dangling symlink, a file and a folder whose names are
    not valid UTF-8, and a README symlink loop (not audio, still unlistable)."""
    root.mkdir(parents=True)
    flacs = sorted(DATA_ROOT.rglob("*.flac"))[:2]
    for i, flac in enumerate(flacs):
        shutil.copy(flac, root / f"good{i}.flac")
    os.symlink("loop.flac", root / "loop.flac")
    os.symlink("missing.flac", root / "dangling.flac")
    raw = os.fsencode(root)
    shutil.copy(flacs[0], raw + b"/bad\xff.flac")
    os.mkdir(raw + b"/dir\xfe")
    shutil.copy(flacs[0], raw + b"/dir\xfe/inside.flac")
    os.symlink("notes", root / "notes")  # a loop without an audio name
    return root


EXPECTED = {"loop.flac": "symlink loop", "dangling.flac": "dangling symlink", "bad\\xff.flac": "not valid UTF-8",
            "dir\\xfe": "folder name is not valid UTF-8", "notes": "symlink loop"}


def test_scan_files_skips_and_names_bad_entries(tmp_path: Path) -> None:
    root = bad_tree(tmp_path / "audio")
    problems: dict[str, str] = {}
    assert scan_files(str(root), [".flac"], problems=problems) == ["good0.flac", "good1.flac"]
    assert {Path(path).name: reason for path, reason in problems.items()}.keys() == EXPECTED.keys()
    for path, reason in problems.items():
        assert EXPECTED[Path(path).name] in reason, (path, reason)
    assert scan_files(str(root), [".flac"]) == ["good0.flac", "good1.flac"]  # without a problems dict too


def test_dataset_and_prepare_shards_count_and_list_them(tmp_path: Path) -> None:
    root = bad_tree(tmp_path / "audio")
    with pytest.warns(AudioSkipWarning) as caught:
        dataset = AudioFolderDataset(str(root), sample_rate=16000, clip_samples=4000)
    assert len(caught) == len(EXPECTED)  # one warning per entry, each naming it
    assert dataset.num_files == 2 and dataset.num_skipped == len(EXPECTED)
    assert str(root / "bad\\xff.flac") in dataset.skipped_files
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AudioSkipWarning)
        manifest = write_dataset_shards(dataset, str(tmp_path / "shards"))
    assert manifest.num_records == 2
    skipped = {Path(entry["name"]).name for entry in ShardManifest.load(str(tmp_path / "shards")).skipped}
    assert skipped == EXPECTED.keys()


def test_training_on_such_a_folder_logs_them_and_runs(tmp_path: Path) -> None:
    root = bad_tree(tmp_path / "audio")
    folder = f"{{target: transcoder.data.AudioFolderDataset, params: {{root: '{root}'}}}}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AudioSkipWarning)
        trainer = make_trainer(tmp_path / "run", f"data.train={folder}", "data.val=null", "training.max_steps=1")
    assert trainer.train_files["count"] == 2
    trainer.release()
    log = (tmp_path / "run" / "train.log").read_text()
    assert "data.train: 5 entries skipped while listing" in log and "bad\\xff.flac" in log


def test_an_error_that_cannot_be_rebuilt_with_one_argument_still_names_the_block(tmp_path: Path,
                                                                                monkeypatch) -> None:
    def fails(*_args, **_kwargs):
        raise UnicodeEncodeError("utf-8", "bad\udcff.flac", 3, 4, "surrogates not allowed")

    monkeypatch.setattr("transcoder.training.trainer.build_dataset", fails)
    with pytest.raises(ValueError, match=r"data.train: UnicodeEncodeError: .*surrogates not allowed"):
        make_trainer(tmp_path / "run")
