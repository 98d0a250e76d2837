"""``--engine torch-compile``: the CompiledEngine (buckets, compile time apart, fallback) and the
build's engine choice. One tiny module is compiled once for the module (inductor on the CPU
needs a C++ compiler; the first compile takes seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from moca_rt.build import BuildSettings, resolve_engine
from moca_rt.engines.compiled import CompiledEngine, CompileOptions, bucket_for


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 5)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.nn.functional.gelu(self.lin(x))
        return h * y[:, :1], h.sum(dim=1)


class _Breaks(_Tiny):
    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        torch._dynamo.graph_break()  # fullgraph=True cannot compile this
        return super().forward(x, y)


@pytest.fixture(scope="module")
def engine() -> CompiledEngine:
    torch.manual_seed(0)
    return CompiledEngine(
        _Tiny(), ("x", "y"), ("scaled", "total"), options=CompileOptions(batch_buckets=(1, 4))
    )


def test_bucket_for() -> None:
    assert [bucket_for(b, (1, 2, 4, 8)) for b in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 9]
    with pytest.raises(ValueError, match="batch"):
        bucket_for(0, (1,))
    with pytest.raises(ValueError, match="batch_buckets"):
        CompileOptions(batch_buckets=())


def test_compiled_outputs_equal_eager_and_buckets_compile_once(engine: CompiledEngine) -> None:
    x, y = torch.randn(3, 6), torch.randn(3, 2)
    out = engine({"x": x, "y": y})
    assert engine.fallback_reason is None
    assert list(engine.compile_seconds) == [4]  # batch 3 padded to the bucket 4
    with torch.no_grad():
        ref = engine.module(x, y)
    assert out["scaled"].shape == (3, 5) and out["total"].shape == (3,)
    torch.testing.assert_close(out["scaled"], ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["total"], ref[1], rtol=1e-5, atol=1e-6)
    first = engine.compile_seconds[4]
    engine({"x": torch.randn(4, 6), "y": torch.randn(4, 2)})  # same bucket: no new entry
    assert engine.compile_seconds == {4: first}
    assert engine.warmup({"x": x, "y": y}) == {4: first, 1: engine.compile_seconds[1]}
    with pytest.raises(ValueError, match="inputs"):
        engine({"x": x})


def test_warmup_on_ordinary_tensors_serves_inference_mode_calls() -> None:
    """Warmed up on ordinary tensors (``warmup_pipeline``'s SAM encoder example), a bucket is
    not compiled again by the pipeline's calls, which pass inference tensors: dynamo's guards
    check the dispatch keys, and a recompile here (an error with ``error_on_recompile``) makes
    the engine fall back to eager."""
    torch.manual_seed(2)
    eng = CompiledEngine(
        _Tiny(), ("x", "y"), ("scaled", "total"), options=CompileOptions(batch_buckets=(2,))
    )
    eng.warmup({"x": torch.randn(2, 6), "y": torch.randn(2, 2)})
    assert list(eng.compile_seconds) == [2] and eng.fallback_reason is None
    with torch._dynamo.config.patch(error_on_recompile=True):
        with torch.inference_mode():
            x, y = torch.randn(2, 6), torch.randn(2, 2)
            out = eng({"x": x, "y": y})
        out_plain = eng({"x": torch.randn(1, 6), "y": torch.randn(1, 2)})  # ordinary, padded
    assert eng.fallback_reason is None
    assert out["scaled"].shape == (2, 5) and out_plain["total"].shape == (1,)
    with torch.no_grad():
        torch.testing.assert_close(out["total"], eng.module(x, y)[1], rtol=1e-5, atol=1e-6)


def test_freezing_gives_the_eager_outputs() -> None:
    """Inductor's freezing (weights folded into the graph as constants) on a fresh module."""
    torch.manual_seed(1)
    module = _Tiny()
    eng = CompiledEngine(
        module,
        ("x", "y"),
        ("scaled", "total"),
        options=CompileOptions(batch_buckets=(2,), freezing=True),
    )
    x, y = torch.randn(2, 6), torch.randn(2, 2)
    out = eng({"x": x, "y": y})
    assert eng.fallback_reason is None and eng.options.freezing
    with torch.no_grad():
        ref = module(x, y)
    torch.testing.assert_close(out["scaled"], ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["total"], ref[1], rtol=1e-5, atol=1e-6)


def test_compile_failure_falls_back_to_eager() -> None:
    torch.manual_seed(0)
    eng = CompiledEngine(
        _Breaks(),
        ("x", "y"),
        ("scaled", "total"),
        options=CompileOptions(batch_buckets=(2,), fullgraph=True),
    )
    x, y = torch.randn(2, 6), torch.randn(2, 2)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        out = eng({"x": x, "y": y})
    assert eng.fell_back and eng.fallback_reason is not None
    with torch.no_grad():
        torch.testing.assert_close(out["total"], eng.module(x, y)[1])


def test_mode_by_device() -> None:
    opts = CompileOptions()
    assert opts.resolved_mode(torch.device("cpu")) is None
    assert opts.resolved_mode(torch.device("cuda")) == "max-autotune"
    no_graphs = CompileOptions(cuda_graphs=False)
    assert no_graphs.resolved_mode(torch.device("cuda")) == "max-autotune-no-cudagraphs"


def test_auto_engine_rule(tmp_path: Path) -> None:
    # the CPU in fp32 with onnxruntime installed: tests/test_export_cache.py
    assert resolve_engine(BuildSettings(device="cpu", precision="bf16"))[0] == "torch"
    assert resolve_engine(BuildSettings(device="cuda"))[0] == "torch-compile"
    assert resolve_engine(BuildSettings(engine_dir=tmp_path))[0] == "onnxruntime"
    (tmp_path / "audio_fp16_x.engine").write_bytes(b"")
    assert resolve_engine(BuildSettings(engine_dir=tmp_path, device="cuda"))[0] == "tensorrt"
    assert BuildSettings(engine="torch-compile", engine_dir=tmp_path).usage_problem() is not None


@pytest.mark.slow
def test_compiled_pipeline_masks_equal_eager() -> None:
    """moca_test trunk, random weights: torch-compile's masks and scores are eager's."""
    import numpy as np

    from moca_rt.build import build_pipeline
    from moca_rt.engines.compiled import compiled_engines

    gen = np.random.default_rng(0)
    images = [gen.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(2)]
    audio = (0.1 * gen.standard_normal((2, 32000))).astype(np.float32)
    results = {}
    for engine in ("torch", "torch-compile"):
        settings = BuildSettings(
            preset="moca_test", proposals="none", random_weights=True, engine=engine, tau=-1.0
        )
        built = build_pipeline(settings)
        results[engine] = built.pipeline.segment_batch(images, audio)
    engines = compiled_engines(built.pipeline)
    assert set(engines) == {"audio", "vision"}
    assert all(
        e.fallback_reason is None and list(e.compile_seconds) == [2] for e in engines.values()
    )
    for eager, compiled in zip(results["torch"], results["torch-compile"], strict=True):
        assert np.array_equal(eager.mask, compiled.mask)
        assert eager.chosen == compiled.chosen
        np.testing.assert_allclose(eager.scores, compiled.scores, atol=1e-5)
