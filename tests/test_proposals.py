"""Mask proposals: filters and NMS on hand-made data, grid and box-prompt paths on the fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from numeric import assert_close_stage, compare
from PIL import Image
from safetensors.torch import load_file

from moca_rt.modeling.sam import Sam
from moca_rt.proposals import (
    MaskProposals,
    ProposalConfig,
    box_iou,
    box_proposals,
    box_proposals_from_embeddings,
    build_point_grid,
    encode_frames,
    filter_proposals,
    grid_proposals_from_embedding,
    load_box_prompts,
    masks_to_boxes,
    nms,
    parse_box_prompts,
    stability_score,
)

SAM_DIR = FIXTURES / "sam"
SIZE = (480, 640)


@pytest.fixture(scope="module")
def pred_ref() -> dict[str, torch.Tensor]:
    return load_file(str(SAM_DIR / "predictor.safetensors"))


@pytest.fixture(scope="module")
def grid_all(
    sam_model: Sam, sam_embedding: torch.Tensor, pred_ref: dict[str, torch.Tensor]
) -> MaskProposals:
    """The reference grid16 points (4x4) in one batch, every filter off (NMS at IoU 1.0)."""
    cfg = ProposalConfig(
        points_per_batch=16,
        pred_iou_thresh=-1.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        keep_low_res_logits=True,
    )
    points = pred_ref["grid16.coords_raw"][:, 0, :]
    return grid_proposals_from_embedding(sam_model, sam_embedding, SIZE, cfg, points=points)


# --------------------------------------------------------------------------- hand-made data


def test_stability_score_by_hand() -> None:
    logits = torch.tensor(
        [
            [-2.0, -0.5, 0.5, 1.5],
            [-1.5, -0.9, 1.0, 3.0],
            [-1.0, 0.2, 2.0, -3.0],
            [0.0, 1.01, -0.99, 0.99],
        ]
    )
    # > 1.0: 1.5, 3.0, 2.0, 1.01 -> 4.  > -1.0: all but -2, -1.5, -1.0, -3 -> 12.
    assert stability_score(logits, 0.0, 1.0).item() == pytest.approx(4 / 12)
    # Threshold 0.5, offset 0.5: > 1.0 -> 4; > 0.0 -> 0.5, 1.5, 1.0, 3.0, 0.2, 2.0, 1.01, 0.99 -> 8.
    assert stability_score(logits, 0.5, 0.5).item() == pytest.approx(4 / 8)
    batch = torch.stack([logits, torch.full((4, 4), -5.0)])
    scores = stability_score(batch)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    assert scores[1].item() == 0.0  # empty at both thresholds


def test_masks_to_boxes_exclusive_edges_and_empty() -> None:
    masks = torch.zeros(3, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True  # rows 1..2, cols 2..4
    masks[1, 4, 0] = True
    boxes = masks_to_boxes(masks)
    assert boxes.tolist() == [[2.0, 1.0, 5.0, 3.0], [0.0, 4.0, 1.0, 5.0], [0.0, 0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="expected P x h x w masks"):
        masks_to_boxes(torch.zeros(5, 6, dtype=torch.bool))


def test_box_iou_known_values() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    iou = box_iou(a, b)
    assert iou.shape == (1, 3)
    assert iou[0].tolist() == pytest.approx([50 / 150, 0.0, 1.0])


def test_nms_keeps_higher_scored_of_overlapping_boxes() -> None:
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # overlaps box 1 with IoU 81/100
            [1.0, 1.0, 10.0, 10.0],
            [50.0, 50.0, 60.0, 60.0],  # alone
            [0.0, 0.0, 10.0, 20.0],  # IoU 0.5 with box 0: kept at threshold 0.7
        ]
    )
    scores = torch.tensor([0.80, 0.95, 0.10, 0.50])
    keep = nms(boxes, scores, 0.7)
    assert keep.tolist() == [1, 3, 2]  # box 0 suppressed by the higher-scored box 1
    assert nms(boxes, scores, 0.4).tolist() == [1, 2]
    assert nms(boxes[:0], scores[:0], 0.7).numel() == 0
    with pytest.raises(ValueError, match=r"expected boxes \(P, 4\) and scores \(P,\)"):
        nms(boxes, scores[:2], 0.7)


def test_point_grid_cell_centres() -> None:
    g = build_point_grid(2)
    assert g.tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
    assert build_point_grid(16).shape == (256, 2)
    with pytest.raises(ValueError, match="expected points_per_side >= 1"):
        build_point_grid(0)
    with pytest.raises(ValueError, match="expected resolution"):
        ProposalConfig(resolution="full")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- grid path


def test_grid_proposals_well_formed(grid_all: MaskProposals) -> None:
    p = grid_all
    assert len(p) == 16 * 3  # 16 points x 3 multimask outputs
    assert p.masks.shape == (48, *SIZE) and p.masks.dtype == torch.bool
    assert p.scores.shape == (48,) and p.scores.dtype == torch.float32
    assert p.stability.shape == (48,) and p.boxes.shape == (48, 4)
    assert p.image_size == SIZE
    assert torch.all(p.scores[:-1] >= p.scores[1:])  # highest predicted IoU first
    b = p.boxes
    assert torch.all(b[:, 0] >= 0) and torch.all(b[:, 2] <= SIZE[1])
    assert torch.all(b[:, 1] >= 0) and torch.all(b[:, 3] <= SIZE[0])
    nonempty = p.masks.flatten(1).any(1)
    assert nonempty.any()
    assert torch.all(b[nonempty, 2] > b[nonempty, 0]) and torch.all(b[nonempty, 3] > b[nonempty, 1])
    # Each box encloses its mask exactly.
    i = int(nonempty.nonzero()[0])
    x0, y0, x1, y1 = (int(v) for v in b[i].tolist())
    assert p.masks[i, y0:y1, x0:x1].sum() == p.masks[i].sum()


def test_grid_outputs_match_reference_batch(
    grid_all: MaskProposals, pred_ref: dict[str, torch.Tensor]
) -> None:
    """Scores, prompts and logits equal the reference's one-batch grid16 decoder outputs."""
    ref_iou = pred_ref["grid16.iou_predictions"].flatten()
    expected = ref_iou.sort(descending=True, stable=True)
    err = (grid_all.scores - expected.values).abs().max().item()
    print(f"grid proposals vs reference grid16 IoU: max_abs={err:.3e}")
    assert err <= 1e-5
    assert grid_all.points is not None and grid_all.low_res_logits is not None
    for rank in range(3):
        point, mask = divmod(int(expected.indices[rank]), 3)
        assert torch.equal(grid_all.points[rank], pred_ref["grid16.coords_raw"][point, 0])
        ref_low = pred_ref["grid16.low_res_logits_sub8"][point, mask]
        assert_close_stage(grid_all.low_res_logits[rank, ::8, ::8], ref_low, f"grid rank {rank}")
    # Image-resolution masks are the official post-processing of those logits, thresholded at 0.
    ref_masks = pred_ref["grid16.mask_logits_sub16"].flatten(0, 1)[expected.indices] > 0
    assert (grid_all.masks[:, ::16, ::16] == ref_masks).float().mean() > 0.999


