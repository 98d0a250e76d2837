"""ImageBind vision and audio encoders (our own modules, checkpoint-compatible with the original).

Only the two modalities MoCA uses are built. Each encoder is preprocessor (stem, CLS token,
positional table) + trunk (pre-LN transformer blocks) + head (LayerNorm, CLS, Linear without
bias) + postprocessor, matching the official ``imagebind_huge`` modules:

* Vision: the image is conceptually repeated to 2 frames and fed to a Conv3d with kernel =
  stride = (2, p, p). For a still image that equals a Conv2d with the kernel summed over time,
  which is what we run; the loader sums the official 5-D weight. A LayerNorm (eps 1e-6) runs
  before the blocks. Postprocessor: L2 normalisation.
* Audio: Conv2d(1, D, k, s) over the (128 mel x 204 frame) fbank, flattened mel-major, then a
  LayerNorm with eps **1e-5**. Blocks carry a learned ``bias_k``/``bias_v`` (one extra key and
  value at the end of the key sequence). Postprocessor: L2 normalise, multiply by
  ``clip(exp(log_logit_scale), max=100)`` (20 for the official weights), mean over the S clips,
  so the audio embedding has a norm of about 20, not 1.

Attention is ``scaled_dot_product_attention`` with the q/k/v layout of ``nn.MultiheadAttention``
(``in_proj_weight`` stacks q, k, v; heads are contiguous chunks of the width). Token tensors are
batch-first ``[B, L, D]`` everywhere; the original's sequence-first layout is only a transpose.

The frozen encoders never use drop path (the official audio trunk's drop path is identity in
eval mode, and MoCA never trains ImageBind), so ``AudioTrunkConfig.drop_path`` is kept only as a
record of the official constructor.

Checkpoints: :func:`load_imagebind` reads the official ``imagebind_huge.pth`` (or a safetensors
file / state dict with the same key names), keeps the vision and audio keys, skips the other
modalities by an explicit allow-list and renames through the one map :data:`OFFICIAL_TO_OURS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moca_rt.checkpoints import CheckpointMismatchError, load_strict, read_state_dict
from moca_rt.config import AudioTrunkConfig, ImageBindConfig, VisionTrunkConfig

__all__ = [
    "OFFICIAL_TO_OURS",
    "SKIPPED_PREFIXES",
    "ImageBindAudio",
    "ImageBindBlock",
    "ImageBindVision",
    "ImageBindVisionAudio",
    "Mlp",
    "MultiheadSelfAttention",
    "config_from_official_kwargs",
    "convert_official_state_dict",
    "interpolate_pos_embed",
    "load_imagebind",
    "official_key_layout",
]

BLOCK_LN_EPS = 1e-6
AUDIO_STEM_LN_EPS = 1e-5
MAX_LOGIT_SCALE = 100.0

# The one rename map: official prefix -> our prefix (longest official prefixes first).
OFFICIAL_TO_OURS: tuple[tuple[str, str], ...] = (
    ("modality_preprocessors.vision.rgbt_stem.proj.1.", "vision.stem."),
    ("modality_preprocessors.vision.cls_token", "vision.cls_token"),
    ("modality_preprocessors.vision.pos_embedding_helper.pos_embed", "vision.pos_embed"),
    ("modality_trunks.vision.pre_transformer_layer.0.", "vision.pre_norm."),
    ("modality_trunks.vision.blocks.", "vision.blocks."),
    ("modality_heads.vision.0.", "vision.head_norm."),
    ("modality_heads.vision.2.", "vision.head_proj."),
    ("modality_preprocessors.audio.rgbt_stem.proj.", "audio.stem."),
    ("modality_preprocessors.audio.rgbt_stem.norm_layer.", "audio.stem_norm."),
    ("modality_preprocessors.audio.cls_token", "audio.cls_token"),
    ("modality_preprocessors.audio.pos_embedding_helper.pos_embed", "audio.pos_embed"),
    ("modality_trunks.audio.blocks.", "audio.blocks."),
    ("modality_heads.audio.0.", "audio.head_norm."),
    ("modality_heads.audio.2.", "audio.head_proj."),
    ("modality_postprocessors.audio.1.log_logit_scale", "audio.log_logit_scale"),
)

# Keys of the modalities we never build; the loader drops them (and only them).
SKIPPED_PREFIXES: tuple[str, ...] = tuple(
    f"{part}.{modality}."
    for part in (
        "modality_preprocessors",
        "modality_trunks",
        "modality_heads",
        "modality_postprocessors",
    )
    for modality in ("text", "depth", "thermal", "imu")
)

_VISION_STEM_KEY = "modality_preprocessors.vision.rgbt_stem.proj.1.weight"


def config_from_official_kwargs(kwargs: Mapping[str, object]) -> ImageBindConfig:
    """Map the official ``ImageBindModel(**kwargs)`` constructor arguments to our config.

    Args:
        kwargs: the official keyword arguments (e.g. ``config.json["kwargs"]`` of the reference
            fixtures); missing ones take the ``imagebind_huge`` defaults. Only the vision and
            audio arguments are read.
    """

    def num(name: str, default: float) -> float:
        value = kwargs.get(name, default)
        if not isinstance(value, int | float):
            raise ValueError(f"expected a number for {name}, got {value!r}")
        return value

    v = VisionTrunkConfig()
    a = AudioTrunkConfig()
    kernel = kwargs.get("kernel_size", (v.video_frames, v.patch_size, v.patch_size))
    if not isinstance(kernel, list | tuple) or len(kernel) != 3 or kernel[1] != kernel[2]:
        raise ValueError(f"expected kernel_size (T, p, p), got {kernel!r}")
    frames = int(num("video_frames", v.video_frames))
    if int(kernel[0]) != frames:
        raise ValueError(
            f"expected the temporal kernel to equal video_frames ({frames}), got {kernel[0]}"
        )
    vision = VisionTrunkConfig(
        embed_dim=int(num("vision_embed_dim", v.embed_dim)),
        num_blocks=int(num("vision_num_blocks", v.num_blocks)),
        num_heads=int(num("vision_num_heads", v.num_heads)),
        patch_size=int(kernel[1]),
        video_frames=frames,
    )
    audio = AudioTrunkConfig(
        embed_dim=int(num("audio_embed_dim", a.embed_dim)),
        num_blocks=int(num("audio_num_blocks", a.num_blocks)),
        num_heads=int(num("audio_num_heads", a.num_heads)),
        kernel_size=int(num("audio_kernel_size", a.kernel_size)),
        stride=int(num("audio_stride", a.stride)),
        num_mel_bins=int(num("audio_num_mel_bins", a.num_mel_bins)),
        target_len=int(num("audio_target_len", a.target_len)),
        drop_path=float(num("audio_drop_path", a.drop_path)),
    )
    return ImageBindConfig(
        vision=vision,
        audio=audio,
        out_embed_dim=int(num("out_embed_dim", ImageBindConfig.out_embed_dim)),
    )


class MultiheadSelfAttention(nn.Module):
    """Self-attention with the parameters and maths of ``nn.MultiheadAttention``.

    ``in_proj_weight`` [3D, D] stacks the q, k and v projections; head h uses channels
    ``[h * D / H, (h + 1) * D / H)``; scale 1/sqrt(D / H). With ``add_bias_kv`` the learned
    ``bias_k``/``bias_v`` [1, 1, D] are appended after the projection as one extra key/value at
    the end of the key sequence (L + 1 keys, L queries).
    """

    def __init__(self, dim: int, num_heads: int, add_bias_kv: bool = False) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"expected dim divisible by num_heads, got {dim} and {num_heads}")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.bias_k: nn.Parameter | None = None
        self.bias_v: nn.Parameter | None = None
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, dim))
            self.bias_v = nn.Parameter(torch.empty(1, 1, dim))
        self.out_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)
        if self.bias_k is not None and self.bias_v is not None:
            nn.init.normal_(self.bias_k, std=0.02)
            nn.init.normal_(self.bias_v, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, L, D] -> [B, L, D]."""
        b, n, d = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.to(k.dtype).expand(b, 1, d)], dim=1)
            v = torch.cat([v, self.bias_v.to(v.dtype).expand(b, 1, d)], dim=1)
        h = self.num_heads
        q = q.reshape(b, n, h, d // h).transpose(1, 2)
        k = k.reshape(b, -1, h, d // h).transpose(1, 2)
        v = v.reshape(b, -1, h, d // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """``fc1`` -> exact GELU -> ``fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ImageBindBlock(nn.Module):
    """Pre-LN block: ``x + attn(norm_1(x))`` then ``x + mlp(norm_2(x))`` (LayerNorm eps 1e-6).

    The two residual steps are exposed separately (:meth:`attention_residual`,
    :meth:`mlp_residual`) so that MoCA can add its adapter after each of them.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, add_bias_kv: bool) -> None:
        super().__init__()
        self.attn = MultiheadSelfAttention(dim, num_heads, add_bias_kv=add_bias_kv)
        self.norm_1 = nn.LayerNorm(dim, eps=BLOCK_LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_2 = nn.LayerNorm(dim, eps=BLOCK_LN_EPS)

    def attention_residual(self, x: Tensor) -> Tensor:
        """``x + attn(norm_1(x))``, x: [B, L, D]."""
        return x + self.attn(self.norm_1(x))

    def mlp_residual(self, x: Tensor) -> Tensor:
        """``x + mlp(norm_2(x))``, x: [B, L, D]."""
        return x + self.mlp(self.norm_2(x))

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, L, D] -> [B, L, D]."""
        return self.mlp_residual(self.attention_residual(x))


def interpolate_pos_embed(pos_embed: Tensor, num_patches: int) -> Tensor:
    """Resize a [1, 1 + N, D] table (CLS first, square N-patch grid) to ``num_patches`` patches.

    As the original: the patch part is reshaped to a sqrt(N) x sqrt(N) grid and bicubically
    interpolated with ``scale_factor = sqrt(num_patches / N)`` (align_corners=False), in fp32;
    the CLS entry is kept. ``num_patches`` must be a square number.
    """
    n = pos_embed.shape[1] - 1
    if num_patches == n:
        return pos_embed
    side = math.isqrt(n)
    new_side = math.isqrt(num_patches)
    if side * side != n or new_side * new_side != num_patches:
        raise ValueError(
            f"expected square patch grids for pos-embed interpolation, got {n} -> {num_patches}"
        )
    dim = pos_embed.shape[-1]
    grid = pos_embed[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=math.sqrt(num_patches / n), mode="bicubic")
    if grid.shape[-1] != new_side:
        raise ValueError(f"expected a {new_side}x{new_side} grid, got {tuple(grid.shape[-2:])}")
    patches = grid.permute(0, 2, 3, 1).reshape(1, num_patches, dim).to(pos_embed.dtype)
    return torch.cat([pos_embed[:, :1], patches], dim=1)


def _record(stages: dict[str, Tensor] | None, name: str, value: Tensor) -> None:
    if stages is not None:
        stages[name] = value


class ImageBindVision(nn.Module):
    """ImageBind vision encoder: stem, CLS + pos-embed, pre-LN, blocks, head, L2 normalisation.

    Input images are [B, 3, H, W] float, CLIP-normalised RGB, H == W (224 for the official
    positional table; other square sizes interpolate it). Patch tokens are row-major over the
    (H/p) x (W/p) grid, CLS at index 0.
    """

    def __init__(self, config: VisionTrunkConfig, out_embed_dim: int) -> None:
        super().__init__()
        if config.video_frames < 1:
            raise ValueError(f"expected video_frames >= 1, got {config.video_frames}")
        self.config = config
        d, p = config.embed_dim, config.patch_size
        self.grid_size = config.image_size // p
        # Conv3d(k=(T,p,p), s=(T,p,p)) on T repeated frames == Conv2d with the time-summed kernel.
        self.stem = nn.Conv2d(3, d, kernel_size=p, stride=p, bias=False)
        self.cls_token = nn.Parameter(torch.empty(1, 1, d))
        self.pos_embed = nn.Parameter(torch.empty(1, 1 + self.grid_size**2, d))
        self.pre_norm = nn.LayerNorm(d, eps=BLOCK_LN_EPS)
        self.blocks = nn.ModuleList(
            ImageBindBlock(d, config.num_heads, config.mlp_ratio, add_bias_kv=False)
            for _ in range(config.num_blocks)
        )
        self.head_norm = nn.LayerNorm(d, eps=BLOCK_LN_EPS)
        self.head_proj = nn.Linear(d, out_embed_dim, bias=False)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    def _check(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h != w:
            raise ValueError(
                f"expected a square image (ImageBind's pos-embed interpolates only square "
                f"grids), got H x W = {h} x {w}"
            )
        if h < self.config.patch_size:
            raise ValueError(f"expected H, W >= {self.config.patch_size}, got {h}")

    def embed(self, images: Tensor, stages: dict[str, Tensor] | None = None) -> Tensor:
        """Stem + CLS + pos-embed + pre-transformer LayerNorm: [B, 3, H, W] -> [B, 1 + N, D]."""
        self._check(images)
        x = self.stem(images).flatten(2).transpose(1, 2)
        _record(stages, "stem_out", x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + interpolate_pos_embed(self.pos_embed, x.shape[1] - 1)
        _record(stages, "tokens_in", x)
        x = self.pre_norm(x)
        _record(stages, "pre_transformer_out", x)
        return x

    def head(self, tokens: Tensor, stages: dict[str, Tensor] | None = None) -> Tensor:
        """Head + postprocessor: trunk tokens [B, L, D] -> unit-norm embedding [B, E]."""
        normed = self.head_norm(tokens)
        _record(stages, "head_ln_tokens", normed)
        out = self.head_proj(normed[:, 0])
        _record(stages, "head_out", out)
        emb = F.normalize(out, dim=-1)
        _record(stages, "post_out_per_clip", emb)
        _record(stages, "embedding", emb)
        return emb

    def forward(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] -> L2-normalised vision embedding [B, E]."""
        x = self.embed(images)
        for blk in self.blocks:
            x = blk(x)
        return self.head(x)

    def forward_stages(self, images: Tensor) -> dict[str, Tensor]:
        """Every stage the reference fixtures store, batch-first.

        Keys: ``stem_out`` [B, N, D], ``tokens_in`` / ``pre_transformer_out`` / ``blockNN`` /
        ``head_ln_tokens`` [B, 1 + N, D], ``head_out`` / ``post_out_per_clip`` / ``embedding``
        [B, E].
        """
        stages: dict[str, Tensor] = {}
        x = self.embed(images, stages)
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            stages[f"block{i:02d}"] = x
        self.head(x, stages)
        return stages


class ImageBindAudio(nn.Module):
    """ImageBind audio encoder: Conv2d stem + LN(1e-5), CLS + pos-embed, blocks, head, scaling.

    Input fbank is [B, S, 1, num_mel_bins, target_len] float (S clips per sample, normalised
    kaldi fbank, mel rows x time columns). Patch tokens are mel-major over the conv grid.
    """

    log_logit_scale: Tensor

    def __init__(self, config: AudioTrunkConfig, out_embed_dim: int, logit_scale: float) -> None:
        super().__init__()
        self.config = config
        d, k, s = config.embed_dim, config.kernel_size, config.stride
        self.grid = ((config.num_mel_bins - k) // s + 1, (config.target_len - k) // s + 1)
        self.stem = nn.Conv2d(1, d, kernel_size=k, stride=s, bias=False)
        self.stem_norm = nn.LayerNorm(d, eps=AUDIO_STEM_LN_EPS)
        self.cls_token = nn.Parameter(torch.empty(1, 1, d))
        self.pos_embed = nn.Parameter(torch.empty(1, 1 + self.grid[0] * self.grid[1], d))
        self.blocks = nn.ModuleList(
            ImageBindBlock(d, config.num_heads, config.mlp_ratio, add_bias_kv=True)
            for _ in range(config.num_blocks)
        )
        self.head_norm = nn.LayerNorm(d, eps=BLOCK_LN_EPS)
        self.head_proj = nn.Linear(d, out_embed_dim, bias=False)
        self.register_buffer("log_logit_scale", torch.tensor(math.log(logit_scale)))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    @property
    def num_tokens(self) -> int:
        """Tokens per clip, CLS included (229 for the official sizes)."""
        return 1 + self.grid[0] * self.grid[1]

    def _check(self, fbank: Tensor) -> None:
        c = self.config
        if fbank.dim() != 5 or tuple(fbank.shape[2:]) != (1, c.num_mel_bins, c.target_len):
            raise ValueError(
                f"expected fbank [B, S, 1, {c.num_mel_bins}, {c.target_len}], "
                f"got {tuple(fbank.shape)}"
            )

    def embed(self, fbank: Tensor, stages: dict[str, Tensor] | None = None) -> Tensor:
        """Stem + LN + CLS + pos-embed: fbank [B, S, 1, M, T] -> tokens [B * S, L, D]."""
        self._check(fbank)
        x = self.stem(fbank.flatten(0, 1)).flatten(2).transpose(1, 2)
        x = self.stem_norm(x)
        _record(stages, "stem_out", x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        _record(stages, "tokens_in", x)
        return x

    def head(
        self, tokens: Tensor, num_clips: int, stages: dict[str, Tensor] | None = None
    ) -> Tensor:
        """Head + postprocessor: tokens [B * S, L, D] -> embedding [B, E] (norm <= scale)."""
        normed = self.head_norm(tokens)
        _record(stages, "head_ln_tokens", normed)
        out = self.head_proj(normed[:, 0])
        _record(stages, "head_out", out)
        scale = self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        per_clip = F.normalize(out, dim=-1) * scale
        _record(stages, "post_out_per_clip", per_clip)
        emb = per_clip.reshape(-1, num_clips, per_clip.shape[-1]).mean(dim=1)
        _record(stages, "embedding", emb)
        return emb

    def forward(self, fbank: Tensor) -> Tensor:
        """fbank [B, S, 1, M, T] -> audio embedding [B, E], mean over the S clips."""
        x = self.embed(fbank)
        for blk in self.blocks:
            x = blk(x)
        return self.head(x, fbank.shape[1])

    def forward_stages(self, fbank: Tensor) -> dict[str, Tensor]:
        """Every stage the reference fixtures store; per-clip rows are B * S, batch-major.

        Keys: ``stem_out`` [B*S, N, D], ``tokens_in`` / ``blockNN`` / ``head_ln_tokens``
        [B*S, 1 + N, D], ``head_out`` / ``post_out_per_clip`` [B*S, E], ``embedding`` [B, E].
        """
        stages: dict[str, Tensor] = {}
        x = self.embed(fbank, stages)
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            stages[f"block{i:02d}"] = x
        self.head(x, fbank.shape[1], stages)
        return stages


class ImageBindVisionAudio(nn.Module):
    """The vision and audio encoders of ImageBind; ``vision.*`` and ``audio.*`` parameters."""

    def __init__(self, config: ImageBindConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = ImageBindVision(config.vision, config.out_embed_dim)
        self.audio = ImageBindAudio(
            config.audio, config.out_embed_dim, config.audio_logit_scale_init
        )

    def forward(self, images: Tensor, fbank: Tensor) -> tuple[Tensor, Tensor]:
        """images [B, 3, H, W], fbank [B', S, 1, M, T] -> (vision [B, E], audio [B', E])."""
        return self.vision(images), self.audio(fbank)


def _to_ours(key: str) -> str | None:
    for official, ours in OFFICIAL_TO_OURS:
        if key.startswith(official):
            return ours + key[len(official) :]
    return None


def _to_official(key: str) -> str:
    for official, ours in OFFICIAL_TO_OURS:
        if key.startswith(ours):
            return official + key[len(ours) :]
    raise KeyError(f"no official name for {key}")


def official_key_layout(config: ImageBindConfig) -> dict[str, tuple[int, ...]]:
    """The vision/audio keys and shapes an official checkpoint for ``config`` holds.

    Built from a meta-device model through :data:`OFFICIAL_TO_OURS`; the vision stem is listed
    with its official 5-D Conv3d shape (D, 3, T, p, p).
    """
    with torch.device("meta"):
        model = ImageBindVisionAudio(config)
    layout: dict[str, tuple[int, ...]] = {}
    for key, value in model.state_dict().items():
        official = _to_official(key)
        shape = tuple(value.shape)
        if official == _VISION_STEM_KEY:
            d, c, p, _ = shape
            shape = (d, c, config.vision.video_frames, p, p)
        layout[official] = shape
    return layout


def _preview(keys: list[str], limit: int = 10) -> str:
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def convert_official_state_dict(
    state_dict: Mapping[str, Tensor], config: ImageBindConfig
) -> dict[str, Tensor]:
    """Official ImageBind keys -> our keys, for the vision and audio parts only.

    Keys of text/depth/thermal/IMU (:data:`SKIPPED_PREFIXES`) are dropped. The 5-D vision stem
    weight is summed over its time axis (a 4-D one is taken as already summed).

    Raises:
        CheckpointMismatchError: naming, in official key names, the vision/audio keys that are
            missing and the keys that belong to no known part.
    """
    expected = official_key_layout(config)
    kept = {k: v for k, v in state_dict.items() if not k.startswith(SKIPPED_PREFIXES)}
    missing = sorted(k for k in expected if k not in kept)
    unexpected = sorted(k for k in kept if k not in expected)
    if missing or unexpected:
        parts = ["checkpoint does not fit ImageBind vision/audio:"]
        if missing:
            parts.append(f"{len(missing)} missing keys [{_preview(missing)}]")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys [{_preview(unexpected)}]")
        raise CheckpointMismatchError("; ".join(parts))
    converted: dict[str, Tensor] = {}
    for key, value in kept.items():
        if key == _VISION_STEM_KEY and value.dim() == 5:
            if tuple(value.shape) != expected[key]:
                raise CheckpointMismatchError(
                    f"expected {key} of shape {expected[key]}, got {tuple(value.shape)}"
                )
            value = value.sum(dim=2)
        ours = _to_ours(key)
        if ours is None:  # every expected key is covered by the map, so this is a bug here
            raise KeyError(f"no rename rule for {key}")
        converted[ours] = value
    return converted


def load_imagebind(
    source: str | Path | Mapping[str, Tensor],
    config: ImageBindConfig,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> ImageBindVisionAudio:
    """Build ImageBind vision/audio on the meta device and load official weights strictly.

    Args:
        source: path to ``imagebind_huge.pth`` / a ``.safetensors`` file with official key names,
            or such a state dict.
        config: sizes, e.g. ``IMAGEBIND_PRESETS["imagebind_huge"]``.
        device, dtype: where the loaded model goes (default: where the tensors are, their dtype).

    Returns:
        the model in eval mode.

    Raises:
        CheckpointMismatchError: on missing/unexpected vision/audio keys or wrong shapes.
    """
    state_dict = read_state_dict(source) if isinstance(source, str | Path) else source
    converted = convert_official_state_dict(state_dict, config)
    with torch.device("meta"):
        model = ImageBindVisionAudio(config)
    load_strict(model, converted, "ImageBind vision/audio")
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval()
