"""Datasets: the three layouts, train crops, eval windows, bad files, collation, YAML construction."""

from __future__ import annotations

import json
import math
import os
import time
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from torch.utils.data import DataLoader

from transcoder.data import (
    AudioFolderDataset,
    AudioSkipWarning,
    CommonVoiceDataset,
    LibriSpeechDataset,
    build_dataset,
    collate_audio,
    load_audio,
)

SR = 16000
CV_HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment"


def noise(seconds: float, sr: int = SR, seed: int = 0, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = 0.1 * rng.standard_normal((int(sr * seconds), channels))
    return (x[:, 0] if channels == 1 else x).astype(np.float32)


def make_librispeech(base, split: str = "dev-clean") -> dict[str, str]:
    """``base/LibriSpeech/<split>/<spk>/<chap>/`` with 2 speakers, 3 utterances; returns id -> text."""
    texts = {"84-121123-0000": "GO DO YOU HEAR", "84-121123-0001": "BUT IN LESS THAN FIVE MINUTES",
             "174-50561-0000": "FORGOTTEN TOO THE NAME OF GILLIAN"}
    for i, (utt, text) in enumerate(texts.items()):
        spk, chap, _ = utt.split("-")
        folder = base / "LibriSpeech" / split / spk / chap
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{utt}.flac", noise(0.5 + 0.25 * i, seed=i), SR)
        with open(folder / f"{spk}-{chap}.trans.txt", "a") as fh:
            fh.write(f"{utt} {text}\n")
    return texts


def make_common_voice(base) -> None:
    (base / "clips").mkdir(parents=True)
    rows = [("c1", "common_voice_en_2.mp3", 'He said "hi".'), ("c2", "common_voice_en_1.mp3", "Second one.")]
    for i, (_, name, _) in enumerate(rows):
        sf.write(base / "clips" / name, noise(0.6, seed=i), SR, format="MP3")
    lines = [CV_HEADER + "\tvariant"] + [f"{c}\t{p}\t{s}\t2\t0\t\t\t\ten\t\t" for c, p, s in rows]
    (base / "train.tsv").write_text("\n".join(lines) + "\n")
    (base / "dev.tsv").write_text(CV_HEADER + "\n")


def make_mixed_folder(root) -> list[str]:
    """Mixed formats, rates, widths and channels, nested; plus files that must be ignored."""
    (root / "a" / "b").mkdir(parents=True)
    sf.write(root / "a" / "stereo44k.wav", noise(0.5, 44100, channels=2), 44100)
    sf.write(root / "a" / "b" / "hi48k.flac", noise(0.5, 48000, seed=1), 48000, subtype="PCM_24")
    sf.write(root / "u8.WAV", noise(0.5, seed=2), SR, subtype="PCM_U8")
    sf.write(root / "speech.mp3", noise(0.5, 22050, seed=3), 22050, format="MP3")
    sf.write(root / "a" / "voice.ogg", noise(0.5, seed=4), SR, format="OGG", subtype="VORBIS")
    sf.write(root / "a" / "._stereo44k.wav", noise(0.1), SR)  # macOS resource fork: hidden
    (root / "notes.txt").write_text("not audio")
    return ["a/b/hi48k.flac", "a/stereo44k.wav", "a/voice.ogg", "speech.mp3", "u8.WAV"]


@pytest.mark.parametrize("root_level", ["parent", "librispeech"])
def test_librispeech_layout_metadata_and_both_root_forms(tmp_path, root_level):
    texts = make_librispeech(tmp_path)
    root = tmp_path if root_level == "parent" else tmp_path / "LibriSpeech"
    ds = LibriSpeechDataset(str(root), splits=["dev-clean"], clip_samples=4000)
    assert len(ds) == 3
    items = [{**item, **ds.metadata(item["file_index"])} for item in (ds[(i, 0)] for i in range(3))]
    assert "transcript" not in ds[(0, 0)]  # metadata is not batched every step
    assert [it["utterance_id"] for it in items] == ["174-50561-0000", "84-121123-0000", "84-121123-0001"]
    for it in items:
        assert it["transcript"] == texts[it["utterance_id"]]
        assert it["speaker_id"] == int(it["utterance_id"].split("-")[0])
        assert it["audio"].shape == (4000,) and it["audio"].dtype == torch.float32
        assert it["path"].endswith(f"{it['utterance_id']}.flac") and it["skipped"] == []


def test_librispeech_missing_split_error_names_paths_and_layout(tmp_path):
    make_librispeech(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        LibriSpeechDataset(str(tmp_path), splits="train-clean-100")
    message = str(info.value)
    assert "train-clean-100" in message and str(tmp_path) in message
    assert "<speaker>-<chapter>-<utterance>.flac" in message and "dev-clean" in message


def test_common_voice_tsv_metadata_and_header_errors(tmp_path):
    make_common_voice(tmp_path)
    ds = CommonVoiceDataset(str(tmp_path), split="train", clip_samples=8000)
    assert len(ds) == 2
    first = ds[(0, 1)]
    assert first["path"].endswith("clips/common_voice_en_1.mp3")  # sorted by path
    meta = ds.metadata(first["file_index"])
    assert (meta["sentence"], meta["client_id"]) == ("Second one.", "c2")
    assert ds.metadata(1)["sentence"] == 'He said "hi".'  # quotes kept verbatim
    assert first["audio"].shape == (8000,)

    with pytest.raises(FileNotFoundError, match=r"no audio files.*dev\.tsv"):
        CommonVoiceDataset(str(tmp_path), split="dev")
    with pytest.raises(FileNotFoundError, match=r"test\.tsv.*splits present: \['dev', 'train'\]"):
        CommonVoiceDataset(str(tmp_path), split="test")
    (tmp_path / "other.tsv").write_text("client_id\tfilename\tsentence\nc\tx.mp3\thello\n")
    with pytest.raises(ValueError, match=r"other\.tsv.*\['path'\]"):
        CommonVoiceDataset(str(tmp_path), split="other")


def test_audio_folder_finds_all_formats_and_decodes_them_alike(tmp_path):
    expected = make_mixed_folder(tmp_path)
    ds = AudioFolderDataset(str(tmp_path), clip_samples=SR)
    assert [ds.path(i)[len(str(tmp_path)) + 1:] for i in range(len(ds))] == expected
    batch = collate_audio([ds[(i, 3)] for i in range(len(ds))])
    assert batch["audio"].shape == (5, SR) and batch["audio"].dtype == torch.float32
    assert torch.all(batch["num_valid"] >= SR // 2 - 50) and torch.all(batch["num_valid"] <= SR // 2 + 1200)
    assert torch.all(batch["audio"].abs().amax(1) > 0.05)  # every format decoded to real signal
    only_wav = AudioFolderDataset(str(tmp_path), extensions=["wav"])
    assert only_wav.num_files == 2  # case-insensitive, hidden file ignored


def test_empty_root_error_names_root_layout_and_extensions(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError) as info:
        AudioFolderDataset(str(tmp_path))
    assert str(tmp_path) in str(info.value) and ".flac" in str(info.value) and ".mp3" in str(info.value)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        AudioFolderDataset(str(tmp_path / "nope"))


def test_train_crops_are_reproducible_from_index_and_seed(tmp_path):
    sf.write(tmp_path / "long.flac", noise(3.0), SR)
    ds = AudioFolderDataset(str(tmp_path), clip_samples=4000)
    whole = load_audio(str(tmp_path / "long.flac"), SR)
    a, b = ds[(0, 1234)], ds[(0, 1234)]
    assert torch.equal(a["audio"], b["audio"]) and a["offset"] == b["offset"]
    expected_offset = int(np.random.default_rng(1234).integers(0, whole.shape[0] - 4000 + 1))
    assert a["offset"] == expected_offset and a["num_valid"] == 4000
    torch.testing.assert_close(a["audio"], whole[expected_offset: expected_offset + 4000])
    offsets = {ds[(0, seed)]["offset"] for seed in range(20)}
    assert len(offsets) > 15
    unseeded = {ds[0]["offset"] for _ in range(10)}
    assert len(unseeded) > 1
    assert ds[np.int64(0)]["audio"].shape == (4000,)


def test_short_files_are_zero_padded_with_num_valid(tmp_path):
    sf.write(tmp_path / "short.wav", noise(0.1, 44100), 44100)
    ds = AudioFolderDataset(str(tmp_path), clip_samples=SR)
    item = ds[(0, 5)]
    assert item["num_valid"] == 1600 and item["offset"] == 0
    assert torch.all(item["audio"][1600:] == 0) and item["audio"][:1600].abs().max() > 0


def test_eval_windows_cover_every_file_exactly(tmp_path):
    lengths = {"a.flac": 1.0, "b.wav": 0.3, "c.mp3": 2.05}
    for i, (name, seconds) in enumerate(lengths.items()):
        sf.write(tmp_path / name, noise(seconds, seed=i), SR, format="MP3" if name.endswith("mp3") else None)
    clip = 4000
    ds = AudioFolderDataset(str(tmp_path), clip_samples=clip, mode="eval")
    totals = {name: load_audio(str(tmp_path / name), SR).shape[0] for name in lengths}
    assert len(ds) == sum(math.ceil(n / clip) for n in totals.values())
    pieces: dict[str, list[torch.Tensor]] = {}
    for i in range(len(ds)):
        item = ds[(i, 99)]  # the seed is ignored in eval mode
        assert item["offset"] == len(pieces.get(item["path"], [])) * clip
        pieces.setdefault(item["path"], []).append(item["audio"][: item["num_valid"]])
        assert torch.all(item["audio"][item["num_valid"]:] == 0)
    for name, total in totals.items():
        joined = torch.cat(pieces[str(tmp_path / name)])
        assert joined.shape[0] == total
        torch.testing.assert_close(joined, load_audio(str(tmp_path / name), SR))


def make_bad_files(root) -> list[str]:
    sf.write(root / "empty.wav", np.zeros(0, np.float32), SR)
    (root / "garbage.flac").write_bytes(b"\x00garbage" * 50)
    x = noise(0.5)
    x[::100] = np.inf  # in every crop: a file is only checked where it is decoded
    sf.write(root / "inf.wav", x, SR, subtype="FLOAT")
    sf.write(root / "src.flac", noise(0.5), SR)
    data = bytearray((root / "src.flac").read_bytes())
    (root / "src.flac").unlink()
    data[21] &= 0xF0  # STREAMINFO total_samples = 0: libsndfile reports 2^63-1 frames
    data[22:26] = b"\0\0\0\0"
    (root / "unknown_length.flac").write_bytes(bytes(data))
    return [str(root / n) for n in ("empty.wav", "garbage.flac", "inf.wav", "unknown_length.flac")]


def test_bad_files_are_skipped_warned_counted_and_reported_in_batches(tmp_path):
    bad = make_bad_files(tmp_path)
    sf.write(tmp_path / "good1.wav", noise(0.5, seed=1), SR)
    sf.write(tmp_path / "good2.wav", noise(0.5, seed=2), SR)
    ds = AudioFolderDataset(str(tmp_path), clip_samples=2000)
    assert len(ds) == 6  # listing does not probe files
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[(i, 0)] for i in range(len(ds))]
    skip_warnings = [w for w in caught if issubclass(w.category, AudioSkipWarning)]
    assert len(skip_warnings) == 4  # one per bad file, even though several items fell back onto them
    for path in bad:
        assert sum(path in str(w.message) for w in skip_warnings) == 1
    assert ds.num_skipped == 4 and sorted(ds.skipped_files) == sorted(bad)
    assert "NaN or Inf" in ds.skip_reasons[str(tmp_path / "inf.wav")]
    assert "unknown length" in ds.skip_reasons[str(tmp_path / "unknown_length.flac")]
    assert all(it["path"].endswith(("good1.wav", "good2.wav")) for it in items)
    # Sorted order: empty, garbage, good1, good2, inf, unknown_length. Each bad item falls back to
    # the next index, wrapping around at the end.
    assert items[0]["skipped"] == bad[:2] and items[0]["path"].endswith("good1.wav")
    assert items[4]["skipped"] == [bad[2], bad[3], bad[0], bad[1]]
    assert items[4]["path"].endswith("good1.wav")
    assert items[2]["skipped"] == [] and items[3]["path"].endswith("good2.wav")
    batch = collate_audio(items)
    assert batch["audio"].shape == (6, 2000)
    assert sorted(set(batch["skipped"])) == sorted(bad)


def test_skips_reach_the_main_process_through_worker_batches(tmp_path):
    bad = make_bad_files(tmp_path)
    sf.write(tmp_path / "good.wav", noise(0.5), SR)
    ds = AudioFolderDataset(str(tmp_path), clip_samples=1000)
    loader = DataLoader(ds, batch_size=5, num_workers=2, collate_fn=collate_audio,
                        sampler=[(i, i) for i in range(len(ds))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AudioSkipWarning)
        seen = [path for batch in loader for path in batch["skipped"]]
    assert set(seen) == set(bad)
    assert ds.num_skipped == 0  # the workers' counters are their own


def test_all_files_bad_raises_instead_of_looping(tmp_path):
    make_bad_files(tmp_path)
    ds = AudioFolderDataset(str(tmp_path), clip_samples=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AudioSkipWarning)
        with pytest.raises(RuntimeError, match="consecutive items"):
            ds[0]
        (tmp_path / "inf.wav").unlink()  # its header is fine: eval mode would count its windows
        with pytest.raises(RuntimeError, match="none of the 3 files"):
            len(AudioFolderDataset(str(tmp_path), clip_samples=1000, mode="eval"))


def test_eval_mode_skips_unreadable_headers_when_counting_windows(tmp_path):
    bad = make_bad_files(tmp_path)
    sf.write(tmp_path / "good.wav", noise(0.5), SR)
    ds = AudioFolderDataset(str(tmp_path), clip_samples=3000, mode="eval")
    with pytest.warns(AudioSkipWarning):
        # good.wav and inf.wav: inf.wav has a valid header; it fails (num_valid 0) only when decoded.
        assert len(ds) == 2 * math.ceil(8000 / 3000)
    assert sorted(ds.skipped_files) == sorted(set(bad) - {str(tmp_path / "inf.wav")})


def make_partly_bad_files(root) -> tuple[str, str, str]:
    """Headers fine, later data bad: a 6 s WAV with a NaN at 4 s and a 6 s FLAC cut at ~3.6 s; plus a good
    3 s WAV. With 2 s windows, window 2 of the WAV and windows 1-2 of the FLAC fail; window 0 decodes."""
    x = noise(6.0)
    x[4 * SR + 10] = np.nan
    sf.write(root / "a_nan.wav", x, SR, subtype="FLOAT")
    sf.write(root / "b_good.wav", noise(3.0, seed=1), SR)
    sf.write(root / "src.flac", noise(6.0, seed=2), SR)
    data = (root / "src.flac").read_bytes()
    (root / "src.flac").unlink()
    (root / "c_cut.flac").write_bytes(data[: int(len(data) * 0.6)])
    return str(root / "a_nan.wav"), str(root / "b_good.wav"), str(root / "c_cut.flac")


def test_eval_window_that_fails_keeps_its_place_with_zero_valid_samples(tmp_path):
    nan_wav, good, cut_flac = make_partly_bad_files(tmp_path)
    clip = 2 * SR
    ds = AudioFolderDataset(str(tmp_path), clip_samples=clip, mode="eval")
    assert len(ds) == 3 + 2 + 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))]
        again = ds[0]  # an earlier window of a file that failed later is still read (no blacklist)
    # Every (file, window) appears exactly once, in order: nothing is replaced by another file's window.
    assert [(it["path"], it["offset"]) for it in items] == (
        [(nan_wav, w * clip) for w in range(3)] + [(good, w * clip) for w in range(2)]
        + [(cut_flac, w * clip) for w in range(3)])
    failed = {2, 6, 7}
    for i, it in enumerate(items):
        if i in failed:
            assert it["num_valid"] == 0 and it["skipped"] == [it["path"]]
            assert it["audio"].shape == (clip,) and torch.all(it["audio"] == 0)
        else:
            assert it["num_valid"] > 0 and it["skipped"] == [] and it["audio"].abs().max() > 0.05
    assert items[4]["num_valid"] == SR  # the good file's padded last window
    assert again["num_valid"] == clip and torch.equal(again["audio"], items[0]["audio"])
    skip_warnings = [str(w.message) for w in caught if issubclass(w.category, AudioSkipWarning)]
    assert len(skip_warnings) == 2 and ds.num_skipped == 2  # once per file, not per window
    assert "NaN or Inf" in ds.skip_reasons[nan_wav] and cut_flac in ds.skip_reasons
    batch = collate_audio(items[1:4])
    assert batch["num_valid"].tolist() == [clip, 0, clip] and batch["skipped"] == [nan_wav]


