"""AdaAV, the audio-visual adapter of MoCA (paper section 3, DESIGN section 3).

For an adapted vision block l paired with audio block a(l), MoCA computes

    Y_v = X_v + MHA(X_v) + AdaAV(X_a, X_v)
    X_v' = Y_v + MLP(Y_v) + AdaAV(Y_a, Y_v)

with one AdaAV module (one set of weights) serving both insertion points. Inside AdaAV:

1. LayerNorm, then down-projection of the audio tokens (width Da -> r) and of the vision tokens
   (Dv -> r). The frozen trunks' residual streams are not normalised and their scale grows with
   depth; the LayerNorms make the adapter see unit-scale inputs at every placement.
2. ``m`` learned latent tokens (r wide) gather the audio through cross-attention
   (latents <- audio tokens), with a residual on the latents.
3. The vision tokens read the latents through a second cross-attention
   (vision tokens <- latents), with a residual on the down-projected vision tokens.
4. GELU, then the up-projection r -> Dv. It is zero-initialised (weight and bias), so an
   untrained adapter adds exactly 0 and leaves ImageBind unchanged.

Placement (:func:`adapter_pairs`): ``last-k`` (default: with 32 vision and 12 audio blocks and
k=6, vision blocks 26-31 with audio blocks 6-11), ``first-k`` (vision 0..k-1 with audio
0..k-1) and ``interleaved`` (k blocks spread evenly over each trunk, ending at the last block:
vision block floor((i+1) Nv / k) - 1 with audio block floor((i+1) Na / k) - 1; with 12 blocks and
k=6 that is every second block, 1, 3, ..., 11, as in the paper's ablation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moca_rt.config import AdapterConfig, AdapterPlacement

__all__ = ["PLACEMENTS", "AdaAV", "CrossAttention", "adapter_pairs"]

PLACEMENTS: tuple[AdapterPlacement, ...] = ("last-k", "first-k", "interleaved")
ADAPTER_LN_EPS = 1e-6


def adapter_pairs(
    placement: str, k: int, n_vision_blocks: int, n_audio_blocks: int
) -> list[tuple[int, int]]:
    """The (vision block, audio block) index pairs that get an adapter, in trunk order.

    Args:
        placement: ``"last-k"``, ``"first-k"`` or ``"interleaved"``.
        k: number of adapted layers, 0 <= k <= min(n_vision_blocks, n_audio_blocks).
        n_vision_blocks, n_audio_blocks: depths of the two trunks.

    Returns:
        k pairs, vision indices strictly increasing, audio indices strictly increasing.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"expected placement in {list(PLACEMENTS)}, got {placement!r}")
    if n_vision_blocks < 1 or n_audio_blocks < 1:
        raise ValueError(
            f"expected trunks with >= 1 block, got {n_vision_blocks} vision, {n_audio_blocks} audio"
        )
    limit = min(n_vision_blocks, n_audio_blocks)
    if not 0 <= k <= limit:
        raise ValueError(f"expected 0 <= k <= {limit} (the shallower trunk), got {k}")
    if placement == "last-k":
        return [(n_vision_blocks - k + i, n_audio_blocks - k + i) for i in range(k)]
    if placement == "first-k":
        return [(i, i) for i in range(k)]
    return [
        ((i + 1) * n_vision_blocks // k - 1, (i + 1) * n_audio_blocks // k - 1) for i in range(k)
    ]


class CrossAttention(nn.Module):
    """Multi-head cross-attention in the bottleneck width: queries [B, Lq, r], keys [B, Lk, r]."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"expected dim divisible by num_heads, got {dim} and {num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, keys: Tensor) -> Tensor:
        """queries [B, Lq, r], keys (also the values) [B, Lk, r] -> [B, Lq, r]."""
        b, nq, d = queries.shape
        h = self.num_heads
        q = self.q_proj(queries).reshape(b, nq, h, d // h).transpose(1, 2)
        k = self.k_proj(keys).reshape(b, -1, h, d // h).transpose(1, 2)
        v = self.v_proj(keys).reshape(b, -1, h, d // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, d))


class AdaAV(nn.Module):
    """One audio-visual adapter: (audio tokens, vision tokens) -> update of the vision tokens.

    Args:
        audio_dim: width of the audio trunk (768 for ImageBind-huge).
        vision_dim: width of the vision trunk (1280).
        config: ``num_latents`` m, ``bottleneck`` r and ``num_heads`` of both attentions.
    """

    def __init__(self, audio_dim: int, vision_dim: int, config: AdapterConfig) -> None:
        super().__init__()
        r = config.bottleneck
        if config.num_latents < 1 or r < 1:
            raise ValueError(
                f"expected num_latents >= 1 and bottleneck >= 1, got {config.num_latents} and {r}"
            )
        self.latents = nn.Parameter(torch.empty(1, config.num_latents, r))
        self.audio_norm = nn.LayerNorm(audio_dim, eps=ADAPTER_LN_EPS)
        self.vision_norm = nn.LayerNorm(vision_dim, eps=ADAPTER_LN_EPS)
        self.audio_down = nn.Linear(audio_dim, r)
        self.vision_down = nn.Linear(vision_dim, r)
        self.audio_to_latents = CrossAttention(r, config.num_heads)
        self.latents_to_vision = CrossAttention(r, config.num_heads)
        self.up = nn.Linear(r, vision_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random projections and latents; zero up-projection (the adapter starts as identity)."""
        nn.init.normal_(self.latents, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, audio: Tensor, vision: Tensor) -> Tensor:
        """Adapter output to add to the vision residual stream.

        Args:
            audio: [B, La, Da] audio tokens (for MoCA: all S clips' tokens concatenated).
            vision: [B, Lv, Dv] vision tokens (CLS included).

        Returns:
            [B, Lv, Dv], in the dtype of ``vision``.
        """
        if audio.dim() != 3 or vision.dim() != 3 or audio.shape[0] != vision.shape[0]:
            raise ValueError(
                f"expected audio [B, La, Da] and vision [B, Lv, Dv] with the same B, got "
                f"{tuple(audio.shape)} and {tuple(vision.shape)}"
            )
        a = self.audio_down(self.audio_norm(audio))
        v = self.vision_down(self.vision_norm(vision))
        latents = self.latents.to(a.dtype).expand(a.shape[0], -1, -1)
        latents = latents + self.audio_to_latents(latents, a)
        h = v + self.latents_to_vision(v, latents)
        return self.up(F.gelu(h))
