"""Sample formats accepted from callers: float samples as they are, integer PCM scaled to [-1, 1).

One rule for every entry point that takes raw samples (the offline encode API and the streaming encoder),
so the same audio gives the same codes whichever way it arrives.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["pcm_to_float32"]

_ACCEPTED = "float (16/32/64-bit, bfloat16 tensors), signed integer PCM (int8/16/32/64) or uint8 (offset binary)"


def pcm_to_float32(samples: Tensor | np.ndarray) -> np.ndarray:
    """Samples of any shape -> float32 array of the same shape.

    Float samples are kept as they are; signed integer PCM is divided by ``2 ** (bits - 1)`` and uint8 is
    read as offset binary (``(x - 128) / 128``), both into [-1, 1).

    Raises:
        TypeError: for complex, boolean, other unsigned, string or object samples, naming the dtype.
    """
    if isinstance(samples, Tensor):
        tensor = samples.detach().cpu()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        samples = tensor.numpy()
    array = np.asarray(samples)
    kind = array.dtype.kind
    if kind == "f":
        return array.astype(np.float32, copy=False)
    if array.dtype == np.uint8:
        return (array.astype(np.float32) - 128.0) / 128.0
    if kind == "i":
        return array.astype(np.float32) / float(2 ** (8 * array.dtype.itemsize - 1))
    raise TypeError(f"audio samples must be {_ACCEPTED}; got dtype {array.dtype}")
