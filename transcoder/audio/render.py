"""One renderer protocol: model-space log-mel ``(B, T, F)`` -> waveform ``(B, samples)``, whole or chunked.

A :class:`Renderer` turns the tokenizer's model-space log-mel (the front end's ``[-1, 1]`` scale) into
audio. Two implement it: :class:`~transcoder.audio.griffin_lim.GriffinLimRenderer` (NNLS mel inverse +
Griffin-Lim, iterative, random initial phase) and :class:`~transcoder.audio.neural_vocoder.NeuralVocoder`
(a vocoder checkpoint of this repository, feed-forward, deterministic). :func:`build_renderer` is the one
place that decides between them, from an optional vocoder checkpoint:

    renderer = build_renderer(mel_config)                                    # Griffin-Lim
    renderer = build_renderer(mel_config, vocoder="vocoder.pt")              # the neural vocoder
    wave = renderer.render(mel, length=None, seed=0)                         # (B, T, F) -> (B, T * hop)

:class:`ChunkedRenderer` renders an unbounded mel stream block by block with bounded memory: each block
of ``block_frames`` frames is rendered with ``margin`` frames of its neighbours on both sides and joined
to the previous one by a crossfade over the ``2 * margin`` frames centred on their border. Two
renderings of a coherent renderer (``renderer.coherent``: a neural vocoder) agree in phase on the frames
they share, so they are crossfaded with equal amplitude (sin² / cos² gains summing to one); Griffin-Lim
renderings have independent phases, so equal power (sin / cos) keeps the loudness steady. Chunked output
is deterministic for a given seed (render ``k`` uses ``seed + k``) and has exactly ``frames * hop``
samples. It is not sample-equal to one whole render: for Griffin-Lim the phase differs everywhere;
for a neural vocoder samples farther than its receptive field from every block border equal the whole
render up to float rounding, and inside the crossfades they are a blend of two nearly equal renderings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from transcoder.audio.griffin_lim import GriffinLimRenderer
from transcoder.audio.mel import LogMelFrontend, MelConfig
from transcoder.audio.neural_vocoder import NeuralVocoder, load_vocoder

__all__ = ["ChunkedRenderer", "Renderer", "build_renderer"]


@runtime_checkable
class Renderer(Protocol):
    """Model-space log-mel -> waveform.

    Attributes:
        kind: ``"griffin-lim"`` or ``"neural"`` (what renders; recorded in results).
        sample_rate: samples per second of the output.
        hop_length: samples per mel frame; ``T`` frames render to ``T * hop_length`` samples by default.
        coherent: two renderings of overlapping mels agree in phase on the shared frames (a feed-forward
            vocoder), so chunks are crossfaded with equal amplitude; ``False`` (Griffin-Lim): equal power.
    """

    kind: str
    sample_rate: int
    hop_length: int
    coherent: bool

    def render(self, mel: Tensor, length: int | None = None, seed: int | None = None) -> Tensor:
        """Model-space mel ``(B, T, F)`` or ``(T, F)`` (moved to the renderer's device) -> float32 waveform
        ``(B, length)`` or ``(length,)`` on that device; ``length`` (default ``T * hop_length``) trims or
        zero-pads, ``seed`` fixes a random initial phase (ignored by deterministic renderers)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able settings (``{"type": kind, ...}``) for result files."""
        ...


def build_renderer(
    mel_config: MelConfig,
    vocoder: str | Path | NeuralVocoder | None = None,
    *,
    device: str | torch.device | None = None,
    griffin_lim: dict[str, Any] | None = None,
    target_name: str = "the tokenizer",
    trust_config: bool = False,
) -> Renderer:
    """The renderer for mels of ``mel_config``: the neural vocoder when one is given, else Griffin-Lim.

    Args:
        mel_config: the front end the mels come from.
        vocoder: a vocoder checkpoint path (``scripts/train_vocoder.py``; EMA weights when present) or a
            loaded :class:`~transcoder.audio.neural_vocoder.NeuralVocoder`; ``None`` for Griffin-Lim.
        device: where the renderer runs (unchanged when ``None``; Griffin-Lim then on the CPU).
        griffin_lim: :meth:`GriffinLimVocoder.from_frontend` arguments (``n_iter``, ``nnls_iter``, ...); used
            only without a vocoder.
        target_name: what the mels belong to, for the mismatch error.
        trust_config: let a vocoder checkpoint's config name classes outside the project
            (:func:`~transcoder.audio.neural_vocoder.load_vocoder`).

    Raises:
        TypeError: ``vocoder`` is neither a path nor a ``NeuralVocoder``.
        ValueError: the vocoder was trained on other mel settings (naming every differing setting).
        FileNotFoundError / CheckpointError: from loading a vocoder checkpoint.
    """
    if vocoder is None:
        renderer: Any = GriffinLimRenderer(LogMelFrontend(mel_config), **(griffin_lim or {}))
    else:
        if isinstance(vocoder, str | Path):
            vocoder = load_vocoder(vocoder, device=None, trust_config=trust_config)
        if not isinstance(vocoder, NeuralVocoder):
            raise TypeError(f"vocoder must be a checkpoint path or a transcoder.audio.neural_vocoder.NeuralVocoder "
                            f"(wrap a generator as NeuralVocoder(generator, mel_config)), got {type(vocoder)}")
        vocoder.check_fits(mel_config, target_name)
        renderer = vocoder.eval()
    return renderer.to(device) if device is not None else renderer


class ChunkedRenderer:
    """Mel frames pushed in chunks of any size -> consecutive waveform blocks, in bounded memory.

    Frames are rendered in blocks of ``block_frames`` (the last block takes what is left at
    :meth:`finish`, fewer than ``block_frames + margin``). A block is rendered once ``margin`` frames past
    its end have arrived (its right context), so audio lags the pushed frames by ``2 * margin`` frames
    plus up to ``block_frames`` of buffering. See the module docstring for the crossfade and what equals
    what.

    Args:
        renderer: a :class:`Renderer`.
        block_frames: frames per render (without context).
        margin: context / crossfade frames on each side of a border (clipped to ``block_frames // 2``).
        seed: phase seed of render 0 (render ``k`` gets ``seed + k``; ``None`` for random).
        crossfade: ``"power"`` or ``"amplitude"``; default from ``renderer.coherent``.
    """

    def __init__(self, renderer: Renderer, block_frames: int, margin: int = 8, seed: int | None = 0,
                 crossfade: str | None = None) -> None:
        if block_frames < 1 or margin < 0:
            raise ValueError(f"block_frames={block_frames}, margin={margin}: expected block_frames >= 1, margin >= 0")
        if crossfade is None:
            crossfade = "amplitude" if renderer.coherent else "power"
        if crossfade not in ("power", "amplitude"):
            raise ValueError(f"crossfade={crossfade!r}: expected 'power' or 'amplitude'")
        self.renderer = renderer
        self.block_frames = int(block_frames)
        self.margin = min(int(margin), self.block_frames // 2)
        self.hop = int(renderer.hop_length)
        self.seed = seed
        fade = 2 * self.margin * self.hop
        ramp = (np.arange(fade, dtype=np.float64) + 0.5) / max(fade, 1) * (math.pi / 2)
        exponent = 1 if crossfade == "power" else 2
        self._fade_in = (np.sin(ramp) ** exponent).astype(np.float32)
        self._fade_out = (np.cos(ramp) ** exponent).astype(np.float32)
        self._frames: Tensor | None = None  # frames from stream frame ``_origin`` on
        self._origin = 0
        self._start = 0  # stream frame where the next block starts
        self._tail: np.ndarray | None = None  # previous render's audio of the 2 * margin frames around the border
        self._renders = 0

    def _available(self) -> int:
        return 0 if self._frames is None else self._origin + self._frames.shape[0] - self._start

    def push(self, mel: Tensor) -> np.ndarray:
        """Model-space frames ``(n, F)`` -> the float32 samples now final (possibly none)."""
        if mel.ndim != 2:
            raise ValueError(f"expected mel frames (n, F), got shape {tuple(mel.shape)}")
        self._frames = mel if self._frames is None else torch.cat([self._frames, mel.to(self._frames.device)])
        out = []
        while self._available() >= self.block_frames + self.margin:
            out.append(self._render_block(self.block_frames, right=self.margin))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def finish(self) -> np.ndarray:
        """Render the frames left (no right context) and return the rest of the audio."""
        remaining = self._available()
        if remaining == 0:
            return np.zeros(0, dtype=np.float32)  # a tail exists only with frames past it (margin > 0)
        return self._render_block(remaining, right=0)

    def blocks(self, chunks: Iterable[Tensor]) -> Iterator[np.ndarray]:
        """Push every chunk ``(n, F)`` and finish; yields the non-empty blocks (together ``frames * hop`` samples)."""
        for chunk in chunks:
            block = self.push(chunk)
            if block.size:
                yield block
        last = self.finish()
        if last.size:
            yield last

    def _render_block(self, body: int, right: int) -> np.ndarray:
        assert self._frames is not None
        m, hop = self.margin, self.hop
        left = min(m, self._start - self._origin)
        first = self._start - left - self._origin
        mel = self._frames[first: self._start - self._origin + body + right]
        seed = None if self.seed is None else self.seed + self._renders
        wave = self.renderer.render(mel[None], mel.shape[0] * hop, seed)[0].float().cpu().numpy()
        start = left * hop  # sample of the block's first frame in ``wave``
        pieces = []
        if self._tail is not None:
            pieces.append(self._tail * self._fade_out + wave[start - m * hop: start + m * hop] * self._fade_in)
            body_from = start + m * hop
        else:
            body_from = start
        if right and m:
            pieces.append(wave[body_from: start + (body - m) * hop])
            self._tail = wave[start + (body - m) * hop: start + (body + m) * hop]
        else:
            pieces.append(wave[body_from: start + body * hop])
            self._tail = None
        self._renders += 1
        self._start += body
        keep_from = self._start - m  # the next block's left context
        self._frames = self._frames[keep_from - self._origin:]
        self._origin = keep_from
        return np.concatenate(pieces).astype(np.float32, copy=False)

    def state_elements(self) -> int:
        """Numbers held between pushes (bounded by ``(block_frames + 2 * margin) * F + 2 * margin * hop``)."""
        frames = 0 if self._frames is None else self._frames.numel()
        return frames + (0 if self._tail is None else self._tail.size)
