"""End-to-end pipeline benchmark: per-stage and end-to-end latency, throughput, memory, accuracy.

    python benchmarks/pipeline.py --device cuda --precision bf16 --batch 1,4,8 --frames 64
    python benchmarks/pipeline.py --device cpu --frames 16 --batch 1,4      # proves the harness
    python benchmarks/pipeline.py --device cpu --threads 2 --batch 1,4,8 \
        --engine torch,torch-compile,onnxruntime          # every CPU engine, one CSV + .md + .png
    python benchmarks/pipeline.py --report benchmarks/results/pipeline_cpu.csv   # redraw only
    python benchmarks/pipeline.py --preset moca_huge --sam-preset sam_vit_h --device cuda \\
        --imagebind imagebind_huge.pth --adapter adaav.safetensors --sam sam_vit_h_4b8939.pth

Setup: the models are built as ``python -m moca_rt.infer`` builds them (``moca_rt.build``;
the shipped tiny models for moca_synth without weight flags, seeded random weights for every
other checkpoint not given, recorded in the ``weights`` column; ``--engine onnxruntime|tensorrt
--engine-dir DIR`` runs the units exported there, as ``infer --engine`` does; ``onnxruntime``
without ``--engine-dir`` exports the benchmarked weights first (trunk, SAM's image encoder and
grid decoder) into ``--export-dir`` or a temporary folder; the ``engine`` column says which).
``--engine`` takes a comma-separated list (:func:`run_engines`): rows of each engine in turn,
eager ``torch`` first. ``OMP_WAIT_POLICY=PASSIVE`` is set before torch loads unless the
environment sets it (as ``infer`` does; column ``omp_wait_policy``), and ``--threads`` goes to
``moca_rt.threads.configure_threads`` (torch and the onnxruntime sessions). Then
N synthetic-world scenes are rendered (``--splits`` in turn, one frame each, partition
``test``) with the 2 s audio window centred on the frame (``preprocess.audio_windows``: the
scene audio around ``frame_times[0]``, zero-padded at the ends).

Per batch size B: the frames are cut into batches of B in order; the last batch is filled up by
wrapping around to the first frames so every timed call holds B frames (the repeats are not
scored). With ``--engine torch-compile`` the batch's buckets are compiled first
(``compile_s``: ``moca_rt.engines.compiled.warmup_pipeline``, noise inputs), apart from the
run. One first call (timed apart: ``first_call_ms``, lazy inits and caches), ``--warmup``
untimed calls, then every batch once through ``MocaPipeline.segment_batch``, each call
bracketed by a device sync. Per row:

* ``batch_ms_*``: wall time of one ``segment_batch`` call (the latency a frame sees);
  ``e2e_ms_*``: that time divided by B (per frame); ``fps``: frames over the summed call times.
* ``<stage>_ms_*``: the pipeline's own ``FrameResult.timings_ms`` (the stage's batch time / B;
  0 for a batch where the stage did not run, e.g. no cluster chosen -> no proposals).
* p50 is the median, p99 the 99th percentile (linear interpolation) over the timed batches.
* ``loadavg_1m``: the 1-minute load average after the timed calls (other processes share
  the CPU cores: a load above the core count means contended figures).
* ``peak_mem_mib``: ``torch.cuda.max_memory_allocated`` from the first call of this batch size
  on (``peak_mem_kind=cuda_max_allocated``); on CPU the process's peak resident set size from
  ``resource.getrusage`` (``cpu_process_maxrss``: a high-water mark of the whole process since
  it started, so it never goes down from one row to the next).
* ``miou`` / ``fscore``: AVSBench mIoU and F-score (``moca_rt.metrics``, binary masks, one
  frame per meter batch) of the same timed calls against the scenes' ground-truth masks.
* ``agreement_miou`` / ``agreement_min_iou``: mean / smallest per-frame IoU of the row's final
  masks with eager fp32 torch's on the same frames and batch calls (:func:`mask_agreement`;
  two empty masks agree), from :func:`run_engines`; eager's own rows are the reference (1.0).
* ``silent_frames`` (gated by the silence threshold), ``unchosen_frames`` (no cluster passed
  ``tau``: empty mask), ``fallback_frames`` (no proposal matched: the coarse mask is used) and
  ``mean_proposals`` (SAM masks per frame) say which work the frames needed.
* ``floor_h100_ms``: for ``moca_huge`` (+ ``sam_vit_h``) the compute floor of DESIGN section 8
  at ~800 dense bf16 TFLOP/s: ImageBind-H vision 0.34 TFLOP, audio 0.04 TFLOP (one clip: the
  pipeline runs the trunk once per 2 s window), SAM-H encoder ~5.9 TFLOP, decoder ~0.9 TFLOP
  for 256 points (scaled by points per side squared / 256): ~9 ms per frame for 16 x 16 points.
  ``floor_fraction`` = floor / ``e2e_ms_p50`` is meaningful only on an H100.

Rows go to ``--out`` (CSV) and the same path with ``.json``; a readable table is printed, and
``.md`` (the Markdown table of :data:`REPORT_COLUMNS`) and ``.png`` (ms/frame and frames/s per
engine and batch, matplotlib from the ``bench`` extra) are written beside the CSV
(``--report CSV`` redraws both from a CSV without running anything).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# As python -m moca_rt.infer: OpenMP's idle workers sleep (moca_rt.threads); set before torch
# loads OpenMP. OMP_WAIT_POLICY in the environment wins; the rows record it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from moca_rt.build import ENGINES, BuildSettings, build_pipeline as build
from moca_rt.config import MOCA_PRESETS, SAM_PRESETS, SAMPLE_RATE
from moca_rt.precision import PRECISIONS
from moca_rt.provenance import git_commit
from moca_rt.threads import configure_threads

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
STAGES = ("preprocess", "audio", "vision", "kmeans", "choose", "proposals", "mpm")
SPLITS = ("s4", "ms3", "avss", "silent")
H100_BF16_TFLOPS = 800.0
FLOOR_TFLOP = {
    "imagebind_vision": 0.34,
    "imagebind_audio_clip": 0.04,
    "sam_encoder": 5.9,
    "sam_decoder_256_points": 0.9,
}
COLUMNS = [
    "timestamp_utc",
    "git_commit",
    "device",
    "device_name",
    "python",
    "torch",
    "threads",
    "omp_wait_policy",
    "preset",
    "sam_preset",
    "points_per_side",
    "precision",
    "engine",
    "batch",
    "frames",
    "timed_batches",
    "warmup",
    "splits",
    "seed",
    "weights",
    "status",
    "compile_s",
    "loadavg_1m",
    "first_call_ms",
    "batch_ms_p50",
    "batch_ms_p99",
    "e2e_ms_p50",
    "e2e_ms_p99",
    "fps",
    *(f"{s}_ms_{q}" for s in STAGES for q in ("p50", "p99")),
    "peak_mem_mib",
    "peak_mem_kind",
    "miou",
    "fscore",
    "agreement_miou",
    "agreement_min_iou",
    "scored_frames",
    "silent_frames",
    "unchosen_frames",
    "fallback_frames",
    "mean_proposals",
    "floor_h100_ms",
    "floor_fraction",
    "notes",
]


@dataclass
class BenchOptions:
    """What ``run_pipeline_benchmark`` runs; the CLI flags map one to one onto these fields.

    ``sam_preset="none"`` runs without mask proposals (coarse cluster masks only).
    ``points_per_side=None`` takes the CLI's choice (4 for a random SAM, 16 with ``sam``).
    """

    preset: str = "moca_synth"
    sam_preset: str = "sam_synth"
    device: str = "cpu"
    precision: str = "fp32"
    batches: tuple[int, ...] = (1, 4, 8)
    frames: int = 16
    warmup: int = 2
    seed: int = 0
    splits: tuple[str, ...] = ("s4", "ms3")
    image_size: int = 224
    points_per_side: int | None = None
    threads: int | None = None
    imagebind: Path | None = None
    adapter: Path | None = None
    sam: Path | None = None
    engine: str = "torch"
    engine_dir: Path | None = None
    export_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """Raise ValueError naming the first option that cannot be run."""
        if self.preset not in MOCA_PRESETS:
            raise ValueError(f"preset: expected one of {sorted(MOCA_PRESETS)}, got {self.preset!r}")
        if self.sam_preset != "none" and self.sam_preset not in SAM_PRESETS:
            raise ValueError(
                f"sam_preset: expected 'none' or one of {sorted(SAM_PRESETS)}, "
                f"got {self.sam_preset!r}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision: expected one of {list(PRECISIONS)}, got {self.precision!r}"
            )
        if not self.batches or any(b < 1 for b in self.batches):
            raise ValueError(f"batches: expected one or more sizes >= 1, got {list(self.batches)}")
        if self.frames < 1:
            raise ValueError(f"frames: expected >= 1, got {self.frames}")
        if self.warmup < 0:
            raise ValueError(f"warmup: expected >= 0, got {self.warmup}")
        bad = [s for s in self.splits if s not in SPLITS]
        if not self.splits or bad:
            raise ValueError(f"splits: expected some of {list(SPLITS)}, got {list(self.splits)}")
        if self.points_per_side is not None and self.points_per_side < 1:
            raise ValueError(f"points_per_side: expected >= 1, got {self.points_per_side}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"device: expected cpu or cuda[:N], got {self.device!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine: expected one of {list(ENGINES)}, got {self.engine!r}")
        needs_dir = self.engine in ("onnxruntime", "tensorrt")
        exports = self.engine == "onnxruntime" and self.export_dir is not None
        if self.engine != "auto" and needs_dir == (self.engine_dir is None) and not exports:
            raise ValueError(
                f"engine_dir: expected a folder of exported units with engine onnxruntime or "
                f"tensorrt (or an export_dir for onnxruntime) and none with torch / "
                f"torch-compile, got engine {self.engine!r} and {self.engine_dir}"
            )


@dataclass
class BenchInputs:
    """The rendered scenes as the pipeline takes them.

    ``images``: N uint8 [H, W, 3] RGB frames; ``windows``: float32 [N, 32000] mono 16 kHz
    windows of 2 s centred on each frame; ``masks``: N bool [H, W] ground-truth masks (the
    sounding objects' visible pixels, in frame pixels); ``splits``: each scene's split.
    """

    images: list[np.ndarray]
    windows: torch.Tensor
    masks: list[np.ndarray]
    splits: list[str]


def render_inputs(
    frames: int, splits: Sequence[str], seed: int = 0, image_size: int = 224
) -> BenchInputs:
    """Render ``frames`` single-frame synthetic scenes, ``splits`` taken in turn.

    Scene i is ``SynthWorld(seed).sample(splits[i % len(splits)], i // len(splits), "test")``;
    its window is the scene audio around ``frame_times[0]`` (zero-padded where the 2 s reach
    past the audio).
    """
    from moca_rt.datasets.synth import SynthWorld
    from moca_rt.preprocess import audio_windows

    if frames < 1:
        raise ValueError(f"frames: expected >= 1, got {frames}")
    if not splits:
        raise ValueError("splits: expected at least one split, got none")
    world = SynthWorld(seed, image_size=image_size)
    images, windows, masks, names = [], [], [], []
    for i in range(frames):
        split = splits[i % len(splits)]
        scene = world.sample(split, i // len(splits), "test")
        if scene.sample_rate != SAMPLE_RATE:
            raise ValueError(
                f"scene {i}: expected {SAMPLE_RATE} Hz audio, got {scene.sample_rate} Hz"
            )
        images.append(scene.image)
        masks.append(scene.mask)
        names.append(split)
        audio = torch.from_numpy(np.ascontiguousarray(scene.audio, dtype=np.float32))
        windows.append(audio_windows(audio, [float(scene.frame_times[0])], 2.0, SAMPLE_RATE))
    return BenchInputs(images, torch.cat(windows), masks, names)


def score_masks(preds: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> tuple[float, float]:
    """AVSBench (mIoU, F-score) of bool [H, W] predictions against bool [H, W] ground truth.

    One frame per meter batch (the scenes are single frames), scored as binary masks.
    """
    from moca_rt.metrics import ObjectMetricMeter

    if len(preds) != len(targets) or not preds:
        raise ValueError(
            f"expected as many predictions as targets (>= 1), got {len(preds)} and {len(targets)}"
        )
    meter = ObjectMetricMeter()
    for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
        if p.shape != t.shape:
            raise ValueError(f"frame {i}: expected prediction of shape {t.shape}, got {p.shape}")
        meter.add_batch(torch.from_numpy(p)[None], torch.from_numpy(t)[None], "binary")
    res = meter.result()
    return res.miou, res.fscore


def floor_h100_ms(preset: str, sam_preset: str, points_per_side: int) -> float | None:
    """DESIGN section 8 compute floor per frame on an H100 in ms (None: preset not covered)."""
    if preset != "moca_huge":
        return None
    tflop = FLOOR_TFLOP["imagebind_vision"] + FLOOR_TFLOP["imagebind_audio_clip"]
    if sam_preset == "sam_vit_h":
        tflop += FLOOR_TFLOP["sam_encoder"]
        tflop += FLOOR_TFLOP["sam_decoder_256_points"] * points_per_side**2 / 256
    elif sam_preset != "none":
        return None
    return tflop / H100_BF16_TFLOPS * 1e3


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _weights(opts: BenchOptions) -> str:
    from moca_rt.build import resolve_weights

    resolved = resolve_weights(build_settings(opts))
    if resolved.shipped is not None:
        sam = (
            "none"
            if opts.sam_preset == "none"
            else ("shipped" if resolved.sam == resolved.shipped.sam else str(resolved.sam))
        )
        adapter = "shipped" if resolved.adapter == resolved.shipped.adapter else resolved.adapter
        return f"shipped tiny models (adapter={adapter}, sam={sam})"
    if opts.engine_dir is not None:
        sam = "none" if opts.sam_preset == "none" else str(opts.sam or "random")
        return f"engine_dir={opts.engine_dir} sam={sam}"
    if opts.imagebind is None and opts.adapter is None and opts.sam is None:
        return "random"
    sam = "none" if opts.sam_preset == "none" else str(opts.sam or "random")
    return f"imagebind={opts.imagebind or 'random'} adapter={opts.adapter or 'zero-init'} sam={sam}"


def build_settings(opts: BenchOptions) -> BuildSettings:
    """The settings ``moca_rt.build`` builds for these options (``sam_preset="none"``: no SAM)."""
    use_sam = opts.sam_preset != "none"
    return BuildSettings(
        preset=opts.preset,
        imagebind=opts.imagebind,
        adapter=opts.adapter,
        sam=opts.sam if use_sam else None,
        sam_preset=opts.sam_preset if use_sam else None,
        proposals="grid" if use_sam else "none",
        points_per_side=opts.points_per_side,
        engine=opts.engine,
        engine_dir=opts.engine_dir,
        export_dir=opts.export_dir if opts.engine_dir is None else None,
        device=opts.device,
        precision=opts.precision,
        seed=opts.seed,
    )


def build_pipeline(opts: BenchOptions) -> tuple[Any, int]:
    """The MocaPipeline that ``python -m moca_rt.infer`` builds for these options, and SAM's
    points per side (0: no SAM); the build's notes join ``opts.notes``."""
    built = build(build_settings(opts))
    opts.notes.extend(built.notes)
    return built.pipeline, built.points_per_side


def mask_agreement(
    preds: Sequence[np.ndarray], references: Sequence[np.ndarray]
) -> tuple[float, float]:
    """(mean, min) over frames of the IoU of bool [H, W] ``preds`` with ``references``.

    Two empty masks agree fully (IoU 1): an engine that also finds nothing matches eager.
    """
    if len(preds) != len(references) or not preds:
        raise ValueError(
            f"expected as many predictions as references (>= 1), got {len(preds)} and "
            f"{len(references)}"
        )
    ious = []
    for i, (p, r) in enumerate(zip(preds, references, strict=True)):
        if p.shape != r.shape:
            raise ValueError(f"frame {i}: expected a mask of shape {r.shape}, got {p.shape}")
        union = int(np.logical_or(p, r).sum())
        ious.append(1.0 if union == 0 else int(np.logical_and(p, r).sum()) / union)
    return float(np.mean(ious)), float(min(ious))


def _bench_one(
    pipeline: Any,
    inputs: BenchInputs,
    batch: int,
    opts: BenchOptions,
    reference: Sequence[np.ndarray] | None = None,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    n = len(inputs.images)
    order = [i % n for i in range(math.ceil(n / batch) * batch)]
    chunks = [order[i : i + batch] for i in range(0, len(order), batch)]

    def call(idx: list[int]) -> tuple[list[Any], float]:
        _sync(opts.device)
        t0 = time.perf_counter()
        res = pipeline.segment_batch([inputs.images[i] for i in idx], inputs.windows[idx])
        _sync(opts.device)
        return res, (time.perf_counter() - t0) * 1e3

    cuda = opts.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats(torch.device(opts.device))
    # Compiled engines compile this batch's buckets here, timed apart from the run.
    from moca_rt.engines.compiled import compiled_engines, warmup_pipeline

    compile_s = 0.0
    if compiled_engines(pipeline):
        t0 = time.perf_counter()
        warmup_pipeline(pipeline, [batch], inputs.images[0].shape[:2])
        compile_s = time.perf_counter() - t0
    _, first_ms = call(chunks[0])
    for _ in range(opts.warmup):
        call(chunks[0])
    batch_ms: list[float] = []
    stage_ms: dict[str, list[float]] = {s: [] for s in STAGES}
    preds: dict[int, np.ndarray] = {}
    results: list[Any] = []
    for idx in chunks:
        res, ms = call(idx)
        batch_ms.append(ms)
        timings = res[0].timings_ms
        for name in set(stage_ms) | set(timings):
            stage_ms.setdefault(name, [0.0] * (len(batch_ms) - 1)).append(
                float(timings.get(name, 0.0))
            )
        for i, r in zip(idx, res, strict=True):
            if i not in preds:
                preds[i] = r.mask
                results.append(r)
    if cuda:
        peak = torch.cuda.max_memory_allocated(torch.device(opts.device)) / 2**20
        kind = "cuda_max_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        kind = "cpu_process_maxrss"
    masks = [preds[i] for i in range(n)]
    miou, fscore = score_masks(masks, inputs.masks)
    agree_mean, agree_min = mask_agreement(masks, reference) if reference else (None, None)
    e2e = [ms / batch for ms in batch_ms]
    row: dict[str, Any] = {
        "status": "ok",
        "compile_s": compile_s,
        "loadavg_1m": os.getloadavg()[0],
        "first_call_ms": first_ms,
        "timed_batches": len(chunks),
        "batch_ms_p50": _pct(batch_ms, 50),
        "batch_ms_p99": _pct(batch_ms, 99),
        "e2e_ms_p50": _pct(e2e, 50),
        "e2e_ms_p99": _pct(e2e, 99),
        "fps": len(order) / (sum(batch_ms) / 1e3),
        "peak_mem_mib": peak,
        "peak_mem_kind": kind,
        "miou": miou,
        "fscore": fscore,
        "agreement_miou": agree_mean,
        "agreement_min_iou": agree_min,
        "scored_frames": n,
        "silent_frames": sum(r.silent for r in results),
        "unchosen_frames": sum(not r.silent and not r.chosen for r in results),
        "fallback_frames": sum(r.used_fallback for r in results),
        "mean_proposals": float(np.mean([r.proposals for r in results])),
    }
    for name, values in stage_ms.items():
        row[f"{name}_ms_p50"] = _pct(values, 50)
        row[f"{name}_ms_p99"] = _pct(values, 99)
    return row, masks


def run_pipeline_benchmark(
    opts: BenchOptions,
    inputs: BenchInputs | None = None,
    reference: Mapping[int, Sequence[np.ndarray]] | None = None,
    masks_out: dict[int, list[np.ndarray]] | None = None,
) -> list[dict[str, Any]]:
    """One row per batch size (dicts keyed as ``COLUMNS``; a new pipeline stage adds two keys).

    Args:
        opts: what to run (validated here; ValueError names a bad option).
        inputs: pre-rendered scenes; None renders ``opts.frames`` of them.
        reference: per batch size, masks of the same frames to agree with (eager fp32 torch:
            :func:`run_engines`); fills ``agreement_miou`` / ``agreement_min_iou``, else None.
        masks_out: filled with this run's masks per batch size (frame order).

    Returns:
        rows in ``opts.batches`` order. A batch size that fails (e.g. out of GPU memory) gets a
        row with ``status = "error: ..."`` and the others still run. ``opts.threads`` holds
        for the run only (torch's thread count is restored afterwards).
    """
    opts.validate()
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: expected a visible CUDA device for {opts.device!r}, got none")
    threads_before = torch.get_num_threads()
    if opts.threads is not None:
        configure_threads(opts.threads)  # torch's threads and onnxruntime's sessions
    try:
        return _run(opts, inputs, reference or {}, masks_out if masks_out is not None else {})
    finally:
        torch.set_num_threads(threads_before)


def run_engines(
    opts: BenchOptions, engines: Sequence[str], inputs: BenchInputs | None = None
) -> list[dict[str, Any]]:
    """Rows of every engine in ``engines`` (``opts.engine`` is replaced), in that order, each
    with its masks' agreement with eager fp32 torch on the same frames and batch sizes.

    The eager fp32 reference is the ``torch`` rows themselves when they run in fp32; otherwise
    an untimed eager fp32 pass of the same batches runs first. ``onnxruntime`` without
    ``opts.engine_dir`` exports the trunk and SAM's image encoder to ``opts.export_dir``.
    """
    if inputs is None:
        inputs = render_inputs(opts.frames, opts.splits, opts.seed, opts.image_size)
    reference: dict[int, list[np.ndarray]] = {}
    rows: list[dict[str, Any]] = []
    if "torch" not in engines or opts.precision != "fp32":
        eager = replace(opts, engine="torch", engine_dir=None, precision="fp32", warmup=0)
        run_pipeline_benchmark(replace(eager, notes=[]), inputs, masks_out=reference)
    with tempfile.TemporaryDirectory(prefix="moca_bench_export_") as tmp:
        for engine in sorted(engines, key=lambda e: e != "torch"):  # the reference first
            rows += _engine_rows(opts, engine, inputs, reference, Path(tmp))
    return rows


def _engine_rows(
    opts: BenchOptions,
    engine: str,
    inputs: BenchInputs,
    reference: dict[int, list[np.ndarray]],
    scratch: Path,
) -> list[dict[str, Any]]:
    """:func:`run_engines` for one engine (``scratch``: the export folder when none is given)."""
    engine_opts = replace(opts, engine=engine, engine_dir=_dir_for(engine, opts.engine_dir))
    engine_opts.notes = []
    if engine == "onnxruntime" and opts.engine_dir is None and opts.export_dir is None:
        engine_opts.export_dir = scratch
    if engine == "torch" and opts.precision == "fp32":
        rows = run_pipeline_benchmark(engine_opts, inputs, masks_out=reference)
        for row in rows:
            row["agreement_miou"], row["agreement_min_iou"] = 1.0, 1.0  # it is the reference
    else:
        rows = run_pipeline_benchmark(engine_opts, inputs, reference)
    opts.notes.extend(n for n in engine_opts.notes if n not in opts.notes)
    return rows


def _run(
    opts: BenchOptions,
    inputs: BenchInputs | None,
    reference: Mapping[int, Sequence[np.ndarray]],
    masks_out: dict[int, list[np.ndarray]],
) -> list[dict[str, Any]]:
    pipeline, points = build_pipeline(opts)
    if inputs is None:
        inputs = render_inputs(opts.frames, opts.splits, opts.seed, opts.image_size)
    floor = floor_h100_ms(opts.preset, opts.sam_preset, points or 16)
    if floor is None:
        opts.notes.append(
            "no compute floor: DESIGN section 8's ~9 ms/frame H100 floor covers moca_huge + "
            "sam_vit_h (ImageBind-H 0.34 + 0.04 TFLOP, SAM-H encoder 5.9 + 256-point decoder "
            "0.9 TFLOP at ~800 TFLOP/s)"
        )
    common: dict[str, Any] = {
        "timestamp_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": git_commit(
            short=True, dirty_paths=("moca_rt", "kernels", "benchmarks/pipeline.py"), root=REPO
        )
        or "",
        "device": opts.device,
        "device_name": device_name(opts.device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "preset": opts.preset,
        "sam_preset": opts.sam_preset,
        "points_per_side": points,
        "precision": opts.precision,
        "engine": opts.engine,
        "frames": len(inputs.images),
        "warmup": opts.warmup,
        "splits": ",".join(opts.splits),
        "seed": opts.seed,
        "weights": _weights(opts),
        "floor_h100_ms": floor,
    }
    rows = []
    for batch in opts.batches:
        row: dict[str, Any] = {**common, "batch": batch}
        try:
            result, masks_out[batch] = _bench_one(
                pipeline, inputs, batch, opts, reference.get(batch)
            )
            row.update(result)
        except (RuntimeError, ValueError) as err:  # e.g. CUDA OOM at B=8 must not hide B=1, 4
            row["status"] = f"error: {type(err).__name__}: {err}"[:300]
            if opts.device.startswith("cuda"):
                torch.cuda.empty_cache()
        if floor is not None and row.get("e2e_ms_p50"):
            row["floor_fraction"] = floor / row["e2e_ms_p50"]
        row["notes"] = "; ".join(dict.fromkeys(opts.notes))
        rows.append(row)
    return rows


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    extra = sorted({k for r in rows for k in r} - set(COLUMNS))
    return [*COLUMNS[:-1], *extra, COLUMNS[-1]]


def write_rows(rows: Sequence[dict[str, Any]], csv_path: Path) -> Path:
    """Write ``rows`` to ``csv_path`` (floats to 4 significant digits) and, in full, to the same
    path with ``.json``; returns the JSON path."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_columns(rows))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()}
            )
    json_path = csv_path.with_suffix(".json")
    columns = _columns(rows)
    clean = [
        {
            k: (None if isinstance(r[k], float) and not math.isfinite(r[k]) else r[k])
            for k in columns
            if k in r
        }
        for r in rows
    ]
    json_path.write_text(json.dumps(clean, indent=2) + "\n")
    return json_path


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table (ms per frame, p50 unless marked)."""
    stages = [s for s in _stage_names(rows) if any(r.get(f"{s}_ms_p50") for r in rows)]
    head = [
        "engine",
        "batch",
        "e2e p50",
        "e2e p99",
        "batch p50",
        "frames/s",
        *stages,
        "peak MiB",
        "mIoU",
        "F",
        "agreement",
    ]
    lines = ["  ".join(f"{h:>13}" for h in head)]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"{r['engine']:>13}  {r['batch']:>13}  {r.get('status')}")
            continue
        agreement = r.get("agreement_miou")
        vals = [
            str(r["engine"]),
            f"{r['batch']}",
            f"{r['e2e_ms_p50']:.2f}",
            f"{r['e2e_ms_p99']:.2f}",
            f"{r['batch_ms_p50']:.2f}",
            f"{r['fps']:.1f}",
            *(f"{r.get(f'{s}_ms_p50', 0.0):.2f}" for s in stages),
            f"{r['peak_mem_mib']:.0f}",
            f"{r['miou']:.4f}",
            f"{r['fscore']:.4f}",
            "-" if agreement is None else f"{agreement:.4f}",
        ]
        lines.append("  ".join(f"{v:>13}" for v in vals))
    return "\n".join(lines)


def _stage_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    found = {k[: -len("_ms_p50")] for r in rows for k in r if k.endswith("_ms_p50")}
    found -= {"batch", "e2e"}
    return [s for s in STAGES if s in found] + sorted(found - set(STAGES))


REPORT_COLUMNS = (
    ("engine", "engine", "{}"),
    ("batch", "batch", "{}"),
    ("compile_s", "compile s", "{:.1f}"),
    ("e2e_ms_p50", "e2e p50 ms/frame", "{:.1f}"),
    ("e2e_ms_p99", "e2e p99", "{:.1f}"),
    ("fps", "frames/s", "{:.2f}"),
    ("audio_ms_p50", "audio", "{:.2f}"),
    ("vision_ms_p50", "vision", "{:.2f}"),
    ("proposals_ms_p50", "proposals", "{:.1f}"),
    ("peak_mem_mib", "peak MiB", "{:.0f}"),
    ("miou", "mIoU", "{:.4f}"),
    ("fscore", "F", "{:.4f}"),
    ("agreement_miou", "IoU vs eager fp32 (mean / min)", "{:.4f}"),
    ("loadavg_1m", "load 1 min", "{:.2f}"),
)


def read_rows(csv_path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV that :func:`write_rows` wrote, numbers as floats (empty cells None)."""

    def value(text: str) -> Any:
        if text == "":
            return None
        try:
            return float(text)
        except ValueError:
            return text

    with csv_path.open(newline="") as fh:
        return [{k: value(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows (status ok) as a Markdown table of :data:`REPORT_COLUMNS` (``-``: no value)."""

    def cell(r: dict[str, Any], key: str, fmt: str) -> str:
        v = r.get(key)
        if v is None or v == "" or (key == "compile_s" and not v):
            return "-"
        if key == "batch":
            return str(int(v))
        if key == "agreement_miou":
            return f"{fmt.format(v)} / {fmt.format(r.get('agreement_min_iou') or 0.0)}"
        return fmt.format(v)

    head = [title for _, title, _ in REPORT_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        if r.get("status") == "ok":
            cells = [cell(r, key, fmt) for key, _, fmt in REPORT_COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_rows(rows: Sequence[dict[str, Any]], png: Path) -> bool:
    """ms/frame (e2e p50) and frames/s per engine and batch size as grouped bars; False (and a
    message) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[bench]')", file=sys.stderr)
        return False
    ok = [r for r in rows if r.get("status") == "ok"]
    engines = list(dict.fromkeys(str(r["engine"]) for r in ok))
    batches = sorted({int(r["batch"]) for r in ok})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(engines))
    for axis, key, label in zip(
        axes, ("e2e_ms_p50", "fps"), ("ms per frame (e2e p50)", "frames/s"), strict=True
    ):
        for k, engine in enumerate(engines):
            by_batch = {int(r["batch"]): float(r[key]) for r in ok if r["engine"] == engine}
            xs = [i + (k - (len(engines) - 1) / 2) * width for i in range(len(batches))]
            axis.bar(xs, [by_batch.get(b, 0.0) for b in batches], width, label=engine)
        axis.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        axis.set_ylabel(label)
        axis.grid(axis="y", alpha=0.3)
    axes[1].legend(loc="lower right", fontsize=8)
    first = ok[0] if ok else {}
    fig.suptitle(
        f"{first.get('preset')} + {first.get('sam_preset')}, {first.get('device_name')}, "
        f"{int(first.get('threads') or 0)} threads, {int(first.get('frames') or 0)} frames",
        fontsize=9,
    )
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def write_report(csv_path: Path) -> tuple[Path, Path | None]:
    """``<csv>.md`` (the Markdown table) and ``<csv>.png`` (the plot) from a results CSV."""
    rows = read_rows(csv_path)
    md = csv_path.with_suffix(".md")
    md.write_text(markdown_table(rows) + "\n")
    png = csv_path.with_suffix(".png")
    return md, png if plot_rows(rows, png) else None


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from err
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected batch sizes >= 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/pipeline.py",
        description="Time the MoCA inference pipeline stage by stage on synthetic-world scenes "
        "and score the same run's masks (mIoU, F-score).",
    )
    p.add_argument(
        "--preset", choices=sorted(MOCA_PRESETS), default="moca_synth", help="The MoCA model size."
    )
    p.add_argument(
        "--sam-preset",
        choices=[*sorted(SAM_PRESETS), "none"],
        default="sam_synth",
        help="The SAM size for mask proposals, or none to run without proposals.",
    )
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="The torch device to run on: cpu, cuda or cuda:N.",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="The compute precision of the models.",
    )
    p.add_argument(
        "--batch",
        type=_int_list,
        default=(1, 4, 8),
        help="Comma-separated batch sizes, one row each.",
    )
    p.add_argument(
        "--frames", type=int, default=16, help="The number of synthetic scenes (one frame each)."
    )
    p.add_argument(
        "--warmup", type=int, default=2, help="Untimed calls per batch size after the first call."
    )
    p.add_argument(
        "--splits", default="s4,ms3", help="Comma-separated synthetic splits taken in turn."
    )
    p.add_argument(
        "--seed", type=int, default=0, help="The seed of the random weights and of the scenes."
    )
    p.add_argument(
        "--image-size", type=int, default=224, help="The side of the rendered frames in pixels."
    )
    p.add_argument(
        "--points-per-side",
        type=int,
        default=None,
        help="SAM grid points per side (default: 4 with a random SAM, 16 with --sam).",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)."
    )
    p.add_argument("--imagebind", type=Path, help="The official imagebind_huge.pth checkpoint.")
    p.add_argument("--adapter", type=Path, help="Trained AdaAV weights (.safetensors or .pt).")
    p.add_argument("--sam", type=Path, help="An official sam_vit_{h,l,b} checkpoint.")
    p.add_argument(
        "--engine",
        type=_engine_list,
        default=("torch",),
        help="Comma-separated engines, one set of rows each, as in python -m moca_rt.infer "
        f"({', '.join(ENGINES)}); every row scores its masks against eager fp32 torch.",
    )
    p.add_argument(
        "--engine-dir",
        type=Path,
        help="The folder of exported units for --engine onnxruntime or tensorrt.",
    )
    p.add_argument(
        "--export-dir",
        type=Path,
        help="onnxruntime without --engine-dir: export the trunk and SAM's image encoder of "
        "the benchmarked weights here first (default: a temporary folder).",
    )
    p.add_argument(
        "--report",
        type=Path,
        metavar="CSV",
        help="Run nothing: write CSV's Markdown table (.md) and plot (.png) beside it.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="The CSV to write (default benchmarks/results/pipeline_<device>.csv); "
        "JSON goes next to it.",
    )
    return p


def _dir_for(engine: str, engine_dir: Path | None) -> Path | None:
    """The engine folder an engine of the list takes (torch engines take none)."""
    return None if engine in ("torch", "torch-compile") else engine_dir


def _engine_list(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in values if v not in ENGINES]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"expected some of {list(ENGINES)}, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report is not None:
        md, png = write_report(args.report)
        print(f"wrote {md}" + (f" and {png}" if png else ""))
        return 0
    opts = BenchOptions(
        preset=args.preset,
        sam_preset=args.sam_preset,
        device=args.device,
        precision=args.precision,
        batches=args.batch,
        frames=args.frames,
        warmup=args.warmup,
        splits=tuple(s.strip() for s in args.splits.split(",") if s.strip()),
        seed=args.seed,
        image_size=args.image_size,
        points_per_side=args.points_per_side,
        threads=args.threads,
        imagebind=args.imagebind,
        adapter=args.adapter,
        sam=args.sam,
        engine=args.engine[0],
        engine_dir=args.engine_dir,
        export_dir=args.export_dir,
    )
    try:
        for engine in args.engine:
            # run_engines exports onnxruntime units to a temporary folder without --export-dir
            export_dir = opts.export_dir or Path(tempfile.gettempdir())
            engine_dir = _dir_for(engine, args.engine_dir)
            replace(opts, engine=engine, engine_dir=engine_dir, export_dir=export_dir).validate()
        rows = run_engines(opts, args.engine)
    except ValueError as err:  # a bad option, or settings the build cannot use (InputError)
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or RESULTS / f"pipeline_{opts.device.split(':')[0]}.csv"
    json_path = write_rows(rows, out)
    md, png = write_report(out)
    first = rows[0]
    print(
        f"{first['device_name']}, torch {first['torch']}, {first['threads']} threads, "
        f"preset {opts.preset} + {opts.sam_preset}, {opts.precision}, {first['frames']} frames, "
        f"weights {first['weights']}"
    )
    print("ms per frame (stage columns: p50 of the pipeline's own stage timings)")
    print(format_table(rows))
    for note in dict.fromkeys(opts.notes):
        print(f"note: {note}")
    if first.get("floor_h100_ms") is not None:
        print(f"note: DESIGN section 8 floor on an H100: {first['floor_h100_ms']:.2f} ms per frame")
    print(f"wrote {len(rows)} rows to {out}, {json_path}, {md}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
