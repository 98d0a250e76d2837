"""Triton kernels for the PMA (pixel matching aggregation) cost: forward and backward.

Kept apart from :mod:`moca_rt.kernels.pma` (which holds the torch references, the dispatcher and
the ``torch.library`` registration) because Triton decides between compiling and interpreting
(``TRITON_INTERPRET=1``) when ``triton.jit`` wraps a function. The kernel bodies below are plain
functions; :func:`_kernels` wraps them on first use and caches one set per mode, so setting
``TRITON_INTERPRET=1`` before the first launch is enough, whatever was imported earlier.

Problem layout used by both kernels ("grouped" form): ``f``, ``g`` are ``[G, L, C]``; position
``j`` of group ``q`` in ``f`` is compared with positions ``k`` of the same group in ``g`` with
``|k - j| <= D``. Row search is ``G = B*H, L = W``; full search is ``G = B, L = H*W, D = L-1``.

Forward, per ``(q, j)``::

    s_k = <f_j, g_k>,  c_k = w_ssd * max(|f_j|^2 + |g_k|^2 - 2 s_k, 0) / C
                           + w_ncc * (1 - s_k / (|f_j| |g_k| + eps))
    min_cost[q, j] = min_k c_k,  argk[q, j] = smallest k reaching it

One program per ``(q, tile of BLOCK_J positions j)``; it walks the tiles of ``k`` inside the band,
accumulating ``s`` over ``C`` in ``BLOCK_C`` chunks with ``tl.dot`` (fp32 accumulation; fp32
inputs use ``input_precision="ieee"`` so the arg-min agrees with the fp32 references; under the
interpreter bf16 tiles are upcast first, because Triton 3.7's interpreter multiplies bf16 as
their raw uint16 bits in ``tl.dot``).
FLOPs: ``2 * G * L * K * C`` for the dot products (``K = min(L, 2D+1)`` compared positions) plus
``O(G * L * K)`` epilogue. Bytes it must move: read ``f`` and ``g`` once
(``2 * G * L * C * itemsize``; re-reads of ``f`` per ``k`` tile hit L1/L2), write
``G * L * (4 + 8)`` bytes of min cost (fp32) and arg-min (int64).

Backward, per ``(q, j)`` with ``u = f_j``, ``v = g_{k*}``, ``s = <u, v>``, ``den = |u||v| + eps``,
``a = 2 w_ssd / C`` and upstream gradient ``go``::

    dc/du = (a + w_ncc s |v| / (|u| den^2)) u - (a + w_ncc / den) v
    dc/dv = (a + w_ncc s |u| / (|v| den^2)) v - (a + w_ncc / den) u

(the ``|u|``/``|v|`` terms are dropped for a zero vector, like autograd's norm). A first pass
over ``C`` gets ``s, |u|^2, |v|^2`` per position, a second writes ``grad_f[q, j]`` and the
contributions ``gv_j = dc/dv`` to ``grad_g[q, k*_j]``. ``grad_g[q, k]`` is the sum of ``gv_j``
over the positions ``j`` of the group whose arg-min is ``k`` (zero if none chose it). Two paths
(:func:`bwd_config` picks by ``L``, nothing else):

* **Deterministic** (``L <= DETERMINISTIC_MAX_L = 64``; the real row search has ``L = W = 16``):
  one program per group holds all ``L`` positions (``BLOCK_J >= L``). In the second pass, per
  ``C`` tile, ``grad_g`` rows are ``onehot @ gv`` with ``onehot[k, j] = (argk_j == k)``, one
  ``tl.dot`` in fp32 (``input_precision="ieee"``: exact products with 0/1, fp32 sums in a
  fixed order), written once, straight in the input dtype. No atomics, no zero-fill, no fp32
  side buffer: bitwise reproducible run to run. Bytes: ``G * L * C * itemsize * 6`` (``f`` and
  the gathered ``g`` rows read twice, ``grad_f`` and ``grad_g`` written once).
* **Atomic** (``L > 64``, e.g. full search ``L = H*W = 256``): programs over ``(group, tile of
  BLOCK_J positions)`` add ``gv`` into a zero-filled fp32 ``grad_g`` buffer with
  ``tl.atomic_add``; the buffer is cast to the input dtype at the end (no copy for fp32). The
  order of the float additions varies, so the last bits of ``grad_g`` may differ run to run
  (``grad_f`` is deterministic). A one-program-per-group scheme would serialise all ``H*W``
  positions of a map into ``B`` programs, too few for 132 SMs. Bytes: ``G * L * C * (5 *
  itemsize + 4)`` plus the zero-fill (``4``) and, for bf16/fp16, the cast (``4 + itemsize``).

Memory the Triton path allocates beyond the inputs ``f``, ``g``, the outputs (``cost``,
``min_cost``, ``argmin``) and the gradients (``grad_f``, ``grad_g``), at ``G * L`` positions
(see :class:`moca_rt.kernels.pma._PmaTritonFunction` and the custom op, which reshape views
only): the grouped arg-min ``argk`` (8 bytes a position; the autograd function keeps the
forward's for backward, the custom op recomputes it from the public ``argmin`` in backward) and
the per-position upstream gradient (4 bytes a position, float32). Nothing of size ``L * C`` on
the deterministic path, any dtype. On the atomic path, fp32: nothing (the fp32 buffer is
``grad_g`` itself); bf16/fp16: the fp32 ``grad_g`` buffer, ``4 * G * L * C`` bytes (10.5 MB for
B = 8 maps of 16x16x1280), live until the cast.

Launch configurations (:func:`fwd_config`, :func:`bwd_config`; :func:`aot_specs` derives the
ahead-of-time compile checks from the same functions). At the real shape (``B = 8`` pairs of
16x16x1280 maps) both searches have about 128 programs (row: ``G = 128`` groups, one ``j`` tile
each; full: ``G = 8`` groups x 16 tiles of ``BLOCK_J = 16``; backward row: 128 groups), one
wave on the 132 SMs of an H100 with one program per SM. Parallelism within an SM therefore
comes from warps, not from more programs, so every kernel runs 8 warps (256 threads), and the
tiles are sized so that the per-thread share stays small enough for 0 spills on sm_90
(checked with ``ptxas -v``, Triton 3.7.1):

* forward: ``BLOCK_J`` 16..64 (halved until there are 256 programs, when ``G`` and ``L``
  allow), ``BLOCK_K = next_pow2(min(L, 2D+1))`` in 16..64, and the largest ``BLOCK_C <= 128``
  with ``(BLOCK_J + BLOCK_K) * BLOCK_C + BLOCK_J * BLOCK_K <= 8192`` elements (operand tiles of
  the dot plus the accumulator: 32 per thread); ``num_stages`` 2 for fp32 (twice the bytes
  per tile), Triton's default (3) for bf16/fp16.
* deterministic backward: ``BLOCK_J = next_pow2(L)`` (>= 16, the ``tl.dot`` minimum),
  ``BLOCK_C = 32768 / BLOCK_J^2`` (16..128): the fp32 one-hot dot is the register-heavy part.
* atomic backward: ``BLOCK_J`` 16..32 as the forward, ``BLOCK_C = 2048 / BLOCK_J``.

At the real shapes, registers per thread / shared memory on sm_90 (every spec 0 spill bytes),
compiled without alignment hints and, in brackets, with the hints the run-time compile gets
(16-byte aligned pointers, ``L`` and ``C`` multiples of 16), which is how
:mod:`moca_rt.kernels.aot` compiles them:

=========================  ========================  ========================
kernel, search (tiles)     fp32                      bf16 / fp16
=========================  ========================  ========================
forward, row (16,16,128)   100 (48) / 16 KB          128 (78) / 8 (16) KB
forward, full (16,64,64)   203 (80) / 21 KB          216 (106) / 10 (20) KB
backward det, row (16,128) 202 (118) / 42 KB         158 (102) / 9 (25) KB
backward atomic, full      151 (48) / 0              149 (40) / 0 (8) KB
=========================  ========================  ========================

Work per program, row search forward: a ``16 x 1280 x 16`` product (0.66 MFLOP) over 80 KB of
input (fp32); full search forward: ``16 x 1280 x 256`` (10.5 MFLOP) with ``g`` re-read from L2
per ``j`` tile; deterministic backward: 4 x 80 KB read (fp32), 2 x 80 KB written, and a
``16 x 16 x 1280`` one-hot product.
"""

