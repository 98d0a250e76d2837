"""IoU (and coverage) between every mask proposal and every cluster mask of a frame.

Problem: proposals ``P`` [B, P, h, w] and cluster masks ``M`` [B, K, h, w] on the same pixel
grid (row-major, y down). Masks are bool (or uint8, nonzero = inside), or floating logits /
probabilities binarised as ``value > threshold`` (the threshold is then required: logits use 0,
probabilities usually 0.5). For every frame b, proposal p and cluster k::

    inter = |P_p ∩ M_k|,  iou = inter / (|P_p| + |M_k| - inter),  coverage = inter / |P_p|

with ``iou = 0`` when both masks are empty (union 0) and ``coverage = 0`` for an empty
proposal: an empty mask never matches. Counts are exact (integers below 2^24 in fp32), so
h * w must stay below 2^24.

Work: ``2 B P K h w`` multiply-adds as a 0/1 matrix product; bytes it must move: the masks once,
``B (P + K) h w`` bytes for bool input (P = 256, K = 4 at 256 x 256: 16.8 MB per frame), and
``B P K`` fp32 out.

Backends: :func:`mask_iou_reference` (``bmm`` of 0/1 fp32 matrices), :func:`mask_iou_triton`
(one program per frame and tile of 16 proposals, the pixel loop inside; fp16 0/1 tiles, exact
counts, fp32 accumulation), the dispatchers :func:`mask_iou` / :func:`mask_coverage`
(``MOCA_RT_KERNELS``; registered as ``torch.ops.moca_rt.mask_match``).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .dispatch import check_forced_cupy, choose_backend, triton_unsupported_reason
from .mask_iou_common import Metric, binarise, check_masks

TRITON_MAX_K = 64
# Launch configuration of the Triton kernel: 16 proposals x 256 pixels per tile (128 for 4-byte
# logits: 256 spills 44 bytes there), 8 warps; no register spills on sm_90 for K <= 16 (Triton
# 3.7.1), checked through aot_specs().
TRITON_BLOCK_P = 16
TRITON_NUM_WARPS = 8


def _finish(
    inter: torch.Tensor, area_p: torch.Tensor, area_c: torch.Tensor, metric: str
) -> torch.Tensor:
    if metric == "iou":
        denom = area_p[:, :, None] + area_c[:, None, :] - inter
    else:
        denom = area_p[:, :, None].expand_as(inter)
    return torch.where(denom > 0, inter / denom.clamp(min=1.0), torch.zeros_like(inter))


def mask_iou_reference(
    proposals: torch.Tensor,
    clusters: torch.Tensor,
    *,
    threshold: float | None = None,
    metric: Metric = "iou",
) -> torch.Tensor:
    """Torch reference: counts as a ``bmm`` of 0/1 fp32 matrices (exact below 2^24 pixels).

    Args:
        proposals: [B, P, h, w] bool/uint8/floating.
        clusters: [B, K, h, w] bool/uint8/floating, same B, h, w.
        threshold: binarisation threshold for floating inputs (required for them).
        metric: "iou" or "coverage" (|P ∩ M| / |P|).
    Returns:
        [B, P, K] fp32 (0 for an empty union, or an empty proposal with "coverage").
    """
    check_masks(proposals, clusters, threshold, metric)
    p = binarise(proposals, threshold).flatten(2).to(torch.float32)
    c = binarise(clusters, threshold).flatten(2).to(torch.float32)
    inter = torch.bmm(p, c.transpose(1, 2))
    return _finish(inter, p.sum(-1), c.sum(-1), metric)


@functools.cache
def _triton_kernel(interpret: bool) -> Any:
    """The Triton kernel, wrapped by ``triton.jit`` on first use (see kmeans._triton_kernel)."""
    del interpret  # only the cache key
    import triton
    import triton.language as tl

    @triton.jit
    def mask_match_kernel(
        p_ptr,
        c_ptr,
        out_ptr,
        P,
        K,
        HW,
        threshold,
        P_FLOAT: tl.constexpr,
        C_FLOAT: tl.constexpr,
        COVERAGE: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_HW: tl.constexpr,
    ):
        b = tl.program_id(0)
        pid_p = tl.program_id(1)
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_k = tl.arange(0, BLOCK_K)
        offs_s = tl.arange(0, BLOCK_HW)
        p_mask = offs_p < P
        k_mask = offs_k < K
        pb = p_ptr + b.to(tl.int64) * P * HW
        cb = c_ptr + b.to(tl.int64) * K * HW
        inter = tl.zeros([BLOCK_P, BLOCK_K], dtype=tl.float32)
        area_p = tl.zeros([BLOCK_P], dtype=tl.float32)
        area_c = tl.zeros([BLOCK_K], dtype=tl.float32)
        for s0 in range(0, HW, BLOCK_HW):
            s = s0 + offs_s
            sm = s < HW
            pv = tl.load(
                pb + offs_p[:, None].to(tl.int64) * HW + s[None, :],
                mask=p_mask[:, None] & sm[None, :],
                other=0,
            )
            cv = tl.load(
                cb + offs_k[:, None].to(tl.int64) * HW + s[None, :],
                mask=k_mask[:, None] & sm[None, :],
                other=0,
            )
            if P_FLOAT:
                pin = (pv > threshold) & p_mask[:, None] & sm[None, :]
            else:
                pin = pv != 0
            if C_FLOAT:
                cin = (cv > threshold) & k_mask[:, None] & sm[None, :]
            else:
                cin = cv != 0
            pt = pin.to(tl.float16)
            ct = cin.to(tl.float16)
            # A tile holds at most BLOCK_HW <= 2048 pixels: every partial count is an exact fp16.
            inter += tl.dot(pt, tl.trans(ct), out_dtype=tl.float32)
            area_p += tl.sum(pt.to(tl.float32), axis=1)
            area_c += tl.sum(ct.to(tl.float32), axis=1)
        if COVERAGE:
            denom = tl.broadcast_to(area_p[:, None], [BLOCK_P, BLOCK_K])
        else:
            denom = area_p[:, None] + area_c[None, :] - inter
        res = tl.where(denom > 0, inter / tl.maximum(denom, 1.0), 0.0)
        optr = out_ptr + b.to(tl.int64) * P * K + offs_p[:, None] * K + offs_k[None, :]
        tl.store(optr, res, mask=p_mask[:, None] & k_mask[None, :])

    return mask_match_kernel


def triton_mask_supports(proposals: torch.Tensor, clusters: torch.Tensor) -> str | None:
    """None if :func:`mask_iou_triton` can take the inputs, else the reason."""
    reason = triton_unsupported_reason(proposals)
    if reason is not None:
        return reason
    if clusters.shape[1] > TRITON_MAX_K:
        return f"expected K <= {TRITON_MAX_K} for the Triton kernel, got K = {clusters.shape[1]}"
    return None


def _block_k(n_k: int) -> int:
    return max(16, 1 << (n_k - 1).bit_length())


def _block_hw(itemsize: int) -> int:
    return 128 if itemsize >= 4 else 256


def aot_specs() -> list[Any]:
    """The kernel at the launcher's configuration for the pipeline's case (P = 256 proposals,
    K = 4 and 16 clusters, 256 x 256 masks): bool masks for IoU and coverage, and bf16 / fp32
    logits with a threshold. :mod:`moca_rt.kernels.aot` compiles them for sm_90."""
    from .aot import KernelSpec

    fn = _triton_kernel(False)
    specs = []
    for in_type, metric in (("u8", "iou"), ("u8", "coverage"), ("bf16", "iou"), ("fp32", "iou")):
        for n_k in (4, 16):
            types = {
                "p_ptr": f"*{in_type}",
                "c_ptr": f"*{in_type}",
                "out_ptr": "*fp32",
                "P": "i32",
                "K": "i32",
                "HW": "i32",
                "threshold": "fp32",
            }
            is_float = in_type != "u8"
            consts = {
                "P_FLOAT": is_float,
                "C_FLOAT": is_float,
                "COVERAGE": metric == "coverage",
                "BLOCK_P": TRITON_BLOCK_P,
                "BLOCK_K": _block_k(n_k),
                "BLOCK_HW": _block_hw(4 if in_type == "fp32" else 2 if is_float else 1),
            }
            name = f"mask_{metric} {in_type} P=256 K={n_k} 256x256"
            divisible = ("P", "HW")  # 256 and 65536; K (4 or 16) is left unmarked
            specs.append(KernelSpec(name, fn, types, consts, TRITON_NUM_WARPS, divisible=divisible))
    return specs


def _kernel_view(t: torch.Tensor) -> torch.Tensor:
    t = t.flatten(2)
    t = t if t.is_contiguous() else t.contiguous()
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def mask_iou_triton(
    proposals: torch.Tensor,
    clusters: torch.Tensor,
    *,
    threshold: float | None = None,
    metric: Metric = "iou",
) -> torch.Tensor:
    """Triton launcher; same arguments and result as :func:`mask_iou_reference`.

    Grid: (B, ceil(P / 16)); each program streams its 16 proposals and all K cluster masks
    through 256-pixel tiles once (128 for 4-byte logits; 8 warps: no register spills on sm_90).
    Limit: K <= 64. Bool input is read as uint8 (no copy).
    """
    check_masks(proposals, clusters, threshold, metric)
    reason = triton_mask_supports(proposals, clusters)
    if reason is not None:
        raise ValueError(reason)
    from .dispatch import triton_interpreting

    bsz, n_p, h, w = proposals.shape
    n_k = clusters.shape[1]
    pv = _kernel_view(proposals)
    cv = _kernel_view(clusters)
    out = torch.empty(bsz, n_p, n_k, device=proposals.device, dtype=torch.float32)
    if n_p == 0 or n_k == 0:
        return out
    kernel = _triton_kernel(triton_interpreting())
    kernel[(bsz, (n_p + TRITON_BLOCK_P - 1) // TRITON_BLOCK_P)](
        pv,
        cv,
        out,
        n_p,
        n_k,
        h * w,
        float(threshold if threshold is not None else 0.0),
        P_FLOAT=pv.dtype.is_floating_point,
        C_FLOAT=cv.dtype.is_floating_point,
        COVERAGE=metric == "coverage",
        BLOCK_P=TRITON_BLOCK_P,
        BLOCK_K=_block_k(n_k),
        BLOCK_HW=_block_hw(max(pv.element_size(), cv.element_size())),
        num_warps=TRITON_NUM_WARPS,
    )
    return out


def _run_backend(
    proposals: torch.Tensor, clusters: torch.Tensor, threshold: float | None, metric: str
) -> torch.Tensor:
    kwargs: dict[str, Any] = {"threshold": threshold, "metric": metric}
    backend = choose_backend(proposals)
    if backend == "cupy":
        check_forced_cupy(proposals)
        from .cupy_mask_iou import cupy_mask_supports, mask_match_cupy

        if cupy_mask_supports(proposals, clusters) is None:
            return mask_match_cupy(proposals, clusters, **kwargs)
    elif backend == "triton" and triton_mask_supports(proposals, clusters) is None:
        return mask_iou_triton(proposals, clusters, **kwargs)
    return mask_iou_reference(proposals, clusters, **kwargs)


@torch.library.custom_op("moca_rt::mask_match", mutates_args=())
def _mask_match_op(
    proposals: torch.Tensor, clusters: torch.Tensor, threshold: float | None, metric: str
) -> torch.Tensor:
    return _run_backend(proposals, clusters, threshold, metric)


@_mask_match_op.register_fake
def _mask_match_fake(
    proposals: torch.Tensor, clusters: torch.Tensor, threshold: float | None, metric: str
) -> torch.Tensor:
    return proposals.new_empty(
        (proposals.shape[0], proposals.shape[1], clusters.shape[1]), dtype=torch.float32
    )


def _match(
    proposals: torch.Tensor, clusters: torch.Tensor, threshold: float | None, metric: str
) -> torch.Tensor:
    if not torch.compiler.is_compiling():
        # Eager calls skip the op wrapper (see kmeans.cosine_kmeans): no torch._dynamo import.
        return _run_backend(proposals, clusters, threshold, metric)
    return _mask_match_op(proposals, clusters, threshold, metric)


def mask_iou(
    proposals: torch.Tensor, clusters: torch.Tensor, *, threshold: float | None = None
) -> torch.Tensor:
    """IoU of every proposal with every cluster mask of the same frame.

    Args:
        proposals: [B, P, h, w] bool/uint8 masks, or floating logits/probabilities binarised as
            ``> threshold``.
        clusters: [B, K, h, w], same kinds, same B, h, w (pixel grid row-major, y down).
        threshold: required when either input is floating; unused for bool/uint8.
    Returns:
        [B, P, K] fp32 in [0, 1]; 0 when both masks are empty.

    Backend from ``MOCA_RT_KERNELS`` (Triton for CUDA tensors by default; the torch reference
    where the kernel cannot take the input). ``torch.compile`` sees one custom op.
    """
    check_masks(proposals, clusters, threshold, "iou")
    return _match(proposals, clusters, threshold, "iou")


def mask_coverage(
    proposals: torch.Tensor, clusters: torch.Tensor, *, threshold: float | None = None
) -> torch.Tensor:
    """Fraction of each proposal inside each cluster mask: ``|P ∩ M| / |P|``.

    Same arguments as :func:`mask_iou`. Returns [B, P, K] fp32 in [0, 1]; 0 for an empty
    proposal. Used by the pipeline's ``--mpm-metric coverage``.
    """
    check_masks(proposals, clusters, threshold, "coverage")
    return _match(proposals, clusters, threshold, "coverage")
