"""Model and pipeline configuration: frozen dataclasses plus plain dicts of named presets.

Preset names feed argparse ``choices``; there is no registry magic. Sizes of the full models
come from ``tests/fixtures/imagebind_huge_keys.tsv`` and the SAM key lists (facts read off the
original code); the ``*_test`` presets match the seeded reference fixtures; the ``*_synth``
presets are the tiny models of the synthetic world (DESIGN section 6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

AdapterPlacement = Literal["last-k", "first-k", "interleaved"]

SAMPLE_RATE = 16000  # Hz of every waveform the models see (ImageBind's audio rate)
WINDOW_SECONDS = 2.0  # the audio window centred on each frame (DESIGN section 5)


@dataclass(frozen=True)
class VisionTrunkConfig:
    """ImageBind vision trunk: Conv3d(2,14,14) stem on a 2-frame repeat, pre-LN, ViT blocks."""

    embed_dim: int = 1280
    num_blocks: int = 32
    num_heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 14
    image_size: int = 224
    video_frames: int = 2


@dataclass(frozen=True)
class AudioTrunkConfig:
    """ImageBind audio trunk: Conv2d(k16, s10) stem + LayerNorm(1e-5), blocks with bias_k/v."""

    embed_dim: int = 768
    num_blocks: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    kernel_size: int = 16
    stride: int = 10
    num_mel_bins: int = 128
    target_len: int = 204
    drop_path: float = 0.1


@dataclass(frozen=True)
class ImageBindConfig:
    """The vision and audio parts of ImageBind (other modalities are never built)."""

    vision: VisionTrunkConfig = field(default_factory=VisionTrunkConfig)
    audio: AudioTrunkConfig = field(default_factory=AudioTrunkConfig)
    out_embed_dim: int = 1024
    audio_logit_scale_init: float = 20.0


@dataclass(frozen=True)
class AdapterConfig:
    """AdaAV (DESIGN section 3): m latent tokens in a bottleneck of width r, one per layer."""

    num_layers: int = 6
    num_latents: int = 8
    bottleneck: int = 64
    num_heads: int = 4
    placement: AdapterPlacement = "last-k"


@dataclass(frozen=True)
class MocaConfig:
    """Frozen ImageBind plus the trainable AdaAV modules."""

    imagebind: ImageBindConfig = field(default_factory=ImageBindConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)


@dataclass(frozen=True)
class SamConfig:
    """Segment Anything: ViT image encoder, prompt encoder, two-way mask decoder."""

    encoder_embed_dim: int = 1280
    encoder_depth: int = 32
    encoder_num_heads: int = 16
    encoder_global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    mask_threshold: float = 0.0


@dataclass(frozen=True)
class DinoConfig:
    """DINO ViT used as the pairing featuriser (official ``vit_base(patch_size=16)`` keys)."""

    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    image_size: int = 224


IMAGEBIND_PRESETS: dict[str, ImageBindConfig] = {
    "imagebind_huge": ImageBindConfig(),
    # Matches ../shared/reference/imagebind/config.json (copied to tests/fixtures/imagebind).
    "imagebind_test": ImageBindConfig(
        vision=VisionTrunkConfig(embed_dim=96, num_blocks=2, num_heads=4),
        audio=AudioTrunkConfig(embed_dim=64, num_blocks=2, num_heads=4),
        out_embed_dim=48,
    ),
    "imagebind_synth": ImageBindConfig(
        vision=VisionTrunkConfig(embed_dim=96, num_blocks=6, num_heads=4),
        audio=AudioTrunkConfig(embed_dim=64, num_blocks=4, num_heads=4),
        out_embed_dim=64,
    ),
}

MOCA_PRESETS: dict[str, MocaConfig] = {
    "moca_huge": MocaConfig(),
    "moca_test": MocaConfig(
        imagebind=IMAGEBIND_PRESETS["imagebind_test"],
        adapter=AdapterConfig(num_layers=2, num_latents=4, bottleneck=16, num_heads=2),
    ),
    "moca_synth": MocaConfig(
        imagebind=IMAGEBIND_PRESETS["imagebind_synth"],
        adapter=AdapterConfig(num_layers=4, num_latents=8, bottleneck=32, num_heads=4),
    ),
}

SAM_PRESETS: dict[str, SamConfig] = {
    "sam_vit_h": SamConfig(),
    "sam_vit_l": SamConfig(
        encoder_embed_dim=1024,
        encoder_depth=24,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23),
    ),
    "sam_vit_b": SamConfig(
        encoder_embed_dim=768,
        encoder_depth=12,
        encoder_num_heads=12,
        encoder_global_attn_indexes=(2, 5, 8, 11),
    ),
    # Matches ../shared/reference/sam/config.json (copied to tests/fixtures/sam).
    "sam_test": SamConfig(
        encoder_embed_dim=64,
        encoder_depth=4,
        encoder_num_heads=4,
        encoder_global_attn_indexes=(1, 3),
    ),
    # Tiny SAM of the synthetic world (DESIGN section 6): 256-pixel input (16 x 16 embedding
    # grid, windows of 8), a 128-wide prompt encoder / decoder. Same classes and key names.
    "sam_synth": SamConfig(
        encoder_embed_dim=96,
        encoder_depth=4,
        encoder_num_heads=4,
        encoder_global_attn_indexes=(1, 3),
        image_size=256,
        window_size=8,
        prompt_embed_dim=128,
        decoder_mlp_dim=512,
        decoder_num_heads=4,
        iou_head_hidden_dim=128,
    ),
}

DINO_PRESETS: dict[str, DinoConfig] = {
    "dino_vitb16": DinoConfig(),
    "dino_test": DinoConfig(embed_dim=96, depth=2, num_heads=4),
}
