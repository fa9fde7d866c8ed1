"""The tokenizer's two ONNX graphs: ``encoder.onnx`` (mel windows -> indices) and ``decoder.onnx`` (indices -> mel).

Both are dynamic in the batch only: a window is always ``input_length`` frames of ``input_size`` mels, as in
:class:`~transcoder.api.AudioTokenizer`. Exported with ``torch.onnx.export`` (needs the ``onnx`` package: the
``onnx`` extra) from a copy of the model, so the model passed in is left as it was.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["DecoderGraph", "EncoderGraph", "ONNX_OPSET", "export_onnx"]

#: The opset the graphs are written with (ONNX Runtime >= 1.16 runs it).
ONNX_OPSET = 17


class EncoderGraph(nn.Module):
    """Model-space mel windows ``(B, T, F)`` float32 -> full-width indices ``(B, T / patch_t, F / patch_f)`` int64."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, mel: Tensor) -> Tensor:
        _, _, info = self.model.encode(mel)
        return info["indices"]


class DecoderGraph(nn.Module):
    """Full-width indices ``(B, Nt, Nf)`` int64 -> model-space mel ``(B, Nt * patch_t, Nf * patch_f)`` float32.

    The bits of each index are read with integer division and remainder (ONNX has no bitwise AND on int64),
    giving the same ``+-q_scale`` codes as the quantizer's ``indices_to_codes`` (bit ``i`` is code dim ``i``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        quantizer = model.quantizer
        if not getattr(quantizer, "binary_codes", False):
            raise TypeError(f"ONNX export needs a binary quantizer; {type(quantizer).__name__} has no binary codes")
        self.model = model
        self.q_scale = float(quantizer.q_scale)
        self.register_buffer("powers", 2 ** torch.arange(int(model.embed_dim), dtype=torch.int64), persistent=False)

    def forward(self, indices: Tensor) -> Tensor:
        bits = torch.remainder(torch.div(indices.unsqueeze(-1), self.powers, rounding_mode="floor"), 2)
        codes = torch.where(bits == 1, self.q_scale, -self.q_scale).to(torch.float32).flatten(1, 2)
        return self.model.decode(codes, (indices.shape[1], indices.shape[2]))


def export_onnx(model: nn.Module, folder: str | Path, opset: int = ONNX_OPSET) -> dict[str, Any]:
    """Write ``encoder.onnx`` and ``decoder.onnx`` of ``model`` (an ``AudioBSQModel``) into ``folder``.

    Returns the ``onnx`` entry of a release ``config.json``: file names, opset, input / output names and shapes
    (``"batch"`` for the dynamic axis). Raises ``ModuleNotFoundError`` naming the extra when ``onnx`` is missing.
    """
    try:
        import onnx  # noqa: F401 - torch.onnx.export needs it
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("ONNX export needs the onnx package: pip install -e '.[onnx]'") from err
    folder = Path(folder)
    copy_ = copy.deepcopy(model).cpu().float().eval()
    frames, mels = int(copy_.input_length), int(copy_.input_size)
    pt, pf = (int(v) for v in copy_.patch_size)
    mel = torch.linspace(-1.0, 1.0, 2 * frames * mels).reshape(2, frames, mels)
    with torch.no_grad():
        indices = EncoderGraph(copy_)(mel)
    shapes = {"mel": ["batch", frames, mels], "indices": ["batch", frames // pt, mels // pf]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation notes about shape checks that hold for any batch
        for graph, example, name, inputs, outputs in (
                (EncoderGraph(copy_), mel, "encoder.onnx", "mel", "indices"),
                (DecoderGraph(copy_), indices, "decoder.onnx", "indices", "mel")):
            torch.onnx.export(graph, (example,), str(folder / name), dynamo=False, opset_version=opset,
                              input_names=[inputs], output_names=[outputs],
                              dynamic_axes={inputs: {0: "batch"}, outputs: {0: "batch"}})
    return {"encoder": "encoder.onnx", "decoder": "decoder.onnx", "opset": opset,
            "encoder_io": {"input": ["mel", "float32", shapes["mel"]],
                           "output": ["indices", "int64", shapes["indices"]]},
            "decoder_io": {"input": ["indices", "int64", shapes["indices"]],
                           "output": ["mel", "float32", shapes["mel"]]}}
