"""Use a trained checkpoint: audio -> integer codes -> audio.

Example::

    from transcoder.api import load_tokenizer

    tok = load_tokenizer("outputs/audio_model/checkpoints/best.pt")      # GPU when present
    codes = tok.encode_file("speech.flac")                                # (n_time_tokens, n_freq_patches) int64
    wave = tok.decode_codes(codes, num_samples=tok.last_num_samples)     # (S,) float32 at tok.sample_rate
    print(tok.tokens_per_second, tok.bits_per_token, tok.bitrate)         # e.g. 50.0, 18, 900.0

Audio of any length is cut into windows of the model's ``input_length`` frames. The log-mel of the
whole (zero-padded) signal is computed once and then split, so window borders see real STFT
context; codes of the windows are concatenated along time. Decoding decodes window by window,
concatenates the mels and renders them with Griffin-Lim, trimmed to ``num_samples``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from transcoder.audio.griffin_lim import GriffinLimVocoder
from transcoder.audio.mel import LogMelFrontend, MelConfig
from transcoder.data.audio_io import load_audio, resample
from transcoder.evaluation.metrics import bitrate as _bitrate
from transcoder.evaluation.metrics import tokens_per_second as _tokens_per_second
from transcoder.training.config import instantiate
from transcoder.utils.checkpoint import load_checkpoint

__all__ = ["AudioTokenizer", "load_tokenizer", "load_model_from_checkpoint", "sha256_file", "codes_dtype"]

_STATE_PREFIXES = ("module.", "_orig_mod.")


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def codes_dtype(bits: int) -> np.dtype:
    """Smallest numpy integer dtype that holds ``bits``-bit codes (uint16 / uint32 / int64)."""
    if bits <= 16:
        return np.dtype(np.uint16)
    if bits <= 32:
        return np.dtype(np.uint32)
    return np.dtype(np.int64)


def _clean_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip DDP / torch.compile prefixes and AveragedModel bookkeeping from a state dict."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key == "n_averaged":
            continue
        changed = True
        while changed:
            changed = False
            for prefix in _STATE_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def load_model_from_checkpoint(
    checkpoint: str | Path | dict[str, Any], use_ema: bool = True
) -> tuple[nn.Module, MelConfig, dict[str, Any]]:
    """Build the model of a checkpoint and load its weights (EMA weights if asked and present).

    Returns ``(model on CPU in eval mode, mel config, checkpoint dict)``; ``state["weights"]`` is set to
    ``"ema"`` or ``"model"`` (which weights were loaded).
    """
    path = Path(checkpoint) if not isinstance(checkpoint, dict) else Path("<dict>")
    state = dict(checkpoint) if isinstance(checkpoint, dict) else load_checkpoint(path)
    config = state["config"]
    model_spec = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model_spec, dict) or "target" not in model_spec:
        raise RuntimeError(f"checkpoint {path}: config['model'] must be {{'target': ..., 'params': ...}}, "
                           f"got {model_spec!r}")
    mel_dict = state.get("mel")
    if mel_dict is None:
        data = config.get("data")
        if not isinstance(data, dict):
            raise RuntimeError(f"checkpoint {path} has neither 'mel' nor config['data'] mel settings")
        mel_config = MelConfig.from_dict(data, strict=False)
    else:
        mel_config = MelConfig.from_dict(mel_dict)
    model = instantiate(model_spec)
    source = "ema" if use_ema and state.get("ema") is not None else "model"
    weights = state[source]
    state["weights"] = source
    try:
        model.load_state_dict(_clean_state_dict(weights))
    except RuntimeError as err:
        raise RuntimeError(f"checkpoint {path}: weights do not fit {model_spec['target']} built from its "
                           f"config ({err})") from err
    input_size = getattr(model, "input_size", mel_config.n_mels)
    if input_size != mel_config.n_mels:
        raise RuntimeError(f"checkpoint {path}: model input_size={input_size} but mel n_mels={mel_config.n_mels}")
    return model.eval(), mel_config, state


@dataclass
class EncodedAudio:
    """Codes of one signal plus what is needed to decode it back to the same length."""

    indices: Tensor  # (n_time_tokens, n_freq_patches) int64, on the CPU
    num_samples: int  # samples at the tokenizer's sample rate before padding
    num_frames: int  # mel frames covering the unpadded signal, ceil(num_samples / hop_length)


class AudioTokenizer:
    """A trained Audio BSQ-ViT model with its front end and a Griffin-Lim vocoder.

    Build with :func:`load_tokenizer`. All ``encode_*`` methods return CPU int64 indices of shape
    ``(n_time_tokens, n_freq_patches)`` (time-major, like ``info["indices"]`` of the model).

    Args:
        model: an ``AudioBSQModel`` (moved to ``device`` and set to eval mode).
        mel_config: the front-end settings the model was trained with.
        device: where the model, front end and vocoder run.
        batch_size: model windows per forward pass in the batched methods.
        vocoder_kwargs: overrides for :meth:`GriffinLimVocoder.from_frontend` (``n_iter`` ...).
        checkpoint_path: where the weights came from (for :attr:`checkpoint_sha256`).
        weights: ``"ema"`` or ``"model"``, which weights of the checkpoint were loaded (informative).
        checkpoint_config: the checkpoint's resolved training config (informative).
        checkpoint_step: the training step of the checkpoint (informative).
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
    ) -> None:
        self.weights = weights
        self.checkpoint_config = checkpoint_config or {}
        self.checkpoint_step = checkpoint_step
        self.device = torch.device(device) if device is not None else _default_device()
        self.model = model.to(self.device).eval()
        self.mel_config = mel_config
        self.frontend = LogMelFrontend(mel_config).to(self.device)
        self.vocoder = GriffinLimVocoder.from_frontend(self.frontend, **(vocoder_kwargs or {})).to(self.device)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self._sha256: str | None = None
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
    def tokens_per_window(self) -> int:
        """Time rows of tokens per window (``window_frames / patch_t``)."""
        return self.window_frames // self.patch_size[0]

    @property
    def bits_per_token(self) -> int:
        return int(self.model.embed_dim)

    @property
    def tokens_per_second(self) -> float:
        """Tokens (all frequency patches counted) per second of audio."""
        return _tokens_per_second(self.patch_size, self.mel_config.n_mels, self.hop_length, self.sample_rate)

    @property
    def bitrate(self) -> float:
        """Bits per second of audio."""
        return _bitrate(self.patch_size, self.mel_config.n_mels, self.hop_length, self.sample_rate,
                        self.bits_per_token)

    @property
    def checkpoint_sha256(self) -> str | None:
        """SHA-256 of the checkpoint file (computed once, on first use)."""
        if self._sha256 is None and self.checkpoint_path is not None:
            self._sha256 = sha256_file(self.checkpoint_path)
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

    @torch.inference_mode()
    def _mel_windows(self, wave: Tensor) -> Tensor:
        """``(S,)`` -> model-space windows ``(n_windows, window_frames, n_mels)`` on the device."""
        n = self.num_windows(wave.numel())
        padded = torch.zeros(n * self.window_samples, device=self.device)
        padded[: wave.numel()] = wave.to(self.device)
        mel = self.frontend(padded)  # (n * window_frames, n_mels)
        return mel.reshape(n, self.window_frames, self.mel_config.n_mels)

    @torch.inference_mode()
    def encode_mel(self, mel: Tensor) -> Tensor:
        """Model-space mels ``(B, T, n_mels)`` (T a multiple of ``patch_t``) -> indices ``(B, T/pt, Nf)``
        on the device, run in chunks of ``batch_size``."""
        outs = []
        for chunk in mel.to(self.device).split(self.batch_size):
            _, _, info = self.model.encode(chunk)
            outs.append(info["indices"])
        return torch.cat(outs)

    # -- encoding ----------------------------------------------------------------------------
    def encode_waves(
        self, waves: Sequence[Tensor | np.ndarray], sample_rate: int | None = None
    ) -> list[EncodedAudio]:
        """Encode several signals, batching the windows of all of them together.

        Args:
            waves: mono ``(S_i,)`` signals (or ``(channels, S_i)``, averaged).
            sample_rate: their sample rate (default: the tokenizer's).

        Returns:
            One :class:`EncodedAudio` per signal; ``indices`` ``(n_windows_i * tokens_per_window, Nf)``.
        """
        prepared = [self._as_wave(w, sample_rate) for w in waves]
        if not prepared:
            return []
        windows = torch.cat([self._mel_windows(w) for w in prepared])
        indices = self.encode_mel(windows).cpu()  # (total_windows, tokens_per_window, Nf)
        out, start = [], 0
        for w in prepared:
            n = self.num_windows(w.numel())
            codes = indices[start:start + n].reshape(n * self.tokens_per_window, self.n_freq_patches)
            out.append(EncodedAudio(codes, int(w.numel()), -(-int(w.numel()) // self.hop_length)))
            start += n
        return out

    def encode_wave(self, wave: Tensor | np.ndarray, sample_rate: int | None = None) -> Tensor:
        """Mono ``(S,)`` signal at ``sample_rate`` -> indices ``(n_time_tokens, n_freq_patches)`` int64.

        ``n_time_tokens = ceil(S' / window_samples) * tokens_per_window`` with ``S'`` the length at the
        tokenizer's rate (stored in :attr:`last_num_samples` for :meth:`decode_codes`).
        """
        encoded = self.encode_waves([wave], sample_rate)[0]
        self.last_num_samples = encoded.num_samples
        return encoded.indices

    def load(self, path: str | Path) -> Tensor:
        """Decode an audio file to mono ``(S,)`` float32 at the tokenizer's sample rate."""
        return load_audio(str(path), self.sample_rate)

    def encode_file(self, path: str | Path) -> Tensor:
        """Audio file -> indices ``(n_time_tokens, n_freq_patches)``; see :meth:`encode_wave`."""
        return self.encode_wave(self.load(path), self.sample_rate)

    # -- decoding ----------------------------------------------------------------------------
    def _check_indices(self, indices: Tensor | np.ndarray) -> Tensor:
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
        if int(x.min()) < 0 or int(x.max()) >= 2**self.bits_per_token:
            raise ValueError(f"indices must lie in [0, 2^{self.bits_per_token}), got min {int(x.min())} "
                             f"max {int(x.max())}")
        return x

    @torch.inference_mode()
    def decode_to_mel(self, indices: Tensor | np.ndarray, space: str = "model") -> Tensor:
        """Indices ``(n_time_tokens, n_freq_patches)`` -> mel ``(n_time_tokens * patch_t, n_mels)``.

        Decoded window by window (``tokens_per_window`` rows each; a shorter last chunk is decoded
        at its own length). ``space``: ``model`` ([-1, 1], the model's output), ``db`` or ``power``
        (the vocoder's input). Returned on the device.
        """
        if space not in ("model", "db", "power"):
            raise ValueError(f"space must be 'model', 'db' or 'power', got {space!r}")
        x = self._check_indices(indices).to(self.device)
        rows = self.tokens_per_window
        full = x.shape[0] // rows
        mels = []
        if full:
            windows = x[: full * rows].reshape(full, rows, self.n_freq_patches)
            for chunk in windows.split(self.batch_size):
                mels.append(self.model.decode_indices(chunk).float().flatten(0, 1))
        if x.shape[0] % rows:
            mels.append(self.model.decode_indices(x[full * rows:].unsqueeze(0)).float()[0])
        mel = torch.cat(mels)
        if space == "db":
            return self.frontend.model_to_db(mel)
        if space == "power":
            return self.frontend.inverse(mel)
        return mel

    @torch.inference_mode()
    def mel_to_wave(self, mel: Tensor, num_samples: int | None = None, seed: int | None = 0) -> Tensor:
        """Model-space mel ``(T, n_mels)`` or ``(B, T, n_mels)`` -> waveform(s) via Griffin-Lim, on the CPU.

        ``num_samples`` trims (or zero-pads) the output; default ``T * hop_length``.
        """
        power = self.frontend.inverse(mel.to(self.device))
        return self.vocoder(power, length=num_samples, seed=seed).cpu()

    def decode_codes(
        self, indices: Tensor | np.ndarray, num_samples: int | None = None, seed: int | None = 0
    ) -> Tensor:
        """Indices ``(n_time_tokens, n_freq_patches)`` -> waveform ``(S,)`` float32 on the CPU.

        Args:
            indices: codes from :meth:`encode_wave` / :meth:`encode_file` (or a ``.npy`` of them).
            num_samples: original length to trim to (default: the full padded length).
            seed: Griffin-Lim phase seed (``None`` for a random start).
        """
        if num_samples is not None and num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        return self.mel_to_wave(self.decode_to_mel(indices), num_samples, seed)

    def __repr__(self) -> str:
        return (f"AudioTokenizer(sample_rate={self.sample_rate}, window={self.window_frames} frames, "
                f"patch={self.patch_size}, bits={self.bits_per_token}, {self.tokens_per_second:g} tokens/s, "
                f"{self.bitrate:g} bit/s, device={self.device})")


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def waveform_to_mono(wave: Tensor | np.ndarray) -> Tensor:
    """A mono ``(S,)`` or multi-channel array -> float32 ``(S,)``, channels averaged.

    Both layouts are accepted: ``(C, S)`` (torchaudio) and ``(S, C)`` (``soundfile.read``); the shorter
    axis is taken as the channels. Integer PCM is scaled to [-1, 1) (uint8 as offset binary).
    """
    array = np.asarray(wave.detach().cpu()) if isinstance(wave, Tensor) else np.asarray(wave)
    if array.dtype == np.uint8:
        array = (array.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float32) / float(2 ** (8 * array.dtype.itemsize - 1))
    x = torch.as_tensor(np.asarray(array, dtype=np.float32))
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
) -> AudioTokenizer:
    """Load a trainer checkpoint as an :class:`AudioTokenizer` (model in eval mode on ``device``,
    CUDA when available by default), with the front end built from the checkpoint's mel settings.

    ``use_ema`` picks the EMA weights when the checkpoint has them (the raw weights otherwise;
    ``tokenizer.weights`` says which were loaded).
    """
    model, mel_config, state = load_model_from_checkpoint(checkpoint, use_ema=use_ema)
    return AudioTokenizer(model, mel_config, device=device, batch_size=batch_size,
                          vocoder_kwargs=vocoder_kwargs, checkpoint_path=checkpoint, weights=state["weights"],
                          checkpoint_config=state["config"], checkpoint_step=state.get("step"))
