"""How well ``python -m moca_rt.infer --demo`` segments its own clip, and the README's figure.

    python benchmarks/demo_quality.py            # shipped tiny models
    python benchmarks/demo_quality.py --random-weights

Runs the demo exactly as the CLI does (the same generated 2 s clip of the synthetic world, seed
0), scores every frame's mask against the clip's ground truth (the objects sounding at that
frame) with AVSBench's per-frame IoU (an empty mask on an empty truth scores 1) and writes
``results/demo_quality.json`` (mean IoU, the frames/s the run printed) and, with ``--figure``,
``docs/demo_overlay.png``: a few frames with the predicted mask in red and the truth outlined
in green.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from moca_rt.datasets.synth import SynthWorld
from moca_rt.infer import DEMO_SECONDS, main as infer_main
from moca_rt.metrics import frame_ious
from moca_rt.sinks import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FIGURE = ROOT / "docs" / "demo_overlay.png"


def demo_scene(seed: int = 0) -> Any:
    """The synthetic-world scene ``infer --demo`` encodes (frames and per-frame truth masks)."""
    return SynthWorld(seed, image_size=224, video_seconds=DEMO_SECONDS).sample("video", 0)


def score_demo(out: Path, scene: Any) -> dict[str, Any]:
    """Per-frame IoU of the masks under ``out`` against the demo scene's ground truth."""
    records = [r for r in read_jsonl(out / "records.jsonl") if not r["dropped"]]
    preds = [np.asarray(Image.open(out / "masks" / f"{r['index']:06d}.png")) > 127 for r in records]
    truth = np.stack([scene.masks[r["index"]] for r in records])
    ious = frame_ious(torch.from_numpy(np.stack(preds)).int(), torch.from_numpy(truth), "binary")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "frames": len(records),
        "mean_iou": float(ious.mean()),
        "frame_ious": [round(float(x), 4) for x in ious],
        "frames_per_s": summary["processed"] / summary["wall_s"] if summary["wall_s"] else 0.0,
    }


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1]
    inner[1:-1, 1:-1] &= mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner


def write_figure(out: Path, frames: list[int], path: Path, scene: Any) -> None:
    """Input (left) and prediction in red with the truth outlined in green (right), per row."""
    rows = []
    for index in frames:
        image = scene.frames[index].astype(np.float32)
        pred = np.asarray(Image.open(out / "masks" / f"{index:06d}.png")) > 127
        tinted = image.copy()
        tinted[pred] = 0.5 * tinted[pred] + 0.5 * np.array([255.0, 0.0, 0.0])
        tinted[_outline(scene.masks[index])] = [0.0, 255.0, 0.0]
        rows.append(np.concatenate([image, tinted], axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0).astype(np.uint8)).save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--random-weights", action="store_true", help="The untrained demo models.")
    p.add_argument("--figure", action="store_true", help=f"Also write {FIGURE.relative_to(ROOT)}.")
    p.add_argument("--results", type=Path, default=RESULTS, help="Output folder.")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        flags = ["--demo", "--out", str(out), "--no-progress"]
        code = infer_main(flags + (["--random-weights"] if args.random_weights else []))
        if code != 0:
            print(f"the demo failed with exit code {code}", file=sys.stderr)
            return code
        scene = demo_scene()
        result = score_demo(out, scene)
        if args.figure:
            ious = result["frame_ious"]
            order = np.argsort(ious)
            picks = sorted({int(order[-1]), int(order[len(order) // 2]), int(order[0])})
            write_figure(out, picks, FIGURE, scene)
            result["figure_frames"] = picks
    result["weights"] = "random" if args.random_weights else "shipped"
    name = "demo_quality_random.json" if args.random_weights else "demo_quality.json"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"demo: mean IoU {result['mean_iou']:.3f} over {result['frames']} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
