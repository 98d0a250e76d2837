"""Compute precisions by name and the torch dtype each name stands for, defined once.

The torch pipeline runs in any of :data:`PRECISIONS` and TensorRT builds in any of them; the
ONNX units are exported in :data:`ONNX_PRECISIONS` only (bf16 is not exported). The
command-line ``--precision`` flags take these names.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["DTYPES", "ONNX_PRECISIONS", "PRECISIONS", "OnnxPrecision", "Precision"]

Precision = Literal["fp32", "fp16", "bf16"]
OnnxPrecision = Literal["fp32", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "bf16")
ONNX_PRECISIONS: tuple[OnnxPrecision, ...] = ("fp32", "fp16")
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
