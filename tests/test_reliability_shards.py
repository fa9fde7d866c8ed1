"""Shard readers compare what a shard yields with its manifest and name the records a damaged member header
hides; member keys holding "/" work in evaluation like in training; a full disk while writing shards leaves
nothing incomplete under a final name."""

from __future__ import annotations

import errno
import io
import json
import os
import tarfile
import warnings
from pathlib import Path

import pytest
import soundfile as sf
from test_data_shards import CLIP, SR, make_shards

from transcoder.data import AudioSkipWarning, ShardIndexDataset, ShardManifest, ShardStreamDataset
from transcoder.data.shard_format import ShardWriter


def damage_member_header(shard: Path, record: int) -> None:
    """Overwrite 4 KB from the header of record ``record``'s first member (tarfile then ends the shard there,
    without an error)."""
    with tarfile.open(shard) as tar:
        offset = [m for m in tar.getmembers() if m.name.endswith(".json")][record].offset
    raw = bytearray(shard.read_bytes())
    raw[offset: offset + 4096] = os.urandom(4096)
    shard.write_bytes(bytes(raw))


def test_both_readers_name_the_records_a_damaged_header_hides(tmp_path: Path) -> None:
    shards, _ = make_shards(tmp_path, n=10, per_shard=5)
    manifest = ShardManifest.load(str(shards))
    names = json.loads((shards / manifest.shards[0].names_file).read_text())["records"]
    damage_member_header(shards / manifest.shards[0].name, 2)
    hidden = [f"{manifest.shards[0].name}:{key}" for key, _ in names[2:]]

    with pytest.warns(AudioSkipWarning) as caught:
        index = ShardIndexDataset(str(shards), sample_rate=SR, clip_samples=CLIP, mode="eval")
    assert index.num_files == 7 and index.num_skipped == 3 and set(index.skipped_files) == set(hidden)
    message = str(caught[0].message)
    assert "ended after 2 of the 5 records" in message
    assert all(name in message for _, name in names[2:])  # named by their source names

    stream = ShardStreamDataset(str(shards), sample_rate=SR, clip_samples=CLIP, shuffle_buffer=2)
    with pytest.warns(AudioSkipWarning) as caught:
        items = [item for _, item in zip(range(7), stream.stream(), strict=False)]
    assert sorted(name for item in items for name in item["skipped"]) == hidden
    assert set(stream.skipped_files) == set(hidden) and len(caught) == 1
    assert all(name in str(caught[0].message) for _, name in names[2:])


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_member_keys_with_slashes_are_evaluated_like_they_are_trained(tmp_path: Path) -> None:
    audio = io.BytesIO()
    sf.write(audio, [0.1] * 6000, SR, format="FLAC")
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "shard-000000.tar", "w") as tar:
        for key in ("spk1/utt0", "spk.v2/utt1"):  # a "/" and a dot in the folder part
            meta = {"name": f"{key}.flac", "sample_rate": SR, "frames": 6000, "seconds": 0.375, "segment": None}
            _member(tar, f"{key}.json", json.dumps(meta).encode())
            _member(tar, f"{key}.flac", audio.getvalue())
    size = (shards / "shard-000000.tar").stat().st_size
    ShardManifest(root=str(shards), shards=[]).save()  # then the real entry:
    data = json.loads((shards / "shards.json").read_text())
    data["shards"] = [{"name": "shard-000000.tar", "records": 2, "seconds": 0.75, "bytes": size}]
    (shards / "shards.json").write_text(json.dumps(data))

    with warnings.catch_warnings():
        warnings.simplefilter("error", AudioSkipWarning)
        index = ShardIndexDataset(str(shards), sample_rate=SR, clip_samples=CLIP, mode="eval")
        windows = [index[i] for i in range(len(index))]
        streamed = [item for _, item in zip(range(2), ShardStreamDataset(str(shards), sample_rate=SR,
                                                                         clip_samples=CLIP).stream(), strict=False)]
    assert index.num_skipped == 0 and len(windows) == 4 and all(w["num_valid"] > 0 for w in windows)
    assert {index.metadata(i)["name"] for i in range(2)} == {"spk1/utt0.flac", "spk.v2/utt1.flac"}
    assert {item["name"] for item in streamed} == {"spk1/utt0.flac", "spk.v2/utt1.flac"}


def test_a_full_disk_while_writing_a_shard_leaves_no_incomplete_file(tmp_path: Path, monkeypatch) -> None:
    real_add = tarfile.TarFile.addfile
    calls = []

    def disk_full_at_the_third_record(self, info, fileobj=None):
        calls.append(info.name)
        if len(calls) == 5:  # the json member of record 2 (record 0 and 1 went into shard 0)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_add(self, info, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", disk_full_at_the_third_record)
    out = tmp_path / "shards"
    with pytest.raises(OSError, match=r"could not write shard .*shard-000001.tar \(No space left on device\); "
                                      r"\d+ MiB free in") as caught, ShardWriter(str(out), max_records=2) as writer:
        for i in range(4):
            writer.add(b"x" * 100, "flac", {"name": f"a{i}.flac"})
    assert caught.value.errno == errno.ENOSPC
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.names.json", "shard-000000.tar"]
    with tarfile.open(out / "shard-000000.tar") as tar:  # the shard under a final name is complete
        assert len(tar.getmembers()) == 4


def test_a_full_disk_while_writing_the_manifest_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    from transcoder.utils import files

    real_fsync = files.os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(f"shards.json.tmp{os.getpid()}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    out = tmp_path / "shards"
    with pytest.raises(OSError, match=r"could not write manifest .*shards.json \(No space left on device\); "
                                      r"\d+ MiB free"), ShardWriter(str(out), max_records=2) as writer:
        writer.add(b"x" * 100, "flac", {"name": "a.flac"})
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.names.json", "shard-000000.tar"]


def _prepare_shards_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_shards", Path(__file__).resolve().parents[1]
                                                  / "scripts" / "prepare_shards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_prepare_shards_takes_overrides_anywhere_and_fails_on_a_full_disk_in_one_line(
        tmp_path: Path, monkeypatch, capsys) -> None:
    from test_training import DATA_ROOT, DEMO

    main = _prepare_shards_main()
    root = f"data.train.params.root={DATA_ROOT}"
    assert main([str(DEMO), "--output", str(tmp_path / "a"), root, "--max-records", "2"]) == 0  # as documented
    assert ShardManifest.load(str(tmp_path / "a")).num_records == 5
    capsys.readouterr()

    real_add = tarfile.TarFile.addfile

    def disk_full_in_the_second_shard(self, info, fileobj=None):
        if info.name.startswith("000000002"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_add(self, info, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", disk_full_in_the_second_shard)
    assert main([str(DEMO), root, "--output", str(tmp_path / "b"), "--max-records", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: could not write shard {tmp_path / 'b' / 'shard-000001.tar'} (No space left")
    assert "MiB free in" in err[-1]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["shard-000000.names.json", "shard-000000.tar"]
