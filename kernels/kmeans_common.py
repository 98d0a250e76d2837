"""What every k-means backend shares: the argument check, the result type and the seeding draws.

:mod:`moca_rt.kernels.kmeans` (references, Triton kernel, dispatcher) and
:mod:`moca_rt.kernels.cupy_kmeans` (the CUDA C kernel) both import it; only the dispatcher
imports the CuPy launcher. The algorithm is described in :mod:`moca_rt.kernels.kmeans`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["SUPPORTED_DTYPES", "KMeansResult", "check_kmeans_args", "kmeanspp_random_table"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_MASK32 = 0xFFFFFFFF


class KMeansResult(NamedTuple):
    """Result of :func:`moca_rt.kernels.kmeans.cosine_kmeans` and every backend.

    labels: [B, N] int64 cluster of each row. centroids: [B, K, D] fp32, unit norm (a zero
    vector only if a cluster's members sum to zero). iterations: [B] int32 updates run per frame.
    """

    labels: torch.Tensor
    centroids: torch.Tensor
    iterations: torch.Tensor


def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    """(a * c) mod 2^32 for int64 tensors holding values in [0, 2^32), without int64 overflow."""
    lo = a * (c & 0xFFFF)
    hi = (a * (c >> 16)) & 0xFFFF
    return (lo + (hi << 16)) & _MASK32


def kmeanspp_random_table(
    seed: int, batch: int, k: int, device: torch.device | str
) -> torch.Tensor:
    """Counter-based integers driving the k-means++ seeding: ``[batch, k]`` int32 in [0, 2^31).

    ``r[b, s] = lowbias32(seed*0x9E3779B1 + s*0xC2B2AE3D + 0x27D4EB2F) >> 1`` for every ``b``
    with all arithmetic mod 2^32 and lowbias32 the xor-shift-multiply mix
    ``x ^= x >> 16; x *= 0x7FEB352D; x ^= x >> 15; x *= 0x846CA68B; x ^= x >> 16``.
    Computed with int64 tensor ops on ``device`` (no host round trip, CUDA-graph safe); the
    result depends only on (seed, s): never on the device, the batch size or the frame's row.
    """
    s = torch.arange(k, device=device, dtype=torch.int64)[None, :]
    base = ((seed & _MASK32) * 0x9E3779B1 + 0x27D4EB2F) & _MASK32
    h = (_mul32(s, 0xC2B2AE3D) + base) & _MASK32
    h = h ^ (h >> 16)
    h = _mul32(h, 0x7FEB352D)
    h = h ^ (h >> 15)
    h = _mul32(h, 0x846CA68B)
    h = h ^ (h >> 16)
    return (h >> 1).to(torch.int32).expand(batch, k).contiguous()


def check_kmeans_args(x: torch.Tensor, k: int, max_iters: int) -> None:
    """Raise ValueError unless ``x`` is [B, N, D] floating with N >= k >= 1 and max_iters >= 0."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected x of shape [B, N, D], got {shape}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"expected x dtype in float32/float16/bfloat16, got {x.dtype}")
    b, n, d = x.shape
    if b < 1 or n < 1 or d < 1:
        raise ValueError(f"expected non-empty x [B, N, D], got {tuple(x.shape)}")
    if not 1 <= k <= n:
        raise ValueError(f"expected 1 <= k <= N = {n}, got k = {k}")
    if max_iters < 0:
        raise ValueError(f"expected max_iters >= 0, got {max_iters}")
