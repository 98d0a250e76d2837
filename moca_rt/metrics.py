"""mIoU and F-score exactly as the AVSBench benchmark code computes them.

Every rule below is a fact read off the AVSBench repository (OpenNLPLab/AVSBench, commit
4d4c901 for S4/MS3, 35d0b42 for AVSS); the code here is our own. Sources:

* ``avs_scripts/avs_s4/utils/utility.py`` (identical in ``avs_ms3`` and ``avss``):
  ``mask_iou``, ``_eval_pr``, ``Eval_Fmeasure``.
* ``avs_scripts/avs_s4/test.py`` and ``avs_scripts/avs_ms3/test.py``: how batches are formed and
  averaged with ``utils/pyutils.py::AverageMeter``.
* ``avs_scripts/avss/utils/compute_color_metrics.py``: ``_batch_miou_fscore`` and
  ``calc_color_miou_fscore``; ``avs_scripts/avss/test.py``: accumulation over the test set.
  (The colour palette of ``avs_scripts/avss/color_dataloader.py`` is a file format:
  :mod:`moca_rt.frame_files`.)

Binary (S4 / MS3) metrics
-------------------------
Inputs are ``N x H x W`` tensors: one *batch* of frames. AVSBench passes the model's **logits**
and applies ``sigmoid`` itself; ``pred_kind`` says what the prediction holds:

* ``"logits"`` (AVSBench): foreground where ``sigmoid(x) > 0.5``; the F sweep runs on
  ``sigmoid(x)``. Like AVSBench, the sigmoid and all comparisons run in the logits' own dtype
  (float32 for AVSBench's models; float64 logits can binarise differently near 0).
* ``"probs"``: probabilities in [0, 1] (already through the sigmoid): foreground where
  ``p > 0.5``; the F sweep runs on ``p``.
* ``"binary"``: 0/1 (or bool) masks, used as the probabilities 0.0 and 1.0. This is bit-for-bit
  what AVSBench gives for the logits ``binary_to_logits(mask)`` (= -1e4 / +1e4, whose float32
  sigmoids are exactly 0.0 and 1.0), and also what it gives for the raw 0/1 mask passed as
  logits (sigmoid 0.5 / 0.731: same IoU binarisation, same maximum of the F curve).

IoU per frame (``mask_iou``): ``inter / (union + 1e-7)`` (float32, the dtype of AVSBench's
ground truth from ``ToTensor``) with ``inter = |P & G|``,
``union = |P | G|``; when the ground truth is empty, ``inter`` is the number of true-negative
pixels ``|~P & ~G|`` and ``union`` is ``H * W``. So an all-correct frame with empty ground truth
scores 1.0, and an empty-GT frame with k predicted pixels scores ``(HW - k) / HW``. The batch
value is ``sum(frame IoUs) / N`` in float32. Because ``union + 1e-7`` is rounded to float32, the
eps changes the result only when ``union == 1`` (1 + 1e-7 -> 1.00000012, IoU 0.99999988); for
``union >= 2`` it vanishes and a perfect frame scores exactly 1.0.

F-score per batch (``Eval_Fmeasure``): ``p = sigmoid(logits)``; frames whose ground truth is all
zero are skipped; for each remaining frame and each of the 255 thresholds
``torch.linspace(0, 1 - 1e-10, 255)`` (float32, so the last one is exactly 1.0) the prediction is
``p >= t``, ``prec = tp / (|pred| + 1e-20)``, ``recall = tp / (|G| + 1e-20)``,
``F = (1 + 0.3) * prec * recall / (0.3 * prec + recall)`` with NaN (0 / 0) set to 0. The F curves
of the counted frames are summed in float32 in frame order and divided by their number; the batch
F-score is the maximum of that averaged curve. A batch whose frames all have empty ground truth
scores 0.0 (the curve stays at zeros) and still counts in the average over batches.
For a binary prediction the curve has two values: at threshold 0 every pixel is predicted
(``p >= 0`` always), so prec = |G| / HW, recall = 1; at every other threshold the prediction is
the mask itself. The batch F-score is the larger of the two frame-averaged values, so even an
all-background prediction scores ``mean(1.3 g / (0.3 g + 1))`` with g = |G| / HW.

Aggregation (``test.py`` + ``AverageMeter``): the test loader yields ``test_batch_size`` videos
of 5 frames (4 in AVSBench's ``test.sh`` scripts, which produced the published numbers; 1 is
only ``test.py``'s argument default); the batch is flattened to ``N = videos * 5`` frames.
The batch mIoU (a float32 tensor) and the batch F-score (a Python float) are each added to an
AverageMeter; the reported numbers are sum / number of batches: the mIoU sum is accumulated as a
float32 tensor, the F sum as a Python float (float64). ``ObjectMetricMeter`` does the same.

Semantic (AVSS) metrics
-----------------------
``_batch_miou_fscore``: labels are argmax over the softmax of ``N x C x H x W`` logits (or the
given label maps). Per frame and per class c: ``inter = |P=c & G=c|``, ``pred = |P=c|``,
``lab = |G=c|``, ``union = pred + lab - inter``; ``iou = inter / (2.220446049250313e-16 +
union)`` (0 for a class in neither map); ``precision = inter / pred``, ``recall = inter / lab``,
``F = 1.3 p r / (0.3 p + r)`` with NaN set to 0 (a class missing from prediction or GT scores 0).
IoUs and F-scores are summed over frames per class (float32), and a class's count grows by one
for every frame where its union is non-zero. ``avss/test.py`` sums these over batches, then
``miou_pc = iou_sum / count`` with NaN (never seen) set to 0, and reports ``mean(miou_pc)`` over
**all** C classes (classes never seen count as 0); the F-score likewise. Class 0 (palette black)
is the background. ``SemanticMetricMeter`` reproduces this, and also reports the means over the
classes that were seen (the per-batch numbers the script prints) and without the background.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from moca_rt.frame_files import AVSS_NUM_CLASSES

PredKind = Literal["logits", "probs", "binary"]
SemanticPredKind = Literal["labels", "logits"]

IOU_EPS = 1e-7
PR_EPS = 1e-20
SEMANTIC_EPS = 2.220446049250313e-16
BETA2 = 0.3
NUM_THRESHOLDS = 255
BINARY_LOGIT = 1e4

__all__ = [
    "AVSS_NUM_CLASSES",
    "ObjectMetricMeter",
    "ObjectScores",
    "PredKind",
    "SemanticMetricMeter",
    "SemanticScores",
    "binarize",
    "binary_to_logits",
    "f_measure",
    "f_measure_curve",
    "frame_ious",
    "mask_iou",
    "precision_recall",
    "semantic_batch_stats",
    "thresholds",
    "to_probabilities",
]


def _check_batch(pred: torch.Tensor, target: torch.Tensor) -> None:
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise ValueError(
            f"expected torch.Tensor prediction and target, got {type(pred).__name__} and "
            f"{type(target).__name__}"
        )
    if pred.dim() != 3:
        raise ValueError(f"expected prediction of shape N x H x W, got {tuple(pred.shape)}")
    if pred.shape != target.shape:
        raise ValueError(
            f"expected target of the prediction's shape {tuple(pred.shape)}, got "
            f"{tuple(target.shape)}"
        )
    if pred.numel() == 0:
        raise ValueError(f"expected a non-empty batch, got shape {tuple(pred.shape)}")


def _binary_float(mask: torch.Tensor, name: str) -> torch.Tensor:
    """0/1 tensor -> floating 0.0/1.0 (floating dtypes kept, others float32); else ValueError.

    A float64 target keeps AVSBench's arithmetic in float64 (as the original code would run);
    integer targets give the same numbers as float32 ones there, and bool targets (which the
    original cannot subtract) are taken as float32.
    """
    if mask.dtype == torch.bool:
        return mask.to(torch.float32)
    bad = (mask != 0) & (mask != 1)
    if bool(bad.any()):
        first = bad.nonzero()[0].tolist()
        raise ValueError(
            f"expected {name} values in {{0, 1}}, got {mask[tuple(first)].item()} at index {first}"
        )
    return mask if mask.is_floating_point() else mask.to(torch.float32)


def binary_to_logits(mask: torch.Tensor) -> torch.Tensor:
    """Turn a 0/1 mask into logits that AVSBench binarises back to exactly the same mask.

    Args:
        mask: any shape, bool or numbers in {0, 1}.

    Returns:
        float32 tensor of the same shape: +1e4 on the mask, -1e4 elsewhere. In float32,
        ``sigmoid(+1e4) == 1.0`` and ``sigmoid(-1e4) == 0.0`` exactly, so both the IoU (> 0.5)
        and every threshold of the F sweep (>= t, t in [0, 1]) see the mask itself, except
        threshold 0 where every pixel counts as predicted (as for any AVSBench input).
    """
    m = _binary_float(mask, "mask").to(torch.float32)
    return (m * 2.0 - 1.0) * BINARY_LOGIT


def to_probabilities(pred: torch.Tensor, pred_kind: PredKind = "logits") -> torch.Tensor:
    """The foreground probabilities AVSBench thresholds (``sigmoid(logits)``).

    Args:
        pred: N x H x W (any shape works) logits, probabilities in [0, 1] or 0/1 masks.
        pred_kind: ``"logits"`` (sigmoid in the logits' dtype, as AVSBench), ``"probs"``
            (used as given, must lie in [0, 1]; NaN allowed) or ``"binary"`` (0/1 or bool,
            mapped to float32 0.0 / 1.0).

    Returns:
        floating tensor of ``pred``'s shape (``pred``'s dtype; float32 for ``"binary"``).
        NaN logits stay NaN (never foreground, as in AVSBench, since every comparison with NaN
        is false).
    """
    if pred_kind == "logits":
        if not pred.is_floating_point():
            raise ValueError(f"expected floating-point logits, got dtype {pred.dtype}")
        return torch.sigmoid(pred)
    if pred_kind == "probs":
        if not pred.is_floating_point():
            raise ValueError(f"expected floating-point probabilities, got dtype {pred.dtype}")
        p = pred
        outside = (p < 0) | (p > 1)
        if bool(outside.any()):
            first = outside.nonzero()[0].tolist()
            raise ValueError(
                f"expected probabilities in [0, 1], got {p[tuple(first)].item()} at index {first}"
            )
        return p
    if pred_kind == "binary":
        return _binary_float(pred, "binary prediction").to(torch.float32)
    raise ValueError(f"expected pred_kind in ['logits', 'probs', 'binary'], got {pred_kind!r}")


def binarize(pred: torch.Tensor, pred_kind: PredKind = "logits") -> torch.Tensor:
    """AVSBench's IoU binarisation: ``(sigmoid(logits) > 0.5).int()``.

    Args:
        pred: any shape; see ``to_probabilities`` for ``pred_kind``.

    Returns:
        int32 tensor of 0/1, same shape.
    """
    return (to_probabilities(pred, pred_kind) > 0.5).int()


def frame_ious(
    pred: torch.Tensor,
    target: torch.Tensor,
    pred_kind: PredKind = "logits",
    eps: float = IOU_EPS,
) -> torch.Tensor:
    """Per-frame IoU as in AVSBench ``utility.py::mask_iou`` (before its batch mean).

    Args:
        pred: N x H x W prediction (``pred_kind`` as in ``to_probabilities``).
        target: N x H x W ground truth, bool or numbers in {0, 1}.
        pred_kind: what ``pred`` holds.
        eps: added to the union (AVSBench: 1e-7).

    Returns:
        tensor [N] in the target's floating dtype (float32 for integer/bool targets):
        ``inter / (union + eps)``; for a frame with empty ground truth, true-negative pixels
        over ``H * W``.
    """
    _check_batch(pred, target)
    g = _binary_float(target, "target")
    p = binarize(pred, pred_kind)
    num_pixels = pred.shape[-1] * pred.shape[-2]
    no_obj = g.sum(2).sum(1) == 0
    inter = (p * g).sum(2).sum(1)
    union = torch.maximum(p, g).sum(2).sum(1)
    inter_no_obj = ((1 - g) * (1 - p)).sum(2).sum(1)
    inter[no_obj] = inter_no_obj[no_obj]
    union[no_obj] = num_pixels
    return inter / (union + eps)


def mask_iou(
    pred: torch.Tensor,
    target: torch.Tensor,
    pred_kind: PredKind = "logits",
    eps: float = IOU_EPS,
) -> torch.Tensor:
    """Batch mIoU exactly as AVSBench ``mask_iou``: ``sum(frame IoUs) / N``.

    Args:
        pred: N x H x W prediction (AVSBench: logits).
        target: N x H x W ground truth in {0, 1}.

    Returns:
        0-dim tensor (float32 for float32 or integer targets) on ``pred``'s device.
    """
    ious = frame_ious(pred, target, pred_kind, eps)
    return torch.sum(ious) / ious.shape[0]


def thresholds(num: int = NUM_THRESHOLDS, device: torch.device | str | None = None) -> torch.Tensor:
    """The F sweep's thresholds, ``torch.linspace(0, 1 - 1e-10, num)`` in float32.

    In float32 ``1 - 1e-10`` is 1.0, so the sweep runs from 0.0 to exactly 1.0. The values are
    those of torch's linspace (not always the nearest float32 to k / (num - 1)).
    """
    if num < 2:
        raise ValueError(f"expected at least 2 thresholds, got {num}")
    return torch.linspace(0, 1 - 1e-10, num).to(device)


def precision_recall(
    probs: torch.Tensor, target: torch.Tensor, num: int = NUM_THRESHOLDS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Precision and recall of one frame at each threshold, as AVSBench ``_eval_pr``.

    Args:
        probs: H x W probabilities (``to_probabilities`` output; NaN never counts); compared
            with the thresholds in their own dtype, as AVSBench's ``y_pred >= thlist[i]``.
        target: H x W ground truth in {0, 1}.
        num: number of thresholds (AVSBench: 255).

    Returns:
        ``(prec, recall)``, float32 tensors [num]; ``prec[i] = tp / (|p >= t_i| + 1e-20)``,
        ``recall[i] = tp / (|G| + 1e-20)``. Computed with one sort-free pass (searchsorted and
        counts) instead of AVSBench's loop; the counts are exact integers and the divisions
        are the same operations in the same dtypes, so the results are identical.
    """
    if probs.shape != target.shape or probs.dim() != 2:
        raise ValueError(
            f"expected H x W probabilities and target of one shape, got {tuple(probs.shape)} "
            f"and {tuple(target.shape)}"
        )
    prec, recall = _batched_pr(probs[None], _binary_float(target, "target")[None], num)
    return prec[0], recall[0]


