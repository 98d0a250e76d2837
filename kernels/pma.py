"""PMA (pixel matching aggregation) cost of MoCA: torch references, Triton path and dispatcher.

For feature maps ``f``, ``g`` of shape ``[B, H, W, C]`` (channels last, row ``i``, column ``j``
in feature-grid cells) and disparity ``d`` in ``[-D, D]`` along the same row, keeping only
``0 <= j + d < W``::

    c(i, j, d) = w_ssd * ||f[i,j] - g[i,j+d]||^2 / C + w_ncc * (1 - <f,g> / (|f| |g| + eps))
    min_cost[i, j] = min_d c(i, j, d)          cost = mean over (i, j) of min_cost

``D = W-1`` (the default) searches the whole scanline; ``D = 0`` compares only the same pixel
(the no-matching ablation); ``search="full"`` compares ``f[i, j]`` with all ``H*W`` positions
of ``g``. Gradients flow through the arg-min as a sub-gradient: only the selected pair gets a
gradient, to both ``f`` and ``g``.

Conventions shared by every implementation here (and checked against each other by the tests):

* Ties go to the smallest disparity ``d`` ("row") or the smallest flat index ``i*W + j`` of
  ``g`` ("full").
* Everything is computed in float32 (float64 for float64 input, torch paths only): ``cost`` and
  ``min_cost`` come back in that dtype whatever the input dtype; gradients come back in the
  input dtype.
* The squared distance in the bmm and Triton formulations is
  ``max(|f|^2 + |g|^2 - 2<f,g>, 0)``; the clarity reference takes the difference directly.

Implementations: :func:`pma_cost_reference` (clear, loops over ``d``),
:func:`pma_cost_torch_fast` (norms + one batched matmul), :func:`pma_cost_triton` (fused
Triton forward + backward kernels, :mod:`moca_rt.kernels.pma_triton`), and :func:`pma_cost`,
the dispatcher registered as ``torch.ops.moca_rt.pma_cost`` so ``torch.compile`` sees through it.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from moca_rt.kernels.dispatch import choose_backend, triton_can_run_on

Search = Literal["row", "full"]
_SEARCHES = ("row", "full")
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class PmaResult(NamedTuple):
    """Output of every PMA implementation.

    cost: ``[B]`` float32 (float64 for float64 input), mean over pixels of ``min_cost``.
    min_cost: ``[B, H, W]`` same dtype as ``cost``, per-pixel minimum over the search.
    argmin: ``[B, H, W]`` int64; the chosen disparity ``d`` in ``[-D, D]`` (so the match is
        ``g[b, i, j + d]``) for ``search="row"``, or the flat index ``i' * W + j'`` into ``g``'s
        ``H*W`` positions for ``search="full"``. Ties: smallest ``d`` / smallest flat index.
    """

    cost: torch.Tensor
    min_cost: torch.Tensor
    argmin: torch.Tensor


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _validate(
    f: torch.Tensor,
    g: torch.Tensor,
    max_disparity: int | None,
    search: str,
    eps: float,
) -> int:
    """Check the public arguments; return the effective max disparity (``L-1`` for "full")."""
    for name, t in (("f", f), ("g", g)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"expected {name} to be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"expected {name} of shape [B, H, W, C] (4-D), got {t.dim()}-D "
                f"shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise ValueError(f"expected a floating-point {name}, got {t.dtype}")
    if f.shape != g.shape:
        raise ValueError(
            f"expected f and g of one shape, got {tuple(f.shape)} and {tuple(g.shape)}"
        )
    if f.dtype != g.dtype:
        raise ValueError(f"expected f and g of one dtype, got {f.dtype} and {g.dtype}")
    if f.device != g.device:
        raise ValueError(f"expected f and g on one device, got {f.device} and {g.device}")
    if min(f.shape) < 1:
        raise ValueError(f"expected non-empty f and g, got shape {tuple(f.shape)}")
    if search not in _SEARCHES:
        raise ValueError(f"expected search in {list(_SEARCHES)}, got {search!r}")
    if eps < 0:
        raise ValueError(f"expected eps >= 0, got {eps}")
    _, H, W, _ = f.shape
    if search == "full":
        if max_disparity is not None:
            raise ValueError(
                f"expected max_disparity=None with search='full' (it searches all H*W "
                f"positions), got {max_disparity}"
            )
        return H * W - 1
    if max_disparity is None:
        return W - 1
    if isinstance(max_disparity, bool) or not isinstance(max_disparity, int):
        raise ValueError(
            f"expected max_disparity to be an int or None, got {type(max_disparity).__name__}"
        )
    if max_disparity < 0:
        raise ValueError(f"expected max_disparity >= 0, got {max_disparity}")
    return min(max_disparity, W - 1)


def _pair_cost(
    u: torch.Tensor, v: torch.Tensor, ssd_weight: float, ncc_weight: float, eps: float
) -> torch.Tensor:
    """Cost of matching ``u`` with ``v`` (``[..., C]`` each) -> ``[...]``, differentiable."""
    ssd = (u - v).square().sum(-1) / u.shape[-1]
    norms = torch.linalg.vector_norm(u, dim=-1) * torch.linalg.vector_norm(v, dim=-1)
    ncc = (u * v).sum(-1) / (norms + eps)
    return ssd_weight * ssd + ncc_weight * (1.0 - ncc)


def pma_cost_reference(
    f: torch.Tensor,
    g: torch.Tensor,
    *,
    max_disparity: int | None = None,
    search: Search = "row",
    ssd_weight: float = 1.0,
    ncc_weight: float = 1.0,
    eps: float = 1e-6,
) -> PmaResult:
    """PMA cost written for clarity: one ``[B, H, W]`` cost slice per disparity, pure torch.

    Args:
        f, g: ``[B, H, W, C]`` float tensors (any float dtype; computed in float32, or float64
            for float64 input), channels last, same shape, device and dtype.
        max_disparity: ``D``; None means ``W-1`` (whole scanline); values above ``W-1`` act as
            ``W-1``. Must be None for ``search="full"``.
        search: "row" (same row, ``|d| <= D``) or "full" (all ``H*W`` positions of ``g``).
        ssd_weight, ncc_weight, eps: the weights of the two terms and the NCC epsilon.

    Returns:
        :class:`PmaResult`. Differentiable by autograd wrt ``f`` and ``g``: the arg-min is found
        without grad, then the selected pair's cost is recomputed with grad (the sub-gradient).
        Costs are compared with a strict ``<`` in increasing ``d`` (or flat index), so ties keep
        the smallest one. Never builds the ``[B, H, W, 2D+1, C]`` difference tensor.
    """
    D = _validate(f, g, max_disparity, search, eps)
    B, H, W, C = f.shape
    dt = _compute_dtype(f)
    f32, g32 = f.to(dt), g.to(dt)
    if search == "full":
        ff = f32.reshape(B, H * W, C)
        gf = g32.reshape(B, H * W, C)
        with torch.no_grad():
            best = torch.full((B, H * W), float("inf"), dtype=dt, device=f.device)
            arg = torch.zeros((B, H * W), dtype=torch.int64, device=f.device)
            for k in range(H * W):
                c = _pair_cost(ff, gf[:, k : k + 1], ssd_weight, ncc_weight, eps)
                better = c < best
                best = torch.where(better, c, best)
                arg = torch.where(better, torch.full_like(arg, k), arg)
        sel = gf.gather(1, arg.unsqueeze(-1).expand(B, H * W, C))
        min_cost = _pair_cost(ff, sel, ssd_weight, ncc_weight, eps).reshape(B, H, W)
        return PmaResult(min_cost.mean(dim=(1, 2)), min_cost, arg.reshape(B, H, W))

    with torch.no_grad():
        best = torch.full((B, H, W), float("inf"), dtype=dt, device=f.device)
        arg = torch.zeros((B, H, W), dtype=torch.int64, device=f.device)
        for d in range(-D, D + 1):
            j0, j1 = max(0, -d), min(W, W - d)
            c = torch.full((B, H, W), float("inf"), dtype=dt, device=f.device)
            c[:, :, j0:j1] = _pair_cost(
                f32[:, :, j0:j1], g32[:, :, j0 + d : j1 + d], ssd_weight, ncc_weight, eps
            )
            better = c < best
            best = torch.where(better, c, best)
            arg = torch.where(better, torch.full_like(arg, d), arg)
    cols = arg + torch.arange(W, device=f.device)
    sel = g32.gather(2, cols.unsqueeze(-1).expand(B, H, W, C))
    min_cost = _pair_cost(f32, sel, ssd_weight, ncc_weight, eps)
    return PmaResult(min_cost.mean(dim=(1, 2)), min_cost, arg)


def _grouped(t: torch.Tensor, full: bool) -> torch.Tensor:
    """``[B, H, W, C]`` -> ``[G, L, C]``: rows (``G=B*H, L=W``) or whole maps (``G=B, L=H*W``)."""
    B, H, W, C = t.shape
    return t.reshape(B, H * W, C) if full else t.reshape(B * H, W, C)


def _torch_grouped_min(
    f3: torch.Tensor,
    g3: torch.Tensor,
    D: int,
    ssd_weight: float,
    ncc_weight: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum cost ``[G, L]`` and its absolute ``k`` ``[G, L]`` of grouped ``[G, L, C]`` maps,
    from the matrix of all pair costs ``[G, L, L]`` (``inf`` outside the band); differentiable
    through the gathered minimum."""
    L, C = f3.shape[1:]
    fn2 = f3.square().sum(-1)
    gn2 = g3.square().sum(-1)
    fn = torch.linalg.vector_norm(f3, dim=-1)
    gn = torch.linalg.vector_norm(g3, dim=-1)
    dots = torch.bmm(f3, g3.transpose(1, 2))
    ssd = (fn2.unsqueeze(2) + gn2.unsqueeze(1) - 2.0 * dots).clamp_min(0.0)
    ncc = dots / (fn.unsqueeze(2) * gn.unsqueeze(1) + eps)
    cost = (ssd_weight / C) * ssd + ncc_weight * (1.0 - ncc)
    if D < L - 1:
        pos = torch.arange(L, device=f3.device)
        outside = (pos.unsqueeze(0) - pos.unsqueeze(1)).abs() > D
        cost = cost.masked_fill(outside, float("inf"))
    argk = cost.argmin(dim=-1)
    return cost.gather(-1, argk.unsqueeze(-1)).squeeze(-1), argk


