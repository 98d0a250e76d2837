"""Stage 3 of the tiny models: AdaAV trained by MoCA on the pretrained tiny ImageBind.

MoCA's unsupervised recipe (paper section 3.1, DESIGN section 4) on the synthetic world's train
partition (``s4`` + ``ms3`` frames with their 2 s audio windows), with the frozen tiny ImageBind
of stage 1 and one :class:`~moca_rt.modeling.adapter.AdaAV` per adapted layer of
``moca_synth``:

* pairing: exact cosine top-K of a global image descriptor. DINO ViT-B/16 is the paper's
  featuriser, but no DINO checkpoint exists here and a random DINO pairs nothing; the project's
  own unsupervised image model is the stage-1 ImageBind, so its L2-normalised vision CLS
  embedding is the featuriser (``pairing="imagebind_cls"``, no mask or label used). The
  ground-truth ``class`` pairing stays available as a debugging upper bound;
* positives: a random one of the anchor's top-K; negatives: a shuffle of the batch avoiding the
  anchor and its top-K, redrawn from the whole set when the batch has no such shuffle
  (:func:`~moca_rt.train.pairing.sample_negatives_or_redraw`);
* loss: ``mean max(0, C(f_a, f_p) - C(f_a, f_n) + alpha)`` with the PMA cost (SSD + NCC, row
  search) on the audio-enhanced patch features, the anchor's audio fused into all three;
* Adam on the adapters only, cosine decay; the frozen vision prefix (blocks before the first
  adapter) is computed once per image.

Validation (``val`` partition): S4 and MS3 mIoU of the pipeline with the adapter and no SAM
(selection metric: their mean, ``val_miou``), patch AUC of the audio-enhanced joint-space map,
and the PMA cost gap ``C(f_a, f_n) - C(f_a, f_p)`` on fixed validation triplets.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from moca_rt.config import MOCA_PRESETS, AdapterConfig, MocaConfig
from moca_rt.kernels.pma import pma_cost
from moca_rt.modeling.imagebind import load_imagebind
from moca_rt.modeling.moca import MocaModel
from moca_rt.train.adaav import repeat_audio
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
from moca_rt.train.imagebind_synth import PairCache, cosine_factor, vision_outputs
from moca_rt.train.pairing import PairingTable, sample_negatives_or_redraw
from moca_rt.train.synth_eval import (
    EvalSet,
    avsbench_scores,
    patch_auc,
    patch_targets,
    render_eval_set,
)

__all__ = ["AdaavStage", "AdaavStageConfig", "train_adaav"]

WEIGHTS_FILE = "adaav_synth.safetensors"
PairingKind = Literal["imagebind_cls", "class"]


@dataclass(frozen=True)
class AdaavStageConfig:
    """Settings of the AdaAV stage (recorded in the manifest).

    Attributes:
        preset: ``MOCA_PRESETS`` key (its ImageBind sizes must match the stage-1 weights).
        imagebind: the stage-1 weights (official key layout).
        pairing: ``imagebind_cls`` (unsupervised, default) or ``class`` (ground truth, debug).
        k: neighbours per item in the pairing table.
        batch, lr, alpha: the paper's 8, 1e-4, 0.3 by default.
        search / max_disparity: PMA search (``row`` over the whole scanline by default;
            ``max_disparity=0`` is the no-matching ablation).
        train_scenes / val_scenes: per split (``s4`` and ``ms3``).
    """

    imagebind: str
    preset: str = "moca_synth"
    world_seed: int = 0
    seed: int = 0
    pairing: PairingKind = "imagebind_cls"
    k: int = 10
    train_scenes: int = 500
    val_scenes: int = 48
    batch: int = 8
    lr: float = 1e-4
    warmup: int = 0
    alpha: float = 0.3
    search: Literal["row", "full"] = "row"
    max_disparity: int | None = None
    ssd_weight: float = 1.0
    ncc_weight: float = 1.0
    num_layers: int | None = None
    image_size: int = 112
    eval_image_size: int = 224

    def moca_config(self) -> MocaConfig:
        base = MOCA_PRESETS[self.preset]
        if self.num_layers is None:
            return base
        adapter = AdapterConfig(**{**asdict(base.adapter), "num_layers": self.num_layers})
        return MocaConfig(imagebind=base.imagebind, adapter=adapter)


class _AdapterWeights:
    """The adapters of a :class:`MocaModel` as a resumable part (keys ``adapters.<layer>...``).

    Loaded strictly *into* the live parameters: ``load_adapter_state_dict`` replaces them
    (``assign=True``), which would leave Adam stepping the old ones after a resume.
    """

    def __init__(self, model: MocaModel) -> None:
        self.model = model

    def state_dict(self) -> dict[str, Tensor]:
        return self.model.adapter_state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        prefix = "adapters."
        bad = [k for k in state if not k.startswith(prefix)]
        if bad:
            raise KeyError(f"expected adapter keys starting with {prefix!r}, got {bad[:3]}")
        self.model.adapters.load_state_dict({k[len(prefix) :]: v for k, v in state.items()})


class AdaavStage(ResumableParts):
    """:class:`~moca_rt.train.core.TrainingStage` of MoCA's AdaAV training."""

    name = "adaav"
    selection = "val_miou"

    def __init__(self, config: AdaavStageConfig, iters: int) -> None:
        self.config = config
        torch.manual_seed(config.seed)
        moca_config = config.moca_config()
        imagebind = load_imagebind(config.imagebind, moca_config.imagebind)
        self.model = MocaModel(moca_config, imagebind=imagebind)
        train = [
            render_eval_set(split, config.train_scenes, config.world_seed, "train", 224)
            for split in ("s4", "ms3")
        ]
        self.data = PairCache(train, config.image_size)
        with torch.no_grad():
            self.prefix = torch.cat(
                [
                    self.model.encode_vision_prefix(self.data.pixels[i : i + 64])
                    for i in range(0, len(self.data), 64)
                ]
            )
            self.table = self._pairing(train)
        self.val = {
            split: render_eval_set(split, config.val_scenes, config.world_seed, "val", 224)
            for split in ("s4", "ms3")
        }
        self.val_inputs = PairCache([self.val["s4"]], config.eval_image_size)
        params = self.model.trainable_parameters()
        self.optimizer = torch.optim.Adam(params, lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_factor(s, iters, max(config.warmup, 1))
        )
        self.val_triplets = self._triplets(10_000, 16)

    def _pairing(self, train: Sequence[EvalSet]) -> PairingTable:
        cfg = self.config
        if cfg.pairing == "class":
            from moca_rt.datasets.synth import SynthWorld

            world = SynthWorld(cfg.world_seed)
            classes = []
            for part in train:
                for i in range(len(part)):
                    scene = world.sample(part.split, i, "train")
                    ids = scene.sounding_class_ids
                    classes.append(min(ids) if ids else -1)
            feats = F.one_hot(torch.tensor(classes) + 1).float() + 1e-3 * torch.randn(
                len(classes), max(classes) + 2
            )
            return PairingTable.build(feats, cfg.k, "class", None)
        ib = self.model.imagebind
        feats = torch.cat(
            [
                vision_outputs(ib, self.data.pixels[i : i + 64])[0]
                for i in range(0, len(self.data), 64)
            ]
        )
        return PairingTable.build(feats, cfg.k, "imagebind_synth:vision_cls", None)

    def _triplets(self, step: int, batch: int) -> tuple[Tensor, Tensor, Tensor]:
        gen = torch.Generator().manual_seed(self.config.seed * 7919 + step)
        anchors = torch.tensor(seeded_batch(self.config.seed + 1, step, len(self.data), batch))
        pick = torch.randint(0, self.table.indices.shape[1], (batch,), generator=gen)
        positives = self.table.indices[anchors, pick]
        negatives = sample_negatives_or_redraw(anchors, self.table, gen, len(self.data))
        return anchors, positives, negatives

    def _features(self, anchors: Tensor, others: Tensor) -> Tensor:
        """f^a [len(others), g, g, Dv] of the images ``others`` with the anchors' audio."""
        times = others.numel() // anchors.numel()
        audio = repeat_audio(self.model.encode_audio(self.data.fbank[anchors]), times)
        return self.model.encode_vision_from_prefix(
            self.prefix[others], audio
        ).patch_features.float()

    def _costs(self, triplet: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        a, p, n = triplet
        feats = self._features(a, torch.cat([a, p, n]))
        f_a, f_p, f_n = feats.split(a.numel())
        cfg = self.config
        kw: dict[str, Any] = {
            "max_disparity": cfg.max_disparity,
            "search": cfg.search,
            "ssd_weight": cfg.ssd_weight,
            "ncc_weight": cfg.ncc_weight,
        }
        return pma_cost(f_a, f_p, **kw).cost, pma_cost(f_a, f_n, **kw).cost

    def train_step(self, step: int) -> dict[str, float]:
        self.model.train()
        c_pos, c_neg = self._costs(self._triplets(step, self.config.batch))
        loss = torch.clamp_min(c_pos - c_neg + self.config.alpha, 0.0).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": float(loss.detach()), "cost_gap": float((c_neg - c_pos).mean().detach())}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        try:
            c_pos, c_neg = self._costs(self.val_triplets)
            metrics = evaluate_moca(
                self.model, self.val, self.val_inputs, self.config.eval_image_size
            )
            metrics["val_cost_gap"] = float((c_neg - c_pos).mean())
            return metrics
        finally:
            self.model.train()

    def save_weights(self, folder: Path) -> list[Path]:
        return [save_weights_atomic(self.model.adapter_state_dict(), folder / WEIGHTS_FILE)]

    def resumable_parts(self) -> dict[str, Any]:
        return {
            "adapters": _AdapterWeights(self.model),
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
        }


@torch.no_grad()
def evaluate_moca(
    model: MocaModel, val: dict[str, EvalSet], s4_inputs: PairCache, image_size: int = 224
) -> dict[str, float]:
    """No-SAM pipeline mIoU / F on each validation split, their mean, and the S4 patch AUC."""
    from moca_rt.pipeline import MocaPipeline, PipelineConfig

    audio = model.encode_audio(s4_inputs.fbank)
    vision = model.encode_vision(s4_inputs.pixels, audio)
    emb = F.normalize(vision.patch_embeddings.float(), dim=-1)
    a = F.normalize(audio.embedding.float(), dim=-1)
    scores = torch.einsum("bhwe,be->bhw", emb, a)
    metrics = {"val_patch_auc": patch_auc(scores, patch_targets(val["s4"].masks, scores.shape[-1]))}
    pipe = MocaPipeline(model, None, PipelineConfig(tau=-1.0, image_size=image_size))
    mious = []
    for split, data in val.items():
        preds: list[np.ndarray] = []
        for start in range(0, len(data), 16):
            res = pipe.segment_batch(
                data.images[start : start + 16], data.windows[start : start + 16]
            )
            preds.extend(r.mask for r in res)
        s = avsbench_scores(preds, data.masks)
        metrics[f"val_{split}_miou"] = s.miou
        metrics[f"val_{split}_f"] = s.fscore
        mious.append(s.miou)
    metrics["val_miou"] = float(sum(mious) / len(mious))
    model.train()
    return metrics


def train_adaav(config: AdaavStageConfig, settings: LoopSettings) -> StageResult:
    """Run (or resume) the stage; returns its result."""
    return train_configured_stage(config, settings, lambda: AdaavStage(config, settings.iters))


def build_parser() -> argparse.ArgumentParser:
    p, arg = stage_parser(
        "moca_rt.train.adaav_synth",
        "Train AdaAV by MoCA (kNN pairing, PMA triplet loss) on the synthetic world.",
        AdaavStageConfig(imagebind=""),
        batch="Anchors per step.",
        iters=300,
        eval_every=50,
        log_every=10,
    )
    arg("imagebind", "Stage-1 tiny ImageBind weights.", required=True)
    arg("alpha", "Triplet margin.")
    arg("pairing", "Pairing source.", choices=["imagebind_cls", "class"])
    arg("max_disparity", "PMA row disparity (0: no matching).", type=int)
    arg("image_size", "Model input side in pixels.")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(AdaavStageConfig(imagebind=args.imagebind), args)
    return run_stage_cli(args, config, train_adaav)


if __name__ == "__main__":
    sys.exit(main())
