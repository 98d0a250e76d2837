"""PMA cost: reference vs bmm formulation vs Triton kernels vs the dispatcher op.

Triton runs on CPU tensors under ``TRITON_INTERPRET=1``, which only works when the variable is
set before triton is first imported in the process: once another test module has imported triton
in compiled mode (``torch.compile`` and custom-op calls do), interpreted launches fail. So the
interpreter tests run in a fresh child pytest process of this file with the variable set
(``test_fresh_process_suite``) and skip in the parent; ``TRITON_INTERPRET=1 pytest
tests/test_kernels_pma.py`` runs them in-process. Interpreter shapes are small and tiles big.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
from conftest import requires_cuda, run_in_interpreter_child

from moca_rt.kernels import pma
from moca_rt.kernels.pma import (
    PmaResult,
    pma_cost,
    pma_cost_reference,
    pma_cost_torch_fast,
    pma_cost_triton,
    pma_triplet_loss,
    select_pma_backend,
)

# (max_disparity, search): whole scanline, the no-matching ablation, a narrow band, full search.
CONFIGS = [(None, "row"), (0, "row"), (2, "row"), (None, "full")]
CPU_SHAPES = [(2, 5, 7, 37), (1, 3, 16, 96), (3, 2, 1, 5)]


INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
CHILD_ONLY = "runs in the TRITON_INTERPRET=1 child process of test_fresh_process_suite"


@pytest.mark.skipif(INTERPRETING, reason="already interpreting in this process")
def test_fresh_process_suite() -> None:
    run_in_interpreter_child(__file__, timeout=600)


@pytest.fixture
def interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    if not INTERPRETING:
        pytest.skip(CHILD_ONLY)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("MOCA_RT_KERNELS", raising=False)


@pytest.fixture
def no_interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("MOCA_RT_KERNELS", raising=False)


def _inputs(
    shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh random f, g (never zero: normal plus an offset) and an upstream weight per pixel."""
    gen = torch.Generator().manual_seed(seed)
    f = torch.randn(shape, generator=gen) + 0.1
    g = torch.randn(shape, generator=gen) - 0.1
    w = torch.rand(shape[:3], generator=gen) + 0.5
    return f.to(device, dtype), g.to(device, dtype), w.to(device)


def assert_close_report(
    name: str, ours: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float = 0.0
) -> None:
    """Fail naming the mismatch count, the first bad indices with both values, and NaN/inf."""
    if ours.shape != ref.shape:
        raise AssertionError(f"{name}: shape {tuple(ours.shape)} vs ref {tuple(ref.shape)}")
    a = ours.detach().to("cpu", torch.float64)
    b = ref.detach().to("cpu", torch.float64)
    finite = torch.isfinite(a)
    bad = ~finite | ((a - b).abs() > atol + rtol * b.abs())
    if bad.any():
        first = bad.nonzero()[:5].tolist()
        shown = ", ".join(
            f"{tuple(i)}: {a[tuple(i)].item():.6g} vs {b[tuple(i)].item():.6g}" for i in first
        )
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.numel()} elements off (atol={atol}, rtol={rtol}); "
            f"nan={int(a.isnan().sum())} inf={int(a.isinf().sum())}; first bad {shown}"
        )


def _run(
    fn: object, f: torch.Tensor, g: torch.Tensor, w: torch.Tensor, **kw: object
) -> tuple[PmaResult, torch.Tensor, torch.Tensor]:
    """Forward through ``fn`` and gradients of ``3*sum(cost) + sum(w * min_cost)`` wrt f, g."""
    fr = f.detach().clone().requires_grad_(True)
    gr = g.detach().clone().requires_grad_(True)
    res = fn(fr, gr, **kw)  # type: ignore[operator]
    loss = 3.0 * res.cost.sum() + (w * res.min_cost).sum()
    gf, gg = torch.autograd.grad(loss, (fr, gr))
    return res, gf, gg


