"""SAM predictor (stateful API) and mask proposals for mask-proposal matching (DESIGN section 5).

* :class:`SamPredictor` caches one image's embedding and answers point / box / mask prompts, with
  the official predictor's semantics (inputs in input pixels for ``predict``, in the 1024 model
  frame for ``predict_torch``).
* :func:`grid_proposals` is SAM's automatic mask generation on one full-image crop: a point grid
  (16 x 16 cell centres by default), all points of a chunk decoded as one batch with multimask
  output, then the usual filters: predicted IoU > 0.88, stability score >= 0.95 (offset 1.0),
  optional minimum area, box NMS at IoU 0.7.
* :func:`box_proposals` decodes boxes a user supplies per frame (JSON, see
  :func:`parse_box_prompts`) with frames batched through the encoder and all boxes through the
  decoder at once.
* :class:`SamProposals` is the pipeline's proposal source
  (:class:`moca_rt.pipeline.ProposalSource`): grid or box proposals of a batch of frames, as
  low-resolution logits covering each frame.

Box convention of :class:`MaskProposals`: XYXY float in input pixels with *exclusive* right and
bottom edges (pixel column i spans [i, i + 1)), so x1 - x0 is the mask's width in pixels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from moca_rt.engines import names
from moca_rt.engines.base import Engine
from moca_rt.grid_decoder import GridBackend
from moca_rt.modeling.sam import Sam
from moca_rt.sam_transforms import (
    apply_boxes,
    apply_coords,
    get_preprocess_shape,
    low_res_valid_size,
    normalize_and_pad,
    postprocess_masks,
    resize_longest_side_pil,
    resize_longest_side_torch,
)

Resolution = Literal["image", "low"]
ResizeMethod = Literal["pil", "torch"]


# --------------------------------------------------------------------------- predictor


class SamPredictor:
    """Stateful single-image predictor around a :class:`~moca_rt.modeling.sam.Sam`.

    ``set_image`` runs the encoder once; ``predict`` / ``predict_torch`` run only the prompt
    encoder and mask decoder. All returned tensors live on the model's device.
    """

    def __init__(self, model: Sam) -> None:
        self.model = model
        self.features: torch.Tensor | None = None
        self.original_size: tuple[int, int] = (0, 0)
        self.input_size: tuple[int, int] = (0, 0)

    @property
    def device(self) -> torch.device:
        return self.model.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.image_encoder.pos_embed.dtype

    def reset_image(self) -> None:
        """Forget the cached embedding."""
        self.features = None
        self.original_size = (0, 0)
        self.input_size = (0, 0)

    @torch.no_grad()
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an (H, W, 3) uint8 image (``image_format`` "RGB" or "BGR") via the PIL resize."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"expected image_format in ['RGB', 'BGR'], got {image_format!r}")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"expected an H x W x 3 uint8 image, got shape {image.shape} dtype {image.dtype}"
            )
        if image_format == "BGR":
            image = np.ascontiguousarray(image[..., ::-1])
        resized = resize_longest_side_pil(image, self.model.image_size)
        x = torch.from_numpy(resized).to(self.device).permute(2, 0, 1)[None]
        self.set_torch_image(x, (image.shape[0], image.shape[1]))

    @torch.no_grad()
    def set_torch_image(self, resized: torch.Tensor, original_size: tuple[int, int]) -> None:
        """Encode a (1, 3, H', W') uint8 image already resized to longest side 1024."""
        s = self.model.image_size
        if resized.ndim != 4 or resized.shape[:2] != (1, 3) or max(resized.shape[2:]) != s:
            raise ValueError(
                f"expected a 1 x 3 x H' x W' image with longest side {s}, got "
                f"{tuple(resized.shape)}"
            )
        x = normalize_and_pad(
            resized.to(self.device), s, self.model.config.pixel_mean, self.model.config.pixel_std
        )
        self.features = self.model.image_encoder(x.to(self.dtype))
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = (int(resized.shape[2]), int(resized.shape[3]))

    def _require_image(self) -> torch.Tensor:
        if self.features is None:
            raise RuntimeError("no image is set: call set_image(...) before predicting")
        return self.features

    def transform_coords(self, coords: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(..., 2) XY in input pixels -> model frame, on the model device (float32)."""
        return apply_coords(coords, self.original_size, self.model.image_size).to(self.device)

    def transform_boxes(self, boxes: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(..., 4) XYXY in input pixels -> model frame, on the model device (float32)."""
        return apply_boxes(boxes, self.original_size, self.model.image_size).to(self.device)

    @torch.no_grad()
    def predict(
        self,
        point_coords: torch.Tensor | np.ndarray | None = None,
        point_labels: torch.Tensor | np.ndarray | None = None,
        box: torch.Tensor | np.ndarray | None = None,
        mask_input: torch.Tensor | np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One prompt set in input pixels.

        Args:
            point_coords: (N, 2) XY in input pixels; point_labels: (N,) 1 fg / 0 bg.
            box: (4,) or (1, 4) XYXY in input pixels.
            mask_input: (1, 256, 256) low-res logits from a previous call.
            multimask_output: three masks (True) or one (False).
            return_logits: return float logits instead of bool masks.

        Returns:
            masks (C, H, W) bool (or float logits), iou_predictions (C,), low_res_logits
            (C, 256, 256), with C = 3 or 1.
        """
        self._require_image()
        coords = labels = boxes = masks = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("expected point_labels with point_coords, got None")
            pc = torch.as_tensor(point_coords, dtype=torch.float32)
            pl = torch.as_tensor(point_labels)
            if pc.ndim != 2 or pc.shape[1] != 2 or pl.shape != (pc.shape[0],):
                raise ValueError(
                    f"expected point_coords (N, 2) and point_labels (N,), got "
                    f"{tuple(pc.shape)} and {tuple(pl.shape)}"
                )
            coords = self.transform_coords(pc)[None]
            labels = pl.to(self.device, torch.int64)[None]
        if box is not None:
            b = torch.as_tensor(box, dtype=torch.float32)
            if b.numel() != 4:
                raise ValueError(f"expected a box of 4 numbers (XYXY), got shape {tuple(b.shape)}")
            boxes = self.transform_boxes(b.reshape(1, 4))
        if mask_input is not None:
            m = torch.as_tensor(mask_input, dtype=torch.float32)
            side = self.model.image_size // 4
            if m.shape != (1, side, side):
                raise ValueError(f"expected mask_input (1, {side}, {side}), got {tuple(m.shape)}")
            masks = m[None].to(self.device)
        out, iou, low = self.predict_torch(
            coords, labels, boxes, masks, multimask_output, return_logits
        )
        return out[0], iou[0], low[0]

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """B prompt sets at once, coordinates already in the model frame (see ``transform_*``).

        Args:
            point_coords: (B, N, 2) XY float; point_labels: (B, N) int.
            boxes: (B, 4) XYXY float; mask_input: (B, 1, 256, 256) logits.

        Returns:
            masks (B, C, H, W) bool (or float32 logits), iou_predictions (B, C) float32,
            low_res_logits (B, C, 256, 256) float32.
        """
        feats = self._require_image()
        low, iou = self.model.decode(
            feats, point_coords, point_labels, boxes, mask_input, multimask_output
        )
        low = low.float()
        masks = postprocess_masks(low, self.input_size, self.original_size, self.model.image_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou.float(), low


# --------------------------------------------------------------------------- mask utilities


@dataclass
class MaskProposals:
    """Mask proposals of one image.

    Attributes:
        masks: (P, h, w) bool; (h, w) = input size (H, W) at "image" resolution, or the
            low-res logits' crop covering the image (ceil(H'/4), ceil(W'/4)) at "low" resolution.
        scores: (P,) float32 predicted IoU.
        stability: (P,) float32 stability score.
        boxes: (P, 4) float32 XYXY in input pixels, exclusive right/bottom edges.
        image_size: (H, W) of the input image.
        low_res_logits: (P, 256, 256) float32 decoder logits (whole padded frame), if kept; at
            low resolution from :func:`grid_proposals_batch`, only the first rows and columns
            that cover the frame (4 per embedding token; the padding of a non-square frame is
            not upscaled).
        points: (P, 2) float32 XY input pixels of the prompting point (grid proposals; NaN for
            box prompts).
    """

    masks: torch.Tensor
    scores: torch.Tensor
    stability: torch.Tensor
    boxes: torch.Tensor
    image_size: tuple[int, int]
    low_res_logits: torch.Tensor | None = field(default=None)
    points: torch.Tensor | None = field(default=None)

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def to(self, device: torch.device | str) -> MaskProposals:
        return MaskProposals(
            self.masks.to(device),
            self.scores.to(device),
            self.stability.to(device),
            self.boxes.to(device),
            self.image_size,
            None if self.low_res_logits is None else self.low_res_logits.to(device),
            None if self.points is None else self.points.to(device),
        )


def build_point_grid(points_per_side: int) -> torch.Tensor:
    """(n*n, 2) XY in [0, 1], cell centres (i + 0.5) / n, row-major with y as the outer loop."""
    if points_per_side < 1:
        raise ValueError(f"expected points_per_side >= 1, got {points_per_side}")
    c = (torch.arange(points_per_side, dtype=torch.float64) + 0.5) / points_per_side
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)


def stability_score(
    logits: torch.Tensor, threshold: float = 0.0, offset: float = 1.0
) -> torch.Tensor:
    """IoU of ``logits > threshold + offset`` with ``logits > threshold - offset`` per mask.

    logits (..., h, w) -> (...) float32; a mask empty at both thresholds scores 0.
    """
    # int32 counts (a mask has fewer than 2**31 pixels) are summed 5x faster than int64 on the
    # CPU: 96 masks of 256 x 256 took 6 ms instead of 34.
    count = torch.int32 if logits.shape[-1] * logits.shape[-2] < 2**31 else torch.int64
    inter = (logits > threshold + offset).sum(dim=(-1, -2), dtype=count)
    union = (logits > threshold - offset).sum(dim=(-1, -2), dtype=count)
    return (inter.double() / union.clamp(min=1).double()).float()


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(P, h, w) bool -> (P, 4) float32 XYXY in mask pixels, exclusive max; empty -> zeros."""
    if masks.ndim != 3:
        raise ValueError(f"expected P x h x w masks, got shape {tuple(masks.shape)}")
    p, h, w = masks.shape
    if p == 0:
        return torch.zeros(0, 4, device=masks.device)
    cols = masks.any(dim=1)  # (P, w)
    rows = masks.any(dim=2)  # (P, h)
    x0 = cols.int().argmax(dim=1)
    x1 = w - cols.flip(1).int().argmax(dim=1)
    y0 = rows.int().argmax(dim=1)
    y1 = h - rows.flip(1).int().argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    return torch.where(cols.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (N, 4) and (M, 4) XYXY boxes -> (N, M) float32 (0 where the union is 0)."""
    a, b = a.float(), b.float()
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: (P, 4) XYXY; scores: (P,).
        iou_threshold: a box is dropped when its IoU with a kept, higher-scored box is > this.

    Returns:
        (K,) int64 indices of the kept boxes, highest score first (ties: lower index first).
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (boxes.shape[0],):
        raise ValueError(
            f"expected boxes (P, 4) and scores (P,), got {tuple(boxes.shape)} and "
            f"{tuple(scores.shape)}"
        )
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    over = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()
    # One transfer, then a host loop: P is at most a few thousand proposals.
    suppressed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return order[torch.as_tensor(keep, dtype=torch.int64, device=order.device)]


# --------------------------------------------------------------------------- grid proposals


@dataclass(frozen=True)
class ProposalConfig:
    """Automatic mask proposal settings (SAM automatic-mask-generator defaults where it has them).

    resolution: "image" -> masks (P, H, W) at the input size; "low" -> the decoder's 256 x 256
    logits cropped to the image region (about H'/4 x W'/4), much cheaper.
    """

    points_per_side: int = 16
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_mask_area: int = 0
    resolution: Resolution = "image"
    keep_low_res_logits: bool = False

    def __post_init__(self) -> None:
        if self.resolution not in ("image", "low"):
            raise ValueError(f"expected resolution in ['image', 'low'], got {self.resolution!r}")
        if self.points_per_batch < 1 or self.points_per_side < 1:
            raise ValueError(
                f"expected points_per_side and points_per_batch >= 1, got "
                f"{self.points_per_side} and {self.points_per_batch}"
            )


def _logits_at_resolution(
    low: torch.Tensor,
    resolution: Resolution,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
) -> torch.Tensor:
    """(P, 256, 256) low-res logits -> (P, h, w) logits at the requested resolution. At low
    resolution the logits may already be cut to the rows and columns covering the frame."""
    if resolution == "image":
        return postprocess_masks(low[:, None], input_size, original_size, image_size)[:, 0]
    vh, vw = low_res_valid_size(input_size, image_size, image_size // 4)
    return low[:, :vh, :vw]


def _boxes_in_input_pixels(
    masks: torch.Tensor,
    resolution: Resolution,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
) -> torch.Tensor:
    boxes = masks_to_boxes(masks)
    if resolution == "image":
        return boxes
    f = 4.0  # the low-res logits are image_size / 4 on a side
    scale = torch.tensor(
        [
            f * original_size[1] / input_size[1],
            f * original_size[0] / input_size[0],
        ]
        * 2,
        device=boxes.device,
    )
    limit = torch.tensor([original_size[1], original_size[0]] * 2, device=boxes.device)
    return torch.minimum(boxes * scale, limit.float())


@dataclass
class _Kept:
    """Survivors of one decoder chunk (internal), with their boxes in input pixels."""

    masks: torch.Tensor
    scores: torch.Tensor
    stability: torch.Tensor
    low: torch.Tensor
    points: torch.Tensor
    boxes: torch.Tensor


def _rows(*tensors: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``t[keep]`` of each tensor, or the tensors themselves when every row is kept (no copy
    of the logits; the test runs once)."""
    if bool(keep.all()):
        return tensors
    return tuple(t[keep] for t in tensors)


def _filter_chunk(
    low: torch.Tensor,
    iou: torch.Tensor,
    points: torch.Tensor,
    cfg: ProposalConfig,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
    mask_threshold: float,
) -> _Kept:
    low, iou, points = _rows(low, iou, points, keep=iou > cfg.pred_iou_thresh)
    logits = _logits_at_resolution(low, cfg.resolution, input_size, original_size, image_size)
    st = stability_score(logits, mask_threshold, cfg.stability_score_offset)
    logits, iou, st, low, points = _rows(
        logits, iou, st, low, points, keep=st >= cfg.stability_score_thresh
    )
    masks = logits > mask_threshold
    boxes = _boxes_in_input_pixels(masks, cfg.resolution, input_size, original_size, image_size)
    return _Kept(masks, iou, st, low, points, boxes)


def _gather(parts: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of ``parts`` laid end to end, without joining the parts (a frame's kept
    logits take 200 MB for the 1024 models when every prompt passes; NMS keeps a few rows)."""
    if len(parts) == 1:
        return parts[0][index]
    sizes = torch.tensor([len(part) for part in parts])
    ends = sizes.cumsum(0)
    index = index.cpu()
    chunk = torch.bucketize(index, ends, right=True)  # the part holding each row
    rows = index - (ends - sizes)[chunk]
    picked = [parts[c][r] for c, r in zip(chunk.tolist(), rows.tolist(), strict=True)]
    return torch.stack(picked) if picked else parts[0][:0]


def _finalise(
    kept: list[_Kept],
    cfg: ProposalConfig,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
    device: torch.device,
    apply_nms: bool,
) -> MaskProposals:
    if not kept:
        shape_hw = (
            original_size
            if cfg.resolution == "image"
            else low_res_valid_size(input_size, image_size, image_size // 4)
        )
        masks = torch.zeros(0, *shape_hw, dtype=torch.bool, device=device)
        kept = [
            _Kept(
                masks,
                torch.zeros(0, device=device),
                torch.zeros(0, device=device),
                torch.zeros(0, image_size // 4, image_size // 4, device=device),
                torch.zeros(0, 2, device=device),
                torch.zeros(0, 4, device=device),
            )
        ]
    sc = torch.cat([k.scores for k in kept])
    st = torch.cat([k.stability for k in kept])
    pts = torch.cat([k.points for k in kept])
    boxes = torch.cat([k.boxes for k in kept])
    sel = torch.arange(len(sc), device=device)
    if cfg.min_mask_area > 0 and len(sc):
        area = torch.cat([k.masks.sum(dim=(1, 2)) for k in kept]).double()
        if cfg.resolution == "low":
            area = area * 16.0 * (original_size[0] / input_size[0]) ** 2
        sel = sel[area >= cfg.min_mask_area]
    if apply_nms:
        sel = sel[nms(boxes[sel], sc[sel], cfg.box_nms_thresh)]
    return MaskProposals(
        _gather([k.masks for k in kept], sel).to(device),
        sc[sel],
        st[sel],
        boxes[sel],
        original_size,
        _gather([k.low for k in kept], sel).to(device) if cfg.keep_low_res_logits else None,
        pts[sel],
    )


def filter_proposals(
    low_res_logits: torch.Tensor,
    iou_predictions: torch.Tensor,
    original_size: tuple[int, int],
    config: ProposalConfig | None = None,
    points: torch.Tensor | None = None,
    image_size: int = 1024,
    mask_threshold: float = 0.0,
) -> MaskProposals:
    """SAM's quality filters and NMS on decoded masks of one image.

    Args:
        low_res_logits: (N, 256, 256) decoder logits (whole padded frame).
        iou_predictions: (N,) predicted IoU.
        original_size: (H, W) of the input image.
        config: thresholds, NMS, minimum area and output resolution.
        points: (N, 2) XY input pixels of the prompting points (recorded, optional).

    Returns:
        Proposals with predicted IoU > ``pred_iou_thresh``, stability >= ``stability_score_thresh``
        (computed at the output resolution), area >= ``min_mask_area`` (input pixels), then box
        NMS at ``box_nms_thresh``; highest predicted IoU first.
    """
    cfg = config or ProposalConfig()
    n = low_res_logits.shape[0]
    if low_res_logits.ndim != 3 or iou_predictions.shape != (n,):
        raise ValueError(
            f"expected low_res_logits (N, h, w) and iou_predictions (N,), got "
            f"{tuple(low_res_logits.shape)} and {tuple(iou_predictions.shape)}"
        )
    device = low_res_logits.device
    pts = points if points is not None else torch.full((n, 2), float("nan"), device=device)
    input_size = get_preprocess_shape(original_size[0], original_size[1], image_size)
    kept = _filter_chunk(
        low_res_logits.float(),
        iou_predictions.float(),
        pts,
        cfg,
        input_size,
        original_size,
        image_size,
        mask_threshold,
    )
    return _finalise([kept], cfg, input_size, original_size, image_size, device, True)


@torch.no_grad()
def grid_proposals_from_embedding(
    model: Sam,
    image_embedding: torch.Tensor,
    original_size: tuple[int, int],
    config: ProposalConfig | None = None,
    points: torch.Tensor | None = None,
) -> MaskProposals:
    """Automatic proposals for one image whose embedding is already computed.

    Args:
        model: the SAM model (prompt encoder + mask decoder are used).
        image_embedding: (1, 256, 64, 64) encoder output for the image.
        original_size: (H, W) of the input image.
        config: filter settings; defaults to ``ProposalConfig()``.
        points: optional (N, 2) XY prompt points in input pixels replacing the regular grid.

    Returns:
        The kept proposals, highest predicted IoU first; ``points`` records each one's prompt.
    """
    cfg = config or ProposalConfig()
    if image_embedding.ndim != 4 or image_embedding.shape[0] != 1:
        raise ValueError(
            f"expected one image embedding (1, C, h, w), got {tuple(image_embedding.shape)}"
        )
    s = model.image_size
    input_size = get_preprocess_shape(original_size[0], original_size[1], s)
    h, w = original_size
    device = image_embedding.device
    if points is None:
        grid = build_point_grid(cfg.points_per_side) * torch.tensor([w, h], dtype=torch.float64)
    else:
        grid = torch.as_tensor(points, dtype=torch.float64).cpu()
        if grid.ndim != 2 or grid.shape[1] != 2:
            raise ValueError(f"expected points (N, 2), got {tuple(grid.shape)}")
    coords = apply_coords(grid, original_size, s).to(device)
    grid32 = grid.to(device, torch.float32)
    kept: list[_Kept] = []
    for start in range(0, coords.shape[0], cfg.points_per_batch):
        pts = coords[start : start + cfg.points_per_batch, None, :]
        labels = torch.ones(pts.shape[:2], dtype=torch.int64, device=device)
        low, iou = model.decode(image_embedding, pts, labels, multimask_output=True)
        m = low.shape[1]
        src = grid32[start : start + cfg.points_per_batch].repeat_interleave(m, dim=0)
        kept.append(
            _filter_chunk(
                low.flatten(0, 1).float(),
                iou.flatten(0, 1).float(),
                src,
                cfg,
                input_size,
                original_size,
                s,
                model.mask_threshold,
            )
        )
    return _finalise(kept, cfg, input_size, original_size, s, device, True)


def grid_proposals(predictor: SamPredictor, config: ProposalConfig | None = None) -> MaskProposals:
    """Automatic proposals for the image currently set on ``predictor`` (see ``ProposalConfig``)."""
    feats = predictor._require_image()
    return grid_proposals_from_embedding(predictor.model, feats, predictor.original_size, config)


# --------------------------------------------------------------------------- box prompts


def parse_box_prompts(obj: Any) -> dict[int, torch.Tensor]:
    """Validate a box-prompt document and return {frame index: (K, 4) float32 XYXY}.

    Schema (boxes in input pixels of that frame, XYXY with x0 <= x1 and y0 <= y1)::

        {"frames": {"0": [[x0, y0, x1, y1], ...], "17": [], ...}}

    Keys are non-negative integer frame indices written as strings; a frame may list no boxes.
    Frames not listed get no box proposals.

    Raises:
        ValueError: naming the frame and the problem.
    """
    if not isinstance(obj, Mapping) or "frames" not in obj:
        raise ValueError(
            f"expected a JSON object with a 'frames' key, got {type(obj).__name__}"
            + (f" with keys {sorted(obj)[:5]}" if isinstance(obj, Mapping) else "")
        )
    frames = obj["frames"]
    if not isinstance(frames, Mapping):
        raise ValueError(f"expected 'frames' to be an object, got {type(frames).__name__}")
    out: dict[int, torch.Tensor] = {}
    for key, boxes in frames.items():
        if not (isinstance(key, str) and key.isdigit()):
            raise ValueError(f"frame {key!r}: expected a non-negative integer frame index as key")
        idx = int(key)
        if idx in out:
            raise ValueError(f"frame {key!r}: duplicate frame index {idx}")
        if not isinstance(boxes, list):
            raise ValueError(f"frame {idx}: expected a list of boxes, got {type(boxes).__name__}")
        rows: list[list[float]] = []
        for j, box in enumerate(boxes):
            if (
                not isinstance(box, list)
                or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
            ):
                raise ValueError(
                    f"frame {idx}, box {j}: expected 4 numbers [x0, y0, x1, y1], got {box!r}"
                )
            if not all(math.isfinite(v) for v in box):
                raise ValueError(f"frame {idx}, box {j}: expected finite numbers, got {box!r}")
            x0, y0, x1, y1 = (float(v) for v in box)
            if x1 < x0 or y1 < y0:
                raise ValueError(
                    f"frame {idx}, box {j}: expected x0 <= x1 and y0 <= y1, got {box!r}"
                )
            rows.append([x0, y0, x1, y1])
        out[idx] = torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)
    return out


def load_box_prompts(path: str | Path) -> dict[int, torch.Tensor]:
    """Read and validate a box-prompt JSON file (schema in :func:`parse_box_prompts`)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: expected valid JSON, got a parse error: {exc}") from exc
    return parse_box_prompts(obj)


@torch.no_grad()
def encode_frames(
    model: Sam,
    frames: Sequence[np.ndarray | torch.Tensor],
    batch_size: int = 4,
    resize: ResizeMethod = "pil",
    encoder: Engine | None = None,
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Encode (H, W, 3) uint8 RGB frames (sizes may differ) in batches.

    ``encoder``: an engine of the ``sam_encoder`` unit (``sam_images`` -> ``image_embeddings``,
    :mod:`moca_rt.engines.names`: compiled, onnxruntime, TensorRT) run instead of
    ``model.image_encoder``; its output is moved to the model's device and dtype.

    ``resize="pil"`` is the exact official resize on the CPU; ``"torch"`` resizes on the model's
    device (frames may already be CUDA tensors), within one grey level of PIL (about 8-15% of
    pixels differ by one), which moved the reference encoder output by rel 8.4e-3.

    Returns:
        embeddings (F, 256, 64, 64) in the model dtype and the (H, W) size of each frame.
    """
    if batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size}")
    device = model.pixel_mean.device
    dtype = model.image_encoder.pos_embed.dtype
    s = model.image_size
    sizes, out = [], []
    for start in range(0, len(frames), batch_size):
        batch: list[torch.Tensor] = []
        for frame in frames[start : start + batch_size]:
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype not in (np.uint8, torch.uint8):
                raise ValueError(
                    f"frame {start + len(batch)}: expected an H x W x 3 uint8 image, got shape "
                    f"{tuple(frame.shape)} dtype {frame.dtype}"
                )
            if resize == "torch":
                chw = torch.as_tensor(frame, device=device).permute(2, 0, 1)[None]
                resized = resize_longest_side_torch(chw, s)
            elif resize == "pil":
                arr = frame.cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
                pil = resize_longest_side_pil(arr, s)
                resized = torch.from_numpy(pil).to(device).permute(2, 0, 1)[None]
            else:
                raise ValueError(f"expected resize in ['pil', 'torch'], got {resize!r}")
            batch.append(
                normalize_and_pad(
                    resized,
                    s,
                    model.config.pixel_mean,
                    model.config.pixel_std,
                )
            )
            sizes.append((int(frame.shape[0]), int(frame.shape[1])))
        x = torch.cat(batch).to(dtype)
        if encoder is None:
            out.append(model.image_encoder(x))
        else:
            emb = encoder({names.SAM_IMAGES: x})[names.IMAGE_EMBEDDINGS]
            out.append(emb.to(device, dtype))
    if not out:
        raise ValueError("expected at least one frame, got none")
    return torch.cat(out), sizes


@torch.no_grad()
def box_proposals_from_embeddings(
    model: Sam,
    embeddings: torch.Tensor,
    original_sizes: Sequence[tuple[int, int]],
    boxes: Sequence[torch.Tensor | None],
    resolution: Resolution = "image",
    decoder_batch: int = 64,
    keep_low_res_logits: bool = False,
) -> list[MaskProposals]:
    """One mask per user box, every box of every frame decoded together.

    Args:
        embeddings: (F, 256, 64, 64) one embedding per frame.
        original_sizes: (H, W) per frame.
        boxes: per frame a (K, 4) XYXY tensor in that frame's input pixels, or None.
        resolution: "image" or "low" (see ``ProposalConfig``).

    Returns:
        One ``MaskProposals`` per frame, in prompt order (no quality filter or NMS: the user asked
        for these objects), scores = predicted IoU.
    """
    n = embeddings.shape[0]
    if len(original_sizes) != n or len(boxes) != n:
        raise ValueError(
            f"expected {n} sizes and {n} box lists (one per embedding), got "
            f"{len(original_sizes)} and {len(boxes)}"
        )
    s = model.image_size
    device = embeddings.device
    frame_of, model_boxes = [], []
    for i, b in enumerate(boxes):
        if b is None or b.numel() == 0:
            continue
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"frame {i}: expected boxes (K, 4), got {tuple(b.shape)}")
        model_boxes.append(apply_boxes(b, original_sizes[i], s).to(device))
        frame_of += [i] * b.shape[0]
    lows: list[torch.Tensor] = []
    ious: list[torch.Tensor] = []
    if model_boxes:
        all_boxes = torch.cat(model_boxes)
        idx = torch.as_tensor(frame_of, device=device)
        for start in range(0, all_boxes.shape[0], decoder_batch):
            sl = slice(start, start + decoder_batch)
            low, iou = model.decode(
                embeddings[idx[sl]], boxes=all_boxes[sl], multimask_output=False
            )
            lows.append(low[:, 0].float())
            ious.append(iou[:, 0].float())
    low_all = torch.cat(lows) if lows else torch.zeros(0, s // 4, s // 4, device=device)
    iou_all = torch.cat(ious) if ious else torch.zeros(0, device=device)
    # Keep every box's mask: no quality thresholds, no NMS.
    cfg = ProposalConfig(
        pred_iou_thresh=-math.inf,
        stability_score_thresh=-math.inf,
        resolution=resolution,
        keep_low_res_logits=keep_low_res_logits,
    )
    results: list[MaskProposals] = []
    offset = 0
    for i in range(n):
        b = boxes[i]
        k = 0 if b is None else int(b.shape[0])
        input_size = get_preprocess_shape(original_sizes[i][0], original_sizes[i][1], s)
        sl = slice(offset, offset + k)
        kept = _filter_chunk(
            low_all[sl],
            iou_all[sl],
            torch.full((k, 2), math.nan, device=device),
            cfg,
            input_size,
            original_sizes[i],
            s,
            model.mask_threshold,
        )
        results.append(
            _finalise([kept], cfg, input_size, original_sizes[i], s, device, apply_nms=False)
        )
        offset += k
    return results


def box_proposals(
    model: Sam,
    frames: Sequence[np.ndarray],
    prompts: Mapping[int, torch.Tensor],
    frame_indices: Sequence[int] | None = None,
    resolution: Resolution = "image",
    encoder_batch: int = 4,
    resize: ResizeMethod = "pil",
) -> list[MaskProposals]:
    """Proposals from user boxes for a list of frames.

    Args:
        frames: (H, W, 3) uint8 RGB frames.
        prompts: {frame index: (K, 4) XYXY in input pixels}, e.g. from :func:`load_box_prompts`.
        frame_indices: the video frame index of each entry of ``frames`` (default 0..F-1).
        resolution: "image" or "low".
        resize: "pil" (exact) or "torch" (on device), see :func:`encode_frames`.

    Returns:
        One ``MaskProposals`` per frame (empty where the frame has no boxes).
    """
    indices = list(range(len(frames))) if frame_indices is None else list(frame_indices)
    if len(indices) != len(frames):
        raise ValueError(f"expected {len(frames)} frame indices, got {len(indices)}")
    embeddings, sizes = encode_frames(model, frames, encoder_batch, resize)
    boxes = [prompts.get(i) for i in indices]
    return box_proposals_from_embeddings(model, embeddings, sizes, boxes, resolution)


GridDecoder = Literal["factored", "reference"]


@torch.no_grad()
def grid_proposals_batch(
    model: Sam,
    embeddings: torch.Tensor,
    original_sizes: Sequence[tuple[int, int]],
    config: ProposalConfig | None = None,
    upscale_batch: int = 16,
    decoder: GridBackend | None = None,
) -> list[MaskProposals]:
    """Grid proposals of F frames at once, on the factored decoder (:mod:`moca_rt.grid_decoder`).

    The same proposals as :func:`grid_proposals_from_embedding` per frame (same filters, order and
    NMS; logits equal up to rounding), cheaper: layer 0's image projections run once per frame,
    attention over per-prompt image tokens is factored onto the prompt's tokens, the prompts of
    all frames share decoder calls, and the output upscaling runs only for prompts with a mask
    whose predicted IoU passes ``pred_iou_thresh`` (the first quality filter needs nothing else).

    Args:
        embeddings: (F, 256, 64, 64) image embeddings.
        original_sizes: (H, W) per frame.
        config: grid and filters; ``points_per_batch / 2`` prompts per decoder call, shared
            by as many frames as fit in one call (one frame for a 16 x 16 grid); on the CPU the
            backend splits a call into runs of at most 8 MiB of image tokens
            (:class:`~moca_rt.grid_decoder.GridBackend`: 2 prompts for the 1024 models). On 2
            cores 16-64 prompts per call were as fast as each other for ``sam_synth``, and
            256-1024 slower (the tensors leave the cache).
        upscale_batch: at most this many prompts per output-upscaling call on torch (about 8 MB
            a prompt for the 1024 models).
        decoder: what runs the transformer and the upscaling (None: ``GridBackend()``, torch;
            :class:`~moca_rt.grid_decoder.OrtGridBackend`: onnxruntime).
    """
    cfg = config or ProposalConfig()
    n_frames = embeddings.shape[0]
    if len(original_sizes) != n_frames:
        raise ValueError(
            f"expected {n_frames} sizes (one per embedding), got {len(original_sizes)}"
        )
    # Frames share a decoder call only while their grids fit in one (small grids); otherwise one
    # frame at a time, so that the proposals kept before NMS are one frame's (peak memory).
    group = max(1, cfg.points_per_batch // 2 // cfg.points_per_side**2)
    found: list[MaskProposals] = []
    for start in range(0, n_frames, group):
        found += _grid_proposals_group(
            model,
            embeddings[start : start + group],
            original_sizes[start : start + group],
            cfg,
            upscale_batch,
            decoder or GridBackend(),
        )
    return found


def _frame_token_grid(
    cfg: ProposalConfig,
    input_sizes: Sequence[tuple[int, int]],
    grid: tuple[int, int],
    image_size: int,
) -> tuple[int, int] | None:
    """The rows and columns of the embedding grid whose upscaled logits cover these frames (at
    low resolution; None at image resolution, which resizes the whole padded 256 x 256)."""
    if cfg.resolution != "low":
        return None
    side = 4 * grid[0]  # the low-res logits: 4 per token
    valid = [low_res_valid_size(size, image_size, side) for size in input_sizes]
    return (
        min(grid[0], -(-max(v[0] for v in valid) // 4)),
        min(grid[1], -(-max(v[1] for v in valid) // 4)),
    )


def _grid_proposals_group(
    model: Sam,
    embeddings: torch.Tensor,
    original_sizes: Sequence[tuple[int, int]],
    cfg: ProposalConfig,
    upscale_batch: int,
    decoder: GridBackend,
) -> list[MaskProposals]:
    """:func:`grid_proposals_batch` for frames that share decoder calls."""
    from moca_rt.grid_decoder import prepare_frames

    n_frames = embeddings.shape[0]
    s = model.image_size
    device = embeddings.device
    unit = build_point_grid(cfg.points_per_side)
    points = [unit * torch.tensor([w, h], dtype=torch.float64) for h, w in original_sizes]
    coords = torch.stack(
        [apply_coords(p, size, s) for p, size in zip(points, original_sizes, strict=True)]
    ).to(device)
    points32 = torch.stack(points).to(device, torch.float32)
    input_sizes = [get_preprocess_shape(h, w, s) for h, w in original_sizes]
    frames = prepare_frames(model, embeddings)
    valid = _frame_token_grid(cfg, input_sizes, frames.grid, s)
    per_call = max(1, cfg.points_per_batch // 2 // n_frames)  # points per frame and call
    kept: list[list[_Kept]] = [[] for _ in range(n_frames)]
    for start in range(0, coords.shape[1], per_call):
        sl = slice(start, start + per_call)
        decoded = decoder.decode(
            model, frames, coords[:, sl], cfg.pred_iou_thresh, upscale_batch, valid
        )
        iou, need, low = decoded.iou, decoded.upscaled, decoded.low
        m = iou.shape[2]
        counts = need.sum(dim=1).tolist()
        offset = 0
        for f in range(n_frames):
            rows = low[offset : offset + counts[f]]
            offset += counts[f]
            src = points32[f, sl][need[f]].repeat_interleave(m, dim=0)
            kept[f].append(
                _filter_chunk(
                    rows.flatten(0, 1),
                    iou[f][need[f]].flatten(),
                    src,
                    cfg,
                    input_sizes[f],
                    original_sizes[f],
                    s,
                    model.mask_threshold,
                )
            )
    return [
        _finalise(kept[f], cfg, input_sizes[f], original_sizes[f], s, device, True)
        for f in range(n_frames)
    ]


class SamProposals:
    """:class:`~moca_rt.pipeline.ProposalSource` backed by SAM: grid proposals, or the user's boxes.

    Proposals are kept as the decoder's low-resolution logits cropped to the frame
    (about H'/4 x W'/4 of the 1024 input), which is where matching runs; the final union is
    upsampled bilinearly to the frame like SAM's own post-processing. Frames reach the encoder
    through :func:`encode_frames` with the PIL resize (see docs/design.md: the on-device resize
    would change the masks).

    Args:
        sam: the SAM model (on the pipeline's device).
        config: grid settings (points per side, quality filters, NMS).
        encoder_batch: frames per image-encoder call.
        grid_decoder: ``"factored"`` (default): :func:`grid_proposals_batch`, all frames of a
            call together; ``"reference"``: :meth:`Sam.decode` frame by frame
            (:func:`grid_proposals_from_embedding`), the official order of work (for checks and
            before/after measurements). Same proposals up to rounding.
        encoder: an engine of the ``sam_encoder`` unit run instead of ``sam.image_encoder``
            (``--engine torch-compile`` / ``onnxruntime``); None: the torch module.
        grid_backend: what runs the factored decoder's per-prompt work (None: torch;
            ``--engine onnxruntime``: :class:`~moca_rt.grid_decoder.OrtGridBackend`).
    """

    def __init__(
        self,
        sam: Sam,
        config: ProposalConfig | None = None,
        encoder_batch: int = 4,
        grid_decoder: GridDecoder = "factored",
        encoder: Engine | None = None,
        grid_backend: GridBackend | None = None,
    ) -> None:
        if grid_decoder not in ("factored", "reference"):
            raise ValueError(
                f"expected grid_decoder in ['factored', 'reference'], got {grid_decoder!r}"
            )
        base = config or ProposalConfig()
        self.sam = sam.eval()
        self.config = ProposalConfig(
            **{**base.__dict__, "resolution": "low", "keep_low_res_logits": True}
        )
        self.encoder_batch = encoder_batch
        self.grid_decoder = grid_decoder
        self.encoder = encoder
        self.grid_backend = grid_backend

    @torch.inference_mode()
    def __call__(
        self, images: Sequence[np.ndarray], boxes: Sequence[torch.Tensor | None] | None
    ) -> list[torch.Tensor]:
        """Per frame, [P, h, w] float32 low-resolution logits (P may be 0).

        Args:
            images: uint8 [H, W, 3] RGB frames.
            boxes: None for grid proposals, else per frame a [K, 4] float32 XYXY tensor in
                that frame's pixels, or None (no proposals for that frame).
        """
        embeddings, sizes = encode_frames(
            self.sam, images, self.encoder_batch, encoder=self.encoder
        )
        return self.from_embeddings(embeddings, sizes, boxes)

    @torch.inference_mode()
    def from_embeddings(
        self,
        embeddings: torch.Tensor,
        sizes: Sequence[tuple[int, int]],
        boxes: Sequence[torch.Tensor | None] | None,
    ) -> list[torch.Tensor]:
        """:meth:`__call__` after the image encoder: embeddings (F, 256, 64, 64), (H, W) each."""
        s = self.sam.image_size
        if boxes is not None:
            found = box_proposals_from_embeddings(
                self.sam, embeddings, sizes, boxes, resolution="low", keep_low_res_logits=True
            )
        elif self.grid_decoder == "factored":
            found = grid_proposals_batch(
                self.sam, embeddings, sizes, self.config, decoder=self.grid_backend
            )
        else:
            found = [
                grid_proposals_from_embedding(
                    self.sam, embeddings[i : i + 1], sizes[i], self.config
                )
                for i in range(len(sizes))
            ]
        out = []
        for props, size in zip(found, sizes, strict=True):
            vh, vw = low_res_valid_size(get_preprocess_shape(size[0], size[1], s), s)
            if props.low_res_logits is None or len(props) == 0:
                out.append(torch.zeros(0, vh, vw, device=embeddings.device))
            else:
                out.append(props.low_res_logits[:, :vh, :vw].float())
        return out
