"""Streaming encode/decode with a causal Audio BSQ-ViT (``audioconfig.causal: true``).

Frame timing (the *causal front end*): frame ``t`` is the STFT of samples ``[(t+1)*hop - n_fft, (t+1)*hop)``,
i.e. the window ends at the end of hop ``t`` and the signal is zero-padded on the left only (by
``n_fft - hop`` samples; the time before a stream starts is silence, whatever ``pad_mode`` says).
``S`` samples still give ``S // hop`` frames. Offline this is
``frontend.forward_segments(pad(wave, (n_fft - hop, 0)))`` (:func:`causal_mel`); compared with the
centred frames of the offline tokenizer it is a pure time shift of ``n_fft / 2 - hop`` samples, so a
model trained on centred frames sees the same kind of input.

Latency: a code row ``r`` covers frames ``[r*pt, (r+1)*pt)`` and the encoder looks ``lookahead`` rows
ahead, so it is emitted once samples up to ``(r + 1 + lookahead) * pt * hop`` have arrived: the
algorithmic latency of the encoder, counted from the first sample of the row, is
``(1 + lookahead) * pt * hop`` samples (the STFT window reaches ``n_fft - hop`` samples into the past, which
adds no waiting). The decoder is strictly causal (no extra latency for mel); rendering audio with a
:class:`~transcoder.audio.render.ChunkedRenderer` holds back ``2 * margin`` frames (its right context and
crossfade) plus up to one render block. See :func:`algorithmic_latency`.

Exactness: :class:`StreamEncoder` gives the same codes as :func:`encode_offline` (the model's
offline forward on the whole, row-padded signal) for any chunking, and :class:`StreamDecoder` the same
mel as :func:`decode_offline` up to float rounding (attention over a cache instead of a masked full
sequence sums in another order). Both take ``bits=k`` for a model trained with nested bits: the encoder
emits the first ``k`` bits of every token, the decoder decodes ``k``-bit rows (the missing bits get the
model's fill), equal to the offline paths at the same width. Audio is rendered by a
:class:`~transcoder.audio.render.ChunkedRenderer` over any :class:`~transcoder.audio.render.Renderer`
and is approximate: Griffin-Lim is iterative over the whole spectrogram and cannot be streamed exactly,
and a neural vocoder equals its whole-signal render only away from the block borders (see
:mod:`transcoder.audio.render`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transcoder.audio.mel import LogMelFrontend
from transcoder.audio.pcm import pcm_to_float32
from transcoder.audio.render import ChunkedRenderer
from transcoder.models.causal import BlockState
from transcoder.models.patching import patchify, unpatchify
from transcoder.models.quantizer.nested import truncate_indices

__all__ = ["causal_mel", "pad_to_rows", "encode_offline", "decode_offline", "algorithmic_latency", "late_chunks_line",
           "CausalFrontendStream", "StreamEncoder", "StreamDecoder", "DecodedChunk"]


def _check_causal(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    if not getattr(config, "causal", False):
        raise ValueError("streaming needs a causal model (audioconfig.causal: true); this checkpoint's model "
                         "attends over whole windows in both directions")


def _width(model: nn.Module, bits: int | None) -> int:
    """The code width asked for, checked by the model (``ValueError`` for fewer bits without nested bits)."""
    return int(model._check_bits(bits))


def _row_samples(model: nn.Module, frontend: LogMelFrontend) -> int:
    return int(model.config.patch_tf[0]) * frontend.hop_length


def causal_mel(frontend: LogMelFrontend, wave: Tensor) -> Tensor:
    """Causal front end offline: (B, S) → model-space mel (B, S // hop, n_mels), frame ``t`` from samples
    ``[(t+1)*hop - n_fft, (t+1)*hop)`` (zeros before the start)."""
    return frontend.forward_segments(F.pad(wave.float(), (frontend.n_fft - frontend.hop_length, 0)))


def pad_to_rows(wave: Tensor, row_samples: int) -> Tensor:
    """Zero-pad (..., S) at the end to whole rows of ``row_samples`` (at least one row)."""
    total = max(1, math.ceil(wave.shape[-1] / row_samples)) * row_samples
    return F.pad(wave, (0, total - wave.shape[-1]))


@torch.inference_mode()
def encode_offline(model: nn.Module, frontend: LogMelFrontend, wave: Tensor, bits: int | None = None) -> Tensor:
    """Reference for :class:`StreamEncoder`: (S,) mono samples → indices (ceil(S / row_samples), Nf) int64 of
    ``bits`` bits (default: the model's), the model's offline forward on the whole causal mel of the
    row-padded signal."""
    _check_causal(model)
    dtype = model.encoder.patch_embed.weight.dtype
    mel = causal_mel(frontend, pad_to_rows(wave.reshape(1, -1), _row_samples(model, frontend)))
    _, _, info = model.encode(mel.to(dtype), bits=bits)
    return info["indices"][0]


@torch.inference_mode()
def decode_offline(model: nn.Module, indices: Tensor, bits: int | None = None) -> Tensor:
    """Reference for :class:`StreamDecoder`: ``bits``-bit indices (R, Nf) → model-space mel (R * pt, n_mels)."""
    _check_causal(model)
    return model.decode_indices(indices[None], bits=bits)[0]


def algorithmic_latency(model: nn.Module, frontend: LogMelFrontend) -> dict[str, float]:
    """Latency terms in samples and the total in seconds (see the module docstring).

    Keys: ``patch`` (pt * hop), ``lookahead`` (lookahead * pt * hop), ``stft_lookback`` (n_fft - hop: past
    samples a frame reads, no waiting), ``total_samples`` (patch + lookahead), ``total_seconds``.
    """
    row = _row_samples(model, frontend)
    lookahead = int(model.config.lookahead) * row
    total = row + lookahead
    return {"patch": row, "lookahead": lookahead, "stft_lookback": frontend.n_fft - frontend.hop_length,
            "total_samples": total, "total_seconds": total / frontend.config.sample_rate}


class CausalFrontendStream:
    """Samples in any chunks → causal-front-end frames (model space), equal to :func:`causal_mel`.

    Keeps the last ``n_fft - hop`` samples plus the samples of an incomplete hop.
    """

    def __init__(self, frontend: LogMelFrontend) -> None:
        self.frontend = frontend
        self.num_samples = 0
        device = frontend.window.device
        self._buffer = torch.zeros(frontend.n_fft - frontend.hop_length, device=device)

    def push(self, samples: Tensor) -> Tensor:
        """(n,) float samples → the frames now complete, (k, n_mels) float32."""
        self.num_samples += samples.numel()
        self._buffer = torch.cat([self._buffer, samples.to(self._buffer.device, torch.float32).reshape(-1)])
        n_fft, hop = self.frontend.n_fft, self.frontend.hop_length
        frames = (self._buffer.numel() - n_fft) // hop + 1
        if frames <= 0:
            return self._buffer.new_zeros(0, self.frontend.config.n_mels)
        mel = self.frontend.forward_segments(self._buffer[: (frames - 1) * hop + n_fft][None])[0]
        self._buffer = self._buffer[frames * hop:]
        return mel

    def state_elements(self) -> int:
        return self._buffer.numel()


class _StackStream:
    """Streaming state of a ``_AudioTransformer``'s causal blocks and its final norm."""

    def __init__(self, transformer: nn.Module) -> None:
        self.transformer = transformer
        self.states = [BlockState() for _ in transformer.blocks]

    def step(self, x: Tensor, final: bool) -> Tensor:
        """(1, R, Nf, C) block input rows → (1, R', Nf, C) normed output rows now determined."""
        for block, state in zip(self.transformer.blocks, self.states, strict=True):
            x = block.step(x, state, final)
        return self.transformer.norm(x)

    def state_elements(self) -> int:
        return sum(state.num_elements() for state in self.states)


class StreamEncoder:
    """Audio in chunks of any size → code rows as soon as they are determined.

    Args:
        model: a causal ``AudioBSQModel`` in eval mode.
        frontend: the front end the model was trained with (its device is used).
        bits: bits per token emitted (default: the model's; fewer keep the first ``bits`` of every token of
            a model trained with nested bits).

    :meth:`push` takes mono samples at the front end's sample rate and returns indices (R, Nf) int64 on
    the CPU (R may be 0); :meth:`finish` zero-pads the stream to a whole row and returns the rest. The
    concatenation equals :func:`encode_offline` of the whole signal. State is bounded: per block, keys and
    values of ``context - 1 + lookahead`` rows, ``K - 1`` conv rows, ``lookahead`` pending rows.
    """

    def __init__(self, model: nn.Module, frontend: LogMelFrontend, bits: int | None = None) -> None:
        _check_causal(model)
        if model.training:
            raise ValueError("StreamEncoder needs the model in eval mode (BatchNorm running statistics)")
        self.model = model
        self.bits = _width(model, bits)
        self.frontend_stream = CausalFrontendStream(frontend)
        self.encoder = _StackStream(model.encoder)
        self.row_samples = _row_samples(model, frontend)
        self._frames = torch.zeros(0, model.config.input_size, device=frontend.window.device)
        self._finished = False
        self.rows_emitted = 0

    @property
    def num_samples(self) -> int:
        """Samples pushed so far."""
        return self.frontend_stream.num_samples

    @torch.inference_mode()
    def push(self, samples: Tensor | np.ndarray) -> Tensor:
        """(n,) mono samples → newly determined indices (R, Nf) int64 on the CPU.

        Samples as the offline ``encode_wave`` takes them: float, or integer PCM scaled to [-1, 1)
        (:func:`~transcoder.audio.pcm.pcm_to_float32`); other dtypes raise ``TypeError``, NaN/Inf ``ValueError``.
        """
        if self._finished:
            raise RuntimeError("StreamEncoder.push after finish")
        chunk = torch.from_numpy(pcm_to_float32(samples))
        if chunk.ndim != 1:
            raise ValueError(f"expected mono samples (n,), got shape {tuple(chunk.shape)}; mix channels down "
                             "first (transcoder.api.waveform_to_mono)")
        if not torch.isfinite(chunk).all():
            raise ValueError("samples contain NaN or Inf")
        return self._rows(self.frontend_stream.push(chunk), final=False)

    @torch.inference_mode()
    def finish(self) -> Tensor:
        """End of stream: pad with zeros to a whole row (at least one) and return the remaining rows."""
        if self._finished:
            raise RuntimeError("StreamEncoder.finish called twice")
        self._finished = True
        total = max(1, math.ceil(self.num_samples / self.row_samples)) * self.row_samples
        device = self._frames.device
        frames = self.frontend_stream.push(torch.zeros(total - self.num_samples, device=device))
        return self._rows(frames, final=True)

    def _rows(self, frames: Tensor, final: bool) -> Tensor:
        model = self.model
        pt = model.config.patch_tf[0]
        self._frames = torch.cat([self._frames, frames])
        rows = self._frames.shape[0] // pt
        mel, self._frames = self._frames[: rows * pt], self._frames[rows * pt:]
        encoder = model.encoder
        dtype = encoder.patch_embed.weight.dtype
        patch_tf = model.config.patch_tf
        if model.input_norm is not None:  # per-bin standardisation, frame by frame: causal as it is
            mel = model.input_norm.normalize(mel)
        patches = patchify(mel.to(dtype)[None], patch_tf).unflatten(1, (rows, model.config.grid[1]))  # (1, Nt, Nf, P)
        x = encoder.patch_embed(patches) + encoder.pos_embed[:, None].to(dtype)
        features = self.encoder.step(x, final)
        if features.shape[1] == 0:
            return torch.zeros(0, model.config.grid[1], dtype=torch.long)
        _, _, info = model.quantizer(model.quant_embed(features))
        self.rows_emitted += features.shape[1]
        return truncate_indices(info["indices"][0], self.bits).cpu()

    def state_elements(self) -> int:
        """Numbers held between pushes (bounded for an unbounded stream)."""
        return self.frontend_stream.state_elements() + self._frames.numel() + self.encoder.state_elements()


@dataclass
class DecodedChunk:
    """What one :meth:`StreamDecoder.push` returns: model-space mel (frames, n_mels) on the model's device
    and, when the decoder renders audio, float32 samples (approximate, see
    :class:`~transcoder.audio.render.ChunkedRenderer`)."""

    mel: Tensor
    audio: np.ndarray | None = None


class StreamDecoder:
    """Code rows in chunks of any size → mel frames (exact) and optionally audio (approximate).

    Args:
        model: a causal ``AudioBSQModel`` in eval mode.
        renderer: a :class:`~transcoder.audio.render.ChunkedRenderer` to also produce audio (any
            renderer: Griffin-Lim or a neural vocoder), or ``None`` for mel only.
        bits: bits per token of the rows pushed (default: the model's; fewer for a model trained with
            nested bits, the missing bits replaced by its fill).
    """

    def __init__(self, model: nn.Module, renderer: ChunkedRenderer | None = None, bits: int | None = None) -> None:
        _check_causal(model)
        if model.training:
            raise ValueError("StreamDecoder needs the model in eval mode (BatchNorm running statistics)")
        self.model = model
        self.bits = _width(model, bits)
        self.decoder = _StackStream(model.decoder)
        self.renderer = renderer
        self._finished = False

    @torch.inference_mode()
    def push(self, indices: Tensor | np.ndarray) -> DecodedChunk:
        """Indices (R, Nf) → the R * pt mel frames they determine (the decoder is strictly causal)."""
        if self._finished:
            raise RuntimeError("StreamDecoder.push after finish")
        x = torch.as_tensor(indices)
        nf = self.model.config.grid[1]
        if x.ndim != 2 or x.shape[1] != nf or x.dtype.is_floating_point:
            raise ValueError(f"expected integer indices (R, {nf}), got {x.dtype} {tuple(x.shape)}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= 1 << self.bits):
            raise ValueError(f"{self.bits}-bit indices must lie in [0, 2^{self.bits}), got min {int(x.min())} "
                             f"max {int(x.max())}")
        return self._decode(x, final=False)

    @torch.inference_mode()
    def finish(self) -> DecodedChunk:
        """End of stream: flush (mel: nothing is pending; audio: the held-back crossfade tail)."""
        if self._finished:
            raise RuntimeError("StreamDecoder.finish called twice")
        self._finished = True
        return self._decode(torch.zeros(0, self.model.config.grid[1], dtype=torch.long), final=True)

    def _decode(self, indices: Tensor, final: bool) -> DecodedChunk:
        model = self.model
        decoder = model.decoder
        dtype = model.post_quant_embed.weight.dtype
        device = model.post_quant_embed.weight.device
        codes = model.indices_to_codes(indices.to(device)[None], bits=self.bits)
        if self.bits < model.bits:
            codes = model.nested_bits.pad(codes)  # the dropped bits as the model fills them
        nf = model.config.grid[1]
        x = model.post_quant_embed(codes.to(dtype)).reshape(1, indices.shape[0], nf, model.config.width)
        x = x + decoder.pos_embed[:, None].to(dtype)
        tokens = self.decoder.step(x, final)
        patches = decoder.to_patches(tokens)
        mel = unpatchify(patches.flatten(1, 2), tuple(patches.shape[1:3]), model.config.patch_tf)[0]
        if model.input_norm is not None:
            mel = model.input_norm.denormalize(mel)
        mel = mel.clamp(*model.clamp_range)
        audio = None
        if self.renderer is not None:
            audio = self.renderer.push(mel)
            if final:
                audio = np.concatenate([audio, self.renderer.finish()])
        return DecodedChunk(mel, audio)

    def state_elements(self) -> int:
        return self.decoder.state_elements() + (self.renderer.state_elements() if self.renderer else 0)


def late_chunks_line(chunk_seconds: list[float], chunk_length: float) -> str:
    """The streaming summary's timing line: how many chunks took longer to process than they last (each was
    late: the next chunk arrived before it was done) and the worst, against the chunk length.

    Args:
        chunk_seconds: wall-clock processing time of each input chunk (the final flush excluded).
        chunk_length: the chunk's duration in seconds.

    Returns:
        e.g. ``"late chunks: 3 of 250 took longer than their 20 ms (worst 54.8 ms, 2.7x the chunk length)"``
        or ``"late chunks: none of 250 (worst 12.1 ms, 0.6x the 20 ms chunk length)"``.
    """
    if not chunk_seconds:
        return "late chunks: no chunk was processed"
    late = sum(seconds > chunk_length for seconds in chunk_seconds)
    worst = max(chunk_seconds)
    ratio = worst / chunk_length
    length = f"{1000 * chunk_length:g} ms"
    if late:
        return (f"late chunks: {late} of {len(chunk_seconds)} took longer than their {length} "
                f"(worst {1000 * worst:.1f} ms, {ratio:.1f}x the chunk length)")
    return (f"late chunks: none of {len(chunk_seconds)} (worst {1000 * worst:.1f} ms, {ratio:.1f}x the {length} "
            "chunk length)")