import functools
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_GRID_Y = 65535
_MIN_PROGRAMS = 256
DETERMINISTIC_MAX_L = 64
_NUM_WARPS = 8
# Tile-size budgets in elements (see "Launch configurations" in the module docstring).
_FWD_TILE_BUDGET = 8192  # (BLOCK_J + BLOCK_K) * BLOCK_C + BLOCK_J * BLOCK_K
_BWD_TILE_BUDGET = 2048  # BLOCK_J * BLOCK_C, atomic path
_DET_DOT_BUDGET = 32768  # BLOCK_J**2 * BLOCK_C, deterministic path (fp32 one-hot dot)


def _pma_fwd_body(
    f_ptr,
    g_ptr,
    min_ptr,
    arg_ptr,
    L,
    C,
    D,
    ssd_w,
    ncc_w,
    eps,
    inv_c,
    BLOCK_J: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    pid_q = tl.program_id(0).to(tl.int64)
    pid_j = tl.program_id(1)
    base = pid_q * L * C
    j0 = pid_j * BLOCK_J
    j = j0 + tl.arange(0, BLOCK_J)
    j_ok = j < L
    cc = tl.arange(0, BLOCK_C)

    fn2 = tl.zeros((BLOCK_J,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + cc
        fx = tl.load(
            f_ptr + base + j[:, None] * C + c[None, :],
            mask=j_ok[:, None] & (c[None, :] < C),
            other=0.0,
        ).to(tl.float32)
        fn2 += tl.sum(fx * fx, axis=1)
    fn = tl.sqrt(fn2)

    best = tl.full((BLOCK_J,), float("inf"), dtype=tl.float32)
    best_k = tl.zeros((BLOCK_J,), dtype=tl.int64)
    k_lo = tl.maximum(j0 - D, 0)
    k_hi = tl.minimum(j0 + BLOCK_J + D, L)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < L
        acc = tl.zeros((BLOCK_J, BLOCK_K), dtype=tl.float32)
        gn2 = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + cc
            c_ok = c < C
            fx = tl.load(
                f_ptr + base + j[:, None] * C + c[None, :],
                mask=j_ok[:, None] & c_ok[None, :],
                other=0.0,
            )
            gt = tl.load(
                g_ptr + base + k[None, :] * C + c[:, None],
                mask=k_ok[None, :] & c_ok[:, None],
                other=0.0,
            )
            if UPCAST_DOT:
                fx = fx.to(tl.float32)
                gt = gt.to(tl.float32)
            acc = tl.dot(fx, gt, acc, input_precision=PRECISION)
            gt32 = gt.to(tl.float32)
            gn2 += tl.sum(gt32 * gt32, axis=0)
        gn = tl.sqrt(gn2)
        ssd = tl.maximum(fn2[:, None] + gn2[None, :] - 2.0 * acc, 0.0)
        cost = ssd_w * ssd * inv_c + ncc_w * (1.0 - acc / (fn[:, None] * gn[None, :] + eps))
        diff = k[None, :] - j[:, None]
        valid = k_ok[None, :] & (diff <= D) & (diff >= -D)
        cost = tl.where(valid, cost, float("inf"))
        tile_min = tl.min(cost, axis=1)
        big = tl.full((BLOCK_J, BLOCK_K), 2**62, dtype=tl.int64)
        tile_k = tl.min(tl.where(cost == tile_min[:, None], k[None, :].to(tl.int64), big), axis=1)
        better = tile_min < best
        best = tl.where(better, tile_min, best)
        best_k = tl.where(better, tile_k, best_k)

    out = pid_q * L + j
    tl.store(min_ptr + out, best, mask=j_ok)
    tl.store(arg_ptr + out, best_k, mask=j_ok)


def _pma_bwd_body(
    f_ptr,
    g_ptr,
    arg_ptr,
    go_ptr,
    gf_ptr,
    gg_ptr,
    L,
    C,
    ssd_w,
    ncc_w,
    eps,
    inv_c,
    BLOCK_J: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
):
    pid_q = tl.program_id(0).to(tl.int64)
    pid_j = tl.program_id(1)
    base = pid_q * L * C
    j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    j_ok = j < L
    ks = tl.load(arg_ptr + pid_q * L + j, mask=j_ok, other=0)
    go = tl.load(go_ptr + pid_q * L + j, mask=j_ok, other=0.0)
    cc = tl.arange(0, BLOCK_C)

    s = tl.zeros((BLOCK_J,), dtype=tl.float32)
    nu2 = tl.zeros((BLOCK_J,), dtype=tl.float32)
    nv2 = tl.zeros((BLOCK_J,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + cc
        m = j_ok[:, None] & (c[None, :] < C)
        u = tl.load(f_ptr + base + j[:, None] * C + c[None, :], mask=m, other=0.0).to(tl.float32)
        v = tl.load(g_ptr + base + ks[:, None] * C + c[None, :], mask=m, other=0.0).to(tl.float32)
        s += tl.sum(u * v, axis=1)
        nu2 += tl.sum(u * u, axis=1)
        nv2 += tl.sum(v * v, axis=1)
    nu = tl.sqrt(nu2)
    nv = tl.sqrt(nv2)
    den = nu * nv + eps
    a = 2.0 * ssd_w * inv_c
    cross = -(a + ncc_w / den) * go
    uu = (a + tl.where(nu > 0, ncc_w * s * nv / (tl.where(nu > 0, nu, 1.0) * den * den), 0.0)) * go
    vv = (a + tl.where(nv > 0, ncc_w * s * nu / (tl.where(nv > 0, nv, 1.0) * den * den), 0.0)) * go
    if DETERMINISTIC:
        # The whole group is this program (BLOCK_J >= L, pid_j == 0): onehot[k, j] = 1 where
        # position j chose k, so grad_g rows are onehot @ gv, summed in a fixed order.
        onehot = ((j[:, None] == ks[None, :]) & j_ok[None, :]).to(tl.float32)

    for c0 in range(0, C, BLOCK_C):
        c = c0 + cc
        m = j_ok[:, None] & (c[None, :] < C)
        u = tl.load(f_ptr + base + j[:, None] * C + c[None, :], mask=m, other=0.0).to(tl.float32)
        v = tl.load(g_ptr + base + ks[:, None] * C + c[None, :], mask=m, other=0.0).to(tl.float32)
        gu = uu[:, None] * u + cross[:, None] * v
        gv = vv[:, None] * v + cross[:, None] * u
        tl.store(
            gf_ptr + base + j[:, None] * C + c[None, :],
            gu.to(gf_ptr.dtype.element_ty),
            mask=m,
        )
        if DETERMINISTIC:
            # padded rows could hold NaN (eps = 0 and a zero vector): keep them out of the sum
            gk = tl.dot(onehot, tl.where(m, gv, 0.0), input_precision="ieee")
            tl.store(
                gg_ptr + base + j[:, None] * C + c[None, :],
                gk.to(gg_ptr.dtype.element_ty),
                mask=m,
            )
        else:
            tl.atomic_add(gg_ptr + base + ks[:, None] * C + c[None, :], gv, mask=m)


@functools.cache
def _kernels(interpret: bool) -> tuple[Any, Any]:
    """The jitted (or interpreted) forward and backward kernels for the current mode."""
    del interpret  # only the cache key: triton.jit reads TRITON_INTERPRET itself
    return triton.jit(_pma_fwd_body), triton.jit(_pma_bwd_body)


def _interpreting() -> bool:
    return bool(triton.knobs.runtime.interpret)


def _pow2_between(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


def check_inputs(f: torch.Tensor, g: torch.Tensor) -> None:
    """Raise ``ValueError`` unless the kernels can take grouped ``f``, ``g`` (``[G, L, C]``).

    Requirements: same shape, 3-D, dtype in fp32/bf16/fp16, contiguous, same device, and that
    device is CUDA (or any device while ``TRITON_INTERPRET=1``); ``L`` small enough for the
    launch grid.
    """
    if f.dim() != 3 or f.shape != g.shape:
        raise ValueError(
            f"expected grouped f and g of one shape [G, L, C], got {tuple(f.shape)} and "
            f"{tuple(g.shape)}"
        )
    for name, t in (("f", f), ("g", g)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(
                f"expected {name} of dtype float32, bfloat16 or float16 for the Triton PMA "
                f"kernel, got {t.dtype}"
            )
        if not t.is_contiguous():
            raise ValueError(
                f"expected a contiguous {name} for the Triton PMA kernel, got strides {t.stride()}"
            )
    if f.dtype != g.dtype:
        raise ValueError(f"expected f and g of one dtype, got {f.dtype} and {g.dtype}")
    if f.device != g.device:
        raise ValueError(f"expected f and g on one device, got {f.device} and {g.device}")
    if not (f.is_cuda or _interpreting()):
        raise ValueError(
            f"expected CUDA tensors for the Triton PMA kernel (or TRITON_INTERPRET=1), got "
            f"{f.device}"
        )
    G, L, C = f.shape
    if min(G, L, C) < 1:
        raise ValueError(f"expected non-empty [G, L, C], got {tuple(f.shape)}")
    if L * C >= 2**31:
        raise ValueError(f"expected fewer than 2**31 elements per group (L*C), got {L * C}")
    if triton.cdiv(L, 16) > _MAX_GRID_Y:
        raise ValueError(f"expected at most {_MAX_GRID_Y * 16} positions per group, got {L}")


class FwdConfig(NamedTuple):
    """Launch configuration of the forward kernel: tiles (constexprs) and launch options."""

    block_j: int
    block_k: int
    block_c: int
    num_warps: int
    num_stages: int | None


class BwdConfig(NamedTuple):
    """Launch configuration of the backward kernel.

    deterministic: one program per group, ``grad_g`` by a one-hot ``tl.dot`` (no atomics);
    otherwise ``(group, tile of j)`` programs adding into an fp32 ``grad_g`` with atomics.
    """

    deterministic: bool
    block_j: int
    block_c: int
    num_warps: int
    num_stages: int | None


def _block_j(G: int, L: int, largest: int) -> int:
    """Tile of positions per program: as large as ``largest``, but small enough that there are
    at least ``_MIN_PROGRAMS`` programs (an H100 has 132 SMs) when the problem allows it."""
    block_j = _pow2_between(L, 16, largest)
    while block_j > 16 and G * triton.cdiv(L, block_j) < _MIN_PROGRAMS:
        block_j //= 2
    return block_j


def fwd_config(G: int, L: int, C: int, D: int, dtype: torch.dtype) -> FwdConfig:
    """The forward launch configuration for grouped ``[G, L, C]`` inputs searching ``|k-j| <= D``.

    See the module docstring for the reasoning; :func:`forward_grouped` and :func:`aot_specs`
    both call this.
    """
    block_j = _block_j(G, L, 64)
    block_k = _pow2_between(min(L, 2 * D + 1), 16, 64)
    block_c = _pow2_between(C, 16, 128)
    while block_c > 16 and (block_j + block_k) * block_c + block_j * block_k > _FWD_TILE_BUDGET:
        block_c //= 2
    # fp32 tiles are twice the bytes of bf16/fp16 ones: two pipeline stages instead of Triton's
    # default three (with three, the full-search tile spills 16 B once L and C are specialised
    # as multiples of 16, as they are at run time)
    stages = 2 if dtype == torch.float32 else None
    return FwdConfig(block_j, block_k, block_c, _NUM_WARPS, stages)


def bwd_config(G: int, L: int, C: int, dtype: torch.dtype) -> BwdConfig:
    """The backward launch configuration for grouped ``[G, L, C]`` inputs.

    ``L <= DETERMINISTIC_MAX_L``: the deterministic one-program-per-group path, else the
    atomic path. :func:`backward_grouped` and :func:`aot_specs` both call this.
    """
    del dtype  # one configuration fits every supported dtype (checked by aot_specs)
    return _forced_bwd_config(G, L, C, L <= DETERMINISTIC_MAX_L)


def _forced_bwd_config(G: int, L: int, C: int, deterministic: bool) -> BwdConfig:
    if deterministic:
        block_j = _pow2_between(L, 16, DETERMINISTIC_MAX_L)
        block_c = _pow2_between(C, 16, max(16, _DET_DOT_BUDGET // (block_j * block_j)))
        return BwdConfig(True, block_j, block_c, _NUM_WARPS, None)
    block_j = _block_j(G, L, 32)
    block_c = _pow2_between(C, 16, _BWD_TILE_BUDGET // block_j)
    return BwdConfig(False, block_j, block_c, _NUM_WARPS, None)


def _launch_options(num_warps: int, num_stages: int | None) -> dict[str, int]:
    out = {"num_warps": num_warps}
    if num_stages is not None:
        out["num_stages"] = num_stages
    return out


def forward_grouped(
    f: torch.Tensor,
    g: torch.Tensor,
    max_disparity: int,
    ssd_weight: float,
    ncc_weight: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel on grouped ``f``, ``g`` ``[G, L, C]``.

    Returns ``min_cost`` ``[G, L]`` float32 and ``argk`` ``[G, L]`` int64 (absolute index ``k`` of
    the chosen position in ``g``; ties go to the smallest ``k``). ``max_disparity`` must lie in
    ``[0, L-1]``.
    """
    check_inputs(f, g)
    G, L, C = f.shape
    if not 0 <= max_disparity <= L - 1:
        raise ValueError(f"expected max_disparity in [0, {L - 1}], got {max_disparity}")
    min_cost = torch.empty((G, L), device=f.device, dtype=torch.float32)
    argk = torch.empty((G, L), device=f.device, dtype=torch.int64)
    cfg = fwd_config(G, L, C, max_disparity, f.dtype)
    fwd, _ = _kernels(_interpreting())
    grid = (G, triton.cdiv(L, cfg.block_j))
    fwd[grid](
        f,
        g,
        min_cost,
        argk,
        L,
        C,
        max_disparity,
        float(ssd_weight),
        float(ncc_weight),
        float(eps),
        1.0 / C,
        BLOCK_J=cfg.block_j,
        BLOCK_K=cfg.block_k,
        BLOCK_C=cfg.block_c,
        PRECISION=_fwd_precision(f.dtype),
        UPCAST_DOT=f.dtype == torch.bfloat16 and _interpreting(),
        **_launch_options(cfg.num_warps, cfg.num_stages),
    )
    return min_cost, argk


def _fwd_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def backward_grouped(
    f: torch.Tensor,
    g: torch.Tensor,
    argk: torch.Tensor,
    grad_min: torch.Tensor,
    ssd_weight: float,
    ncc_weight: float,
    eps: float,
    *,
    deterministic: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward kernel: gradients wrt grouped ``f`` and ``g`` ``[G, L, C]``.

    ``argk`` ``[G, L]`` int64 holds the selected ``k`` per position, in ``[0, L)`` (from
    :func:`forward_grouped`, or any choice: ``grad_g[q, k]`` sums over the positions that chose
    ``k``); ``grad_min`` ``[G, L]`` the upstream gradient of each position's min cost (other
    dtypes or layouts are converted, a ``[G, L]`` float32 copy). Returns ``grad_f``, ``grad_g``
    ``[G, L, C]`` in the inputs' dtype. ``deterministic``: None picks the path by ``L``
    (:func:`bwd_config`); True forces the one-program-per-group path (``L`` must be at most
    ``DETERMINISTIC_MAX_L``), False the atomic one.
    """
    check_inputs(f, g)
    G, L, C = f.shape
    if argk.shape != (G, L) or grad_min.shape != (G, L):
        raise ValueError(
            f"expected argk and grad_min of shape {(G, L)}, got {tuple(argk.shape)} and "
            f"{tuple(grad_min.shape)}"
        )
    if deterministic and L > DETERMINISTIC_MAX_L:
        raise ValueError(
            f"expected L <= {DETERMINISTIC_MAX_L} for the deterministic backward, got {L}"
        )
    argk = argk.to(device=f.device, dtype=torch.int64).contiguous()
    grad_min = grad_min.to(device=f.device, dtype=torch.float32).contiguous()
    cfg = bwd_config(G, L, C, f.dtype)
    if deterministic is not None and deterministic != cfg.deterministic:
        cfg = _forced_bwd_config(G, L, C, deterministic)
    grad_f = torch.empty_like(f)
    if cfg.deterministic:
        grad_g = torch.empty_like(g)  # every element is written once by its group's program
        grid = (G, 1)
    else:
        grad_g = torch.zeros(f.shape, device=f.device, dtype=torch.float32)
        grid = (G, triton.cdiv(L, cfg.block_j))
    _, bwd = _kernels(_interpreting())
    bwd[grid](
        f,
        g,
        argk,
        grad_min,
        grad_f,
        grad_g,
        L,
        C,
        float(ssd_weight),
        float(ncc_weight),
        float(eps),
        1.0 / C,
        BLOCK_J=cfg.block_j,
        BLOCK_C=cfg.block_c,
        DETERMINISTIC=cfg.deterministic,
        **_launch_options(cfg.num_warps, cfg.num_stages),
    )
    return grad_f, grad_g.to(g.dtype)


_TL_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# (label, G, L, C, D) of the project's real shape: B = 8 pairs of 16x16x1280 feature maps.
REAL_SHAPES = (("row B8 16x16x1280", 128, 16, 1280, 15), ("full B8 16x16x1280", 8, 256, 1280, 255))


def aot_specs() -> list[Any]:
    """The forward and backward kernels at the configurations the launchers pick for the real
    shapes (:data:`REAL_SHAPES`: row search ``G=128, L=16, D=15`` and full search ``G=8,
    L=256, D=255``), each in fp32, bf16 and fp16, for :mod:`moca_rt.kernels.aot` to compile
    for sm_90 (registers, spills, shared memory). Call without ``TRITON_INTERPRET=1``."""
    from .aot import KernelSpec

    fwd, bwd = _kernels(False)
    scalars = {"ssd_w": "fp32", "ncc_w": "fp32", "eps": "fp32", "inv_c": "fp32"}
    specs = []
    for label, G, L, C, D in REAL_SHAPES:
        for dtype, ty in _TL_TYPES.items():
            fc = fwd_config(G, L, C, D, dtype)
            fsig = {
                "f_ptr": f"*{ty}",
                "g_ptr": f"*{ty}",
                "min_ptr": "*fp32",
                "arg_ptr": "*i64",
                "L": "i32",
                "C": "i32",
                "D": "i32",
                **scalars,
            }
            fconst = {
                "BLOCK_J": fc.block_j,
                "BLOCK_K": fc.block_k,
                "BLOCK_C": fc.block_c,
                "PRECISION": _fwd_precision(dtype),
                "UPCAST_DOT": False,
            }
            specs.append(
                KernelSpec(
                    f"pma_fwd {label} {ty} J{fc.block_j} K{fc.block_k} C{fc.block_c}",
                    fwd,
                    fsig,
                    fconst,
                    fc.num_warps,
                    fc.num_stages,
                    divisible=("L", "C"),  # 16 or 256, and 1280; D is not
                )
            )
            bc = bwd_config(G, L, C, dtype)
            gg_ty = ty if bc.deterministic else "fp32"
            bsig = {
                "f_ptr": f"*{ty}",
                "g_ptr": f"*{ty}",
                "arg_ptr": "*i64",
                "go_ptr": "*fp32",
                "gf_ptr": f"*{ty}",
                "gg_ptr": f"*{gg_ty}",
                "L": "i32",
                "C": "i32",
                **scalars,
            }
            bconst = {
                "BLOCK_J": bc.block_j,
                "BLOCK_C": bc.block_c,
                "DETERMINISTIC": bc.deterministic,
            }
            path = "deterministic" if bc.deterministic else "atomic"
            specs.append(
                KernelSpec(
                    f"pma_bwd {label} {ty} {path} J{bc.block_j} C{bc.block_c}",
                    bwd,
                    bsig,
                    bconst,
                    bc.num_warps,
                    bc.num_stages,
                    divisible=("L", "C"),
                )
            )
    return specs
