"""Silence gate, cluster scoring and choice, coarse mask, proposal matching (hand-made cases)."""

from __future__ import annotations

import math

import pytest
import torch

from moca_rt import clustering


def test_window_dbfs_levels() -> None:
    t = torch.arange(16000) / 16000
    sine = 0.5 * torch.sin(2 * math.pi * 440 * t)
    levels = clustering.window_dbfs(torch.stack([sine, torch.zeros(16000), torch.ones(16000)]))
    assert levels[0].item() == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.01)
    assert levels[1].item() < -200
    assert levels[2].item() == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        clustering.window_dbfs(torch.zeros(3))


def test_cluster_scores_and_choice() -> None:
    emb = torch.tensor([[[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [0.1, 1.0]]])  # [1, 4, 2]
    labels = torch.tensor([[0, 0, 1, 1]])
    audio = torch.tensor([[20.0, 0.0]])  # norm ~20 like ImageBind; only direction counts
    scores = clustering.cluster_scores(emb, labels, 3, audio)
    mean0 = torch.tensor([1.0, 0.1])
    assert scores[0, 0].item() == pytest.approx((mean0[0] / mean0.norm()).item(), abs=1e-6)
    assert scores[0, 1].item() == pytest.approx(0.05 / math.hypot(0.05, 1.0), abs=1e-6)
    assert scores[0, 2].item() == float("-inf")  # empty cluster never chosen
    chosen = clustering.choose_clusters(scores, tau=0.02, delta=0.1)
    assert chosen.tolist() == [[True, False, False]]
    both = clustering.choose_clusters(scores, tau=0.02, delta=1.0)
    assert both.tolist() == [[True, True, False]]
    none = clustering.choose_clusters(scores, tau=0.999, delta=1.0)
    assert not none.any()


def test_sounding_probability_upsamples_chosen_patches() -> None:
    labels = torch.zeros(1, 4, dtype=torch.long)
    labels[0, 0] = 1  # top-left patch of a 2x2 grid
    chosen = torch.tensor([[False, True]])
    prob = clustering.sounding_probability(labels, chosen, (2, 2), (4, 4))
    assert prob.shape == (1, 4, 4)
    assert prob[0, 0, 0].item() == pytest.approx(1.0)
    assert prob[0, 3, 3].item() == pytest.approx(0.0)
    assert (prob[0] > 0.5).sum().item() == 4  # the top-left quadrant


def test_match_scores_iou_and_coverage() -> None:
    coarse = torch.zeros(1, 8, 8, dtype=torch.bool)
    coarse[0, :4, :4] = True
    props = torch.zeros(1, 4, 8, 8, dtype=torch.bool)
    props[0, 0, :4, :5] = True  # IoU 16/20 = 0.8
    props[0, 1, 4:, 4:] = True  # disjoint
    props[0, 2, :2, :2] = True  # IoU 4/16 = 0.25, coverage 1.0
    iou = clustering.match_scores(props, coarse, "iou")
    assert iou[0].tolist() == pytest.approx([0.8, 0.0, 0.25, 0.0])  # empty proposal scores 0
    coverage = clustering.match_scores(props, coarse, "coverage")
    assert coverage[0].tolist() == pytest.approx([0.8, 0.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="share"):
        clustering.match_scores(props, coarse[:, :4], "iou")
