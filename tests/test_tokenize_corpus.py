"""scripts/tokenize_audio.py encode on corpora: inputs, layouts, ranks, resuming after kill -9, locks, disk full."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_tokenize import REPO, SR, _checkpoint, _speechlike, tokenize_script

from transcoder.api import AudioTokenizer
from transcoder.codes import CodesFormatError, CodesIndex, write_manifest
from transcoder.data.audio_io import load_audio
from transcoder.encode_corpus import lock_output

SCRIPT = str(REPO / "scripts" / "tokenize_audio.py")


def _corpus(root: Path, n: int = 5, seconds: float = 1.0) -> dict[str, Path]:
    """``{id: path}`` of ``n`` files of mixed lengths, rates and formats (one at 22.05 kHz)."""
    files = {}
    for i in range(n):
        sr = 22050 if i == 1 else SR
        rel = f"spk{i % 2}/utt{i}.{'flac' if i % 3 == 0 else 'wav'}"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, _speechlike(seconds * (0.4 + 0.9 * i), sr=sr, seed=i), sr)
        files[rel.rsplit(".", 1)[0]] = path
    return files


def _encode(*args: str) -> int:
    return tokenize_script.main(["encode", *args, "--quiet"])


def _all_codes(folder: Path) -> dict[str, np.ndarray]:
    index = CodesIndex.open(folder)
    return {u.id: np.array(index.codes(u)) for u in index}


def test_layouts_batching_and_one_file_at_a_time_give_identical_codes(ckpt: Path, tok: AudioTokenizer,
                                                                       tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    files = _corpus(tmp_path / "audio")
    packed, per_file = tmp_path / "packed", tmp_path / "files"
    assert _encode("-c", str(ckpt), str(tmp_path / "audio"), str(packed), "--layout", "packed", "--unit-size", "2",
                   "--batch-size", "3", "--num-workers", "2") == 0
    summary = capsys.readouterr().out
    assert "h of audio, 5 files, 0 failed" in summary and "RTF" in summary and f"folder {packed}: 3/3 units" in summary
    assert _encode("-c", str(ckpt), str(tmp_path / "audio"), str(per_file), "--layout", "files",
                   "--batch-size", "5", "--num-workers", "0") == 0
    a, b = _all_codes(packed), _all_codes(per_file)
    assert sorted(a) == sorted(b) == sorted(files)
    index = CodesIndex.open(packed)
    for uid, path in files.items():
        alone = tok.encode_file(path).numpy()  # one file at a time, windows batched only with themselves
        today = tok.encode_waves([load_audio(str(path), SR)])[0].indices.numpy()  # the previous CLI's path
        assert np.array_equal(a[uid], alone) and np.array_equal(b[uid], alone) and np.array_equal(alone, today), uid
        assert index[uid].num_samples == tok.last_num_samples
        assert index.codes(uid, valid_only=True).shape[0] == index[uid].valid_rows <= index[uid].rows
    # decode any utterance from either layout, through the API and the CLI (<id>.wav in the same tree)
    for folder in (packed, per_file):
        out = tok.decode_file(folder, tmp_path / f"{folder.name}.wav", utterance="spk1/utt1")
        assert sf.info(out).frames == index["spk1/utt1"].num_samples
    assert tokenize_script.main(["decode", "-c", str(ckpt), str(packed), str(tmp_path / "wav"), "--id", "spk0/utt2",
                                 "--quiet", "--gl-iters", "2"]) == 0
    assert [p.relative_to(tmp_path / "wav").as_posix() for p in (tmp_path / "wav").rglob("*.wav")] == ["spk0/utt2.wav"]


def test_cut_inside_a_recording_is_encoded_from_its_own_start(ckpt: Path, tok: AudioTokenizer, tmp_path: Path) -> None:
    lhotse = pytest.importorskip("lhotse")
    wave = _speechlike(3.0, seed=7)
    sf.write(tmp_path / "rec.wav", wave, SR)
    recordings = lhotse.RecordingSet.from_recordings([lhotse.Recording.from_file(tmp_path / "rec.wav", "rec")])
    supervisions = lhotse.SupervisionSet.from_segments(
        [lhotse.SupervisionSegment("rec-a", "rec", start=0.7, duration=1.2),
         lhotse.SupervisionSegment("rec-b", "rec", start=2.0, duration=0.9)])
    recordings.to_file(tmp_path / "recordings.jsonl.gz")
    supervisions.to_file(tmp_path / "supervisions.jsonl.gz")
    cuts = lhotse.CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    assert _encode("-c", str(ckpt), str(tmp_path / "cuts.jsonl.gz"), str(tmp_path / "c"), "--num-workers", "0") == 0
    assert _encode("-c", str(ckpt), str(tmp_path / "recordings.jsonl.gz"), str(tmp_path / "r"), "--supervisions",
                   str(tmp_path / "supervisions.jsonl.gz"), "--num-workers", "0") == 0
    from_cuts, from_recordings = CodesIndex.open(tmp_path / "c"), CodesIndex.open(tmp_path / "r")
    assert from_cuts.header["layout"] == "packed"  # the default for manifests
    for start, duration, index in ((0.7, 1.2, 0), (2.0, 0.9, 1)):
        expected = tok.encode_wave(wave[int(start * SR): int(start * SR) + int(duration * SR)]).numpy()
        for folder in (from_cuts, from_recordings):
            utt = folder.utterances[index]
            assert utt.num_samples == int(duration * SR)
            assert np.array_equal(folder.codes(utt), expected)


def _shards(tmp_path: Path, n: int = 6) -> tuple[Path, dict[str, Path]]:
    from transcoder.data import write_dataset_shards
    from transcoder.data.audio_folder import AudioFolderDataset

    files = _corpus(tmp_path / "audio", n=n)
    write_dataset_shards(AudioFolderDataset(str(tmp_path / "audio")), str(tmp_path / "shards"), max_records=2)
    return tmp_path / "shards", files


def _wait_for_first_unit(folder: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not list((folder / "index").glob("unit-*.json")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no unit finished in time"
        time.sleep(0.005)


def _kill_then_rerun(command: list[str], out: Path, num_units: int) -> None:
    """Run ``command``, SIGKILL its process group once the first unit is done, check it was cut short, rerun."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    _wait_for_first_unit(out, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(list((out / "index").glob("unit-*.json")))
    assert 0 < finished < num_units, f"the kill came after {finished} of {num_units} units"
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "already done" in rerun.stdout
    assert len(list((out / "index").glob("unit-*.json"))) == num_units
    assert not list(out.rglob(".*.tmp-*"))


