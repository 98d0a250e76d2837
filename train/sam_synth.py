"""Stage 2 of the tiny models: promptable segmentation training of the tiny SAM (``sam_synth``).

The whole model (image encoder, prompt encoder, mask decoder) is trained from random weights on
the instance masks of the synthetic world (``s4`` and ``ms3`` train partitions, every visible
object, sounding or not), the way SAM itself was trained on SA-1B (Kirillov et al. 2023, sec. 3
and appendix A), without the iterative-correction rounds:

* images go in exactly as :class:`~moca_rt.proposals.SamPredictor.set_image` feeds them (PIL
  resize of the longest side to 256, pixel normalisation, zero padding), rendered once and cached;
* each image of a batch gets ``prompts_per_image`` prompts, each on a random object of it: with
  probability ``point_prob`` one foreground point (uniform over the object's visible pixels,
  jittered within its pixel), otherwise the object's box with Gaussian corner noise (std
  ``box_noise`` x the box side, clipped to ``box_noise_max`` model pixels);
* a point asks for three masks (multimask output) and only the best of them, the one with the
  smallest mask loss, is trained; a box asks for the single-mask output;
* mask loss ``focal_weight * focal + dice_weight * dice`` on the decoder's low-resolution
  logits against the mask in the same 64 x 64 frame; the IoU head regresses (MSE) the actual IoU
  of each mask it scores (``iou_weight``);
* AdamW, linear warm-up then cosine decay to 0; batches and prompts are a pure function of
  ``(seed, step)``, so a resumed run equals an uninterrupted one.

Where the defaults leave SAM's recipe, and why (measured on val, one CPU thread): SAM's 20 : 1
focal : dice weighting starts a model trained from scratch with 200-300 steps of predicting
nothing (the focal term is cheapest that way) and leaves soft logits that fail the stability
filter; 1 : 1 learns from the first steps and gives sharper masks. 80% of the prompts are points,
because the automatic grid proposals use only the multimask outputs that point prompts train
(boxes train the single-mask output). The decoder's attention starts with W_k = W_q
(:func:`tie_query_key_init`), so a prompt attends near its point from the start. Batch 4 at
lr 1e-3 beat batch 8 and lr 5e-4 / 2e-3 / 4e-3 for the same time.

Validation (``val`` partition, never ``test``): SAM's automatic grid proposals (16 x 16 points)
on ``val_scenes`` scenes per split, scored by the mean over ground-truth objects of the best
proposal's IoU at image resolution (``proposal_recall``, the selection metric) with SAM's default
quality filters (predicted IoU > 0.88, stability >= 0.95, box NMS 0.7), and the same with lowered
filters (``_low``) and with the quality filters off but NMS kept (``_nofilter``); plus proposals
per image and the share of objects found at IoU > 0.5 (``hit50``, what mask proposal matching
needs). Filters run on the decoder's low-resolution logits by default, as the pipeline's
``SamProposals`` does (``eval_resolution``).

``python -m moca_rt.train.sam_synth --out DIR`` runs the stage through
:func:`moca_rt.train.core.run_stage`; the weights ``sam_synth.safetensors`` use the official key
layout that ``moca_rt.modeling.sam.load_sam(path, SAM_PRESETS["sam_synth"])`` loads strictly.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from moca_rt.config import SAM_PRESETS
from moca_rt.modeling.sam import Sam, build_sam
from moca_rt.proposals import (
    ProposalConfig,
    Resolution,
    SamPredictor,
    build_point_grid,
    filter_proposals,
)
from moca_rt.sam_transforms import (
    get_preprocess_shape,
    normalize_and_pad,
    postprocess_masks,
    resize_longest_side_pil,
)
from moca_rt.train.core import (
    LoopSettings,
    ResumableParts,
    StageResult,
    config_from_args,
    run_stage_cli,
    save_weights_atomic,
    seeded_batch,
    stage_parser,
    train_configured_stage,
)

__all__ = [
    "RECOMMENDED_PROPOSALS",
    "WEIGHTS_FILE",
    "PromptBatch",
    "SamStage",
    "SamTrainConfig",
    "SceneCache",
    "evaluate_proposals",
    "lr_factor",
    "main",
    "mask_losses",
    "proposal_variants",
    "sample_prompts",
    "train_sam",
]

WEIGHTS_FILE = "sam_synth.safetensors"

# Grid-proposal filters recommended for the trained tiny SAM (``ProposalConfig`` fields; offset 1,
# NMS 0.7 and the 16 x 16 grid as SAM). On 96 val scenes (48 s4 + 48 ms3) at the pipeline's low
# resolution: mean best IoU 0.880 with 6.1 proposals per image, against 0.886 / 66 with the
# quality filters off, 0.866 / 4.9 at 0.7 / 0.85 and 0.727 / 2.4 at SAM's 0.88 / 0.95 (its IoU
# head and logits are not confident enough for those).
RECOMMENDED_PROPOSALS: dict[str, float] = {"pred_iou_thresh": 0.6, "stability_score_thresh": 0.8}

# Point labels of the prompt encoder: foreground point, padding ("not a point"), box corners.
LABEL_POINT, LABEL_PAD, LABEL_BOX_TL, LABEL_BOX_BR = 1, -1, 2, 3


@dataclass(frozen=True)
class SamTrainConfig:
    """Settings of the tiny-SAM stage (recorded in ``config.json`` beside the weights).

    Attributes:
        preset: ``SAM_PRESETS`` key. seed: initial weights, batch order and prompts.
        world_seed: seed of the synthetic world. image_size: side of the rendered scenes (the
            world's 224 by default, what the pipeline is given; the model sees them at 256).
        splits: training / validation splits (train and val partitions).
        train_scenes / val_scenes: scenes per split.
        iters: length of the learning-rate schedule (warm-up + cosine to 0); None: the run's
            step count (``LoopSettings.iters``).
        batch: images per step. prompts_per_image: prompts (objects) per image and step.
        lr, weight_decay, warmup, grad_clip: AdamW, linear warm-up steps, gradient-norm clip
            (0: none).
        point_prob: share of point prompts (the rest are boxes).
        box_noise, box_noise_max: box-corner noise std as a fraction of the box side, clipped
            to this many model-frame pixels (SAM: 10%, 20 px at 1024 -> 5 px at 256).
        beta2: AdamW's second-moment decay.
        init_std: > 0: truncated-normal Linear init of that std (:func:`init_weights`); 0 keeps
            PyTorch's defaults (better here).
        tied_qk_init: start decoder attention with W_k = W_q (:func:`tie_query_key_init`).
        focal_weight, dice_weight, iou_weight: loss weights (SAM: 20, 1, 1; 1, 1, 1 here).
        soft_targets: train on the covered share of each low-res cell instead of the > 0.5
            mask (measured: no better).
        min_train_pixels: objects with fewer visible pixels are never prompted.
        points_per_side: grid of the validation proposals.
        low_pred_iou, low_stability: the lowered filter thresholds also reported (default:
            :data:`RECOMMENDED_PROPOSALS`).
        min_object_pixels: ground-truth objects scored at validation need this many visible
            pixels (at ``image_size``).
        eval_resolution: where the validation proposals are filtered ("low": the decoder's
            logits, as the pipeline's ``SamProposals``; "image": ``ProposalConfig``'s default).
    """

    preset: str = "sam_synth"
    seed: int = 0
    world_seed: int = 0
    image_size: int = 224
    splits: tuple[str, ...] = ("s4", "ms3")
    train_scenes: int = 1000
    val_scenes: int = 12
    iters: int | None = None
    batch: int = 4
    prompts_per_image: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 50
    grad_clip: float = 1.0
    beta2: float = 0.999
    init_std: float = 0.0
    tied_qk_init: bool = True
    point_prob: float = 0.8
    box_noise: float = 0.1
    box_noise_max: float = 5.0
    focal_weight: float = 1.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    soft_targets: bool = False
    min_train_pixels: int = 10
    points_per_side: int = 16
    low_pred_iou: float = 0.6
    low_stability: float = 0.8
    min_object_pixels: int = 100
    eval_resolution: Resolution = "low"

    @classmethod
    def quick(cls, **overrides: Any) -> SamTrainConfig:
        """A smoke-test configuration (seconds): 64-pixel scenes, two per split, a 4 x 4 grid."""
        base: dict[str, Any] = {
            "image_size": 64,
            "train_scenes": 2,
            "val_scenes": 1,
            "batch": 2,
            "prompts_per_image": 2,
            "warmup": 1,
            "points_per_side": 4,
            "min_object_pixels": 20,
        }
        return cls(**{**base, **overrides})

    def __post_init__(self) -> None:
        if self.preset not in SAM_PRESETS:
            raise ValueError(f"preset must be in {sorted(SAM_PRESETS)}, is {self.preset!r}")
        if not self.splits:
            raise ValueError("splits must name at least one split")
        if (
            self.batch < 1
            or self.prompts_per_image < 1
            or (self.iters is not None and self.iters < 1)
        ):
            raise ValueError(
                f"expected batch, prompts_per_image and iters >= 1, got {self.batch}, "
                f"{self.prompts_per_image}, {self.iters}"
            )
        if self.train_scenes * len(self.splits) < self.batch or self.val_scenes < 1:
            raise ValueError(
                f"expected train_scenes x {len(self.splits)} splits >= batch and val_scenes >= 1, "
                f"got {self.train_scenes}, {self.batch}, {self.val_scenes}"
            )
        if not 0.0 <= self.point_prob <= 1.0:
            raise ValueError(f"point_prob must be in [0, 1], is {self.point_prob}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, is {self.image_size}")


# --------------------------------------------------------------------------- data


class SceneCache:
    """Scenes of the synthetic world rendered once, in the form training and validation read.

    Attributes:
        images: uint8 [N, H, W, 3] the rendered frames (frame 0 of each scene).
        model_images: uint8 [N, 3, H', W'] resized as ``SamPredictor.set_image`` does (PIL,
            longest side = the model's input side); normalised and padded per batch.
        scene_first / scene_count: int64 [N], the scene's objects in the object table.
        obj_scene: int64 [M] scene of each object. obj_boxes: float32 [M, 4] XYXY in input
            pixels, exclusive right / bottom edges. obj_low: bool [M, S/4, S/4] the object's
            visible pixels in the decoder's low-res frame (resized to H' x W', zero-padded to
            S x S, 4 x 4 average > 0.5); obj_frac: uint8 [M, S/4, S/4] that average x 255.
            obj_pixels: int32 flat indices (y * W + x) of every object's visible pixels,
            object m at ``obj_offsets[m] : obj_offsets[m + 1]``.
        instances: per scene bool [n, H, W] (objects with >= ``min_pixels`` visible pixels).
    """

    def __init__(
        self,
        world_seed: int,
        splits: Sequence[str],
        count: int,
        partition: str,
        image_size: int,
        model_size: int,
        min_pixels: int,
    ) -> None:
        from moca_rt.datasets.synth import SynthWorld

        world = SynthWorld(world_seed, image_size=image_size)
        self.original_size = (image_size, image_size)
        self.input_size = get_preprocess_shape(image_size, image_size, model_size)
        self.model_size = model_size
        images: list[np.ndarray] = []
        instances: list[np.ndarray] = []
        for split in splits:
            for i in range(count):
                scene = world.sample(split, i, partition)
                inst = scene.instance_masks[0]
                inst = inst[inst.reshape(inst.shape[0], -1).sum(axis=1) >= min_pixels]
                if inst.shape[0] == 0:
                    continue
                images.append(scene.frames[0])
                instances.append(inst)
        if not images:
            raise ValueError(f"no scene of {list(splits)} has an object of >= {min_pixels} pixels")
        self.images = np.stack(images)
        self.instances = instances
        self.model_images = (
            torch.from_numpy(np.stack([resize_longest_side_pil(im, model_size) for im in images]))
            .permute(0, 3, 1, 2)
            .contiguous()
        )
        counts = torch.tensor([m.shape[0] for m in instances], dtype=torch.int64)
        self.scene_count = counts
        self.scene_first = torch.cumsum(counts, 0) - counts
        self.obj_scene = torch.repeat_interleave(torch.arange(len(instances)), counts)
        all_masks = torch.from_numpy(np.concatenate(instances))  # [M, H, W]
        self.obj_boxes = _mask_boxes(all_masks)
        frac = low_res_fractions(all_masks, self.input_size, model_size)
        self.obj_low = frac > 0.5
        self.obj_frac = (frac * 255).round().to(torch.uint8)
        flat = all_masks.flatten(1)
        sizes = flat.sum(dim=1)
        self.obj_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes, 0)])
        self.obj_pixels = flat.nonzero()[:, 1].to(torch.int32)  # row-major: grouped by object

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_objects(self) -> int:
        return int(self.obj_scene.shape[0])

    def model_input(
        self, indices: Sequence[int] | Tensor, pixel_mean: Any, pixel_std: Any
    ) -> Tensor:
        """float32 [B, 3, S, S]: the encoder input of scenes ``indices`` (normalised, padded)."""
        x = self.model_images[torch.as_tensor(indices, dtype=torch.int64)]
        return normalize_and_pad(x, self.model_size, tuple(pixel_mean), tuple(pixel_std))


def _mask_boxes(masks: Tensor) -> Tensor:
    """bool [M, H, W] -> float32 [M, 4] XYXY, exclusive right / bottom edges."""
    cols = masks.any(dim=1)
    rows = masks.any(dim=2)
    w, h = masks.shape[2], masks.shape[1]
    x0 = cols.int().argmax(dim=1)
    x1 = w - cols.flip(1).int().argmax(dim=1)
    y0 = rows.int().argmax(dim=1)
    y1 = h - rows.flip(1).int().argmax(dim=1)
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def low_res_fractions(masks: Tensor, input_size: tuple[int, int], model_size: int) -> Tensor:
    """bool [M, H, W] input-frame masks -> float32 [M, S/4, S/4]: the share of each cell of the
    decoder's low-res frame that the mask covers (resized bilinearly to the model frame
    H' x W', zero-padded to S x S like the image, averaged over 4 x 4 model pixels)."""
    out = []
    for start in range(0, masks.shape[0], 256):
        m = masks[start : start + 256, None].float()
        m = F.interpolate(m, size=input_size, mode="bilinear", align_corners=False)
        m = F.pad(m, (0, model_size - input_size[1], 0, model_size - input_size[0]))
        out.append(F.avg_pool2d(m, 4)[:, 0])
    return torch.cat(out)


def low_res_targets(masks: Tensor, input_size: tuple[int, int], model_size: int) -> Tensor:
    """bool [M, S/4, S/4]: the cells of the decoder's low-res frame more than half covered
    (see :func:`low_res_fractions`)."""
    return low_res_fractions(masks, input_size, model_size) > 0.5


@dataclass
class PromptBatch:
    """Prompts of one step, every one a set of two prompt-encoder points.

    Attributes:
        coords: float32 [P, 2, 2] XY in the model frame; labels: int64 [P, 2] ([1, -1] for a
            point and its padding, [2, 3] for box corners).
        image: int64 [P] position of the prompt's image in the step's batch.
        target: int64 [P] object (row of the scene cache's object table).
        is_point: bool [P] point prompt (multimask output) or box (single mask).
    """

    coords: Tensor
    labels: Tensor
    image: Tensor
    target: Tensor
    is_point: Tensor

    def __len__(self) -> int:
        return int(self.target.shape[0])


def sample_prompts(
    cache: SceneCache,
    scenes: Sequence[int],
    prompts_per_image: int,
    generator: torch.Generator,
    point_prob: float = 0.5,
    box_noise: float = 0.1,
    box_noise_max: float = 5.0,
) -> PromptBatch:
    """``prompts_per_image`` prompts on random objects of each scene in ``scenes``.

    Points are uniform over the object's visible pixels, jittered within the pixel; boxes are the
    object's box with per-corner Gaussian noise of std ``box_noise`` x the box side (x for x, y
    for y), clipped to ``box_noise_max`` model-frame pixels and to the image. Everything drawn
    from ``generator`` (a pure function of its seed).
    """
    n = len(scenes)
    image = torch.arange(n).repeat_interleave(prompts_per_image)
    scene = torch.as_tensor(list(scenes), dtype=torch.int64)[image]
    count = cache.scene_count[scene]
    pick = (torch.rand(len(image), generator=generator) * count).long().clamp(max=count - 1)
    target = cache.scene_first[scene] + pick
    is_point = torch.rand(len(image), generator=generator) < point_prob
    # Points: one visible pixel of the object, anywhere within that pixel.
    start = cache.obj_offsets[target]
    size = cache.obj_offsets[target + 1] - start
    pix = start + (torch.rand(len(image), generator=generator) * size).long().clamp(max=size - 1)
    flat = cache.obj_pixels[pix].long()
    w_in = cache.original_size[1]
    jitter = torch.rand(len(image), 2, generator=generator) - 0.5
    xy = torch.stack([flat % w_in, flat // w_in], dim=1).float() + jitter
    sh, sw = cache.input_size
    scale = torch.tensor(
        [sw / cache.original_size[1], sh / cache.original_size[0]], dtype=torch.float32
    )
    xy = xy * scale
    # Boxes: the object's box in the model frame plus clipped corner noise.
    box = cache.obj_boxes[target].reshape(-1, 2, 2) * scale
    side = (box[:, 1] - box[:, 0]).clamp(min=1.0)  # [P, 2] (w, h)
    noise = torch.randn(len(image), 2, 2, generator=generator) * box_noise * side[:, None]
    box = box + noise.clamp(-box_noise_max, box_noise_max)
    limit = torch.tensor([sw, sh], dtype=torch.float32)
    box = torch.minimum(box.clamp(min=0.0), limit)
    box = torch.stack([box.amin(dim=1), box.amax(dim=1)], dim=1)
    point_coords = torch.stack([xy, torch.zeros_like(xy)], dim=1)
    coords = torch.where(is_point[:, None, None], point_coords, box)
    labels = torch.where(
        is_point[:, None],
        torch.tensor([LABEL_POINT, LABEL_PAD]),
        torch.tensor([LABEL_BOX_TL, LABEL_BOX_BR]),
    )
    return PromptBatch(coords, labels, image, target, is_point)


# --------------------------------------------------------------------------- losses


def mask_losses(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-mask sigmoid focal loss (alpha 0.25, gamma 2, mean over pixels), dice loss and the
    actual IoU of ``logits > 0``.

    Args:
        logits: [P, K, h, w] float; target: [P, h, w] bool, or float in [0, 1] (soft
            targets: the share of each cell covered; the IoU counts cells > 0.5).

    Returns:
        focal, dice, iou: each float [P, K] (iou without gradient).
    """
    t = target[:, None].float().expand_as(logits)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = 0.25 * t + 0.75 * (1 - t)
    focal = (alpha_t * ce * (1 - p_t) ** 2).mean(dim=(-1, -2))
    inter = (p * t).sum(dim=(-1, -2))
    dice = 1 - (2 * inter + 1) / (p.sum(dim=(-1, -2)) + t.sum(dim=(-1, -2)) + 1)
    with torch.no_grad():
        hard = logits > 0
        tb = t > 0.5
        i = (hard & tb).sum(dim=(-1, -2)).float()
        u = (hard | tb).sum(dim=(-1, -2)).float()
        iou = torch.where(u > 0, i / u.clamp(min=1), torch.ones_like(u))
    return focal, dice, iou


