"""Token views of codes and CodesDataset: exact inverse, coverage over ranks x workers, padding, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from transcoder.codes import UnitWriter, write_header
from transcoder.codes_tokens import codes_to_tokens, flatten_codes, tokens_to_codes, unflatten_tokens
from transcoder.data import CodesDataset, collate_audio
from transcoder.data.base import AudioSkipWarning

BITS, NF, PT, HOP, SR = 18, 2, 16, 160, 16000
PAD_CODE = (1 << BITS) - 1  # padded rows hold this value; valid rows never do


def _header(layout: str, num_units: int) -> dict:
    return {"layout": layout, "sample_rate": SR, "hop_length": HOP, "n_mels": 32, "window_frames": 64,
            "patch_size": [PT, 16], "grid_per_window": [4, NF], "bits": BITS, "codes_dtype": "uint32",
            "tokens_per_second": SR / HOP / PT * NF, "bitrate": SR / HOP / PT * NF * BITS,
            "checkpoint": "/x/tiny.pt", "checkpoint_sha256": "a" * 64, "weights": "model",
            "input": {"kind": "folder", "path": "/audio"}, "num_units": num_units, "unit_size": 4}


def make_codes(folder: Path, utterances_per_unit: list[int], layout: str = "packed",
               seed: int = 0) -> dict[str, np.ndarray]:
    """A codes folder of random 18-bit codes; returns each utterance's valid rows ``(valid_rows, NF)``."""
    rng = np.random.default_rng(seed)
    write_header(folder, _header(layout, len(utterances_per_unit)))
    valid: dict[str, np.ndarray] = {}
    for unit, count in enumerate(utterances_per_unit):
        writer = UnitWriter(folder, unit, layout=layout, bits=BITS, hop_length=HOP, patch_t=PT, sample_rate=SR)
        for k in range(count):
            num_samples = int(rng.integers(1, 3 * 4 * PT * HOP))  # up to 3 windows
            frames = -(-num_samples // HOP)
            rows_valid = -(-frames // PT)
            rows = -(-rows_valid // 4) * 4
            codes = np.full((rows, NF), PAD_CODE, dtype=np.int64)
            codes[:rows_valid] = rng.integers(0, PAD_CODE, (rows_valid, NF))
            uid = f"u{unit}/utt{k}"
            writer.add(uid, codes, num_samples=num_samples, source=f"{uid}.wav")
            valid[uid] = codes[:rows_valid]
        writer.close()
    return valid


def expected_stream(codes: np.ndarray, group_bits: int | None, bos: bool, eos: bool) -> np.ndarray:
    vocab = 1 << (group_bits or BITS)
    return np.concatenate([[vocab] * bos, flatten_codes(codes, BITS, group_bits), [vocab + 1] * eos]).astype(np.int64)


def rebuild(items: list[dict]) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Per utterance: (first token, tokens) of every piece that appeared in ``items``."""
    pieces: dict[str, list[tuple[int, np.ndarray]]] = {}
    for item in items:
        tokens = item["tokens"].numpy()
        for uid, first, position, length in item["segments"]:
            pieces.setdefault(uid, []).append((first, tokens[position: position + length]))
    return pieces


def assert_exact_cover(items: list[dict], valid: dict[str, np.ndarray], group_bits: int | None, bos: bool,
                       eos: bool) -> None:
    pieces = rebuild(items)
    assert sorted(pieces) == sorted(valid)
    for uid, parts in pieces.items():
        parts.sort(key=lambda p: p[0])
        starts = [first for first, _ in parts]
        ends = [first + len(tokens) for first, tokens in parts]
        spans = list(zip(starts, ends, strict=True))
        assert starts[0] == 0 and starts[1:] == ends[:-1], f"{uid}: pieces {spans} overlap or miss"
        joined = np.concatenate([tokens for _, tokens in parts])
        assert np.array_equal(joined, expected_stream(valid[uid], group_bits, bos, eos)), uid
    real = sum(int(item["mask"].sum()) for item in items)
    assert real == sum(len(expected_stream(v, group_bits, bos, eos)) for v in valid.values())


# -- token views ---------------------------------------------------------------------------------
@pytest.mark.parametrize("group_bits", [None, 18, 9, 6, 3, 1])
def test_token_views_round_trip_exactly(group_bits: int | None) -> None:
    codes = np.random.default_rng(1).integers(0, 1 << BITS, (50, NF))
    codes[0] = [0, (1 << BITS) - 1]
    tokens = codes_to_tokens(codes, BITS, group_bits)
    groups = BITS // (group_bits or BITS)
    assert tokens.shape == (50, NF, groups) and tokens.min() >= 0 and tokens.max() < 1 << (group_bits or BITS)
    assert np.array_equal(tokens_to_codes(tokens, BITS, group_bits), codes)
    assert np.array_equal(unflatten_tokens(flatten_codes(codes, BITS, group_bits), NF, BITS, group_bits), codes)


def test_group_order_is_low_bits_first_and_interleaved_per_code() -> None:
    codes = np.array([[(3 << 9) | 5, (7 << 9) | 1]])  # one time row, two frequency patches
    assert codes_to_tokens(codes, 18, 9).tolist() == [[[5, 3], [1, 7]]]
    assert flatten_codes(codes, 18, 9).tolist() == [5, 3, 1, 7]


def test_token_views_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="does not divide"):
        codes_to_tokens(np.zeros(3, np.int64), 18, 7)
    with pytest.raises(ValueError, match=r"\[0, 2\^18\)"):
        codes_to_tokens(np.array([1 << 18]), 18, 9)
    with pytest.raises(ValueError, match="integer dtype"):
        codes_to_tokens(np.array([1.0]), 18, 9)
    with pytest.raises(ValueError, match=r"\[0, 2\^9\)"):
        tokens_to_codes(np.array([[512, 0]]), 18, 9)
    with pytest.raises(ValueError, match="last axis of 2"):
        tokens_to_codes(np.array([[1, 2, 3]]), 18, 9)


# -- coverage -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("group_bits", "bos", "eos", "units"),
                         [(None, False, False, [5, 4, 6, 3, 2]), (9, True, True, [5, 4, 6, 3, 2]),
                          (9, False, True, [7])])  # one unit for four consumers: split into parts
def test_every_valid_row_once_per_epoch_over_2_ranks_x_2_workers(tmp_path: Path, group_bits: int | None,
                                                                 bos: bool, eos: bool, units: list[int]) -> None:
    valid = make_codes(tmp_path, units)
    items = []
    for rank in range(2):
        data = CodesDataset(tmp_path, seq_len=37, group_bits=group_bits, bos=bos, eos=eos, epochs=1,
                            shuffle_units=2, rank=rank, world_size=2)
        for worker in range(2):
            items += list(data.stream(worker, 2))
    assert_exact_cover(items, valid, group_bits, bos, eos)
    for item in items:  # padding only at the end of a consumer's last sequence; never a padded code row
        mask = item["mask"].numpy()
        assert mask[: mask.sum()].all()
        assert (item["tokens"].numpy()[~mask] == 0).all() and (item["slot"].numpy()[~mask] == -1).all()
        if group_bits is None:
            assert PAD_CODE not in item["tokens"].numpy()


def test_data_loader_workers_cover_the_epoch_and_batches_collate(tmp_path: Path) -> None:
    valid = make_codes(tmp_path, [3, 3, 3])
    data = CodesDataset(tmp_path, seq_len=64, group_bits=9, bos=True, epochs=1)
    loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=2, collate_fn=collate_audio)
    items = []
    for batch in loader:
        batch = data.observe(batch)
        assert batch["tokens"].shape[1] == 64 and batch["tokens"].dtype == torch.int64 and "stream_state" not in batch
        items += [{"tokens": t, "mask": m, "segments": s}
                  for t, m, s in zip(batch["tokens"], batch["mask"], batch["segments"], strict=True)]
    assert_exact_cover(items, valid, 9, True, False)
    assert set(data.state_dict()["workers"]) == {0, 1}


def test_boundaries_mark_utterance_starts_and_slots_follow_rows(tmp_path: Path) -> None:
    valid = make_codes(tmp_path, [4, 4])
    data = CodesDataset(tmp_path, seq_len=50, group_bits=6, bos=True, epochs=1)
    assert data.vocab_size == 64 + 1 and data.tokens_per_second == SR / HOP / PT * NF * 3
    starts = 0
    for item in data.stream():
        start, tokens, slot = item["start"].numpy(), item["tokens"].numpy(), item["slot"].numpy()
        expected = np.zeros_like(start)
        for uid, first, position, length in item["segments"]:
            expected[position] = first == 0
            stream = expected_stream(valid[uid], 6, True, False)
            code_index = np.arange(first, first + length) - 1
            want_slot = np.where(code_index >= 0, code_index % (NF * 3), -1)
            assert np.array_equal(slot[position: position + length], want_slot)
            assert np.array_equal(tokens[position: position + length], stream[first: first + length])
        assert np.array_equal(start, expected)
        assert (tokens[start] == data.bos_id).all()
        starts += int(start.sum())
    assert starts == len(valid)


def test_to_codes_maps_an_utterance_back(tmp_path: Path) -> None:
    valid = make_codes(tmp_path, [3])
    for group_bits in (None, 9):
        data = CodesDataset(tmp_path, seq_len=10_000, group_bits=group_bits, epochs=1, shuffle=False)
        (item,) = list(data.stream())
        for uid, _, position, length in item["segments"]:
            assert np.array_equal(data.to_codes(item["tokens"][position: position + length]), valid[uid])


def test_files_layout_reads_the_same_tokens(tmp_path: Path) -> None:
    make_codes(tmp_path / "p", [3, 2], "packed", seed=3)
    make_codes(tmp_path / "f", [3, 2], "files", seed=3)
    one = [i["tokens"] for i in CodesDataset(tmp_path / "p", seq_len=40, group_bits=9, epochs=1).stream()]
    two = [i["tokens"] for i in CodesDataset(tmp_path / "f", seq_len=40, group_bits=9, epochs=1).stream()]
    assert len(one) == len(two) and all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


def test_shuffle_is_seeded_and_changes_with_the_epoch(tmp_path: Path) -> None:
    make_codes(tmp_path, [4, 4, 4, 4])

    def orders(seed: int) -> list[list[str]]:
        data = CodesDataset(tmp_path, seq_len=20, epochs=2, seed=seed, shuffle_units=4)
        per_epoch: list[list[str]] = [[], []]
        for item in data.stream():
            for uid, first, _, _ in item["segments"]:
                if first == 0:
                    per_epoch[item["epoch"]].append(uid)
        return per_epoch

    a, b = orders(0), orders(1)
    assert a == orders(0) and a[0] != a[1] and a != b and sorted(a[0]) == sorted(a[1])


def test_select_holds_out_utterances(tmp_path: Path) -> None:
    valid = make_codes(tmp_path, [3, 3])
    data = CodesDataset(tmp_path, seq_len=30, epochs=1, select=lambda u: u.id.startswith("u1/"))
    assert_exact_cover(list(data.stream()), {k: v for k, v in valid.items() if k.startswith("u1/")}, None, False,
                       False)
    with pytest.raises(ValueError, match="no utterance"):
        CodesDataset(tmp_path, seq_len=30, select=lambda u: False)


# -- resume ----------------------------------------------------------------------------------------
def _key(item: dict) -> tuple:
    return (item["epoch"], tuple(map(tuple, item["segments"])), item["tokens"].numpy().tobytes())


@pytest.mark.parametrize("where", ["start", "second", "mid_epoch", "end_of_epoch", "next_epoch", "all"])
def test_resume_mid_epoch_continues_with_exactly_the_remaining_sequences(tmp_path: Path, where: str) -> None:
    make_codes(tmp_path, [4, 3, 5, 4])

    def dataset() -> CodesDataset:
        return CodesDataset(tmp_path, seq_len=16, group_bits=9, eos=True, epochs=2, shuffle_units=1,
                            rank=1, world_size=2)

    full = {w: list(dataset().stream(w, 2)) for w in range(2)}
    first = dataset()
    for worker in range(2):
        in_first_epoch = sum(item["epoch"] == 0 for item in full[worker])
        assert in_first_epoch >= 4
        consumed = {"start": 0, "second": 1, "mid_epoch": in_first_epoch // 2, "end_of_epoch": in_first_epoch,
                    "next_epoch": in_first_epoch + 1, "all": len(full[worker])}[where]
        if consumed:
            first.observe(collate_audio([dict(item) for item in full[worker][:consumed]]))
        full[worker] = full[worker][consumed:]
    resumed = dataset()
    resumed.load_state_dict(first.state_dict())
    for worker in range(2):
        assert [_key(i) for i in resumed.stream(worker, 2)] == [_key(i) for i in full[worker]]


def test_resume_with_another_world_size_starts_the_next_epoch(tmp_path: Path) -> None:
    make_codes(tmp_path, [4, 4])
    first = CodesDataset(tmp_path, seq_len=30, epochs=3, rank=0, world_size=2)
    first.observe(collate_audio([next(iter(first.stream()))]))
    other = CodesDataset(tmp_path, seq_len=30, epochs=3)
    with pytest.warns(UserWarning, match="starts epoch 1"):
        other.load_state_dict(first.state_dict())
    assert {item["epoch"] for item in other.stream()} == {1, 2}


# -- bad data ----------------------------------------------------------------------------------------
def test_a_missing_shard_is_skipped_named_and_the_rest_is_read(tmp_path: Path) -> None:
    valid = make_codes(tmp_path, [3, 3])
    (tmp_path / "shards" / "codes-000000.npy").unlink()
    data = CodesDataset(tmp_path, seq_len=30, epochs=1)
    with pytest.warns(UserWarning, match="codes-000000.npy"):
        items = list(data.stream())
    assert_exact_cover(items, {k: v for k, v in valid.items() if k.startswith("u1/")}, None, False, False)
    assert data.num_skipped == 3 and sum(len(i["skipped"]) for i in items) == 3


def test_a_skip_is_announced_once_per_dataset_and_kept_with_its_reason(tmp_path: Path) -> None:
    make_codes(tmp_path, [3, 3])
    (tmp_path / "shards" / "codes-000000.npy").unlink()
    data = CodesDataset(tmp_path, seq_len=30, epochs=2)
    with pytest.warns(AudioSkipWarning) as caught:
        list(data.stream())
    assert len(caught) == 3  # each utterance once, although both epochs meet it
    assert list(data.skip_reasons) == data.skipped_files and len(data.skipped_files) == 3
    assert all(name.startswith("shards/codes-000000.npy:") and reason for name, reason in data.skip_reasons.items())
    # Another dataset over the same folder announces its own skips (the once-only ledger is per dataset).
    with pytest.warns(AudioSkipWarning) as again:
        list(CodesDataset(tmp_path, seq_len=30, epochs=1).stream())
    assert len(again) == 3


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    make_codes(tmp_path, [2])
    with pytest.raises(ValueError, match="seq_len=0"):
        CodesDataset(tmp_path, seq_len=0)
    with pytest.raises(ValueError, match="group_bits=7 does not divide bits=18"):
        CodesDataset(tmp_path, seq_len=8, group_bits=7)
    with pytest.raises(ValueError, match="rank=2"):
        CodesDataset(tmp_path, seq_len=8, rank=2, world_size=2)