def _batched_pr(
    probs: torch.Tensor, g: torch.Tensor, num: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``precision_recall`` for N frames at once: N x H x W inputs -> two N x num tensors."""
    if not probs.is_floating_point():
        raise ValueError(f"expected floating-point probabilities, got dtype {probs.dtype}")
    n = probs.shape[0]
    p = probs.reshape(n, -1)
    # rounding the sorted thresholds to p's dtype keeps them sorted (maybe with ties), and
    # "p >= t" is then the same comparison AVSBench makes after type promotion.
    th = thresholds(num, p.device).to(p.dtype)
    # k = number of thresholds t with p >= t; the pixel is predicted at thresholds 0 .. k-1.
    k = torch.searchsorted(th, p.contiguous(), right=True)
    k = torch.where(torch.isnan(p), torch.zeros_like(k), k)
    k = k + torch.arange(n, device=k.device)[:, None] * (num + 1)
    w = g.reshape(n, -1).to(torch.float64)
    hist_all = torch.bincount(k.flatten(), minlength=n * (num + 1)).reshape(n, num + 1)
    hist_pos = torch.bincount(k.flatten(), weights=w.flatten(), minlength=n * (num + 1))
    hist_pos = hist_pos.reshape(n, num + 1)
    # count at threshold i = number of pixels with k > i (reverse cumulative sum).
    n_pred = hist_all.flip(1).cumsum(1).flip(1)[:, 1:].to(torch.float32)
    # AVSBench: tp = (float32 prediction * y).sum() is in promote(float32, y.dtype), |G| is
    # y.sum() in y's dtype; the quotients are stored into float32 tensors.
    tp = hist_pos.flip(1).cumsum(1).flip(1)[:, 1:].to(torch.promote_types(torch.float32, g.dtype))
    n_gt = torch.stack([g[i].sum() for i in range(n)])[:, None]
    prec = (tp / (n_pred + PR_EPS)).to(torch.float32)
    recall = (tp / (n_gt + PR_EPS)).to(torch.float32)
    return prec, recall


def f_measure_curve(
    pred: torch.Tensor,
    target: torch.Tensor,
    pred_kind: PredKind = "logits",
    num: int = NUM_THRESHOLDS,
    beta2: float = BETA2,
) -> tuple[torch.Tensor, int]:
    """The frame-averaged F curve of one batch, as built inside AVSBench ``Eval_Fmeasure``.

    Args:
        pred: N x H x W prediction (AVSBench: logits).
        target: N x H x W ground truth in {0, 1}.
        pred_kind: what ``pred`` holds.
        num: number of thresholds.
        beta2: beta squared (AVSBench: 0.3).

    Returns:
        ``(curve, counted)``: float32 [num] mean F over the frames with non-empty ground
        truth (zeros when there are none) and the number of such frames.
    """
    _check_batch(pred, target)
    probs = to_probabilities(pred, pred_kind)
    g = _binary_float(target, "target")
    curve = torch.zeros(num, dtype=torch.float32, device=pred.device)
    keep = [i for i in range(pred.shape[0]) if bool(g[i].sum() != 0)]
    if not keep:
        return curve, 0
    prec, recall = _batched_pr(probs[keep], g[keep], num)
    f = (1 + beta2) * prec * recall / (beta2 * prec + recall)
    f[torch.isnan(f)] = 0
    total = f[0].clone()
    for row in f[1:]:  # summed frame by frame in order, as AVSBench's avg_f
        total = total + row
    counted = len(keep)
    curve = total / counted
    return curve, counted


def f_measure(
    pred: torch.Tensor,
    target: torch.Tensor,
    pred_kind: PredKind = "logits",
    num: int = NUM_THRESHOLDS,
    beta2: float = BETA2,
) -> float:
    """Batch F-score exactly as AVSBench ``Eval_Fmeasure``: max of the frame-averaged F curve.

    Args:
        pred: N x H x W prediction (AVSBench: logits).
        target: N x H x W ground truth in {0, 1}; frames with empty ground truth are skipped.

    Returns:
        Python float (the float32 maximum); 0.0 when every frame has empty ground truth.
    """
    curve, _ = f_measure_curve(pred, target, pred_kind, num, beta2)
    return float(curve.max().item())


@dataclass(frozen=True)
class ObjectScores:
    """S4 / MS3 scores over a test set (means over batches, as AVSBench ``test.py``)."""

    miou: float
    fscore: float
    num_batches: int
    num_frames: int
    num_empty_gt_frames: int


@dataclass
class ObjectMetricMeter:
    """Accumulates batch mIoU and F-score like AVSBench ``test.py`` with its AverageMeter.

    Call ``add_batch`` once per loader batch (AVSBench's ``test.sh``: ``--test_batch_size 4``,
    i.e. 4 videos of 5 frames). mIoU batch values are summed as a float32 tensor, F-scores as Python
    floats; ``result`` divides both by the number of batches.
    """

    num_thresholds: int = NUM_THRESHOLDS
    batch_miou: list[float] = field(default_factory=list)
    batch_fscore: list[float] = field(default_factory=list)
    _miou_sum: torch.Tensor | None = None
    _f_sum: float = 0.0
    _frames: int = 0
    _empty: int = 0

    def add_batch(
        self, pred: torch.Tensor, target: torch.Tensor, pred_kind: PredKind = "logits"
    ) -> tuple[float, float]:
        """Score one batch (N x H x W prediction and {0, 1} target); returns (mIoU, F)."""
        miou = mask_iou(pred, target, pred_kind)
        fscore = f_measure(pred, target, pred_kind, self.num_thresholds)
        m = miou.cpu()
        self._miou_sum = m if self._miou_sum is None else self._miou_sum + m
        self._f_sum += fscore
        self._frames += pred.shape[0]
        self._empty += int((target.reshape(target.shape[0], -1) != 0).sum(1).eq(0).sum())
        self.batch_miou.append(float(miou.item()))
        self.batch_fscore.append(fscore)
        return float(miou.item()), fscore

    def result(self) -> ObjectScores:
        """Means over the batches added so far; raises ValueError when there are none."""
        n = len(self.batch_miou)
        if n == 0 or self._miou_sum is None:
            raise ValueError("expected at least one batch, got none")
        return ObjectScores(
            miou=float((self._miou_sum / n).item()),
            fscore=self._f_sum / n,
            num_batches=n,
            num_frames=self._frames,
            num_empty_gt_frames=self._empty,
        )


def semantic_batch_stats(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    pred_kind: SemanticPredKind = "labels",
    beta2: float = BETA2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class IoU and F sums over a batch, as AVSBench ``_batch_miou_fscore``.

    Args:
        pred: N x H x W int class indices in [0, num_classes) (``pred_kind="labels"``) or
            N x C x H x W logits (``"logits"``: softmax then argmax over C, as AVSBench).
        target: N x H x W int class indices in [0, num_classes).
        num_classes: C, background included (AVSS: 71).

    Returns:
        ``(iou_sum, f_sum, count)``, float32 tensors [C]: per class, the sum over frames of
        the frame IoU (0 when the class is in neither map) and of the frame F-score (0 when
        it is missing from either map), and the number of frames whose union is non-zero.
    """
    if pred_kind == "logits":
        if pred.dim() != 4 or pred.shape[1] != num_classes:
            raise ValueError(f"expected N x {num_classes} x H x W logits, got {tuple(pred.shape)}")
        if not pred.is_floating_point():
            raise ValueError(f"expected floating-point logits, got dtype {pred.dtype}")
        labels = torch.argmax(torch.softmax(pred, dim=1), dim=1)
    elif pred_kind == "labels":
        labels = pred
    else:
        raise ValueError(f"expected pred_kind in ['labels', 'logits'], got {pred_kind!r}")
    _check_batch(labels, target)
    for name, t in (("prediction", labels), ("target", target)):
        if t.is_floating_point() and bool((t != t.round()).any()):
            raise ValueError(f"expected integer class indices in the {name}, got fractions")
        lo, hi = int(t.min().item()), int(t.max().item())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"expected {name} class indices in [0, {num_classes - 1}], got range [{lo}, {hi}]"
            )
    labels = labels.long()
    tgt = target.long()
    iou_sum = torch.zeros(num_classes, dtype=torch.float32)
    f_sum = torch.zeros(num_classes, dtype=torch.float32)
    count = torch.zeros(num_classes, dtype=torch.float32)
    for i in range(labels.shape[0]):
        p = labels[i].flatten().cpu()
        g = tgt[i].flatten().cpu()
        area_inter = torch.bincount(p[p == g], minlength=num_classes).to(torch.float32)
        area_pred = torch.bincount(p, minlength=num_classes).to(torch.float32)
        area_lab = torch.bincount(g, minlength=num_classes).to(torch.float32)
        area_union = area_pred + area_lab - area_inter
        iou = 1.0 * area_inter / (SEMANTIC_EPS + area_union)
        iou_sum += iou
        count[torch.nonzero(area_union).squeeze(-1)] += 1
        precision = area_inter / area_pred
        recall = area_inter / area_lab
        f = (1 + beta2) * precision * recall / (beta2 * precision + recall)
        f[torch.isnan(f)] = 0.0
        f_sum += f
    return iou_sum, f_sum, count


