"""Token sequences for a language model from a codes folder: rank- and worker-aware, shuffled, resumable.

:class:`CodesDataset` reads a folder written by ``scripts/tokenize_audio.py encode`` (either layout;
packed shards are memory-mapped) through :class:`~transcoder.codes.CodesIndex` and yields sequences
of ``seq_len`` tokens packed across utterances. Only the ``valid_rows`` of each utterance are read
(the padded rows of its last window never appear). Token views and their order are those of
:mod:`transcoder.codes_tokens`; an utterance's token stream is ``[BOS] tokens [EOS]`` (each special
token only when asked for).

Assignment (epoch ``e``, every valid row once): the work units of the folder (one packed shard each)
are permuted with a generator seeded by ``(seed, e)``, the same on every rank, and dealt round robin
to the ``C = world_size * num_workers`` consumers (consumer ``c = rank * num_workers + worker``); with
fewer units than consumers each unit is split into ``ceil(C / U)`` parts (part ``k``: utterances
``k, k + parts, ...``). A consumer reads its units in blocks of ``shuffle_units`` units, the
utterances of a block in an order drawn from ``(seed, e, c, block)``, and cuts the concatenated
token stream into sequences. The epoch's last sequence of a consumer is padded (``mask`` False) unless
``drop_last``. With ``epochs=None`` the stream is endless (training counted in steps: consumers with
less data simply start the next epoch sooner); a finite ``epochs`` ends after that many.

Resume: every item carries its consumer's position after it (epoch, block, utterance, token). As with
:class:`~transcoder.data.ShardStreamDataset`, the training loop passes consumed batches to
:meth:`CodesDataset.observe` and checkpoints :meth:`state_dict` per rank; a dataset given
:meth:`load_state_dict` continues each consumer with exactly the sequences it had not yet yielded
(nothing skipped, nothing repeated: positions are exact, there is no shuffle buffer). With another
world size, ``num_workers``, folder or token layout, every consumer starts the next epoch (a warning
says so).

Bad data: a folder whose header or unit indexes are inconsistent (:mod:`transcoder.codes_check`) is refused
with one line naming the file and field, as is one that lacks unit indexes (unless ``allow_incomplete``). An
utterance whose shard is missing or unreadable, of another dtype, shape or SHA-256 than its index records,
too short for its index, or holding codes outside ``[0, 2^bits)`` is skipped, warned about once
(:class:`~transcoder.data.base.AudioSkipWarning`) and named in the next item's ``"skipped"`` list.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from transcoder.codes import CodesFormatError, CodesIndex, Utterance
from transcoder.codes_tokens import flatten_codes, groups_per_code, unflatten_tokens
from transcoder.data.base import AudioDataError, SkipLedger
from transcoder.data.stream_state import STATE_KEY, StreamResume

__all__ = ["CodesDataset"]

_EMPTY_EPOCHS_LIMIT = 3


class CodesDataset(StreamResume, SkipLedger, IterableDataset):
    """Sequences of ``seq_len`` LM tokens from a codes folder (see the module docstring).

    Args:
        codes: a codes folder (``codes.json`` + ``index/``), or an older ``manifest.json`` folder.
        seq_len: tokens per sequence.
        group_bits: ``None`` for one token per code (vocabulary ``2^bits``), or a divisor of ``bits``
            (e.g. 9 for 18-bit codes: two tokens of vocabulary 512 per code, low bits first).
        bos, eos: put a BOS token (id ``2^group_bits``) before / an EOS token (id ``2^group_bits + 1``)
            after every utterance.
        pad_id: token id of the padding of an epoch's last sequence (``mask`` is False there).
        seed, shuffle: unit and utterance order (``shuffle=False``: index order, units dealt in order).
        shuffle_units: units whose utterances are shuffled together (and held in memory) by a consumer.
        epochs: passes over the data, or ``None`` for an endless stream.
        drop_last: drop each consumer's padded last sequence of an epoch.
        select: keep only the utterances for which ``select(utterance)`` is true (e.g. hold out a voice).
        rank, world_size: this process's place; by default from ``torch.distributed`` (else ``RANK`` /
            ``WORLD_SIZE``, else 0 / 1).
        allow_incomplete: read a folder some of whose units have no index (unfinished or deleted; the header
            says how many exist). By default such a folder is refused, naming the missing index files.

    Item: ``{"tokens": (seq_len,) int64, "mask": (seq_len,) bool (real tokens), "start": (seq_len,) bool
    (first token of an utterance: its BOS when ``bos``), "slot": (seq_len,) int64 (place of a code token
    within its time row, ``f * G + g``; -1 for BOS, EOS and padding), "segments": [[utterance id, first
    token in the utterance's stream, position in the sequence, length], ...], "epoch": int,
    "skipped": list[str], "stream_state": [worker, num_workers, epoch, block, utterance, token,
    yielded]}``. Batch with :func:`~transcoder.data.collate_audio` (it stacks the tensors and keeps the
    lists); :meth:`observe` removes ``stream_state``.
    """

    def __init__(self, codes: str | Path, *, seq_len: int, group_bits: int | None = None, bos: bool = False,
                 eos: bool = False, pad_id: int = 0, seed: int = 0, shuffle: bool = True, shuffle_units: int = 16,
                 epochs: int | None = None, drop_last: bool = False,
                 select: Callable[[Utterance], bool] | None = None, rank: int | None = None,
                 world_size: int | None = None, allow_incomplete: bool = False) -> None:
        super().__init__()
        name = type(self).__name__
        for key, value in (("seq_len", seq_len), ("shuffle_units", shuffle_units), ("epochs", epochs)):
            if value is None and key == "epochs":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: {key}={value!r}, expected a positive integer")
        self.index = CodesIndex.open(codes)
        self.folder = self.index.folder
        missing = self.index.missing_units
        if missing and not allow_incomplete:
            names = ", ".join(f"unit-{unit:06d}.json" for unit in missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise ValueError(f"{name}: {self.folder / 'index'} lacks {len(missing)} of the header's "
                             f"num_units={self.index.num_units} unit indexes ({names}): the folder is unfinished "
                             "or damaged (finish the encode, or pass allow_incomplete=True)")
        self.bits = int(self.index.header["bits"])
        try:
            self.groups = groups_per_code(self.bits, group_bits)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
        self.group_bits = self.bits // self.groups
        self.n_freq_patches = int(self.index.header.get("grid_per_window", [0, 0])[1] or 0) or None
        self.seq_len, self.bos, self.eos, self.pad_id = seq_len, bool(bos), bool(eos), int(pad_id)
        self.seed, self.shuffle, self.shuffle_units = int(seed), bool(shuffle), shuffle_units
        self.epochs, self.drop_last = epochs, bool(drop_last)
        units: dict[int, list[Utterance]] = {}
        for utt in self.index:
            if select is None or select(utt):
                units.setdefault(utt.unit if utt.unit is not None else 0, []).append(utt)
        if not units:
            raise ValueError(f"{name}: no utterance of {self.folder} is selected ({len(self.index)} in the index)")
        self.units = [units[key] for key in sorted(units)]
        self._failed: dict[str, str] = {}
        self._report_token = os.urandom(8).hex()  # this dataset's skips are announced once across its workers
        self._init_stream_state(rank, world_size)

    # --- vocabulary and rates ------------------------------------------------------------------
    @property
    def code_vocab_size(self) -> int:
        """Token values that encode codes: ``2^group_bits``."""
        return 1 << self.group_bits

    @property
    def bos_id(self) -> int:
        return self.code_vocab_size

    @property
    def eos_id(self) -> int:
        return self.code_vocab_size + 1

    @property
    def vocab_size(self) -> int:
        """Embedding size an LM needs: the code tokens plus BOS and EOS when used."""
        return self.code_vocab_size + (2 if self.eos else 1 if self.bos else 0)

    @property
    def tokens_per_second(self) -> float:
        """Code tokens per second of audio (the header's codes per second times tokens per code)."""
        return float(self.index.header["tokens_per_second"]) * self.groups

    @property
    def utterances(self) -> list[Utterance]:
        """The selected utterances, in unit order."""
        return [utt for unit in self.units for utt in unit]

    @property
    def num_tokens(self) -> int:
        """Tokens of one epoch over all consumers (code tokens plus BOS / EOS)."""
        return sum(self._utterance_length(utt) for utt in self.utterances)

    def _utterance_length(self, utt: Utterance) -> int:
        nf = self.n_freq_patches or 1
        return utt.valid_rows * nf * self.groups + self.bos + self.eos

    def to_codes(self, tokens: np.ndarray | torch.Tensor) -> np.ndarray:
        """Code tokens of whole time rows ``(rows * Nf * G,)`` back to codes ``(rows, Nf)`` (exact inverse)."""
        array = tokens.cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
        group_bits = self.group_bits if self.groups > 1 else None
        return unflatten_tokens(array, self.n_freq_patches or 1, self.bits, group_bits)

    # --- identity, for the trainer's checks ---------------------------------------------------
    @property
    def num_files(self) -> int:
        """Selected utterances."""
        return sum(len(unit) for unit in self.units)

    def fingerprint(self) -> dict[str, Any]:
        """Utterance count and a hash of the selection (ids, units, valid rows) and the token layout."""
        digest = hashlib.sha1(f"{self.seq_len}\0{self.groups}\0{self.bos}\0{self.eos}\0{self.shuffle_units}\0"
                              f"{self.shuffle}\0{self.seed}\0".encode())
        for number, unit in enumerate(self.units):
            for utt in unit:
                digest.update(f"{number}\0{utt.id}\0{utt.valid_rows}\0".encode())
        return {"count": self.num_files, "sha1": digest.hexdigest()[:16]}

    # --- assignment --------------------------------------------------------------------------
    def tasks(self, epoch: int, consumer: int, consumers: int) -> list[tuple[int, int, int]]:
        """Consumer ``consumer``'s ``(unit, part, parts)`` list for epoch ``epoch``."""
        num_units = len(self.units)
        order = (np.random.default_rng([self.seed, epoch]).permutation(num_units) if self.shuffle
                 else np.arange(num_units))
        parts = math.ceil(consumers / num_units)
        dealt = [(int(unit), part, parts) for part in range(parts) for unit in order]
        return dealt[consumer::consumers]

    def blocks(self, epoch: int, consumer: int, consumers: int) -> list[list[Utterance]]:
        """Consumer ``consumer``'s utterances of epoch ``epoch``, block by block, in reading order."""
        tasks = self.tasks(epoch, consumer, consumers)
        blocks = []
        for number, first in enumerate(range(0, len(tasks), self.shuffle_units)):
            block = [utt for unit, part, parts in tasks[first: first + self.shuffle_units]
                     for utt in self.units[unit][part::parts]]
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch, consumer, number, 2]).permutation(len(block))
                block = [block[i] for i in order]
            blocks.append(block)
        return blocks

    # --- resume (observe, epoch_at = the furthest epoch, state_dict, load_state_dict: StreamResume) -------
    _position_width = 5  # epoch, block, utterance, token, yielded

    # --- reading -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        return self.stream(*((info.id, info.num_workers) if info is not None else (0, 1)))

    def stream(self, worker: int = 0, num_workers: int = 1) -> Iterator[dict[str, Any]]:
        """The sequences of loader worker ``worker`` of ``num_workers`` on this rank, from the loaded
        resume position if any."""
        consumer, consumers = self.rank * num_workers + worker, self.world_size * num_workers
        epoch, first_block, first_utt, first_token, yielded = self._resume_position(worker, num_workers)
        pending: list[str] = []
        empty_epochs = 0
        while self.epochs is None or epoch < self.epochs:
            builder = _SequenceBuilder(self)
            yielded_in_epoch = 0
            blocks = self.blocks(epoch, consumer, consumers)
            for block_number in range(first_block, len(blocks)):
                arrays: dict[str, np.ndarray] = {}  # this block's memory-mapped shards
                block = blocks[block_number]
                start_utt = first_utt if block_number == first_block else 0
                for utt_number in range(start_utt, len(block)):
                    utt = block[utt_number]
                    stream = self._tokens(utt, arrays, pending)
                    if stream is None:
                        continue
                    token = first_token if (block_number, utt_number) == (first_block, first_utt) else 0
                    while token < len(stream):
                        token = builder.add(utt.id, stream, token)
                        if builder.full:
                            yielded += 1
                            yielded_in_epoch += 1
                            yield builder.emit(epoch, [worker, num_workers, epoch, block_number, utt_number, token,
                                                       yielded], pending)
                            builder = _SequenceBuilder(self)
            if builder.length and not self.drop_last:
                yielded += 1
                yielded_in_epoch += 1
                yield builder.emit(epoch, [worker, num_workers, epoch + 1, 0, 0, 0, yielded], pending)
            empty_epochs = 0 if yielded_in_epoch else empty_epochs + 1
            if self.epochs is None and empty_epochs >= _EMPTY_EPOCHS_LIMIT:
                raise AudioDataError(f"{type(self).__name__}: {empty_epochs} epochs in a row over {self.folder} gave "
                                     f"rank {self.rank} worker {worker} no sequence ({consumers} consumers for "
                                     f"{self.num_files} utterances in {len(self.units)} units); failures: "
                                     f"{list(self._failed.items())[-3:]}")
            epoch, first_block, first_utt, first_token = epoch + 1, 0, 0, 0

    def _tokens(self, utt: Utterance, arrays: dict[str, np.ndarray], pending: list[str]) -> np.ndarray | None:
        """The utterance's token stream ``[BOS] tokens [EOS]`` (int64), or None (failure recorded)."""
        relative = utt.shard if utt.shard is not None else str(utt.file)
        where = self.folder / relative
        try:
            if relative not in arrays:
                if not where.is_file():
                    raise CodesFormatError("listed in the index but missing")
                arrays[relative] = self.index.array(relative)  # dtype, shape, rows and checksum checked
            array = arrays[relative]
            stop = utt.offset + utt.valid_rows
            if array.ndim != 2 or stop > array.shape[0] or array.dtype.kind not in "iu":
                raise CodesFormatError(f"needs integer rows [{utt.offset}, {stop}), the array is {array.dtype} "
                                       f"{tuple(array.shape)}")
            if self.n_freq_patches is None:
                self.n_freq_patches = int(array.shape[1])
            if array.shape[1] != self.n_freq_patches:
                raise CodesFormatError(f"has {array.shape[1]} frequency patches, the header says "
                                       f"{self.n_freq_patches}")
            tokens = flatten_codes(np.asarray(array[utt.offset: stop]), self.bits,
                                   self.group_bits if self.groups > 1 else None)
        except (OSError, ValueError) as err:  # CodesFormatError is a ValueError
            self._fail(f"{relative}:{utt.id}", str(err), pending)
            return None
        head = [self.bos_id] if self.bos else []
        tail = [self.eos_id] if self.eos else []
        return np.concatenate([np.array(head, np.int64), tokens, np.array(tail, np.int64)]) if head or tail \
            else tokens

    def _fail(self, name: str, reason: str, pending: list[str]) -> None:
        pending.append(name)
        self._record_failure(name, reason)

    def _skip_context(self) -> str:
        return f" under '{self.folder}'"


class _SequenceBuilder:
    """Fills one sequence with pieces of utterance token streams."""

    def __init__(self, dataset: CodesDataset) -> None:
        self.dataset = dataset
        size = dataset.seq_len
        self.tokens = np.full(size, dataset.pad_id, dtype=np.int64)
        self.slot = np.full(size, -1, dtype=np.int64)
        self.start = np.zeros(size, dtype=bool)
        self.segments: list[list[Any]] = []
        self.length = 0

    @property
    def full(self) -> bool:
        return self.length == self.dataset.seq_len

    def add(self, utterance_id: str, stream: np.ndarray, token: int) -> int:
        """Copy ``stream[token:]`` as far as it fits; returns the next token of ``stream`` to copy."""
        take = min(self.dataset.seq_len - self.length, len(stream) - token)
        here = slice(self.length, self.length + take)
        self.tokens[here] = stream[token: token + take]
        code_index = np.arange(token, token + take) - int(self.dataset.bos)  # index among the code tokens
        codes_in_stream = len(stream) - int(self.dataset.bos) - int(self.dataset.eos)
        is_code = (code_index >= 0) & (code_index < codes_in_stream)
        row = (self.dataset.n_freq_patches or 1) * self.dataset.groups
        self.slot[here] = np.where(is_code, code_index % row, -1)
        if token == 0:
            self.start[self.length] = True
        self.segments.append([utterance_id, token, self.length, take])
        self.length += take
        return token + take

    def emit(self, epoch: int, state: list[int], pending: list[str]) -> dict[str, Any]:
        mask = np.zeros(self.dataset.seq_len, dtype=bool)
        mask[: self.length] = True
        skipped, pending[:] = list(pending), []
        return {"tokens": torch.from_numpy(self.tokens), "mask": torch.from_numpy(mask),
                "start": torch.from_numpy(self.start), "slot": torch.from_numpy(self.slot),
                "segments": self.segments, "epoch": epoch, "skipped": skipped, STATE_KEY: state}
