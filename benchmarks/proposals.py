"""The grid proposal stage before / after the factored decoder: time, peak memory, agreement.

    python benchmarks/proposals.py --case tiny --frames 16 --repeats 5
    python benchmarks/proposals.py --case vit_b --repeats 3 --filters off --onnxruntime

``--case tiny``: the shipped ``sam_synth`` (random weights with ``--random-weights``) on N
rendered synthetic-world test frames at 224 (``benchmarks/pipeline.render_inputs``), the
shipped proposal filters (or ``--filters off``); the stage is timed from the image embeddings
(the encoder is the same on both paths) over all frames as one ``SamProposals.from_embeddings``
call. ``--case vit_b``: ``sam_vit_b`` with seeded random weights, one frame's embedding
(random normal; the frame 1024 x 1024, or ``--frame-size H,W``), the 16 x 16 grid.

Both decoders (``reference``: ``Sam.decode`` per frame, the official order of work;
``factored``: ``moca_rt.proposals.grid_proposals_batch``) run in turn, ``--repeats`` times,
interleaved; the medians are reported. Peak memory: each decoder once more in a child process
(the peak resident set ``VmHWM`` during the call minus the resident set before it, after
resetting the peak through ``/proc/self/clear_refs``). Agreement: per frame the number of
proposals on each path, and the mean IoU of the proposal masks matched by rank (``> 0``, low
resolution).
``--onnxruntime`` adds a third path: the factored decoder's graphs on onnxruntime
(``moca_rt.grid_decoder.OrtGridBackend``, what ``--engine onnxruntime`` runs; exported once
before timing), with its agreement against the reference.
Threads: ``moca_rt.threads.configure_threads(--threads)`` (torch and the onnxruntime sessions)
and ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it, as ``python -m moca_rt.infer``
runs; the load average at the start and end is printed and written: other processes share the
cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as python -m moca_rt.infer runs

import torch

from moca_rt.threads import configure_threads

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))


def _frame_size(text: str) -> tuple[int, int]:
    """``H,W`` -> (H, W) (argparse type)."""
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W (two integers), got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected a positive H,W, got {text!r}")
    return h, w


def _setup(
    case: str,
    frames: int,
    filters: str,
    random_weights: bool,
    frame_size: tuple[int, int] = (1024, 1024),
) -> tuple[Any, Any, list]:
    from moca_rt.config import SAM_PRESETS
    from moca_rt.modeling.sam import build_sam, load_sam
    from moca_rt.proposals import ProposalConfig, encode_frames

    torch.manual_seed(0)
    if case == "vit_b":
        sam = build_sam(SAM_PRESETS["sam_vit_b"]).eval()
        emb = torch.randn(1, 256, 64, 64)
        sizes = [frame_size]
        cfg = ProposalConfig(points_per_side=16)
    else:
        from pipeline import render_inputs

        from moca_rt.shipped import shipped_weights

        shipped = shipped_weights()
        if random_weights:
            sam = build_sam(SAM_PRESETS["sam_synth"]).eval()
        else:
            sam = load_sam(shipped.sam, SAM_PRESETS["sam_synth"])
        inputs = render_inputs(frames, ("s4", "ms3"), seed=0, image_size=224)
        with torch.inference_mode():
            emb, sizes = encode_frames(sam, inputs.images, batch_size=4)
        cfg = ProposalConfig(**{**shipped.proposals, "points_per_side": 16})
    if filters == "recommended":
        from moca_rt.train.sam_synth import RECOMMENDED_PROPOSALS

        cfg = ProposalConfig(points_per_side=cfg.points_per_side, **RECOMMENDED_PROPOSALS)
    if filters == "off":
        cfg = ProposalConfig(
            points_per_side=cfg.points_per_side,
            pred_iou_thresh=-float("inf"),
            stability_score_thresh=-float("inf"),
        )
    return sam, cfg, [emb, sizes]


def _run(
    sam: Any, cfg: Any, emb: torch.Tensor, sizes: list, decoder: str, ort: Any = None
) -> list[torch.Tensor]:
    """The stage with ``decoder``: ``reference``, ``factored`` (torch) or ``onnxruntime`` (the
    factored decoder on ``ort``, an ``OrtGridBackend``)."""
    from moca_rt.proposals import SamProposals

    if decoder == "onnxruntime":
        source = SamProposals(sam, cfg, grid_backend=ort)
    else:
        source = SamProposals(sam, cfg, grid_decoder=decoder)  # type: ignore[arg-type]
    return source.from_embeddings(emb, sizes, None)


def _ort_backend(sam: Any, threads: int, folder: Path) -> Any:
    from moca_rt.grid_decoder import OrtGridBackend, export_grid_decoder

    export_grid_decoder(sam, folder)
    return OrtGridBackend(folder, intra_op_threads=threads)


def _mean_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    n = min(a.shape[0], b.shape[0])
    if n == 0:
        return 1.0 if a.shape[0] == b.shape[0] else 0.0
    ma, mb = a[:n] > 0, b[:n] > 0
    inter = (ma & mb).sum(dim=(1, 2)).double()
    union = (ma | mb).sum(dim=(1, 2)).double()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return float(iou.mean()) * n / max(a.shape[0], b.shape[0])


def peak_kib() -> int:
    """The process's peak resident set (VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak_kib() -> int:
    """Reset the peak to the current resident set (Linux ``clear_refs`` 5); returns it in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return peak_kib()


def _child_peak(args: argparse.Namespace, decoder: str) -> float:
    cmd = [sys.executable, __file__, "--case", args.case, "--frames", str(args.frames)]
    cmd += ["--filters", args.filters, "--threads", str(args.threads), "--child", decoder]
    cmd += ["--frame-size", f"{args.frame_size[0]},{args.frame_size[1]}"]
    if args.random_weights:
        cmd.append("--random-weights")
    if decoder == "onnxruntime":
        cmd.append("--onnxruntime")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def pipeline_agreement(
    frames: int, batch: int, repeats: int, onnxruntime: bool = False
) -> dict[str, Any]:
    """The shipped tiny pipeline on ``frames`` test frames with each grid decoder (and, with
    ``onnxruntime``, the ``--engine onnxruntime`` pipeline: trunk, SAM encoder and grid decoder
    exported from the same weights), run in turn ``repeats`` times: final masks' mean IoU
    against the reference decoder, AVSBench mIoU of each, and the median per-frame time."""
    from pipeline import render_inputs, score_masks

    from moca_rt.build import BuildSettings, build_pipeline

    built = build_pipeline(BuildSettings(proposals="grid", batch=batch))
    variants: dict[str, tuple[Any, str]] = {
        "reference": (built.pipeline, "reference"),
        "factored": (built.pipeline, "factored"),
    }
    notes = list(built.notes)
    scratch = tempfile.TemporaryDirectory(prefix="moca_pipeline_")
    if onnxruntime:
        settings = BuildSettings(
            proposals="grid", batch=batch, engine="onnxruntime", export_dir=Path(scratch.name)
        )
        ort = build_pipeline(settings)
        variants["onnxruntime"] = (ort.pipeline, "factored")
        notes += [n for n in ort.notes if n not in notes]
    inputs = render_inputs(frames, ("s4", "ms3"), seed=0, image_size=224)
    masks: dict[str, list[Any]] = {}
    ms: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (pipe, decoder) in variants.items():
            pipe.proposals.grid_decoder = decoder
            out: list[Any] = []
            start = time.perf_counter()
            for i in range(0, frames, batch):
                out += pipe.segment_batch(
                    inputs.images[i : i + batch], inputs.windows[i : i + batch]
                )
            ms[name].append(1000.0 * (time.perf_counter() - start) / frames)
            masks[name] = [r.mask for r in out]
    scratch.cleanup()
    row: dict[str, Any] = {
        "pipeline_frames": frames,
        "pipeline_batch": batch,
        "pipeline_notes": notes,
    }
    for name in variants:
        ious = []
        for a, b in zip(masks["reference"], masks[name], strict=True):
            union = (a | b).sum()
            ious.append(1.0 if union == 0 else float((a & b).sum() / union))
        suffix = "" if name == "factored" else f"_{name}"
        if name != "reference":
            row[f"final_mask_mean_iou{suffix}"] = round(statistics.mean(ious), 6)
            row[f"final_masks_identical{suffix}"] = sum(
                int((a == b).all()) for a, b in zip(masks["reference"], masks[name], strict=True)
            )
        row[f"miou_{name}"] = round(score_masks(masks[name], inputs.masks)[0], 4)
        row[f"ms_per_frame_{name}"] = [round(t, 1) for t in ms[name]]
        row[f"ms_per_frame_{name}_p50"] = round(statistics.median(ms[name]), 1)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", choices=("tiny", "vit_b"), default="tiny")
    p.add_argument("--frames", type=int, default=16, help="Frames of the tiny case.")
    p.add_argument(
        "--frame-size",
        type=_frame_size,
        default=(1024, 1024),
        help="H,W of the vit_b case's frame (its embedding stays random; a non-square frame "
        "has padding rows that the factored path does not upscale).",
    )
    p.add_argument("--repeats", type=int, default=5, help="Interleaved repetitions per decoder.")
    p.add_argument(
        "--filters",
        choices=("shipped", "recommended", "off"),
        default="shipped",
        help="Quality filters: the shipped manifest's (tiny; SAM's 0.88 / 0.95 for vit_b), "
        "train.sam_synth.RECOMMENDED_PROPOSALS, or none.",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the result row.")
    p.add_argument(
        "--pipeline",
        type=int,
        default=0,
        help="Tiny case: also run the shipped pipeline on this many frames with each decoder.",
    )
    p.add_argument("--batch", type=int, default=4, help="Frames per pipeline call (--pipeline).")
    p.add_argument(
        "--onnxruntime",
        action="store_true",
        help="Also time the factored decoder on onnxruntime (moca_rt.grid_decoder.OrtGridBackend; "
        "its export is not timed).",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    configure_threads(args.threads)  # torch's threads and the onnxruntime sessions'
    sam, cfg, (emb, sizes) = _setup(
        args.case, args.frames, args.filters, args.random_weights, args.frame_size
    )
    scratch = tempfile.TemporaryDirectory(prefix="moca_grid_")
    ort = _ort_backend(sam, args.threads, Path(scratch.name)) if args.onnxruntime else None
    if args.child:
        _run(sam, cfg, emb[:1], sizes[:1], args.child, ort)  # lazy inits outside the peak
        before = reset_peak_kib()
        _run(sam, cfg, emb, sizes, args.child, ort)
        print((peak_kib() - before) / 1024.0)
        return 0
    load_start = os.getloadavg()
    times: dict[str, list[float]] = {"reference": [], "factored": []}
    if ort is not None:
        times["onnxruntime"] = []
    outs: dict[str, list[torch.Tensor]] = {}
    for decoder in times:  # first calls: lazy inits
        _run(sam, cfg, emb[:1], sizes[:1], decoder, ort)
    for _ in range(args.repeats):
        for decoder in times:
            start = time.perf_counter()
            outs[decoder] = _run(sam, cfg, emb, sizes, decoder, ort)
            times[decoder].append(1000.0 * (time.perf_counter() - start))
    peaks = {d: _child_peak(args, d) for d in times}
    ref, fac = outs["reference"], outs["factored"]
    row = {
        "case": args.case,
        "frames": len(sizes),
        "frame_size": list(sizes[0]),
        "filters": args.filters,
        "weights": "random" if args.random_weights or args.case == "vit_b" else "shipped",
        "points_per_side": cfg.points_per_side,
        "pred_iou_thresh": cfg.pred_iou_thresh,
        "stability_score_thresh": cfg.stability_score_thresh,
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "repeats": args.repeats,
        "reference_ms": [round(t, 1) for t in times["reference"]],
        "factored_ms": [round(t, 1) for t in times["factored"]],
        "reference_ms_p50": round(statistics.median(times["reference"]), 1),
        "factored_ms_p50": round(statistics.median(times["factored"]), 1),
        "ratio_p50": round(
            statistics.median(times["factored"]) / statistics.median(times["reference"]), 3
        ),
        "reference_peak_mib": round(peaks["reference"], 1),
        "factored_peak_mib": round(peaks["factored"], 1),
        "proposals_reference": sum(int(r.shape[0]) for r in ref),
        "proposals_factored": sum(int(f.shape[0]) for f in fac),
        "frames_same_count": sum(
            int(r.shape[0] == f.shape[0]) for r, f in zip(ref, fac, strict=True)
        ),
        "mask_mean_iou": round(
            statistics.mean(_mean_iou(r, f) for r, f in zip(ref, fac, strict=True)), 6
        ),
        "max_abs_logit_diff": max(
            (
                float((r - f).abs().max())
                for r, f in zip(ref, fac, strict=True)
                if r.shape == f.shape and r.numel()
            ),
            default=0.0,
        ),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
    }
    if ort is not None:
        ort_out = outs["onnxruntime"]
        row.update(
            onnxruntime_ms=[round(t, 1) for t in times["onnxruntime"]],
            onnxruntime_ms_p50=round(statistics.median(times["onnxruntime"]), 1),
            ratio_onnxruntime_p50=round(
                statistics.median(times["onnxruntime"]) / statistics.median(times["reference"]),
                3,
            ),
            onnxruntime_peak_mib=round(peaks["onnxruntime"], 1),
            proposals_onnxruntime=sum(int(o.shape[0]) for o in ort_out),
            mask_mean_iou_onnxruntime=round(
                statistics.mean(_mean_iou(r, o) for r, o in zip(ref, ort_out, strict=True)), 6
            ),
        )
    scratch.cleanup()
    if args.pipeline and args.case == "tiny":
        row.update(pipeline_agreement(args.pipeline, args.batch, args.repeats, args.onnxruntime))
        row["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(row, indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        rows = json.loads(args.out.read_text()) if args.out.is_file() else []
        args.out.write_text(json.dumps([*rows, row], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