def test_shards_killed_and_rerun_equal_one_file_at_a_time(ckpt: Path, tok: AudioTokenizer, tmp_path: Path) -> None:
    shards, files = _shards(tmp_path, n=10)
    out = tmp_path / "codes"
    _kill_then_rerun([sys.executable, SCRIPT, "encode", "-c", str(ckpt), str(shards), str(out), "--unit-size", "1",
                      "--num-workers", "2", "--batch-size", "2", "--quiet"], out, num_units=10)
    codes = _all_codes(out)
    assert sorted(codes) == sorted(files)
    for uid, path in files.items():
        assert np.array_equal(codes[uid], tok.encode_file(path).numpy()), uid


def test_two_ranks_of_torchrun_killed_and_rerun_equal_one_process(ckpt: Path, tok: AudioTokenizer,
                                                                  tmp_path: Path) -> None:
    lhotse = pytest.importorskip("lhotse")
    files = _corpus(tmp_path / "audio", n=8, seconds=2.0)
    recordings = lhotse.RecordingSet.from_recordings(
        [lhotse.Recording.from_file(path, uid.replace("/", "_")) for uid, path in files.items()])
    lhotse.CutSet.from_manifests(recordings=recordings).to_file(tmp_path / "cuts.jsonl.gz")
    out = tmp_path / "codes"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT,
               "encode", "-c", str(ckpt), str(tmp_path / "cuts.jsonl.gz"), str(out), "--whole-cuts",
               "--unit-size", "1", "--num-workers", "0", "--device", "cpu", "--quiet"]
    _kill_then_rerun(command, out, num_units=8)
    index = CodesIndex.open(out)
    assert {json.loads(p.read_text())["rank"] for p in (out / "index").glob("*.json")} == {0, 1}
    by_source = {u.source: u for u in index}
    assert len(by_source) == len(files)
    for uid, path in files.items():
        utt = by_source[os.path.normpath(str(path))]
        assert np.array_equal(index.codes(utt), tok.encode_file(path).numpy()), uid


