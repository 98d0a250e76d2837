"""Smoke test of benchmarks/pipeline.py in its smallest CPU configuration.

The models have seeded random weights, so the accuracy numbers mean nothing; the test checks
the harness: one row per batch size with the config columns, consistent timings, the same masks
(hence the same mIoU/F) at every batch size, padding frames left unscored, the audio window
cut around the frame, the metric wrapper, the DESIGN floor and the files written.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from conftest import requires_cuda

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "pipeline.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_pipeline", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_pipeline"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(bench: ModuleType) -> tuple[Any, Any, list[dict[str, Any]]]:
    opts = bench.BenchOptions(
        preset="moca_test",
        sam_preset="sam_synth",
        device="cpu",
        batches=(1, 2, 3),
        frames=3,
        warmup=0,
        image_size=64,
        points_per_side=2,
        threads=1,
    )
    inputs = bench.render_inputs(opts.frames, opts.splits, opts.seed, opts.image_size)
    return opts, inputs, bench.run_pipeline_benchmark(opts, inputs)


def test_rows(bench: ModuleType, run: tuple[Any, Any, list[dict[str, Any]]]) -> None:
    rows = run[2]
    assert [r["batch"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["status"] == "ok", r["status"]
        missing = [c for c in bench.COLUMNS if c not in r and c != "floor_fraction"]
        assert not missing, missing
        assert (r["preset"], r["sam_preset"], r["precision"], r["frames"]) == (
            "moca_test",
            "sam_synth",
            "fp32",
            3,
        )
        assert r["weights"] == "random" and "random weights" in r["notes"]
        assert r["floor_h100_ms"] is None  # the floor covers moca_huge only
        assert r["peak_mem_kind"] == "cpu_process_maxrss" and r["peak_mem_mib"] > 0
        assert r["timed_batches"] == math.ceil(3 / r["batch"])
        assert r["scored_frames"] == 3
        assert 0 < r["e2e_ms_p50"] <= r["e2e_ms_p99"]
        assert r["batch_ms_p50"] == pytest.approx(r["e2e_ms_p50"] * r["batch"])
        assert r["fps"] > 0 and r["first_call_ms"] > 0
        assert 0.0 <= r["miou"] <= 1.0 and 0.0 <= r["fscore"] <= 1.0
        for s in ("preprocess", "audio", "vision", "kmeans", "choose", "mpm"):
            assert 0 < r[f"{s}_ms_p50"] <= r[f"{s}_ms_p99"], s
    # One timed batch holds all three frames: its stages sit inside the timed call.
    one = rows[2]
    stages = sum(one[f"{s}_ms_p50"] for s in bench.STAGES)
    assert stages <= one["e2e_ms_p50"]
    assert one["fps"] == pytest.approx(1e3 / one["e2e_ms_p50"])
    assert rows[0]["fallback_frames"] <= 3 and rows[0]["silent_frames"] == 0  # s4/ms3 all sound


def test_accuracy_is_of_the_timed_calls(
    bench: ModuleType, run: tuple[Any, Any, list[dict[str, Any]]]
) -> None:
    # Recompute what each row must score, call by call as the benchmark batches: batch 2 runs
    # [0, 1] and [2, 0] (wrapped-around padding), and frame 0 is scored from its first call.
    # (Rows of different batch sizes are not compared with each other: the batched torch
    # k-means is not bit-stable across batch sizes on CPU, see benchmarks/README.md.)
    from moca_rt.metrics import ObjectMetricMeter

    opts, inputs, rows = run
    pipeline, _ = bench.build_pipeline(bench.BenchOptions(**{**opts.__dict__, "notes": []}))
    threads = torch.get_num_threads()
    torch.set_num_threads(opts.threads)  # the same CPU kernels as the benchmark's run
    try:
        expected = []
        for calls in ([[0], [1], [2]], [[0, 1], [2, 0]]):
            masks: dict[int, np.ndarray] = {}
            for idx in calls:
                res = pipeline.segment_batch([inputs.images[i] for i in idx], inputs.windows[idx])
                for i, r in zip(idx, res, strict=True):
                    masks.setdefault(i, r.mask)
            expected.append(masks)
    finally:
        torch.set_num_threads(threads)
    for row, masks in zip(rows[:2], expected, strict=True):
        meter = ObjectMetricMeter()
        for i in range(3):
            pred = torch.from_numpy(masks[i]).float()[None]
            meter.add_batch(pred, torch.from_numpy(inputs.masks[i]).float()[None], "binary")
        assert row["miou"] == pytest.approx(meter.result().miou, abs=1e-7)
        assert row["fscore"] == pytest.approx(meter.result().fscore, abs=1e-7)


def test_files_and_table(
    bench: ModuleType, run: tuple[Any, Any, list[dict[str, Any]]], tmp_path: Path
) -> None:
    rows = run[2]
    out = tmp_path / "p.csv"
    json_path = bench.write_rows(rows, out)
    with out.open() as fh:
        read = list(csv.DictReader(fh))
    assert [int(r["batch"]) for r in read] == [1, 2, 3]
    assert set(bench.COLUMNS) <= set(read[0])
    loaded = json.loads(json_path.read_text())
    assert [r["miou"] for r in loaded] == [r["miou"] for r in rows]
    assert "mIoU" in bench.format_table(rows)


def test_inputs_window_and_scores(
    bench: ModuleType, run: tuple[Any, Any, list[dict[str, Any]]]
) -> None:
    from moca_rt.datasets.synth import SynthWorld

    opts, inputs, _ = run
    assert inputs.windows.shape == (3, 32000) and inputs.splits == ["s4", "ms3", "s4"]
    scene = SynthWorld(opts.seed, image_size=opts.image_size).sample("ms3", 0, "test")
    start = round(float(scene.frame_times[0]) * 16000) - 16000
    padded = np.concatenate([np.zeros(32000, np.float32), scene.audio, np.zeros(32000, np.float32)])
    expected = padded[start + 32000 : start + 64000]
    np.testing.assert_array_equal(inputs.windows[1].numpy(), expected)
    np.testing.assert_array_equal(inputs.images[1], scene.image)

    gts = inputs.masks
    assert bench.score_masks(gts, gts) == pytest.approx((1.0, 1.0))
    miou, _ = bench.score_masks([np.zeros_like(m) for m in gts], gts)
    assert miou == 0.0
    with pytest.raises(ValueError, match="expected as many"):
        bench.score_masks(gts[:1], gts)


def test_floor_and_options(bench: ModuleType) -> None:
    assert bench.floor_h100_ms("moca_huge", "sam_vit_h", 16) == pytest.approx(
        (0.34 + 0.04 + 5.9 + 0.9) / 800 * 1e3
    )
    assert bench.floor_h100_ms("moca_huge", "none", 16) == pytest.approx(0.38 / 800 * 1e3)
    assert bench.floor_h100_ms("moca_synth", "sam_synth", 4) is None
    with pytest.raises(ValueError, match="expected one or more sizes >= 1, got"):
        bench.BenchOptions(batches=(0,)).validate()
    with pytest.raises(ValueError, match="expected cpu or cuda"):
        bench.BenchOptions(device="tpu").validate()


def test_cli_writes_rows(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.csv"
    args = [
        "--preset",
        "moca_test",
        "--sam-preset",
        "none",
        "--device",
        "cpu",
        "--batch",
        "1",
        "--frames",
        "2",
        "--warmup",
        "0",
        "--image-size",
        "64",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert bench.main(args) == 0
    printed = capsys.readouterr().out
    assert "weights random" in printed and "wrote 1 rows" in printed
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [(r["batch"], r["sam_preset"], r["proposals_ms_p50"]) for r in rows] == [
        (1, "none", 0.0)
    ]
    assert bench.main([*args[:-2], "--splits", "s5", "--out", str(out)]) == 2


def _two_frames(bench: ModuleType, **options: Any) -> Any:
    """Options of a 2-frame run at batch 1 and 2: moca_test + a random sam_synth, 2 x 2 grid."""
    common = {"batches": (1, 2), "frames": 2, "warmup": 0, "image_size": 64}
    return bench.BenchOptions(
        preset="moca_test", sam_preset="sam_synth", points_per_side=2, **common, **options
    )


def test_mask_agreement(bench: ModuleType) -> None:
    a = np.zeros((4, 4), bool)
    b = a.copy()
    a[:2], b[:1] = True, True  # IoU 4 / 8
    empty = np.zeros((4, 4), bool)
    assert bench.mask_agreement([a, empty], [b, empty]) == pytest.approx((0.75, 0.5))
    with pytest.raises(ValueError, match="expected as many"):
        bench.mask_agreement([a], [a, a])
    with pytest.raises(ValueError, match="frame 0: expected a mask of shape"):
        bench.mask_agreement([a[:2]], [a])


def test_engines_rows_agree_with_eager_and_report(bench: ModuleType, tmp_path: Path) -> None:
    """torch and onnxruntime rows (the trunk, SAM's encoder and grid decoder exported by the
    benchmark itself), each with the agreement of its masks with eager fp32; the report."""
    pytest.importorskip("onnxruntime")
    opts = _two_frames(bench, threads=1, export_dir=tmp_path / "onnx")
    rows = bench.run_engines(opts, ["onnxruntime", "torch"])
    assert [(r["engine"], r["batch"]) for r in rows] == [
        ("torch", 1),
        ("torch", 2),
        ("onnxruntime", 1),
        ("onnxruntime", 2),
    ]
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    assert [r["agreement_miou"] for r in rows[:2]] == [1.0, 1.0]
    for r in rows[2:]:
        assert 0.99 <= r["agreement_min_iou"] <= r["agreement_miou"] <= 1.0
        assert "SAM's grid decoder runs on CPUExecutionProvider" in r["notes"]
    assert (tmp_path / "onnx" / "sam_grid_tokens_fp32.onnx").is_file()
    out = tmp_path / "engines.csv"
    bench.write_rows(rows, out)
    md, png = bench.write_report(out)
    table = md.read_text().splitlines()
    assert table[0].startswith("| engine | batch |") and len(table) == 2 + len(rows)
    assert "| onnxruntime | 2 |" in table[-1]
    assert png is None or png.stat().st_size > 0


@requires_cuda
def test_cuda_rows(bench: ModuleType) -> None:
    opts = _two_frames(bench, device="cuda", precision="bf16")
    rows = bench.run_pipeline_benchmark(opts)
    for r in rows:
        assert r["status"] == "ok", r["status"]
        assert r["peak_mem_kind"] == "cuda_max_allocated" and r["peak_mem_mib"] > 0
        assert 0 < r["e2e_ms_p50"] <= r["e2e_ms_p99"] and 0.0 <= r["miou"] <= 1.0
