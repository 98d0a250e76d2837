"""CuPy launcher of the CUDA C k-means (``csrc/kmeans.cu``, compiled at run time by NVRTC).

Same algorithm, arguments and result as :func:`moca_rt.kernels.kmeans.cosine_kmeans_reference`;
one thread block of 256 threads per frame runs the seeding and every iteration (features read
twice per iteration: update and assignment). The same source builds into the CMake shared
library. Limits: 1 <= k <= 16, N <= 2048, CUDA tensors, fp32/fp16/bf16. CuPy is imported only
here, on first use (``pip install cupy-cuda12x``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from .dispatch import cupy_unsupported_reason
from .kmeans_common import KMeansResult, check_kmeans_args, kmeanspp_random_table

CSRC = Path(__file__).parent / "csrc"
THREADS = 256
MAX_K = 16
MAX_N = 2048
_FIXED_SMEM_WORDS = MAX_K * 2 + MAX_K * 32 + MAX_K + 1 + 4  # MOCA_SMEM_FIXED_WORDS in kmeans.cu
_ENTRY = {
    torch.float32: "moca_kmeans_f32",
    torch.float16: "moca_kmeans_f16",
    torch.bfloat16: "moca_kmeans_bf16",
}


@functools.cache
def raw_module(filename: str) -> Any:
    """``cupy.RawModule`` of ``csrc/<filename>`` compiled with NVRTC (device code only)."""
    try:
        import cupy
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the cupy backend needs CuPy: pip install cupy-cuda12x") from err
    source = (CSRC / filename).read_text()
    return cupy.RawModule(code=source, options=("-DMOCA_RT_NVRTC", f"-I{CSRC}", "--std=c++17"))


def as_cupy(t: torch.Tensor) -> Any:
    """Zero-copy CuPy view of a contiguous CUDA tensor (16-bit floats viewed as int16 bits)."""
    import cupy

    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)
    elif t.dtype == torch.bool:
        t = t.view(torch.uint8)
    return cupy.asarray(t)


def launch(
    t: torch.Tensor, fn: Any, grid: tuple[int, ...], args: tuple[Any, ...], smem: int
) -> None:
    """Run ``fn`` on the current torch stream of ``t``'s device."""
    import cupy

    with cupy.cuda.Device(t.device.index):
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(t.device).cuda_stream)
        with stream:
            fn(grid, (THREADS,), args, shared_mem=smem)


def cupy_kmeans_supports(x: torch.Tensor, k: int) -> str | None:
    """None if :func:`cosine_kmeans_cupy` can take ``x`` and ``k``, else the reason."""
    reason = cupy_unsupported_reason(x)
    if reason is not None:
        return reason
    if k > MAX_K:
        return f"expected k <= {MAX_K} for the CUDA C kernel, got k = {k}"
    if x.shape[1] > MAX_N:
        return f"expected N <= {MAX_N} for the CUDA C kernel, got N = {x.shape[1]}"
    return None


def cosine_kmeans_cupy(
    x: torch.Tensor, k: int, *, max_iters: int = 20, seed: int = 0, early_stop: bool = True
) -> KMeansResult:
    """CUDA C k-means through CuPy; see :func:`moca_rt.kernels.kmeans.cosine_kmeans_reference`.

    Args:
        x: [B, N, D] CUDA fp32/fp16/bf16. k: 1..16 clusters. max_iters, seed, early_stop: as
            in the reference.
    Returns:
        KMeansResult(labels [B, N] int64, centroids [B, K, D] fp32, iterations [B] int32).
    """
    import numpy as np

    check_kmeans_args(x, k, max_iters)
    reason = cupy_kmeans_supports(x, k)
    if reason is not None:
        raise ValueError(reason)
    x = x.contiguous()
    bsz, n, d = x.shape
    rand = kmeanspp_random_table(seed, bsz, k, x.device)
    cent = torch.empty(bsz, k, d, device=x.device, dtype=torch.float32)
    labels = torch.empty(bsz, n, device=x.device, dtype=torch.int64)
    iters = torch.empty(bsz, device=x.device, dtype=torch.int32)
    fn = raw_module("kmeans.cu").get_function(_ENTRY[x.dtype])
    smem = 4 * (4 * n + _FIXED_SMEM_WORDS)
    args = (
        as_cupy(x),
        as_cupy(rand),
        as_cupy(cent),
        as_cupy(labels),
        as_cupy(iters),
        np.int32(n),
        np.int32(d),
        np.int32(k),
        np.int32(max_iters),
        np.int32(int(early_stop)),
    )
    launch(x, fn, (bsz,), args, smem)
    return KMeansResult(labels, cent, iters)