def test_peak_memory_does_not_grow_with_file_length(ckpt: Path, tmp_path: Path) -> None:
    """Peak RSS of the CLI (one process) on a 2-minute and a 20-minute file differs by under 5 %."""
    peaks = {}
    for minutes in (2, 20):
        path = tmp_path / f"{minutes}min.wav"
        with sf.SoundFile(path, "w", samplerate=SR, channels=1, subtype="PCM_16") as f:
            for second in range(0, minutes * 60, 30):
                f.write(_speechlike(30.0, seed=second))
        probe = ("import resource, runpy, sys; sys.argv = sys.argv[1:]\n"
                 "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
                 "finally:\n    print('peak_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
        result = subprocess.run([sys.executable, "-c", probe, SCRIPT, "encode", "-c", str(ckpt), str(path),
                                 str(tmp_path / f"codes{minutes}"), "--num-workers", "0", "--batch-size", "128",
                                 "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=600,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr
        peaks[minutes] = int(result.stderr.rsplit("peak_kb", 1)[1].split()[0])
        assert CodesIndex.open(tmp_path / f"codes{minutes}")[f"{minutes}min"].num_samples == minutes * 60 * SR
    assert abs(peaks[20] - peaks[2]) / peaks[2] < 0.05, peaks


def test_busy_folder_and_another_checkpoint_are_refused(ckpt: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _corpus(tmp_path / "audio", n=2)
    out = tmp_path / "codes"
    lock = lock_output(out, 0, 1)  # another encode (this process) works in the folder
    try:
        assert _encode("-c", str(ckpt), str(tmp_path / "audio"), str(out), "--num-workers", "0") == 2
        assert f"in use by job pid{os.getpid()}" in capsys.readouterr().err
    finally:
        lock.release()
    os.environ.update(TORCHELASTIC_RUN_ID="other", MASTER_ADDR="h", MASTER_PORT="1")
    try:
        lock = lock_output(out, 1, 2)  # rank 1 of another torchrun job
    finally:
        for key in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"):
            del os.environ[key]
    try:
        assert _encode("-c", str(ckpt), str(tmp_path / "audio"), str(out), "--num-workers", "0") == 2
        assert "in use by job other@h:1 rank 1/2" in capsys.readouterr().err
    finally:
        lock.release()
    assert _encode("-c", str(ckpt), str(tmp_path / "audio"), str(out), "--num-workers", "0") == 0
    before = _all_codes(out)
    other = _checkpoint(tmp_path / "other.pt", seed=3)
    assert _encode("-c", str(other), str(tmp_path / "audio"), str(out), "--num-workers", "0") == 2
    err = capsys.readouterr().err
    assert "tiny.pt" in err and "other.pt" in err and "must not mix" in err
    after = _all_codes(out)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_decode_refuses_ids_that_leave_the_output_folder(ckpt: Path, tok: AudioTokenizer, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    codes_dir = tmp_path / "a" / "b" / "codes"
    codes_dir.mkdir(parents=True)
    encoded = tok.encode_waves([_speechlike(0.5)])[0]
    key = "../" * 8 + str(codes_dir.relative_to("/")) + "/x.npy"  # resolves back inside the codes folder
    np.save(codes_dir / "x.npy", encoded.indices.numpy().astype(np.uint16))
    write_manifest(codes_dir, {"sample_rate": SR, "hop_length": 160, "n_mels": 32, "patch_size": [16, 16], "bits": 12,
                               "files": {key: {"num_samples": encoded.num_samples,
                                               "shape": list(encoded.indices.shape)}}})
    out = tmp_path / "a" / "out"
    assert tokenize_script.main(["decode", "-c", str(ckpt), str(codes_dir), str(out), "--quiet"]) == 2
    assert repr(key) in capsys.readouterr().err
    assert not any(p.suffix == ".wav" for p in tmp_path.rglob("*"))
    from transcoder.codes import UnitWriter

    writer = UnitWriter(tmp_path / "v3", 0, layout="files", bits=12, hop_length=160, patch_t=16, sample_rate=SR)
    with pytest.raises(CodesFormatError, match=r"'\.\./x'"):  # an encode never writes such an id either
        writer.add("../x", encoded.indices.numpy(), encoded.num_samples, "x")
    assert not (tmp_path / "x.npy").exists()


def test_disk_full_is_one_line_and_leaves_nothing_incomplete(ckpt: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    _corpus(tmp_path / "audio", n=2)
    out = tmp_path / "codes"
    real_save = np.save

    def full(handle, array, **kwargs) -> None:  # noqa: ANN001 - np.save's signature
        handle.write(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    assert _encode("-c", str(ckpt), str(tmp_path / "audio"), str(out), "--layout", "packed",
                   "--num-workers", "0") == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no space left on device writing" in lines[0] and "codes-000000.npy" in lines[0]
    assert "free" in lines[0]
    assert not list((out / "shards").glob("*")) and not (out / "index").exists()
    monkeypatch.setattr(np, "save", real_save)
    assert _encode("-c", str(ckpt), str(tmp_path / "audio"), str(out), "--layout", "packed",
                   "--num-workers", "0") == 0
    assert len(CodesIndex.open(out)) == 2