@dataclass(frozen=True)
class SemanticScores:
    """AVSS scores over a test set.

    ``miou`` / ``fscore`` are AVSBench ``avss/test.py``'s final numbers (mean over all classes,
    never-seen classes as 0); ``*_present`` average over the classes seen at least once (the
    per-batch numbers it prints); ``*_no_bg`` over the seen classes except class 0 (the
    script's own ``miou_noBg`` is ``mean(miou_pc[:-1])``, which drops class 70 rather than
    the background, class 0; we do not reproduce that number).
    ``per_class_iou`` / ``per_class_fscore`` are ``sum / count`` with NaN set to 0.
    """

    miou: float
    fscore: float
    miou_present: float
    fscore_present: float
    miou_no_bg: float
    fscore_no_bg: float
    num_classes_present: int
    num_frames: int
    per_class_iou: list[float]
    per_class_fscore: list[float]
    per_class_count: list[int]


@dataclass
class SemanticMetricMeter:
    """Accumulates ``semantic_batch_stats`` over batches like AVSBench ``avss/test.py``."""

    num_classes: int = AVSS_NUM_CLASSES
    _iou: torch.Tensor | None = None
    _f: torch.Tensor | None = None
    _count: torch.Tensor | None = None
    _frames: int = 0

    def add_batch(
        self, pred: torch.Tensor, target: torch.Tensor, pred_kind: SemanticPredKind = "labels"
    ) -> None:
        """Add one batch (see ``semantic_batch_stats`` for shapes)."""
        iou, f, count = semantic_batch_stats(pred, target, self.num_classes, pred_kind)
        if self._iou is None or self._f is None or self._count is None:
            zeros = torch.zeros(self.num_classes, dtype=torch.float32)
            self._iou, self._f, self._count = zeros.clone(), zeros.clone(), zeros.clone()
        self._iou += iou
        self._f += f
        self._count += count
        self._frames += target.shape[0]

    def result(self) -> SemanticScores:
        """Final scores; raises ValueError when no batch was added."""
        if self._iou is None or self._f is None or self._count is None:
            raise ValueError("expected at least one batch, got none")
        iou_pc = self._iou / self._count
        iou_pc[torch.isnan(iou_pc)] = 0
        f_pc = self._f / self._count
        f_pc[torch.isnan(f_pc)] = 0
        seen = self._count != 0
        n_seen = int(seen.sum().item())
        seen_fg = seen.clone()
        seen_fg[0] = False
        n_fg = int(seen_fg.sum().item())

        def _mean(v: torch.Tensor, sel: torch.Tensor, n: int) -> float:
            return float((torch.sum(v[sel]) / n).item()) if n else 0.0

        return SemanticScores(
            miou=float(torch.mean(iou_pc).item()),
            fscore=float(torch.mean(f_pc).item()),
            miou_present=_mean(iou_pc, seen, n_seen),
            fscore_present=_mean(f_pc, seen, n_seen),
            miou_no_bg=_mean(iou_pc, seen_fg, n_fg),
            fscore_no_bg=_mean(f_pc, seen_fg, n_fg),
            num_classes_present=n_seen,
            num_frames=self._frames,
            per_class_iou=[float(v) for v in iou_pc.tolist()],
            per_class_fscore=[float(v) for v in f_pc.tolist()],
            per_class_count=[int(v) for v in self._count.tolist()],
        )
