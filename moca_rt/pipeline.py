"""MocaPipeline: frames + audio windows -> sounding-object masks (DESIGN section 5).

Per batch of frames:

1. silence gate (window RMS under ``silence_dbfs`` -> empty mask, record kept);
2. audio window (2 s centred on the frame) -> fbank -> audio trunk; frame -> 224x224 -> adapted
   vision trunk -> audio-enhanced patch features ``f^a`` and their joint-space embeddings;
3. cosine k-means on the 256 patch features (``moca_rt.kernels.cosine_kmeans``): one call for
   the whole batch where the kernel clusters each frame on its own (Triton, CuPy: one program
   per frame), else one call per frame: the batched torch path's matmuls may round a frame's
   cosines differently at another batch size, and masks must not change with the batch size;
4. cluster choice against the audio embedding (``tau``, ``delta``; several sources may sound);
5. the chosen clusters' soft membership upsampled -> coarse mask M;
6. mask proposal matching (MPM): proposals with IoU(P, M) > 0.5 are united; none -> M.

Frames are resized to 224x224 without cropping (the paper resizes all frames to 224x224), so
the mask covers the whole frame; ImageBind's own centre crop (``preprocess.preprocess_images``)
would leave the borders of a wide frame unseen. For a 2 s window the three ImageBind clips are
the same samples, so the audio trunk runs on one clip: attention over three identical copies of
the tokens equals attention over one, and the mean of three equal embeddings is that embedding.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from moca_rt import clustering
from moca_rt.config import SAMPLE_RATE, WINDOW_SECONDS
from moca_rt.errors import torch_out_of_memory
from moca_rt.preprocess import frames_to_model_input, imagebind_audio_batch
from moca_rt.proposals import SamProposals

if TYPE_CHECKING:
    from moca_rt.engines.moca_units import MocaTrunk
    from moca_rt.media import MediaFrame

__all__ = [
    "WINDOW_SAMPLES",
    "FrameResult",
    "MocaPipeline",
    "PipelineConfig",
    "ProposalSource",
    # Defined in moca_rt.proposals and moca_rt.preprocess; named here for the pipeline's users.
    "SamProposals",
    "frames_to_model_input",
]

WINDOW_SAMPLES = round(WINDOW_SECONDS * SAMPLE_RATE)


@dataclass(frozen=True)
class PipelineConfig:
    """Inference thresholds (DESIGN section 5).

    ``tau`` and ``delta`` act on cosine scores between a cluster's mean joint-space embedding
    and the audio embedding. The defaults are provisional: they are to be calibrated on the
    synthetic world with the trained tiny models (documented in docs/design.md).
    """

    silence_dbfs: float = -60.0
    num_clusters: int = 4
    kmeans_iters: int = 20
    kmeans_seed: int = 0
    tau: float = 0.0
    delta: float = 0.05
    coarse_threshold: float = 0.5
    mpm_threshold: float = 0.5
    mpm_metric: clustering.MatchMetric = "iou"
    image_size: int = 224

    def __post_init__(self) -> None:
        if not 2 <= self.num_clusters <= 16:
            raise ValueError(f"num_clusters must be in [2, 16], is {self.num_clusters}")
        if self.kmeans_iters < 1:
            raise ValueError(f"kmeans_iters must be >= 1, is {self.kmeans_iters}")
        if self.delta < 0:
            raise ValueError(f"delta must be >= 0, is {self.delta}")
        if self.mpm_metric not in ("iou", "coverage"):
            raise ValueError(f"mpm_metric must be in ['iou', 'coverage'], is {self.mpm_metric!r}")


class ProposalSource(Protocol):
    """Mask proposals for a batch of frames (:class:`~moca_rt.proposals.SamProposals`).

    Takes the frames and, for box prompts, per frame a [K, 4] float32 XYXY tensor in frame
    pixels or None (None for the whole list: grid proposals). Returns, per frame, low-resolution
    proposal logits ``[P, h, w]`` (P may be 0) covering the whole frame (``h / w`` follows the
    frame's aspect ratio); ``> 0`` is the proposal mask.
    """

    def __call__(
        self, images: Sequence[np.ndarray], boxes: Sequence[torch.Tensor | None] | None
    ) -> list[torch.Tensor]: ...


@dataclass
class FrameResult:
    """What the pipeline decided for one frame.

    ``mask`` is bool [H, W] in the frame's pixels. ``scores`` and ``chosen`` have one entry per
    k-means cluster (empty when the frame was gated as silent). ``timings_ms`` holds this frame's
    share of each stage's batch time.
    """

    mask: np.ndarray
    silent: bool
    level_dbfs: float
    scores: list[float]
    chosen: list[int]
    kmeans_iterations: int
    proposals: int
    proposals_kept: int
    used_fallback: bool
    timings_ms: dict[str, float] = field(default_factory=dict)


class _StageTimer:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.ms[name] = self.ms.get(name, 0.0) + 1000.0 * (time.perf_counter() - start)


class MocaPipeline:
    """Batched MoCA inference around a :class:`~moca_rt.engines.moca_units.MocaTrunk`.

    Args:
        model: the adapted ImageBind trunk (eval mode is set here): the torch
            :class:`~moca_rt.modeling.moca.MocaModel`, or the exported audio and vision units on
            engines (:class:`~moca_rt.engines.moca_units.EngineMocaModel`).
        proposals: optional mask-proposal source (SAM grid or user boxes); None skips MPM.
        config: thresholds.
        device: where everything runs.
        dtype: model compute dtype (float32, bfloat16 or float16); decisions run in fp32.
    """

    def __init__(
        self,
        model: MocaTrunk,
        proposals: ProposalSource | None = None,
        config: PipelineConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(self.device).eval()
        self.proposals = proposals
        self.config = config or PipelineConfig()

    @torch.inference_mode()
    @torch_out_of_memory()
    def segment_batch(
        self,
        images: Sequence[np.ndarray],
        audio: np.ndarray | torch.Tensor,
        boxes: Sequence[torch.Tensor | np.ndarray | None] | None = None,
    ) -> list[FrameResult]:
        """Segment B frames.

        Args:
            images: B uint8 [H, W, 3] RGB frames (sizes may differ).
            audio: [B, 32000] float32 mono 16 kHz windows of 2 s centred on each frame.
            boxes: optional per-frame [n, 4] XYXY boxes in frame pixels for box prompts (a
                tensor or an array; None for a frame without boxes).
        Returns:
            B :class:`FrameResult`.
        Raises:
            ValueError: inputs of the wrong shape or kind.
            moca_rt.errors.OutOfMemoryError: the device ran out of memory.
        """
        cfg = self.config
        b = len(images)
        if b == 0:
            return []
        windows = torch.as_tensor(audio, dtype=torch.float32)
        if windows.shape != (b, WINDOW_SAMPLES):
            raise ValueError(
                f"audio must be [B, {WINDOW_SAMPLES}] 16 kHz windows for B={b} frames, "
                f"got {tuple(windows.shape)}"
            )
        if not bool(torch.isfinite(windows).all()):
            raise ValueError("audio windows contain NaN or inf; clean them before segmenting")
        if boxes is not None and len(boxes) != b:
            raise ValueError(
                f"boxes: expected one entry (array or None) per frame, {b}, got {len(boxes)}"
            )
        prompts = None if boxes is None else [_box_tensor(bx) for bx in boxes]
        timer = _StageTimer(self.device)
        windows = windows.to(self.device)
        with timer.stage("preprocess"):
            level = clustering.window_dbfs(windows)
            silent = level < cfg.silence_dbfs
            pixels = frames_to_model_input(images, cfg.image_size, self.device).to(self.dtype)
            fbank = self._fbank(windows).to(self.dtype)
        with timer.stage("audio"):
            audio_feats = self.model.encode_audio(fbank)
        with timer.stage("vision"):
            vision = self.model.encode_vision(pixels, audio_feats)
        patches = vision.patch_features.float()
        grid = (patches.shape[1], patches.shape[2])
        with timer.stage("kmeans"):
            labels, iterations = _kmeans_per_frame(patches.reshape(b, -1, patches.shape[-1]), cfg)
        with timer.stage("choose"):
            joint = vision.patch_embeddings.float().reshape(b, labels.shape[1], -1)
            scores = clustering.cluster_scores(
                joint, labels, cfg.num_clusters, audio_feats.embedding.float()
            )
            chosen = clustering.choose_clusters(scores, cfg.tau, cfg.delta) & ~silent[:, None]
        masks, n_props, n_kept, fallback = self._masks(images, prompts, labels, chosen, grid, timer)
        results = []
        per_frame = {k: v / b for k, v in timer.ms.items()}
        scores_cpu, chosen_cpu = scores.cpu(), chosen.cpu()
        for i in range(b):
            is_silent = bool(silent[i])
            results.append(
                FrameResult(
                    mask=masks[i],
                    silent=is_silent,
                    level_dbfs=float(level[i]),
                    scores=[] if is_silent else [round(float(s), 6) for s in scores_cpu[i]],
                    chosen=[] if is_silent else [int(k) for k in chosen_cpu[i].nonzero().flatten()],
                    kmeans_iterations=int(iterations[i]),
                    proposals=n_props[i],
                    proposals_kept=n_kept[i],
                    used_fallback=fallback[i],
                    timings_ms=dict(per_frame),
                )
            )
        return results

    def segment(
        self,
        image: np.ndarray,
        audio: np.ndarray | torch.Tensor,
        boxes: torch.Tensor | np.ndarray | None = None,
    ) -> FrameResult:
        """One frame: uint8 [H, W, 3] and a [32000] 16 kHz window centred on it."""
        window = torch.as_tensor(audio, dtype=torch.float32).reshape(1, -1)
        return self.segment_batch([image], window, None if boxes is None else [boxes])[0]

    def stream(
        self,
        frames: Iterable[MediaFrame],
        batch_size: int = 1,
        box_prompts: Mapping[int, torch.Tensor] | None = None,
    ) -> Iterator[tuple[MediaFrame, FrameResult | None]]:
        """Segment a stream of :class:`~moca_rt.media.MediaFrame` in batches, in input order.

        Yields ``(frame, result)`` for every input record; ``result`` is None for a record the
        source dropped (real-time mode), which carries no image.

        Args:
            frames: e.g. ``moca_rt.media.open_source(path)``.
            batch_size: frames per model call (latency vs throughput).
            box_prompts: {frame index: [n, 4] XYXY boxes} for box-prompted proposals.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, is {batch_size}")
        pending: list[MediaFrame] = []

        def flush() -> Iterator[tuple[MediaFrame, FrameResult | None]]:
            if not pending:
                return
            boxes = None
            if box_prompts is not None:
                boxes = [box_prompts.get(f.index) for f in pending]
            audio = np.stack([f.audio for f in pending if f.audio is not None])
            results = self.segment_batch(
                [f.image for f in pending if f.image is not None], audio, boxes
            )
            yield from zip(pending, results, strict=True)
            pending.clear()

        for frame in frames:
            if frame.dropped or frame.image is None or frame.audio is None:
                yield from flush()
                yield frame, None
                continue
            pending.append(frame)
            if len(pending) == batch_size:
                yield from flush()
        yield from flush()

    def _fbank(self, windows: torch.Tensor) -> torch.Tensor:
        # All three ImageBind clips of a 2 s window are the same samples: keep one (see module doc).
        return imagebind_audio_batch(windows, aliasing="independent")[:, :1]

    def _masks(
        self,
        images: Sequence[np.ndarray],
        boxes: Sequence[torch.Tensor | None] | None,
        labels: torch.Tensor,
        chosen: torch.Tensor,
        grid: tuple[int, int],
        timer: _StageTimer,
    ) -> tuple[list[np.ndarray], list[int], list[int], list[bool]]:
        cfg = self.config
        b = len(images)
        # Proposals only for frames with a sounding cluster: the others get an empty mask anyway.
        sounding = [i for i in range(b) if bool(chosen[i].any())]
        proposal_logits: dict[int, torch.Tensor] = {}
        if self.proposals is not None and sounding:
            with timer.stage("proposals"):
                found = self.proposals(
                    [images[i] for i in sounding],
                    None if boxes is None else [boxes[i] for i in sounding],
                )
            proposal_logits = dict(zip(sounding, found, strict=True))
        masks, n_props, n_kept, fallback = [], [], [], []
        with timer.stage("mpm"):
            for i in range(b):
                h, w = images[i].shape[:2]
                props = proposal_logits[i].to(self.device) if i in proposal_logits else None
                if not bool(chosen[i].any()):
                    masks.append(np.zeros((h, w), dtype=bool))
                    n_props.append(0)
                    n_kept.append(0)
                    fallback.append(False)
                    continue
                if props is None or props.shape[0] == 0:
                    prob = clustering.sounding_probability(
                        labels[i : i + 1], chosen[i : i + 1], grid, (h, w)
                    )
                    masks.append((prob[0] > cfg.coarse_threshold).cpu().numpy())
                    n_props.append(0)
                    n_kept.append(0)
                    fallback.append(True)
                    continue
                low = (int(props.shape[1]), int(props.shape[2]))
                coarse = clustering.sounding_probability(
                    labels[i : i + 1], chosen[i : i + 1], grid, low
                )
                coarse_mask = coarse > cfg.coarse_threshold
                kept = (
                    clustering.match_scores((props > 0)[None], coarse_mask, cfg.mpm_metric)[0]
                    > cfg.mpm_threshold
                )
                k = int(kept.sum())
                if k:
                    logits = props[kept].float().amax(dim=0)[None, None]
                    full = (
                        F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[
                            0, 0
                        ]
                        > 0
                    )
                else:
                    prob = clustering.sounding_probability(
                        labels[i : i + 1], chosen[i : i + 1], grid, (h, w)
                    )
                    full = prob[0] > cfg.coarse_threshold
                masks.append(full.cpu().numpy())
                n_props.append(int(props.shape[0]))
                n_kept.append(k)
                fallback.append(k == 0)
        return masks, n_props, n_kept, fallback


def _kmeans_per_frame(x: torch.Tensor, cfg: PipelineConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine k-means of each frame as if on its own: labels [B, N] int64, iterations [B] int32.

    One batched call when the selected backend is batch-invariant (a GPU kernel), one call per
    frame otherwise; the labels are the same either way.
    """
    from moca_rt.kernels import cosine_kmeans
    from moca_rt.kernels.kmeans import batch_invariant

    if batch_invariant(x, cfg.num_clusters):
        res = cosine_kmeans(x, cfg.num_clusters, max_iters=cfg.kmeans_iters, seed=cfg.kmeans_seed)
        return res.labels, res.iterations
    runs = [
        cosine_kmeans(
            x[i : i + 1], cfg.num_clusters, max_iters=cfg.kmeans_iters, seed=cfg.kmeans_seed
        )
        for i in range(x.shape[0])
    ]
    return torch.cat([r.labels for r in runs]), torch.cat([r.iterations for r in runs])


def _box_tensor(boxes: torch.Tensor | np.ndarray | None) -> torch.Tensor | None:
    """One frame's box prompts as a [K, 4] float32 tensor (on the device they came on)."""
    return None if boxes is None else torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
