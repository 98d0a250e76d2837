"""Quality of the shipped tiny models on a held-out synthetic test world (the paper's Table 1-2
rows in one harness).

    python benchmarks/quality_synth.py                       # the shipped weights
    python benchmarks/quality_synth.py --weights RUN/weights --runs RUN   # a reproduce run

The test world uses ``--test-seed`` (default 20261204), a world seed that no training stage
and no calibration ever reads (they use seed 0, partitions train and val); scenes come from its
``test`` partition. Rows (see :mod:`moca_rt.train.quality`): ``moca`` (the shipped default:
adapter + calibrated cluster choice + SAM MPM), ``moca_no_mpm``, ``frozen_mpm``,
``frozen_no_mpm`` (no adapter), ``owod_bind`` (SAM proposals scored by their masked crop's
ImageBind embedding against the audio, threshold calibrated on val), ``sam_oracle`` (best SAM
grid proposal per sounding object: upper bound), ``all_background``, ``all_foreground``.
Columns: AVSBench mIoU and F-score on S4 and MS3 (4 frames per meter batch, as ``test.sh``'s
``--test_batch_size 4``), and the share of ``silent``, ``offscreen`` and ``noise`` clips given
an empty mask. Writes ``results/quality_synth.csv``, ``.md`` and ``.png`` (the table as bars,
plus the training curves when ``--runs`` names a reproduce folder).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moca_rt.config import MOCA_PRESETS, SAM_PRESETS
from moca_rt.modeling.moca import MocaModel
from moca_rt.modeling.sam import load_sam
from moca_rt.pipeline import MocaPipeline, PipelineConfig
from moca_rt.proposals import ProposalConfig, SamProposals
from moca_rt.shipped import ASSETS_DIR, load_manifest
from moca_rt.train.quality import (
    ReplayProposals,
    ReplayTrunk,
    oracle_masks,
    owod_bind_masks,
    owod_scores,
    pipeline_masks,
)
from moca_rt.train.synth_eval import EvalSet, avsbench_scores, render_eval_set

RESULTS = Path(__file__).resolve().parent / "results"
SPLITS = ("s4", "ms3", "silent", "offscreen", "noise")
METHODS = (
    "moca",
    "moca_no_mpm",
    "frozen_mpm",
    "frozen_no_mpm",
    "owod_bind",
    "sam_oracle",
    "all_background",
    "all_foreground",
)


def _calibrate_owod(
    scored_val: dict[str, Any], val: dict[str, EvalSet], silent_val: dict[str, list[bool]]
) -> tuple[float, float]:
    """OWOD-BIND threshold and delta maximising mean(S4, MS3 mIoU) + empties, on val only."""
    best, best_value = (0.0, 0.0), -1.0
    for thr in np.round(np.arange(-0.2, 0.8, 0.025), 4):
        for delta in (0.0, 0.05, 0.1, 0.2, 1.0):
            rows = {}
            for split, data in val.items():
                masks = owod_bind_masks(scored_val[split], float(thr), delta, silent_val[split])
                s = avsbench_scores(masks, data.masks)
                rows[split] = s.miou if split in ("s4", "ms3") else s.empty_share
            quality = 0.5 * (rows["s4"] + rows["ms3"])
            empties = [rows[k] for k in ("offscreen", "noise") if k in rows]
            value = 0.75 * quality + 0.25 * (sum(empties) / len(empties) if empties else 0.0)
            if value > best_value:
                best, best_value = (float(thr), float(delta)), value
    return best


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(args.threads)
    folder = Path(args.weights)
    manifest = load_manifest(folder)
    roles = manifest["roles"]
    pcfg = PipelineConfig(**manifest["calibration"]["pipeline"])
    props_cfg = ProposalConfig(**manifest["calibration"]["proposals"])
    imagebind, adapter, sam_path = (folder / roles[r] for r in ("imagebind", "adapter", "sam"))
    moca = ReplayTrunk(
        MocaModel.from_config(
            MOCA_PRESETS["moca_synth"], imagebind_weights=imagebind, adapter_weights=adapter
        )
    )
    frozen = ReplayTrunk(
        MocaModel.from_config(MOCA_PRESETS["moca_synth"], imagebind_weights=imagebind)
    )
    sam = ReplayProposals(SamProposals(load_sam(sam_path, SAM_PRESETS["sam_synth"]), props_cfg))
    t0 = time.perf_counter()
    test = {
        split: render_eval_set(
            split,
            args.scenes if split in ("s4", "ms3") else args.empty_scenes,
            args.test_seed,
            "test",
            224,
        )
        for split in SPLITS
    }
    print(
        f"rendered the test world (seed {args.test_seed}) in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )

    # OWOD-BIND's threshold is calibrated on the training world's val partition, like MoCA's tau.
    val = {
        split: render_eval_set(split, args.val_scenes, 0, "val", 224)
        for split in ("s4", "ms3", "offscreen", "noise")
    }

    def silent_flags(data: EvalSet) -> list[bool]:
        from moca_rt.clustering import window_dbfs

        return (window_dbfs(data.windows) < pcfg.silence_dbfs).tolist()

    scored_val = {s: owod_scores(frozen.trunk, sam, d) for s, d in val.items()}
    owod_thr, owod_delta = _calibrate_owod(
        scored_val, val, {s: silent_flags(d) for s, d in val.items()}
    )
    print(f"owod_bind calibrated on val: threshold {owod_thr}, delta {owod_delta}", flush=True)

    pipelines: dict[str, Callable[[EvalSet], list[np.ndarray]]] = {
        "moca": lambda d: pipeline_masks(MocaPipeline(moca, sam, pcfg), d),  # type: ignore[arg-type]
        "moca_no_mpm": lambda d: pipeline_masks(MocaPipeline(moca, None, pcfg), d),  # type: ignore[arg-type]
        "frozen_mpm": lambda d: pipeline_masks(MocaPipeline(frozen, sam, pcfg), d),  # type: ignore[arg-type]
        "frozen_no_mpm": lambda d: pipeline_masks(MocaPipeline(frozen, None, pcfg), d),  # type: ignore[arg-type]
        "owod_bind": lambda d: owod_bind_masks(
            owod_scores(frozen.trunk, sam, d), owod_thr, owod_delta, silent_flags(d)
        ),
        "sam_oracle": lambda d: oracle_masks(sam, d),
        "all_background": lambda d: [np.zeros_like(m) for m in d.masks],
        "all_foreground": lambda d: [np.ones_like(m) for m in d.masks],
    }
    rows = []
    for method in METHODS:
        t = time.perf_counter()
        row: dict[str, Any] = {"method": method}
        for split, data in test.items():
            s = avsbench_scores(pipelines[method](data), data.masks)
            if split in ("s4", "ms3"):
                row[f"{split}_miou"], row[f"{split}_f"] = round(s.miou, 4), round(s.fscore, 4)
            else:
                row[f"{split}_empty"] = round(s.empty_share, 4)
        row["seconds"] = round(time.perf_counter() - t, 1)
        print(" ".join(f"{k} {v}" for k, v in row.items()), flush=True)
        rows.append(row)
    meta = {
        "test_seed": args.test_seed,
        "scenes_s4_ms3": args.scenes,
        "scenes_empty_splits": args.empty_scenes,
        "weights": str(folder),
        "weights_sha256": {k: v["sha256"][:12] for k, v in manifest["files"].items()},
        "pipeline": {
            k: getattr(pcfg, k)
            for k in ("num_clusters", "tau", "delta", "mpm_threshold", "mpm_metric")
        },
        "proposals": manifest["calibration"]["proposals"],
        "owod_bind": {"threshold": owod_thr, "delta": owod_delta},
        "torch": torch.__version__,
        "threads": args.threads,
    }
    for r in rows:
        r["test_seed"] = args.test_seed
    write(rows, meta, args)
    return rows


def write(rows: list[dict[str, Any]], meta: dict[str, Any], args: argparse.Namespace) -> None:
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    cols = list(rows[0])
    with (out / "quality_synth.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    lines = [
        "# Quality on the held-out synthetic test world",
        "",
        f"Test world seed {meta['test_seed']} (never used in training or calibration), "
        f"partition `test`; {meta['scenes_s4_ms3']} scenes each for S4/MS3, "
        f"{meta['scenes_empty_splits']} for silent/offscreen/noise. AVSBench mIoU / F-score with "
        "4 frames per meter batch; `*_empty` = share of clips given an empty mask.",
        "",
        "| method | S4 mIoU | S4 F | MS3 mIoU | MS3 F "
        "| silent empty | offscreen empty | noise empty |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['s4_miou']:.3f} | {r['s4_f']:.3f} "
            f"| {r['ms3_miou']:.3f} | {r['ms3_f']:.3f} | "
            f"{r['silent_empty']:.2f} | {r['offscreen_empty']:.2f} | {r['noise_empty']:.2f} |"
        )
    lines += ["", "Settings:", "", "```json", json.dumps(meta, indent=2, sort_keys=True), "```", ""]
    (out / "quality_synth.md").write_text("\n".join(lines))
    plot(rows, out / "quality_synth.png", Path(args.runs) if args.runs else None)


def plot(rows: list[dict[str, Any]], path: Path, runs: Path | None) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return
    curves = _curves(runs) if runs is not None else {}
    n = 1 + len(curves)
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.2), squeeze=False)
    ax = axes[0, 0]
    keys = ["s4_miou", "ms3_miou", "silent_empty", "offscreen_empty", "noise_empty"]
    x = np.arange(len(rows))
    for i, k in enumerate(keys):
        ax.bar(x + (i - 2) * 0.16, [r[k] for r in rows], 0.16, label=k)
    ax.set_xticks(x, [r["method"] for r in rows], rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("held-out synthetic test world")
    for j, (name, series) in enumerate(curves.items(), start=1):
        ax = axes[0, j]
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None)
        ax.set_title(f"training: {name}")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _curves(runs: Path) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """Per stage: train losses and validation metrics from ``RUN/<stage>/log.jsonl``."""
    out: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for stage in ("imagebind", "sam", "adaav"):
        log = runs / stage / "log.jsonl"
        if not log.is_file():
            continue
        series: dict[str, tuple[list[float], list[float]]] = {}
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("kind") not in ("train", "eval"):
                continue
            for k, v in rec.items():
                skip = (
                    k in ("stage", "time", "kind", "step", "steps_per_s")
                    or "per_image" in k
                    or "seconds" in k
                )
                if skip or not isinstance(v, int | float):
                    continue
                xs, ys = series.setdefault(k, ([], []))
                xs.append(rec["step"])
                ys.append(v)
        out[stage] = series
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Quality table of the tiny models on a held-out synthetic test world."
    )
    p.add_argument(
        "--weights",
        default=str(ASSETS_DIR),
        help="Weights folder with manifest.json (default: shipped).",
    )
    p.add_argument(
        "--runs", default=None, help="A reproduce run folder: adds its training curves to the plot."
    )
    p.add_argument(
        "--test-seed",
        type=int,
        default=20261204,
        help="World seed of the test scenes (never trained on).",
    )
    p.add_argument("--scenes", type=int, default=96, help="Scenes for each of S4 and MS3.")
    p.add_argument(
        "--empty-scenes", type=int, default=48, help="Scenes for each of silent, offscreen, noise."
    )
    p.add_argument(
        "--val-scenes", type=int, default=48, help="Val scenes per split for OWOD-BIND's threshold."
    )
    p.add_argument("--threads", type=int, default=1, help="Torch threads.")
    p.add_argument("--results", default=str(RESULTS), help="Output folder.")
    return p


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