def _crop_hits(seed: int, total: int, clip: int, sample: int) -> bool:
    offset = int(np.random.default_rng(seed).integers(0, total - clip + 1))
    return offset <= sample < offset + clip


def test_train_failed_crop_does_not_blacklist_the_file(tmp_path):
    nan_wav, good, _ = make_partly_bad_files(tmp_path)
    (tmp_path / "c_cut.flac").unlink()
    clip = 2 * SR
    bad_seed = next(s for s in range(100) if _crop_hits(s, 6 * SR, clip, 4 * SR + 10))
    good_seed = next(s for s in range(100) if not _crop_hits(s, 6 * SR, clip, 4 * SR + 10))
    fresh = AudioFolderDataset(str(tmp_path), clip_samples=clip)[(0, good_seed)]
    ds = AudioFolderDataset(str(tmp_path), clip_samples=clip)
    with pytest.warns(AudioSkipWarning, match="NaN or Inf"):
        fallback = ds[(0, bad_seed)]
    assert fallback["path"] == good and fallback["skipped"] == [nan_wav]  # train: batch size kept
    # The same file's good crop is still served, identical to a dataset that never saw the failure.
    item = ds[(0, good_seed)]
    assert item["path"] == nan_wav and item["skipped"] == []
    assert item["offset"] == fresh["offset"] and torch.equal(item["audio"], fresh["audio"])
    assert ds[(0, bad_seed)]["skipped"] == [nan_wav]  # retried, fails again
    assert ds.num_skipped == 1


