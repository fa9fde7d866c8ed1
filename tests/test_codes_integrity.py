"""Codes folders are self-checking: every hostile edit of a folder (offsets, rows, num_samples, header geometry
and widths, unit indexes, array bytes) ends in one line naming the file and the field, in CodesIndex,
CodesDataset, decode and a resumed encode; ``--verify`` lists every problem; format-3 folders still read."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_tokenize import tokenize_script
from test_tokenize_corpus import _corpus

from transcoder.codes import CodesFormatError, CodesIndex
from transcoder.data.base import AudioSkipWarning
from transcoder.data.codes_dataset import CodesDataset


@pytest.fixture(scope="module")
def audio_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    _corpus(root)
    return root


@pytest.fixture(scope="module")
def folder(ckpt: Path, audio_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A packed codes folder of 5 utterances in 3 units (2, 2, 1)."""
    out = tmp_path_factory.mktemp("codes") / "codes"
    assert tokenize_script.main(["encode", "-c", str(ckpt), str(audio_root), str(out), "--layout", "packed",
                                 "--unit-size", "2", "--num-workers", "0", "--quiet", "--device", "cpu"]) == 0
    return out


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "codes"))


def _edit_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _first_unit(data: dict[str, Any]) -> dict[str, Any]:
    return data["utterances"][1]


HOSTILE_INDEX: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "offset into another utterance": (lambda d: _first_unit(d).update(offset=0), r"utterances\[1\]\.offset=0 overlaps"),
    "rows smaller than the truth": (lambda d: _first_unit(d).update(rows=_first_unit(d)["rows"] - 4),
                                    r"utterances\[1\]\.rows=\d+ but num_samples=\d+ is encoded to \d+ rows"),
    "num_samples beyond the rows": (lambda d: _first_unit(d).update(num_samples=10**7),
                                    r"utterances\[1\]\.rows=\d+ but num_samples=10000000 is encoded to"),
    "no unit": (lambda d: d.pop("unit"), r"unit=None: expected an integer in 0\.\.2"),
    "unit abc": (lambda d: d.update(unit="abc"), r"unit='abc': expected an integer"),
    "failed without a file": (lambda d: d.update(failed=["x"]), r"failed\[0\]='x': expected an object"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_INDEX))
