"""Calibration and the quality table of the tiny models on the synthetic world (issue: Build 4, 8).

Methods (one row each in ``benchmarks/results/quality_synth.*``), all through the real
:class:`~moca_rt.pipeline.MocaPipeline` where the method is MoCA-like:

* ``moca``: the adapter + cluster choice + SAM mask proposal matching (MPM), the shipped default;
* ``moca_no_mpm``: the same without SAM (the coarse cluster mask);
* ``frozen_mpm`` / ``frozen_no_mpm``: the pretrained tiny ImageBind with no adapter (the
  adapter's zero-initialised output leaves ImageBind unchanged), with and without MPM;
* ``owod_bind``: OWOD-BIND-style: SAM grid proposals, each proposal's masked crop embedded by the
  ImageBind vision encoder and scored by its cosine with the audio embedding; proposals scoring
  at least ``owod_threshold`` (calibrated on val) and within ``delta`` of the best are united;
* ``sam_oracle``: SAM grid proposals matched to the ground truth (per sounding object, the best
  IoU proposal): an upper bound for any proposal-based method;
* ``all_background`` / ``all_foreground``: trivial masks.

Calibration runs on the ``val`` partition of the training world (never on the test world):
:class:`ReplayTrunk` / :class:`ReplayProposals` cache the model and SAM outputs by the content of
their inputs, so each candidate setting re-runs only the cheap pipeline steps (k-means, cluster
choice, MPM) with the same code the CLI runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from moca_rt.modeling.moca import AudioFeatures, MocaModel, VisionFeatures
from moca_rt.pipeline import MocaPipeline, PipelineConfig, ProposalSource
from moca_rt.train.synth_eval import EvalSet, Scores, avsbench_scores

__all__ = [
    "Calibration",
    "ReplayProposals",
    "ReplayTrunk",
    "calibrate",
    "evaluate_method",
    "oracle_masks",
    "owod_bind_masks",
    "owod_scores",
    "pipeline_masks",
]


def _digest(*tensors: Tensor | np.ndarray) -> str:
    h = hashlib.sha1()
    for t in tensors:
        arr = (
            t.detach().cpu().contiguous().numpy()
            if isinstance(t, Tensor)
            else np.ascontiguousarray(t)
        )
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


class ReplayTrunk:
    """A :class:`~moca_rt.engines.moca_units.MocaTrunk` that computes each input once."""

    def __init__(self, trunk: MocaModel) -> None:
        self.trunk = trunk.eval()
        self.audio: dict[str, AudioFeatures] = {}
        self.vision: dict[str, VisionFeatures] = {}

    def encode_audio(self, fbank: Tensor) -> AudioFeatures:
        key = _digest(fbank)
        if key not in self.audio:
            self.audio[key] = self.trunk.encode_audio(fbank)
        return self.audio[key]

    def encode_vision(self, images: Tensor, audio: AudioFeatures) -> VisionFeatures:
        key = _digest(images, audio.embedding)
        if key not in self.vision:
            self.vision[key] = self.trunk.encode_vision(images, audio)
        return self.vision[key]

    def to(self, device: torch.device) -> ReplayTrunk:
        return self

    def eval(self) -> ReplayTrunk:
        return self


class ReplayProposals:
    """A :class:`~moca_rt.pipeline.ProposalSource` that asks SAM once per image."""

    def __init__(self, source: ProposalSource) -> None:
        self.source = source
        self.cache: dict[str, Tensor] = {}

    def __call__(
        self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray | None] | None
    ) -> list[Tensor]:
        if boxes is not None:
            raise ValueError("ReplayProposals: expected grid proposals (boxes None)")
        keys = [_digest(im) for im in images]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            found = self.source([images[i] for i in missing], None)
            for i, props in zip(missing, found, strict=True):
                self.cache[keys[i]] = props
        return [self.cache[k] for k in keys]


def pipeline_masks(pipe: MocaPipeline, data: EvalSet, batch: int = 16) -> list[np.ndarray]:
    """The pipeline's masks for every frame of ``data``."""
    out: list[np.ndarray] = []
    for start in range(0, len(data), batch):
        res = pipe.segment_batch(
            data.images[start : start + batch], data.windows[start : start + batch]
        )
        out.extend(r.mask for r in res)
    return out


