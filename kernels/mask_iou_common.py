"""What every mask IoU / coverage backend shares: the input check and the binarisation.

:mod:`moca_rt.kernels.mask_iou` (reference, Triton kernel, dispatchers) and
:mod:`moca_rt.kernels.cupy_mask_iou` (the CUDA C kernel) both import it; only the dispatcher
imports the CuPy launcher. Definitions in :mod:`moca_rt.kernels.mask_iou`.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["MAX_PIXELS", "Metric", "binarise", "check_masks"]

Metric = Literal["iou", "coverage"]
MAX_PIXELS = 1 << 24
_INT_DTYPES = (torch.bool, torch.uint8)


def check_masks(
    proposals: torch.Tensor, clusters: torch.Tensor, threshold: float | None, metric: str
) -> None:
    """Raise ValueError unless the masks are [B, n, h, w] on one grid and device, of a dtype
    the ops take (floating ones with a ``threshold``), h * w < 2^24, and ``metric`` known."""
    for name, t in (("proposals", proposals), ("clusters", clusters)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"expected {name} of shape [B, n, h, w], got {shape}")
        if t.dtype not in _INT_DTYPES and not t.dtype.is_floating_point:
            raise ValueError(f"expected {name} dtype bool, uint8 or floating, got {t.dtype}")
        if t.dtype.is_floating_point and threshold is None:
            raise ValueError(
                f"expected a threshold for floating {name} (binarised as value > threshold), "
                "got threshold=None"
            )
    b, _, h, w = proposals.shape
    if clusters.shape[0] != b or clusters.shape[2:] != proposals.shape[2:]:
        raise ValueError(
            f"expected clusters [B={b}, K, {h}, {w}] matching proposals, "
            f"got {tuple(clusters.shape)}"
        )
    if proposals.device != clusters.device:
        raise ValueError(
            f"expected both inputs on one device, got {proposals.device} and {clusters.device}"
        )
    if h * w >= MAX_PIXELS:
        raise ValueError(f"expected h * w < 2^24 for exact counts, got {h} x {w}")
    if metric not in ("iou", "coverage"):
        raise ValueError(f"expected metric 'iou' or 'coverage', got {metric!r}")


def binarise(masks: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """bool masks: bool as is, uint8 ``!= 0``, floating ``> threshold``."""
    if masks.dtype == torch.bool:
        return masks
    if masks.dtype == torch.uint8:
        return masks != 0
    if threshold is None:
        raise ValueError(f"expected a threshold for {masks.dtype} masks, got None")
    return masks > threshold
