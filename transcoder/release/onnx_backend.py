"""The tokenizer model run by ONNX Runtime: ``encoder.onnx`` and ``decoder.onnx`` of a release folder behind
the two model methods :class:`~transcoder.api.AudioTokenizer` calls (``encode`` and ``decode_indices``).

The log-mel front end and the renderer stay in PyTorch; only the encoder and decoder run in ONNX Runtime,
on the CPU. Codes are full width: a nested-bits model's ``k``-bit codes are the first ``k`` bits of them
(exact), but decoding ``k``-bit codes needs the PyTorch backend (its missing bits are filled in PyTorch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from transcoder.models.quantizer.nested import truncate_indices
from transcoder.release.folder import ReleaseFormatError

__all__ = ["OnnxTokenizerModel"]


class _Widths:
    """Stands in for the model's ``nested_bits`` where only its ``widths`` are read."""

    def __init__(self, widths: list[int]) -> None:
        self.widths = widths


class OnnxTokenizerModel(nn.Module):
    """``encoder.onnx`` + ``decoder.onnx`` with the attributes of an ``AudioBSQModel`` the tokenizer reads.

    Args:
        folder: the release folder holding the graphs.
        config: its ``config.json`` (``codes`` and ``onnx`` entries).
        threads: ONNX Runtime intra-op threads (``None``: its default).

    Raises:
        ReleaseFormatError: the folder has no ONNX graphs (export them with ``--onnx``).
        ModuleNotFoundError: ``onnxruntime`` is not installed (the ``onnx`` extra).
    """

    def __init__(self, folder: str | Path, config: dict[str, Any], threads: int | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError("backend='onnx' needs onnxruntime: pip install -e '.[onnx]'") from err
        folder = Path(folder)
        entry, codes = config.get("onnx"), config.get("codes")
        if not isinstance(entry, dict):
            raise ReleaseFormatError(f"{folder / 'config.json'}: key 'onnx' is {entry!r}; this folder has no ONNX "
                                     "graphs (write them with scripts/export_tokenizer.py --onnx)")
        if not isinstance(codes, dict):
            raise ReleaseFormatError(f"{folder / 'config.json'}: key 'codes' must be a dict, got {codes!r}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.sessions = {}
        for part in ("encoder", "decoder"):
            path = folder / str(entry.get(part, f"{part}.onnx"))
            if not path.is_file():
                raise ReleaseFormatError(f"{path} is missing (config.json names it under 'onnx.{part}')")
            self.sessions[part] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.patch_size = (int(codes["patch_size"][0]), int(codes["patch_size"][1]))
        self.input_length = int(codes["window_frames"])
        self.embed_dim = int(codes["bits_per_token"])
        widths = [int(w) for w in codes.get("nested_widths") or []]
        self.nested_bits = _Widths(widths) if widths and widths != [self.embed_dim] else None

    @property
    def bits(self) -> int:
        """Bits per token (the graphs are exported from BSQ models only: ``embed_dim``)."""
        return self.embed_dim

    def _width(self, bits: int | None) -> int:
        return self.embed_dim if bits is None else int(bits)

    def encode(self, mel: Tensor, bits: int | None = None) -> tuple[None, None, dict[str, Any]]:
        """Model-space mel windows ``(B, input_length, F)`` -> ``(None, None, {"indices": (B, Nt, Nf) int64})``,
        the first ``bits`` bits of each token (default: all)."""
        array = np.ascontiguousarray(mel.detach().cpu().float().numpy())
        indices = torch.from_numpy(self.sessions["encoder"].run(None, {"mel": array})[0]).long()
        width = self._width(bits)
        if width < self.embed_dim:
            indices = truncate_indices(indices, width)
        return None, None, {"indices": indices, "grid": tuple(indices.shape[1:]), "bits": width}

    def decode_indices(self, indices: Tensor, bits: int | None = None) -> Tensor:
        """Full-width indices ``(B, Nt, Nf)`` -> model-space mel ``(B, Nt * patch_t, F)`` float32 on the CPU."""
        if self._width(bits) != self.embed_dim:
            raise ValueError(f"bits={bits}: the ONNX decoder takes {self.embed_dim}-bit codes only; load the "
                             "tokenizer with backend='torch' to decode fewer bits")
        array = np.ascontiguousarray(indices.detach().cpu().long().numpy())
        return torch.from_numpy(self.sessions["decoder"].run(None, {"indices": array})[0])

    def extra_repr(self) -> str:
        return f"onnx, patch={self.patch_size}, window={self.input_length}, bits={self.embed_dim}"
