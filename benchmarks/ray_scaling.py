"""Ray Serve latency/throughput (dynamic batching vs max batch 1) and Ray Data batch throughput
(1 vs 2 actors), in one run on one local Ray cluster.

    python benchmarks/ray_scaling.py [--cpus 2] [--requests 120] [--concurrency 16]
        [--batches 1,8] [--videos 8] [--actors 1,2] [--proposals none] [--out benchmarks/results]

Serve: one replica of the shipped tiny models (``--proposals none``: cluster masks only, the
fast path; ``auto`` adds the tiny SAM) behind Serve's HTTP proxy on 127.0.0.1; ``--requests``
image + WAV requests (5 different synthetic-world pairs) from a client of ``--concurrency``
threads, after 10 warm-up requests; per max batch size: latency p50/p99 (client side, ms),
throughput (requests/s), mean frames per model call. Batch: ``--videos`` generated clips (64 px,
1 s at 25 fps) through ``moca_rt.batch.run_batch`` into a fresh folder per actor count, videos/s
over the whole job (actor start-up and model loads included: what a user waits for) and over
the videos alone (sum of per-video segment times / actors).

Rows go to ``OUT/ray_serve_cpu.csv`` and ``OUT/ray_batch_cpu.csv`` (appended), the tables of
every run so far to ``OUT/ray_scaling_cpu_proposals-<none|auto>.md`` (rewritten). The machine
may be shared: each row has the 1-minute load average when it started.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import socket
import sys
import tempfile
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from csv_rows import append_rows

RESULTS = Path(__file__).parent / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _common(cpus: int) -> dict[str, object]:
    import ray
    import torch

    import moca_rt
    from moca_rt.provenance import git_commit

    return {
        "timestamp_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.node(),
        "cpu_count": os.cpu_count(),
        "ray_cpus": cpus,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "moca_rt": moca_rt.__version__,
        "commit": git_commit(short=True) or "",
    }


def _pairs(n: int = 5) -> list[dict[str, bytes]]:
    from PIL import Image

    from moca_rt.datasets.synth import SynthWorld

    world = SynthWorld(11, image_size=64, min_seconds=2.0, max_seconds=2.0)
    out = []
    for i in range(n):
        scene = world.sample("s4", i)
        png = io.BytesIO()
        Image.fromarray(scene.image).save(png, format="PNG")
        pcm = np.clip(np.round(scene.audio * 32767), -32768, 32767).astype("<i2")
        wav = io.BytesIO()
        with wave.open(wav, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(scene.sample_rate)
            w.writeframes(pcm.tobytes())
        out.append({"image": png.getvalue(), "audio": wav.getvalue()})
    return out


def bench_serve(args: argparse.Namespace, pairs: list[dict[str, bytes]]) -> list[dict]:
    import requests
    from ray import serve

    from moca_rt.build import BuildSettings
    from moca_rt.serve import ServeConfig, start

    rows = []
    for max_batch in args.batches:
        common = _common(args.cpus)
        port = _free_port()
        config = ServeConfig(
            max_batch_size=max_batch,
            batch_wait_timeout_s=args.batch_wait,
            settings=BuildSettings(proposals=args.proposals),
        )
        start(config, port=port, name=f"bench_b{max_batch}")
        url = f"http://127.0.0.1:{port}/segment"

        def call(k: int, url: str = url) -> tuple[float, int, int]:
            pair = pairs[k % len(pairs)]
            files = {
                "image": ("f.png", pair["image"], "image/png"),
                "audio": ("a.wav", pair["audio"], "audio/wav"),
            }
            t0 = time.perf_counter()
            answer = requests.post(url, files=files, timeout=600)
            ms = 1000 * (time.perf_counter() - t0)
            size = answer.json()["frames"][0]["batch_size"] if answer.ok else 0
            return ms, answer.status_code, size

        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            list(pool.map(call, range(10)))  # warm-up
            t0 = time.perf_counter()
            results = list(pool.map(call, range(args.requests)))
            wall = time.perf_counter() - t0
        serve.shutdown()
        lat = np.array([r[0] for r in results])
        ok = sum(r[1] == 200 for r in results)
        rows.append(
            {
                **common,
                "proposals": args.proposals,
                "max_batch_size": max_batch,
                "batch_wait_timeout_s": args.batch_wait,
                "concurrency": args.concurrency,
                "requests": args.requests,
                "ok": ok,
                "p50_ms": round(float(np.percentile(lat, 50)), 1),
                "p99_ms": round(float(np.percentile(lat, 99)), 1),
                "requests_per_s": round(args.requests / wall, 2),
                "mean_batch": round(float(np.mean([r[2] for r in results])), 2),
            }
        )
        print(rows[-1], file=sys.stderr)
    return rows


def bench_batch(args: argparse.Namespace, folder: Path) -> list[dict]:
    from moca_rt import batch
    from moca_rt.build import BuildSettings
    from moca_rt.datasets.synth import SynthWorld
    from moca_rt.datasets.video import write_mp4

    world = SynthWorld(5, image_size=64, video_seconds=1.0)
    clips = folder / "clips"
    for i in range(args.videos):
        scene = world.sample("video", i)
        write_mp4(clips / f"v{i}.mp4", scene.frames, scene.audio, fps=25.0)
    rows = []
    for actors in args.actors:
        common = _common(args.cpus)
        opts = batch.BatchOptions(
            inputs=[str(clips)],
            out=folder / f"out_{actors}",
            settings=BuildSettings(proposals=args.proposals),
            actors=actors,
            progress=False,
        )
        report = batch.run_batch(opts)
        seg = sum(r["timings"]["total_s"] for r in report.rows)
        frames = sum(r["frames"] for r in report.rows)
        rows.append(
            {
                **common,
                "proposals": args.proposals,
                "actors": actors,
                "videos": report.videos,
                "ok": report.ok,
                "frames": frames,
                "job_wall_s": round(report.wall_s, 2),
                "videos_per_s_job": round(report.ok / report.wall_s, 3),
                "videos_per_s_segmenting": round(report.ok / (seg / actors), 3),
            }
        )
        print(rows[-1], file=sys.stderr)
    return rows


def _read(path: Path, proposals: str) -> list[dict]:
    """The rows of a results CSV measured with ``proposals``."""
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [row for row in csv.DictReader(fh) if row["proposals"] == proposals]


def _table(rows: list[dict], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


SERVE_COLUMNS = [
    "timestamp_utc",
    "commit",
    "load_avg_1m",
    "max_batch_size",
    "ok",
    "p50_ms",
    "p99_ms",
    "requests_per_s",
    "mean_batch",
]
BATCH_COLUMNS = [
    "timestamp_utc",
    "commit",
    "load_avg_1m",
    "actors",
    "ok",
    "job_wall_s",
    "videos_per_s_job",
    "videos_per_s_segmenting",
]


def write_markdown(args: argparse.Namespace, rows: list[dict]) -> list[str]:
    """Rewrite ``ray_scaling_cpu_proposals-<p>.md`` with every run of the CSVs; its lines."""
    first = rows[0]
    md = [
        "# Ray Serve and Ray Data on this machine (CPU, shipped tiny models)",
        "",
        f"{first['machine']} ({first['cpu_count']} cores, shared with other work: the load "
        f"column is the 1-minute load average when a row started), Ray {first['ray']} local "
        f"with {args.cpus} CPUs, torch {first['torch']}, proposals {args.proposals}. Every run "
        "so far (from the CSVs), oldest first.",
        "",
    ]
    sections = [
        (
            f"## Serve: {args.requests} requests, {args.concurrency} concurrent, one replica",
            "ray_serve_cpu.csv",
            SERVE_COLUMNS,
        ),
        (f"## Batch: {args.videos} clips of 25 frames (64 px)", "ray_batch_cpu.csv", BATCH_COLUMNS),
    ]
    for title, csv_name, columns in sections:
        rows = _read(args.out / csv_name, args.proposals)
        if rows:
            md += [title, "", _table(rows, columns), ""]
    (args.out / f"ray_scaling_cpu_proposals-{args.proposals}.md").write_text("\n".join(md))
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--requests", type=int, default=120)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--batch-wait", type=float, default=0.02)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--actors", default="1,2")
    p.add_argument("--proposals", default="none", choices=("none", "auto"))
    p.add_argument("--skip", choices=("serve", "batch"))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.actors = [int(a) for a in args.actors.split(",")]
    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        serve_rows = [] if args.skip == "serve" else bench_serve(args, _pairs())
        batch_rows = [] if args.skip == "batch" else bench_batch(args, Path(tmp))
    ray.shutdown()
    append_rows(args.out / "ray_serve_cpu.csv", serve_rows)
    append_rows(args.out / "ray_batch_cpu.csv", batch_rows)
    md = write_markdown(args, serve_rows or batch_rows)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