def test_filters_and_nms_on_decoded_masks(grid_all: MaskProposals) -> None:
    low, scores = grid_all.low_res_logits, grid_all.scores
    assert low is not None
    thr = float(scores.median())
    stab_thr = float(grid_all.stability.median())
    cfg = ProposalConfig(pred_iou_thresh=thr, stability_score_thresh=stab_thr, box_nms_thresh=0.7)
    p = filter_proposals(low, scores, SIZE, cfg)
    survivors = (scores > thr) & (grid_all.stability >= stab_thr)
    print(f"grid16: {len(grid_all)} raw, {int(survivors.sum())} pass filters, {len(p)} after NMS")
    assert 0 < len(p) <= int(survivors.sum()) < len(grid_all)
    assert torch.all(p.scores > thr) and torch.all(p.stability >= stab_thr)
    iou = box_iou(p.boxes, p.boxes)
    off_diag = iou[~torch.eye(len(p), dtype=torch.bool)]
    assert off_diag.numel() == 0 or off_diag.max() <= 0.7
    # Every suppressed survivor overlaps a kept, at-least-as-high-scored proposal by > 0.7.
    for box, score in zip(grid_all.boxes[survivors], scores[survivors], strict=True):
        if not torch.any((p.boxes == box).all(1) & (p.scores == score)):
            overlaps = box_iou(box[None], p.boxes)[0]
            assert torch.any((overlaps > 0.7) & (p.scores >= score))
    # Without NMS the survivors are exactly the filtered raw set.
    no_nms = ProposalConfig(
        pred_iou_thresh=thr, stability_score_thresh=stab_thr, box_nms_thresh=1.0
    )
    q = filter_proposals(low, scores, SIZE, no_nms)
    assert len(q) == int(survivors.sum())
    assert torch.equal(q.scores, scores[survivors])
    assert torch.equal(q.masks, grid_all.masks[survivors])
    area_cfg = ProposalConfig(
        pred_iou_thresh=-1.0, stability_score_thresh=0.0, box_nms_thresh=1.0, min_mask_area=20000
    )
    big = filter_proposals(low, scores, SIZE, area_cfg)
    areas = grid_all.masks.flatten(1).sum(1)
    assert torch.all(big.masks.flatten(1).sum(1) >= 20000)
    assert len(big) == int((areas >= 20000).sum())
    with pytest.raises(ValueError, match=r"expected low_res_logits \(N, h, w\)"):
        filter_proposals(low, scores[:3], SIZE)