def test_train_header_failure_is_cached_not_retried(tmp_path, monkeypatch):
    import transcoder.data.base as base

    (tmp_path / "a_garbage.flac").write_bytes(b"\x00garbage" * 50)
    sf.write(tmp_path / "b_good.wav", noise(0.5), SR)
    opened: list[str] = []
    original = base.AudioFile
    monkeypatch.setattr(base, "AudioFile", lambda path: opened.append(os.path.basename(path)) or original(path))
    ds = AudioFolderDataset(str(tmp_path), clip_samples=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AudioSkipWarning)
        for seed in range(3):
            assert ds[(0, seed)]["path"].endswith("b_good.wav")
    assert opened.count("a_garbage.flac") == 1 and opened.count("b_good.wav") == 3


def test_keys_and_index_errors(tmp_path):
    sf.write(tmp_path / "a.wav", noise(0.2), SR)
    ds = AudioFolderDataset(str(tmp_path), clip_samples=1000)
    assert ds[-1]["path"] == ds[0]["path"]
    with pytest.raises(IndexError, match="out of range"):
        ds[1]
    with pytest.raises(TypeError, match=r"\(index, seed\)"):
        ds[(0, 1, 2)]
    with pytest.raises(TypeError, match=r"\(index, seed\)"):
        ds["0"]
    with pytest.raises(ValueError, match="mode='test'"):
        AudioFolderDataset(str(tmp_path), mode="test")


