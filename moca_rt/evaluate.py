"""``python -m moca_rt.evaluate``: score predicted mask PNGs against AVSBench ground truth.

Usage::

    python -m moca_rt.evaluate --pred PRED_DIR --gt GT_DIR --split s4|ms3|avss [--json OUT]

Layout. Every ``*.png`` under ``--gt`` (any depth) is one ground-truth frame; its prediction is
the file at the same relative path under ``--pred``. AVSBench keeps
``gt_masks/test/<category>/<video_id>/<video_id>_<k>.png`` (S4),
``gt_masks/test/<video_id>/<video_id>_<k>.png`` (MS3) and ``<uid>/labels_rgb/<k>.png`` (AVSS):
pass the folder above the videos as ``--gt`` and mirror it under ``--pred`` with the same file
names. ``python -m moca_rt.infer`` writes exactly that: masks of a frame folder carry the ground
truth's names, and a whole split as SOURCE gives ``OUT/masks`` mirroring ``gt_masks``, so
``--pred OUT/masks --gt <root>/s4_data/gt_masks`` needs no renaming (AVSBench's own
``save_mask`` numbers frames from 0 while S4/MS3 ground truth starts at 1: rename those).
The frames of one folder form one video, in natural order of their names (``_2`` before
``_10``). Prediction PNGs that have no ground truth
are ignored and counted in ``extra_predictions``.

Masks (S4 / MS3). Ground truth and ``--pred-format binary`` predictions must be binary: pixel
values {0, 255} (255 = sounding object) or {0, 1} (1 = object); any other value is an error.
Images of mode ``P``, ``RGB`` or ``LA``/``RGBA`` are read through ``convert("L")`` (palette or
luma; alpha ignored), so a black/white palette PNG such as AVSBench's ``save_mask`` writes is
fine. For 0/255 ground truth this equals AVSBench's ``convert("1")`` loading; ``--lenient-gt``
binarises other ground truth exactly as that loader does (threshold 128 with Floyd-Steinberg
dithering) and counts such files in ``gt_non_binary_files``. With
``--pred-format prob`` a prediction is an 8-bit probability map, p = value / 255: foreground
for IoU where p > 0.5 (value >= 128), and the F sweep runs over p. Binary predictions are
scored as the probabilities 0/1 (see ``moca_rt.metrics``): at threshold 0 of the F sweep every
pixel counts as predicted, so even an empty prediction has a non-zero F-score.

Labels (AVSS). PNGs of mode ``RGB``/``RGBA``/``P`` are colour masks, mapped to the 71 classes
through the AVSBench-semantic palette (``moca_rt.frame_files.avss_palette``; class 0, black, is the
background). A ground-truth colour outside the palette becomes class 0, as in AVSBench (the
number of such pixels is reported); a predicted colour outside the palette is an error.
Single-channel PNGs (``L``, ``I``, ``I;16``) hold class indices directly.

Aggregation follows AVSBench's test scripts: frames are scored in batches of ``--batch-videos``
videos, batch mIoU and F-score are averaged over batches; AVSS sums per-class statistics over
all frames. The default is 4 for every split: the published numbers come from
``avs_scripts/{avs_s4,avs_ms3,avss}/test.sh``, which all pass ``--test_batch_size 4`` (the
``test.py`` argument default of 1 is not what they ran). The F-score depends on it: a batch's
F is computed over the batch's frames pooled, so a fully silent video scores differently alone
than inside a batch of 4 (0.554 vs 0.628 on one case). AVSBench's
AVSS loader pads 5-frame videos to 10 frames with all-background ground truth and scores the
model on black images there; we score only the frames that exist. ``--size WxH`` resizes ground
truth and predictions with nearest-neighbour first (AVSBench's AVSS test resizes to 224x224).

Exit codes: 0 success; 1 unexpected internal error; 2 bad command line (argparse);
3 invalid input (missing or unreadable file, size mismatch, non-binary mask, empty folder);
4 the JSON output could not be written.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from moca_rt.errors import InputError
from moca_rt.frame_files import (
    AVSS_NUM_CLASSES,
    natural_key,
    read_binary_mask,
    read_label_map,
    read_prob_map,
)
from moca_rt.metrics import ObjectMetricMeter, SemanticMetricMeter, f_measure, mask_iou

Split = Literal["s4", "ms3", "avss"]
PredFormat = Literal["binary", "prob"]

SPLITS: tuple[str, ...] = ("s4", "ms3", "avss")
PRED_FORMATS: tuple[str, ...] = ("binary", "prob")
# AVSBench's avs_scripts/{avs_s4,avs_ms3,avss}/test.sh: --test_batch_size 4
DEFAULT_BATCH_VIDEOS = {"s4": 4, "ms3": 4, "avss": 4}

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_OUTPUT = 4

# Invalid evaluation input (the message names the file or folder): the package's InputError.
EvaluationError = InputError


class OutputError(OSError):
    """The JSON result could not be written."""


def _png_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() == ".png"]


def collect_pairs(pred_dir: Path, gt_dir: Path) -> tuple[list[tuple[str, list[Path]]], int]:
    """Pair ground-truth PNGs with predictions by relative path and group them into videos.

    Returns:
        ``(videos, extra)``: a list of ``(video, [relative frame paths])`` sorted by video
        folder, frames in natural order; and the number of prediction PNGs without ground
        truth.

    Raises:
        EvaluationError: a folder is missing, holds no ground truth, or predictions are missing.
    """
    for name, d in (("ground-truth", gt_dir), ("prediction", pred_dir)):
        if not d.is_dir():
            raise EvaluationError(f"{name} folder {d} does not exist or is not a folder")
    gt_files = sorted(p.relative_to(gt_dir) for p in _png_files(gt_dir))
    if not gt_files:
        raise EvaluationError(f"no ground-truth PNG files under {gt_dir}")
    missing = [rel for rel in gt_files if not (pred_dir / rel).is_file()]
    if missing:
        shown = ", ".join(str(pred_dir / m) for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise EvaluationError(
            f"{len(missing)} of {len(gt_files)} prediction frames are missing: {shown}{more}"
        )
    gt_set = set(gt_files)
    extra = sum(1 for p in _png_files(pred_dir) if p.relative_to(pred_dir) not in gt_set)
    groups: dict[Path, list[Path]] = {}
    for rel in gt_files:
        groups.setdefault(rel.parent, []).append(rel)
    videos = [
        (str(folder).replace("\\", "/"), sorted(frames, key=lambda r: natural_key(r.name)))
        for folder, frames in sorted(groups.items(), key=lambda kv: natural_key(str(kv[0])))
    ]
    return videos, extra


def _stack(arrays: list[np.ndarray], paths: list[Path], what: str) -> torch.Tensor:
    shape = arrays[0].shape
    for arr, p in zip(arrays, paths, strict=True):
        if arr.shape != shape:
            raise EvaluationError(
                f"frames of one batch must share a size: expected {shape[1]}x{shape[0]} "
                f"(WxH, from {paths[0]}), got {arr.shape[1]}x{arr.shape[0]} in {p} ({what}); "
                "use --size or --batch-videos 1"
            )
    return torch.from_numpy(np.stack(arrays))


def _check_same_size(gt: np.ndarray, pred: np.ndarray, gt_path: Path, pred_path: Path) -> None:
    if gt.shape != pred.shape:
        raise EvaluationError(
            f"size mismatch for {pred_path}: expected {gt.shape[1]}x{gt.shape[0]} (WxH, as "
            f"{gt_path}), got {pred.shape[1]}x{pred.shape[0]}"
        )


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WxH`` (e.g. ``224x224``) into ``(W, H)``."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) <= 0 or int(m.group(2)) <= 0:
        raise ValueError(f"expected a size WxH such as 224x224, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def run_evaluate(
    pred_dir: str | Path,
    gt_dir: str | Path,
    split: Split,
    *,
    pred_format: PredFormat = "binary",
    batch_videos: int | None = None,
    size: tuple[int, int] | None = None,
    num_classes: int = AVSS_NUM_CLASSES,
    lenient_gt: bool = False,
    json_out: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score a folder of predicted PNGs against AVSBench-layout ground truth.

    Args:
        pred_dir: folder of predictions mirroring ``gt_dir``'s relative paths.
        gt_dir: folder of ground-truth PNGs (any nesting; one folder = one video).
        split: ``"s4"`` / ``"ms3"`` (binary masks: mIoU and F-score of ``moca_rt.metrics``)
            or ``"avss"`` (semantic labels: per-class mIoU and F-score).
        pred_format: S4/MS3 only: ``"binary"`` masks or 8-bit ``"prob"`` maps.
        batch_videos: videos per scoring batch (default 4: AVSBench's test.sh).
        size: ``(W, H)`` to resize every mask to (nearest) before scoring; ``None`` requires
            prediction and ground truth to have the same size.
        num_classes: AVSS classes including background (71).
        lenient_gt: S4/MS3: binarise non-binary ground truth exactly as AVSBench's loader
            (``convert("1")``, dithered) instead of raising; such files are counted in
            ``gt_non_binary_files``.
        json_out: where to write the result as JSON (folders are created).
        progress: show a progress bar on stderr.

    Returns:
        A JSON-ready dict: ``split``, ``miou``, ``fscore``, ``num_videos``, ``num_frames``,
        ``num_batches``, ``extra_predictions`` and split-specific fields (S4/MS3:
        ``num_empty_gt_frames``, ``per_video``; AVSS: ``miou_present``, ``fscore_present``,
        ``miou_no_bg``, ``fscore_no_bg``, ``num_classes_present``, ``per_class``,
        ``gt_unknown_colour_pixels``).

    Raises:
        ValueError: bad arguments; EvaluationError (a ValueError) for invalid input files.
        OutputError: ``json_out`` cannot be written.
    """
    if split not in SPLITS:
        raise ValueError(f"expected split in {list(SPLITS)}, got {split!r}")
    if pred_format not in PRED_FORMATS:
        raise ValueError(f"expected pred_format in {list(PRED_FORMATS)}, got {pred_format!r}")
    if split == "avss" and pred_format != "binary":
        raise ValueError(f"expected pred_format 'binary' (labels) for avss, got {pred_format!r}")
    nb = DEFAULT_BATCH_VIDEOS[split] if batch_videos is None else batch_videos
    if nb < 1:
        raise ValueError(f"expected batch_videos >= 1, got {nb}")
    if size is not None and (len(size) != 2 or min(size) <= 0):
        raise ValueError(f"expected size (W, H) with positive entries, got {size}")
    pred_root, gt_root = Path(pred_dir), Path(gt_dir)
    videos, extra = collect_pairs(pred_root, gt_root)
    batches = [videos[i : i + nb] for i in range(0, len(videos), nb)]
    num_frames = sum(len(f) for _, f in videos)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_frames, desc=f"evaluate {split}", unit="frame", file=sys.stderr)

    result: dict[str, Any] = {
        "split": split,
        "pred_dir": str(pred_root),
        "gt_dir": str(gt_root),
        "pred_format": pred_format if split != "avss" else "labels",
        "batch_videos": nb,
        "size": list(size) if size is not None else None,
        "num_videos": len(videos),
        "num_frames": num_frames,
        "num_batches": len(batches),
        "extra_predictions": extra,
    }
    try:
        if split == "avss":
            result.update(_run_semantic(pred_root, gt_root, batches, size, num_classes, bar))
        else:
            result.update(
                _run_object(pred_root, gt_root, batches, size, pred_format, lenient_gt, bar)
            )
    finally:
        if bar is not None:
            bar.close()
    if json_out is not None:
        out = Path(json_out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
        except OSError as exc:
            raise OutputError(f"cannot write {out}: {exc}") from exc
    return result


def _run_object(
    pred_root: Path,
    gt_root: Path,
    batches: list[list[tuple[str, list[Path]]]],
    size: tuple[int, int] | None,
    pred_format: PredFormat,
    lenient_gt: bool,
    bar: Any,
) -> dict[str, Any]:
    meter = ObjectMetricMeter()
    non_binary_gt = 0
    kind: Literal["binary", "probs"] = "binary" if pred_format == "binary" else "probs"
    per_video: list[dict[str, Any]] = []
    for batch in batches:
        gts: list[np.ndarray] = []
        preds: list[np.ndarray] = []
        paths: list[Path] = []
        spans: list[tuple[str, int, int]] = []
        for video, frames in batch:
            start = len(gts)
            for rel in frames:
                try:
                    g = read_binary_mask(gt_root / rel, size)
                except EvaluationError:
                    if not lenient_gt:
                        raise
                    g = read_binary_mask(gt_root / rel, size, avsbench_fallback=True)
                    non_binary_gt += 1
                if pred_format == "binary":
                    p: np.ndarray = read_binary_mask(pred_root / rel, size)
                else:
                    p = read_prob_map(pred_root / rel, size)
                _check_same_size(g, p, gt_root / rel, pred_root / rel)
                gts.append(g)
                preds.append(p)
                paths.append(gt_root / rel)
                if bar is not None:
                    bar.update(1)
            spans.append((video, start, len(gts)))
        gt_t = _stack(gts, paths, "ground truth")
        pred_t = _stack(preds, paths, "prediction")
        if len(batch) == 1:
            miou, fscore = meter.add_batch(pred_t, gt_t, kind)
            per_video.append(
                {"video": batch[0][0], "num_frames": len(gts), "miou": miou, "fscore": fscore}
            )
            continue
        meter.add_batch(pred_t, gt_t, kind)
        for video, a, b in spans:
            per_video.append(
                {
                    "video": video,
                    "num_frames": b - a,
                    "miou": float(mask_iou(pred_t[a:b], gt_t[a:b], kind).item()),
                    "fscore": f_measure(pred_t[a:b], gt_t[a:b], kind),
                }
            )
    scores = meter.result()
    return {
        "miou": scores.miou,
        "fscore": scores.fscore,
        "num_empty_gt_frames": scores.num_empty_gt_frames,
        "gt_non_binary_files": non_binary_gt,
        "per_video": per_video,
    }


def _run_semantic(
    pred_root: Path,
    gt_root: Path,
    batches: list[list[tuple[str, list[Path]]]],
    size: tuple[int, int] | None,
    num_classes: int,
    bar: Any,
) -> dict[str, Any]:
    meter = SemanticMetricMeter(num_classes=num_classes)
    unknown_total = 0
    for batch in batches:
        gts: list[np.ndarray] = []
        preds: list[np.ndarray] = []
        paths: list[Path] = []
        for _, frames in batch:
            for rel in frames:
                g, unknown = read_label_map(gt_root / rel, num_classes, size, is_gt=True)
                p, _ = read_label_map(pred_root / rel, num_classes, size, is_gt=False)
                _check_same_size(g, p, gt_root / rel, pred_root / rel)
                unknown_total += unknown
                gts.append(g)
                preds.append(p)
                paths.append(gt_root / rel)
                if bar is not None:
                    bar.update(1)
        meter.add_batch(
            _stack(preds, paths, "prediction"), _stack(gts, paths, "ground truth"), "labels"
        )
    s = meter.result()
    per_class = [
        {"class": c, "iou": s.per_class_iou[c], "fscore": s.per_class_fscore[c], "count": n}
        for c, n in enumerate(s.per_class_count)
    ]
    return {
        "miou": s.miou,
        "fscore": s.fscore,
        "miou_present": s.miou_present,
        "fscore_present": s.fscore_present,
        "miou_no_bg": s.miou_no_bg,
        "fscore_no_bg": s.fscore_no_bg,
        "num_classes": num_classes,
        "num_classes_present": s.num_classes_present,
        "per_class": per_class,
        "gt_unknown_colour_pixels": unknown_total,
    }


def format_table(result: dict[str, Any], per_video: bool = False) -> str:
    """Render a result dict of ``run_evaluate`` as a plain-text table."""
    rows: list[tuple[str, str]] = [
        ("split", str(result["split"])),
        ("videos", str(result["num_videos"])),
        ("frames", str(result["num_frames"])),
        ("batches", f"{result['num_batches']} ({result['batch_videos']} video(s) each)"),
        ("mIoU", f"{result['miou']:.4f}"),
        ("F-score", f"{result['fscore']:.4f}"),
    ]
    if result["split"] == "avss":
        rows += [
            ("classes present", f"{result['num_classes_present']} of {result['num_classes']}"),
            ("mIoU (present)", f"{result['miou_present']:.4f}"),
            ("F-score (present)", f"{result['fscore_present']:.4f}"),
            ("mIoU (no bg)", f"{result['miou_no_bg']:.4f}"),
            ("F-score (no bg)", f"{result['fscore_no_bg']:.4f}"),
        ]
    else:
        rows.append(("frames with empty GT", str(result["num_empty_gt_frames"])))
    if result["extra_predictions"]:
        rows.append(("predictions without GT", str(result["extra_predictions"])))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    if per_video and result["split"] != "avss":
        vw = max([len("video")] + [len(v["video"]) for v in result["per_video"]])
        lines.append("")
        lines.append(f"{'video'.ljust(vw)}  frames  mIoU    F-score")
        for v in result["per_video"]:
            lines.append(
                f"{v['video'].ljust(vw)}  {v['num_frames']:>6}  {v['miou']:.4f}  {v['fscore']:.4f}"
            )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``python -m moca_rt.evaluate``."""
    ap = argparse.ArgumentParser(
        prog="python -m moca_rt.evaluate",
        description=(
            "Score predicted mask PNGs against AVSBench ground truth with the AVSBench mIoU and "
            "F-score. Predictions are paired with ground truth by relative path."
        ),
        epilog=(
            "Exit codes: 0 success, 1 internal error, 2 bad command line, 3 invalid input "
            "files, 4 the JSON output could not be written."
        ),
    )
    ap.add_argument("--pred", required=True, help="Folder of predicted PNGs, mirroring --gt.")
    ap.add_argument("--gt", required=True, help="Folder of ground-truth PNGs (any nesting).")
    ap.add_argument("--split", required=True, choices=SPLITS, help="Which AVSBench setting.")
    ap.add_argument("--json", default=None, help="Also write the full result to this JSON file.")
    ap.add_argument(
        "--pred-format",
        default="binary",
        choices=PRED_FORMATS,
        help="S4/MS3 predictions: binary masks (0/255 or 0/1) or 8-bit probability maps.",
    )
    ap.add_argument(
        "--batch-videos",
        type=int,
        default=None,
        help="Videos per scoring batch, as AVSBench's --test_batch_size (default 4, what its "
        "test.sh scripts pass).",
    )
    ap.add_argument(
        "--size",
        default=None,
        help="Resize every mask to WxH with nearest-neighbour before scoring, e.g. 224x224.",
    )
    ap.add_argument(
        "--num-classes",
        type=int,
        default=AVSS_NUM_CLASSES,
        help="AVSS classes including background (AVSBench-semantic: 71).",
    )
    ap.add_argument(
        "--lenient-gt",
        action="store_true",
        help=(
            "S4/MS3: binarise non-binary ground truth as AVSBench's loader does (PIL "
            "convert('1'), dithered) instead of stopping with an error."
        ),
    )
    ap.add_argument("--per-video", action="store_true", help="Also print one row per video.")
    ap.add_argument("--no-progress", action="store_true", help="Do not show a progress bar.")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_videos is not None and args.batch_videos < 1:
        parser.error(f"--batch-videos: expected an integer >= 1, got {args.batch_videos}")
    if args.split == "avss" and args.pred_format != "binary":
        parser.error(f"--pred-format: avss takes label PNGs, got {args.pred_format!r}")
    if not 1 <= args.num_classes <= 256:
        parser.error(f"--num-classes: expected 1 to 256, got {args.num_classes}")
    try:
        size = parse_size(args.size) if args.size is not None else None
    except ValueError as exc:
        parser.error(str(exc))
    try:
        result = run_evaluate(
            args.pred,
            args.gt,
            args.split,
            pred_format=args.pred_format,
            batch_videos=args.batch_videos,
            size=size,
            num_classes=args.num_classes,
            lenient_gt=args.lenient_gt,
            json_out=args.json,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_OUTPUT
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(format_table(result, per_video=args.per_video))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