def _argk_to_public(argk: torch.Tensor, shape: torch.Size, full: bool) -> torch.Tensor:
    """Grouped absolute ``k`` ``[G, L]`` -> public ``argmin`` ``[B, H, W]`` (``d`` for rows)."""
    B, H, W, _ = shape
    if full:
        return argk.reshape(B, H, W)
    return (argk - torch.arange(W, device=argk.device)).reshape(B, H, W)


def _argk_from_public(argmin: torch.Tensor, full: bool) -> torch.Tensor:
    """Public ``argmin`` ``[B, H, W]`` -> grouped absolute ``k`` ``[G, L]``."""
    B, H, W = argmin.shape
    if full:
        return argmin.reshape(B, H * W)
    return (argmin + torch.arange(W, device=argmin.device)).reshape(B * H, W)


def pma_cost_torch_fast(
    f: torch.Tensor,
    g: torch.Tensor,
    *,
    max_disparity: int | None = None,
    search: Search = "row",
    ssd_weight: float = 1.0,
    ncc_weight: float = 1.0,
    eps: float = 1e-6,
) -> PmaResult:
    """PMA cost in the fastest plain-torch form: norms plus one batched matmul.

    ``||u - v||^2 = |u|^2 + |v|^2 - 2<u, v>`` with every ``<u, v>`` of a group from one
    ``bmm``: ``[B*H, W, C] x [B*H, C, W]`` for "row", ``[B, HW, C] x [B, C, HW]`` for "full";
    the band ``|k - j| <= D`` is a mask. Memory ``O(G * L^2)`` floats. Arguments and result as in
    :func:`pma_cost_reference` (same tie rule: ``torch.argmin`` returns the first minimum; note
    that a BLAS matmul may round two mathematically equal dot products differently, so an exact
    tie in the inputs is not always an exact tie in the computed costs).
    Differentiable by autograd (through the gathered minimum and the matmul); this is the
    baseline the Triton kernel is measured against.
    """
    D = _validate(f, g, max_disparity, search, eps)
    full = search == "full"
    dt = _compute_dtype(f)
    f3, g3 = _grouped(f.to(dt), full), _grouped(g.to(dt), full)
    min3, argk = _torch_grouped_min(f3, g3, D, ssd_weight, ncc_weight, eps)
    return PmaResult(*_public_outputs(min3, argk, f.shape, full))