def lr_factor(step: int, iters: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``iters``."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(iters - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def init_weights(model: Sam, std: float) -> None:
    """ViT-style initialisation: truncated-normal(std) Linear weights and absolute positions,
    zero Linear biases (convolutions, norms and embeddings keep PyTorch's defaults)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    pos = model.image_encoder.pos_embed
    torch.nn.init.trunc_normal_(pos, std=std, a=-2 * std, b=2 * std)


def tie_query_key_init(model: Sam) -> None:
    """Start every decoder attention with its key projection equal to its query projection.

    Queries and keys both carry the prompt encoder's random Fourier positional encoding, whose
    dot product is a kernel peaked at equal positions; with W_k = W_q the initial attention keeps
    (a multiple of) that kernel, so a prompt token attends near its point from the first step
    instead of the decoder having to discover the alignment.
    """
    from moca_rt.modeling.sam import DecoderAttention

    with torch.no_grad():
        for module in model.mask_decoder.modules():
            if isinstance(module, DecoderAttention):
                module.k_proj.weight.copy_(module.q_proj.weight)
                module.k_proj.bias.copy_(module.q_proj.bias)


_NO_DECAY = (
    "pos_embed",
    "rel_pos_h",
    "rel_pos_w",
    "point_embeddings",
    "not_a_point_embed",
    "no_mask_embed",
    "iou_token",
    "mask_tokens",
)


def _no_decay(name: str, param: Tensor) -> bool:
    return param.dim() < 2 or any(part in name for part in _NO_DECAY)


# --------------------------------------------------------------------------- evaluation


def proposal_variants(config: SamTrainConfig) -> dict[str, ProposalConfig]:
    """The filter settings validation reports, by metric suffix.

    ``""``: SAM's default thresholds (predicted IoU > 0.88, stability >= 0.95, NMS 0.7);
    ``"_low"``: the lowered thresholds; ``"_nofilter"``: no quality filter, NMS kept. All at
    ``config.eval_resolution`` ("low" is where the pipeline filters and matches proposals).
    """
    base = ProposalConfig(
        points_per_side=config.points_per_side,
        resolution=config.eval_resolution,
        keep_low_res_logits=True,
    )
    return {
        "": base,
        "_low": replace(
            base, pred_iou_thresh=config.low_pred_iou, stability_score_thresh=config.low_stability
        ),
        "_nofilter": replace(base, pred_iou_thresh=-math.inf, stability_score_thresh=-math.inf),
    }


@torch.no_grad()
def evaluate_proposals(
    model: Sam,
    images: Sequence[np.ndarray],
    instances: Sequence[np.ndarray],
    variants: dict[str, ProposalConfig],
) -> dict[str, float]:
    """Grid proposals of every image under each filter variant, scored against its objects.

    The image goes through :meth:`SamPredictor.set_image`, the point grid is decoded once
    (multimask, ``points_per_batch`` points per decoder call, as
    :func:`moca_rt.proposals.grid_proposals` does) and each variant's filters and NMS are applied
    by :func:`moca_rt.proposals.filter_proposals`: the proposals ``grid_proposals`` returns with
    that config. All variants share ``points_per_side``. A proposal is scored at the image's
    resolution (its low-res logits post-processed as SAM does, > the mask threshold).

    Args:
        images: uint8 [H, W, 3] each; instances: bool [n, H, W] each, the objects to find.

    Returns:
        Per variant suffix ``v``: ``proposal_recall{v}`` (mean over objects of the best proposal
        IoU, 0 without proposals), ``proposal_hit50{v}`` (share of objects with a proposal of
        IoU > 0.5) and ``proposals_per_image{v}``.
    """
    sides = {v.points_per_side for v in variants.values()}
    if len(sides) != 1:
        raise ValueError(f"expected one points_per_side for all variants, got {sorted(sides)}")
    side = sides.pop()
    chunk = min(v.points_per_batch for v in variants.values())
    predictor = SamPredictor(model)
    best: dict[str, list[Tensor]] = {k: [] for k in variants}
    counts: dict[str, list[int]] = {k: [] for k in variants}
    s = model.image_size
    for image, inst in zip(images, instances, strict=True):
        predictor.set_image(image)
        feats = predictor._require_image()
        h, w = predictor.original_size
        grid = build_point_grid(side) * torch.tensor([w, h], dtype=torch.float64)
        coords = predictor.transform_coords(grid)[:, None, :]
        labels = torch.ones(coords.shape[:2], dtype=torch.int64, device=coords.device)
        lows, ious = [], []
        for start in range(0, coords.shape[0], chunk):
            low, iou = model.decode(
                feats,
                coords[start : start + chunk],
                labels[start : start + chunk],
                None,
                None,
                True,
            )
            lows.append(low.flatten(0, 1).float())
            ious.append(iou.flatten(0, 1).float())
        low_all, iou_all = torch.cat(lows), torch.cat(ious)
        points = grid.float().repeat_interleave(low_all.shape[0] // grid.shape[0], dim=0)
        gt = torch.from_numpy(np.asarray(inst)).flatten(1).float()  # [n, H*W]
        for key, cfg in variants.items():
            props = filter_proposals(
                low_all,
                iou_all,
                (h, w),
                replace(cfg, keep_low_res_logits=True),
                points,
                s,
                model.mask_threshold,
            )
            counts[key].append(len(props))
            if len(props) == 0 or props.low_res_logits is None:
                best[key].append(torch.zeros(gt.shape[0]))
                continue
            full = postprocess_masks(
                props.low_res_logits[:, None], predictor.input_size, (h, w), s
            )[:, 0]
            pm = (full > model.mask_threshold).flatten(1).float()
            inter = pm @ gt.t()  # [P, n]
            union = pm.sum(1)[:, None] + gt.sum(1)[None, :] - inter
            best[key].append((inter / union.clamp(min=1)).amax(dim=0))
    out: dict[str, float] = {}
    for key in variants:
        b = torch.cat(best[key])
        out[f"proposal_recall{key}"] = float(b.mean())
        out[f"proposal_hit50{key}"] = float((b > 0.5).float().mean())
        out[f"proposals_per_image{key}"] = float(np.mean(counts[key]))
    return out


# --------------------------------------------------------------------------- the stage


class SamStage(ResumableParts):
    """:class:`~moca_rt.train.core.TrainingStage` of the tiny-SAM promptable training."""

    name = "sam"
    selection = "proposal_recall_nofilter"

    def __init__(self, config: SamTrainConfig, iters: int | None = None) -> None:
        """``iters``: the schedule length when ``config.iters`` is None."""
        self.config = config
        horizon = config.iters if config.iters is not None else iters
        if horizon is None or horizon < 1:
            raise ValueError("expected config.iters or iters >= 1 (the schedule length)")
        self.iters = horizon
        sam_config = SAM_PRESETS[config.preset]
        torch.manual_seed(config.seed)
        self.model = build_sam(sam_config)
        if config.init_std > 0:
            init_weights(self.model, config.init_std)
        if config.tied_qk_init:
            tie_query_key_init(self.model)
        began = time.perf_counter()
        s = sam_config.image_size
        self.train_data = SceneCache(
            config.world_seed,
            config.splits,
            config.train_scenes,
            "train",
            config.image_size,
            s,
            config.min_train_pixels,
        )
        self.val_data = SceneCache(
            config.world_seed,
            config.splits,
            config.val_scenes,
            "val",
            config.image_size,
            s,
            config.min_object_pixels,
        )
        self.render_seconds = time.perf_counter() - began
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for name, p in self.model.named_parameters():
            (no_decay if _no_decay(name, p) else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=config.lr,
            betas=(0.9, config.beta2),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, horizon, config.warmup)
        )

    def batch(self, step: int) -> tuple[list[int], PromptBatch]:
        """Scenes and prompts of ``step``: a pure function of ``(seed, step)``."""
        cfg = self.config
        scenes = seeded_batch(cfg.seed, step, len(self.train_data), cfg.batch)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 7)
        prompts = sample_prompts(
            self.train_data,
            scenes,
            cfg.prompts_per_image,
            gen,
            cfg.point_prob,
            cfg.box_noise,
            cfg.box_noise_max,
        )
        return scenes, prompts

    def losses(self, scenes: Sequence[int], prompts: PromptBatch) -> dict[str, Tensor]:
        """Mask loss (best of three for points), IoU-head MSE and the total of one batch."""
        cfg = self.config
        model = self.model
        x = self.train_data.model_input(scenes, model.config.pixel_mean, model.config.pixel_std)
        emb = model.image_encoder(x)
        pe = model.prompt_encoder
        sparse = pe.embed_points(prompts.coords, prompts.labels, pad=False)
        h, w = pe.image_embedding_size
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(len(prompts), -1, h, w)
        logits, iou_pred = model.mask_decoder.predict_masks(
            emb[prompts.image], pe.get_dense_pe(), sparse, dense
        )
        if cfg.soft_targets:
            target = self.train_data.obj_frac[prompts.target].float() / 255.0
        else:
            target = self.train_data.obj_low[prompts.target]
        focal, dice, iou = mask_losses(logits, target)  # [P, 4] each
        per_mask = cfg.focal_weight * focal + cfg.dice_weight * dice
        # Points: masks 1..3, only the best trained; boxes: mask 0 alone.
        multi_best, which = per_mask[:, 1:].min(dim=1)
        mask_loss = torch.where(prompts.is_point, multi_best, per_mask[:, 0])
        sq = (iou_pred - iou) ** 2
        iou_loss = torch.where(prompts.is_point, sq[:, 1:].mean(dim=1), sq[:, 0])
        total = mask_loss.mean() + cfg.iou_weight * iou_loss.mean()
        chosen = torch.where(
            prompts.is_point, iou[:, 1:].gather(1, which[:, None])[:, 0], iou[:, 0]
        )
        return {
            "loss": total,
            "mask": mask_loss.mean(),
            "iou_mse": iou_loss.mean(),
            "focal": torch.where(
                prompts.is_point, focal[:, 1:].gather(1, which[:, None])[:, 0], focal[:, 0]
            ).mean(),
            "train_iou": chosen.mean(),
        }

    def train_step(self, step: int) -> dict[str, float]:
        self.model.train()
        scenes, prompts = self.batch(step)
        parts = self.losses(scenes, prompts)
        self.optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return {k: float(v.detach()) for k, v in parts.items()}

    def evaluate(self) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        try:
            began = time.perf_counter()
            metrics = evaluate_proposals(
                self.model,
                list(self.val_data.images),
                self.val_data.instances,
                proposal_variants(self.config),
            )
            metrics["eval_seconds"] = time.perf_counter() - began
            return metrics
        finally:
            self.model.train(was_training)

    def save_weights(self, folder: Path) -> list[Path]:
        meta = {"preset": self.config.preset}
        return [save_weights_atomic(self.model.state_dict(), folder / WEIGHTS_FILE, meta)]

    def resumable_parts(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler}


def train_sam(config: SamTrainConfig, settings: LoopSettings) -> StageResult:
    """Run (or resume) the stage; returns its result (weights folder, selected step, metrics).

    ``settings.iters`` is the number of steps and, unless ``config.iters`` is set, the
    learning-rate schedule's length (a set ``config.iters`` >= the steps stops the run early on
    that schedule).
    """
    if config.iters is not None and settings.iters > config.iters:
        raise ValueError(
            f"settings.iters ({settings.iters}) exceeds the schedule's "
            f"config.iters ({config.iters})"
        )

    def build() -> SamStage:
        stage = SamStage(config, settings.iters)
        print(
            f"[{stage.name}] rendered {len(stage.train_data)} training scenes "
            f"({stage.train_data.num_objects} objects) and {len(stage.val_data)} validation "
            f"scenes in {stage.render_seconds:.1f} s",
            flush=True,
        )
        return stage

    return train_configured_stage(config, settings, build)


def build_parser() -> argparse.ArgumentParser:
    d = SamTrainConfig()
    p, arg = stage_parser(
        "moca_rt.train.sam_synth",
        "Train the tiny SAM (sam_synth) for promptable segmentation on the synthetic world's "
        "instance masks; selects the step with the best validation proposal recall.",
        d,
        batch="Images per step.",
        iters=1500,
        eval_every=500,
        log_every=25,
        save_every=100,
    )
    p.add_argument("--prompts", type=int, default=d.prompts_per_image, help="Prompts per image.")
    arg("weight_decay", "AdamW weight decay.")
    arg("warmup", "Linear warm-up steps.")
    arg("image_size", "Side of the rendered scenes.")
    arg("point_prob", "Share of point prompts.")
    arg("points_per_side", "Validation point grid.")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # --iters is the run's step count; config.iters (the schedule's length) stays None.
    config = config_from_args(
        SamTrainConfig(), args, exclude=("iters",), prompts_per_image=args.prompts
    )
    return run_stage_cli(args, config, train_sam)


if __name__ == "__main__":
    sys.exit(main())
