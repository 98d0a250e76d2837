"""CuPy launcher of the CUDA C mask IoU / coverage (``csrc/mask_iou.cu``, NVRTC at run time).

Same definitions as :func:`moca_rt.kernels.mask_iou.mask_iou_reference`. One block per
(proposal, frame) counts |P|, |M_k| and |P ∩ M_k| exactly. Floating inputs are binarised
(``> threshold``) in torch first; bool/uint8 masks are read in place. Limit: K <= 16.
"""

from __future__ import annotations

import torch

from .cupy_kmeans import as_cupy, launch, raw_module
from .dispatch import cupy_unsupported_reason
from .mask_iou_common import Metric, binarise, check_masks

MAX_K = 16


def cupy_mask_supports(proposals: torch.Tensor, clusters: torch.Tensor) -> str | None:
    """None if :func:`mask_match_cupy` can take the inputs, else the reason."""
    reason = cupy_unsupported_reason(proposals)
    if reason is not None:
        return reason
    if not 1 <= clusters.shape[1] <= MAX_K:
        return f"expected 1 <= K <= {MAX_K} for the CUDA C kernel, got K = {clusters.shape[1]}"
    return None


def mask_match_cupy(
    proposals: torch.Tensor,
    clusters: torch.Tensor,
    *,
    threshold: float | None = None,
    metric: Metric = "iou",
) -> torch.Tensor:
    """[B, P, K] fp32 IoU or coverage; arguments as in ``mask_iou_reference``."""
    import numpy as np

    check_masks(proposals, clusters, threshold, metric)
    reason = cupy_mask_supports(proposals, clusters)
    if reason is not None:
        raise ValueError(reason)
    bsz, n_p, h, w = proposals.shape
    n_k = clusters.shape[1]
    p = binarise(proposals, threshold).contiguous()
    c = binarise(clusters, threshold).contiguous()
    out = torch.empty(bsz, n_p, n_k, device=proposals.device, dtype=torch.float32)
    if bsz == 0 or n_p == 0:
        return out
    fn = raw_module("mask_iou.cu").get_function("moca_mask_match_u8_kernel")
    args = (
        as_cupy(p),
        as_cupy(c),
        as_cupy(out),
        np.int32(n_p),
        np.int32(n_k),
        np.int32(h * w),
        np.int32(int(metric == "coverage")),
    )
    launch(proposals, fn, (n_p, bsz), args, 0)
    return out
