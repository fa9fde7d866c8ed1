"""transcoder.codes: versioned format, manifest checks, and decoding that does not trust the files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_tokenize import REPO, SR, WINDOW_SAMPLES, _speechlike, tokenize_script

from transcoder.api import AudioTokenizer
from transcoder.codes import (
    FORMAT_VERSION,
    MANIFEST_VERSION,
    CodesFile,
    CodesFormatError,
    read_manifest,
    write_manifest,
)


@pytest.fixture()
def codes_dir(tok: AudioTokenizer, tmp_path: Path) -> Path:
    """A folder in the older per-file layout (manifest.json + .npy), as earlier versions wrote it."""
    out = tmp_path / "codes"
    out.mkdir()
    files = {}
    for name, wave in (("a", _speechlike(1.5 * WINDOW_SAMPLES / SR, seed=1)), ("b", _speechlike(0.9, seed=2))):
        encoded = tok.encode_waves([wave])[0]
        np.save(out / f"{name}.npy", encoded.indices.numpy().astype(np.uint16))
        files[f"{name}.npy"] = {"source": f"{name}.wav", "num_samples": encoded.num_samples,
                                "frames": encoded.num_frames, "shape": list(encoded.indices.shape)}
    write_manifest(out, {"checkpoint": "tiny.pt", "checkpoint_sha256": tok.checkpoint_sha256, "sample_rate": SR,
                         "hop_length": 160, "n_mels": 32, "patch_size": [16, 16], "bits": 12, "files": files,
                         "failed": {}})
    return out


def _edit_manifest(folder: Path, edit) -> None:  # noqa: ANN001 - a small callable
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _decode(ckpt: Path, codes: Path, out: Path) -> int:
    return tokenize_script.main(["decode", "-c", str(ckpt), str(codes), str(out), "--quiet", "--gl-iters", "2"])


def test_manifest_is_versioned_and_old_manifests_read_as_version_1(codes_dir: Path, ckpt: Path,
                                                                   tmp_path: Path) -> None:
    manifest = read_manifest(codes_dir / "manifest.json")
    assert manifest["format_version"] == MANIFEST_VERSION == 2
    assert json.loads((codes_dir / "manifest.json").read_text())["format_version"] == 2

    def legacy(data: dict) -> None:  # what the script wrote before versioning
        del data["format_version"]
        data["format"] = "audio-bsq-vit-codes/1"

    _edit_manifest(codes_dir, legacy)
    assert read_manifest(codes_dir / "manifest.json")["format_version"] == 1
    assert _decode(ckpt, codes_dir, tmp_path / "wav") == 0
    assert sf.info(tmp_path / "wav" / "a.wav").frames == int(1.5 * WINDOW_SAMPLES)
    _edit_manifest(codes_dir, lambda d: d.update(format="audio-bsq-vit-codes", format_version=99))
    with pytest.raises(CodesFormatError, match="format_version 99"):
        read_manifest(codes_dir / "manifest.json")


def test_num_samples_longer_than_the_codes_is_a_per_file_error(codes_dir: Path, ckpt: Path, tmp_path: Path,
                                                               tok: AudioTokenizer) -> None:
    _edit_manifest(codes_dir, lambda d: d["files"]["a.npy"].update(num_samples=10 * d["files"]["a.npy"]["num_samples"]))
    with pytest.warns(tokenize_script.FileSkipWarning, match=r"a\.npy.*num_samples=.*cover"):
        assert _decode(ckpt, codes_dir, tmp_path / "wav") == 0
    assert not (tmp_path / "wav" / "a.wav").exists()  # no zero-filled, longer WAV
    assert (tmp_path / "wav" / "b.wav").exists()  # the other file still decodes
    with pytest.raises(CodesFormatError, match="a.npy"):
        tok.decode_file(codes_dir / "a.npy", tmp_path / "x.wav")
    with pytest.raises(ValueError, match="cover"):
        tok.decode_codes(np.zeros((4, 2), dtype=np.int64), num_samples=WINDOW_SAMPLES + 1)


def test_fewer_rows_than_the_manifest_says_is_a_per_file_error(codes_dir: Path, ckpt: Path, tmp_path: Path) -> None:
    codes = np.load(codes_dir / "a.npy")
    np.save(codes_dir / "a.npy", codes[:-4])
    with pytest.warns(tokenize_script.FileSkipWarning,
                      match=r"a\.npy.*needs rows \[0, 8\) but the array has shape \(4, 2\)"):
        assert _decode(ckpt, codes_dir, tmp_path / "wav") == 0
    assert not (tmp_path / "wav" / "a.wav").exists()


@pytest.mark.parametrize("values", [np.full((8, 2), 3.0), np.full((8, 2), 0.7), np.ones((8, 2), dtype=bool)])
def test_float_and_bool_codes_are_refused_before_any_cast(codes_dir: Path, ckpt: Path, tmp_path: Path,
                                                          tok: AudioTokenizer, values: np.ndarray) -> None:
    np.save(codes_dir / "a.npy", values)
    with pytest.warns(tokenize_script.FileSkipWarning, match=rf"a\.npy.*integer dtype, got {values.dtype}"):
        assert _decode(ckpt, codes_dir, tmp_path / "wav") == 0
    assert not (tmp_path / "wav" / "a.wav").exists()
    with pytest.raises(CodesFormatError, match=rf"a\.npy.*{values.dtype}"):
        tok.load_codes(codes_dir / "a.npy")


@pytest.mark.parametrize("content, message", [("[1, 2]", "expected a JSON object, got a JSON list"),
                                              ('{"format": "audio-bsq-vit-codes", "format_version": 2, '
                                               '"sample_rate": 16000, "bits": 12, "hop_length": 160, '
                                               '"n_mels": 32, "patch_size": [16, 16]}', "missing key 'files'")])
def test_bad_manifest_is_a_one_line_usage_error(codes_dir: Path, ckpt: Path, tmp_path: Path, content: str,
                                                message: str) -> None:
    (codes_dir / "manifest.json").write_text(content)
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "tokenize_audio.py"), "decode", "-c", str(ckpt),
                             str(codes_dir), str(tmp_path / "wav"), "--quiet"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "manifest.json" in lines[0], result.stderr


def test_codes_file_roundtrip_and_decode_file(tok: AudioTokenizer, tmp_path: Path) -> None:
    wave = _speechlike(1.3, seed=5)
    encoded = tok.encode_waves([wave])[0]
    codes = CodesFile(encoded.indices.numpy(), encoded.num_samples, tok.sample_rate, tok.bits_per_token, "x.wav")
    path = codes.save(tmp_path / "x.npz")
    loaded = tok.load_codes(path)
    assert loaded.format_version == FORMAT_VERSION and loaded.num_samples == len(wave) and loaded.source == "x.wav"
    assert np.array_equal(loaded.indices, encoded.indices.numpy()) and loaded.indices.dtype == np.int64
    out = tok.decode_file(path, tmp_path / "x.wav")
    decoded, rate = sf.read(out)
    assert rate == SR and decoded.shape == (len(wave),) and np.isfinite(decoded).all()
    assert 0.2 < np.sqrt(np.mean(decoded**2)) / np.sqrt(np.mean(tok.decode_codes(encoded.indices).numpy()**2)) < 5
    other = CodesFile(encoded.indices.numpy(), encoded.num_samples, 22050, tok.bits_per_token)
    with pytest.raises(CodesFormatError, match="22050 Hz"):
        tok.load_codes(other.save(tmp_path / "other.npz"))
    assert torch.equal(torch.from_numpy(loaded.indices), encoded.indices)


# --------------------------------------------------------------------------------------------------
# corpus layout (format version 3): header, unit index, packed shards / per-utterance files
# --------------------------------------------------------------------------------------------------


def _header(layout: str, sha: str = "a" * 64) -> dict:
    return {"layout": layout, "sample_rate": SR, "hop_length": 160, "n_mels": 32, "window_frames": 64,
            "patch_size": [16, 16], "grid_per_window": [4, 2], "bits": 12, "codes_dtype": "uint16",
            "checkpoint": "/x/tiny.pt", "checkpoint_sha256": sha, "weights": "model",
            "input": {"kind": "folder", "path": "/audio"}, "num_units": 2, "unit_size": 2}


@pytest.mark.parametrize("layout", ["packed", "files"])
def test_unit_writer_and_index_read_both_layouts(tmp_path: Path, layout: str) -> None:
    from transcoder.codes import CodesIndex, UnitWriter, unit_index_path, write_header

    write_header(tmp_path, _header(layout))
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2**12, (8, 2)), rng.integers(0, 2**12, (4, 2))
    writer = UnitWriter(tmp_path, 1, layout=layout, bits=12, hop_length=160, patch_t=16, sample_rate=SR)
    writer.add("spk/a", a, num_samples=16000 + 1, source="spk/a.wav")  # 101 frames -> 7 valid rows of 8
    writer.add("b", b, num_samples=160, source="b.flac")  # 1 frame -> 1 valid row of 4
    writer.fail("c", "c.wav", "AudioDecodeError: truncated")
    index_path = writer.close()
    assert index_path == unit_index_path(tmp_path, 1)
    index = CodesIndex.open(tmp_path)
    assert [u.id for u in index] == ["spk/a", "b"] and not index.complete and index.units_done == [1]
    assert index["spk/a"].valid_rows == 7 and index["b"].valid_rows == 1
    assert np.array_equal(index.codes("spk/a"), a) and np.array_equal(index.codes("b"), b)
    assert np.array_equal(index.codes("spk/a", valid_only=True), a[:7])
    assert index.failed[0]["reason"].startswith("AudioDecodeError")
    if layout == "packed":
        assert (tmp_path / "shards" / "codes-000001.npy").is_file() and index["b"].offset == 8
    else:
        assert np.array_equal(np.load(tmp_path / "spk" / "a.npy"), a)
        assert CodesFile.load(tmp_path / "spk" / "a.npy").num_samples == 16001
    assert not list(tmp_path.rglob(".*tmp*"))


def test_header_refuses_another_checkpoint_naming_both(tmp_path: Path) -> None:
    from transcoder.codes import write_header

    write_header(tmp_path, _header("packed"))
    write_header(tmp_path, _header("packed"))  # the same run again (a resume, another rank): accepted
    other = {**_header("packed", sha="b" * 64), "checkpoint": "/y/other.pt"}
    with pytest.raises(CodesFormatError, match=r"tiny\.pt.*aaaaaaaaaaaa.*other\.pt.*bbbbbbbbbbbb"):
        write_header(tmp_path, other)
    with pytest.raises(CodesFormatError, match="layout"):
        write_header(tmp_path, _header("files"))


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/x", "a//b", "./a", "a\\b", ""])
def test_ids_that_are_not_plain_relative_paths_are_refused(key: str) -> None:
    from transcoder.codes import check_id

    with pytest.raises(CodesFormatError, match="utterance id"):
        check_id(key, "index")
    assert check_id("spk1/ch2/a.b", "index") == "spk1/ch2/a.b"


def test_atomic_write_on_a_full_disk_leaves_nothing_under_the_final_name(tmp_path: Path) -> None:
    import errno

    from transcoder.codes import DiskFullError, atomic_write

    def fill(handle) -> None:  # noqa: ANN001
        handle.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=r"no space left on device writing .*codes\.npy \(.* free\)"):
        atomic_write(tmp_path / "codes.npy", fill)
    assert list(tmp_path.iterdir()) == []
