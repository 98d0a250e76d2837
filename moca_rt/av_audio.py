"""Decoded PyAV audio frames as float arrays: the one conversion that the streaming sources
(:mod:`moca_rt.media`) and the dataset file readers (:mod:`moca_rt.datasets`) share."""

from __future__ import annotations

from typing import Any

import numpy as np

from moca_rt.errors import MediaDecodeError

__all__ = ["audio_frame_to_float"]

_INT_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0, "s64": 9223372036854775808.0}


def audio_frame_to_float(frame: Any) -> np.ndarray:
    """Decoded ``av.AudioFrame`` -> float32 [channels, samples]; integers scaled to [-1, 1).

    PCM16 becomes ``int16 / 32768`` exactly (what ``torchaudio.load(normalize=True)`` returns).
    """
    fmt = frame.format
    arr = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not fmt.is_planar:
        arr = arr.reshape(-1, channels).T
    base = fmt.name.rstrip("p")
    if base in ("flt", "dbl"):
        return np.ascontiguousarray(arr, dtype=np.float32)
    if base not in _INT_SCALE:
        raise MediaDecodeError(
            f"unsupported audio sample format: expected one of "
            f"u8/s16/s32/s64/flt/dbl, got {fmt.name}"
        )
    out = arr.astype(np.float64)
    if base == "u8":
        out -= 128.0
    return (out / _INT_SCALE[base]).astype(np.float32)