def test_default_grid_and_thresholds(sam_model: Sam, sam_embedding: torch.Tensor) -> None:
    p = grid_proposals_from_embedding(
        sam_model, sam_embedding, SIZE, ProposalConfig(points_per_side=2)
    )
    assert p.masks.dtype == torch.bool and p.masks.shape[1:] == SIZE
    assert torch.all(p.scores > 0.88) and torch.all(p.stability >= 0.95)
    everything = ProposalConfig(
        points_per_side=2,
        points_per_batch=3,
        pred_iou_thresh=-1.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
    )
    q = grid_proposals_from_embedding(sam_model, sam_embedding, SIZE, everything)
    assert len(q) == 12 and q.points is not None
    # Prompts are the cell centres of a 2x2 grid over the 640 x 480 image.
    assert sorted({(x, y) for x, y in q.points.tolist()}) == [
        (160.0, 120.0),
        (160.0, 360.0),
        (480.0, 120.0),
        (480.0, 360.0),
    ]


def test_grid_low_resolution_output(grid_all: MaskProposals) -> None:
    low = grid_all.low_res_logits
    assert low is not None
    cfg = ProposalConfig(
        pred_iou_thresh=-1.0, stability_score_thresh=0.0, box_nms_thresh=1.0, resolution="low"
    )
    p = filter_proposals(low, grid_all.scores, SIZE, cfg)
    # A 768 x 1024 model-frame image covers the top-left 192 x 256 cells of the 256 x 256 logits.
    assert p.masks.shape == (48, 192, 256) and p.masks.dtype == torch.bool
    assert torch.equal(p.masks, low[:, :192, :256] > 0)
    assert torch.all(p.boxes[:, 2] <= SIZE[1]) and torch.all(p.boxes[:, 3] <= SIZE[0])
    # Low-res boxes agree with the image-resolution ones to a few low-res cells (2.5 px each).
    both = p.masks.flatten(1).any(1) & grid_all.masks.flatten(1).any(1)
    assert (p.boxes[both] - grid_all.boxes[both]).abs().max() <= 4 * 2.5


# --------------------------------------------------------------------------- box prompts


