"""DINO ViT (our own modules, checkpoint-compatible with the official ``vision_transformer.py``).

Used as the featuriser of the kNN pairing table (DESIGN sections 2 and 4). The architecture is
the official ``vit_base(patch_size=16, num_classes=0)`` (or any width/depth in
:class:`~moca_rt.config.DinoConfig`):

* patch embed ``Conv2d(3, D, p, stride=p)`` with bias, flattened row-major, CLS prepended, plus
  the learned positional table ``pos_embed [1, 1 + (224/p)^2, D]``;
* pre-norm blocks ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``; ``qkv`` is one Linear with bias
  (q, k, v stacked, heads contiguous chunks of D), scale ``head_dim^-0.5``, exact GELU MLP;
  LayerNorms eps 1e-6 (the hub builders' ``partial(LayerNorm, eps=1e-6)``);
* a final ``norm``; the model output is the CLS token after it (the head is the identity).

Attention runs through ``scaled_dot_product_attention``. Inputs whose size is not the training
size get an interpolated positional table computed exactly as the original does (see
:meth:`DinoViT.interpolate_pos_encoding`): bicubic with a *scale factor*, not a target size.

Key names are the official ones, so :func:`load_dino` loads the hub files (e.g.
``dino_vitbase16_pretrain.pth``) strictly without a rename map.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moca_rt.checkpoints import load_strict, read_state_dict
from moca_rt.config import DinoConfig
from moca_rt.modeling.imagebind import Mlp

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LN_EPS",
    "DinoAttention",
    "DinoBlock",
    "DinoIntermediates",
    "DinoViT",
    "load_dino",
    "preprocess_dino",
]

LN_EPS = 1e-6
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The original adds 0.1 to the target grid before dividing, to dodge floating-point floor errors
# in the output size; PyTorch then uses these factors in its coordinate mapping as well.
_INTERP_OFFSET = 0.1


class DinoAttention(nn.Module):
    """Multi-head self-attention with one ``qkv`` Linear (bias) and an output ``proj``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed_dim must be divisible by num_heads, got {dim} and {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, L, D] -> [B, L, D]."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DinoBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = DinoAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))  # same fc1/GELU/fc2 as ImageBind's

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """``Conv2d(3, D, p, stride=p)`` with bias; [B, 3, H, W] -> [B, (H//p)*(W//p), D] row-major."""

    def __init__(self, patch_size: int, dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


@dataclass(frozen=True)
class DinoIntermediates:
    """Every stage of one forward pass (the stages the reference fixtures store).

    Attributes:
        tokens_in: [B, 1 + h*w, D] patch tokens + CLS + (interpolated) pos-embed, before block 0.
        blocks: one [B, 1 + h*w, D] raw output per block.
        tokens_normed: [B, 1 + h*w, D] last block's tokens after the final LayerNorm.
        cls: [B, D] ``tokens_normed[:, 0]``, the model output.
    """

    tokens_in: Tensor
    blocks: tuple[Tensor, ...]
    tokens_normed: Tensor
    cls: Tensor


class DinoViT(nn.Module):
    """DINO Vision Transformer backbone (``num_classes=0``: the head is the identity).

    Token layout: index 0 is CLS, then the (H//p) x (W//p) patches in row-major order.
    """

    def __init__(self, config: DinoConfig) -> None:
        super().__init__()
        if config.image_size % config.patch_size != 0:
            raise ValueError(
                f"image_size must be a multiple of patch_size, got {config.image_size} and "
                f"{config.patch_size}"
            )
        self.config = config
        d = config.embed_dim
        grid = config.image_size // config.patch_size
        self.patch_embed = PatchEmbed(config.patch_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, d))
        self.blocks = nn.ModuleList(
            DinoBlock(d, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(d, eps=LN_EPS)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def interpolate_pos_encoding(self, height: int, width: int) -> Tensor:
        """Positional table for an input of ``height x width`` pixels: [1, 1 + h*w, D].

        As the original: unchanged when the patch count equals the table's and ``height ==
        width``; otherwise the square patch table (side ``s = sqrt(N)``) is resized with
        ``F.interpolate(mode="bicubic", align_corners=False, scale_factor=((height//p + 0.1)/s,
        (width//p + 0.1)/s))``, whose output grid is ``(height//p, width//p)`` and whose
        coordinate mapping uses those factors (not the size ratio). The CLS entry is unchanged.
        """
        p = self.config.patch_size
        h, w = height // p, width // p
        num_table = self.pos_embed.shape[1] - 1
        if h * w == num_table and height == width:
            return self.pos_embed
        side = int(math.sqrt(num_table))
        if side * side != num_table:
            raise ValueError(f"pos_embed: expected a square patch table, got {num_table} entries")
        cls_pos = self.pos_embed[:, :1]
        table = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        table = F.interpolate(
            table,
            scale_factor=((h + _INTERP_OFFSET) / side, (w + _INTERP_OFFSET) / side),
            mode="bicubic",
            align_corners=False,
        )
        if tuple(table.shape[-2:]) != (h, w):
            raise ValueError(
                f"pos_embed interpolation: expected a {h}x{w} grid, got {tuple(table.shape[-2:])}"
            )
        table = table.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat((cls_pos, table), dim=1)

    def prepare_tokens(self, images: Tensor) -> Tensor:
        """images: float [B, 3, H, W] (ImageNet-normalised) -> tokens [B, 1 + h*w, D]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected [B, 3, H, W], got {tuple(images.shape)}")
        p = self.config.patch_size
        height, width = images.shape[-2:]
        if height < p or width < p:
            raise ValueError(f"images: expected H, W >= patch size {p}, got {height}x{width}")
        x = self.patch_embed(images)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        return x + self.interpolate_pos_encoding(int(height), int(width))

    def forward_intermediates(self, images: Tensor) -> DinoIntermediates:
        """All stages for images [B, 3, H, W]; see :class:`DinoIntermediates`."""
        x = self.prepare_tokens(images)
        tokens_in = x
        outs = []
        for blk in self.blocks:
            x = blk(x)
            outs.append(x)
        normed = self.norm(x)
        return DinoIntermediates(tokens_in, tuple(outs), normed, normed[:, 0])

    def forward_tokens(self, images: Tensor) -> Tensor:
        """All tokens after the final LayerNorm: [B, 1 + h*w, D] (the original's
        ``get_intermediate_layers(x, n=1)[0]``)."""
        x = self.prepare_tokens(images)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, images: Tensor) -> Tensor:
        """images: float [B, 3, H, W], ImageNet-normalised RGB -> CLS feature [B, D]."""
        return self.forward_tokens(images)[:, 0]


def preprocess_dino(images: np.ndarray | Tensor) -> Tensor:
    """uint8 RGB [H, W, 3] or [B, H, W, 3] -> float32 [B, 3, H, W] DINO input.

    ToTensor (divide by 255), then subtract the ImageNet mean and divide by the ImageNet std, in
    that order in fp32 (bit for bit the torchvision ``ToTensor`` + ``Normalize`` result). No
    resize: DINO interpolates its positional table for any size. A tensor keeps its device.
    """
    t = images if isinstance(images, Tensor) else torch.from_numpy(np.array(images, copy=True))
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dtype != torch.uint8 or t.dim() != 4 or t.shape[-1] != 3:
        raise ValueError(
            f"images: expected uint8 [H, W, 3] or [B, H, W, 3] RGB, got dtype {t.dtype} shape "
            f"{tuple(images.shape)}"
        )
    x = t.permute(0, 3, 1, 2).to(torch.float32).div(255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device)[:, None, None]
    return (x - mean) / std


def load_dino(
    source: str | Path | Mapping[str, Tensor],
    config: DinoConfig,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> DinoViT:
    """Build a DINO ViT on the meta device and load official weights strictly.

    Args:
        source: path to an official backbone file (``dino_vitbase16_pretrain.pth``) or a
            ``.safetensors`` file with the same key names, or such a state dict.
        config: sizes, e.g. ``DINO_PRESETS["dino_vitb16"]``.
        device, dtype: where the loaded model goes (default: where the tensors are, their dtype).

    Returns:
        the model in eval mode.

    Raises:
        CheckpointMismatchError: naming missing/unexpected keys and shape mismatches (e.g. a
            full training checkpoint with ``teacher``/``student`` prefixes, or another width).
    """
    state_dict = read_state_dict(source) if isinstance(source, str | Path) else source
    with torch.device("meta"):
        model = DinoViT(config)
    load_strict(model, state_dict, f"DINO ViT (embed_dim {config.embed_dim}, depth {config.depth})")
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval()
