"""SAM's mask decoder for point grids, rearranged so that a prompt costs a fraction of a full pass.

:meth:`moca_rt.modeling.sam.Sam.decode` runs the whole two-way transformer once per prompt on a
private copy of the image tokens (4096 x 256 for the 1024 models): every projection of the image
tokens is repeated per prompt, and its output upscaling runs even for prompts whose predicted
IoU already rules all their masks out. Here the same function is computed in another order:

* **shared projections**: before the first image->token attention the image tokens are the same
  for every prompt of a frame, so layer 0's key/value/query projections of the image run once
  per frame (not once per prompt);
* **factored attention**: where one side of an attention is a prompt's handful of tokens (T = 7
  for a point prompt: IoU token, 4 mask tokens, the point, the padding point), the projections
  of the image side are moved onto the token side. ``q . (W_k x + b_k) = (W_k^T q) . x + q . b_k``
  and ``sum_t a_t (W_v x_t + b_v) = W_v (sum_t a_t x_t) + b_v`` turn two (HW x D) x (D x I)
  products per prompt into (heads * T) x D x HW ones; the image->token output ``out_proj(A V)``
  becomes ``A (V W_o^T)`` per head. With heads * T = 56 < I = 128 this halves their cost;
* **IoU first**: SAM's first quality filter is the predicted IoU, which needs only the
  transformer. :func:`upscale_masks` (the output upscaling and hypernetwork, about half of what
  is left) runs only for prompts with a mask above the threshold;
* **channels last**: the two ConvTranspose2d (kernel 2, stride 2) of the upscaling are a matmul
  each on channels-last features, with the LayerNorm2d over the last axis;
* **small runs**: on the CPU, :class:`GridBackend` decodes a few prompts at a time (8 MiB of
  image tokens, 2 prompts for the 1024 models), so that a run's tensors stay in the caches.

The result is the official decoder's up to floating-point rounding (summation order differs;
``tests/test_proposals_factored.py`` checks it against :meth:`Sam.decode`). Only single positive
point prompts with multimask output are handled: what the automatic grid needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from moca_rt.modeling.sam import DecoderAttention, LayerNorm2d, Sam, TwoWayAttentionBlock
from moca_rt.onnx_quiet import quiet_export

__all__ = [
    "GRID_TOKENS_FILE",
    "GRID_UPSCALE_FILE",
    "DecodedPrompts",
    "GridBackend",
    "GridFrames",
    "OrtGridBackend",
    "decode_grid_tokens",
    "export_grid_decoder",
    "prepare_frames",
    "upscale_masks",
]


GRID_TOKENS_FILE = "sam_grid_tokens_fp32.onnx"
GRID_UPSCALE_FILE = "sam_grid_upscale_fp32.onnx"
# Opset 20 has Gelu as one operator: onnxruntime runs it as one kernel, where opset 18 spells it
# as five elementwise passes over the upscaled features (the upscaling graph took 1.6x longer).
GRID_OPSET = 20
# image tokens per run of the transformer (GridBackend's default batching, both backends)
_RUN_BYTES = 8 << 20


@dataclass
class GridFrames:
    """Per-frame tensors every prompt of a frame shares (from :func:`prepare_frames`).

    Attributes:
        keys: (F, HW, D) image tokens (embedding + no-mask embedding), channels last.
        key_pe: (1, HW, D) positional encoding of the embedding grid.
        k0, v0: (F, heads, HW, hd) layer 0's token->image key / value projections.
        q0: (F, HW, I) layer 0's image->token query projection (heads side by side).
        grid: (h, w) of the image embedding.
    """

    keys: Tensor
    key_pe: Tensor
    k0: Tensor
    v0: Tensor
    q0: Tensor
    grid: tuple[int, int]


def _blocks(sam: Sam) -> list[TwoWayAttentionBlock]:
    """The two-way blocks of SAM's decoder, typed."""
    blocks = [b for b in sam.mask_decoder.transformer.layers if isinstance(b, TwoWayAttentionBlock)]
    if not blocks or len(blocks) != len(sam.mask_decoder.transformer.layers):
        raise ValueError("expected SAM's mask decoder to hold only two-way attention blocks")
    return blocks


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """(..., I) -> (..., heads, I / heads)."""
    return x.unflatten(-1, (num_heads, x.shape[-1] // num_heads))


@torch.no_grad()
def prepare_frames(sam: Sam, embeddings: Tensor) -> GridFrames:
    """The prompt-independent part of the decoder for F image embeddings (F, D, h, w)."""
    pe = sam.prompt_encoder
    dtype = pe.no_mask_embed.weight.dtype
    h, w = embeddings.shape[-2:]
    keys = embeddings.to(dtype).flatten(2).transpose(1, 2) + pe.no_mask_embed.weight[None]
    key_pe = pe.get_dense_pe().flatten(2).transpose(1, 2).contiguous()  # (1, HW, D)
    first = _blocks(sam)[0]
    t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
    kp = keys + key_pe
    heads = t2i.num_heads
    # contiguous: onnxruntime takes them as they are, once per run
    k0 = _heads(t2i.k_proj(kp), heads).transpose(1, 2).contiguous()
    v0 = _heads(t2i.v_proj(keys), heads).transpose(1, 2).contiguous()
    q0 = i2t.q_proj(kp)
    return GridFrames(keys.contiguous(), key_pe, k0, v0, q0, (h, w))


def _token_proj_out(attn: DecoderAttention, values: Tensor) -> Tensor:
    """Per head, token values (..., T, I) through out_proj: (..., heads * T, D) (no bias)."""
    heads = attn.num_heads
    v = _heads(values, heads)  # (..., T, heads, hd)
    w_o = _heads(attn.out_proj.weight, heads)  # (D, heads, hd)
    u = torch.einsum("...thc,dhc->...htd", v, w_o)
    return u.flatten(-3, -2)


def _softmax_over_tokens(scores: Tensor) -> Tensor:
    """Softmax over axis 2 of (B, heads, T, HW) scores: each head's T scores of a pixel.

    Eager torch runs its softmax kernel. In an export the softmax is spelled out (max, exp,
    sum), because onnxruntime's Softmax over a middle axis transposes its input and output:
    1.1 ms a prompt for SAM ViT-B on 2 cores, a sixth of the tokens graph.
    """
    if not torch.compiler.is_exporting():
        return scores.softmax(dim=2)
    e = (scores - scores.amax(dim=2, keepdim=True)).exp()
    return e / e.sum(dim=2, keepdim=True)


def _image_to_tokens(
    attn: DecoderAttention, scores: Tensor, values: Tensor, residual: Tensor
) -> Tensor:
    """Image queries attending to T tokens, plus the residual.

    Args:
        scores: (B, heads * T, HW) scaled scores (pixels along rows: the softmax over a head's
            T scores then runs across rows, HW values at a time).
        values: (B, T, I) projected token values.
        residual: (B or 1, HW, D) image tokens the attention output is added to.

    Returns ``residual + out_proj(attention)`` (B, HW, D), computed as
    ``residual + A (V W_o^T + b_o / heads)``: a head's T weights sum to one, so the output bias
    rides on the per-head value rows (one pass over the image tokens fewer).
    """
    heads = attn.num_heads
    a = _softmax_over_tokens(scores.unflatten(1, (heads, -1))).flatten(1, 2)  # (B, heads*T, HW)
    u = _token_proj_out(attn, values) + attn.out_proj.bias / heads  # (B, heads * T, D)
    return torch.baddbmm(residual, a.transpose(1, 2), u)


def _i2t_scores_factored(attn: DecoderAttention, image_q: Tensor, tokens_k: Tensor) -> Tensor:
    """Scores of image queries (B, HW, D) (not yet projected) against token keys (B, T, D).

    ``(W_q x + b_q) . k_h = x . (W_q,h^T k_h) + b_q,h . k_h``: the query projection moves onto the
    T keys. Returns (B, heads * T, HW), scaled.
    """
    heads = attn.num_heads
    k = _heads(attn.k_proj(tokens_k), heads)  # (B, T, heads, hd)
    w_q = _heads(attn.q_proj.weight.T, heads)  # (D, heads, hd)
    b_q = _heads(attn.q_proj.bias, heads)  # (heads, hd)
    scale = 1.0 / math.sqrt(k.shape[-1])
    k_img = torch.einsum("bthc,dhc->bhtd", k * scale, w_q).flatten(1, 2)  # (B, heads * T, D)
    bias = torch.einsum("bthc,hc->bht", k * scale, b_q).flatten(1)  # (B, heads * T)
    return torch.baddbmm(bias[:, :, None], k_img, image_q.transpose(1, 2))


def _t2i_factored(
    attn: DecoderAttention, tokens_q: Tensor, image_k: Tensor, image_v: Tensor
) -> Tensor:
    """Token queries (B, T, D) attending to image tokens that differ per prompt.

    Args:
        image_k: (B, HW, D) keys before projection (image + positional encoding).
        image_v: (B, HW, D) values before projection.

    Returns out_proj(attention) (B, T, D).
    """
    heads = attn.num_heads
    q = _heads(attn.q_proj(tokens_q), heads)  # (B, T, heads, hd)
    t = q.shape[-3]
    q = q * (1.0 / math.sqrt(q.shape[-1]))
    w_k = _heads(attn.k_proj.weight.T, heads)  # (D, heads, hd)
    q_img = torch.einsum("bthc,dhc->bhtd", q, w_k).flatten(1, 2)  # (B, heads * T, D)
    bias = torch.einsum("bthc,hc->bht", q, _heads(attn.k_proj.bias, heads)).flatten(1)
    s = torch.baddbmm(bias[:, :, None], q_img, image_k.transpose(1, 2))  # (B, heads * T, HW)
    pooled = s.softmax(dim=-1) @ image_v  # sum_t a_t x_t: (B, heads * T, D)
    w_v = attn.v_proj.weight.unflatten(0, (heads, -1))  # (heads, hd, D)
    out = torch.einsum("bhtd,hcd->bthc", pooled.unflatten(1, (heads, t)), w_v)
    out = out + _heads(attn.v_proj.bias, heads)
    return attn.out_proj(out.flatten(-2))


def _self_attention(block: TwoWayAttentionBlock, queries: Tensor, query_pe: Tensor) -> Tensor:
    """The tokens' self-attention of a two-way block on (B, T, D) tokens."""
    if block.skip_first_layer_pe:
        return block.norm1(block.self_attn(queries, queries, queries))
    q = queries + query_pe
    return block.norm1(queries + block.self_attn(q, q, queries))


def _i2t_scores_shared(attn: DecoderAttention, image_q: Tensor, tokens_k: Tensor) -> Tensor:
    """Layer 0's image->token scores: the frame's projected image queries (F, HW, I) against
    each prompt's token keys (F, n, T, I). Returns (F * n, heads * T, HW), scaled.

    One matrix product per prompt with a block-diagonal key matrix (heads * T, I) whose block
    h holds head h's T keys: heads times the multiply-adds of the per-head products (for ViT-B
    4096 x 128 x 56 instead of 8 x 4096 x 16 x 7), but one dense product, faster on the CPU.
    """
    f, n, t = tokens_k.shape[:3]
    heads = attn.num_heads
    k = _heads(tokens_k * (1.0 / math.sqrt(tokens_k.shape[-1] // heads)), heads)
    eye = torch.eye(heads, dtype=k.dtype, device=k.device)
    k_bd = k.transpose(2, 3)[:, :, :, :, None, :] * eye[:, None, :, None]  # (F, n, h, T, h, hd)
    k_bd = k_bd.reshape(f, n, heads * t, -1)  # (F, n, heads * T, I)
    return (k_bd @ image_q.transpose(1, 2)[:, None]).flatten(0, 1)


@torch.no_grad()
def decode_grid_tokens(
    sam: Sam, frames: GridFrames, point_coords: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The two-way transformer and IoU head for n single-point prompts on each of F frames.

    Args:
        sam: the model (prompt encoder and mask decoder are used).
        frames: :func:`prepare_frames` of the F embeddings.
        point_coords: (F, n, 2) XY in the model frame (the 1024 input for the official models),
            one positive point per prompt.

    Returns:
        iou_predictions (F, n, 3) of the multimask outputs, the mask tokens (F, n, 3, D) that
        :func:`upscale_masks` needs, and the image tokens (F, n, HW, D) after the transformer.
    """
    f, n = point_coords.shape[:2]
    iou, mask_tokens, keys = _decode_prompts(sam, frames, point_coords)
    return iou.reshape(f, n, -1), mask_tokens.unflatten(0, (f, n)), keys.unflatten(0, (f, n))


def _decode_prompts(
    sam: Sam, frames: GridFrames, point_coords: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`decode_grid_tokens` with the F * n prompts on one axis: (B, 3) IoU, (B, 3, D) mask
    tokens, (B, HW, D) image tokens (what the exported tokens graph returns: no reshape of
    its largest output, which onnxruntime would copy)."""
    f, n = point_coords.shape[:2]
    if point_coords.shape != (f, n, 2) or f != frames.keys.shape[0]:
        raise ValueError(
            f"expected point_coords ({frames.keys.shape[0]}, n, 2), got {tuple(point_coords.shape)}"
        )
    pe, md = sam.prompt_encoder, sam.mask_decoder
    tr = md.transformer
    labels = torch.ones(f * n, 1, dtype=torch.int64, device=point_coords.device)
    sparse = pe.embed_points(point_coords.reshape(f * n, 1, 2), labels, pad=True)
    out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0).to(sparse.dtype)
    tokens = torch.cat([out_tokens[None].expand(f * n, -1, -1), sparse], dim=1)  # (B, T, D)
    t = tokens.shape[1]
    query_pe = tokens
    key_pe = frames.key_pe  # (1, HW, D)

    # Layer 0: the image tokens are the frame's own; its projections are shared (GridFrames).
    blocks = _blocks(sam)
    first = blocks[0]
    queries = _self_attention(first, tokens, query_pe)
    t2i = first.cross_attn_token_to_image
    q = _heads(t2i.q_proj(queries + query_pe), t2i.num_heads)  # (B, T, heads, hd)
    q = q.reshape(f, n * t, *q.shape[-2:]).transpose(1, 2)  # (F, heads, n*T, hd)
    att = F.scaled_dot_product_attention(q, frames.k0, frames.v0)  # (F, heads, n*T, hd)
    att = att.transpose(1, 2).reshape(f * n, t, -1)
    queries = first.norm2(queries + t2i.out_proj(att))
    queries = first.norm3(queries + first.mlp(queries))
    i2t = first.cross_attn_image_to_token
    token_k = i2t.k_proj(queries + query_pe).reshape(f, n, t, -1)
    scores = _i2t_scores_shared(i2t, frames.q0, token_k)
    # the frame's tokens as every prompt's residual (broadcast, not copied, for one frame)
    residual = frames.keys if f == 1 else frames.keys.repeat_interleave(n, dim=0)
    keys = first.norm4(_image_to_tokens(i2t, scores, i2t.v_proj(queries), residual))

    # Later layers: the image tokens are per prompt; attention is factored onto the tokens.
    for layer in blocks[1:]:
        queries = _self_attention(layer, queries, query_pe)
        keys_pe = keys + key_pe
        a = _t2i_factored(layer.cross_attn_token_to_image, queries + query_pe, keys_pe, keys)
        queries = layer.norm2(queries + a)
        queries = layer.norm3(queries + layer.mlp(queries))
        i2t = layer.cross_attn_image_to_token
        scores = _i2t_scores_factored(i2t, keys_pe, queries + query_pe)
        keys = layer.norm4(_image_to_tokens(i2t, scores, i2t.v_proj(queries), keys))
    a = _t2i_factored(tr.final_attn_token_to_image, queries + query_pe, keys + key_pe, keys)
    queries = tr.norm_final_attn(queries + a)

    iou = md.iou_prediction_head(queries[:, 0])[:, 1:]
    mask_tokens = queries[:, 2 : 1 + md.num_mask_tokens]  # multimask: tokens 1..M-1
    return iou.float(), mask_tokens, keys


@torch.no_grad()
def upscale_masks(sam: Sam, mask_tokens: Tensor, keys: Tensor, grid: tuple[int, int]) -> Tensor:
    """Output upscaling + hypernetwork for P prompts: low-res logits (P, 3, 4h, 4w) float32.

    Args:
        mask_tokens: (P, 3, D) the multimask tokens from :func:`decode_grid_tokens`.
        keys: (P, HW, D) image tokens from :func:`decode_grid_tokens`.
        grid: (h, w) of the image embedding.
    """
    md = sam.mask_decoder
    up1, ln, _, up2, _ = md.output_upscaling
    if not (
        isinstance(up1, torch.nn.ConvTranspose2d)
        and isinstance(up2, torch.nn.ConvTranspose2d)
        and isinstance(ln, LayerNorm2d)
        and up1.bias is not None
        and up2.bias is not None
    ):
        raise ValueError("expected SAM's output upscaling: ConvTranspose2d, LayerNorm2d, ...")
    p = keys.shape[0]
    h, w = grid
    c1, c2 = up1.out_channels, up2.out_channels
    # ConvTranspose2d(k=2, s=2) == per-pixel matmul to (i, j, c_out), channels last.
    w1 = up1.weight.permute(2, 3, 1, 0).reshape(4 * c1, up1.in_channels)
    x = F.linear(keys, w1, up1.bias.repeat(4)).reshape(p, h, w, 2, 2, c1)
    x = F.gelu(F.layer_norm(x, (c1,), ln.weight, ln.bias, ln.eps))
    w2 = up2.weight.permute(2, 3, 1, 0).reshape(4 * c2, c1)
    x = F.gelu(F.linear(x, w2, up2.bias.repeat(4)))
    hyper = torch.stack(
        [
            mlp(mask_tokens[:, i])
            for i, mlp in enumerate(md.output_hypernetworks_mlps[1:])  # multimask tokens
        ],
        dim=1,
    )  # (P, 3, c2)
    m = x.reshape(p, -1, c2) @ hyper.transpose(1, 2)  # (P, h*w*16, 3)
    # Pixel (4y + 2i + k, 4x + 2j + l) of the mask is feature (y, x, i, j, k, l).
    m = m.reshape(p, h, w, 2, 2, 2, 2, -1).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return m.reshape(p, -1, 4 * h, 4 * w).float()


@dataclass
class DecodedPrompts:
    """What :meth:`GridBackend.decode` returns for F frames of n prompts.

    Attributes:
        iou: (F, n, 3) predicted IoU of each prompt's multimask outputs.
        upscaled: (F, n) bool, the prompts whose masks were upscaled (a mask's predicted IoU
            above the threshold).
        low: (upscaled.sum(), 3, 4h, 4w) float32 logits of those prompts, frame by frame and
            prompt by prompt (the order of ``iou[upscaled]``); (h, w) is the embedding grid, or
            ``valid_tokens`` when :meth:`GridBackend.decode` was given it.
    """

    iou: Tensor
    upscaled: Tensor
    low: Tensor


class GridBackend:
    """Runs :func:`decode_grid_tokens` and :func:`upscale_masks` (the per-prompt work of
    :func:`moca_rt.proposals.grid_proposals_batch`); this base class runs them on torch.

    Args:
        prompts_per_call: prompts per run of the transformer (:meth:`decode` splits the
            caller's batches); None: on the CPU as many as keep a run's image tokens within
            8 MiB (2 prompts for the 1024 models, whose tokens take 4 MiB a prompt; 64 for
            ``sam_synth``), on a GPU the caller's whole batch.
            Small runs keep the tensors in the CPU's caches and spare the page faults of large
            allocations: SAM ViT-B on 2 cores, eager torch took 18.4 ms a prompt at 2 prompts
            per run against 27.5 at 32 (the batches before); onnxruntime 11.8 ms at 1-2 and
            12.5 at 4-8.
    """

    name = "torch"

    def __init__(self, prompts_per_call: int | None = None) -> None:
        if prompts_per_call is not None and prompts_per_call < 1:
            raise ValueError(f"expected prompts_per_call >= 1, got {prompts_per_call}")
        self.prompts_per_call = prompts_per_call

    def _step(self, keys: Tensor, prompts: int) -> int:
        """Prompts per run for image tokens ``keys`` (..., HW, D) and ``prompts`` to decode:
        ``prompts_per_call``; else on the CPU as many as keep a run within 8 MiB of image
        tokens, and elsewhere all of them (a GPU wants large runs, not cache-sized ones)."""
        if self.prompts_per_call is not None:
            return self.prompts_per_call
        if keys.device.type != "cpu":
            return max(1, prompts)
        return max(1, _RUN_BYTES // (keys.shape[-2] * keys.shape[-1] * 4))

    def tokens(self, sam: Sam, frames: GridFrames, point_coords: Tensor) -> tuple[Tensor, ...]:
        """:func:`decode_grid_tokens`."""
        return decode_grid_tokens(sam, frames, point_coords)

    def upscale(self, sam: Sam, mask_tokens: Tensor, keys: Tensor, grid: tuple[int, int]) -> Tensor:
        """:func:`upscale_masks`."""
        return upscale_masks(sam, mask_tokens, keys, grid)

    def decode(
        self,
        sam: Sam,
        frames: GridFrames,
        point_coords: Tensor,
        iou_thresh: float,
        upscale_batch: int = 16,
        valid_tokens: tuple[int, int] | None = None,
    ) -> DecodedPrompts:
        """:meth:`tokens` for (F, n, 2) prompts, then :meth:`upscale` for the prompts with a mask
        whose predicted IoU is above ``iou_thresh``: run by run (``prompts_per_call`` prompts
        of every frame), at most ``upscale_batch`` prompts per upscaling call (about 8 MB a
        prompt for the 1024 models).

        ``valid_tokens`` (rows, columns): upscale only the first rows and columns of the
        embedding grid (the ones covering the frames; the padding of a non-square frame is
        cut, e.g. 36 of 64 rows for 16:9). The upscaling works token by token, so the logits
        are the full ones cropped to (4 rows, 4 columns).
        """
        f, n = point_coords.shape[:2]
        grid = valid_tokens or frames.grid
        step = max(1, self._step(frames.keys, f * n) // f)
        ious, upscaled = [], []
        per_frame: list[list[Tensor]] = [[] for _ in range(f)]
        for start in range(0, n, step):
            iou, mask_tokens, keys = self.tokens(sam, frames, point_coords[:, start : start + step])
            need = (iou > iou_thresh).any(dim=-1)  # (F, c)
            ious.append(iou)
            upscaled.append(need)
            if not bool(need.any()):
                continue
            toks, img = mask_tokens[need], _valid_tokens(keys[need], frames.grid, grid)
            low = torch.cat(
                [
                    self.upscale(sam, toks[i : i + upscale_batch], img[i : i + upscale_batch], grid)
                    for i in range(0, toks.shape[0], upscale_batch)
                ]
            )
            for rows, frame in zip(low.split(need.sum(dim=1).tolist()), per_frame, strict=True):
                frame.append(rows)
        iou_all = torch.cat(ious, dim=1)
        low_all = _joined_logits([r for frame in per_frame for r in frame], iou_all, grid)
        return DecodedPrompts(iou_all, torch.cat(upscaled, dim=1), low_all)


def _valid_tokens(keys: Tensor, grid: tuple[int, int], valid: tuple[int, int]) -> Tensor:
    """Image tokens (P, h * w, D) of the ``grid`` cut to its first ``valid`` rows and columns."""
    if tuple(valid) == tuple(grid):
        return keys
    return keys.unflatten(1, grid)[:, : valid[0], : valid[1]].flatten(1, 2)


def _joined_logits(low: list[Tensor], iou: Tensor, grid: tuple[int, int]) -> Tensor:
    """Upscaled logits of several runs as one tensor ((0, 3, 4h, 4w) when none ran)."""
    if low:
        return torch.cat(low)
    return torch.zeros(0, iou.shape[-1], 4 * grid[0], 4 * grid[1], device=iou.device)


class _TokensUnit(torch.nn.Module):
    """:func:`_decode_prompts` as a module of plain tensors (the exported graph)."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = sam

    def forward(
        self, keys: Tensor, key_pe: Tensor, k0: Tensor, v0: Tensor, q0: Tensor, coords: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        return _decode_prompts(self.sam, GridFrames(keys, key_pe, k0, v0, q0, (0, 0)), coords)


class _UpscaleUnit(torch.nn.Module):
    """:func:`upscale_masks` on image tokens laid out (P, h, w, D), as a module (the exported
    graph; h and w are dynamic: the whole embedding grid or its first rows and columns)."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, mask_tokens: Tensor, keys: Tensor) -> Tensor:
        grid = (keys.shape[1], keys.shape[2])
        return upscale_masks(self.sam, mask_tokens, keys.flatten(1, 2), grid)


def export_grid_decoder(sam: Sam, folder: Path) -> tuple[Path, Path]:
    """Export the factored decoder of ``sam`` (fp32, CPU) as two ONNX graphs into ``folder``:
    ``sam_grid_tokens_fp32.onnx`` (one frame, dynamic prompts) and ``sam_grid_upscale_fp32.onnx``
    (dynamic prompts, rows and columns of image tokens). Returns their paths."""

    from moca_rt.engines import names

    param = next(sam.parameters())
    device, dtype = param.device, param.dtype
    sam = sam.to("cpu", torch.float32).eval()
    folder.mkdir(parents=True, exist_ok=True)
    h, w = (int(side) for side in sam.prompt_encoder.image_embedding_size)
    frames = prepare_frames(sam, torch.randn(1, sam.prompt_encoder.embed_dim, h, w))
    coords = torch.rand(1, 5, 2) * sam.image_size
    tokens_path, upscale_path = folder / GRID_TOKENS_FILE, folder / GRID_UPSCALE_FILE
    _, mask_tokens, keys = _decode_prompts(sam, frames, coords)
    # a crop whose rows and columns differ, so that the export keeps both dynamic
    cropped = keys.unflatten(1, (h, w))[:, :, : max(1, w * 3 // 4)].contiguous()
    prompts = torch.export.Dim.DYNAMIC
    exports = (
        (
            _TokensUnit(sam),
            (frames.keys, frames.key_pe, frames.k0, frames.v0, frames.q0, coords),
            tokens_path,
            names.GRID_TOKENS_INPUTS,
            names.GRID_TOKENS_OUTPUTS,
            (None, None, None, None, None, {1: prompts}),
        ),
        (
            _UpscaleUnit(sam),
            (mask_tokens, cropped),
            upscale_path,
            names.GRID_UPSCALE_INPUTS,
            names.GRID_UPSCALE_OUTPUTS,
            ({0: prompts}, {0: prompts, 1: prompts, 2: prompts}),
        ),
    )
    with quiet_export():
        for module, args, path, ins, outs, axes in exports:
            torch.onnx.export(
                module.eval(),
                args,
                str(path),
                input_names=list(ins),
                output_names=list(outs),
                dynamic_shapes=axes,
                opset_version=GRID_OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    sam.to(device, dtype)
    return tokens_path, upscale_path


class OrtGridBackend(GridBackend):
    """The factored decoder's two graphs (:func:`export_grid_decoder`) on onnxruntime's CPU
    provider: same outputs up to float rounding, fewer and fused kernels than eager torch
    (its layer norms, GELUs and softmaxes are memory-bound at one prompt's 4096 x 256 tokens).

    Args:
        folder: holds :data:`GRID_TOKENS_FILE` and :data:`GRID_UPSCALE_FILE`.
        intra_op_threads: onnxruntime's intra-op threads (0: its choice).
        prompts_per_call: prompts per graph run (see :class:`GridBackend`).

    onnxruntime's ``SkipLayerNormFusion`` is turned off for the tokens graph: it fused a residual
    add with its layer norm into one kernel that took 10 ms where the two took 2.5.
    """

    name = "onnxruntime"

    def __init__(
        self, folder: Path, intra_op_threads: int = 0, prompts_per_call: int | None = None
    ) -> None:
        from moca_rt.engines import names
        from moca_rt.engines.ort import OrtEngine

        super().__init__(prompts_per_call)
        self._tokens = OrtEngine(
            folder / GRID_TOKENS_FILE,
            input_names=names.GRID_TOKENS_INPUTS,
            output_names=names.GRID_TOKENS_OUTPUTS,
            intra_op_threads=intra_op_threads,
            disabled_optimizers=("SkipLayerNormFusion",),
        )
        self._upscale = OrtEngine(
            folder / GRID_UPSCALE_FILE,
            input_names=names.GRID_UPSCALE_INPUTS,
            output_names=names.GRID_UPSCALE_OUTPUTS,
            intra_op_threads=intra_op_threads,
        )
        self.provider = self._tokens.provider

    def _token_feeds(self, frames: GridFrames, f: int, coords: Tensor) -> dict[str, Tensor]:
        """The tokens graph's inputs for frame ``f`` and its (1, c, 2) prompts."""
        from moca_rt.engines import names

        feeds = (
            frames.keys[f : f + 1],
            frames.key_pe,
            frames.k0[f : f + 1],
            frames.v0[f : f + 1],
            frames.q0[f : f + 1],
            coords,
        )
        return {
            n: t.float().contiguous() for n, t in zip(names.GRID_TOKENS_INPUTS, feeds, strict=True)
        }

    def _prompt_runs(self, frames: GridFrames, point_coords: Tensor) -> Iterator[dict[str, Tensor]]:
        """The tokens graph run on each frame's prompts, :meth:`_step` at a time (the graph
        takes one frame, its export example), frame by frame."""
        step = self._step(frames.keys, point_coords.shape[1])
        for f in range(point_coords.shape[0]):
            for start in range(0, point_coords.shape[1], step):
                coords = point_coords[f : f + 1, start : start + step]
                yield self._tokens(self._token_feeds(frames, f, coords))

    def tokens(self, sam: Sam, frames: GridFrames, point_coords: Tensor) -> tuple[Tensor, ...]:
        from moca_rt.engines import names

        f, n = point_coords.shape[:2]
        runs = list(self._prompt_runs(frames, point_coords))
        return tuple(
            torch.cat([r[name] for r in runs]).unflatten(0, (f, n)).to(point_coords.device)
            for name in names.GRID_TOKENS_OUTPUTS
        )

    def _upscale_run(self, mask_tokens: Tensor, keys: Tensor) -> Tensor:
        """The upscaling graph on (P, 3, D) mask tokens and (P, h, w, D) image tokens."""
        from moca_rt.engines import names

        feeds = dict(zip(names.GRID_UPSCALE_INPUTS, (mask_tokens, keys), strict=True))
        out = self._upscale({n: t.float().contiguous() for n, t in feeds.items()})
        return out[names.LOW_RES_MASKS]

    def upscale(self, sam: Sam, mask_tokens: Tensor, keys: Tensor, grid: tuple[int, int]) -> Tensor:
        step = self._step(keys, keys.shape[0])
        keys = keys.unflatten(1, grid)
        outs = [
            self._upscale_run(mask_tokens[i : i + step], keys[i : i + step])
            for i in range(0, keys.shape[0], step)
        ]
        return torch.cat(outs).to(keys.device)

    def decode(
        self,
        sam: Sam,
        frames: GridFrames,
        point_coords: Tensor,
        iou_thresh: float,
        upscale_batch: int = 16,
        valid_tokens: tuple[int, int] | None = None,
    ) -> DecodedPrompts:
        """:meth:`GridBackend.decode`, streamed: each tokens run's prompts go straight to the
        upscaling graph (``upscale_batch`` is not used), so that only one run's image tokens
        (4 MB a prompt for the 1024 models) exist at once and none is copied between graphs."""
        from moca_rt.engines import names

        iou_name, tokens_name, keys_name = names.GRID_TOKENS_OUTPUTS
        rows, cols = grid = valid_tokens or frames.grid
        ious, upscaled, low = [], [], []
        for run in self._prompt_runs(frames, point_coords):
            iou = run[iou_name]  # (c, 3)
            need = (iou > iou_thresh).any(dim=-1)
            ious.append(iou)
            upscaled.append(need)
            keys = run[keys_name].unflatten(1, frames.grid)[:, :rows, :cols]
            if bool(need.all()):
                low.append(self._upscale_run(run[tokens_name], keys))
            elif bool(need.any()):
                low.append(self._upscale_run(run[tokens_name][need], keys[need]))
        f, n = point_coords.shape[:2]
        device = point_coords.device
        iou_all = torch.cat(ious).reshape(f, n, -1).to(device)
        low_all = _joined_logits(low, iou_all, grid).to(device)
        return DecodedPrompts(iou_all, torch.cat(upscaled).reshape(f, n).to(device), low_all)