def _public_outputs(
    min3: torch.Tensor, argk: torch.Tensor, shape: torch.Size, full: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grouped minima and arg-mins -> ``cost`` [B], ``min_cost`` and ``argmin`` [B, H, W]."""
    B, H, W, _ = shape
    min_cost = min3.reshape(B, H, W)
    return min_cost.mean(dim=(1, 2)), min_cost, _argk_to_public(argk, shape, full)


def _backward_torch_grouped(
    f3: torch.Tensor,
    g3: torch.Tensor,
    argk: torch.Tensor,
    grad_min: torch.Tensor,
    ssd_weight: float,
    ncc_weight: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form sub-gradient of ``sum(grad_min * min_cost)`` wrt grouped ``f3``, ``g3``.

    Same formula as the Triton backward (see :mod:`moca_rt.kernels.pma_triton`); gradients are
    returned in the inputs' dtype.
    """
    G, L, C = f3.shape
    dt = _compute_dtype(f3)
    u = f3.to(dt)
    g32 = g3.to(dt)
    idx = argk.unsqueeze(-1).expand(G, L, C)
    v = g32.gather(1, idx)
    go = grad_min.to(dt)
    s = (u * v).sum(-1)
    nu = torch.linalg.vector_norm(u, dim=-1)
    nv = torch.linalg.vector_norm(v, dim=-1)
    den = nu * nv + eps
    a = 2.0 * ssd_weight / C
    cross = -(a + ncc_weight / den) * go
    uu = (
        a + torch.where(nu > 0, ncc_weight * s * nv / (nu.clamp_min(1e-38) * den * den), 0.0)
    ) * go
    vv = (
        a + torch.where(nv > 0, ncc_weight * s * nu / (nv.clamp_min(1e-38) * den * den), 0.0)
    ) * go
    grad_f = uu.unsqueeze(-1) * u + cross.unsqueeze(-1) * v
    grad_v = vv.unsqueeze(-1) * v + cross.unsqueeze(-1) * u
    grad_g = torch.zeros_like(g32).scatter_add_(1, idx, grad_v)
    return grad_f.to(f3.dtype), grad_g.to(g3.dtype)


def _triton_accepts(f: torch.Tensor) -> bool:
    return f.dtype in _TRITON_DTYPES and triton_can_run_on(f)


class _PmaTritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        f: torch.Tensor,
        g: torch.Tensor,
        D: int,
        full: bool,
        ssd_weight: float,
        ncc_weight: float,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from moca_rt.kernels import pma_triton

        f3, g3 = _grouped(f, full), _grouped(g, full)
        min3, argk = pma_triton.forward_grouped(f3, g3, D, ssd_weight, ncc_weight, eps)
        ctx.save_for_backward(f, g, argk)
        ctx.params = (full, ssd_weight, ncc_weight, eps)  # type: ignore[attr-defined]
        ctx.mark_non_differentiable(argk)
        return _public_outputs(min3, argk, f.shape, full)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        grad_cost: torch.Tensor | None,
        grad_min: torch.Tensor | None,
        _grad_arg: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, ...]:
        from moca_rt.kernels import pma_triton

        f, g, argk = ctx.saved_tensors  # type: ignore[attr-defined]
        full, ssd_weight, ncc_weight, eps = ctx.params  # type: ignore[attr-defined]
        grad_pix = _pixel_grad(grad_cost, grad_min, f)
        gf, gg = pma_triton.backward_grouped(
            _grouped(f, full),
            _grouped(g, full),
            argk,
            _grouped_pix(grad_pix, full),
            ssd_weight,
            ncc_weight,
            eps,
        )
        return gf.reshape(f.shape), gg.reshape(g.shape), None, None, None, None, None