def age_tree(root, seconds: float = 3600.0) -> None:
    """Set the mtime of every folder and file under ``root`` (and ``root``) ``seconds`` into the past, as
    for a corpus written long before its listing is cached (fresh stamps are not trusted, see listing.py)."""
    old = int((time.time() - seconds) * 1e9)
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            os.utime(os.path.join(folder, name), ns=(old, old), follow_symlinks=False)
    os.utime(root, ns=(old, old))


def test_file_list_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_librispeech(data)
    age_tree(data)
    cache = str(tmp_path / "cache" / "list.json")
    first = LibriSpeechDataset(str(data), "dev-clean", file_list_cache=cache)
    calls = []
    original = LibriSpeechDataset._scan
    monkeypatch.setattr(LibriSpeechDataset, "_scan", lambda self: calls.append(1) or original(self))
    second = LibriSpeechDataset(str(data), "dev-clean", file_list_cache=cache)
    assert calls == []
    assert [second.metadata(i)["transcript"] for i in range(3)] == [first.metadata(i)["transcript"] for i in range(3)]
    make_librispeech(data, split="test-clean")
    third = LibriSpeechDataset(str(data), ["dev-clean", "test-clean"], file_list_cache=cache)
    assert calls == [1] and len(third) == 6


def test_file_list_cache_sees_added_and_removed_files(tmp_path, monkeypatch):
    root = tmp_path / "audio"
    (root / "a" / "b").mkdir(parents=True)
    sf.write(root / "x.wav", noise(0.1), SR)
    sf.write(root / "a" / "b" / "y.wav", noise(0.1), SR)
    age_tree(root)
    cache = str(tmp_path / "list.json")
    scans = []
    original = AudioFolderDataset._scan
    monkeypatch.setattr(AudioFolderDataset, "_scan", lambda self: scans.append(1) or original(self))

    def listing() -> list[str]:
        ds = AudioFolderDataset(str(root), file_list_cache=cache)
        return [ds.path(i)[len(str(root)) + 1:] for i in range(ds.num_files)]

    assert listing() == ["a/b/y.wav", "x.wav"] and len(scans) == 1
    assert listing() == ["a/b/y.wav", "x.wav"] and len(scans) == 1  # nothing changed: cache reused
    stamps = json.loads(open(cache).read())["stamps"]
    assert sorted(stamps) == sorted(str(p) for p in (root, root / "a", root / "a" / "b"))  # folders only
    sf.write(root / "a" / "b" / "z.wav", noise(0.1), SR)  # added deep down: only that folder changes
    assert listing() == ["a/b/y.wav", "a/b/z.wav", "x.wav"] and len(scans) == 2
    age_tree(root)
    assert listing() == ["a/b/y.wav", "a/b/z.wav", "x.wav"] and len(scans) == 3  # fresh stamps not trusted
    assert listing() == ["a/b/y.wav", "a/b/z.wav", "x.wav"] and len(scans) == 3
    for name in ("y.wav", "z.wav"):
        (root / "a" / "b" / name).unlink()
    os.rmdir(root / "a" / "b")  # a stamped folder disappears
    assert listing() == ["x.wav"] and len(scans) == 4


