"""AVSBench metrics: hand-computed cases and literal re-statements of the AVSBench loops.

Expected numbers are worked out by hand in the comments (fractions of pixel counts); the
"literal" helpers below restate AVSBench's per-threshold loop (``_eval_pr``) and its IoU
expression step by step, independent of the vectorised code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moca_rt.frame_files import avss_palette, colour_mask_to_labels, palette_match
from moca_rt.metrics import (
    ObjectMetricMeter,
    SemanticMetricMeter,
    binarize,
    binary_to_logits,
    f_measure,
    f_measure_curve,
    frame_ious,
    mask_iou,
    precision_recall,
    semantic_batch_stats,
    thresholds,
)

ONE_MINUS_ULP = 1.0 - 2.0**-23  # float32 1 / (1 + 1e-7): the eps shows when union == 1


def t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def f_beta(p: float, r: float) -> float:
    return 1.3 * p * r / (0.3 * p + r) if (0.3 * p + r) > 0 else 0.0


# ---------------------------------------------------------------- IoU, hand-computed


def test_iou_hand_cases_2x2() -> None:
    # frame 0: P = {(0,0)}, G = {(0,0),(0,1)}: inter 1, union 2 -> 1/2
    # frame 1: empty G, empty P: 4 true negatives / 4 pixels -> 1
    # frame 2: empty G, P = {(1,1)}: 3 true negatives / 4 -> 3/4
    # frame 3: G = {(1,0)}, empty P: inter 0 -> 0
    pred = t([[[1, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 1]], [[0, 0], [0, 0]]])
    gt = t([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [1, 0]]])
    ious = frame_ious(pred, gt, "binary")
    assert ious.dtype == torch.float32
    assert ious.tolist() == [0.5, 1.0, 0.75, 0.0]
    # batch mean: (0.5 + 1 + 0.75 + 0) / 4 = 0.5625
    assert mask_iou(pred, gt, "binary").item() == 0.5625
    # the same through logits, as AVSBench receives them
    assert mask_iou(binary_to_logits(pred), gt).item() == 0.5625


def test_iou_empty_gt_all_zero_is_exactly_one_but_eps_shows_for_single_pixel_union() -> None:
    # empty GT, empty prediction, 2x2: 4 / (4 + 1e-7) rounds to exactly 1 in float32
    zeros = torch.zeros(1, 2, 2)
    assert frame_ious(zeros, zeros, "binary").item() == 1.0
    # a 1x1 frame: union 1, 1 + 1e-7 rounds up to 1 + 2^-23, so 1 / that = 1 - 2^-23
    z1 = torch.zeros(1, 1, 1)
    assert frame_ious(z1, z1, "binary").item() == ONE_MINUS_ULP
    # a perfect single-pixel object (union 1) shows the same; a 2-pixel one does not
    g = torch.zeros(2, 4, 4)
    g[0, 1, 2] = 1
    g[1, 1, 2:4] = 1
    assert frame_ious(g, g, "binary").tolist() == [ONE_MINUS_ULP, 1.0]


def test_iou_logit_binarisation_is_strict_sigmoid_above_half() -> None:
    # sigmoid(0) = 0.5 is not > 0.5; sigmoid(1e-8) = 0.5 + 2.5e-9 rounds to 0.5 in float32
    # (spacing at 0.5 is 6e-8), so it is background too; sigmoid(1e-3) > 0.5 is foreground.
    logits = t([[[0.0, 1e-8], [1e-3, -1.0]]])
    gt = t([[[1, 1], [1, 0]]])
    assert binarize(logits).tolist() == [[[0, 0], [1, 0]]]
    # inter 1, union 3 -> 1/3 (float32)
    assert mask_iou(logits, gt).item() == pytest.approx(1 / 3, abs=1e-7)
    # float64 logits keep float64 like AVSBench would: sigmoid(1e-8) = 0.5 + 2.5e-9 > 0.5 there,
    # so P = {(0,1), (1,0)}: inter 2, union 3
    assert binarize(logits.double()).tolist() == [[[0, 1], [1, 0]]]
    assert mask_iou(logits.double(), gt).item() == pytest.approx(2 / 3, abs=1e-7)
    # a raw 0/1 mask passed as logits binarises to itself (sigmoid(1) > 0.5, sigmoid(0) = 0.5)
    m = t([[[1, 0], [1, 1]]])
    assert binarize(m).tolist() == m.int().tolist()


def test_iou_nan_logit_is_background() -> None:
    logits = t([[[float("nan"), 5.0], [-5.0, -5.0]]])
    gt = t([[[1, 1], [0, 0]]])
    # NaN > 0.5 is false: P = {(0,1)}, inter 1, union 2
    assert mask_iou(logits, gt).item() == 0.5


def _literal_mask_iou(pred_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """AVSBench mask_iou restated: batch sums, the empty-GT override, one division."""
    n = pred_logits.size(0)
    num_pixels = pred_logits.size(-1) * pred_logits.size(-2)
    no_obj = target.sum(2).sum(1) == 0
    p = (torch.sigmoid(pred_logits) > 0.5).int()
    inter = (p * target).sum(2).sum(1)
    union = torch.max(p, target).sum(2).sum(1)
    inter_no_obj = ((1 - target) * (1 - p)).sum(2).sum(1)
    inter[no_obj] = inter_no_obj[no_obj]
    union[no_obj] = num_pixels
    return torch.sum(inter / (union + 1e-7)) / n


@pytest.mark.parametrize(
    ("logit_dtype", "target_dtype"),
    [
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
        (torch.float32, torch.float64),
        (torch.float64, torch.int64),
        (torch.float16, torch.float32),
    ],
)
def test_iou_matches_literal_restatement_on_random_batches(
    logit_dtype: torch.dtype, target_dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        n, h, w = 1 + trial % 5, 1 + trial % 7, 1 + trial % 4
        logits = (torch.randn(n, h, w, generator=gen) * 3).to(logit_dtype)
        logits[..., 0] = 1e-8  # sigmoid rounds to 0.5 in float32/16, not in float64
        gt = (torch.rand(n, h, w, generator=gen) < 0.3).to(target_dtype)
        gt[0] = 0  # always include an empty-GT frame
        ours = mask_iou(logits, gt)
        ref = _literal_mask_iou(logits, gt)
        assert ours.dtype == ref.dtype and ours.item() == ref.item()


# ---------------------------------------------------------------- F-score


def test_threshold_grid_is_torch_linspace_ending_at_one() -> None:
    th = thresholds()
    assert th.shape == (255,) and th.dtype == torch.float32
    assert th[0].item() == 0.0 and th[-1].item() == 1.0  # 1 - 1e-10 is 1.0 in float32
    assert th[127].item() == 0.5
    assert torch.all(th[1:] > th[:-1])


def test_f_curve_hand_computed_single_frame() -> None:
    # G = top row. probs: 0.9, 0.3 (top), 0.6, 0.1 (bottom). Thresholds t_i ~ i / 254.
    probs = t([[[0.9, 0.3], [0.6, 0.1]]])
    gt = t([[[1, 1], [0, 0]]])
    curve, counted = f_measure_curve(probs, gt, "probs")
    assert counted == 1
    f_all = f_beta(2 / 4, 1.0)  # t <= 0.1: all 4 predicted, tp 2 -> 0.65 / 1.15
    f_three = f_beta(2 / 3, 1.0)  # 0.1 < t <= 0.3: 3 predicted, tp 2 -> 0.8667 / 1.2
    f_two = f_beta(1 / 2, 1 / 2)  # 0.3 < t <= 0.6: {0.9, 0.6}, tp 1 -> 0.5
    f_one = f_beta(1.0, 1 / 2)  # 0.6 < t <= 0.9: {0.9}, tp 1 -> 0.8125
    expected = {0: f_all, 25: f_all, 26: f_three, 76: f_three, 77: f_two, 152: f_two}
    expected |= {153: f_one, 228: f_one, 229: 0.0, 254: 0.0}  # t > 0.9: 0/0 -> NaN -> 0
    for i, v in expected.items():
        assert curve[i].item() == pytest.approx(v, abs=1e-6), i
    assert not torch.isnan(curve).any()
    assert int((curve == curve[200]).sum()) == 228 - 153 + 1
    assert f_measure(probs, gt, "probs") == pytest.approx(0.8125, abs=1e-6)


def test_f_is_max_of_frame_average_not_average_of_frame_maxima() -> None:
    # frame A as above; frame B: G = {(1,1)}, probs 0.2, 0.2, 0.2, 0.5
    #   t <= 0.2: 4 predicted, tp 1 -> F(1/4, 1) = 0.325 / 1.075; 0.2 < t <= 0.5: perfect -> 1
    # frame C: empty GT -> skipped entirely
    # averaged curve: (0.2, 0.3] -> (13/18 + 1) / 2 = 31/36 is the max;
    # mean of per-frame maxima would be (0.8125 + 1) / 2 = 0.90625.
    probs = t(
        [
            [[0.9, 0.3], [0.6, 0.1]],
            [[0.2, 0.2], [0.2, 0.5]],
            [[0.99, 0.99], [0.99, 0.99]],
        ]
    )
    gt = t([[[1, 1], [0, 0]], [[0, 0], [0, 1]], [[0, 0], [0, 0]]])
    curve, counted = f_measure_curve(probs, gt, "probs")
    assert counted == 2
    assert curve[0].item() == pytest.approx((f_beta(0.5, 1) + f_beta(0.25, 1)) / 2, abs=1e-6)
    assert curve[127].item() == pytest.approx((0.5 + 1.0) / 2, abs=1e-6)  # t = 0.5 exactly
    assert curve[128].item() == pytest.approx(0.5 / 2, abs=1e-6)
    assert f_measure(probs, gt, "probs") == pytest.approx(31 / 36, abs=1e-6)
    # dropping the empty frame changes nothing
    assert f_measure(probs[:2], gt[:2], "probs") == f_measure(probs, gt, "probs")


def test_f_all_empty_gt_batch_scores_zero() -> None:
    probs = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1))
    curve, counted = f_measure_curve(probs, torch.zeros(3, 4, 4), "probs")
    assert counted == 0 and torch.equal(curve, torch.zeros(255))
    assert f_measure(probs, torch.zeros(3, 4, 4), "probs") == 0.0


def test_f_binary_prediction_two_level_curve() -> None:
    # 4x4 G of 4 pixels (g = 1/4). Prediction: 2 of them plus 2 wrong pixels.
    gt = torch.zeros(1, 4, 4)
    gt[0, 0, :] = 1
    pred = torch.zeros(1, 4, 4)
    pred[0, 0, :2] = 1
    pred[0, 3, :2] = 1
    # threshold 0: all 16 predicted: prec 1/4, recall 1 -> 0.325 / 1.075 = 0.30233
    # thresholds > 0: the mask: prec 2/4, recall 2/4 -> 0.5
    curve, _ = f_measure_curve(pred, gt, "binary")
    assert curve[0].item() == pytest.approx(f_beta(0.25, 1), abs=1e-6)
    assert torch.all(curve[1:] == curve[1]) and curve[1].item() == pytest.approx(0.5, abs=1e-6)
    assert f_measure(pred, gt, "binary") == pytest.approx(0.5, abs=1e-6)
    # identical through +/-1e4 logits and through the raw 0/1 mask taken as logits
    assert f_measure(binary_to_logits(pred), gt) == f_measure(pred, gt, "binary")
    assert f_measure(pred, gt, "logits") == f_measure(pred, gt, "binary")


def test_f_all_background_prediction_is_not_zero() -> None:
    # empty prediction: thresholds > 0 predict nothing -> prec 0, recall 0 -> NaN -> 0;
    # threshold 0 predicts every pixel -> F(g, 1) with g the GT fraction.
    gt = torch.zeros(2, 4, 4)
    gt[0, :2, :] = 1  # g = 1/2
    gt[1, 0, 0] = 1  # g = 1/16
    pred = torch.zeros(2, 4, 4)
    expected = (f_beta(0.5, 1) + f_beta(1 / 16, 1)) / 2
    assert f_measure(pred, gt, "binary") == pytest.approx(expected, abs=1e-6)
    assert mask_iou(pred, gt, "binary").item() == 0.0


def test_f_perfect_prediction_is_one() -> None:
    gt = torch.zeros(3, 5, 7)
    gt[0, 1:3, 2:6] = 1
    gt[1, 4, 6] = 1
    assert f_measure(gt, gt, "binary") == pytest.approx(1.0, abs=1e-7)


def _literal_eval_pr(y_pred: torch.Tensor, y: torch.Tensor, num: int = 255) -> tuple:
    """AVSBench _eval_pr restated: one comparison and two divisions per threshold."""
    prec, recall = torch.zeros(num), torch.zeros(num)
    thlist = torch.linspace(0, 1 - 1e-10, num)
    for i in range(num):
        y_temp = (y_pred >= thlist[i]).float()
        tp = (y_temp * y).sum()
        prec[i], recall[i] = tp / (y_temp.sum() + 1e-20), tp / (y.sum() + 1e-20)
    return prec, recall


def _literal_f(pred_logits: torch.Tensor, gt: torch.Tensor) -> float:
    pred = torch.sigmoid(pred_logits)
    avg: torch.Tensor | float = 0.0
    n = 0
    score = torch.zeros(255)
    for i in range(pred.size(0)):
        if torch.mean(gt[i]) == 0.0:
            continue
        prec, recall = _literal_eval_pr(pred[i], gt[i])
        f = (1 + 0.3) * prec * recall / (0.3 * prec + recall)
        f[f != f] = 0
        avg = avg + f
        n += 1
        score = avg / n  # type: ignore[assignment]
    return float(score.max().item())


def test_precision_recall_matches_literal_loop_including_values_on_thresholds() -> None:
    gen = torch.Generator().manual_seed(2)
    th = thresholds()
    for trial in range(6):
        h, w = 7 + trial, 9 + 2 * trial
        probs = torch.rand(h, w, generator=gen)
        # put some probabilities exactly on thresholds and on 0 / 1
        idx = torch.randint(0, 255, (h, w), generator=gen)
        on = torch.rand(h, w, generator=gen) < 0.4
        probs = torch.where(on, th[idx], probs)
        probs[0, 0], probs[0, 1] = 0.0, 1.0
        gt = (torch.rand(h, w, generator=gen) < 0.35).float()
        p1, r1 = precision_recall(probs, gt)
        p2, r2 = _literal_eval_pr(probs, gt)
        assert torch.equal(p1, p2) and torch.equal(r1, r2)


@pytest.mark.parametrize(
    ("logit_dtype", "target_dtype"),
    [
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
        (torch.float16, torch.float16),
    ],
)
def test_f_measure_matches_literal_restatement_on_random_logits(
    logit_dtype: torch.dtype, target_dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(3)
    for trial in range(6):
        n, h, w = 1 + trial % 5, 6 + trial, 5 + 2 * trial
        logits = (torch.randn(n, h, w, generator=gen) * (1 + trial)).to(logit_dtype)
        gt = (torch.rand(n, h, w, generator=gen) < 0.3).to(target_dtype)
        if trial % 2:
            gt[0] = 0
        assert f_measure(logits, gt) == _literal_f(logits, gt)


def test_nan_probability_never_counts_as_predicted() -> None:
    probs = t([[float("nan"), 0.8], [0.1, 0.1]])
    gt = t([[1, 1], [0, 0]])
    p, r = precision_recall(probs, gt)
    p2, r2 = _literal_eval_pr(probs, gt)
    assert torch.equal(p, p2) and torch.equal(r, r2)


def test_bad_inputs_raise_value_error() -> None:
    with pytest.raises(ValueError, match="expected target of the prediction's shape"):
        mask_iou(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="N x H x W"):
        mask_iou(torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"target values in \{0, 1\}, got 255"):
        mask_iou(torch.zeros(1, 2, 2), torch.full((1, 2, 2), 255.0))
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\], got 1.5"):
        f_measure(torch.full((1, 2, 2), 1.5), torch.ones(1, 2, 2), "probs")
    with pytest.raises(ValueError, match="pred_kind"):
        mask_iou(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), "scores")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="floating-point logits"):
        mask_iou(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2))


def test_object_meter_averages_batches_like_average_meter() -> None:
    meter = ObjectMetricMeter()
    gt1 = t([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    pr1 = t([[[1, 0], [0, 0]], [[0, 0], [0, 0]]])  # IoU 1/2, 1 -> 0.75
    gt2 = t([[[0, 0], [0, 0]]])
    pr2 = t([[[1, 1], [1, 1]]])  # empty GT, 4 wrong pixels -> IoU 0; F: no frame -> 0
    assert meter.add_batch(pr1, gt1, "binary")[0] == 0.75
    assert meter.add_batch(pr2, gt2, "binary") == (0.0, 0.0)
    res = meter.result()
    assert res.miou == 0.375 and res.num_batches == 2 and res.num_frames == 3
    assert res.num_empty_gt_frames == 2
    # batch 1 F: threshold 0 -> F(1/2, 1) = 0.565; mask -> F(1, 1/2) = 0.8125 (max)
    assert res.fscore == pytest.approx(0.8125 / 2, abs=1e-6)
    with pytest.raises(ValueError, match="at least one batch"):
        ObjectMetricMeter().result()


# ---------------------------------------------------------------- AVSS semantic


def test_avss_palette_known_colours() -> None:
    pal = avss_palette()
    assert pal.shape == (71, 3) and pal.dtype == np.uint8
    # PASCAL-VOC construction: 0 black, 1 (128,0,0), 2 (0,128,0), 4 (0,0,128),
    # 8 = 0b001000 -> red bit 6 = 64; 15 = 0b001111 -> (128+64, 128, 128) ("person" in VOC);
    # 70 = 0b1000110 -> (0,128,128) from bits 0-2, nothing from bits 3-5, red bit 5 from bit 6
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[2].tolist() == [0, 128, 0]
    assert pal[4].tolist() == [0, 0, 128]
    assert pal[8].tolist() == [64, 0, 0]
    assert pal[15].tolist() == [192, 128, 128]
    assert pal[70].tolist() == [32, 128, 128]
    assert len({tuple(c) for c in pal.tolist()}) == 71


def test_colour_mask_unknown_colour_is_background() -> None:
    rgb = np.array([[[128, 0, 0], [1, 2, 3]], [[0, 128, 0], [192, 128, 128]]], dtype=np.uint8)
    assert colour_mask_to_labels(rgb).tolist() == [[1, 0], [2, 15]]
    labels, known = palette_match(rgb)
    assert labels.tolist() == [[1, 0], [2, 15]]
    assert known.tolist() == [[True, False], [True, True]]


def test_semantic_hand_case() -> None:
    # frame 0: G [[0,1],[1,2]], P [[0,1],[2,2]]
    #   class 0: inter 1, pred 1, lab 1 -> IoU 1, F 1
    #   class 1: inter 1, pred 1, lab 2 -> IoU 1/2, F(1, 1/2) = 0.8125
    #   class 2: inter 1, pred 2, lab 1 -> IoU 1/2, F(1/2, 1) = 0.565217
    # frame 1: G = P = all 0: class 0 IoU 1, F 1; classes 1, 2 not seen (IoU 0, no count)
    gt = torch.tensor([[[0, 1], [1, 2]], [[0, 0], [0, 0]]])
    pred = torch.tensor([[[0, 1], [2, 2]], [[0, 0], [0, 0]]])
    iou, f, count = semantic_batch_stats(pred, gt, 3)
    assert iou.tolist() == [2.0, 0.5, 0.5]
    assert count.tolist() == [2.0, 1.0, 1.0]
    assert f.tolist() == pytest.approx([2.0, 0.8125, f_beta(0.5, 1)], abs=1e-6)

    meter = SemanticMetricMeter(num_classes=4)  # class 3 never appears
    meter.add_batch(pred, gt)
    s = meter.result()
    # AVSBench's final number averages over all 4 classes, the unseen one as 0
    assert s.miou == pytest.approx((1 + 0.5 + 0.5 + 0) / 4, abs=1e-7)
    assert s.miou_present == pytest.approx(2 / 3, abs=1e-7)
    assert s.miou_no_bg == pytest.approx(0.5, abs=1e-7)
    assert s.fscore == pytest.approx((1 + 0.8125 + f_beta(0.5, 1)) / 4, abs=1e-6)
    assert s.num_classes_present == 3 and s.per_class_count == [2, 1, 1, 0]


def test_semantic_class_only_in_prediction_scores_zero_and_counts() -> None:
    # G all 0; P has one pixel of class 1: class 1 union 1, inter 0 -> IoU 0, counted;
    # precision 0/1 = 0, recall 0/0 = NaN -> F NaN -> 0. class 0: inter 3, union 4 -> 3/4;
    # precision 3/3, recall 3/4 -> F(1, 3/4).
    gt = torch.zeros(1, 2, 2, dtype=torch.long)
    pred = torch.tensor([[[1, 0], [0, 0]]])
    iou, f, count = semantic_batch_stats(pred, gt, 2)
    assert iou.tolist() == [0.75, 0.0] and count.tolist() == [1.0, 1.0]
    assert f.tolist() == pytest.approx([f_beta(1, 0.75), 0.0], abs=1e-6)
    assert not math.isnan(f[1].item())


def test_semantic_logits_are_argmaxed_over_classes() -> None:
    gt = torch.tensor([[[0, 1], [1, 2]]])
    logits = torch.full((1, 3, 2, 2), -5.0)
    for y, x, c in [(0, 0, 0), (0, 1, 1), (1, 0, 2), (1, 1, 2)]:
        logits[0, c, y, x] = 5.0
    a = semantic_batch_stats(logits, gt, 3, "logits")
    b = semantic_batch_stats(torch.tensor([[[0, 1], [2, 2]]]), gt, 3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="class indices in \\[0, 2\\]"):
        semantic_batch_stats(torch.tensor([[[0, 3], [0, 0]]]), gt, 3)


def _literal_batch_miou_fscore(probs: torch.Tensor, target: torch.Tensor, nclass: int) -> tuple:
    """AVSBench _batch_miou_fscore restated with its histc binning of labels shifted by 1."""
    predict = torch.argmax(probs, 1) + 1
    tgt = target.float() + 1
    predict = predict.float() * (tgt > 0).float()
    intersection = predict * (predict == tgt).float()
    count = torch.zeros(nclass)
    ious = torch.zeros(nclass)
    fs = torch.zeros(nclass)
    for i in range(tgt.shape[0]):
        ai = torch.histc(intersection[i], bins=nclass, min=1, max=nclass)
        ap = torch.histc(predict[i], bins=nclass, min=1, max=nclass)
        al = torch.histc(tgt[i], bins=nclass, min=1, max=nclass)
        au = ap + al - ai
        ious += 1.0 * ai / (2.220446049250313e-16 + au)
        count[torch.nonzero(au).squeeze(-1)] += 1
        pr, rc = ai / ap, ai / al
        f = (1 + 0.3) * pr * rc / (0.3 * pr + rc)
        f[torch.isnan(f)] = 0.0
        fs += f
    return ious, fs, count


def test_semantic_matches_literal_restatement_on_random_logits() -> None:
    gen = torch.Generator().manual_seed(4)
    for trial in range(8):
        nclass = [71, 3, 5, 2][trial % 4]
        n, h, w = 1 + trial % 4, 5 + trial, 7 + trial % 3
        logits = torch.randn(n, nclass, h, w, generator=gen) * 3
        logits[:, :, 0, 0] = 1.0  # a tie: the first class wins in both
        target = torch.randint(0, min(nclass, 4), (n, h, w), generator=gen)
        ours = semantic_batch_stats(logits, target, nclass, "logits")
        ref = _literal_batch_miou_fscore(torch.softmax(logits, 1), target, nclass)
        assert all(torch.equal(a, b) for a, b in zip(ours, ref, strict=True))
