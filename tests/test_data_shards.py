"""Audio shards: round trip, rank/worker split, resume position, bad shards, evaluation, training, multi-node."""

from __future__ import annotations

import collections
import os
import socket
import subprocess
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_training import DEMO, SCRIPT, TINY, _cli_env, torchrun_path  # tests/ is on sys.path under pytest

from transcoder.data import (
    AudioFolderDataset,
    AudioSkipWarning,
    ShardDataset,
    ShardIndexDataset,
    ShardManifest,
    ShardStreamDataset,
    build_dataset,
    read_records,
    write_dataset_shards,
)
from transcoder.data.shard_stream import STATE_KEY
from transcoder.training.config import load_config
from transcoder.training.trainer import Trainer
from transcoder.utils.checkpoint import load_checkpoint
from transcoder.utils.distributed import init_distributed

REPO = Path(__file__).resolve().parents[1]
SR = 16000
CLIP = 4000


def make_tree(root: Path, n: int = 12, bad: int = 0) -> Path:
    """``n`` short files of distinct tones in FLAC / WAV / 22.05 kHz FLAC, plus ``bad`` corrupt .flac files."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sr = 22050 if i % 3 == 2 else SR
        t = np.arange(int(sr * (0.3 + 0.05 * i))) / sr
        wave = (0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)).astype(np.float32)
        ext = "wav" if i % 3 == 1 else "flac"
        sub = root / f"spk{i % 2}"
        sub.mkdir(exist_ok=True)
        sf.write(sub / f"utt{i:03d}.{ext}", wave, sr)
    for j in range(bad):
        (root / f"zz_bad{j}.flac").write_bytes(b"fLaC" + bytes(range(200)))
    return root


def make_shards(tmp: Path, n: int = 12, per_shard: int = 2, bad: int = 0) -> tuple[Path, AudioFolderDataset]:
    folder = AudioFolderDataset(str(make_tree(tmp / "audio", n, bad)), sample_rate=SR, clip_samples=CLIP)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AudioSkipWarning)
        write_dataset_shards(folder, str(tmp / "shards"), max_records=per_shard)
    return tmp / "shards", folder


def item_pass(state: list[int]) -> int:
    """The pass an item belongs to: its reader's pass, except for items drained from the buffer at the end of
    a pass, whose position is already "start of the next pass" (task 0, record 0; a read record makes it >= 1)."""
    _, _, pass_index, task, record, _ = state
    return pass_index - 1 if (task, record) == (0, 0) else pass_index


def first_pass(ds: ShardStreamDataset, worker: int, workers: int) -> list[str]:
    """Names this consumer yields in its (first remaining part of) pass 0."""
    names = []
    for item in ds.stream(worker, workers):
        if item_pass(item[STATE_KEY]) > 0:
            return names
        names.append(item["name"])
    raise AssertionError("unreachable")


def test_shard_round_trip_keeps_bytes_and_samples(tmp_path: Path) -> None:
    shards, folder = make_shards(tmp_path, n=7, per_shard=3, bad=1)
    manifest = ShardManifest.load(str(shards))
    assert [s.records for s in manifest.shards] == [3, 3, 1]
    assert manifest.num_records == 7 and [s["name"] for s in manifest.skipped] == [folder.path(7)]
    files = [folder.path(i) for i in range(folder.num_files) if "bad" not in folder.path(i)]
    expected_seconds = sum(sf.info(f).duration for f in files)
    assert manifest.seconds == pytest.approx(expected_seconds, abs=1e-2)
    records = [r for i in range(len(manifest.shards)) for r in read_records(manifest.path(i))]
    assert [r.meta["name"] for r in records] == [os.path.relpath(f, folder.root) for f in files]
    for record, file in zip(records, files, strict=True):
        assert record.audio == Path(file).read_bytes()  # bytes copied, not re-encoded
        assert record.audio_name.endswith(Path(file).suffix)
        ours = sf.read(__import__("io").BytesIO(record.audio), dtype="float32")[0]
        np.testing.assert_array_equal(ours, sf.read(file, dtype="float32")[0])
        assert record.meta["frames"] == sf.info(file).frames
    with tarfile.open(manifest.path(0)) as tar:  # plain WebDataset layout: <key>.json + <key>.<ext>
        assert tar.getnames()[:2] == ["000000000.json", "000000000.flac"]


def test_index_dataset_eval_windows_match_the_folder(tmp_path: Path) -> None:
    shards, folder = make_shards(tmp_path, n=6, per_shard=4)
    index = build_dataset({"target": "transcoder.data.ShardDataset", "params": {"shards": str(shards)}},
                          sample_rate=SR, clip_samples=CLIP, mode="eval")
    assert isinstance(index, ShardIndexDataset)
    reference = AudioFolderDataset(folder.root, sample_rate=SR, clip_samples=CLIP, mode="eval")
    assert len(index) == len(reference) > 6
    for i in range(len(index)):
        a, b = index[i], reference[i]
        name = index.metadata(a["file_index"])["name"]
        assert name == os.path.relpath(b["path"], folder.root) and a["offset"] == b["offset"]
        assert torch.equal(a["audio"], b["audio"]) and a["num_valid"] == b["num_valid"]


@pytest.mark.parametrize(("n", "per_shard", "world", "workers"), [(24, 2, 2, 2), (9, 5, 2, 2), (10, 3, 3, 1)])
def test_ranks_and_workers_read_disjoint_records_covering_the_set(tmp_path: Path, n: int, per_shard: int,
                                                                  world: int, workers: int) -> None:
    # (9, 5): 2 shards for 4 consumers -> each shard split in 2 parts.
    shards, _ = make_shards(tmp_path, n=n, per_shard=per_shard)
    seen: list[str] = []
    for rank in range(world):
        ds = ShardStreamDataset(str(shards), sample_rate=SR, clip_samples=CLIP, shuffle_buffer=3, rank=rank,
                                world_size=world)
        for worker in range(workers):
            names = first_pass(ds, worker, workers)
            assert names, f"rank {rank} worker {worker} got nothing"
            seen += names
    assert len(seen) == len(set(seen)) == n  # disjoint and complete


def test_stream_never_runs_dry_and_reshuffles_each_pass(tmp_path: Path) -> None:
    shards, _ = make_shards(tmp_path, n=8, per_shard=2)
    ds = ShardStreamDataset(str(shards), sample_rate=SR, clip_samples=CLIP, shuffle_buffer=2)
    stream = ds.stream()
    passes = [[next(stream)["name"] for _ in range(8)] for _ in range(3)]
    assert all(sorted(p) == sorted(passes[0]) for p in passes)  # each pass: every record once
    assert len({tuple(p) for p in passes}) == 3  # in a new order
    item = next(stream)
    assert item["audio"].shape == (CLIP,) and item["audio"].dtype == torch.float32


@pytest.mark.parametrize("stop", [1, 5, 8])
def test_resume_neither_replays_nor_skips_more_than_the_buffer(tmp_path: Path, stop: int) -> None:
    buffer = 4
    shards, _ = make_shards(tmp_path, n=18, per_shard=3)
    kwargs = {"sample_rate": SR, "clip_samples": CLIP, "shuffle_buffer": buffer, "rank": 0, "world_size": 1}
    pass0 = first_pass(ShardStreamDataset(str(shards), **kwargs), 1, 2)  # worker 1 of 2 on this rank
    assert len(pass0) == 9  # 6 shards of 3 records, 2 consumers
    first = ShardStreamDataset(str(shards), **kwargs)
    stream = first.stream(1, 2)
    consumed = []
    for _ in range(stop):
        item = next(stream)
        consumed.append(item["name"])
        batch = first.observe({"audio": item["audio"][None], STATE_KEY: [item[STATE_KEY]]})
        assert STATE_KEY not in batch
    state = first.state_dict()
    assert list(state["workers"]) == [1]

    resumed = ShardStreamDataset(str(shards), **kwargs)
    resumed.load_state_dict(state)
    rest = first_pass(resumed, 1, 2)
    assert len(rest) == len(set(rest)) and not set(consumed) & set(rest), "a record was replayed"
    skipped = set(pass0) - set(consumed) - set(rest)
    assert set(consumed) | set(rest) <= set(pass0) and len(skipped) <= buffer, skipped
    if stop < 9 - buffer:
        assert skipped  # the buffer's records are the price of an exact-position resume
    # Worker 0 never delivered a consumed batch: it starts from the beginning of its share.
    assert first_pass(resumed, 0, 2) == first_pass(ShardStreamDataset(str(shards), **kwargs), 0, 2)


def test_resume_with_other_world_size_starts_next_pass(tmp_path: Path) -> None:
    shards, _ = make_shards(tmp_path, n=6, per_shard=2)
    ds = ShardStreamDataset(str(shards), sample_rate=SR, clip_samples=CLIP, rank=0, world_size=2)
    item = next(ds.stream())
    ds.observe({STATE_KEY: [item[STATE_KEY]]})
    other = ShardStreamDataset(str(shards), sample_rate=SR, clip_samples=CLIP, rank=0, world_size=1)
    with pytest.warns(UserWarning, match="world size 2"):
        other.load_state_dict(ds.state_dict())
    assert item_pass(next(other.stream())[STATE_KEY]) == 1


def test_corrupt_records_and_shards_are_skipped_and_named(tmp_path: Path) -> None:
    shards, _ = make_shards(tmp_path, n=10, per_shard=2)
    manifest = ShardManifest.load(str(shards))
    # shard 1: garbage; shard 2: truncated in the middle of its second record; shard 3: first record's audio
    # replaced by bytes that are not audio (same size, so the tar stays valid).
    (shards / manifest.shards[1].name).write_bytes(b"not a tar" * 100)
    path2 = shards / manifest.shards[2].name
    second = list(read_records(str(path2)))[1]
    path2.write_bytes(path2.read_bytes()[: second.data_offset + second.data_size // 2])
    path3 = shards / manifest.shards[3].name
    record = next(read_records(str(path3)))
    raw = bytearray(path3.read_bytes())
    raw[record.data_offset: record.data_offset + record.data_size] = b"\x00" * record.data_size
    path3.write_bytes(bytes(raw))

    ds = ShardStreamDataset(str(shards), sample_rate=SR, clip_samples=CLIP, shuffle_buffer=2)
    with pytest.warns(AudioSkipWarning) as caught:
        items = [item for _, item in zip(range(30), ds.stream(), strict=False)]
    skipped = [name for item in items for name in item["skipped"]]
    names = collections.Counter(skipped)
    # Records a bad shard did not yield are named (and counted) one by one: keys number the whole set.
    lost = {f"{manifest.shards[1].name}:000000002", f"{manifest.shards[1].name}:000000003",
            f"{manifest.shards[2].name}:000000005", f"{manifest.shards[3].name}:{record.key}"}
    assert all(names[name] >= 1 for name in lost)
    assert set(ds.skipped_files) == lost
    assert len(caught) == 3  # one warning per bad shard or record, however often it is met
    good = {item["name"] for item in items}
    assert len(good) == 10 - 2 - 1 - 1  # the garbage shard's two records, shard 2's 2nd, shard 3's 1st
    # Evaluation over the same shards: the unreadable shard and the two bad records are skipped and named.
    with pytest.warns(AudioSkipWarning):
        index = ShardIndexDataset(str(shards), sample_rate=SR, clip_samples=CLIP, mode="eval")
        names = {index.metadata(w["file_index"])["name"] for w in (index[i] for i in range(len(index)))
                 if w["num_valid"] > 0}
    assert names == good
    assert index.num_skipped == 4 and f"{manifest.shards[1].name}:000000002" in index.skipped_files


def test_stream_raises_when_nothing_is_usable(tmp_path: Path) -> None:
    shards, _ = make_shards(tmp_path, n=2, per_shard=1)
    for shard in ShardManifest.load(str(shards)).shards:
        (shards / shard.name).write_bytes(b"x" * 1024)
    ds = ShardStreamDataset(str(shards), sample_rate=SR, clip_samples=CLIP)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AudioSkipWarning)
        with pytest.raises(Exception, match="passes in a row"):
            next(ds.stream())


def test_config_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no shard manifest here"):
        ShardDataset(str(tmp_path))
    (tmp_path / "shards.json").write_text('{"format": "transcoder-audio-shards/1", "shards": [{"name": "a.tar"}]}')
    with pytest.raises(FileNotFoundError, match=r"shards\[0\].*expected name, records, seconds, bytes"):
        ShardDataset(str(tmp_path))
    with pytest.raises(ValueError, match="ShardIndexDataset"):
        ShardStreamDataset(str(tmp_path), mode="eval")


# --- training from shards -------------------------------------------------------------------------


def shard_overrides(shards: Path) -> list[str]:
    spec = f"{{target: transcoder.data.ShardDataset, params: {{shards: '{shards}', shuffle_buffer: 3}}}}"
    return [f"data.train={spec}", f"data.val={spec}", "data.specaugment=null", "data.batch_size=2"]


def test_trainer_streams_shards_with_workers_and_resumes(tmp_path: Path) -> None:
    shards, _ = make_shards(tmp_path, n=12, per_shard=2)
    common = [*TINY, *shard_overrides(shards), "data.num_workers=2", "training.max_steps=6", "training.val_every=6",
              "training.val_max_batches=2"]
    trainer = Trainer(load_config(DEMO, common), tmp_path / "run", init_distributed("cpu"))
    assert trainer.train_files["count"] == 12
    assert trainer.fit(stop_at_step=3).step == 3
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    (state,) = checkpoint["data_state"]  # one rank
    # 3 steps of 2 items alternate between the 2 workers: batches 0 and 2 from worker 0, batch 1 from worker 1.
    assert {w: s[-1] for w, s in state["workers"].items()} == {0: 4, 1: 2}
    resumed = Trainer(load_config(DEMO, common), tmp_path / "run", init_distributed("cpu"))
    assert resumed.train_dataset.state_dict()["workers"] == state["workers"]
    assert resumed.fit().step == 6
    final = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["data_state"][0]["workers"]
    # The resumed loader starts its round robin at worker 0 again (batches 3, 4, 5 from workers 0, 1, 0), and the
    # counts continue from the checkpointed positions.
    assert {w: s[-1] for w, s in final.items()} == {0: 8, 1: 4}
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()  # validation ran over the shard index


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_node_torchrun_ranks_read_disjoint_shards(tmp_path: Path) -> None:
    # 2 agents ("nodes") x 2 processes over 8 shards of 2 records; each rank reads 2 shards = 4 records in its
    # first pass and trains 2 steps of batch 2, so the 4 ranks must have read the 16 records exactly once.
    shards, _ = make_shards(tmp_path, n=16, per_shard=2)
    logs = tmp_path / "record-logs"
    logs.mkdir()
    env = {**_cli_env(), "TRANSCODER_SHARD_LOG": str(logs)}
    port = _free_port()
    command = [torchrun_path(), "--nnodes", "2", "--nproc_per_node", "2", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", "shards-test", "--max-restarts", "0",
               str(SCRIPT), str(DEMO), "--output-dir", str(tmp_path / "run"), "--device", "cpu", *TINY,
               *shard_overrides(shards), "data.val=null", "data.num_workers=0", "training.max_steps=2"]
    agents = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
              for _ in range(2)]
    outputs = [agent.communicate(timeout=240) for agent in agents]
    stderr = "\n".join(err for _, err in outputs)
    assert all(agent.returncode == 0 for agent in agents), stderr[-4000:]
    assert "weights identical on all 4 ranks" in stderr
    per_rank = {path.name: path.read_text().splitlines() for path in sorted(logs.iterdir())}
    assert sorted(per_rank) == [f"rank{r}-worker0.txt" for r in range(4)]
    names = [line.split("\t")[1] for lines in per_rank.values() for line in lines]
    assert all(len(lines) == 4 for lines in per_rank.values()), per_rank
    assert len(set(names)) == len(names) == 16  # disjoint, and together every record
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert checkpoint["world_size"] == 4 and [s["rank"] for s in checkpoint["data_state"]] == [0, 1, 2, 3]
