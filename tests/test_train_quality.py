"""Scoring helpers of the tiny-model training: AUC, AVSBench batching, replay caches, baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moca_rt.train.quality import ReplayProposals, oracle_masks, owod_bind_masks
from moca_rt.train.synth_eval import EvalSet, avsbench_scores, patch_auc, patch_targets


def test_patch_auc_matches_the_pairwise_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 4, 4, generator=gen)
    targets = torch.rand(3, 4, 4, generator=gen) > 0.6
    expected = []
    for s, t in zip(scores.flatten(1), targets.flatten(1), strict=True):
        pos, neg = s[t].tolist(), s[~t].tolist()
        pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
        expected.append(sum(pairs) / len(pairs))
    assert patch_auc(scores, targets) == pytest.approx(float(np.mean(expected)))
    perfect = targets.float()
    assert patch_auc(perfect, targets) == 1.0
    assert patch_auc(-perfect, targets) == 0.0
    assert np.isnan(patch_auc(scores[:1], torch.zeros(1, 4, 4, dtype=torch.bool)))


def test_patch_targets_take_patches_more_than_half_covered() -> None:
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True  # patch (0, 0) of a 2 x 2 grid fully covered
    mask[4:6, 4:8] = True  # patch (1, 1) half covered: not a target
    assert patch_targets([mask], 2)[0].tolist() == [[True, False], [False, False]]


def test_avsbench_scores_batch_frames_by_four() -> None:
    target = [np.ones((4, 4), bool)] * 8
    preds = [np.ones((4, 4), bool)] * 4 + [np.zeros((4, 4), bool)] * 4
    s = avsbench_scores(preds, target)
    assert s.miou == pytest.approx(0.5) and s.empty_share == 0.5 and s.frames == 8
    with pytest.raises(ValueError, match="as many"):
        avsbench_scores(preds[:3], target)


class _CountingSource:
    def __init__(self, props: dict[int, torch.Tensor]) -> None:
        self.props = props
        self.calls = 0

    def __call__(self, images, boxes):  # type: ignore[no-untyped-def]
        self.calls += len(images)
        return [self.props[int(im[0, 0, 0])] for im in images]


def _scene_set() -> tuple[EvalSet, dict[int, torch.Tensor]]:
    images = [np.full((8, 8, 3), i, np.uint8) for i in range(2)]
    a = np.zeros((8, 8), bool)
    a[:4, :4] = True
    b = np.zeros((8, 8), bool)
    b[4:, 4:] = True
    masks = [a, np.zeros((8, 8), bool)]
    instances = [np.stack([a, b]), np.stack([a, b])]
    # Proposal logits at 8 x 8 (no upsampling): one matching a, one matching b.
    props = torch.stack([torch.where(torch.from_numpy(m), 5.0, -5.0) for m in (a, b)])
    data = EvalSet("s4", "val", 0, images, torch.zeros(2, 32000), masks, instances)
    return data, {0: props, 1: props}


def test_oracle_takes_the_best_proposal_per_sounding_object_and_replays() -> None:
    data, props = _scene_set()
    source = _CountingSource(props)
    replay = ReplayProposals(source)
    preds = oracle_masks(replay, data)
    assert np.array_equal(preds[0], data.masks[0]) and not preds[1].any()
    oracle_masks(replay, data)
    assert source.calls == 1  # the second frame has nothing sounding; the first was cached


def test_owod_bind_keeps_proposals_above_threshold_within_delta() -> None:
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = masks[1, 1, 1] = masks[2, 2, 2] = True
    scored = [(masks, torch.tensor([0.5, 0.45, 0.1]))]
    got = owod_bind_masks(scored, threshold=0.3, delta=0.1, silent=[False])[0]
    assert got[0, 0] and got[1, 1] and not got[2, 2]
    assert not owod_bind_masks(scored, 0.6, 0.1, [False])[0].any()
    assert not owod_bind_masks(scored, 0.0, 1.0, [True])[0].any()