def test_librispeech_cache_sees_new_utterances_and_edited_transcripts(tmp_path):
    data = tmp_path / "data"
    make_librispeech(data)
    age_tree(data)
    cache = str(tmp_path / "list.json")
    assert len(LibriSpeechDataset(str(data), "dev-clean", file_list_cache=cache)) == 3
    chapter = data / "LibriSpeech" / "dev-clean" / "84" / "121123"
    sf.write(chapter / "84-121123-0002.flac", noise(0.5), SR)
    ds = LibriSpeechDataset(str(data), "dev-clean", file_list_cache=cache)
    assert len(ds) == 4 and ds.metadata(3)["utterance_id"] == "84-121123-0002"
    age_tree(data)
    LibriSpeechDataset(str(data), "dev-clean", file_list_cache=cache)
    with open(chapter / "84-121123.trans.txt", "a") as fh:  # in place: the folder's mtime does not change
        fh.write("84-121123-0002 A NEW LINE\n")
    ds = LibriSpeechDataset(str(data), "dev-clean", file_list_cache=cache)
    assert ds.metadata(3)["transcript"] == "A NEW LINE"


def test_symlinked_files_are_listed_once_and_symlinked_folders_followed(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    (outside / "corpus").mkdir(parents=True)
    sf.write(root / "full.flac", noise(0.1), SR)
    sf.write(outside / "ext.wav", noise(0.1), SR)
    sf.write(outside / "corpus" / "c.wav", noise(0.1), SR)
    os.symlink(root / "full.flac", root / "sub" / "link.flac")  # target listed: dropped
    os.symlink(outside / "ext.wav", root / "sub" / "ext1.wav")  # target outside root: kept
    os.symlink(outside / "ext.wav", root / "sub" / "ext2.wav")  # same target as ext1.wav: dropped
    os.symlink(outside / "corpus", root / "corpus")  # symlinked corpus folder: followed
    os.symlink(root / "sub", root / "again")  # folder already walked: not listed twice
    os.symlink(tmp_path / "missing.wav", root / "broken.wav")  # broken link: ignored
    ds = AudioFolderDataset(str(root))
    assert [ds.path(i)[len(str(root)) + 1:] for i in range(ds.num_files)] == [
        "corpus/c.wav", "full.flac", "sub/ext1.wav"]


YAML_SPECS = """
librispeech: {target: transcoder.data.LibriSpeechDataset, params: {root: ROOT/ls, splits: [dev-clean]}}
common_voice: {target: transcoder.data.CommonVoiceDataset, params: {root: ROOT/cv, split: train}}
folder: {target: transcoder.data.AudioFolderDataset, params: {root: ROOT/my_audio/val, extensions: [.mp3, .wav]}}
"""


def test_build_dataset_from_yaml_for_every_layout(tmp_path):
    make_librispeech(tmp_path / "ls")
    make_common_voice(tmp_path / "cv")
    (tmp_path / "my_audio" / "val").mkdir(parents=True)
    make_mixed_folder(tmp_path / "my_audio" / "val")
    specs = yaml.safe_load(YAML_SPECS.replace("ROOT", str(tmp_path)))
    sizes = {"librispeech": 3, "common_voice": 2, "folder": 3}
    for name, spec in specs.items():
        ds = build_dataset(spec, sample_rate=22050, clip_samples=3000, mode="train")
        assert len(ds) == sizes[name], name
        assert (ds.sample_rate, ds.clip_samples, ds.mode) == (22050, 3000, "train")
        assert ds[(0, 0)]["audio"].shape == (3000,)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"target": "transcoder.data.NoSuchDataset", "params": {}}, r"no 'NoSuchDataset'.*LibriSpeechDataset"),
        ({"target": "nosuchmodule.Dataset"}, "cannot import module 'nosuchmodule'"),
        ({"target": "transcoder.data.AudioFolderDataset", "params": {"root": "x", "extension": [".wav"]}},
         r"unknown param\(s\) \['extension'\]; valid params: \[.*'extensions'"),
        ({"target": "transcoder.data.LibriSpeechDataset", "params": {"splits": ["dev-clean"]}},
         r"missing required param\(s\) \['root'\]"),
        ({"target": "transcoder.data.AudioFolderDataset", "params": {"root": "x", "sample_rate": 8000}},
         r"params.sample_rate=8000 contradicts sample_rate=16000"),
        ({"target": "transcoder.data.AudioFolderDataset", "parms": {"root": "x"}}, r"unknown: \['parms'\]"),
        ({"target": "transcoder.data.collate_audio", "params": {}}, "does not take"),
    ],
)
def test_build_dataset_errors_name_the_key(spec, message):
    with pytest.raises(ValueError, match=message):
        build_dataset(spec, sample_rate=16000, clip_samples=1000, mode="train")