def _compare(
    ours: tuple[PmaResult, torch.Tensor, torch.Tensor],
    ref: tuple[PmaResult, torch.Tensor, torch.Tensor],
    tag: str,
    atol: float = 2e-5,
    grad_atol: float = 2e-5,
) -> None:
    (r, gf, gg), (q, qf, qg) = ours, ref
    assert r.argmin.dtype == torch.int64 and r.argmin.shape == q.argmin.shape
    mism = (r.argmin != q.argmin).nonzero()[:5].tolist()
    assert not mism, f"{tag}: argmin differs first at {mism}"
    assert r.min_cost.dtype == torch.float32, f"{tag}: min_cost dtype {r.min_cost.dtype}"
    assert_close_report(f"{tag} min_cost", r.min_cost, q.min_cost, atol, 1e-5)
    assert_close_report(f"{tag} cost", r.cost, q.cost, atol, 1e-5)
    assert_close_report(f"{tag} grad f", gf, qf, grad_atol, 1e-4)
    assert_close_report(f"{tag} grad g", gg, qg, grad_atol, 1e-4)


def _brute_force(
    f: torch.Tensor, g: torch.Tensor, max_disparity: int | None, search: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DESIGN formula over the full [B, H, W, K, C] difference tensor, in float64."""
    B, H, W, C = f.shape
    f64, g64 = f.double(), g.double()
    if search == "full":
        u = f64.reshape(B, H * W, 1, C)
        v = g64.reshape(B, 1, H * W, C)
        valid = torch.ones(H * W, H * W, dtype=torch.bool)
        offset = torch.zeros(H * W, dtype=torch.int64)
    else:
        D = W - 1 if max_disparity is None else max_disparity
        u = f64.reshape(B * H, W, 1, C)
        v = g64.reshape(B * H, 1, W, C)
        pos = torch.arange(W)
        valid = (pos[None, :] - pos[:, None]).abs() <= D
        offset = pos
    ssd = (u - v).pow(2).sum(-1) / C
    ncc = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1) + 1e-6)
    cost = (ssd + 1.0 - ncc).masked_fill(~valid, float("inf"))
    best, k = cost.min(dim=-1)
    return best.reshape(B, H, W), (k - offset).reshape(B, H, W)


def _compare_with_reference(
    impl: Callable[..., PmaResult],
    shape: tuple[int, ...],
    max_disparity: int | None,
    search: str,
    seed: int,
) -> None:
    """``impl`` against :func:`pma_cost_reference` on the same seeded inputs: values, arg-mins
    and gradients."""
    f, g, w = _inputs(shape, seed=seed)
    kw = dict(max_disparity=max_disparity, search=search)
    ours = _run(impl, f, g, w, **kw)
    _compare(ours, _run(pma_cost_reference, f, g, w, **kw), f"{impl.__name__} {shape} {kw}")


def _runner_up_gap(
    f: torch.Tensor, g: torch.Tensor, max_disparity: int | None, search: str
) -> float:
    """Smallest gap between the best and the second-best candidate over all pixels."""
    B, H, W, C = f.shape
    f64, g64 = f.double(), g.double()
    if search == "full":
        u, v = f64.reshape(B, H * W, 1, C), g64.reshape(B, 1, H * W, C)
        valid = torch.ones(H * W, H * W, dtype=torch.bool)
    else:
        D = W - 1 if max_disparity is None else max_disparity
        u, v = f64.reshape(B * H, W, 1, C), g64.reshape(B * H, 1, W, C)
        pos = torch.arange(W)
        valid = (pos[None, :] - pos[:, None]).abs() <= D
    cost = (u - v).pow(2).sum(-1) / C + 1.0 - (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
    two = cost.masked_fill(~valid, float("inf")).topk(2, dim=-1, largest=False).values
    return float((two[..., 1] - two[..., 0]).min())


@pytest.mark.parametrize(("max_disparity", "search"), CONFIGS)
def test_reference_matches_brute_force_definition(max_disparity: int | None, search: str) -> None:
    f, g, _ = _inputs((2, 4, 6, 11), seed=1)
    res = pma_cost_reference(f, g, max_disparity=max_disparity, search=search)  # type: ignore[arg-type]
    best, arg = _brute_force(f, g, max_disparity, search)
    assert torch.equal(res.argmin, arg)
    assert_close_report("min_cost", res.min_cost, best, 1e-5, 1e-6)
    assert_close_report("cost", res.cost, best.mean(dim=(1, 2)), 1e-5, 1e-6)
    if max_disparity == 0:
        assert torch.equal(res.argmin, torch.zeros_like(res.argmin))


@pytest.mark.parametrize("shape", CPU_SHAPES)
@pytest.mark.parametrize(("max_disparity", "search"), CONFIGS)
def test_torch_fast_matches_reference(
    shape: tuple[int, ...], max_disparity: int | None, search: str
) -> None:
    _compare_with_reference(pma_cost_torch_fast, shape, max_disparity, search, seed=2)


@pytest.mark.parametrize(
    ("shape", "max_disparity", "search"),
    [
        *[((2, 5, 7, 37), d, s) for d, s in CONFIGS],
        ((1, 3, 16, 96), None, "row"),
        ((1, 3, 16, 96), 3, "row"),
        ((3, 2, 1, 5), None, "full"),
        ((1, 2, 70, 5), 20, "row"),  # several j and k tiles, band crossing tiles
        ((1, 9, 10, 6), None, "full"),  # L = 90: several j tiles x two k tiles
        ((1, 2, 5, 300), None, "row"),  # C = 300: three channel chunks, the last one partial
    ],
)
def test_triton_interpreter_matches_reference(
    interpret: None, shape: tuple[int, ...], max_disparity: int | None, search: str
) -> None:
    _compare_with_reference(pma_cost_triton, shape, max_disparity, search, seed=3)


@pytest.mark.parametrize(("dtype", "grad_atol"), [(torch.bfloat16, 3e-2), (torch.float16, 4e-3)])
def test_triton_interpreter_half_precision(
    interpret: None, dtype: torch.dtype, grad_atol: float
) -> None:
    f, g, w = _inputs((2, 3, 9, 40), seed=4, dtype=dtype)
    ours = _run(pma_cost_triton, f, g, w)
    ref = _run(pma_cost_reference, f, g, w)
    assert ours[1].dtype == dtype and ours[2].dtype == dtype
    _compare(ours, ref, f"triton {dtype}", atol=1e-4, grad_atol=grad_atol)


def _grouped_inputs(
    G: int, L: int, C: int, seed: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grouped f, g ``[G, L, C]``, an arg-min with repeated and never-chosen k, and weights."""
    gen = torch.Generator().manual_seed(seed)
    f = (torch.randn(G, L, C, generator=gen) + 0.1).to(dtype)
    g = (torch.randn(G, L, C, generator=gen) - 0.1).to(dtype)
    # k drawn from the first ceil(L/2) positions: many collisions, the rest never chosen
    argk = torch.randint(0, (L + 1) // 2, (G, L), generator=gen)
    go = torch.rand(G, L, generator=gen) + 0.5
    return f, g, argk, go


def _grouped_grad_ref(
    f: torch.Tensor, g: torch.Tensor, argk: torch.Tensor, go: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Autograd of ``sum(go * c(f_j, g_argk_j))`` in float64 (the DESIGN formula)."""
    fr = f.detach().double().requires_grad_(True)
    gr = g.detach().double().requires_grad_(True)
    sel = gr.gather(1, argk.unsqueeze(-1).expand_as(gr))
    c = _pair_cost64(fr, sel)
    gf, gg = torch.autograd.grad((c * go.double()).sum(), (fr, gr))
    return gf, gg


# dtype -> tolerance relative to the largest |gradient| (the result is rounded to the dtype)
GROUPED_TOL = {torch.float32: 2e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("G", "L", "C"), [(3, 13, 77), (2, 40, 20)])
def test_triton_backward_paths_match_reference(
    interpret: None, dtype: torch.dtype, G: int, L: int, C: int
) -> None:
    from moca_rt.kernels import pma_triton

    f, g, argk, go = _grouped_inputs(G, L, C, seed=30 + L, dtype=dtype)
    qf, qg = _grouped_grad_ref(f, g, argk, go)
    tol = GROUPED_TOL[dtype]
    grads = {}
    for det in (True, False):
        gf, gg = pma_triton.backward_grouped(f, g, argk, go, 1.0, 1.0, 1e-6, deterministic=det)
        assert gf.dtype == dtype and gg.dtype == dtype
        for name, ours, want in (("grad f", gf, qf), ("grad g", gg, qg)):
            scale = float(want.abs().max())
            assert_close_report(f"det={det} {dtype} {name}", ours, want, tol * scale, tol)
        grads[det] = (gf, gg)
    # positions nobody chose get exactly zero (the deterministic path writes them, no zero-fill)
    unchosen = torch.ones(G, L, dtype=torch.bool).scatter_(1, argk, False)
    assert unchosen.any()
    assert torch.equal(grads[True][1][unchosen], torch.zeros_like(grads[True][1][unchosen]))
    # The two paths agree to the last bits of one fp32 sum, rounded to the dtype: within one
    # unit in the last place (Triton 3.7's interpreter truncates fp32 -> bf16 in the kernel's
    # cast, where the GPU and torch round to nearest).
    ulp = {torch.float32: 1e-6, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[dtype]
    for i, name in enumerate(("grad f", "grad g")):
        a, b = grads[True][i], grads[False][i]
        scale = float(b.abs().max())
        assert_close_report(f"{dtype} {name} det vs atomic", a, b, 1e-6 * scale, ulp)


def test_triton_backward_deterministic_is_bitwise_reproducible(interpret: None) -> None:
    from moca_rt.kernels import pma_triton

    f, g, argk, go = _grouped_inputs(4, 16, 50, seed=40, dtype=torch.float32)
    first = pma_triton.backward_grouped(f, g, argk, go, 1.0, 0.5, 1e-6)
    second = pma_triton.backward_grouped(f, g, argk, go, 1.0, 0.5, 1e-6)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    with pytest.raises(ValueError, match=r"expected L <= 64 for the deterministic backward"):
        z = torch.zeros(1, 65, 4) + 1.0
        pma_triton.backward_grouped(
            z,
            z,
            torch.zeros(1, 65, dtype=torch.int64),
            torch.ones(1, 65),
            1.0,
            1.0,
            1e-6,
            deterministic=True,
        )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_interpreter_irregular_rows_half(interpret: None, dtype: torch.dtype) -> None:
    # H > 1 row search with irregular L and C, through the autograd function (deterministic path)
    f, g, w = _inputs((2, 3, 13, 77), seed=41, dtype=dtype)
    ours = _run(pma_cost_triton, f, g, w, max_disparity=4)
    ref = _run(pma_cost_reference, f, g, w, max_disparity=4)
    assert ours[1].dtype == dtype and ours[2].dtype == dtype
    grad_atol = 3e-2 if dtype == torch.bfloat16 else 4e-3
    _compare(ours, ref, f"triton rows {dtype}", atol=1e-4, grad_atol=grad_atol)


def test_pixel_grad_combines_upstream_gradients() -> None:
    f = torch.ones(2, 3, 4, 5)
    gen = torch.Generator().manual_seed(42)
    gc, gm = torch.rand(2, generator=gen), torch.rand(2, 3, 4, generator=gen)
    want = gm + gc.reshape(2, 1, 1) / 12.0
    for a, b, expect in (
        (gc, gm, want),
        (gc, None, want - gm),
        (None, gm, gm),
        (None, None, torch.zeros(2, 3, 4)),
    ):
        out = pma._pixel_grad(a, b, f)
        assert out.shape == (2, 3, 4) and out.dtype == torch.float32 and out.is_contiguous()
        assert_close_report("pixel grad", out, expect, 1e-7)
    assert pma._pixel_grad(gc.double(), None, f.double()).dtype == torch.float64


def test_backward_path_choice_by_group_length() -> None:
    from moca_rt.kernels import pma_triton

    assert pma_triton.DETERMINISTIC_MAX_L == 64
    for L, det in ((1, True), (16, True), (64, True), (65, False), (256, False)):
        cfg = pma_triton.bwd_config(8, L, 1280, torch.bfloat16)
        assert cfg.deterministic is det, (L, cfg)
        if det:  # one program holds the whole group, tiles >= 16 for tl.dot
            assert cfg.block_j >= max(L, 16) and cfg.block_c >= 16
    # the real shapes: row search (G=128, L=16) deterministic, full search (G=8, L=256) atomic
    names = [s.name for s in pma_triton.aot_specs() if s.name.startswith("pma_bwd")]
    assert len(names) == 6
    assert all("deterministic" in n for n in names if " row " in n)
    assert all("atomic" in n for n in names if " full " in n)


def test_ties_pick_the_smallest_disparity(interpret: None) -> None:
    B, H, W, C = 2, 3, 7, 37
    f, g, _ = _inputs((B, H, W, C), seed=5)
    # Small integers: every dot product and norm is exact in fp32 whatever the kernel's tiling
    # and accumulation order, so equal positions give bit-equal costs (true ties).
    f, g = (2 * f).round(), (2 * g).round()
    g_row = g[:, :, :1].expand(B, H, W, C).contiguous()  # every column of a row is the same
    g_map = g[:, :1, :1].expand(B, H, W, C).contiguous()  # every position is the same
    j = torch.arange(W)
    for fn in (pma_cost_reference, pma_cost_triton):
        for D in (None, 2):
            expect = -torch.clamp(j, max=W - 1 if D is None else D).expand(B, H, W)
            got = fn(f, g_row, max_disparity=D).argmin
            assert torch.equal(got, expect), f"{fn.__name__} D={D}: {got[0, 0]} vs {expect[0, 0]}"
        got = fn(f, g_map, search="full").argmin
        assert torch.equal(got, torch.zeros_like(got)), f"{fn.__name__} full: {got[0, 0]}"


def test_max_disparity_above_width_means_whole_scanline() -> None:
    f, g, _ = _inputs((1, 2, 5, 8), seed=6)
    a = pma_cost_reference(f, g)
    b = pma_cost_reference(f, g, max_disparity=100)
    assert torch.equal(a.argmin, b.argmin) and torch.equal(a.min_cost, b.min_cost)
    assert int(a.argmin.abs().max()) <= 4


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.ones(1, 1, 1, 1)
    monkeypatch.delenv("MOCA_RT_KERNELS", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert select_pma_backend(x) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert select_pma_backend(x) == "triton"
    assert select_pma_backend(x.double()) == "torch"  # the kernel takes no float64
    monkeypatch.setenv("MOCA_RT_KERNELS", "torch")
    assert select_pma_backend(x) == "torch"
    monkeypatch.setenv("MOCA_RT_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET")
    assert select_pma_backend(x) == "torch"  # forced, but Triton cannot run on CPU tensors


@pytest.mark.parametrize("mode", ["torch", "triton"])
@pytest.mark.parametrize(("max_disparity", "search"), [(None, "row"), (1, "row"), (None, "full")])
def test_dispatcher_matches_reference(
    monkeypatch: pytest.MonkeyPatch, mode: str, max_disparity: int | None, search: str
) -> None:
    if mode == "triton" and not INTERPRETING:
        pytest.skip(CHILD_ONLY)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("MOCA_RT_KERNELS", mode)
    f, g, w = _inputs((2, 3, 6, 19), seed=7)
    assert select_pma_backend(f) == mode
    kw = dict(max_disparity=max_disparity, search=search)
    ours = _run(pma_cost, f, g, w, **kw)
    _compare(ours, _run(pma_cost_reference, f, g, w, **kw), f"pma_cost[{mode}] {kw}")
    # non-contiguous views of the same values go through too (made contiguous)
    fv, gv = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (f, g))
    assert not fv.is_contiguous()
    r = pma_cost(fv, gv, **kw)  # type: ignore[arg-type]
    assert torch.equal(r.argmin, ours[0].argmin)


def test_dispatcher_float64_falls_back_under_interpreter(interpret: None) -> None:
    f, g, w = _inputs((1, 2, 5, 7), seed=8, dtype=torch.float64)
    ours = _run(pma_cost, f, g, w)
    ref = _run(pma_cost_reference, f, g, w)
    assert ours[0].min_cost.dtype == torch.float64
    assert torch.equal(ours[0].argmin, ref[0].argmin)
    assert_close_report("grad f", ours[1], ref[1], 1e-12, 1e-10)


@pytest.mark.parametrize(("max_disparity", "search"), [(None, "row"), (1, "row"), (None, "full")])
def test_gradcheck_float64(no_interpret: None, max_disparity: int | None, search: str) -> None:
    f, g, _ = _inputs((1, 2, 3, 4), seed=9, dtype=torch.float64)
    kw = dict(max_disparity=max_disparity, search=search)
    # near-ties would make the arg-min jump under the finite differences: make sure there are none
    assert _runner_up_gap(f, g, max_disparity, search) > 1e-3
    for fn in (pma_cost_reference, pma_cost):

        def cost(a: torch.Tensor, b: torch.Tensor, fn: object = fn) -> torch.Tensor:
            r = fn(a, b, **kw)  # type: ignore[operator]
            return r.cost * 2.0 + r.min_cost.square().sum()

        fr, gr = f.clone().requires_grad_(True), g.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(cost, (fr, gr), eps=1e-6, atol=1e-6), fn


def test_compile_fullgraph_through_custom_op(no_interpret: None) -> None:
    f, g, w = _inputs((2, 3, 6, 10), seed=10)

    def fn(a: torch.Tensor, b: torch.Tensor) -> PmaResult:
        return pma_cost(a, b, max_disparity=3)

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    ours = _run(compiled, f, g, w)
    _compare(ours, _run(fn, f, g, w), "compiled", atol=1e-6, grad_atol=1e-6)
    _compare(ours, _run(pma_cost_reference, f, g, w, max_disparity=3), "compiled vs ref")


def test_custom_op_registration(no_interpret: None) -> None:
    f, g, _ = _inputs((1, 2, 5, 6), seed=11)
    f.requires_grad_(True)
    g.requires_grad_(True)
    for full, D in ((False, 2), (True, 9)):
        torch.library.opcheck(torch.ops.moca_rt.pma_cost.default, (f, g, D, full, 1.0, 1.0, 1e-6))


def test_triplet_loss(no_interpret: None) -> None:
    a, p, _ = _inputs((3, 2, 5, 12), seed=12)
    far = torch.randn(3, 2, 5, 12, generator=torch.Generator().manual_seed(13)) * 3.0
    n = a + 0.3 * far / 3.0  # a negative closer than the positive: the hinge is active
    ar = a.clone().requires_grad_(True)
    loss = pma_triplet_loss(ar, p, n, alpha=0.3)
    cp = pma_cost_reference(a, p).cost
    cn = pma_cost_reference(a, n).cost
    expect = torch.clamp(cp - cn + 0.3, min=0.0).mean()
    assert loss.dim() == 0 and float(loss.detach()) > 0.3
    assert_close_report("loss", loss, expect, 1e-6, 1e-5)
    (grad,) = torch.autograd.grad(loss, ar)
    assert float(grad.abs().sum()) > 0.0
    # a positive identical to the anchor with a far negative gives exactly zero loss; a negative
    # identical to the anchor (cost ~0) leaves at least alpha.
    zero = pma_triplet_loss(a, a, far * 10.0, alpha=0.3)
    assert float(zero) == 0.0
    same = pma_triplet_loss(a, p, a, alpha=0.3)
    assert float(same) >= 0.3


def test_mismatch_report_names_first_bad_index_and_nan() -> None:
    ref = torch.zeros(2, 3)
    ours = ref.clone()
    ours[1, 2] = float("nan")
    ours[0, 1] = 1.0
    with pytest.raises(AssertionError, match=r"2 of 6 .*nan=1 inf=0; first bad \(0, 1\)"):
        assert_close_report("x", ours, ref, 1e-3)


BAD_INPUTS = [
    ((2, 3, 4, 5), (2, 3, 4, 6), torch.float32, {}, "one shape"),
    ((3, 4, 5), (3, 4, 5), torch.float32, {}, "4-D"),
    ((1, 2, 3, 4), (1, 2, 3, 4), torch.int64, {}, "floating-point"),
    ((1, 2, 3, 4), (1, 2, 3, 4), torch.float32, {"search": "col"}, "search in"),
    ((1, 2, 3, 4), (1, 2, 3, 4), torch.float32, {"max_disparity": -1}, "max_disparity >= 0"),
    (
        (1, 2, 3, 4),
        (1, 2, 3, 4),
        torch.float32,
        {"max_disparity": 1, "search": "full"},
        "max_disparity=None",
    ),
    ((1, 0, 3, 4), (1, 0, 3, 4), torch.float32, {}, "non-empty"),
]


@pytest.mark.parametrize(("fs", "gs", "dtype", "kw", "msg"), BAD_INPUTS)
def test_bad_input_raises_value_error(
    interpret: None, fs: tuple, gs: tuple, dtype: torch.dtype, kw: dict, msg: str
) -> None:
    f = torch.ones(fs).to(dtype)
    g = torch.ones(gs).to(dtype)
    for fn in (pma_cost_reference, pma_cost_torch_fast, pma_cost_triton, pma_cost):
        with pytest.raises(ValueError, match=msg):
            fn(f, g, **kw)
    with pytest.raises(ValueError, match="expected negative of shape"):
        pma_triplet_loss(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 5))


def test_triton_launcher_rejects_what_it_cannot_take(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    f = torch.rand(1, 2, 3, 4) + 0.1
    with pytest.raises(ValueError, match=r"float32, bfloat16 or float16.*float64"):
        pma_cost_triton(f.double(), f.double())
    with pytest.raises(ValueError, match="contiguous f"):
        pma_cost_triton(f.transpose(1, 2), f.transpose(1, 2))
    with pytest.raises(ValueError, match="one dtype"):
        pma_cost_triton(f, f.half())
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match=r"expected CUDA tensors .* got device cpu"):
        pma_cost_triton(f, f)
    from moca_rt.kernels import pma_triton

    with pytest.raises(ValueError, match=r"max_disparity in \[0, 2\]"):
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        pma_triton.forward_grouped(f.reshape(2, 3, 4), f.reshape(2, 3, 4), 5, 1.0, 1.0, 1e-6)


# ---------------------------------------------------------------------------- GPU (real shapes)

GPU_TOL = {  # dtype -> (cost atol, relative gradient tolerance vs max |grad|)
    torch.float32: (2e-4, 1e-4),
    torch.bfloat16: (2e-3, 2e-2),
    torch.float16: (2e-3, 4e-3),
}


def _pair_cost64(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    u, v = u.double(), v.double()
    ssd = (u - v).pow(2).sum(-1) / u.shape[-1]
    return ssd + 1.0 - (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1) + 1e-6)


def _selected(g: torch.Tensor, argmin: torch.Tensor, search: str) -> torch.Tensor:
    B, H, W, C = g.shape
    if search == "full":
        flat = g.reshape(B, H * W, C)
        return flat.gather(1, argmin.reshape(B, H * W, 1).expand(-1, -1, C)).reshape(g.shape)
    cols = argmin + torch.arange(W, device=g.device)
    return g.gather(2, cols.unsqueeze(-1).expand(-1, -1, -1, C))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("shape", "search"),
    [
        ((8, 16, 16, 1280), "row"),
        ((8, 16, 16, 1280), "full"),
        ((8, 16, 16, 96), "row"),
        ((8, 16, 16, 96), "full"),
        ((3, 5, 7, 37), "row"),
        ((3, 5, 7, 37), "full"),
    ],
)
def test_triton_gpu_matches_reference(
    no_interpret: None, dtype: torch.dtype, shape: tuple[int, ...], search: str
) -> None:
    cost_atol, grad_rel = GPU_TOL[dtype]
    f, g, w = _inputs(shape, seed=20, dtype=dtype, device="cuda")
    res, gf, gg = _run(pma_cost_triton, f, g, w, search=search)
    ref = pma_cost_reference(f, g, search=search)
    assert_close_report(f"{dtype} min_cost", res.min_cost, ref.min_cost, cost_atol, 1e-4)
    assert_close_report(f"{dtype} cost", res.cost, ref.cost, cost_atol, 1e-4)
    # Near-ties may flip under a different summation order: a differing arg-min must still be
    # (within tolerance) a minimum by the float64 formula.
    ours_sel = _pair_cost64(f, _selected(g, res.argmin, search))
    ref_sel = _pair_cost64(f, _selected(g, ref.argmin, search))
    assert_close_report(f"{dtype} cost at chosen argmin", ours_sel, ref_sel, cost_atol, 1e-4)
    assert (res.argmin == ref.argmin).float().mean() > 0.99
    # Gradients given the kernel's own arg-min, by autograd of the plain formula.
    fr = f.detach().float().requires_grad_(True)
    gr = g.detach().float().requires_grad_(True)
    sel = _selected(gr, res.argmin, search)
    c = _pair_cost64(fr, sel)
    hw = shape[1] * shape[2]
    qf, qg = torch.autograd.grad((c * (w.double() + 3.0 / hw)).sum(), (fr, gr))
    assert gf.dtype == dtype and gg.dtype == dtype
    for name, ours, want in (("grad f", gf, qf), ("grad g", gg, qg)):
        scale = float(want.abs().max())
        assert_close_report(f"{dtype} {name}", ours, want, grad_rel * scale)


@requires_cuda
def test_dispatcher_on_gpu_uses_triton_and_compiles(no_interpret: None) -> None:
    f, g, w = _inputs((8, 16, 16, 96), seed=21, device="cuda")
    assert select_pma_backend(f) == "triton"

    def fn(a: torch.Tensor, b: torch.Tensor) -> PmaResult:
        return pma_cost(a, b)

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    ours = _run(compiled, f, g, w)
    ref = _run(pma_cost_triton, f, g, w)
    assert torch.equal(ours[0].argmin, ref[0].argmin)
    assert_close_report("compiled min_cost", ours[0].min_cost, ref[0].min_cost, 1e-5, 1e-5)
    assert_close_report("compiled grad f", ours[1], ref[1], 1e-5, 1e-4)
    assert pma.select_pma_backend(f.double()) == "torch"


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_gpu_row_backward_bitwise_reproducible(
    no_interpret: None, dtype: torch.dtype
) -> None:
    f, g, w = _inputs((8, 16, 16, 1280), seed=22, dtype=dtype, device="cuda")
    runs = [_run(pma_cost_triton, f, g, w) for _ in range(3)]
    for other in runs[1:]:
        assert torch.equal(other[1], runs[0][1]) and torch.equal(other[2], runs[0][2])


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_gpu_backward_paths_agree(no_interpret: None, dtype: torch.dtype) -> None:
    from moca_rt.kernels import pma_triton

    f, g, argk, go = _grouped_inputs(128, 16, 1280, seed=23, dtype=dtype)
    f, g, argk, go = f.cuda(), g.cuda(), argk.cuda(), go.cuda()
    det = pma_triton.backward_grouped(f, g, argk, go, 1.0, 1.0, 1e-6)
    atomic = pma_triton.backward_grouped(f, g, argk, go, 1.0, 1.0, 1e-6, deterministic=False)
    qf, qg = _grouped_grad_ref(f.cpu(), g.cpu(), argk.cpu(), go.cpu())
    ulp = {torch.float32: 1e-6, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[dtype]
    for i, (name, want) in enumerate((("grad f", qf), ("grad g", qg))):
        scale = float(want.abs().max())
        assert_close_report(f"{dtype} {name} det", det[i], want, GPU_TOL[dtype][1] * scale)
        assert_close_report(f"{dtype} {name} det vs atomic", det[i], atomic[i], 1e-6 * scale, ulp)
