"""Use a trained checkpoint: audio -> integer codes -> audio.

Example::

    from transcoder.api import load_tokenizer

    tok = load_tokenizer("outputs/audio_model/checkpoints/best.pt")      # GPU when present
    codes = tok.encode_file("speech.flac")                                # (n_time_tokens, n_freq_patches) int64
    wave = tok.decode_codes(codes, num_samples=tok.last_num_samples)     # (S,) float32 at tok.sample_rate
    print(tok.tokens_per_second, tok.bits_per_token, tok.bitrate)         # e.g. 50.0, 18, 900.0
    coarse = tok.encode_file("speech.flac", bits=9)                       # nested-bits models: first 9 bits
    wave9 = tok.decode_codes(coarse, tok.last_num_samples, bits=9)

Audio of any length is cut into windows of the model's ``input_length`` frames (the signal zero-padded
to whole windows). Each window's log-mel is computed from its context segment
(:class:`transcoder.audio.windows.WindowSegmenter`), so window borders see the real neighbouring samples
exactly as a whole-signal STFT would; codes of the windows are concatenated along time.
:meth:`AudioTokenizer.encode_file` reads the file block by block and runs this window by window, so
memory does not grow with the file's length, and its codes equal those of :meth:`~AudioTokenizer.encode_wave`
on the whole decoded signal (also when the file is resampled: soxr's stream equals its one-shot call).

Decoding decodes whole windows: a trailing partial window of codes is completed with the codes of a
silent window (what the encoder saw as padding) so its tokens sit at the positions they were encoded
at. Audio is rendered by one :class:`~transcoder.audio.render.Renderer` (:attr:`AudioTokenizer.renderer`):
Griffin-Lim, or a neural vocoder trained by this repository when one is given
(``load_tokenizer(ckpt, vocoder="vocoder.pt")``; its mel settings must equal the tokenizer's).
:meth:`AudioTokenizer.decode_codes` renders the whole mel at once; :meth:`AudioTokenizer.decode_to_file` /
:meth:`~AudioTokenizer.decode_file` and :meth:`AudioTokenizer.stream_decoder` render block by block
(:class:`~transcoder.audio.render.ChunkedRenderer`; not sample-equal to the one-shot render).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from transcoder.audio.griffin_lim import GriffinLimRenderer
from transcoder.audio.mel import LogMelFrontend, MelConfig
from transcoder.audio.neural_vocoder import NeuralVocoder
from transcoder.audio.pcm import pcm_to_float32
from transcoder.audio.render import ChunkedRenderer, Renderer, build_renderer
from transcoder.audio.windows import WindowSegmenter, segments_of
from transcoder.codes import CodesFile, CodesIndex, CodesSpec, codes_dtype
from transcoder.data.audio_io import AudioFile, load_audio, resample
from transcoder.models.build import checkpoint_mel_settings, load_checkpoint_model
from transcoder.models.quantizer.nested import truncate_indices
from transcoder.release.folder import MODEL_FILE, load_release_model, load_release_vocoder, read_release_config
from transcoder.release.hub import resolve_source
from transcoder.streaming import StreamDecoder, StreamEncoder
from transcoder.utils.files import sha256_of_file
from transcoder.utils.rates import TokenRates, token_rates

__all__ = ["AudioTokenizer", "BACKENDS", "EncodedAudio", "load_tokenizer", "load_model_from_checkpoint",
           "codes_dtype", "waveform_to_mono"]

#: What runs the encoder and decoder: PyTorch, or ONNX Runtime on a release folder's ONNX graphs (CPU).
BACKENDS = ("torch", "onnx")



def load_model_from_checkpoint(
    checkpoint: str | Path | dict[str, Any], use_ema: bool = True, trust_config: bool = False,
    allow_nonfinite: bool = False,
) -> tuple[nn.Module, MelConfig, dict[str, Any]]:
    """Build the model of a checkpoint and load its weights (EMA weights if asked and present).

    :func:`transcoder.models.build.load_checkpoint_model` plus the checkpoint's front-end settings.
    Returns ``(model on CPU in eval mode, mel config, checkpoint dict)``; ``state["weights"]`` is set to
    ``"ema"`` or ``"model"`` (which weights were loaded). ``trust_config`` / ``allow_nonfinite``: see
    :func:`load_tokenizer`.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable, unsafe (pickled objects or a config naming a class outside the
            project), or weights / config that do not fit (shape, dtype, NaN / Inf values).
    """
    model, state = load_checkpoint_model(checkpoint, use_ema=use_ema, trust_config=trust_config,
                                         allow_nonfinite=allow_nonfinite)
    settings = checkpoint_mel_settings(state)
    mel_config = MelConfig.from_dict(settings, strict=settings is state.get("mel"))
    return model, mel_config, state


@dataclass
class EncodedAudio:
    """Codes of one signal plus what is needed to decode it back to the same length."""

    indices: Tensor  # (n_time_tokens, n_freq_patches) int64, on the CPU
    num_samples: int  # samples at the tokenizer's sample rate before padding
    num_frames: int  # mel frames covering the unpadded signal, ceil(num_samples / hop_length)
    bits: int | None = None  # bits per token of ``indices`` (the model's width, or fewer for nested bits)


class AudioTokenizer:
    """A trained Audio BSQ-ViT model with its front end and its renderer (Griffin-Lim or a neural vocoder).

    Build with :func:`load_tokenizer`. All ``encode_*`` methods return CPU int64 indices of shape
    ``(n_time_tokens, n_freq_patches)`` (time-major, like ``info["indices"]`` of the model).

    Args:
        model: an ``AudioBSQModel`` (moved to ``device`` and set to eval mode).
        mel_config: the front-end settings the model was trained with.
        device: where the model, front end and vocoder run.
        batch_size: model windows per forward pass in the batched methods.
        vocoder_kwargs: Griffin-Lim settings (:meth:`GriffinLimVocoder.from_frontend`: ``n_iter`` ...).
        checkpoint_path: where the weights came from (for :attr:`checkpoint_sha256`).
        weights: ``"ema"`` or ``"model"``, which weights of the checkpoint were loaded (informative).
        checkpoint_config: the checkpoint's resolved training config (informative).
        checkpoint_step: the training step of the checkpoint (informative).
        neural_vocoder: a :class:`~transcoder.audio.neural_vocoder.NeuralVocoder` or a vocoder checkpoint
            path; renders waveforms instead of Griffin-Lim when given (its mel settings must equal
            ``mel_config``'s, else ``ValueError`` naming the differing settings).
        trust_config: let a vocoder checkpoint's config name classes outside the project (see
            :func:`load_tokenizer`).
        backend: ``"torch"``, or ``"onnx"`` when ``model`` is a
            :class:`~transcoder.release.onnx_backend.OnnxTokenizerModel` (streaming needs ``"torch"``).

    Attributes:
        renderer: the :class:`~transcoder.audio.render.Renderer` every decode path uses
            (:func:`~transcoder.audio.render.build_renderer` of ``neural_vocoder``).
        griffin_lim: the Griffin-Lim renderer (``renderer`` itself without a neural vocoder); evaluation
            scores it as the reference beside a neural vocoder.
    """

    def __init__(
        self,
        model: nn.Module,
        mel_config: MelConfig,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        vocoder_kwargs: dict[str, Any] | None = None,
        checkpoint_path: str | Path | None = None,
        weights: str = "model",
        checkpoint_config: dict[str, Any] | None = None,
        checkpoint_step: int | None = None,
        neural_vocoder: NeuralVocoder | str | Path | None = None,
        trust_config: bool = False,
        backend: str = "torch",
    ) -> None:
        self.backend = backend
        self.weights = weights
        self.checkpoint_config = checkpoint_config or {}
        self.checkpoint_step = checkpoint_step
        self.device = torch.device(device) if device is not None else _default_device()
        self.model = model.to(self.device).eval()
        self.mel_config = mel_config
        self.frontend = LogMelFrontend(mel_config).to(self.device)
        self.renderer: Renderer = build_renderer(mel_config, neural_vocoder, device=self.device,
                                                 griffin_lim=vocoder_kwargs,
                                                 target_name=f"the tokenizer {checkpoint_path or '<module>'}",
                                                 trust_config=trust_config)
        self.griffin_lim = (self.renderer if isinstance(self.renderer, GriffinLimRenderer)
                            else GriffinLimRenderer(self.frontend, **(vocoder_kwargs or {})).to(self.device))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self._sha256: str | None = None
        self._silence: Tensor | None = None
        self.last_num_samples: int | None = None
        pt, pf = self.patch_size
        if self.window_frames % pt or mel_config.n_mels % pf:
            raise ValueError(f"model patch {self.patch_size} does not tile its window "
                             f"({self.window_frames} frames x {mel_config.n_mels} mels)")

    # -- properties --------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.mel_config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.mel_config.hop_length

    @property
    def patch_size(self) -> tuple[int, int]:
        """``(patch_t, patch_f)`` in frames x mel bins."""
        pt, pf = self.model.patch_size
        return int(pt), int(pf)

    @property
    def window_frames(self) -> int:
        """Frames per model window (the model's ``input_length``)."""
        return int(self.model.input_length)

    @property
    def window_samples(self) -> int:
        """Samples per model window."""
        return self.mel_config.num_samples(self.window_frames)

    @property
    def n_freq_patches(self) -> int:
        return self.mel_config.n_mels // self.patch_size[1]

    @property
    def time_rows_per_window(self) -> int:
        """Time rows of tokens per window (``window_frames / patch_t``)."""
        return self.window_frames // self.patch_size[0]

    @property
    def tokens_per_window(self) -> int:
        """Tokens per window, all frequency patches counted (``time_rows_per_window * n_freq_patches``);
        ``tokens_per_window / window seconds == tokens_per_second``."""
        return self.time_rows_per_window * self.n_freq_patches

    @property
    def bits_per_token(self) -> int:
        """Bits per token of the model's codes (its quantizer's ``bits``; the ``embed_dim`` of a BSQ model)."""
        return int(self.model.bits)

    @property
    def nested_widths(self) -> list[int]:
        """The widths the model was trained to decode (``model.params.nested_bits.widths``), or just
        :attr:`bits_per_token` for a model trained without nested bits."""
        nested = getattr(self.model, "nested_bits", None)
        return list(nested.widths) if nested is not None else [self.bits_per_token]

    def check_bits(self, bits: int | None) -> int:
        """The code width ``bits`` asked for (default :attr:`bits_per_token`), checked.

        Raises ``ValueError`` for a width outside ``1..bits_per_token``, or fewer bits than
        :attr:`bits_per_token` on a model trained without ``model.params.nested_bits``. A nested model
        decodes any prefix; the widths it was trained at are :attr:`nested_widths`.
        """
        if bits is None:
            return self.bits_per_token
        if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not 1 <= bits <= self.bits_per_token:
            raise ValueError(f"bits={bits!r}: expected an integer in 1..{self.bits_per_token} (this checkpoint "
                             f"makes {self.bits_per_token}-bit codes)")
        if bits < self.bits_per_token and getattr(self.model, "nested_bits", None) is None:
            raise ValueError(f"bits={bits}: this checkpoint was trained for {self.bits_per_token}-bit codes only; "
                             "fewer bits need a model trained with model.params.nested_bits")
        return int(bits)

    @property
    def rates(self) -> TokenRates:
        """Tokens and bits per second of audio at full width (:func:`transcoder.utils.rates.token_rates`)."""
        return self.rates_at(None)

    def rates_at(self, bits: int | None) -> TokenRates:
        """Tokens and bits per second of audio for codes of ``bits`` bits (default: full width)."""
        return token_rates(self.patch_size, self.mel_config.n_mels, self.hop_length, self.sample_rate,
                           self.check_bits(bits))

    @property
    def tokens_per_second(self) -> float:
        """Tokens (all frequency patches counted) per second of audio."""
        return self.rates.tokens_per_second

    @property
    def bitrate(self) -> float:
        """Bits per second of audio."""
        return self.rates.bits_per_second

    @property
    def codes_spec(self) -> CodesSpec:
        """What this model's full-width codes look like (for :mod:`transcoder.codes` checks);
        ``codes_spec.at_bits(k)`` for ``k``-bit codes of a nested model."""
        return CodesSpec(self.sample_rate, self.hop_length, self.mel_config.n_mels, self.bits_per_token,
                         self.patch_size, self.time_rows_per_window, self.n_freq_patches, self.window_samples,
                         nested=getattr(self.model, "nested_bits", None) is not None)

    @property
    def checkpoint_sha256(self) -> str | None:
        """SHA-256 of the checkpoint file (computed once, on first use)."""
        if self._sha256 is None and self.checkpoint_path is not None:
            self._sha256 = sha256_of_file(self.checkpoint_path)
        return self._sha256

    # -- helpers -----------------------------------------------------------------------------
    def num_windows(self, num_samples: int) -> int:
        """Model windows needed for ``num_samples`` samples (at least one)."""
        return max(1, math.ceil(num_samples / self.window_samples))

    def _as_wave(self, wave: Tensor | np.ndarray, sample_rate: int | None) -> Tensor:
        """Any waveform layout (see :func:`waveform_to_mono`) -> mono float32 ``(S,)`` at the tokenizer's rate."""
        x = waveform_to_mono(wave)
        if x.ndim != 1:
            raise ValueError(f"expected a waveform (S,) or (channels, S), got shape {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError("cannot encode an empty waveform")
        if not torch.isfinite(x).all():
            raise ValueError("waveform contains NaN or Inf samples")
        sr = self.sample_rate if sample_rate is None else int(sample_rate)
        if sr != self.sample_rate:
            x = torch.from_numpy(np.ascontiguousarray(resample(x.numpy(), sr, self.sample_rate)))
        return x

    def _segmenter(self) -> WindowSegmenter:
        return WindowSegmenter(self.window_samples, self.hop_length, self.mel_config.n_fft, self.mel_config.pad_mode)

    @torch.inference_mode()
    def _segments_to_mels(self, segments: list[np.ndarray]) -> Tensor:
        """Context segments ``[(L,)] * n`` -> model-space windows ``(n, window_frames, n_mels)`` on the device,
        in groups of ``batch_size`` (the same groups for a file in memory and a streamed file)."""
        mels = []
        for start in range(0, len(segments), self.batch_size):
            batch = torch.from_numpy(np.stack(segments[start:start + self.batch_size])).to(self.device)
            mels.append(self.frontend.forward_segments(batch))
        return torch.cat(mels)

    @torch.inference_mode()
    def _mel_windows(self, wave: Tensor) -> Tensor:
        """``(S,)`` -> model-space windows ``(n_windows, window_frames, n_mels)`` on the device."""
        segmenter = self._segmenter()
        return self._segments_to_mels(list(segments_of([wave.cpu().numpy()], segmenter)))

    @torch.inference_mode()
    def encode_segments(self, segments: Sequence[np.ndarray] | np.ndarray, bits: int | None = None) -> Tensor:
        """Window context segments ``(n, L)`` (from :class:`~transcoder.audio.windows.WindowSegmenter`) ->
        indices ``(n, time_rows_per_window, Nf)`` of ``bits`` bits (default: full width) on the CPU. Windows
        are independent: a window's codes do not depend on the other windows of the batch (windows of many
        files can share a batch)."""
        bits = self.check_bits(bits)
        return self.encode_mel(self._segments_to_mels(list(segments)), bits).cpu()

    @torch.inference_mode()
    def encode_mel(self, mel: Tensor, bits: int | None = None) -> Tensor:
        """Model-space mels ``(B, T, n_mels)`` (T a multiple of ``patch_t``) -> indices ``(B, T/pt, Nf)``
        on the device, run in chunks of ``batch_size``; ``bits`` keeps the first ``k`` bits of every token
        (default: all, :meth:`check_bits`).

        Raises ``FloatingPointError`` when the encoder's activations hold NaN or Inf (a damaged model, or
        weights loaded with ``allow_nonfinite``): such codes would be meaningless, so none are returned.
        """
        bits = self.check_bits(bits)
        outs = []
        for chunk in mel.to(self.device).split(self.batch_size):
            codes, loss, info = self.model.encode(chunk, bits=bits)
            # The ONNX backend returns indices only (its graph ends at the integer codes): nothing to check.
            if any(t is not None and not bool(torch.isfinite(t).all()) for t in (codes, loss)):
                raise FloatingPointError(f"the model {self.checkpoint_path or '<module>'} produced NaN or Inf "
                                         "activations while encoding: no codes returned (damaged weights?)")
            outs.append(info["indices"])
        return torch.cat(outs)

    # -- encoding ----------------------------------------------------------------------------
    def encode_waves(
        self, waves: Sequence[Tensor | np.ndarray], sample_rate: int | None = None, bits: int | None = None
    ) -> list[EncodedAudio]:
        """Encode several signals, batching the windows of all of them together.

        Args:
            waves: mono ``(S_i,)`` signals (or ``(channels, S_i)``, averaged).
            sample_rate: their sample rate (default: the tokenizer's).
            bits: bits per token kept (default: the model's; fewer for a nested-bits model, :meth:`check_bits`).

        Returns:
            One :class:`EncodedAudio` per signal; ``indices`` ``(n_windows_i * time_rows_per_window, Nf)``.
        """
        bits = self.check_bits(bits)
        prepared = [self._as_wave(w, sample_rate) for w in waves]
        if not prepared:
            return []
        windows = torch.cat([self._mel_windows(w) for w in prepared])
        indices = self.encode_mel(windows, bits).cpu()  # (total_windows, time_rows_per_window, Nf)
        out, start = [], 0
        for w in prepared:
            n = self.num_windows(w.numel())
            codes = indices[start:start + n].reshape(n * self.time_rows_per_window, self.n_freq_patches)
            out.append(EncodedAudio(codes, int(w.numel()), -(-int(w.numel()) // self.hop_length), bits))
            start += n
        return out

    def encode_wave(self, wave: Tensor | np.ndarray, sample_rate: int | None = None,
                    bits: int | None = None) -> Tensor:
        """Mono ``(S,)`` signal at ``sample_rate`` -> indices ``(n_time_tokens, n_freq_patches)`` int64 of
        ``bits`` bits (default: the model's, :meth:`check_bits`).

        ``n_time_tokens = ceil(S' / window_samples) * time_rows_per_window`` with ``S'`` the length at the
        tokenizer's rate (stored in :attr:`last_num_samples` for :meth:`decode_codes`).
        """
        encoded = self.encode_waves([wave], sample_rate, bits)[0]
        self.last_num_samples = encoded.num_samples
        return encoded.indices

    def load(self, path: str | Path) -> Tensor:
        """Decode an audio file to mono ``(S,)`` float32 at the tokenizer's sample rate."""
        return load_audio(str(path), self.sample_rate)

    @torch.inference_mode()
    def encode_file_streamed(self, path: str | Path, block_frames: int = 1 << 16,
                             bits: int | None = None) -> EncodedAudio:
        """Audio file -> :class:`EncodedAudio`, read in blocks of ``block_frames`` source frames and encoded
        ``batch_size`` windows at a time: memory does not grow with the file's length.

        The codes equal ``encode_waves([load(path)])[0]`` exactly (same window boundaries, same STFT
        context at window edges, same resampled samples). Raises
        :class:`~transcoder.data.audio_io.AudioDecodeError` for an unusable file. ``bits``: as in
        :meth:`encode_waves`.
        """
        bits = self.check_bits(bits)
        segmenter = self._segmenter()
        codes: list[Tensor] = []
        pending: list[np.ndarray] = []
        with AudioFile(str(path)) as audio:
            for segment in segments_of(audio.blocks(self.sample_rate, block_frames), segmenter):
                pending.append(segment)
                if len(pending) == self.batch_size:
                    codes.append(self.encode_mel(self._segments_to_mels(pending), bits).cpu())
                    pending = []
        if pending:
            codes.append(self.encode_mel(self._segments_to_mels(pending), bits).cpu())
        num_samples = segmenter.num_samples
        if num_samples == 0:
            raise ValueError(f"{path}: no audio samples at {self.sample_rate} Hz")
        indices = torch.cat(codes).reshape(-1, self.n_freq_patches)
        return EncodedAudio(indices, num_samples, -(-num_samples // self.hop_length), bits)

    def encode_file(self, path: str | Path, bits: int | None = None) -> Tensor:
        """Audio file -> indices ``(n_time_tokens, n_freq_patches)`` of ``bits`` bits (default: the model's),
        streamed in constant memory (see :meth:`encode_file_streamed`); equals :meth:`encode_wave` of the
        decoded file. The length at the tokenizer's rate is stored in :attr:`last_num_samples`."""
        encoded = self.encode_file_streamed(path, bits=bits)
        self.last_num_samples = encoded.num_samples
        return encoded.indices

    # -- decoding ----------------------------------------------------------------------------
    def _check_indices(self, indices: Tensor | np.ndarray, bits: int) -> Tensor:
        if isinstance(indices, np.ndarray):
            if indices.dtype.kind not in "iu":
                raise TypeError(f"indices must be integers, got numpy {indices.dtype}")
            indices = indices.astype(np.int64)
        x = torch.as_tensor(indices)
        if x.dtype.is_floating_point or x.dtype == torch.bool:
            raise TypeError(f"indices must be integers, got {x.dtype}")
        if x.ndim != 2 or x.shape[1] != self.n_freq_patches:
            raise ValueError(f"indices must be (n_time_tokens, {self.n_freq_patches}), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("indices are empty")
        x = x.long()
        if int(x.min()) < 0 or int(x.max()) >= 2**bits:
            raise ValueError(f"{bits}-bit indices must lie in [0, 2^{bits}), got min {int(x.min())} "
                             f"max {int(x.max())}")
        return x

    @torch.inference_mode()
    def silence_codes(self) -> Tensor:
        """Codes ``(time_rows_per_window, n_freq_patches)`` of an all-zero window (the encoder's padding), on CPU."""
        if self._silence is None:
            mel = self.frontend(torch.zeros(1, self.window_samples, device=self.device))
            self._silence = self.encode_mel(mel)[0].cpu()
        return self._silence

    @torch.inference_mode()
    def _decode_windows(self, windows: Tensor, bits: int) -> Tensor:
        """``bits``-bit indices ``(B, time_rows_per_window, Nf)`` on the device -> model-space mel
        ``(B, window_frames, n_mels)``."""
        return torch.cat([self.model.decode_indices(chunk, bits=bits).float()
                          for chunk in windows.split(self.batch_size)])

    def _full_windows(self, x: Tensor, bits: int) -> tuple[Tensor, int]:
        """``(rows, Nf)`` -> ``(n_windows, time_rows_per_window, Nf)``, a partial last window completed with the
        silent window's codes (their first ``bits`` bits) at the same positions (so every token is decoded
        where it was encoded); also returns the number of real rows."""
        rows, tpw = x.shape[0], self.time_rows_per_window
        short = -rows % tpw
        if short:
            silence = truncate_indices(self.silence_codes(), bits)
            x = torch.cat([x, silence.to(x.device)[tpw - short:]])
        return x.reshape(-1, tpw, self.n_freq_patches), rows

    @torch.inference_mode()
    def decode_to_mel(self, indices: Tensor | np.ndarray, space: str = "model", bits: int | None = None) -> Tensor:
        """Indices ``(n_time_tokens, n_freq_patches)`` -> mel ``(n_time_tokens * patch_t, n_mels)``.

        Decoded window by window (``time_rows_per_window`` rows each). A partial last window is completed
        with the codes of a silent window (:meth:`silence_codes`, what the encoder saw as zero padding)
        and decoded at full length, so its tokens get the position embeddings they were encoded with;
        the frames of the completion are dropped. ``space``: ``model`` ([-1, 1], the model's output),
        ``db`` or ``power`` (the vocoder's input). ``bits``: bits per token of ``indices`` (default: the
        model's; fewer for codes encoded with ``bits=k`` by a nested-bits model). Returned on the device.
        """
        if space not in ("model", "db", "power"):
            raise ValueError(f"space must be 'model', 'db' or 'power', got {space!r}")
        bits = self.check_bits(bits)
        windows, rows = self._full_windows(self._check_indices(indices, bits).to(self.device), bits)
        mel = self._decode_windows(windows, bits).flatten(0, 1)[: rows * self.patch_size[0]]
        if space == "db":
            return self.frontend.model_to_db(mel)
        if space == "power":
            return self.frontend.inverse(mel)
        return mel

    @property
    def vocoder(self) -> nn.Module:
        """The :class:`~transcoder.audio.griffin_lim.GriffinLimVocoder` (power mel -> audio) of :attr:`griffin_lim`."""
        return self.griffin_lim.vocoder

    @property
    def neural_vocoder(self) -> NeuralVocoder | None:
        """The renderer when it is a neural vocoder, else ``None``."""
        return self.renderer if isinstance(self.renderer, NeuralVocoder) else None

    @property
    def renderer_name(self) -> str:
        """``"griffin-lim"`` or ``"neural"`` (the kind of :attr:`renderer`)."""
        return self.renderer.kind

    @torch.inference_mode()
    def render(self, mel: Tensor, length: int | None = None, seed: int | None = 0) -> Tensor:
        """Model-space mel ``(B, T, n_mels)`` on any device -> waveforms ``(B, length)`` on the device, by
        :attr:`renderer` (``seed``: Griffin-Lim's initial phase)."""
        return self.renderer.render(mel.to(self.device), length, seed)

    @torch.inference_mode()
    def mel_to_wave(self, mel: Tensor, num_samples: int | None = None, seed: int | None = 0) -> Tensor:
        """Model-space mel ``(T, n_mels)`` or ``(B, T, n_mels)`` -> waveform(s) on the CPU, by :attr:`renderer`.

        ``num_samples`` trims (or zero-pads) the output; default ``T * hop_length``.
        """
        squeeze = mel.ndim == 2
        wave = self.render(mel.unsqueeze(0) if squeeze else mel, num_samples, seed).cpu()
        return wave[0] if squeeze else wave

    def _check_num_samples(self, num_samples: int | None, rows: int) -> None:
        covered = self.codes_spec.covered_samples(rows)
        if num_samples is not None and not 0 < num_samples <= covered:
            raise ValueError(f"num_samples={num_samples}: {rows} rows of codes cover {covered} samples "
                             f"(expected 1..{covered})")

    def decode_codes(
        self, indices: Tensor | np.ndarray, num_samples: int | None = None, seed: int | None = 0,
        bits: int | None = None,
    ) -> Tensor:
        """Indices ``(n_time_tokens, n_freq_patches)`` -> waveform ``(S,)`` float32 on the CPU.

        Args:
            indices: codes from :meth:`encode_wave` / :meth:`encode_file` (or a ``.npy`` of them).
            num_samples: original length to trim to (default: the full padded length); at most the
                samples the codes cover (``ValueError`` otherwise: the codes cannot make a longer signal).
            seed: Griffin-Lim phase seed (``None`` for a random start).
            bits: bits per token of ``indices`` (default: the model's; see :meth:`decode_to_mel`).
        """
        bits = self.check_bits(bits)
        x = self._check_indices(indices, bits)
        self._check_num_samples(num_samples, x.shape[0])
        return self.mel_to_wave(self.decode_to_mel(x, bits=bits), num_samples, seed)

    @torch.inference_mode()
    def decode_to_file(self, indices: Tensor | np.ndarray, path: str | Path, num_samples: int | None = None,
                       seed: int | None = 0, subtype: str = "PCM_16", margin_frames: int = 16,
                       bits: int | None = None) -> Path:
        """Decode codes to a WAV (any soundfile format by suffix), window by window in constant memory.

        Each window is rendered by :attr:`renderer` with ``margin_frames`` of context on both sides and
        crossfaded into its neighbours (:class:`~transcoder.audio.render.ChunkedRenderer` with one
        window per block); window ``k`` uses phase seed ``seed + k``. ``num_samples`` trims the output as
        in :meth:`decode_codes`; ``bits``: bits per token of ``indices`` (default: the model's).
        """
        import soundfile as sf

        bits = self.check_bits(bits)
        x = self._check_indices(indices, bits)
        self._check_num_samples(num_samples, x.shape[0])
        windows, rows = self._full_windows(x, bits)
        total = rows * self.patch_size[0] * self.hop_length if num_samples is None else num_samples

        def model_windows() -> Iterator[Tensor]:
            for chunk in windows.split(self.batch_size):
                yield from self._decode_windows(chunk.to(self.device), bits)

        renderer = ChunkedRenderer(self.renderer, self.window_frames, margin=margin_frames, seed=seed)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with sf.SoundFile(str(path), "w", samplerate=self.sample_rate, channels=1, subtype=subtype) as out:
            for block in renderer.blocks(model_windows()):
                block = block[: total - written]
                out.write(block)
                written += block.shape[0]
                if written >= total:
                    break
        return path

    def load_codes(self, path: str | Path, manifest_path: str | Path | None = None,
                   utterance: str | None = None) -> CodesFile:
        """Read codes and check they fit this model: a ``.npz``, a ``.npy`` of a codes folder, or with
        ``utterance`` one utterance (by id) of the codes folder ``path`` in either layout
        (:class:`~transcoder.codes.CodesIndex`).

        Raises :class:`~transcoder.codes.CodesFormatError` naming the file for codes of another model,
        a non-integer dtype, wrong shape or row count, values out of range, or a ``num_samples`` the
        codes do not cover. ``indices`` of the result are int64; its ``bits`` is the codes' width (fewer
        than the model's for codes encoded with ``bits=k`` by a nested-bits model).
        """
        if utterance is not None:
            codes = CodesIndex.open(path).codes_file(utterance)
            where: str | Path = f"{path} utterance {utterance!r}"
        else:
            codes = CodesFile.load(path, manifest_path=manifest_path)
            where = path
        codes.indices = codes.checked(self.codes_spec, where)
        return codes

    def decode_file(self, codes_path: str | Path, out_path: str | Path, seed: int | None = 0,
                    manifest_path: str | Path | None = None, utterance: str | None = None) -> Path:
        """Codes (see :meth:`load_codes`; ``utterance`` picks one of a codes folder) -> audio file at its
        original length, streamed."""
        codes = self.load_codes(codes_path, manifest_path, utterance)
        return self.decode_to_file(codes.indices, out_path, num_samples=codes.num_samples, seed=seed, bits=codes.bits)

    # -- streaming (causal models, see transcoder/streaming.py) ---------------------------------
    def stream_encoder(self, bits: int | None = None) -> StreamEncoder:
        """A :class:`~transcoder.streaming.StreamEncoder`: push audio chunks (any size, the tokenizer's sample
        rate), get code rows ``(R, n_freq_patches)`` of ``bits`` bits (default: the model's) as soon as they
        are determined. Needs a causal model and the PyTorch backend."""
        self._check_streaming()
        return StreamEncoder(self.model, self.frontend, bits=self.check_bits(bits))

    def stream_decoder(self, audio: bool = False, margin_frames: int = 8, min_frames: int = 16,
                       seed: int = 0, bits: int | None = None) -> StreamDecoder:
        """A :class:`~transcoder.streaming.StreamDecoder`: push code rows, get mel frames (exact) and, with
        ``audio=True``, audio rendered by :attr:`renderer` (the neural vocoder when one is loaded, else
        Griffin-Lim) in blocks of ``min_frames`` frames with ``margin_frames`` of context and crossfade
        on each side (:class:`~transcoder.audio.render.ChunkedRenderer`, approximate). ``bits``: bits per
        token of the rows pushed (default: the model's). Needs a causal model and the PyTorch backend."""
        self._check_streaming()
        bits = self.check_bits(bits)
        renderer = ChunkedRenderer(self.renderer, min_frames, margin=margin_frames, seed=seed) if audio else None
        return StreamDecoder(self.model, renderer, bits=bits)

    def _check_streaming(self) -> None:
        if self.backend != "torch":
            raise ValueError(f"streaming runs the PyTorch model; this tokenizer runs backend={self.backend!r} "
                             "(load it with backend='torch')")

    def __repr__(self) -> str:
        return (f"AudioTokenizer(sample_rate={self.sample_rate}, window={self.window_frames} frames, "
                f"patch={self.patch_size}, bits={self.bits_per_token}, {self.tokens_per_second:g} tokens/s, "
                f"{self.bitrate:g} bit/s, device={self.device}"
                + (f", backend={self.backend})" if self.backend != "torch" else ")"))


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def waveform_to_mono(wave: Tensor | np.ndarray) -> Tensor:
    """A mono ``(S,)`` or multi-channel array -> float32 ``(S,)``, channels averaged.

    Both layouts are accepted: ``(C, S)`` (torchaudio) and ``(S, C)`` (``soundfile.read``); the shorter
    axis is taken as the channels. Integer PCM is scaled to [-1, 1) (uint8 as offset binary); complex, boolean
    and other unsigned samples raise ``TypeError`` (:func:`~transcoder.audio.pcm.pcm_to_float32`).
    """
    x = torch.as_tensor(pcm_to_float32(wave))
    if x.ndim == 2:
        channel_axis = 0 if x.shape[0] <= x.shape[1] else 1
        if x.shape[channel_axis] > 16:
            raise ValueError(f"cannot tell channels from samples in a waveform of shape {tuple(x.shape)}")
        x = x.mean(channel_axis)
    return x


def load_tokenizer(
    checkpoint: str | Path,
    device: str | torch.device | None = None,
    use_ema: bool = True,
    batch_size: int = 16,
    vocoder_kwargs: dict[str, Any] | None = None,
    vocoder: str | Path | NeuralVocoder | None = None,
    trust_config: bool = False,
    allow_nonfinite: bool = False,
    backend: str = "torch",
) -> AudioTokenizer:
    """Load a trainer checkpoint, a release folder or a Hugging Face Hub name as an :class:`AudioTokenizer`
    (model in eval mode on ``device``, CUDA when available by default), with the front end built from its mel
    settings.

    ``checkpoint``: a checkpoint file (``best.pt``); a release folder (``scripts/export_tokenizer.py``: JSON and
    safetensors, nothing unpickled; its model is built by the same function as a checkpoint's); or a name
    ``org/model`` fetched by ``huggingface_hub`` when it is installed (its cache first; ``HF_HUB_OFFLINE=1``:
    the cache only). ``use_ema`` picks the EMA weights when the checkpoint has them (the raw weights otherwise;
    ``tokenizer.weights`` says which were loaded); a release folder holds one set, chosen when it was exported.
    ``vocoder``: a vocoder checkpoint (written by ``scripts/train_vocoder.py``; its EMA weights when present)
    or a loaded :class:`~transcoder.audio.neural_vocoder.NeuralVocoder` renders waveforms instead of
    Griffin-Lim (:func:`~transcoder.audio.render.build_renderer`); ``ValueError`` naming the settings if its mel
    settings differ from the tokenizer's. A release folder's own vocoder is used when none is given.
    ``backend="onnx"`` runs a release folder's ``encoder.onnx`` / ``decoder.onnx`` with ONNX Runtime on the CPU
    (:class:`~transcoder.release.onnx_backend.OnnxTokenizerModel`, as many threads as torch uses).

    Raises:
        ValueError: an unknown ``backend``, or ``"onnx"`` for a checkpoint file or on a GPU.
        FileNotFoundError / CheckpointError: a missing or unusable checkpoint, folder file or Hub name.
        ModuleNotFoundError: a Hub name without ``huggingface_hub``, or ``"onnx"`` without ``onnxruntime``.

    A checkpoint or a release folder is data: the config stored in it (and in a vocoder checkpoint) may name only
    the project's own classes, checked before anything is imported, so loading a shared tokenizer runs no code.
    ``trust_config=True`` lifts that for a checkpoint of your own extension classes. Weights must be finite and of
    the model's dtype; ``allow_nonfinite=True`` loads NaN / Inf weights with a warning (encoding still refuses
    non-finite activations).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {list(BACKENDS)}")
    source = resolve_source(checkpoint)
    if source.is_dir():
        return _load_release(source, device, batch_size, vocoder_kwargs, vocoder, backend, trust_config,
                             allow_nonfinite)
    if backend != "torch":
        raise ValueError(f"backend={backend!r} runs a release folder's ONNX graphs; {source} is a checkpoint file "
                         "(export it with scripts/export_tokenizer.py --onnx)")
    model, mel_config, state = load_model_from_checkpoint(source, use_ema=use_ema, trust_config=trust_config,
                                                          allow_nonfinite=allow_nonfinite)
    return AudioTokenizer(model, mel_config, device=device, batch_size=batch_size,
                          vocoder_kwargs=vocoder_kwargs, checkpoint_path=source, weights=state["weights"],
                          checkpoint_config=state["config"], checkpoint_step=state.get("step"),
                          neural_vocoder=vocoder, trust_config=trust_config)


def _load_release(folder: Path, device: str | torch.device | None, batch_size: int,
                  vocoder_kwargs: dict[str, Any] | None, vocoder: str | Path | NeuralVocoder | None,
                  backend: str, trust_config: bool = False, allow_nonfinite: bool = False) -> AudioTokenizer:
    """:func:`load_tokenizer` of a release folder (:mod:`transcoder.release.folder`)."""
    if backend == "onnx":
        from transcoder.release.onnx_backend import OnnxTokenizerModel

        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"backend='onnx' runs on the CPU; got device={device!r}")
        device = "cpu"
        config = read_release_config(folder)
        model: nn.Module = OnnxTokenizerModel(folder, config, threads=torch.get_num_threads())
        mel_config = MelConfig.from_dict(config["mel"])
    else:
        model, mel_config, config = load_release_model(folder, trust_config, allow_nonfinite)
    if vocoder is None:
        vocoder = load_release_vocoder(folder, device=device if device is not None else _default_device(),
                                       trust_config=trust_config)
    return AudioTokenizer(model, mel_config, device=device, batch_size=batch_size, vocoder_kwargs=vocoder_kwargs,
                          checkpoint_path=folder / MODEL_FILE, weights=config["weights"],
                          checkpoint_config=config.get("training_config") or {},
                          checkpoint_step=(config.get("source") or {}).get("step"), neural_vocoder=vocoder,
                          backend=backend, trust_config=trust_config)
