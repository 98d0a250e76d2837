"""The demo's frames/s by CPU thread setting, on a quiet-ish machine and with a competing
2-thread process (issue 10, item 9).

    python benchmarks/threads.py                          # this tree, --threads 1 and 2
    python benchmarks/threads.py --code /tmp/before --label before --threads-flag none

Each run is ``python -m moca_rt.infer --demo --out TMP --no-progress [--threads N]`` in a fresh
process (the shipped tiny models on the generated 2 s, 50-frame clip); frames/s is
``processed / wall_s`` of its ``summary.json`` (model loading excluded), with the per-stage
milliseconds. ``--load`` also starts a competitor for the run's duration: a separate process
multiplying 256x256 matrices on 2 torch threads (what a training job or another service does to
a shared machine; it runs with torch's defaults whatever ``--env`` gives the demo). Rows are
appended to ``results/threads_demo.csv`` with the machine's load average before the run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "threads_demo.csv"
COMPETITOR = (
    "import torch\n"
    "torch.set_num_threads(2)\n"
    "a = torch.randn(256, 256)\n"
    "while True:\n"
    "    a = torch.tanh(a @ a)\n"
)
FIELDS = [
    "label",
    "threads",
    "load",
    "loadavg_1min",
    "frames",
    "wall_s",
    "frames_per_s",
    "vision_ms",
    "proposals_ms",
    "total_ms",
]


def run_demo(code: Path, threads: str, load: bool, env_extra: dict[str, str]) -> dict[str, object]:
    """One demo run; returns its row (without the label)."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env = {**base, **env_extra}
    competitor = None
    if load:  # the same competitor for every row: torch's defaults, not the row's extra env
        competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=base)
        time.sleep(2.0)
    loadavg = os.getloadavg()[0]
    try:
        with tempfile.TemporaryDirectory(prefix="moca_threads_") as tmp:
            cmd = [sys.executable, "-m", "moca_rt.infer", "--demo", "--out", tmp, "--no-progress"]
            if threads != "none":
                cmd += ["--threads", threads]
            done = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{cmd} failed ({done.returncode}): {done.stderr[-2000:]}")
            summary = json.loads((Path(tmp) / "summary.json").read_text())
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    stage = summary["stage_ms"]
    return {
        "threads": threads,
        "load": "2-thread competitor" if load else "none added",
        "loadavg_1min": f"{loadavg:.2f}",
        "frames": summary["processed"],
        "wall_s": f"{summary['wall_s']:.2f}",
        "frames_per_s": f"{summary['processed'] / summary['wall_s']:.2f}",
        "vision_ms": f"{stage.get('vision', 0.0):.1f}",
        "proposals_ms": f"{stage.get('proposals', 0.0):.1f}",
        "total_ms": f"{sum(stage.values()):.1f}",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--label", default="after", help="What the rows are called in the CSV.")
    ap.add_argument(
        "--threads",
        default="1,2",
        help="Comma-separated --threads values; 'none' runs without the flag (the code's "
        "default, e.g. before the flag existed).",
    )
    ap.add_argument("--loads", default="none,competitor", help="none and/or competitor.")
    ap.add_argument("--env", action="append", default=[], help="Extra NAME=VALUE for the run.")
    args = ap.parse_args(argv)
    env_extra = dict(item.split("=", 1) for item in args.env)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    new = not RESULTS.exists()
    with RESULTS.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS, lineterminator="\n")
        if new:
            writer.writeheader()
        for load in args.loads.split(","):
            for threads in args.threads.split(","):
                row = {
                    "label": args.label,
                    **run_demo(args.code, threads, load != "none", env_extra),
                }
                writer.writerow(row)
                fh.flush()
                print(", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
