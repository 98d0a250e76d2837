"""How close the timeline's sounding intervals come to the ground truth on synthetic videos.

    python benchmarks/timeline_synth.py [--clips 8] [--seconds 4] [--proposals none]
        [--min-gap 0,6] [--out benchmarks/results]

Generates ``--clips`` videos of the synthetic world's ``video`` split (224 px, 25 fps, sounds
switching on and off at frame boundaries), segments each with the shipped tiny models
(``runner.segment_source``), turns the records into intervals (``timeline.intervals_from_records``
with each ``--min-gap``, ``min_frames`` = the same value + 1 so flickers go too) and compares
them with the ground truth (frames where any object sounds):

* ``frame_agreement``: share of frames where "non-empty mask" equals "something sounds";
* ``gt_intervals`` / ``pred_intervals``: interval counts;
* ``start_err_frames`` / ``end_err_frames``: for each ground-truth interval, the distance to the
  nearest predicted start / end (mean over intervals; frames);
* ``within_1_frame``: share of ground-truth intervals whose nearest predicted interval starts
  and ends within one frame of it (the issue's criterion).

The ground truth of these clips is the mix of several sources; each frame's model input is the
2 s of sound around it, so an interval edge is heard up to 1 s (25 frames) early and late.
Results: ``OUT/timeline_synth.csv`` (appended) and ``OUT/timeline_synth.md`` (rewritten).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from csv_rows import append_rows

RESULTS = Path(__file__).parent / "results"


def _nearest(value: int, candidates: list[int]) -> int:
    return min((abs(value - c) for c in candidates), default=10**6)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--proposals", default="none", choices=("none", "auto"))
    p.add_argument("--min-gap", default="0,6")
    p.add_argument("--seed", type=int, default=20261204)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    gaps = [int(g) for g in args.min_gap.split(",")]

    from moca_rt.build import BuildSettings, build_pipeline
    from moca_rt.datasets.synth import SynthWorld
    from moca_rt.datasets.video import write_mp4
    from moca_rt.media import open_source
    from moca_rt.provenance import git_commit
    from moca_rt.runner import segment_source
    from moca_rt.sinks import read_jsonl
    from moca_rt.timeline import frame_intervals, intervals_from_records

    pipeline = build_pipeline(BuildSettings(proposals=args.proposals)).pipeline
    world = SynthWorld(args.seed, video_seconds=args.seconds)
    per_gap: dict[int, list[dict[str, float]]] = {g: [] for g in gaps}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.clips):
            scene = world.sample("video", i, partition="test")
            video = write_mp4(Path(tmp) / f"v{i}.mp4", scene.frames, scene.audio, fps=25.0)
            out = Path(tmp) / f"out{i}"
            segment_source(pipeline, open_source(str(video)), out, batch=4)
            records = read_jsonl(out / "records.jsonl")
            gt_flags = scene.masks.reshape(scene.num_frames, -1).any(axis=1)
            gt = frame_intervals(list(gt_flags))
            for gap in gaps:
                pred = intervals_from_records(records, min_gap=gap, min_frames=gap + 1)
                flags = np.zeros(scene.num_frames, bool)
                for iv in pred:
                    flags[iv.start : iv.end] = True
                starts, ends = [iv.start for iv in pred], [iv.end for iv in pred]
                start_err = [_nearest(s, starts) for s, _ in gt]
                end_err = [_nearest(e, ends) for _, e in gt]
                per_gap[gap].append(
                    {
                        "frame_agreement": float((flags == gt_flags).mean()),
                        "gt_intervals": len(gt),
                        "pred_intervals": len(pred),
                        "start_err_frames": float(np.mean(start_err)) if gt else 0.0,
                        "end_err_frames": float(np.mean(end_err)) if gt else 0.0,
                        "within_1": sum(
                            s <= 1 and e <= 1 for s, e in zip(start_err, end_err, strict=True)
                        ),
                    }
                )
            print(f"clip {i}: gt {gt}", file=sys.stderr)
    rows = []
    for gap, clips in per_gap.items():
        gt_total = sum(c["gt_intervals"] for c in clips)
        rows.append(
            {
                "timestamp_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": platform.node(),
                "commit": git_commit(short=True) or "",
                "world_seed": args.seed,
                "clips": args.clips,
                "seconds": args.seconds,
                "proposals": args.proposals,
                "min_gap": gap,
                "min_frames": gap + 1,
                "frame_agreement": round(float(np.mean([c["frame_agreement"] for c in clips])), 3),
                "gt_intervals": gt_total,
                "pred_intervals": sum(c["pred_intervals"] for c in clips),
                "start_err_frames": round(
                    float(np.mean([c["start_err_frames"] for c in clips])), 1
                ),
                "end_err_frames": round(float(np.mean([c["end_err_frames"] for c in clips])), 1),
                "within_1_frame": round(sum(c["within_1"] for c in clips) / max(gt_total, 1), 3),
            }
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "timeline_synth.csv"
    append_rows(path, rows)
    keys = [k for k in rows[0] if k not in ("timestamp_utc", "machine", "commit", "world_seed")]
    md = [
        "# Timeline intervals vs ground truth (synthetic videos, shipped tiny models)",
        "",
        f"{rows[0]['timestamp_utc']}, commit {rows[0]['commit']}, world seed {args.seed} "
        f"(test partition), {os.cpu_count()} CPU cores.",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + " --- |" * len(keys),
        *("| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows),
        "",
    ]
    (args.out / "timeline_synth.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
