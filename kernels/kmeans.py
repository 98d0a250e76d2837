"""Batched cosine k-means over the patch features of video frames: references, Triton kernel.

Problem: ``x`` is ``[B, N, D]`` (B frames, N patches, D channels; fp32, fp16 or bf16). Every
row is L2-normalised in fp32 (``x / max(|x|, 1e-12)``) and each frame is clustered into ``k``
groups by cosine similarity, independently of the other frames. All arithmetic accumulates in
fp32.

The algorithm, shared exactly by every backend so that their labels can be compared:

1. **k-means++ seeding, deterministic.** A counter-based hash gives one 31-bit integer
   ``r[b, s]`` per seeding step ``s`` (:func:`kmeanspp_random_table`; the same integers on every
   device and for every frame ``b``, so a frame's draws do not depend on its batch row; its
   result can still differ in rare cases, because batched matmuls may round the cosines
   differently at another batch size). Step 0 takes patch ``r[b, 0] % N``. Step ``s >= 1``
   weighs each patch by ``w = clamp(1 - max_c cos(x, c), 0, 2)`` over the centres chosen so far
   (for unit vectors ``|x - c|^2 = 2 (1 - cos)``, so this is D^2 sampling), quantises
   ``q = floor(w * 2^16)`` (int), and takes the smallest index ``i`` whose inclusive prefix sum
   ``sum_{j<=i} q_j`` exceeds ``t = (r[b, s] * sum(q)) >> 31`` (the draw scaled to the total,
   so a total that rounding moves by a unit or two moves ``t`` by less than one). Integer
   prefix sums make the choice exact once the ``q`` agree; the ``q`` come from fp32 dot products
   whose rounding differs slightly between backends, so two backends can only disagree when the
   draw lands within a few units of a prefix-sum boundary (about one draw in a million). If every
   ``q`` is 0 (all patches equal to a centre), step ``s`` takes ``r[b, s] % N``.
2. **Assignment**: ``label = argmax_k cos(x, c_k)``, ties to the lowest ``k``.
3. **Update**: ``c_k = normalise(mean of the members of k)``; a cluster with no member keeps its
   previous centroid.
4. Repeat 3 then 2 at most ``max_iters`` times. With ``early_stop`` a frame stops after the first
   update whose assignment equals the previous one. A converged frame is a fixed point (the
   update depends only on the labels), so ``early_stop`` changes the iteration count and the
   time, never the result. ``iterations[b]`` counts the updates a frame ran.

The returned labels are always the assignment to the returned centroids.

Backends: :func:`cosine_kmeans_reference` (a per-frame Python loop: what a user would write),
:func:`cosine_kmeans_torch_fast` (batched, two ``bmm`` per iteration), :func:`cosine_kmeans_triton`
(one launch for the whole run: one program per frame, all iterations inside the kernel) and
``cosine_kmeans_cupy`` in :mod:`moca_rt.kernels.cupy_kmeans` (CUDA C of ``csrc/kmeans.cu``).
The dispatcher :func:`cosine_kmeans` picks one (``MOCA_RT_KERNELS``) and is registered as the
``torch.library`` op ``moca_rt::cosine_kmeans`` so ``torch.compile`` treats it as one node.

Work per iteration and frame: ``4 N K D`` FLOPs (update + assignment); the unavoidable traffic is
one read of the features, ``N D itemsize`` bytes (the "bytes floor" of the benchmark).
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F

from .dispatch import Backend, check_forced_cupy, choose_backend, triton_unsupported_reason
from .kmeans_common import KMeansResult, check_kmeans_args, kmeanspp_random_table

NORM_EPS = 1e-12
WEIGHT_SCALE = 65536.0  # 2^16: quantisation of the seeding weights (see module docstring).
TRITON_MAX_N = 512  # all N rows of a frame live in one program's registers
TRITON_MAX_K = 64


def _seed_index(q: torch.Tensor, rand: torch.Tensor, n: int) -> torch.Tensor:
    """Seeding choice from integer weights q [..., N] and draws rand [...] (see module doc)."""
    total = q.sum(dim=-1)
    r = (rand.to(torch.int64) * total) >> 31
    idx = (q.cumsum(dim=-1) <= r.unsqueeze(-1)).sum(dim=-1)
    return torch.where(total > 0, idx, rand.to(torch.int64) % n)


def _quantised_weights(best_cos: torch.Tensor) -> torch.Tensor:
    return torch.floor((1.0 - best_cos).clamp(0.0, 2.0) * WEIGHT_SCALE).to(torch.int64)


def cosine_kmeans_reference(
    x: torch.Tensor, k: int, *, max_iters: int = 20, seed: int = 0, early_stop: bool = True
) -> KMeansResult:
    """Torch reference: a plain per-frame loop, line by line the algorithm of the module doc.

    Args:
        x: [B, N, D] fp32/fp16/bf16 features on any device.
        k: number of clusters, 1 <= k <= N.
        max_iters: most updates per frame (>= 0; 0 returns the seeding's assignment).
        seed: seed of the k-means++ draws.
        early_stop: stop a frame once its assignment stops changing.
    Returns:
        KMeansResult(labels [B, N] int64, centroids [B, K, D] fp32, iterations [B] int32).
    """
    check_kmeans_args(x, k, max_iters)
    bsz, n, _ = x.shape
    rand = kmeanspp_random_table(seed, bsz, k, x.device).cpu().tolist()
    labels_out, cents_out, iters_out = [], [], []
    for b in range(bsz):
        xb = F.normalize(x[b].float(), dim=-1, eps=NORM_EPS)
        centres = [rand[b][0] % n]
        best = xb @ xb[centres[0]]
        for s in range(1, k):
            q = _quantised_weights(best)
            total = int(q.sum())
            if total == 0:
                idx = rand[b][s] % n
            else:
                r = (rand[b][s] * total) >> 31
                idx = int((q.cumsum(0) <= r).sum())
            centres.append(idx)
            best = torch.maximum(best, xb @ xb[idx])
        cent = xb[centres].clone()
        labels = (xb @ cent.T).argmax(dim=1)
        iters = 0
        for _ in range(max_iters):
            for c in range(k):
                members = labels == c
                if bool(members.any()):
                    cent[c] = F.normalize(xb[members].mean(dim=0), dim=0, eps=NORM_EPS)
            iters += 1
            new = (xb @ cent.T).argmax(dim=1)
            changed = bool((new != labels).any())
            labels = new
            if early_stop and not changed:
                break
        labels_out.append(labels)
        cents_out.append(cent)
        iters_out.append(iters)
    return KMeansResult(
        torch.stack(labels_out).to(torch.int64),
        torch.stack(cents_out),
        torch.tensor(iters_out, dtype=torch.int32, device=x.device),
    )


def cosine_kmeans_torch_fast(
    x: torch.Tensor, k: int, *, max_iters: int = 20, seed: int = 0, early_stop: bool = True
) -> KMeansResult:
    """Batched torch version: all frames at once, two ``bmm`` per iteration.

    Same arguments, result and algorithm as :func:`cosine_kmeans_reference`. With ``early_stop``
    it reads one bool back per iteration (a host sync) to stop when every frame has converged;
    while a CUDA graph is being captured it skips that check and runs every iteration
    (converged frames are frozen, so the result is the same).
    """
    check_kmeans_args(x, k, max_iters)
    bsz, n, _ = x.shape
    xn = F.normalize(x.float(), dim=-1, eps=NORM_EPS)
    rand = kmeanspp_random_table(seed, bsz, k, x.device)
    batch_idx = torch.arange(bsz, device=x.device)
    idx = rand[:, 0].to(torch.int64) % n
    chosen = [idx]
    best = torch.bmm(xn, xn[batch_idx, idx].unsqueeze(-1)).squeeze(-1)  # [B, N]
    for s in range(1, k):
        idx = _seed_index(_quantised_weights(best), rand[:, s], n)
        chosen.append(idx)
        best = torch.maximum(best, torch.bmm(xn, xn[batch_idx, idx].unsqueeze(-1)).squeeze(-1))
    cent = xn[batch_idx[:, None], torch.stack(chosen, dim=1)]  # [B, K, D]
    labels = torch.bmm(xn, cent.transpose(1, 2)).argmax(dim=-1)
    iters = torch.zeros(bsz, dtype=torch.int32, device=x.device)
    active = torch.ones(bsz, dtype=torch.bool, device=x.device)
    # Under CUDA-graph capture no host sync is allowed: run all iterations (same result).
    can_sync = not (x.is_cuda and torch.cuda.is_current_stream_capturing())
    for _ in range(max_iters):
        one_hot = F.one_hot(labels, k).to(torch.float32)  # [B, N, K]
        sums = torch.bmm(one_hot.transpose(1, 2), xn)  # [B, K, D]
        keep = (one_hot.sum(dim=1) == 0).unsqueeze(-1) | ~active[:, None, None]
        cent = torch.where(keep, cent, F.normalize(sums, dim=-1, eps=NORM_EPS))
        iters += active.to(torch.int32)
        new = torch.bmm(xn, cent.transpose(1, 2)).argmax(dim=-1)
        new = torch.where(active[:, None], new, labels)
        if early_stop:
            active = active & (new != labels).any(dim=1)
        labels = new
        if can_sync and early_stop and not bool(active.any()):
            break
    return KMeansResult(labels, cent.contiguous(), iters)


# --------------------------------------------------------------------------------------------
# Triton


@functools.cache
def _triton_kernel(interpret: bool) -> Any:
    """The Triton kernel, wrapped by ``triton.jit`` on first use (one wrapping per mode).

    Triton picks compiled or interpreted (``TRITON_INTERPRET=1``) execution when ``jit`` wraps a
    function and when ``triton`` is first imported, so this module imports triton only here.

    Kernel: one program per frame. ``cent_ptr`` [B, K, D] fp32 holds each centroid's
    unnormalised direction during the run (its inverse norm kept in ``inv_norm``) and the unit
    centroids at the end. Seeding: one pass over the frame per centre (K passes; the first also
    takes the row norms); the cosines to the centres are kept as the first assignment's scores.
    Iteration: one pass over the features: for each D tile the new centroid tile
    (one-hot^T @ x / |x|) is stored and its product with the same x tile accumulated into the
    next assignment's scores, so the features are read once per iteration.
    """
    del interpret  # only the cache key
    import triton
    import triton.language as tl

    @triton.jit
    def kmeans_kernel(
        x_ptr,
        rand_ptr,
        cent_ptr,
        labels_ptr,
        iters_ptr,
        N,
        D,
        K,
        max_iters,
        stride_xb,
        stride_xn,
        EARLY_STOP: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
    ):
        b = tl.program_id(0)
        offs_n = tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        offs_d = tl.arange(0, BLOCK_D)
        n_mask = offs_n < N
        k_mask = offs_k < K
        xb = x_ptr + b.to(tl.int64) * stride_xb
        cb = cent_ptr + b.to(tl.int64) * K * D
        rb = rand_ptr + b * K

        # Seeding step 0, fused with the row norms.
        r0 = tl.load(rb)
        c0 = r0 % N
        sumsq = tl.zeros([BLOCK_N], dtype=tl.float32)
        dots = tl.zeros([BLOCK_N], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + offs_d
            dm = d < D
            xt = tl.load(
                xb + offs_n[:, None] * stride_xn + d[None, :],
                mask=n_mask[:, None] & dm[None, :],
                other=0.0,
            ).to(tl.float32)
            xc = tl.load(xb + c0 * stride_xn + d, mask=dm, other=0.0).to(tl.float32)
            sumsq += tl.sum(xt * xt, axis=1)
            dots += tl.sum(xt * xc[None, :], axis=1)
            tl.store(cb + d, xc, mask=dm)
        inv_rn = 1.0 / tl.maximum(tl.sqrt(sumsq), 1e-12)
        inv_c = tl.sum(tl.where(offs_n == c0, inv_rn, 0.0), axis=0)
        col = dots * inv_rn * inv_c
        scores = tl.where(offs_k[None, :] == 0, col[:, None], 0.0)
        inv_norm = tl.where(offs_k == 0, inv_c, 0.0)
        best = col

        for s in range(1, K):
            w = tl.minimum(tl.maximum(1.0 - best, 0.0), 2.0)
            q = tl.where(n_mask, (w * 65536.0).to(tl.int32), 0)
            total = tl.sum(q, axis=0)
            csum = tl.cumsum(q, axis=0)
            rs = tl.load(rb + s)
            r = (rs.to(tl.int64) * total.to(tl.int64)) >> 31
            idx = tl.sum(((csum <= r) & n_mask).to(tl.int32), axis=0)
            idx = tl.where(total > 0, idx, rs % N)
            dots = tl.zeros([BLOCK_N], dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                d = d0 + offs_d
                dm = d < D
                xt = tl.load(
                    xb + offs_n[:, None] * stride_xn + d[None, :],
                    mask=n_mask[:, None] & dm[None, :],
                    other=0.0,
                ).to(tl.float32)
                xc = tl.load(xb + idx * stride_xn + d, mask=dm, other=0.0).to(tl.float32)
                dots += tl.sum(xt * xc[None, :], axis=1)
                tl.store(cb + s * D + d, xc, mask=dm)
            inv_c = tl.sum(tl.where(offs_n == idx, inv_rn, 0.0), axis=0)
            col = dots * inv_rn * inv_c
            scores = tl.where(offs_k[None, :] == s, col[:, None], scores)
            inv_norm = tl.where(offs_k == s, inv_c, inv_norm)
            best = tl.maximum(best, col)
        tl.debug_barrier()

        scores = tl.where(k_mask[None, :], scores, float("-inf"))
        labels = tl.argmax(scores, axis=1, tie_break_left=True).to(tl.int32)
        it = 0
        changed = 1
        while (it < max_iters) & (changed != 0):
            member = (labels[:, None] == offs_k[None, :]) & n_mask[:, None]
            wts = tl.where(member, inv_rn[:, None], 0.0)
            counts = tl.sum(member.to(tl.int32), axis=0)
            raw = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
            sq = tl.zeros([BLOCK_K], dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                d = d0 + offs_d
                dm = d < D
                xt = tl.load(
                    xb + offs_n[:, None] * stride_xn + d[None, :],
                    mask=n_mask[:, None] & dm[None, :],
                    other=0.0,
                ).to(tl.float32)
                tile_mask = k_mask[:, None] & dm[None, :]
                cptr = cb + offs_k[:, None] * D + d[None, :]
                prev = tl.load(cptr, mask=tile_mask, other=0.0)
                new = tl.dot(tl.trans(wts), xt, input_precision=DOT_PRECISION)
                row = tl.where((counts > 0)[:, None], new, prev)
                tl.store(cptr, row, mask=tile_mask)
                sq += tl.sum(row * row, axis=1)
                raw += tl.dot(xt, tl.trans(row), input_precision=DOT_PRECISION)
            inv_norm = 1.0 / tl.maximum(tl.sqrt(sq), 1e-12)
            sc = tl.where(k_mask[None, :], raw * inv_norm[None, :], float("-inf"))
            new_labels = tl.argmax(sc, axis=1, tie_break_left=True).to(tl.int32)
            changed = tl.sum(((new_labels != labels) & n_mask).to(tl.int32), axis=0)
            if not EARLY_STOP:
                changed = 1
            labels = new_labels
            it += 1
            tl.debug_barrier()

        tl.store(labels_ptr + b.to(tl.int64) * N + offs_n, labels.to(tl.int64), mask=n_mask)
        tl.store(iters_ptr + b, it)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + offs_d
            tile_mask = k_mask[:, None] & (d < D)[None, :]
            cptr = cb + offs_k[:, None] * D + d[None, :]
            row = tl.load(cptr, mask=tile_mask, other=0.0)
            tl.store(cptr, row * inv_norm[:, None], mask=tile_mask)

    return kmeans_kernel


def _next_pow2(v: int) -> int:
    return 1 << max(v - 1, 0).bit_length()


def triton_kmeans_supports(x: torch.Tensor, k: int) -> str | None:
    """None if :func:`cosine_kmeans_triton` can take ``x`` and ``k``, else the reason."""
    reason = triton_unsupported_reason(x)
    if reason is not None:
        return reason
    if x.shape[1] > TRITON_MAX_N:
        return f"expected N <= {TRITON_MAX_N} for the Triton kernel, got N = {x.shape[1]}"
    if k > TRITON_MAX_K:
        return f"expected k <= {TRITON_MAX_K} for the Triton kernel, got k = {k}"
    return None


DotPrecision = Literal["tf32x3", "ieee"]
DOT_PRECISIONS: tuple[DotPrecision, ...] = ("tf32x3", "ieee")


class TritonKMeansConfig(NamedTuple):
    """Launch configuration of the Triton k-means kernel (``num_stages`` None: Triton's
    default software pipelining, 3 stages on sm_90; 1: none)."""

    block_n: int
    block_k: int
    block_d: int
    num_warps: int
    num_stages: int | None = None


def triton_kmeans_config(n: int, k: int, dtype: torch.dtype = torch.float32) -> TritonKMeansConfig:
    """Tiles, warps and pipelining the launcher uses for ``N`` rows, ``k`` clusters, ``dtype``.

    All ``N`` rows of a frame live in the program (``BLOCK_N = next_pow2(N)``), centroids in
    ``BLOCK_K = max(16, next_pow2(k))`` columns (``tl.dot`` needs 16); features stream through in
    ``BLOCK_D``-column tiles. Warps: 4 up to ``BLOCK_N * BLOCK_K = 1024``, else 8.

    Compiled for sm_90 with the alignment hints the real shape gets at run time (Triton 3.7.1,
    ``ptxas -v``, ``ieee`` products, N = 256, k <= 16, 8 warps):

    * fp32: ``BLOCK_D = 16`` with the default 3-stage pipeline, 199 registers, no spills
      (16 warps: 20 bytes spilled; ``BLOCK_D = 32``: 8).
    * bf16 / fp16: ``BLOCK_D = 32`` without pipelining (``num_stages=1``), 128 registers, no
      spills. Every pipelined variant spills there (``BLOCK_D = 16``: 272 bytes with 3 stages,
      256 with 2; ``BLOCK_D = 32``: about 5 KB). Whether the pipeline would be worth its spills
      is for a GPU to say: ``benchmarks/kernels.py`` times the 3-stage variant as
      ``triton_pipelined``.

    Beyond the real shape every configuration spills (N = 256, k = 32 or 64; N = 512), so larger
    shapes run, slower. ``aot_specs`` lists the real-shape configurations that
    ``tests/test_kernels_build.py`` keeps spill-free.
    """
    block_n = max(16, _next_pow2(n))
    block_k = max(16, _next_pow2(k))
    num_warps = 4 if block_n * block_k <= 1024 else 8
    if dtype == torch.float32:
        return TritonKMeansConfig(block_n, block_k, 16, num_warps)
    return TritonKMeansConfig(block_n, block_k, 32, num_warps, num_stages=1)


def cosine_kmeans_triton(
    x: torch.Tensor,
    k: int,
    *,
    max_iters: int = 20,
    seed: int = 0,
    early_stop: bool = True,
    dot_precision: DotPrecision = "ieee",
    config: TritonKMeansConfig | None = None,
) -> KMeansResult:
    """Triton launcher: the whole k-means of every frame in one launch (grid = B programs).

    Same arguments, result and algorithm as :func:`cosine_kmeans_reference`. Limits:
    N <= 512, k <= 64 (all rows of a frame stay in one program).

    ``dot_precision`` is how the two products per feature tile (centroid update and
    assignment, fp32 operands) run on the GPU. ``"ieee"`` (default): fp32 FMA, the same
    arithmetic as the references; the kernel then does ``4 N BLOCK_K D`` FMAs per iteration on
    one SM per frame, which at the real shape (N 256, D 1280, BLOCK_K 16: 21 MFMA per
    iteration) may bound it by the FMA units rather than by memory. ``"tf32x3"``: three TF32
    tensor-core products per tile, about fp32 accuracy; on sm_90 it compiles with ~850 bytes of
    register spills at the real shape (``ieee``: none). Which is faster is for
    ``benchmarks/kernels.py`` (rows ``triton`` and ``triton_tf32x3``) on a GPU to say; the
    interpreter computes both in fp32.

    ``config`` overrides :func:`triton_kmeans_config` (tuning and benchmarks; ``block_n`` must
    cover N, ``block_k`` cover k and be >= 16).
    """
    check_kmeans_args(x, k, max_iters)
    reason = triton_kmeans_supports(x, k)
    if reason is not None:
        raise ValueError(reason)
    if dot_precision not in DOT_PRECISIONS:
        raise ValueError(f"expected dot_precision in {list(DOT_PRECISIONS)}, got {dot_precision!r}")
    from .dispatch import triton_interpreting

    x = x if x.stride(-1) == 1 else x.contiguous()
    bsz, n, d = x.shape
    rand = kmeanspp_random_table(seed, bsz, k, x.device)
    cent = torch.empty(bsz, k, d, device=x.device, dtype=torch.float32)
    labels = torch.empty(bsz, n, device=x.device, dtype=torch.int64)
    iters = torch.empty(bsz, device=x.device, dtype=torch.int32)
    cfg = config or triton_kmeans_config(n, k, x.dtype)
    if cfg.block_n < n or cfg.block_k < max(k, 16) or cfg.block_d < 1:
        raise ValueError(
            f"expected a config with block_n >= {n}, block_k >= {max(k, 16)}, got {cfg}"
        )
    kernel = _triton_kernel(triton_interpreting())
    kernel[(bsz,)](
        x,
        rand,
        cent,
        labels,
        iters,
        n,
        d,
        k,
        max_iters,
        x.stride(0),
        x.stride(1),
        EARLY_STOP=early_stop,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        BLOCK_D=cfg.block_d,
        DOT_PRECISION=dot_precision,
        num_warps=cfg.num_warps,
        **({} if cfg.num_stages is None else {"num_stages": cfg.num_stages}),
    )
    return KMeansResult(labels, cent, iters)


def aot_specs() -> list[Any]:
    """The k-means kernel at the configurations the launcher picks for the real shapes
    (N = 256, D = 1280, k from 2 to 16: one configuration, ``BLOCK_K = 16``; default ``ieee``
    products), in every dtype: :mod:`moca_rt.kernels.aot` compiles them for sm_90 to check
    registers and shared memory."""
    from .aot import KernelSpec

    fn = _triton_kernel(False)
    specs = []
    for dtype, torch_dtype in (
        ("fp32", torch.float32),
        ("bf16", torch.bfloat16),
        ("fp16", torch.float16),
    ):
        cfg = triton_kmeans_config(256, 16, torch_dtype)
        assert cfg == triton_kmeans_config(256, 2, torch_dtype), "k = 2..16: one config"
        types = {
            "x_ptr": f"*{dtype}",
            "rand_ptr": "*i32",
            "cent_ptr": "*fp32",
            "labels_ptr": "*i64",
            "iters_ptr": "*i32",
            "N": "i32",
            "D": "i32",
            "K": "i32",
            "max_iters": "i32",
            "stride_xb": "i32",
            "stride_xn": "i32",
        }
        consts = {
            "EARLY_STOP": True,
            "BLOCK_N": cfg.block_n,
            "BLOCK_K": cfg.block_k,
            "BLOCK_D": cfg.block_d,
            "DOT_PRECISION": "ieee",
        }
        # N = 256, D = 1280 and the strides are multiples of 16 there; K and max_iters not.
        divisible = ("N", "D", "stride_xb", "stride_xn")
        name = f"kmeans {dtype} N=256 D=1280 k=2..16"
        spec = KernelSpec(
            name, fn, types, consts, cfg.num_warps, cfg.num_stages, divisible=divisible
        )
        specs.append(spec)
    return specs


# --------------------------------------------------------------------------------------------
# Dispatcher and torch.library registration


def selected_backend(x: torch.Tensor, k: int) -> Backend:
    """The backend :func:`cosine_kmeans` runs for ``x`` and ``k``, after its fallbacks.

    ``MOCA_RT_KERNELS`` or the automatic choice (:func:`moca_rt.kernels.dispatch.choose_backend`),
    then ``"torch"`` where the chosen kernel cannot take the input (size limits). A forced
    ``cupy`` without a usable CuPy and CUDA tensor raises ``ValueError``.
    """
    backend = choose_backend(x)
    if backend == "cupy":
        check_forced_cupy(x)
        from .cupy_kmeans import cupy_kmeans_supports

        return "cupy" if cupy_kmeans_supports(x, k) is None else "torch"
    if backend == "triton" and triton_kmeans_supports(x, k) is None:
        return "triton"
    return "torch"


def batch_invariant(x: torch.Tensor, k: int) -> bool:
    """Whether :func:`cosine_kmeans` clusters every frame of ``x`` bit for bit as it would
    cluster that frame alone.

    True for the Triton and CuPy kernels (one program / block per frame, no arithmetic shared
    between frames); False for the batched torch path, whose ``bmm`` may round a frame's cosines
    differently at another batch size. Callers that need results independent of the batch
    size (the pipeline) batch frames only when this holds.
    """
    return selected_backend(x, k) != "torch"


def _run_backend(
    x: torch.Tensor, k: int, max_iters: int, seed: int, early_stop: bool
) -> KMeansResult:
    kwargs: dict[str, Any] = {"max_iters": max_iters, "seed": seed, "early_stop": early_stop}
    backend = selected_backend(x, k)
    if backend == "cupy":
        from .cupy_kmeans import cosine_kmeans_cupy

        return cosine_kmeans_cupy(x, k, **kwargs)
    if backend == "triton":
        return cosine_kmeans_triton(x, k, **kwargs)
    return cosine_kmeans_torch_fast(x, k, **kwargs)


@torch.library.custom_op("moca_rt::cosine_kmeans", mutates_args=())
def _cosine_kmeans_op(
    x: torch.Tensor, k: int, max_iters: int, seed: int, early_stop: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    res = _run_backend(x, k, max_iters, seed, early_stop)
    return res.labels, res.centroids, res.iterations


@_cosine_kmeans_op.register_fake
def _cosine_kmeans_fake(
    x: torch.Tensor, k: int, max_iters: int, seed: int, early_stop: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    bsz, n, d = x.shape
    return (
        x.new_empty((bsz, n), dtype=torch.int64),
        x.new_empty((bsz, k, d), dtype=torch.float32),
        x.new_empty((bsz,), dtype=torch.int32),
    )


def cosine_kmeans(
    x: torch.Tensor, k: int, *, max_iters: int = 20, seed: int = 0, early_stop: bool = True
) -> KMeansResult:
    """Cosine k-means of each frame of ``x`` (algorithm in the module docstring).

    Args:
        x: [B, N, D] fp32/fp16/bf16 features (any norm; rows are L2-normalised in fp32).
        k: clusters per frame, 1 <= k <= N.
        max_iters: most updates per frame (>= 0).
        seed: seed of the deterministic k-means++ draws (same draws on every device).
        early_stop: stop a frame when its assignment stops changing (the result is the same
            either way; only the iteration count and time differ).
    Returns:
        KMeansResult(labels [B, N] int64, centroids [B, K, D] fp32 unit norm, iterations [B]
        int32).

    Backend: ``MOCA_RT_KERNELS=torch|triton|cupy`` or automatic (Triton for CUDA tensors).
    ``torch`` runs the batched torch version (:func:`cosine_kmeans_torch_fast`, same algorithm
    and results as the reference, without its per-frame host syncs); a kernel that cannot take
    the input (size limits) falls back to it;
    ``cupy`` without a usable CuPy + CUDA tensor raises ValueError. Registered as
    ``torch.ops.moca_rt.cosine_kmeans`` with a fake implementation for ``torch.compile``.
    """
    check_kmeans_args(x, k, max_iters)
    if not torch.compiler.is_compiling():
        # Eager calls skip the op wrapper: same backends, less overhead, and no import of
        # torch._dynamo (and through it triton) as a side effect of the first call.
        return _run_backend(x, k, max_iters, seed, early_stop)
    labels, cent, iters = _cosine_kmeans_op(x, k, max_iters, seed, early_stop)
    return KMeansResult(labels, cent, iters)
