"""Mask IoU / coverage: hand-computed cases, reference vs Triton (interpreter) vs CUDA C.

The ``test_sub_*`` tests (Triton interpreter, torch.compile) run in a fresh child pytest
process with ``TRITON_INTERPRET=1`` (see tests/test_kernels_kmeans.py for why).
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch
from conftest import requires_cuda, run_in_interpreter_child

from moca_rt.kernels.dispatch import cupy_available

# The package exports a function named mask_iou, which hides the submodule as an attribute.
mi = importlib.import_module("moca_rt.kernels.mask_iou")
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
interp = pytest.mark.skipif(
    not INTERPRETING,
    reason="runs in the TRITON_INTERPRET=1 child process of test_fresh_process_suite",
)


def half_masks() -> tuple[torch.Tensor, torch.Tensor]:
    """4x4 frame. Proposals: left half, empty, full, one pixel (0,0). Clusters: top half, empty,
    left column."""
    yy, xx = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    left = xx < 2
    top = yy < 2
    empty = torch.zeros(4, 4, dtype=torch.bool)
    full = torch.ones(4, 4, dtype=torch.bool)
    pixel = (yy == 0) & (xx == 0)
    column = xx == 0
    return torch.stack([left, empty, full, pixel])[None], torch.stack([top, empty, column])[None]


# Counted by hand: |left|=8 |full|=16 |pixel|=1; |top|=8 |column|=4.
# left∩top=4, left∩column=4, full∩top=8, full∩column=4, pixel∩top=1, pixel∩column=1.
HAND_IOU = torch.tensor(
    [
        [4 / 12, 0.0, 4 / 8],
        [0.0, 0.0, 0.0],  # empty proposal: 0 against anything, also against the empty cluster
        [8 / 16, 0.0, 4 / 16],
        [1 / 8, 0.0, 1 / 4],
    ]
)
HAND_COVERAGE = torch.tensor(
    [
        [4 / 8, 0.0, 4 / 8],
        [0.0, 0.0, 0.0],
        [8 / 16, 0.0, 4 / 16],
        [1.0, 0.0, 1.0],
    ]
)


def brute_force(p: torch.Tensor, c: torch.Tensor, metric: str) -> torch.Tensor:
    """Independent count with Python integers (slow; small inputs only)."""
    b_, n_p, n_k = p.shape[0], p.shape[1], c.shape[1]
    out = torch.zeros(b_, n_p, n_k)
    for b in range(b_):
        for i in range(n_p):
            a = int(p[b, i].sum())
            for k in range(n_k):
                m = int(c[b, k].sum())
                inter = int((p[b, i] & c[b, k]).sum())
                denom = a if metric == "coverage" else a + m - inter
                out[b, i, k] = inter / denom if denom else 0.0
    return out


def random_masks(seed: int, b: int, n_p: int, n_k: int, h: int, w: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    p_logits = torch.randn(b, n_p, h, w, generator=g)
    c_logits = torch.randn(b, n_k, h, w, generator=g) + 0.3
    return p_logits, c_logits


def test_hand_computed_cases() -> None:
    p, c = half_masks()
    assert torch.allclose(mi.mask_iou_reference(p, c), HAND_IOU[None], atol=1e-7)
    assert torch.allclose(
        mi.mask_iou_reference(p, c, metric="coverage"), HAND_COVERAGE[None], atol=1e-7
    )
    assert torch.allclose(mi.mask_iou(p, c), HAND_IOU[None], atol=1e-7)
    assert torch.allclose(mi.mask_coverage(p, c), HAND_COVERAGE[None], atol=1e-7)
    out = mi.mask_iou(p, c)
    assert out.dtype == torch.float32 and out.shape == (1, 4, 3)
    assert torch.equal(mi.mask_iou(p.to(torch.uint8) * 7, c.to(torch.uint8)), out)


def test_reference_matches_brute_force_irregular() -> None:
    pl, cl = random_masks(1, 2, 7, 3, 9, 11)
    p, c = pl > 0.2, cl > 0.2
    p[0, 2] = False  # an empty proposal
    c[1, 0] = False  # an empty cluster
    for metric in ("iou", "coverage"):
        want = brute_force(p, c, metric)
        got = mi.mask_iou_reference(p, c, metric=metric)  # type: ignore[arg-type]
        assert torch.allclose(got, want, atol=1e-7), (got - want).abs().max()


def test_threshold_binarises_float_inputs() -> None:
    pl, cl = random_masks(2, 2, 5, 3, 8, 8)
    want = mi.mask_iou(pl > 0.0, cl > 0.0)
    assert torch.equal(mi.mask_iou(pl, cl, threshold=0.0), want)
    probs = torch.sigmoid(pl)
    assert torch.equal(mi.mask_iou(probs, cl > 0.0, threshold=0.5), want)
    with pytest.raises(ValueError, match="expected a threshold"):
        mi.mask_iou(pl, cl)


@pytest.mark.parametrize(
    ("p_shape", "c_shape", "msg"),
    [
        ((1, 2, 4, 4), (1, 3, 4, 5), "matching proposals"),
        ((2, 2, 4, 4), (1, 3, 4, 4), "matching proposals"),
        ((2, 4, 4), (2, 3, 4, 4), "expected proposals of shape"),
    ],
)
def test_bad_shapes_raise(p_shape: tuple[int, ...], c_shape: tuple[int, ...], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        mi.mask_iou(torch.ones(p_shape, dtype=torch.bool), torch.ones(c_shape, dtype=torch.bool))


def test_bad_dtype_raises() -> None:
    with pytest.raises(ValueError, match="dtype"):
        mi.mask_iou(torch.ones(1, 2, 3, 3, dtype=torch.int32), torch.ones(1, 1, 3, 3) > 0)


@pytest.mark.skipif(INTERPRETING or torch.cuda.is_available(), reason="needs a CPU-only parent")
def test_launchers_say_why_they_cannot_take_a_cpu_tensor() -> None:
    from moca_rt.kernels.cupy_mask_iou import cupy_mask_supports

    p, c = half_masks()
    assert mi.triton_mask_supports(p, c) == (
        "Triton cannot run on this tensor (no CUDA tensor and TRITON_INTERPRET unset)"
    )
    assert cupy_mask_supports(p, c) == "expected a CUDA tensor for the cupy backend, got device cpu"


def test_cupy_forced_without_gpu_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    p, c = half_masks()
    monkeypatch.setenv("MOCA_RT_KERNELS", "cupy")
    with pytest.raises(ValueError, match="CUDA tensor and a working CuPy"):
        mi.mask_iou(p, c)


# ------------------------------------------------------------------------------------------
# Child process: Triton interpreter and torch.compile


@pytest.mark.skipif(INTERPRETING, reason="already interpreting in this process")
def test_fresh_process_suite() -> None:
    run_in_interpreter_child(__file__, "test_sub_", exit_first=True, all_passed=True, timeout=300)


@interp
def test_sub_triton_hand_cases() -> None:
    p, c = half_masks()
    assert torch.allclose(mi.mask_iou_triton(p, c), HAND_IOU[None], atol=1e-7)
    assert torch.allclose(
        mi.mask_iou_triton(p, c, metric="coverage"), HAND_COVERAGE[None], atol=1e-7
    )


@interp
@pytest.mark.parametrize("metric", ["iou", "coverage"])
def test_sub_triton_matches_reference_irregular(metric: str) -> None:
    # 37 proposals (3 tiles of 16, last partial), 3 clusters, 45 x 29 = 1305 px
    # (6 pixel tiles of 256).
    pl, cl = random_masks(3, 2, 37, 3, 45, 29)
    p, c = pl > 0.4, cl > 0.1
    p[1, 5] = False
    c[0, 2] = False
    ref = mi.mask_iou_reference(p, c, metric=metric)  # type: ignore[arg-type]
    for args in ((p, c, None), (pl, cl, 0.25), (pl.half(), c, -0.5), (pl.bfloat16(), cl, 0.0)):
        pp, cc, thr = args
        want = mi.mask_iou_reference(pp, cc, threshold=thr, metric=metric)  # type: ignore[arg-type]
        got = mi.mask_iou_triton(pp, cc, threshold=thr, metric=metric)  # type: ignore[arg-type]
        assert torch.equal(got, want), f"{pp.dtype}: max err {(got - want).abs().max():.3e}"
    assert torch.equal(mi.mask_iou(p, c) if metric == "iou" else mi.mask_coverage(p, c), ref)


@interp
def test_sub_library_op_and_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOCA_RT_KERNELS", "torch")
    pl, cl = random_masks(4, 2, 6, 2, 7, 5)
    torch.library.opcheck(torch.ops.moca_rt.mask_match.default, (pl > 0, cl > 0, None, "iou"))
    torch.library.opcheck(torch.ops.moca_rt.mask_match.default, (pl, cl, 0.1, "coverage"))

    def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return mi.mask_iou(a * 2.0, b, threshold=0.0).amax(-1)

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(pl, cl), fn(pl, cl))


# ------------------------------------------------------------------------------------------
# GPU


@requires_cuda
@pytest.mark.parametrize("metric", ["iou", "coverage"])
def test_gpu_real_shape(metric: str) -> None:
    pl, cl = random_masks(5, 2, 256, 4, 256, 256)
    p, c = (pl > 0.5).cuda(), (cl > 0.0).cuda()
    ref = mi.mask_iou_reference(p, c, metric=metric)  # type: ignore[arg-type]
    assert torch.equal(mi.mask_iou_triton(p, c, metric=metric), ref)  # type: ignore[arg-type]
    got = mi.mask_iou_triton(pl.cuda().half(), c, threshold=0.5, metric=metric)  # type: ignore[arg-type]
    assert torch.equal(got, ref)
    if cupy_available():
        from moca_rt.kernels.cupy_mask_iou import mask_match_cupy

        assert torch.equal(mask_match_cupy(p, c, metric=metric), ref)  # type: ignore[arg-type]
        assert torch.equal(mask_match_cupy(pl.cuda(), c, threshold=0.5, metric=metric), ref)  # type: ignore[arg-type]