def _pixel_grad(
    grad_cost: torch.Tensor | None, grad_min: torch.Tensor | None, f: torch.Tensor
) -> torch.Tensor:
    """Upstream gradient per pixel ``[B, H, W]`` float32 (float64 for float64 ``f``):
    ``grad_min + grad_cost / (H*W)``, a missing gradient counting as zero. One small
    ``[B, H, W]`` tensor (the kernels read it contiguous)."""
    B, H, W, _ = f.shape
    dt = _compute_dtype(f)
    if grad_cost is None:
        if grad_min is None:
            return torch.zeros((B, H, W), dtype=dt, device=f.device)
        return grad_min.to(dt).contiguous()
    per_pixel = (grad_cost.to(dt) / (H * W)).reshape(B, 1, 1)
    if grad_min is None:
        return per_pixel.expand(B, H, W).contiguous()
    return grad_min.to(dt) + per_pixel


def _grouped_pix(grad_pix: torch.Tensor, full: bool) -> torch.Tensor:
    B, H, W = grad_pix.shape
    return grad_pix.reshape(B, H * W) if full else grad_pix.reshape(B * H, W)


def pma_cost_triton(
    f: torch.Tensor,
    g: torch.Tensor,
    *,
    max_disparity: int | None = None,
    search: Search = "row",
    ssd_weight: float = 1.0,
    ncc_weight: float = 1.0,
    eps: float = 1e-6,
) -> PmaResult:
    """PMA cost with the fused Triton forward and backward kernels (``torch.autograd.Function``).

    Arguments and result as in :func:`pma_cost_reference`. ``f`` and ``g`` must be contiguous
    CUDA tensors of dtype float32, bfloat16 or float16 (any device under ``TRITON_INTERPRET=1``);
    accumulation is float32 and ``cost``/``min_cost`` are float32. Raises ``ValueError`` naming
    the offending property otherwise. Backward: bitwise deterministic when a group has at most
    64 positions (row search with ``W <= 64``, full search with ``H*W <= 64``); beyond that it
    adds into ``g``'s gradient with float32 atomics, so the last bits of ``g``'s gradient may
    differ run to run. See :mod:`moca_rt.kernels.pma_triton` for the two backward paths, the
    FLOPs, bytes and the memory allocated beyond inputs, outputs and gradients.
    """
    D = _validate(f, g, max_disparity, search, eps)
    if f.dtype not in _TRITON_DTYPES:
        raise ValueError(
            f"expected float32, bfloat16 or float16 inputs for the Triton PMA kernel, got {f.dtype}"
        )
    for name, t in (("f", f), ("g", g)):
        if not t.is_contiguous():
            raise ValueError(
                f"expected a contiguous {name} for the Triton PMA kernel, got strides {t.stride()}"
            )
    if not triton_can_run_on(f):
        raise ValueError(
            f"expected CUDA tensors (or TRITON_INTERPRET=1 with Triton installed) for the "
            f"Triton PMA kernel, got device {f.device}"
        )
    cost, min_cost, argmin = _PmaTritonFunction.apply(
        f, g, D, search == "full", float(ssd_weight), float(ncc_weight), float(eps)
    )
    return PmaResult(cost, min_cost, argmin)