def test_a_damaged_unit_index_is_refused_by_every_reader(folder: Path, tmp_path: Path, ckpt: Path, case: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    codes = _copy(folder, tmp_path)
    change, message = HOSTILE_INDEX[case]
    _edit_json(codes / "index" / "unit-000000.json", change)
    expected = rf"^index {codes / 'index' / 'unit-000000.json'}: {message}"
    with pytest.raises(CodesFormatError, match=expected):
        CodesIndex.open(codes)
    with pytest.raises(CodesFormatError, match=expected):
        CodesDataset(codes, seq_len=8)
    assert tokenize_script.main(["decode", "-c", str(ckpt), str(codes), str(tmp_path / "wav"), "--quiet",
                                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unit-000000.json" in err[0], err
    assert not (tmp_path / "wav").exists()


HOSTILE_HEADER: dict[str, tuple[dict[str, Any], str]] = {
    "patch 16x8": ({"patch_size": [16, 8]}, "do not tile the window"),
    "patch 4x8": ({"patch_size": [4, 8]}, "do not tile the window"),
    "patch 0x8": ({"patch_size": [0, 8]}, r"patch_size=\[0, 8\]: expected two positive integers"),
    "patch empty": ({"patch_size": []}, r"patch_size=\[\]: expected two positive integers"),
    "grid one number": ({"grid_per_window": [16]}, r"grid_per_window=\[16\]: expected two positive"),
    "hop 0": ({"hop_length": 0}, "hop_length=0: expected a positive integer"),
    "bits 20": ({"bits": 20, "model_bits": 20}, "codes_dtype='uint16': expected 'uint32' for 20-bit codes"),
    "bits 62": ({"bits": 62, "model_bits": 62}, "codes_dtype='uint16': expected 'int64' for 62-bit codes"),
    "bits 63": ({"bits": 63, "model_bits": 63}, r"bits=63: expected an integer in 1\.\.62"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADER))
def test_a_damaged_header_is_one_line_naming_the_key(folder: Path, tmp_path: Path, case: str) -> None:
    codes = _copy(folder, tmp_path)
    values, message = HOSTILE_HEADER[case]
    _edit_json(codes / "codes.json", lambda d: d.update(values))
    with pytest.raises(CodesFormatError, match=rf"^codes header {codes / 'codes.json'}: .*{message}"):
        CodesDataset(codes, seq_len=8)


def test_a_deleted_unit_index_is_noticed(folder: Path, tmp_path: Path, ckpt: Path) -> None:
    codes = _copy(folder, tmp_path)
    (codes / "index" / "unit-000001.json").unlink()
    with pytest.raises(ValueError, match=r"lacks 1 of the header's num_units=3 unit indexes \(unit-000001.json\)"):
        CodesDataset(codes, seq_len=8)
    partial = CodesDataset(codes, seq_len=8, allow_incomplete=True)
    assert len(partial.index) == 3
    with pytest.warns(UserWarning, match=r"lacks 1 of the header's num_units=3 unit indexes \(first: unit-000001"):
        assert tokenize_script.main(["decode", "-c", str(ckpt), str(codes), str(tmp_path / "wav"), "--quiet",
                                     "--device", "cpu", "--mel"]) == 0


@pytest.mark.parametrize("damage", ["rolled rows", "flipped value"])
def test_changed_shard_bytes_fail_the_checksum(folder: Path, tmp_path: Path, ckpt: Path, damage: str) -> None:
    codes = _copy(folder, tmp_path)
    shard = codes / "shards" / "codes-000000.npy"
    array = np.load(shard)
    array = np.roll(array, 1, axis=0) if damage == "rolled rows" else array ^ np.array(1, array.dtype)
    np.save(shard, array)
    index = CodesIndex.open(codes)
    with pytest.raises(CodesFormatError, match=rf"^{shard}: its SHA-256 differs from the one in its unit index"):
        index.codes(index.utterances[0])
    dataset = CodesDataset(codes, seq_len=8, shuffle=False, epochs=1)
    with pytest.warns(AudioSkipWarning, match="SHA-256 differs"):
        items = list(dataset)
    assert {name.split(":")[0] for item in items for name in item["skipped"]} == {"shards/codes-000000.npy"}
    assert tokenize_script.main(["decode", "-c", str(ckpt), str(codes), str(tmp_path / "wav"), "--quiet",
                                 "--device", "cpu", "--mel"]) == 0  # the other units decode; the two are listed
    sound = sorted(f"{u.id}.mel.npy" for u in index if u.unit != 0)
    assert sorted(p.relative_to(tmp_path / "wav").as_posix() for p in (tmp_path / "wav").rglob("*.npy")) == sound


def test_a_resumed_encode_refuses_a_damaged_finished_unit(folder: Path, tmp_path: Path, ckpt: Path, audio_root: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    codes = _copy(folder, tmp_path)
    shard = codes / "shards" / "codes-000001.npy"
    np.save(shard, np.load(shard)[::-1])
    (codes / "index" / "unit-000002.json").unlink()
    assert tokenize_script.main(["encode", "-c", str(ckpt), str(audio_root), str(codes), "--layout", "packed",
                                 "--unit-size", "2", "--num-workers", "0", "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{shard}: its SHA-256 differs" in err[0] and "delete that unit's index" in err[0]
    assert not (codes / "index" / "unit-000002.json").exists()


def test_verify_lists_every_problem(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tokenize_script.main(["--verify", str(folder)]) == 0
    assert "ok" in capsys.readouterr().out
    codes = _copy(folder, tmp_path)
    _edit_json(codes / "index" / "unit-000000.json", lambda d: _first_unit(d).update(offset=0))
    (codes / "index" / "unit-000001.json").unlink()
    shard = codes / "shards" / "codes-000002.npy"
    np.save(shard, np.load(shard) ^ np.array(1, np.load(shard).dtype))
    assert tokenize_script.main(["--verify", str(codes)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4, lines
    assert "unit-000000.json: utterances[1].offset=0 overlaps" in lines[0]
    assert lines[1].endswith("(the header plans num_units=3; 1 unit indexes are in " f"{codes / 'index'})") \
        and "unit-000001.json: missing" in lines[1]
    assert f"{shard}: its SHA-256 differs" in lines[2]
    assert lines[3] == f"error: {codes}: 3 problem(s)"


def test_a_format_3_folder_still_reads(folder: Path, tmp_path: Path) -> None:
    codes = _copy(folder, tmp_path)
    _edit_json(codes / "codes.json", lambda d: d.update(format_version=3))
    for path in (codes / "index").glob("unit-*.json"):
        _edit_json(path, lambda d: d.pop("sha256"))
    old, new = CodesIndex.open(codes), CodesIndex.open(folder)
    assert [u.id for u in old] == [u.id for u in new]
    for utt in old:
        assert np.array_equal(old.codes(utt), new.codes(utt.id))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sum(int(item["mask"].sum()) for item in CodesDataset(codes, seq_len=8, epochs=1)) > 0
    _edit_json(codes / "index" / "unit-000000.json", lambda d: _first_unit(d).update(offset=0))
    with pytest.raises(CodesFormatError, match="overlaps"):  # the checks that apply to format 3 still run
        CodesIndex.open(codes)


def test_a_new_folder_records_checksums_and_unit_count(folder: Path) -> None:
    header = json.loads((folder / "codes.json").read_text())
    assert header["format_version"] == 4 and header["num_units"] == 3
    index = json.loads((folder / "index" / "unit-000000.json").read_text())
    assert set(index["sha256"]) == {"shards/codes-000000.npy"} and len(index["sha256"]["shards/codes-000000.npy"]) == 64
