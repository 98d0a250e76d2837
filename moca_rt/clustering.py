"""Per-frame decision steps of MoCA inference that act on tensors only (DESIGN section 5).

The k-means itself and the mask IoU live in ``moca_rt.kernels``; this module holds the steps
around them: the silence gate, cluster scoring against the audio embedding, the choice of
sounding clusters, the coarse sounding mask and mask-proposal matching (MPM). Every function is
batched over frames and device-agnostic.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

MatchMetric = Literal["iou", "coverage"]


def window_dbfs(audio: torch.Tensor) -> torch.Tensor:
    """RMS level of each audio window in dBFS (full scale = 1.0).

    Args:
        audio: [B, T] float waveforms in [-1, 1].
    Returns:
        [B] float32; an all-zero window gives about -240 dBFS.
    """
    if audio.dim() != 2:
        raise ValueError(f"audio must be [B, T], got shape {tuple(audio.shape)}")
    rms = audio.float().pow(2).mean(dim=1).sqrt()
    return 20.0 * torch.log10(rms + 1e-12)


def cluster_scores(
    patch_embeddings: torch.Tensor,
    labels: torch.Tensor,
    num_clusters: int,
    audio_embedding: torch.Tensor,
) -> torch.Tensor:
    """Cosine between each cluster's mean joint-space embedding and the audio embedding.

    Args:
        patch_embeddings: [B, N, E] joint-space patch embeddings.
        labels: [B, N] int cluster index of each patch.
        num_clusters: K.
        audio_embedding: [B, E] (any norm; only the direction counts).
    Returns:
        [B, K] float32 scores in [-1, 1]; an empty cluster scores -inf so it is never chosen.
    """
    b, n, e = patch_embeddings.shape
    if labels.shape != (b, n):
        raise ValueError(f"labels must be [B, N] = {(b, n)}, got {tuple(labels.shape)}")
    if audio_embedding.shape != (b, e):
        raise ValueError(
            f"audio_embedding must be [B, E] = {(b, e)}, got {tuple(audio_embedding.shape)}"
        )
    one_hot = F.one_hot(labels.long(), num_clusters).float()  # [B, N, K]
    counts = one_hot.sum(dim=1)  # [B, K]
    sums = torch.einsum("bnk,bne->bke", one_hot, patch_embeddings.float())
    means = sums / counts.clamp(min=1.0).unsqueeze(-1)
    scores = F.cosine_similarity(means, audio_embedding.float().unsqueeze(1), dim=-1, eps=1e-8)
    return scores.masked_fill(counts == 0, float("-inf"))


def choose_clusters(scores: torch.Tensor, tau: float, delta: float) -> torch.Tensor:
    """Sounding clusters: score >= tau and score >= best - delta (several sources may sound).

    Args:
        scores: [B, K] from :func:`cluster_scores`.
    Returns:
        [B, K] bool; a row is all False when no cluster reaches tau.
    """
    best = scores.max(dim=1, keepdim=True).values
    return (scores >= tau) & (scores >= best - delta)


def sounding_probability(
    labels: torch.Tensor, chosen: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Soft membership of the chosen clusters, upsampled bilinearly to ``size``.

    Args:
        labels: [B, N] cluster index per patch, N = grid[0] * grid[1], row-major.
        chosen: [B, K] bool.
        grid: (h, w) patch grid, (16, 16) for ImageBind at 224.
        size: (H, W) output size.
    Returns:
        [B, H, W] float32 in [0, 1]; threshold at 0.5 for the coarse mask M.
    """
    b, n = labels.shape
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {grid} does not hold {n} patches")
    member = torch.gather(chosen.float(), 1, labels.long())  # [B, N]
    member = member.view(b, 1, grid[0], grid[1])
    up = F.interpolate(member, size=size, mode="bilinear", align_corners=False)
    return up[:, 0].clamp_(0.0, 1.0)


def match_scores(
    proposals: torch.Tensor, coarse: torch.Tensor, metric: MatchMetric = "iou"
) -> torch.Tensor:
    """IoU (or coverage |P ∩ M| / |P|) of every proposal with the coarse mask of its frame.

    Args:
        proposals: [B, P, h, w] bool proposal masks (padding proposals all False).
        coarse: [B, h, w] bool coarse sounding mask M at the same resolution.
    Returns:
        [B, P] float32; 0 where the proposal is empty.
    """
    from moca_rt.kernels import mask_coverage, mask_iou

    if proposals.dim() != 4 or coarse.dim() != 3 or proposals.shape[2:] != coarse.shape[1:]:
        raise ValueError(
            f"proposals [B, P, h, w] and coarse [B, h, w] must share (h, w), got "
            f"{tuple(proposals.shape)} and {tuple(coarse.shape)}"
        )
    op = mask_iou if metric == "iou" else mask_coverage
    return op(proposals.bool(), coarse.bool().unsqueeze(1))[:, :, 0]
