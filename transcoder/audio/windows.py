"""Cut a signal of any length into model windows with their STFT context, in constant memory.

A signal of ``S`` samples is zero-padded to ``N = n * window_samples`` samples (``n = ceil(S /
window_samples)``, at least 1). The front end's centred STFT of that padded signal pads
``p = n_fft // 2`` more samples on each side (zeros, or a reflection for ``pad_mode="reflect"``).
Window ``k`` holds frames ``[k*W, (k+1)*W)``; those frames read samples
``[k*window_samples - p, k*window_samples - p + L)`` of the padded signal, ``L = (W - 1) * hop + n_fft``
(its *context segment*). :meth:`LogMelFrontend.forward_segments` of that segment gives the window's mel,
so a window's border frames see the real neighbouring samples, exactly as when the whole signal's STFT
is taken at once.

:class:`WindowSegmenter` takes the signal block by block (any block lengths) and yields each window's
context segment as soon as the samples it needs have arrived, keeping only about one window of
samples; feeding the whole signal as one block gives the same segments.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

__all__ = ["WindowSegmenter", "num_windows"]


def num_windows(num_samples: int, window_samples: int) -> int:
    """Windows covering ``num_samples`` samples (at least one)."""
    return max(1, -(-int(num_samples) // int(window_samples)))


class WindowSegmenter:
    """Incremental cutter of a mono signal into window context segments ``(L,)`` float32.

    Args:
        window_samples: samples per model window (``W * hop_length``).
        hop_length: STFT hop.
        n_fft: STFT size (the context is ``n_fft // 2`` before and ``n_fft - hop - n_fft // 2`` after).
        pad_mode: the front end's padding at the signal ends, ``"constant"`` or ``"reflect"``.

    Use :meth:`push` for each block and :meth:`finish` once; both return the segments completed.
    ``num_samples`` counts the samples pushed.
    """

    def __init__(self, window_samples: int, hop_length: int, n_fft: int, pad_mode: str = "constant") -> None:
        if window_samples <= 0 or hop_length <= 0 or window_samples % hop_length:
            raise ValueError(f"window_samples={window_samples} must be a positive multiple of hop_length={hop_length}")
        if pad_mode not in ("constant", "reflect"):
            raise ValueError(f"pad_mode must be 'constant' or 'reflect', got {pad_mode!r}")
        self.window_samples = int(window_samples)
        self.pad = int(n_fft) // 2
        self.segment_length = (self.window_samples // hop_length - 1) * hop_length + int(n_fft)
        if pad_mode == "reflect" and self.pad >= self.window_samples:
            raise ValueError(f"reflect padding of {self.pad} samples needs windows longer than that "
                             f"(window_samples={self.window_samples})")
        self.pad_mode = pad_mode
        self.num_samples = 0
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0  # signal index of _buffer[0]
        self._next = 0  # next window to emit
        self._finished = False

    def push(self, block: np.ndarray) -> list[np.ndarray]:
        """Append mono samples ``(n,)``; return the context segments ``(L,)`` now complete."""
        if self._finished:
            raise RuntimeError("WindowSegmenter.push after finish")
        block = np.asarray(block, dtype=np.float32)
        if block.ndim != 1:
            raise ValueError(f"expected a mono block (n,), got shape {block.shape}")
        self._buffer = np.concatenate([self._buffer, block])
        self.num_samples += block.shape[0]
        out = []
        while self._ready(self._next):
            out.append(self._segment(self._next, total=None))
            self._next += 1
            self._trim()
        return out

    def finish(self) -> list[np.ndarray]:
        """End of the signal: zero-pad it to whole windows and return the remaining segments."""
        if self._finished:
            raise RuntimeError("WindowSegmenter.finish called twice")
        self._finished = True
        total = num_windows(self.num_samples, self.window_samples) * self.window_samples
        padding = total - (self._buffer_start + self._buffer.shape[0])
        self._buffer = np.concatenate([self._buffer, np.zeros(padding, dtype=np.float32)])
        out = []
        while self._next * self.window_samples < total:
            out.append(self._segment(self._next, total=total))
            self._next += 1
            self._trim()
        return out

    def _ready(self, k: int) -> bool:
        """Whether segment ``k`` needs only samples already pushed (no padding at the end)."""
        first = k * self.window_samples - self.pad
        last = first + self.segment_length - 1
        if last >= self.num_samples:
            return False
        return first >= 0 or self.pad_mode == "constant" or -first < self.num_samples

    def _segment(self, k: int, total: int | None) -> np.ndarray:
        """Context segment of window ``k``; ``total`` is the padded length once the signal has ended."""
        index = np.arange(k * self.window_samples - self.pad, k * self.window_samples - self.pad + self.segment_length)
        outside = index < 0
        if total is not None:
            outside |= index >= total
        if self.pad_mode == "reflect":
            index = np.where(index < 0, -index, index)
            if total is not None:
                index = np.where(index >= total, 2 * (total - 1) - index, index)
            outside[:] = False
        local = index - self._buffer_start
        if local[~outside].size and (local[~outside].min() < 0 or local[~outside].max() >= self._buffer.shape[0]):
            raise AssertionError("WindowSegmenter: a segment reaches outside the kept samples")  # a bug, not input
        segment = self._buffer[np.clip(local, 0, max(self._buffer.shape[0] - 1, 0))]
        segment[outside] = 0.0
        return segment

    def _trim(self) -> None:
        """Drop samples no later segment needs (reflect at the start needs the first ``pad + 1``)."""
        keep_from = self._next * self.window_samples - self.pad
        if self.pad_mode == "reflect" and self._next == 0:
            keep_from = 0
        drop = max(0, keep_from - self._buffer_start)
        if drop:
            self._buffer = self._buffer[drop:]
            self._buffer_start += drop


def segments_of(blocks: Iterable[np.ndarray], segmenter: WindowSegmenter) -> Iterator[np.ndarray]:
    """Feed ``blocks`` through ``segmenter`` and yield every window's context segment in order."""
    for block in blocks:
        yield from segmenter.push(block)
    yield from segmenter.finish()
