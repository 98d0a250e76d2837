"""The synthetic world written in AVSBench layout, scored by the evaluator: oracle and trivial."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moca_rt.datasets.__main__ import run_generate
from moca_rt.evaluate import run_evaluate


def _gt_root(root: Path, split: str) -> Path:
    return root / f"{split}_data" / "gt_masks"


def _write_background(gt: Path, pred: Path) -> list[float]:
    """All-background predictions mirroring ``gt``; returns each GT frame's foreground fraction."""
    fractions = []
    for png in sorted(gt.rglob("*.png")):
        mask = np.asarray(Image.open(png)) > 0
        fractions.append(float(mask.mean()))
        out = pred / png.relative_to(gt)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros(mask.shape, np.uint8)).save(out)
    return fractions


@pytest.mark.parametrize("split", ["s4", "ms3"])
def test_oracle_and_background_on_the_synthetic_world(tmp_path: Path, split: str) -> None:
    root = run_generate(tmp_path / "world", split, 4, seed=3, size=64, frames=3, progress=False)
    gt = _gt_root(root, split)
    assert len(list(gt.rglob("*.png"))) == 12

    oracle = tmp_path / "oracle"
    shutil.copytree(gt, oracle)
    scores = run_evaluate(oracle, gt, split)
    assert scores["miou"] == pytest.approx(1.0, abs=1e-6)
    assert scores["fscore"] == pytest.approx(1.0, abs=1e-6)

    background = tmp_path / "background"
    fractions = _write_background(gt, background)
    scores = run_evaluate(background, gt, split)
    # Every S4/MS3 frame has a sounding object: an empty prediction has IoU 0 everywhere.
    assert scores["miou"] == pytest.approx(0.0, abs=1e-7)
    # AVSBench's F sweep starts at threshold 0, where every pixel counts as predicted:
    # precision = g, recall = 1, so F = 1.3 g / (0.3 g + 1), averaged per video, then over videos.
    per_frame = np.array([1.3 * g / (0.3 * g + 1.0) for g in fractions]).reshape(4, 3)
    assert scores["fscore"] == pytest.approx(per_frame.mean(axis=1).mean(), rel=1e-5)


def test_silent_clips_score_perfect_iou_for_an_empty_prediction(tmp_path: Path) -> None:
    root = run_generate(tmp_path / "world", "silent", 2, seed=5, size=64, frames=2, progress=False)
    gt = next(p for p in root.rglob("gt_masks") if p.is_dir())
    background = tmp_path / "background"
    fractions = _write_background(gt, background)
    assert fractions and all(f == 0.0 for f in fractions)
    scores = run_evaluate(background, gt, "s4")
    assert scores["miou"] == pytest.approx(1.0, abs=1e-7)  # true negatives over all pixels
    assert scores["fscore"] == 0.0  # empty-GT frames are skipped; an all-skipped batch scores 0