def select_pma_backend(f: torch.Tensor) -> Literal["torch", "triton"]:
    """Backend :func:`pma_cost` uses for ``f``: Triton where ``choose_backend`` picks it (or
    ``cupy``, for which PMA has no kernel) and the kernel takes the input, torch otherwise."""
    if choose_backend(f) == "torch":
        return "torch"
    return "triton" if _triton_accepts(f) else "torch"


@torch.library.custom_op("moca_rt::pma_cost", mutates_args=())
def _pma_cost_op(
    f: torch.Tensor,
    g: torch.Tensor,
    max_disparity: int,
    full: bool,
    ssd_weight: float,
    ncc_weight: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    f3, g3 = _grouped(f.contiguous(), full), _grouped(g.contiguous(), full)
    if select_pma_backend(f) == "triton":
        from moca_rt.kernels import pma_triton

        min3, argk = pma_triton.forward_grouped(f3, g3, max_disparity, ssd_weight, ncc_weight, eps)
    else:
        dt = _compute_dtype(f)
        min3, argk = _torch_grouped_min(
            f3.to(dt), g3.to(dt), max_disparity, ssd_weight, ncc_weight, eps
        )
    return _public_outputs(min3, argk, f.shape, full)


@_pma_cost_op.register_fake
def _pma_cost_fake(
    f: torch.Tensor,
    g: torch.Tensor,
    max_disparity: int,
    full: bool,
    ssd_weight: float,
    ncc_weight: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, W, _ = f.shape
    dt = _compute_dtype(f)
    return (
        f.new_empty((B,), dtype=dt),
        f.new_empty((B, H, W), dtype=dt),
        f.new_empty((B, H, W), dtype=torch.int64),
    )


@torch.library.custom_op("moca_rt::pma_cost_backward", mutates_args=())
def _pma_cost_backward_op(
    f: torch.Tensor,
    g: torch.Tensor,
    argmin: torch.Tensor,
    grad_pix: torch.Tensor,
    full: bool,
    ssd_weight: float,
    ncc_weight: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    f3, g3 = _grouped(f.contiguous(), full), _grouped(g.contiguous(), full)
    argk = _argk_from_public(argmin, full).contiguous()
    go = _grouped_pix(grad_pix, full).contiguous()
    if select_pma_backend(f) == "triton":
        from moca_rt.kernels import pma_triton

        gf, gg = pma_triton.backward_grouped(f3, g3, argk, go, ssd_weight, ncc_weight, eps)
    else:
        gf, gg = _backward_torch_grouped(f3, g3, argk, go, ssd_weight, ncc_weight, eps)
    return gf.reshape(f.shape), gg.reshape(g.shape)


@_pma_cost_backward_op.register_fake
def _pma_cost_backward_fake(
    f: torch.Tensor,
    g: torch.Tensor,
    argmin: torch.Tensor,
    grad_pix: torch.Tensor,
    full: bool,
    ssd_weight: float,
    ncc_weight: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(f), torch.empty_like(g)


def _op_setup_context(
    ctx: torch.autograd.function.FunctionCtx,
    inputs: tuple[object, ...],
    output: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    f, g, _, full, ssd_weight, ncc_weight, eps = inputs
    ctx.save_for_backward(f, g, output[2])  # type: ignore[arg-type]
    ctx.params = (full, ssd_weight, ncc_weight, eps)  # type: ignore[attr-defined]


def _op_backward(
    ctx: torch.autograd.function.FunctionCtx,
    grad_cost: torch.Tensor | None,
    grad_min: torch.Tensor | None,
    _grad_arg: torch.Tensor | None,
) -> tuple[torch.Tensor | None, ...]:
    f, g, argmin = ctx.saved_tensors  # type: ignore[attr-defined]
    full, ssd_weight, ncc_weight, eps = ctx.params  # type: ignore[attr-defined]
    grad_pix = _pixel_grad(grad_cost, grad_min, f)
    gf, gg = torch.ops.moca_rt.pma_cost_backward(
        f, g, argmin, grad_pix, full, ssd_weight, ncc_weight, eps
    )
    return gf, gg, None, None, None, None, None


_pma_cost_op.register_autograd(_op_backward, setup_context=_op_setup_context)


def pma_cost(
    f: torch.Tensor,
    g: torch.Tensor,
    *,
    max_disparity: int | None = None,
    search: Search = "row",
    ssd_weight: float = 1.0,
    ncc_weight: float = 1.0,
    eps: float = 1e-6,
) -> PmaResult:
    """PMA cost through the best available backend; the entry point for training code.

    Arguments and result as in :func:`pma_cost_reference`. Runs ``torch.ops.moca_rt.pma_cost``
    (forward and a registered backward, both with fake implementations, so ``torch.compile``
    with ``fullgraph=True`` traces through it). The backend is chosen per call by
    :func:`select_pma_backend`: the Triton kernels for CUDA tensors (or under
    ``TRITON_INTERPRET=1``) unless ``MOCA_RT_KERNELS=torch``; the torch path (the
    :func:`pma_cost_torch_fast` formulation with a closed-form backward) otherwise, including
    for dtypes the kernel does not take (float64). Non-contiguous inputs are made contiguous.
    """
    D = _validate(f, g, max_disparity, search, eps)
    cost, min_cost, argmin = torch.ops.moca_rt.pma_cost(
        f, g, D, search == "full", float(ssd_weight), float(ncc_weight), float(eps)
    )
    return PmaResult(cost, min_cost, argmin)


def pma_triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    alpha: float = 0.3,
    *,
    max_disparity: int | None = None,
    search: Search = "row",
    ssd_weight: float = 1.0,
    ncc_weight: float = 1.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """MoCA's triplet loss ``mean_b max(0, C(a, p) - C(a, n) + alpha)`` -> scalar (float32).

    ``anchor``, ``positive``, ``negative``: ``[B, H, W, C]`` audio-enhanced feature maps; the
    PMA costs ``C`` come from :func:`pma_cost` with the given keyword arguments.
    """
    if negative.shape != anchor.shape:
        raise ValueError(
            f"expected negative of shape {tuple(anchor.shape)}, got {tuple(negative.shape)}"
        )
    costs = [
        pma_cost(
            anchor,
            other,
            max_disparity=max_disparity,
            search=search,
            ssd_weight=ssd_weight,
            ncc_weight=ncc_weight,
            eps=eps,
        ).cost
        for other in (positive, negative)
    ]
    return torch.clamp_min(costs[0] - costs[1] + alpha, 0.0).mean()
