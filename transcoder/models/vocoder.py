"""A Vocos-style neural vocoder: model-space log-mel (B, T, F) -> waveform (B, T * hop).

Design after Vocos (Siuzdak 2023, arXiv 2306.00814): a 1-D ConvNeXt backbone (Liu et al. 2022) runs at
the frame rate of the mel, and a head predicts, per frame, the log-magnitude and the phase of one STFT
frame; an inverse STFT turns them into samples. There is no upsampling stack (unlike HiFi-GAN), so the
generator is cheap and its hop equals the mel's hop by construction.

Frame alignment: the tokenizer's front end (:class:`transcoder.audio.LogMelFrontend`) returns
``S // hop`` frames for ``S`` samples, frame ``t`` centred on sample ``t * hop`` (the frame centred on
sample ``S`` is dropped). The head therefore predicts ``T + 1`` centred STFT frames (the backbone's last
frame repeated for the frame on the clip's end) and ``torch.istft(center=True, length=T * hop)``
returns exactly ``T * hop`` samples, frame ``t`` centred on sample ``t * hop`` again.

Written for this repository from the paper's description; no code was copied from the Vocos repository.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["VOCODER_SIZES", "ConvNeXtBlock1d", "VocosGenerator"]

#: Backbone sizes (``dim``, ``intermediate_dim``, ``num_layers``). ``base`` is Vocos' mel vocoder (13.6 M
#: parameters with 128 mels and n_fft 1024; 13.1 M with the demo's 64 mels and n_fft 512); ``mid`` 2.6 M,
#: ``small`` 0.5 M, ``tiny`` 0.14 M (demo's settings).
VOCODER_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"dim": 64, "intermediate_dim": 192, "num_layers": 3},
    "small": {"dim": 128, "intermediate_dim": 384, "num_layers": 4},
    "mid": {"dim": 256, "intermediate_dim": 768, "num_layers": 6},
    "base": {"dim": 512, "intermediate_dim": 1536, "num_layers": 8},
}


class ConvNeXtBlock1d(nn.Module):
    """Depthwise conv (k=7) -> LayerNorm -> pointwise MLP (GELU) -> layer scale, residual: (B, C, T) -> (B, C, T).

    Args:
        dim: channels C.
        intermediate_dim: hidden width of the pointwise MLP.
        layer_scale: initial value of the per-channel output scale (Vocos: ``1 / num_layers``).
        kernel_size: depthwise kernel (odd; "same" padding keeps T).
    """

    def __init__(self, dim: int, intermediate_dim: int, layer_scale: float, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size={kernel_size}: expected an odd number (same padding)")
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C, T)."""
        h = self.dwconv(x).transpose(1, 2)  # (B, T, C)
        h = self.pwconv2(self.act(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class VocosGenerator(nn.Module):
    """ConvNeXt backbone + inverse-STFT head: model-space log-mel (B, T, n_mels) -> waveform (B, T * hop_length).

    The STFT settings (``n_fft``, ``hop_length``, ``win_length``) and ``n_mels`` are the tokenizer front
    end's (the vocoder task fills them in from the config's ``data`` block); the synthesis window is a
    periodic Hann window of ``win_length`` samples, as the front end's analysis window.

    Args:
        n_mels: mel bands F of the input.
        n_fft, hop_length, win_length: the inverse STFT (``win_length=None`` means ``n_fft``).
        size: a preset of :data:`VOCODER_SIZES` (``tiny`` / ``small`` / ``mid`` / ``base``); explicit
            ``dim`` / ``intermediate_dim`` / ``num_layers`` override it.
        dim, intermediate_dim, num_layers: backbone width, MLP width and depth.
        kernel_size: depthwise kernel of the input conv and the blocks.
        max_log_magnitude: the predicted log-magnitude is clamped to this before ``exp`` (Vocos clips
            the magnitude at 1e2, i.e. log 4.6), which keeps early training finite.
    """

    def __init__(self, n_mels: int, n_fft: int, hop_length: int, win_length: int | None = None,
                 size: str | None = "base", dim: int | None = None, intermediate_dim: int | None = None,
                 num_layers: int | None = None, kernel_size: int = 7, max_log_magnitude: float = 4.6) -> None:
        super().__init__()
        if size is not None and size not in VOCODER_SIZES:
            raise ValueError(f"size={size!r}: expected one of {sorted(VOCODER_SIZES)} or null")
        preset = VOCODER_SIZES[size] if size is not None else {}
        dims = {"dim": dim, "intermediate_dim": intermediate_dim, "num_layers": num_layers}
        resolved = {key: value if value is not None else preset.get(key) for key, value in dims.items()}
        missing = [key for key, value in resolved.items() if value is None]
        if missing:
            raise ValueError(f"size=null needs {missing} set explicitly")
        for key, value in (("n_mels", n_mels), ("n_fft", n_fft), ("hop_length", hop_length), *resolved.items()):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{key}={value!r}: expected a positive integer")
        win = n_fft if win_length is None else int(win_length)
        if not 0 < win <= n_fft or hop_length > win:
            raise ValueError(f"win_length={win_length}, hop_length={hop_length}, n_fft={n_fft}: expected "
                             "hop_length <= win_length <= n_fft (the inverse STFT needs overlapping windows)")
        self.n_mels, self.n_fft, self.hop_length, self.win_length = n_mels, n_fft, hop_length, win
        self.dim, self.num_layers = resolved["dim"], resolved["num_layers"]
        self.max_log_magnitude = float(max_log_magnitude)
        self.embed = nn.Conv1d(n_mels, self.dim, kernel_size, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(self.dim, eps=1e-6)
        self.blocks = nn.ModuleList([
            ConvNeXtBlock1d(self.dim, resolved["intermediate_dim"], 1.0 / self.num_layers, kernel_size)
            for _ in range(self.num_layers)])
        self.final_norm = nn.LayerNorm(self.dim, eps=1e-6)
        self.n_freqs = n_fft // 2 + 1
        self.head = nn.Linear(self.dim, 2 * self.n_freqs)  # log-magnitude and phase per linear bin
        window = torch.hann_window(win, periodic=True)
        if win < n_fft:  # centred zero padding, as torch.stft does with a shorter window
            left = (n_fft - win) // 2
            window = torch.nn.functional.pad(window, (left, n_fft - win - left))
        self.register_buffer("window", window, persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Conv1d | nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def num_samples(self, frames: int) -> int:
        """Output samples for ``frames`` mel frames: ``frames * hop_length``."""
        return int(frames) * self.hop_length

    def features(self, mel: Tensor) -> Tensor:
        """Backbone: (B, T, n_mels) -> (B, T, dim)."""
        if mel.ndim != 3 or mel.shape[-1] != self.n_mels:
            raise ValueError(f"expected a model-space mel (B, T, {self.n_mels}), got shape {tuple(mel.shape)}")
        x = self.embed(mel.transpose(1, 2))  # (B, dim, T)
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x.transpose(1, 2))

    def spectrum(self, mel: Tensor) -> Tensor:
        """Complex STFT (B, n_fft // 2 + 1, T + 1) predicted from (B, T, n_mels), in fp32."""
        h = self.features(mel)
        h = torch.cat([h, h[:, -1:]], dim=1)  # the frame centred on the clip's end sample
        out = self.head(h).float().transpose(1, 2)  # (B, 2 * n_freqs, T + 1)
        log_mag, phase = out.chunk(2, dim=1)
        magnitude = torch.exp(log_mag.clamp(max=self.max_log_magnitude))
        # Phase as an angle: cos / sin keep the spectrum on the circle whatever the raw value (Vocos).
        return torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))

    def forward(self, mel: Tensor) -> Tensor:
        """Model-space log-mel (B, T, n_mels) -> waveform (B, T * hop_length), fp32."""
        spec = self.spectrum(mel)
        frames = mel.shape[1]
        with torch.autocast(device_type=mel.device.type, enabled=False):
            return torch.istft(spec, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.n_fft,
                               window=self.window.float(), center=True, length=self.num_samples(frames))

    def extra_repr(self) -> str:
        return (f"n_mels={self.n_mels}, n_fft={self.n_fft}, hop_length={self.hop_length}, "
                f"win_length={self.win_length}, dim={self.dim}, num_layers={self.num_layers}")

    def config_dict(self) -> dict[str, Any]:
        """The STFT settings this generator was built for (compared with a front end's)."""
        return {"n_mels": self.n_mels, "n_fft": self.n_fft, "hop_length": self.hop_length,
                "win_length": self.win_length}
