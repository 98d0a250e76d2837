"""GPU kernels of moca_rt, each beside its torch reference, behind guarded dispatchers.

Public ops: :func:`cosine_kmeans` (batched cosine k-means with deterministic k-means++),
:func:`mask_iou` / :func:`mask_coverage` (proposal-vs-cluster mask matching) and, from
:mod:`moca_rt.kernels.pma`, the PMA cost and triplet loss. ``MOCA_RT_KERNELS=torch|triton|cupy``
forces a backend (see :mod:`moca_rt.kernels.dispatch`). Importing this package never imports
Triton or CuPy: kernels are compiled on first use.
"""

from __future__ import annotations

from .kmeans import (
    KMeansResult,
    cosine_kmeans,
    cosine_kmeans_reference,
    cosine_kmeans_torch_fast,
    cosine_kmeans_triton,
    kmeanspp_random_table,
)
from .mask_iou import mask_coverage, mask_iou, mask_iou_reference, mask_iou_triton

__all__ = [
    "KMeansResult",
    "cosine_kmeans",
    "cosine_kmeans_reference",
    "cosine_kmeans_torch_fast",
    "cosine_kmeans_triton",
    "kmeanspp_random_table",
    "mask_coverage",
    "mask_iou",
    "mask_iou_reference",
    "mask_iou_triton",
]

from .pma import (
    PmaResult,
    pma_cost,
    pma_cost_reference,
    pma_cost_torch_fast,
    pma_cost_triton,
    pma_triplet_loss,
)

__all__ += [
    "PmaResult",
    "pma_cost",
    "pma_cost_reference",
    "pma_cost_torch_fast",
    "pma_cost_triton",
    "pma_triplet_loss",
]
