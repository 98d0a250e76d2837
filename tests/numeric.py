"""Comparison metrics of ../shared/reference/README.md ("How to compare"), in float64."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Comparison:
    max_abs: float
    rel: float
    cosine: float
    min_token_cosine: float

    def __str__(self) -> str:
        return (
            f"max_abs={self.max_abs:.3e} rel={self.rel:.3e} cos={self.cosine:.8f} "
            f"min_token_cos={self.min_token_cosine:.8f}"
        )


def compare(ours: torch.Tensor, ref: torch.Tensor) -> Comparison:
    """max_abs, max_abs / max|ref|, flat cosine and the lowest per-token (last-dim) cosine."""
    if ours.shape != ref.shape:
        raise AssertionError(f"shape mismatch: ours {tuple(ours.shape)} vs ref {tuple(ref.shape)}")
    a = ours.detach().to(torch.float64).cpu()
    b = ref.detach().to(torch.float64).cpu()
    if not torch.isfinite(a).all():
        bad = (~torch.isfinite(a)).nonzero()[:5].tolist()
        raise AssertionError(f"non-finite values in ours at {bad}")
    max_abs = (a - b).abs().max().item()
    rel = max_abs / max(b.abs().max().item(), 1e-30)
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    if a.dim() >= 2:
        tok = torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item()
    else:
        tok = cos
    return Comparison(max_abs, rel, cos, tok)


def assert_close_stage(
    ours: torch.Tensor, ref: torch.Tensor, name: str, rel: float = 1e-4, cos: float = 0.99999
) -> Comparison:
    c = compare(ours, ref)
    if not (c.rel <= rel and c.cosine >= cos):
        diff = (ours.detach().double().cpu() - ref.detach().double().cpu()).abs()
        first = (diff == diff.max()).nonzero()[0].tolist()
        raise AssertionError(f"{name}: {c} (gate rel<={rel}, cos>={cos}); worst index {first}")
    return c
