"""Render a long mel spectrogram to audio window by window, in constant memory.

Griffin-Lim is iterative over the whole spectrogram, so a long signal rendered at once needs memory in
proportion to its length. :class:`WindowedRenderer` renders each model window with ``margin`` frames
of its neighbours on both sides (so the window's border frames are rendered with context) and joins
consecutive renderings with an equal-power (sine / cosine) crossfade over ``2 * margin`` frames
centred on the border. The phases of two renderings are independent, so equal power (not equal
amplitude) keeps the loudness steady across a border. The result is NOT sample-equal to rendering
the whole spectrogram at once (Griffin-Lim's phase differs); it is deterministic for a given seed
(window ``k`` uses ``seed + k``). A neural vocoder renders the shared frames of two neighbours nearly
identically (same phase), so for it the crossfade is equal-amplitude (``crossfade="amplitude"``:
sin² / cos² gains summing to one) -- an equal-power fade of two coherent renderings would be up to 3 dB
too loud at the border.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

__all__ = ["WindowedRenderer"]


class WindowedRenderer:
    """Turn a stream of mel windows ``(W, n_mels)`` into consecutive waveform blocks.

    Args:
        render: ``render(mel (1, T, n_mels), length, seed) -> (1, length)`` (a vocoder call; the mel is in
            whatever space ``render`` takes).
        window_frames: frames ``W`` per window; samples per frame are ``hop_length``.
        hop_length: samples per frame.
        margin: context / crossfade frames on each side of a border (clipped to ``W // 2``).
        seed: phase seed of window 0 (window ``k`` gets ``seed + k``; ``None`` for random).
        crossfade: ``"power"`` (sin / cos gains, for renderings with independent phases: Griffin-Lim) or
            ``"amplitude"`` (sin² / cos², for coherent renderings: a neural vocoder).
    """

    def __init__(self, render: Callable[[Tensor, int, int | None], Tensor], window_frames: int, hop_length: int,
                 margin: int = 16, seed: int | None = 0, crossfade: str = "power") -> None:
        if crossfade not in ("power", "amplitude"):
            raise ValueError(f"crossfade={crossfade!r}: expected 'power' or 'amplitude'")
        self.render = render
        self.window_frames = int(window_frames)
        self.hop = int(hop_length)
        self.margin = max(0, min(int(margin), self.window_frames // 2))
        self.seed = seed
        fade = self.margin * self.hop * 2
        ramp = (np.arange(fade, dtype=np.float64) + 0.5) / max(fade, 1) * (math.pi / 2)
        exponent = 1 if crossfade == "power" else 2
        self._fade_in = (np.sin(ramp) ** exponent).astype(np.float32)
        self._fade_out = (np.cos(ramp) ** exponent).astype(np.float32)

    def blocks(self, windows: Iterable[Tensor]) -> Iterator[np.ndarray]:
        """Yield float32 waveform blocks; their concatenation is ``n_windows * W * hop`` samples long."""
        m, w, hop = self.margin, self.window_frames, self.hop
        previous: Tensor | None = None  # window k - 1 (for the left context)
        tail: np.ndarray | None = None  # the previous rendering's 2m frames around the border, to crossfade
        k = 0
        iterator = iter(windows)
        current = next(iterator, None)
        while current is not None:
            following = next(iterator, None)
            left = previous[w - m:] if previous is not None and m else current[:0]
            right = following[:m] if following is not None and m else current[:0]
            mel = torch.cat([left, current, right])
            seed = None if self.seed is None else self.seed + k
            wave = self.render(mel.unsqueeze(0), mel.shape[0] * hop, seed)[0].float().cpu().numpy()
            start = left.shape[0] * hop  # sample of the window's first frame in ``wave``
            if tail is not None:
                head = wave[start - m * hop: start + m * hop]
                yield tail * self._fade_out + head * self._fade_in
                body_from = start + m * hop
            else:
                body_from = start
            if following is not None and m:
                yield wave[body_from: start + (w - m) * hop]
                tail = wave[start + (w - m) * hop: start + (w + m) * hop]
            else:
                yield wave[body_from: start + w * hop]
                tail = None
            previous, current, k = current, following, k + 1