def _upsample(props: Tensor, size: tuple[int, int]) -> Tensor:
    """Low-res proposal logits [P, h, w] -> bool [P, H, W] (bilinear, like SAM's own upsampling)."""
    if props.shape[0] == 0:
        return torch.zeros(0, *size, dtype=torch.bool)
    return (
        F.interpolate(props[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
        > 0
    )


def oracle_masks(proposals: ReplayProposals, data: EvalSet) -> list[np.ndarray]:
    """Per frame: the union over sounding objects of the best-IoU grid proposal (upper bound)."""
    out = []
    for image, mask, instances in zip(data.images, data.masks, data.instances, strict=True):
        pred = np.zeros(mask.shape, dtype=bool)
        sounding = [inst & mask for inst in instances if (inst & mask).any()]
        if sounding:
            masks = _upsample(proposals([image], None)[0], mask.shape).numpy()
            for target in sounding:
                if len(masks) == 0:
                    break
                inter = (masks & target).sum((1, 2))
                union = (masks | target).sum((1, 2))
                iou = inter / np.maximum(union, 1)
                best = int(iou.argmax())
                if iou[best] > 0:
                    pred |= masks[best]
        out.append(pred)
    return out


@torch.no_grad()
def owod_scores(
    model: MocaModel, proposals: ReplayProposals, data: EvalSet
) -> list[tuple[Tensor, Tensor]]:
    """Per frame: proposal masks bool [P, H, W] and their cosine with the audio embedding [P].

    Each proposal's crop: the proposal's bounding box of the frame with the pixels outside the
    proposal set to the CLIP mean colour (zero after normalisation), resized to 224.
    """
    from moca_rt.preprocess import frames_to_model_input, imagebind_audio_batch

    ib = model.imagebind
    out = []
    for i, image in enumerate(data.images):
        h, w = image.shape[:2]
        masks = _upsample(proposals([image], None)[0], (h, w))
        fbank = imagebind_audio_batch(data.windows[i : i + 1], aliasing="independent")[:, :1]
        audio = F.normalize(ib.audio(fbank), dim=-1)[0]
        if masks.shape[0] == 0:
            out.append((masks, torch.zeros(0)))
            continue
        full = frames_to_model_input([image], 224, torch.device("cpu"))[0]
        crops = []
        for m in masks:
            small = F.interpolate(m[None, None].float(), size=(224, 224), mode="nearest")[0, 0] > 0
            ys, xs = torch.nonzero(small, as_tuple=True)
            if ys.numel() == 0:
                crops.append(torch.zeros(3, 224, 224))
                continue
            masked = full * small
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
            crop = masked[:, y0:y1, x0:x1][None]
            crops.append(
                F.interpolate(crop, size=(224, 224), mode="bilinear", align_corners=False)[0]
            )
        emb = ib.vision(torch.stack(crops))
        out.append((masks, emb @ audio))
    return out


def owod_bind_masks(
    scored: Sequence[tuple[Tensor, Tensor]], threshold: float, delta: float, silent: Sequence[bool]
) -> list[np.ndarray]:
    """Union of the proposals scoring >= threshold and >= best - delta (empty when gated silent)."""
    out = []
    for (masks, scores), is_silent in zip(scored, silent, strict=True):
        if masks.shape[0] == 0 or is_silent:
            out.append(np.zeros(masks.shape[1:] if masks.dim() == 3 else (1, 1), dtype=bool))
            continue
        keep = (scores >= threshold) & (scores >= scores.max() - delta)
        out.append(
            masks[keep].any(0).numpy()
            if bool(keep.any())
            else np.zeros(masks.shape[1:], dtype=bool)
        )
    return out


# --------------------------------------------------------------------------------------------
# calibration


@dataclass
class Calibration:
    """The calibrated pipeline settings and the curves they were read from."""

    config: PipelineConfig
    objective: str
    steps: list[dict[str, Any]]
    tau_curve: list[dict[str, float]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "objective": self.objective,
            "steps": self.steps,
            "tau_curve": self.tau_curve,
        }


def _split_scores(
    make: Callable[[PipelineConfig], MocaPipeline], config: PipelineConfig, val: dict[str, EvalSet]
) -> dict[str, float]:
    pipe = make(config)
    row: dict[str, float] = {}
    for split, data in val.items():
        s = avsbench_scores(pipeline_masks(pipe, data), data.masks)
        if split in ("s4", "ms3"):
            row[f"{split}_miou"], row[f"{split}_f"] = s.miou, s.fscore
        else:
            row[f"{split}_empty"] = s.empty_share
    return row


def _quality(row: dict[str, float]) -> float:
    return 0.5 * (row["s4_miou"] + row["ms3_miou"])


TAU_OBJECTIVE = (
    "tau maximises 0.75 x mean(S4 mIoU, MS3 mIoU) + 0.25 x mean(offscreen, noise empty share) on "
    "val; K, delta and the MPM threshold/metric maximise mean(S4 mIoU, MS3 mIoU) with tau off"
)


def calibrate(
    make: Callable[[PipelineConfig], MocaPipeline],
    val: dict[str, EvalSet],
    base: PipelineConfig,
    log: Callable[[str], None] = print,
    clusters: Sequence[int] = (2, 3, 4, 5, 6),
    deltas: Sequence[float] = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3),
    mpm: Sequence[tuple[str, float]] = (
        ("iou", 0.3),
        ("iou", 0.4),
        ("iou", 0.5),
        ("iou", 0.6),
        ("coverage", 0.5),
        ("coverage", 0.7),
    ),
    taus: Sequence[float] | None = None,
) -> Calibration:
    """Coordinate search on ``val`` (splits s4, ms3 and optionally offscreen, noise, silent).

    Order: K, then delta, then the MPM metric and threshold, then delta and K once more, all
    with tau off (-1, every frame gets its best cluster), each by mean(S4, MS3 mIoU); then the
    tau curve, read by :data:`TAU_OBJECTIVE`. Returns the settings and every measured point.
    """
    steps: list[dict[str, Any]] = []
    cfg = replace(base, tau=-1.0)

    def measure(c: PipelineConfig, what: str) -> dict[str, float]:
        row = _split_scores(make, c, val)
        steps.append({"step": what, **{k: v for k, v in asdict(c).items() if k in _KNOBS}, **row})
        log(f"calibrate {what}: " + " ".join(f"{k} {v:.4f}" for k, v in row.items()))
        return row

    best = max(clusters, key=lambda k: _quality(measure(replace(cfg, num_clusters=k), f"K={k}")))
    cfg = replace(cfg, num_clusters=best)
    best_delta = max(deltas, key=lambda d: _quality(measure(replace(cfg, delta=d), f"delta={d}")))
    cfg = replace(cfg, delta=best_delta)
    metric, thr = max(
        mpm,
        key=lambda mt: _quality(
            measure(replace(cfg, mpm_metric=mt[0], mpm_threshold=mt[1]), f"mpm={mt[0]}>{mt[1]}")  # type: ignore[arg-type]
        ),
    )
    cfg = replace(cfg, mpm_metric=metric, mpm_threshold=thr)  # type: ignore[arg-type]
    # Second pass: delta and K again, now with the chosen MPM (the masks they lead to changed).
    best_delta = max(
        deltas, key=lambda d: _quality(measure(replace(cfg, delta=d), f"pass 2: delta={d}"))
    )
    cfg = replace(cfg, delta=best_delta)
    best = max(
        clusters, key=lambda k: _quality(measure(replace(cfg, num_clusters=k), f"pass 2: K={k}"))
    )
    cfg = replace(cfg, num_clusters=best)
    tau_values = list(taus) if taus is not None else [round(-0.1 + 0.025 * i, 4) for i in range(29)]
    curve = []
    for t in [-1.0, *tau_values]:
        row = measure(replace(cfg, tau=t), f"tau={t}")
        curve.append({"tau": t, **row})
    has_empty = any(k.endswith("_empty") for k in curve[0])
    score = (lambda r: 0.75 * _quality(r) + 0.25 * _empty_mean(r)) if has_empty else _quality
    chosen = max(curve, key=score)
    cfg = replace(cfg, tau=float(chosen["tau"]))
    log(f"calibrated: {cfg}")
    return Calibration(cfg, TAU_OBJECTIVE, steps, curve)


def _empty_mean(row: dict[str, float]) -> float:
    vals = [row[k] for k in ("offscreen_empty", "noise_empty") if k in row]
    return sum(vals) / len(vals) if vals else 0.0


_KNOBS = ("num_clusters", "tau", "delta", "mpm_threshold", "mpm_metric")


def evaluate_method(preds: Sequence[np.ndarray], data: EvalSet) -> Scores:
    """AVSBench scores of one method on one split (4 frames per batch)."""
    return avsbench_scores(preds, data.masks)
