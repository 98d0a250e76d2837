"""Synthetic world generation speed: samples/s and bytes/sample, rendering alone and with writing.

    python benchmarks/synth_world.py [--num 300] [--size 224] [--split s4] [--csv PATH]

Four rows per run, all on the chosen split: clips of 1 frame (one image + 1-5 s of audio, the
unit training code samples) and of 5 frames (an AVSBench-style 5 s clip), each rendered in
memory only and rendered + written as an AVSBench folder (PNG frames and masks, PCM16 WAV) in
a temporary directory. Reports wall-clock and process-CPU throughput (the machine may be
shared; CPU time is the fairer figure then), per-sample p50/p99 latency, and the 1-minute load
average when the row started. Rows are appended to ``benchmarks/results/synth_world.csv``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from csv_rows import append_rows

import moca_rt
from moca_rt.datasets.avsbench import AvsbenchWriter, add_scene
from moca_rt.datasets.synth import SynthWorld

DEFAULT_CSV = Path(__file__).parent / "results" / "synth_world.csv"
FIELDS = [
    "timestamp_utc",
    "machine",
    "cpu_count",
    "load_avg_1m",
    "python",
    "numpy",
    "pillow",
    "av",
    "moca_rt",
    "split",
    "image_size",
    "frames_per_clip",
    "num_classes",
    "num_samples",
    "mode",
    "samples_per_s_wall",
    "samples_per_s_cpu",
    "ms_p50",
    "ms_p99",
    "bytes_per_sample",
    "audio_seconds_mean",
]


def _versions() -> dict[str, str]:
    import av
    import PIL

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "av": av.__version__,
        "moca_rt": moca_rt.__version__,
    }


def bench(
    split: str, size: int, frames: int, num: int, write: bool, seed: int = 0
) -> dict[str, object]:
    """Generate ``num`` scenes (after 5 warm-up ones), optionally writing them; one CSV row."""
    world = SynthWorld(seed, image_size=size, frames_per_clip=frames)
    subset = {"silent": "s4"}.get(split, split)
    for i in range(5):
        world.sample(split, 10_000_000 + i)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    times = np.empty(num)
    seconds = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        writer = AvsbenchWriter(tmp, subset, class_names=world.class_names) if write else None
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for i in range(num):
            t = time.perf_counter()
            scene = world.sample(split, i, "test")
            if writer is not None:
                add_scene(writer, scene, f"v{i:06d}")
            times[i] = time.perf_counter() - t
            seconds += scene.duration
        if writer is not None:
            writer.close()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        total_bytes = (
            sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()) if write else 0
        )
    return {
        "timestamp_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}".strip(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": f"{load:.2f}",
        **_versions(),
        "split": split,
        "image_size": size,
        "frames_per_clip": frames,
        "num_classes": world.config.num_classes,
        "num_samples": num,
        "mode": "render+write" if write else "render",
        "samples_per_s_wall": f"{num / wall:.1f}",
        "samples_per_s_cpu": f"{num / cpu:.1f}",
        "ms_p50": f"{np.percentile(times, 50) * 1e3:.2f}",
        "ms_p99": f"{np.percentile(times, 99) * 1e3:.2f}",
        "bytes_per_sample": int(total_bytes / num) if write else "",
        "audio_seconds_mean": f"{seconds / num:.2f}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Measure how fast the synthetic world renders and writes samples."
    )
    parser.add_argument(
        "--num", type=int, default=300, help="Samples per measurement. Default: 300."
    )
    parser.add_argument(
        "--size", type=int, default=224, help="Image height and width. Default: 224."
    )
    parser.add_argument(
        "--split",
        default="s4",
        choices=["s4", "ms3", "avss", "silent"],
        help="Split to generate. Default: s4.",
    )
    parser.add_argument(
        "--csv", type=Path, default=DEFAULT_CSV, help="CSV file the rows are appended to."
    )
    args = parser.parse_args(argv)
    rows = []
    for frames in (1, 5):
        for write in (False, True):
            num = args.num if frames == 1 else max(args.num // 5, 10)
            row = bench(args.split, args.size, frames, num, write)
            rows.append(row)
            print(
                f"{row['mode']:>12} frames={frames} {row['samples_per_s_wall']:>7} samples/s wall, "
                f"{row['samples_per_s_cpu']:>7} cpu, p50 {row['ms_p50']} ms, "
                f"p99 {row['ms_p99']} ms, "
                f"{row['bytes_per_sample'] or '-'} B/sample (load {row['load_avg_1m']})"
            )
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    append_rows(args.csv, rows, FIELDS, lineterminator="\n")
    print(f"appended {len(rows)} rows to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
