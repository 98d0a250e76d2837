"""Segment Anything (SAM) modules, checkpoint-compatible with the official ``sam_vit_{h,l,b}``.

Only ``nn.Module``s live here (STYLE point 1); the stateful predictor, the image transforms and
the automatic mask proposals sit in :mod:`moca_rt.sam_transforms` and :mod:`moca_rt.proposals`.

Attention everywhere goes through ``torch.nn.functional.scaled_dot_product_attention`` so fused
kernels are used where the backend has them; the image encoder's decomposed relative-position
bias is passed as a float ``attn_mask``. Forward passes contain no data-dependent Python control
flow (only ``is None`` checks on optional inputs and flags fixed at trace time), so they trace and
export. All modules run in fp32, bf16 and fp16; the random Fourier positional encoding of the
prompt encoder is always evaluated in fp32 and cast afterwards (its ``sin`` of large arguments
would be meaningless in half precision).

Facts reproduced (reference README, "SAM image encoder / prompt encoder / mask decoder"):
LayerNorm eps 1e-6 in the encoder and every LayerNorm2d, 1e-5 in the two-way transformer; GELU in
the encoder MLPs, the mask down-scaling and the upscaling path, ReLU in the decoder MLPs; windowed
blocks zero-pad the *normalised* map and attend to the padding; the rel-pos terms use the
unscaled query; decoder layer 0 self-attention has neither positional term nor residual.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from moca_rt.checkpoints import load_strict, read_state_dict
from moca_rt.config import SamConfig

ENCODER_LN_EPS = 1e-6
LAYERNORM2D_EPS = 1e-6
TRANSFORMER_LN_EPS = 1e-5


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map (biased variance, eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = LAYERNORM2D_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps
        # A plain int, not x.shape[1]: the TorchScript ONNX exporter cannot take a traced size here.
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(
            x.permute(0, 2, 3, 1), (self.num_channels,), self.weight, self.bias, self.eps
        )
        return y.permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- image encoder


class PatchEmbed(nn.Module):
    """Conv2d(3, C, k=s=patch) with bias; output channels-last (B, H/p, W/p, C)."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class MLPBlock(nn.Module):
    """Linear, activation, Linear (keys ``lin1``/``lin2``): exact GELU in the image encoder's
    blocks, ReLU in the two-way transformer's (the official ``MLPBlock`` and its ``act``)."""

    def __init__(self, dim: int, hidden: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


def _rel_pos_table(rel_pos: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """Gather the relative-position table into (q_size, k_size, head_dim).

    Entry [i, j] is ``rel_pos[i - j + size - 1]`` for equal sizes; for unequal sizes the official
    scaling of the coordinates is applied. The table is linearly resized when its length does not
    fit (only needed for inputs other than the trained size).
    """
    max_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_dist:
        rel_pos = (
            F.interpolate(
                rel_pos.float().t()[None], size=max_dist, mode="linear", align_corners=False
            )[0]
            .t()
            .to(rel_pos.dtype)
        )
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    rel = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[rel.long()]


class EncoderAttention(nn.Module):
    """Multi-head self-attention with SAM's decomposed relative-position bias.

    logits[(i, j), (k, l)] = (q * scale) . k + q . Rh[i - k] + q . Rw[j - l], with the unscaled q
    in the rel-pos terms. The bias is built per call and handed to SDPA as a float ``attn_mask``.
    """

    def __init__(self, dim: int, num_heads: int, rel_size: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"expected dim divisible by num_heads, got {dim} and {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_size - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_size - 1, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) channels-last -> (B, H, W, C)."""
        b, h, w, c = x.shape
        nh, hd = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(b, h * w, 3, nh, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, nh, N, hd)
        rh = _rel_pos_table(self.rel_pos_h, h, h).to(q.dtype)  # (H, H, hd)
        rw = _rel_pos_table(self.rel_pos_w, w, w).to(q.dtype)  # (W, W, hd)
        q_grid = q.reshape(b, nh, h, w, hd)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", q_grid, rh)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", q_grid, rw)
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, nh, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(b, h, w, c)
        return self.proj(out)


class EncoderBlock(nn.Module):
    """Pre-norm ViT block; windowed (window_size > 0) or global attention."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, grid_size: int
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=ENCODER_LN_EPS)
        self.attn = EncoderAttention(dim, num_heads, window_size if window_size > 0 else grid_size)
        self.norm2 = nn.LayerNorm(dim, eps=ENCODER_LN_EPS)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        y = self.norm1(x)
        if self.window_size > 0:
            b, h, w, c = y.shape
            ws = self.window_size
            pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
            # The normalised map is padded with zeros and the padding takes part as keys/values.
            y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
            hp, wp = h + pad_h, w + pad_w
            y = y.reshape(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
            y = self.attn(y.reshape(-1, ws, ws, c))
            y = y.reshape(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
            y = y.reshape(b, hp, wp, c)[:, :h, :w, :]
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """SAM ViT image encoder: (B, 3, S, S) normalised, padded image -> (B, 256, S/16, S/16)."""

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        grid = config.image_size // config.patch_size
        self.grid_size = grid
        self.patch_embed = PatchEmbed(config.patch_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, dim))
        self.blocks = nn.ModuleList(
            EncoderBlock(
                dim,
                config.encoder_num_heads,
                config.mlp_ratio,
                0 if i in config.encoder_global_attn_indexes else config.window_size,
                grid,
            )
            for i in range(config.encoder_depth)
        )
        out = config.prompt_embed_dim
        self.neck = nn.Sequential(
            nn.Conv2d(dim, out, kernel_size=1, bias=False),
            LayerNorm2d(out),
            nn.Conv2d(out, out, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out),
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding plus absolute positions: (B, 3, S, S) -> (B, S/16, S/16, C)."""
        return self.patch_embed(x) + self.pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, S, S) float, pixel-normalised and zero-padded -> (B, 256, S/16, S/16)."""
        x = self.embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))

    def forward_with_intermediates(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Like ``forward`` but also returns [tokens_in, block_0, ..., block_{n-1}] (B, h, w, C)."""
        x = self.embed(x)
        inter = [x]
        for blk in self.blocks:
            x = blk(x)
            inter.append(x)
        return self.neck(x.permute(0, 3, 1, 2)), inter


# --------------------------------------------------------------------------- prompt encoder


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features: [sin, cos](2*pi * (2c - 1) @ G), G ~ (2, D/2) stored as a buffer."""

    positional_encoding_gaussian_matrix: torch.Tensor

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """coords: (..., 2) (x, y) normalised to [0, 1] -> (..., D) float32."""
        g = self.positional_encoding_gaussian_matrix.float()
        c = (2 * coords.float() - 1) @ g
        c = 2 * math.pi * c
        return torch.cat([torch.sin(c), torch.cos(c)], dim=-1)

    def forward_with_coords(
        self, coords: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """coords: (..., 2) (x, y) in model-input pixels; image_size (H, W) -> (..., D) float32."""
        x = coords.float()
        norm = torch.stack([x[..., 0] / image_size[1], x[..., 1] / image_size[0]], dim=-1)
        return self.encode(norm)

    def dense(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the cell centres of an (h, w) grid -> (1, D, h, w) float32."""
        h, w = size
        dev = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(
            [xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1
        )  # (h, w, 2) as (x, y)
        return self.encode(grid).permute(2, 0, 1)[None]


class PromptEncoder(nn.Module):
    """Sparse (points, boxes) and dense (mask) prompt embeddings.

    Point labels: 1 foreground, 0 background, -1 padding ("not a point"), 2 / 3 box top-left /
    bottom-right corner (the form the ONNX export uses for boxes).
    """

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        dim = config.prompt_embed_dim
        grid = config.image_size // config.patch_size
        self.embed_dim = dim
        self.input_image_size = (config.image_size, config.image_size)
        self.image_embedding_size = (grid, grid)
        self.mask_input_size = (4 * grid, 4 * grid)
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, dim)
        c = config.mask_in_chans
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, c // 4, kernel_size=2, stride=2),
            LayerNorm2d(c // 4),
            nn.GELU(),
            nn.Conv2d(c // 4, c, kernel_size=2, stride=2),
            LayerNorm2d(c),
            nn.GELU(),
            nn.Conv2d(c, dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)

    def _dtype(self) -> torch.dtype:
        return self.no_mask_embed.weight.dtype

    def _point_weight(self, i: int) -> torch.Tensor:
        emb = self.point_embeddings[i]
        assert isinstance(emb, nn.Embedding)
        return emb.weight.float()

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid, (1, D, h, w) in the model dtype."""
        return self.pe_layer.dense(self.image_embedding_size).to(self._dtype())

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """points (B, N, 2) XY in model-input pixels, labels (B, N) -> (B, N [+1], D).

        With ``pad`` a point (0, 0) labelled -1 is appended (the official rule without a box).
        """
        points = points.float() + 0.5
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        pe = self.pe_layer.forward_with_coords(points, self.input_image_size)
        lab = labels[..., None]
        pe = torch.where(lab == -1, torch.zeros_like(pe), pe)
        w = [self._point_weight(i) for i in range(4)]
        nap = self.not_a_point_embed.weight.float()
        pe = pe + (lab == -1).float() * nap
        for i in range(4):
            pe = pe + (lab == i).float() * w[i]
        return pe.to(self._dtype())

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """boxes (B, 4) XYXY in model-input pixels -> (B, 2, D)."""
        corners = boxes.float().reshape(-1, 2, 2) + 0.5
        pe = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_embed = torch.cat([self._point_weight(2), self._point_weight(3)], 0)
        return (pe + corner_embed).to(self._dtype())

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """masks (B, 1, 4h, 4w) logits -> (B, D, h, w)."""
        return self.mask_downscaling(masks.to(self._dtype()))

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed the prompts of a batch of B prompt sets.

        Args:
            points: (coords (B, N, 2) XY in 1024-frame pixels, labels (B, N) int) or None.
            boxes: (B, 4) XYXY in 1024-frame pixels or None.
            masks: (B, 1, 256, 256) low-resolution mask logits or None.

        Returns:
            sparse (B, N', D) and dense (B, D, 64, 64) embeddings in the model dtype.
        """
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        dev = self.no_mask_embed.weight.device
        sparse = torch.empty(bs, 0, self.embed_dim, device=dev, dtype=self._dtype())
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self.embed_points(coords, labels, boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self.embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse, dense


# --------------------------------------------------------------------------- mask decoder


class DecoderAttention(nn.Module):
    """Attention with separate q/k/v/out projections and an internal width dim / downsample."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        internal = dim // downsample_rate
        if internal % num_heads != 0:
            raise ValueError(
                f"expected internal dim divisible by num_heads, got {internal} and {num_heads}"
            )
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, internal)
        self.k_proj = nn.Linear(dim, internal)
        self.v_proj = nn.Linear(dim, internal)
        self.out_proj = nn.Linear(internal, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, Nq, D), k and v (B, Nk, D) -> (B, Nq, D)."""
        out = F.scaled_dot_product_attention(
            self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        )
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class TwoWayAttentionBlock(nn.Module):
    """Self-attn on tokens, token->image, MLP, image->token; LayerNorm eps 1e-5 after each."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = DecoderAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim, eps=TRANSFORMER_LN_EPS)
        self.cross_attn_token_to_image = DecoderAttention(dim, num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim, eps=TRANSFORMER_LN_EPS)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim, eps=TRANSFORMER_LN_EPS)
        self.norm4 = nn.LayerNorm(dim, eps=TRANSFORMER_LN_EPS)
        self.cross_attn_image_to_token = DecoderAttention(dim, num_heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (B, Nt, D) tokens, keys (B, Ni, D) image; returns both updated."""
        if self.skip_first_layer_pe:
            # Layer 0: no positional term and no residual (official behaviour).
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Stack of two-way blocks plus a final token->image attention."""

    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, num_heads, mlp_dim, skip_first_layer_pe=(i == 0))
            for i in range(depth)
        )
        self.final_attn_token_to_image = DecoderAttention(dim, num_heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(dim, eps=TRANSFORMER_LN_EPS)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding / image_pe (B, D, h, w), point_embedding (B, Nt, D).

        Returns tokens (B, Nt, D) and image features (B, h*w, D).
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (keys ``layers.i``)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < n - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    """Predicts mask logits (B, M, 4h, 4w) and IoU scores (B, M) from image + prompt embeddings."""

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        dim = config.prompt_embed_dim
        self.num_mask_tokens = config.num_multimask_outputs + 1
        self.transformer = TwoWayTransformer(
            config.decoder_depth, dim, config.decoder_num_heads, config.decoder_mlp_dim
        )
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            dim, config.iou_head_hidden_dim, self.num_mask_tokens, config.iou_head_depth
        )

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All mask tokens: masks (B, num_mask_tokens, 4h, 4w), iou (B, num_mask_tokens)."""
        bsz = sparse_prompt_embeddings.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        out_tokens = out_tokens[None].expand(bsz, -1, -1).to(sparse_prompt_embeddings.dtype)
        tokens = torch.cat([out_tokens, sparse_prompt_embeddings], dim=1)
        # A single image embedding broadcasts over all prompts; otherwise one per prompt.
        src = image_embeddings + dense_prompt_embeddings
        src = src.expand(bsz, -1, -1, -1)
        pos = image_pe.expand(bsz, -1, -1, -1)
        b, c, h, w = src.shape
        hs, keys = self.transformer(src, pos, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        b, c2, h2, w2 = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c2, h2 * w2)).reshape(b, -1, h2, w2)
        return masks, self.iou_prediction_head(iou_token_out)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode B prompt sets.

        Args:
            image_embeddings: (1 or B, D, h, w) encoder output (one image shared or one per
                prompt).
            image_pe: (1, D, h, w) from ``PromptEncoder.get_dense_pe``.
            sparse_prompt_embeddings: (B, N, D); dense_prompt_embeddings: (B, D, h, w).
            multimask_output: True -> masks 1..M-1, False -> mask 0 only.

        Returns:
            low-res mask logits (B, M', 4h, 4w) and IoU predictions (B, M').
        """
        masks, iou = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        sel = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sel], iou[:, sel]


# --------------------------------------------------------------------------- container


class Sam(nn.Module):
    """Image encoder + prompt encoder + mask decoder, with the official state-dict key names.

    ``pixel_mean`` / ``pixel_std`` (3, 1, 1) are non-persistent buffers on the 0-255 scale, as in
    the official model (they are not part of the checkpoint).
    """

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoderViT(config)
        self.prompt_encoder = PromptEncoder(config)
        self.mask_decoder = MaskDecoder(config)
        self.register_buffer(
            "pixel_mean", torch.tensor(config.pixel_mean).view(-1, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(config.pixel_std).view(-1, 1, 1), persistent=False
        )

    @property
    def mask_threshold(self) -> float:
        return self.config.mask_threshold

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder for B prompt sets (all coordinates in the 1024 frame).

        Args:
            image_embeddings: (1 or B, 256, 64, 64).
            point_coords: (B, N, 2) XY float; point_labels: (B, N) int (1 fg, 0 bg, -1 pad).
            boxes: (B, 4) XYXY float; mask_input: (B, 1, 256, 256) logits.

        Returns:
            low-res logits (B, M, 256, 256) and IoU predictions (B, M), M = 3 or 1.
        """
        if (point_coords is None) != (point_labels is None):
            raise ValueError("expected point_coords and point_labels together, got only one")
        self._check_prompts(image_embeddings, point_coords, point_labels, boxes, mask_input)
        points = None
        if point_coords is not None and point_labels is not None:
            points = (point_coords, point_labels)
        sparse, dense = self.prompt_encoder(points, boxes, mask_input)
        return self.mask_decoder(
            image_embeddings.to(sparse.dtype),
            self.prompt_encoder.get_dense_pe(),
            sparse,
            dense,
            multimask_output,
        )

    def _check_prompts(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
    ) -> None:
        """Shape checks only (no values read), so tracing and export see no data dependence."""
        grid = self.config.image_size // self.config.patch_size
        emb_shape = (self.config.prompt_embed_dim, grid, grid)
        if image_embeddings.ndim != 4 or tuple(image_embeddings.shape[1:]) != emb_shape:
            raise ValueError(
                f"expected image_embeddings (1 or B, {emb_shape[0]}, {grid}, {grid}), got "
                f"{tuple(image_embeddings.shape)}"
            )
        batch: list[tuple[str, int]] = []
        if point_coords is not None and point_labels is not None:
            if point_coords.ndim != 3 or point_coords.shape[2] != 2:
                raise ValueError(
                    f"expected point_coords (B, N, 2), got {tuple(point_coords.shape)}"
                )
            if tuple(point_labels.shape) != tuple(point_coords.shape[:2]):
                raise ValueError(
                    f"expected point_labels {tuple(point_coords.shape[:2])} matching point_coords, "
                    f"got {tuple(point_labels.shape)}"
                )
            batch.append(("point_coords", point_coords.shape[0]))
        if boxes is not None:
            if boxes.ndim != 2 or boxes.shape[1] != 4:
                raise ValueError(f"expected boxes (B, 4), got {tuple(boxes.shape)}")
            batch.append(("boxes", boxes.shape[0]))
        if mask_input is not None:
            side = 4 * grid
            if mask_input.ndim != 4 or tuple(mask_input.shape[1:]) != (1, side, side):
                raise ValueError(
                    f"expected mask_input (B, 1, {side}, {side}), got {tuple(mask_input.shape)}"
                )
            batch.append(("mask_input", mask_input.shape[0]))
        if batch and any(b != batch[0][1] for _, b in batch):
            raise ValueError(f"expected one batch size B for all prompts, got {batch}")
        if batch and image_embeddings.shape[0] not in (1, batch[0][1]):
            raise ValueError(
                f"expected image_embeddings batch 1 or {batch[0][1]}, "
                f"got {image_embeddings.shape[0]}"
            )


def build_sam(config: SamConfig, device: torch.device | str | None = None) -> Sam:
    """An untrained ``Sam`` for ``config`` on ``device`` (``"meta"`` allocates nothing)."""
    with torch.device(device if device is not None else "cpu"):
        return Sam(config)


def load_sam(
    checkpoint: str | Path | Mapping[str, torch.Tensor],
    config: SamConfig,
    device: torch.device | str = "cpu",
) -> Sam:
    """Build on the meta device and load an official-layout SAM state dict strictly.

    Args:
        checkpoint: path to ``sam_vit_{h,l,b}_*.pth`` / a ``.safetensors`` file, or a state dict.
        config: the matching preset (e.g. ``SAM_PRESETS["sam_vit_h"]``).
        device: where the loaded model lives.

    Returns:
        ``Sam`` in eval mode, fp32 (cast afterwards for bf16/fp16).

    Raises:
        moca_rt.checkpoints.CheckpointMismatchError: naming missing / unexpected keys and shape
            mismatches when the file does not fit ``config``.
    """
    state = read_state_dict(checkpoint) if isinstance(checkpoint, (str, Path)) else dict(checkpoint)
    model = build_sam(config, device="meta")
    load_strict(
        model,
        state,
        f"SAM (encoder width {config.encoder_embed_dim}, depth {config.encoder_depth})",
    )
    # Non-persistent buffers are not in the checkpoint: rebuild them off the meta device.
    model.pixel_mean = torch.tensor(config.pixel_mean).view(-1, 1, 1)
    model.pixel_std = torch.tensor(config.pixel_std).view(-1, 1, 1)
    return model.to(device).eval()
