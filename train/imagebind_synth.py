"""Stage 1 of the tiny models: ImageBind pretraining with a dense audio-patch term.

The tiny ``imagebind_synth`` preset is trained from random weights on matched (frame, audio
window) pairs of the synthetic world (``s4`` and ``ms3`` train partitions), with exactly the
inputs the pipeline feeds it (``moca_rt.pipeline.frames_to_model_input`` at 224 px, one fbank
clip of the 2 s window centred on the frame). For a batch of B pairs with L2-normalised vision
CLS embeddings v_b, patch embeddings p_{b,n} (the head Linear on every normalised patch token,
the joint-space map the pipeline's cluster choice reads) and audio embeddings a_b:

    L_cls   = InfoNCE(exp(s_c) * V A^T)                       (CLIP / ImageBind)
    S_ij    = max_n <p_{i,n}, a_j>                            (multiple-instance, as EZ-VSL)
    L_dense = InfoNCE(exp(s_d) * S)
    loss    = L_cls + dense_weight * L_dense

InfoNCE is the symmetric cross-entropy over rows and columns; ``s_c``, ``s_d`` are learnable log
scales (initial temperature 0.07, clamped to 0.01..1). A CLS-only loss leaves the patch map
unrelated or inverted (measured: patch AUC 0.29); the dense term gives the coarse audio-to-patch
association MoCA relies on. ``dense_weight`` decides how much of it the frozen model has, and so
how much is left for AdaAV to add (DESIGN section 6).

Validation (``val`` partition, never ``test``): patch AUC of cos(p_n, a) against the patches
more than half covered by the sounding object, and S4 mIoU of the pipeline with no adapter and
no SAM (k-means on f^a, cluster choice, coarse mask): the selection metric.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moca_rt.config import IMAGEBIND_PRESETS, MOCA_PRESETS
from moca_rt.modeling.imagebind import ImageBindVisionAudio
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
from moca_rt.train.pretrain_imagebind import ContrastiveTemperature, official_state_dict
from moca_rt.train.synth_eval import (
    EvalSet,
    avsbench_scores,
    patch_auc,
    patch_targets,
    render_eval_set,
)

__all__ = [
    "ImageBindStage",
    "ImageBindStageConfig",
    "PairCache",
    "dense_logits",
    "symmetric_info_nce",
    "train_imagebind",
]

WEIGHTS_FILE = "imagebind_synth.safetensors"


@dataclass(frozen=True)
class ImageBindStageConfig:
    """Settings of the pretraining stage (recorded in the manifest).

    Attributes:
        preset: ``IMAGEBIND_PRESETS`` key. world_seed: seed of the synthetic world.
        seed: batch order and initial weights. train_scenes: scenes per training split
            (``s4`` and ``ms3``, so 2 x train_scenes pairs). val_scenes: per validation split.
        batch, lr, weight_decay, warmup: AdamW with linear warm-up then cosine decay.
        dense_weight: weight of the dense multiple-instance term (0 = CLS-only InfoNCE).
        image_size: model input side in training (112: four times cheaper than the pipeline's
            224, and the association learnt there carries over to 224, measured).
        eval_image_size: model input side of the validation (the pipeline's 224).
    """

    preset: str = "imagebind_synth"
    world_seed: int = 0
    seed: int = 0
    train_scenes: int = 1000
    val_scenes: int = 48
    batch: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 50
    dense_weight: float = 1.0
    image_size: int = 112
    eval_image_size: int = 224
    train_splits: tuple[str, ...] = ("s4", "ms3")

    def __post_init__(self) -> None:
        if self.preset not in IMAGEBIND_PRESETS:
            raise ValueError(f"preset must be in {sorted(IMAGEBIND_PRESETS)}, is {self.preset!r}")
        if self.batch < 2 or self.train_scenes < self.batch or self.val_scenes < 4:
            raise ValueError(
                f"expected batch >= 2, train_scenes >= batch and val_scenes >= 4, got "
                f"{self.batch}, {self.train_scenes}, {self.val_scenes}"
            )
        if self.dense_weight < 0:
            raise ValueError(f"dense_weight must be >= 0, is {self.dense_weight}")


class PairCache:
    """Model inputs of matched (frame, audio window) pairs, rendered once and kept in memory.

    ``pixels`` float32 [N, 3, S, S] (CLIP-normalised, as the pipeline resizes frames) and
    ``fbank`` float32 [N, 1, 1, 128, 204] (one clip of the 2 s window, as the pipeline computes).
    """

    def __init__(self, data: Sequence[EvalSet], image_size: int, chunk: int = 64) -> None:
        from moca_rt.preprocess import frames_to_model_input, imagebind_audio_batch

        pixels, fbank, masks = [], [], []
        for part in data:
            for start in range(0, len(part), chunk):
                images = part.images[start : start + chunk]
                pixels.append(frames_to_model_input(images, image_size, torch.device("cpu")))
                windows = part.windows[start : start + chunk]
                fbank.append(imagebind_audio_batch(windows, aliasing="independent")[:, :1])
            masks.extend(part.masks)
        self.pixels = torch.cat(pixels)
        self.fbank = torch.cat(fbank)
        self.masks = masks

    def __len__(self) -> int:
        return self.pixels.shape[0]


def symmetric_info_nce(logits: Tensor) -> Tensor:
    """(CE(logits, diag) + CE(logits^T, diag)) / 2 for a square [B, B] logit matrix."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def dense_logits(patches: Tensor, audio: Tensor) -> Tensor:
    """S_ij = max over patches n of <patches_{i,n}, audio_j>: [B, N, E] x [B, E] -> [B, B]."""
    return torch.einsum("ine,je->ijn", patches, audio).amax(dim=-1)


def vision_outputs(model: ImageBindVisionAudio, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """Unit-norm CLS embedding [B, E] and unit-norm joint-space patch embeddings [B, N, E]."""
    vision = model.vision
    x = vision.embed(pixels)
    for blk in vision.blocks:
        x = blk(x)
    proj = vision.head_proj(vision.head_norm(x))
    return F.normalize(proj[:, 0], dim=-1), F.normalize(proj[:, 1:], dim=-1)


def _no_decay(name: str, param: Tensor) -> bool:
    return param.dim() < 2 or name.endswith(("cls_token", "pos_embed", "bias_k", "bias_v"))


def cosine_factor(step: int, iters: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``iters``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (
        1.0 + math.cos(math.pi * min(step - warmup, iters - warmup) / max(iters - warmup, 1))
    )


class ImageBindStage(ResumableParts):
    """:class:`~moca_rt.train.core.TrainingStage` of the tiny ImageBind pretraining."""

    name = "imagebind"
    selection = "val_s4_miou"

    def __init__(self, config: ImageBindStageConfig, iters: int) -> None:
        self.config = config
        self.iters = iters
        torch.manual_seed(config.seed)
        self.model = ImageBindVisionAudio(IMAGEBIND_PRESETS[config.preset])
        self.scale_cls = ContrastiveTemperature()
        self.scale_dense = ContrastiveTemperature()
        train = [
            render_eval_set(split, config.train_scenes, config.world_seed, "train", 224)
            for split in config.train_splits
        ]
        self.data = PairCache(train, config.image_size)
        self.val_s4 = render_eval_set("s4", config.val_scenes, config.world_seed, "val", 224)
        self.val_inputs = PairCache([self.val_s4], config.eval_image_size)
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, p in self.model.named_parameters():
            (no_decay if _no_decay(name, p) else decay).append(p)
        no_decay += [self.scale_cls.log_scale, self.scale_dense.log_scale]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=config.lr,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_factor(s, iters, config.warmup)
        )

    def losses(self, idx: list[int]) -> tuple[Tensor, Tensor]:
        """(L_cls, L_dense) of the pairs ``idx``."""
        cls, patches = vision_outputs(self.model, self.data.pixels[idx])
        audio = F.normalize(self.model.audio(self.data.fbank[idx]), dim=-1)
        l_cls = symmetric_info_nce(self.scale_cls() * cls @ audio.t())
        l_dense = symmetric_info_nce(self.scale_dense() * dense_logits(patches, audio))
        return l_cls, l_dense

    def train_step(self, step: int) -> dict[str, float]:
        self.model.train()
        idx = seeded_batch(self.config.seed, step, len(self.data), self.config.batch)
        l_cls, l_dense = self.losses(idx)
        loss = l_cls + self.config.dense_weight * l_dense
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {
            "loss": float(loss.detach()),
            "cls": float(l_cls.detach()),
            "dense": float(l_dense.detach()),
        }

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        try:
            return evaluate_frozen(
                self.model, self.val_s4, self.val_inputs, self.config.eval_image_size
            )
        finally:
            self.model.train(was_training)

    def save_weights(self, folder: Path) -> list[Path]:
        return [save_weights_atomic(official_state_dict(self.model), folder / WEIGHTS_FILE)]

    def resumable_parts(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "scale_cls": self.scale_cls,
            "scale_dense": self.scale_dense,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
        }


@torch.no_grad()
def evaluate_frozen(
    model: ImageBindVisionAudio, val: EvalSet, inputs: PairCache, image_size: int = 224
) -> dict[str, float]:
    """Patch AUC and no-SAM pipeline S4 scores of a (frozen, adapter-free) ImageBind."""
    from moca_rt.modeling.moca import MocaModel
    from moca_rt.pipeline import MocaPipeline, PipelineConfig

    _, patches = vision_outputs(model, inputs.pixels)
    audio = F.normalize(model.audio(inputs.fbank), dim=-1)
    grid = math.isqrt(patches.shape[1])
    scores = torch.einsum("bne,be->bn", patches, audio).reshape(-1, grid, grid)
    auc = patch_auc(scores, patch_targets(val.masks, grid))
    moca = MocaModel(MOCA_PRESETS["moca_synth"], imagebind=copy.deepcopy(model))
    pipe = MocaPipeline(moca, None, PipelineConfig(tau=-1.0, image_size=image_size))
    preds: list[np.ndarray] = []
    for start in range(0, len(val), 16):
        res = pipe.segment_batch(val.images[start : start + 16], val.windows[start : start + 16])
        preds.extend(r.mask for r in res)
    s = avsbench_scores(preds, val.masks)
    return {"val_patch_auc": auc, "val_s4_miou": s.miou, "val_s4_f": s.fscore}


def train_imagebind(config: ImageBindStageConfig, settings: LoopSettings) -> StageResult:
    """Run (or resume) the stage; returns its result (weights folder, selected step, metrics)."""
    return train_configured_stage(config, settings, lambda: ImageBindStage(config, settings.iters))


def build_parser() -> argparse.ArgumentParser:
    p, arg = stage_parser(
        "moca_rt.train.imagebind_synth",
        "Pretrain the tiny ImageBind on the synthetic world (InfoNCE + dense term).",
        ImageBindStageConfig(),
        batch="Pairs per step.",
        iters=400,
        eval_every=100,
        log_every=10,
    )
    arg("dense_weight", "Weight of the dense term.")
    arg("image_size", "Model input side in pixels.")
    p.add_argument("--splits", default="s4,ms3", help="Training splits, comma-separated.")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(
        ImageBindStageConfig(), args, train_splits=tuple(args.splits.split(","))
    )
    return run_stage_cli(args, config, train_imagebind)


if __name__ == "__main__":
    sys.exit(main())