def test_parse_box_prompts_valid(tmp_path: Path) -> None:
    doc = {"frames": {"0": [[120, 90, 470, 380.5]], "12": [], "3": [[0, 0, 1, 1], [2, 2, 5, 9]]}}
    out = parse_box_prompts(doc)
    assert sorted(out) == [0, 3, 12]
    assert out[0].dtype == torch.float32 and out[0].tolist() == [[120.0, 90.0, 470.0, 380.5]]
    assert out[12].shape == (0, 4) and out[3].shape == (2, 4)
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(doc))
    assert torch.equal(load_box_prompts(path)[3], out[3])


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([1, 2], "expected a JSON object with a 'frames' key"),
        ({"boxes": {}}, "expected a JSON object with a 'frames' key"),
        ({"frames": []}, "expected 'frames' to be an object"),
        ({"frames": {"a": []}}, "frame 'a': expected a non-negative integer"),
        ({"frames": {"-1": []}}, "frame '-1': expected a non-negative integer"),
        ({"frames": {"4": [1, 2, 3, 4]}}, r"frame 4, box 0: expected 4 numbers"),
        ({"frames": {"5": [[1, 2, 3]]}}, r"frame 5, box 0: expected 4 numbers"),
        ({"frames": {"6": [[0, 0, 1, 1], [1, 2, "3", 4]]}}, r"frame 6, box 1: expected 4 numbers"),
        ({"frames": {"7": [[5, 0, 1, 1]]}}, r"frame 7, box 0: expected x0 <= x1 and y0 <= y1"),
        ({"frames": {"8": [[0, 0, float("inf"), 1]]}}, r"frame 8, box 0: expected finite"),
        ({"frames": {"9": {"a": 1}}}, r"frame 9: expected a list of boxes"),
    ],
)
def test_parse_box_prompts_errors(doc: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_box_prompts(doc)


def test_load_box_prompts_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"frames": {"0": [[1, 2, 3, 4]]')
    with pytest.raises(ValueError, match="expected valid JSON"):
        load_box_prompts(path)


def test_box_proposals_from_embeddings_batched(
    sam_model: Sam, sam_embedding: torch.Tensor, pred_ref: dict[str, torch.Tensor]
) -> None:
    box = torch.tensor([[120.0, 90.0, 470.0, 380.0]])
    other = torch.tensor([[100.0, 60.0, 520.0, 440.0], [10.0, 10.0, 200.0, 150.0]])
    embeddings = torch.cat([sam_embedding, sam_embedding, sam_embedding])
    out = box_proposals_from_embeddings(
        sam_model, embeddings, [SIZE] * 3, [other, None, box], keep_low_res_logits=True
    )
    assert [len(p) for p in out] == [2, 0, 1]
    assert out[1].masks.shape == (0, *SIZE) and out[1].boxes.shape == (0, 4)
    assert out[2].low_res_logits is not None
    c = assert_close_stage(out[2].low_res_logits, pred_ref["box.low_res_logits"], "box via batch")
    print(f"box prompt through the batched path: {c}")
    assert (out[2].scores - pred_ref["box.iou_predictions"]).abs().max() <= 1e-5
    for p in out:
        assert torch.all(p.boxes[:, 2] <= SIZE[1]) and torch.all(p.boxes[:, 3] <= SIZE[0])
    with pytest.raises(ValueError, match="expected 3 sizes and 3 box lists"):
        box_proposals_from_embeddings(sam_model, embeddings, [SIZE], [box])


def test_box_proposals_end_to_end_frames(sam_model: Sam, pred_ref: dict[str, torch.Tensor]) -> None:
    raw = np.array(Image.open(SAM_DIR / "image_480x640.png").convert("RGB"))
    prompts = parse_box_prompts({"frames": {"7": [[120, 90, 470, 380]]}})
    out = box_proposals(sam_model, [raw], prompts, frame_indices=[7], resolution="low")
    assert len(out) == 1 and len(out[0]) == 1
    assert out[0].masks.shape == (1, 192, 256)
    ref_mask = pred_ref["box.low_res_logits"][:, :192, :256] > 0
    agree = (out[0].masks == ref_mask).float().mean()
    assert agree > 0.999
    assert abs(out[0].scores.item() - pred_ref["box.iou_predictions"].item()) <= 1e-5
    with pytest.raises(ValueError, match="frame 0: expected an H x W x 3 uint8 image"):
        box_proposals(sam_model, [raw.astype(np.float32)], prompts)


def test_encode_frames_torch_resize_close_to_pil(
    sam_model: Sam, sam_embedding: torch.Tensor
) -> None:
    raw = np.array(Image.open(SAM_DIR / "image_480x640.png").convert("RGB"))
    emb, sizes = encode_frames(sam_model, [torch.from_numpy(raw)], resize="torch")
    assert sizes == [SIZE] and emb.shape == sam_embedding.shape
    c = compare(emb, sam_embedding)
    print(f"encoder output with the torch resize vs reference (PIL): {c}")
    assert c.cosine > 0.9999 and c.rel < 0.05
    with pytest.raises(ValueError, match="expected resize in"):
        encode_frames(sam_model, [raw], resize="cv2")  # type: ignore[arg-type]


def test_kept_rows_are_gathered_from_chunks_in_the_order_asked() -> None:
    """NMS picks rows across the decoder's chunks; they are gathered without joining the chunks
    (some empty), in NMS order, with the chunks' trailing shape when none is picked."""
    from moca_rt.proposals import _gather

    parts = [torch.randn(3, 2, 2), torch.randn(0, 2, 2), torch.randn(4, 2, 2), torch.randn(2, 2, 2)]
    joined = torch.cat(parts)
    for picked in ([0, 2, 3, 6, 8, 7, 1], [8], [], [3, 4, 5, 6]):
        index = torch.tensor(picked, dtype=torch.int64)
        assert torch.equal(_gather(parts, index), joined[index])
    assert _gather(parts, torch.zeros(0, dtype=torch.int64)).shape == (0, 2, 2)
    assert torch.equal(_gather(parts[:1], torch.tensor([2, 0])), parts[0][[2, 0]])
