"""Tokenize a corpus into a codes folder: work units over processes, resumable, in constant memory.

:func:`encode_corpus` encodes the work units of a :class:`~transcoder.data.corpus.CorpusSource` that belong
to this process (unit ``u`` goes to rank ``u % world_size``; ranks never talk to each other, so a slow or
dead rank never blocks the others) into a codes folder (format in :mod:`transcoder.codes`). Audio is
decoded and resampled in DataLoader workers and cut into model windows as it streams
(:class:`~transcoder.data.corpus.CorpusWindows`); windows of many files share a forward pass of
``tokenizer.batch_size`` windows. Each finished unit is written atomically and marked done by its index
file, so rerunning the same command after a crash or ``kill -9`` skips finished units and gives the
same codes as an uninterrupted run. A file that cannot be decoded is recorded with its reason in its
unit's index and counted; it never stops the run.

The folder is locked per rank (``.lock-rank<r>``, a ``flock`` released by the kernel when the process dies);
a run whose ranks find a lock held by another job refuses the folder, and a folder written with another
checkpoint or other settings is refused naming both (:func:`transcoder.codes.write_header`).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from transcoder.api import AudioTokenizer
from transcoder.codes import (
    INDEX_DIR,
    SHARD_DIR,
    CodesFormatError,
    CodesIndex,
    UnitWriter,
    codes_dtype,
    unit_index_path,
    write_header,
)
from transcoder.data.corpus import CorpusSource, CorpusWindows
from transcoder.utils.locking import FolderLock, FolderLockedError, held_locks

__all__ = ["EncodeSummary", "codes_header", "encode_corpus", "job_label", "lock_output"]


@dataclass
class EncodeSummary:
    """What one process encoded: audio ``seconds``, utterances ``encoded`` / ``failed`` (``{source: reason}``),
    ``tokens`` (valid rows x Nf, what an LM reads), ``rows`` (all rows), units ``done`` now and
    ``skipped`` (finished before), ``elapsed`` wall seconds, ``units_finished`` / ``num_units`` of the folder."""

    output: str
    rank: int = 0
    world_size: int = 1
    seconds: float = 0.0
    encoded: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    tokens: int = 0
    rows: int = 0
    done: int = 0
    skipped: int = 0
    elapsed: float = 0.0
    units_finished: int = 0
    num_units: int = 0
    n_freq_patches: int = 1

    @property
    def real_time_factor(self) -> float:
        """Wall seconds per second of audio (below 1: faster than real time); NaN before any audio."""
        return self.elapsed / self.seconds if self.seconds else float("nan")

    def lines(self) -> list[str]:
        who = f"rank {self.rank}/{self.world_size}: " if self.world_size > 1 else ""
        speed = f"RTF {self.real_time_factor:.4f} ({1 / self.real_time_factor:.1f}x real time)" if self.seconds \
            else "RTF n/a"
        out = [f"{who}encoded {self.seconds / 3600:.3f} h of audio, {self.encoded} files, {len(self.failed)} failed, "
               f"{self.tokens} tokens ({self.rows - self.tokens // self.n_freq_patches} padded rows left out), "
               f"{speed}, {self.elapsed:.1f} s",
               f"{who}units: {self.done} written now, {self.skipped} already done; folder {self.output}: "
               f"{self.units_finished}/{self.num_units} units finished"]
        out += [f"  failed: {source}: {reason}" for source, reason in self.failed.items()]
        return out


def codes_header(tokenizer: AudioTokenizer, source: CorpusSource, layout: str, unit_size: int,
                 bits: int | None = None) -> dict[str, Any]:
    """The ``codes.json`` content of a run (format fields are added by :func:`~transcoder.codes.write_header`);
    ``bits``: the width of the codes (default: the model's)."""
    pt, pf = tokenizer.patch_size
    bits = tokenizer.check_bits(bits)
    rates = tokenizer.rates_at(bits)
    return {
        "layout": layout,
        "checkpoint": str(tokenizer.checkpoint_path.resolve()) if tokenizer.checkpoint_path else None,
        "checkpoint_sha256": tokenizer.checkpoint_sha256,
        "weights": tokenizer.weights,
        "sample_rate": tokenizer.sample_rate,
        "hop_length": tokenizer.hop_length,
        "n_mels": tokenizer.mel_config.n_mels,
        "window_frames": tokenizer.window_frames,
        "patch_size": [pt, pf],
        "grid_per_window": [tokenizer.time_rows_per_window, tokenizer.n_freq_patches],
        "bits": bits,
        "model_bits": tokenizer.bits_per_token,
        "codes_dtype": codes_dtype(bits).name,
        "tokens_per_second": rates.tokens_per_second,
        "bitrate": rates.bits_per_second,
        "input": source.description,
        "num_units": source.num_units(unit_size),
        "unit_size": unit_size,
    }


def check_finished_units(output: Path, units: set[int]) -> None:
    """Before resuming: the finished ``units`` of ``output`` must be sound (indexes, rows, offsets, array
    checksums; :class:`~transcoder.codes.CodesIndex`), else :class:`CodesFormatError` naming the file and
    field, so a damaged unit is never counted as done."""
    if not units:
        return
    problems = CodesIndex.open(output).check_arrays(units)
    if problems:
        raise CodesFormatError(f"{problems[0]} (delete that unit's index file to encode the unit again)")


def job_label(rank: int, world_size: int) -> str:
    """``job <id> rank r/W``: the ranks of one torchrun job share the id (run id, master address and port)."""
    if world_size > 1:
        job = (f"{os.environ.get('TORCHELASTIC_RUN_ID', '-')}@{os.environ.get('MASTER_ADDR', '-')}:"
               f"{os.environ.get('MASTER_PORT', '-')}")
    else:
        job = f"pid{os.getpid()}@{socket.gethostname()}"
    return f"job {job} rank {rank}/{world_size}"


def lock_output(folder: Path, rank: int, world_size: int) -> FolderLock:
    """Lock ``folder`` for this rank; :class:`FolderLockedError` if another job (or the same rank of
    another job) works in it."""
    label = job_label(rank, world_size)
    refusal = ("two encodes in one folder would mix their codes; wait for it, stop it, or use another output "
               "folder")
    lock = FolderLock(folder, f".lock-rank{rank}", refusal=refusal, label=label, wait_seconds=2.0,
                      what="output folder")
    job = label.rsplit(" rank ", 1)[0]
    others = [h for h in held_locks(folder, ".lock-rank*", skip=lock.path.name) if not h.startswith(job + " rank ")]
    if others:
        lock.release()
        raise FolderLockedError(f"output folder {folder} is in use by {others[0]}: {refusal}")
    return lock


def _remove_stale_temporaries(folder: Path, units: list[int]) -> None:
    """Temporary files of this rank's unfinished units left by a killed run (the index and shard names)."""
    for unit in units:
        for pattern in (f"{INDEX_DIR}/.unit-{unit:06d}.json.tmp-*", f"{SHARD_DIR}/.codes-{unit:06d}.npy.tmp-*"):
            for path in folder.glob(pattern):
                path.unlink(missing_ok=True)


@dataclass
class _Unit:
    started: float
    windows: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    ends: int = 0


def encode_corpus(tokenizer: AudioTokenizer, source: CorpusSource, output: str | Path, *, layout: str = "packed",
                  unit_size: int = 256, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                  progress: bool = True, block_frames: int = 1 << 16, bits: int | None = None,
                  on_unit: Callable[[int], None] | None = None,
                  warn: Callable[[str], None] | None = None) -> EncodeSummary:
    """Encode this rank's unfinished units of ``source`` into ``output`` (see the module doc).

    Args:
        tokenizer: the model (its ``batch_size`` windows per forward pass).
        source: the corpus (:func:`transcoder.data.corpus.open_corpus`).
        output: the codes folder (created; reused when a previous run of the same settings wrote it).
        layout: ``"packed"`` (one shard per unit) or ``"files"`` (``<id>.npy`` per utterance).
        unit_size: items per work unit (part of the folder's settings: a rerun must use the same).
        rank, world_size: this process among the encoding processes (``RANK`` / ``WORLD_SIZE`` under torchrun).
        num_workers: DataLoader processes decoding audio (0: in this process).
        progress: show a progress bar in hours of audio.
        on_unit: called with each unit number once it is written (tests, logging).
        warn: called with ``"skipping <source>: <reason>"`` for each failed utterance, as it happens.
        bits: bits per token written (default: the model's; fewer keep the first ``k`` bits of every token
            of a nested-bits model, :meth:`~transcoder.api.AudioTokenizer.check_bits`). Part of the folder's
            settings: a rerun at another width is refused.

    Raises:
        FolderLockedError: another job works in ``output``.
        CodesFormatError: ``output`` holds codes of another checkpoint or other settings.
        DiskFullError: a write ran out of space (names the file; the unit stays unfinished).
    """
    if unit_size < 1:
        raise ValueError(f"unit_size must be >= 1, got {unit_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside [0, {world_size})")
    bits = tokenizer.check_bits(bits)
    output = Path(output)
    started = time.perf_counter()
    summary = EncodeSummary(str(output), rank, world_size, num_units=source.num_units(unit_size))
    summary.n_freq_patches = tokenizer.n_freq_patches
    lock = lock_output(output, rank, world_size)
    try:
        write_header(output, codes_header(tokenizer, source, layout, unit_size, bits))
        mine = list(range(rank, summary.num_units, world_size))
        todo = [u for u in mine if not unit_index_path(output, u).is_file()]
        check_finished_units(output, set(mine) - set(todo))
        summary.skipped = len(mine) - len(todo)
        _remove_stale_temporaries(output, todo)
        if todo:
            _encode_units(tokenizer, source, output, todo, layout, unit_size, rank, world_size, num_workers,
                          progress, block_frames, summary, on_unit, warn, bits)
    finally:
        lock.release()
    summary.elapsed = time.perf_counter() - started
    summary.units_finished = len(list((output / INDEX_DIR).glob("unit-*.json")))
    return summary


def _encode_units(tokenizer: AudioTokenizer, source: CorpusSource, output: Path, todo: list[int], layout: str,
                  unit_size: int, rank: int, world_size: int, num_workers: int, progress: bool, block_frames: int,
                  summary: EncodeSummary, on_unit: Callable[[int], None] | None,
                  warn: Callable[[str], None] | None, bits: int) -> None:
    mel = tokenizer.mel_config
    windows = CorpusWindows(source, todo, unit_size, tokenizer.sample_rate, tokenizer.window_samples,
                            tokenizer.hop_length, mel.n_fft, mel.pad_mode, block_frames)
    loader = DataLoader(windows, batch_size=None, num_workers=num_workers,
                        prefetch_factor=4 if num_workers else None)
    units: dict[int, _Unit] = {}
    pending: list[tuple[int, int, np.ndarray]] = []
    bar = tqdm(total=None, disable=not progress, unit="h", dynamic_ncols=True,
               bar_format="{desc} {n:.3f} h of audio [{elapsed}{postfix}]", desc="encode")
    start = time.perf_counter()

    def run_batch() -> None:
        if not pending:
            return
        codes = tokenizer.encode_segments([segment for _, _, segment in pending], bits)
        for (unit, item, _), window_codes in zip(pending, codes, strict=True):
            state = units[unit]
            if item in state.windows:  # not dropped by an error
                state.windows[item].append(window_codes)
        pending.clear()

    def finish(unit: int) -> None:
        run_batch()
        state = units.pop(unit)
        writer = UnitWriter(output, unit, layout=layout, bits=bits,
                            hop_length=tokenizer.hop_length, patch_t=tokenizer.patch_size[0],
                            sample_rate=tokenizer.sample_rate, rank=rank, world_size=world_size)
        for item in windows.unit_items(unit):
            result = state.results.get(item, {"kind": "error", "reason": "no result from the loader"})
            uid, src = source.ids[item], source.sources[item]
            if result["kind"] == "done":
                codes = torch.cat(state.windows[item]).reshape(-1, tokenizer.n_freq_patches).numpy()
                try:
                    writer.add(uid, codes, result["num_samples"], src,
                               source_sample_rate=result["source_sample_rate"])
                except CodesFormatError as err:
                    result = {"kind": "error", "reason": f"CodesFormatError: {err}"}
                else:
                    summary.encoded += 1
                    summary.seconds += result["num_samples"] / tokenizer.sample_rate
                    summary.rows += codes.shape[0]
                    summary.tokens += writer.utterances[-1]["valid_rows"] * tokenizer.n_freq_patches
            if result["kind"] == "error":
                writer.fail(uid, src, result["reason"])
                summary.failed[src] = result["reason"]
                if warn is not None:
                    warn(f"skipping {src}: {result['reason']}")
        writer.close(elapsed=time.perf_counter() - state.started)
        summary.done += 1
        if on_unit is not None:
            on_unit(unit)

    for message in loader:
        unit, kind = int(message["unit"]), message["kind"]
        state = units.setdefault(unit, _Unit(time.perf_counter()))
        if kind == "window":
            item = int(message["item"])
            state.windows.setdefault(item, [])
            if item in state.windows:
                pending.append((unit, item, np.asarray(message["segment"], dtype=np.float32)))
            if len(pending) >= tokenizer.batch_size:
                run_batch()
        elif kind == "done":
            item = int(message["item"])
            state.windows.setdefault(item, [])
            state.results[item] = {"kind": "done", "num_samples": int(message["num_samples"]),
                                   "source_sample_rate": int(message["source_sample_rate"])}
            hours = int(message["num_samples"]) / tokenizer.sample_rate / 3600
            bar.update(hours)
            wall = time.perf_counter() - start
            bar.set_postfix_str(f"{bar.n / (wall / 3600):.0f} h audio/h, {summary.done + summary.skipped}/"
                                f"{len(todo) + summary.skipped} units", refresh=False)
        elif kind == "error":
            item = int(message["item"])
            state.windows.pop(item, None)
            state.results[item] = {"kind": "error", "reason": str(message["reason"])}
        elif kind == "unit_end":
            state.ends += 1
            if state.ends == int(message["workers"]):
                finish(unit)
    bar.close()
