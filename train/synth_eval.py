"""Scoring segmenters on the synthetic world: rendered evaluation sets and AVSBench metrics.

Every stage's validation, the calibration and the quality benchmark go through these helpers,
so a number in a manifest, in docs/design.md and in ``benchmarks/results/quality_synth.*`` means
the same thing everywhere:

* :class:`EvalSet`: ``count`` single-frame scenes of one split and partition of
  ``SynthWorld(seed)``: the frames, the 2 s audio windows centred on them (what the pipeline
  segments) and the ground-truth masks;
* :func:`avsbench_scores`: AVSBench mIoU and F-score with ``frames_per_batch`` frames per meter
  batch (4, ``test.sh``'s ``--test_batch_size``; the synthetic scenes are one frame each, so a
  batch of 4 frames stands for 4 videos), plus the share of frames given an empty mask;
* :func:`patch_auc`: per-image ROC AUC of a patch score map against the ground-truth patches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["EvalSet", "avsbench_scores", "patch_auc", "patch_targets", "render_eval_set"]

WINDOW_S = 2.0


@dataclass
class EvalSet:
    """Rendered single-frame scenes: ``images`` uint8 [H, W, 3], ``windows`` float32
    [N, 32000], ``masks`` bool [H, W], ``instances`` bool [n_obj, H, W] per scene."""

    split: str
    partition: str
    seed: int
    images: list[np.ndarray]
    windows: Tensor
    masks: list[np.ndarray]
    instances: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.images)


def render_eval_set(
    split: str, count: int, seed: int, partition: str = "val", image_size: int = 224
) -> EvalSet:
    """Scenes ``0 .. count-1`` of ``split`` in ``partition`` of ``SynthWorld(seed)``."""
    from moca_rt.datasets.synth import SynthWorld
    from moca_rt.preprocess import SAMPLE_RATE, audio_windows

    if count < 1:
        raise ValueError(f"count: expected >= 1 scenes, got {count}")
    world = SynthWorld(seed, image_size=image_size)
    images, windows, masks, instances = [], [], [], []
    for i in range(count):
        scene = world.sample(split, i, partition)
        images.append(scene.image)
        masks.append(scene.mask)
        instances.append(scene.instance_masks[0])
        audio = torch.from_numpy(np.ascontiguousarray(scene.audio, dtype=np.float32))
        centre = [float(scene.frame_times[0])]
        windows.append(audio_windows(audio, centre, WINDOW_S, SAMPLE_RATE))
    return EvalSet(split, partition, seed, images, torch.cat(windows), masks, instances)


@dataclass(frozen=True)
class Scores:
    """AVSBench mIoU / F-score and the share of frames predicted empty."""

    miou: float
    fscore: float
    empty_share: float
    frames: int


def avsbench_scores(
    preds: Sequence[np.ndarray], targets: Sequence[np.ndarray], frames_per_batch: int = 4
) -> Scores:
    """AVSBench S4/MS3 metrics of bool [H, W] predictions, ``frames_per_batch`` per batch."""
    from moca_rt.metrics import ObjectMetricMeter

    if len(preds) != len(targets) or not preds:
        raise ValueError(
            f"expected as many predictions as targets (>= 1), got {len(preds)}, {len(targets)}"
        )
    meter = ObjectMetricMeter()
    for start in range(0, len(preds), frames_per_batch):
        p = torch.from_numpy(np.stack(preds[start : start + frames_per_batch]))
        t = torch.from_numpy(np.stack(targets[start : start + frames_per_batch]))
        meter.add_batch(p, t, "binary")
    res = meter.result()
    empty = sum(not bool(p.any()) for p in preds) / len(preds)
    return Scores(res.miou, res.fscore, empty, len(preds))


def segment_set(
    segment: Callable[[list[np.ndarray], Tensor], list[np.ndarray]], data: EvalSet, batch: int = 8
) -> list[np.ndarray]:
    """Run ``segment(images, windows) -> masks`` over an evaluation set in batches."""
    out: list[np.ndarray] = []
    for start in range(0, len(data), batch):
        out.extend(segment(data.images[start : start + batch], data.windows[start : start + batch]))
    return out


def patch_targets(masks: Sequence[np.ndarray], grid: int) -> Tensor:
    """bool [N, grid, grid]: patches more than half covered by the ground-truth mask."""
    m = torch.from_numpy(np.stack(masks)).float()[:, None]
    cover = (
        F.adaptive_avg_pool2d(m, grid)
        if m.shape[-1] % grid
        else F.avg_pool2d(m, m.shape[-1] // grid)
    )
    return cover[:, 0] > 0.5


def patch_auc(scores: Tensor, targets: Tensor) -> float:
    """Mean over images of the ROC AUC of patch ``scores`` [N, h, w] against bool ``targets``
    [N, h, w]; images whose patches are all one class are skipped (NaN if none is left)."""
    aucs = []
    for s, t in zip(scores.float().flatten(1), targets.flatten(1), strict=True):
        pos, neg = s[t], s[~t]
        if pos.numel() == 0 or neg.numel() == 0:
            continue
        # Mann-Whitney U: the share of (positive, negative) pairs ordered right, ties count half.
        greater = (pos[:, None] > neg[None]).float().mean()
        ties = (pos[:, None] == neg[None]).float().mean()
        aucs.append(float(greater + 0.5 * ties))
    return float(np.mean(aucs)) if aucs else float("nan")
