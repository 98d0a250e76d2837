"""MocaModel: frozen ImageBind (vision + audio) with trainable AdaAV adapters.

For every adapted vision block l, paired with audio block a(l) (see
:func:`moca_rt.modeling.adapter.adapter_pairs`):

    Y_v = X_v + MHA(X_v) + AdaAV_l(X_a, X_v)
    X_v' = Y_v + MLP(Y_v) + AdaAV_l(Y_a, Y_v)

where X_a is the input of audio block a(l) and Y_a its state after the attention residual.

**Clips meet the image by concatenation.** The audio of one sample is S clips (3 for the
official preprocessing), each encoded separately by the audio trunk as ImageBind does. The
adapter of a layer attends over the tokens of all S clips concatenated ([B, S * La, Da]), so the
latent tokens pool the whole audio window at once and nothing is averaged before the
attention. Batch row b of the images always meets batch row b of the audio windows.

The audio trunk is frozen and runs once per audio window under ``torch.no_grad``
(:meth:`MocaModel.encode_audio`); the resulting :class:`AudioFeatures` can be reused for several
images (the anchor audio fused into anchor, positive and negative images during training).
Gradients flow only into the adapters: every ImageBind parameter has ``requires_grad=False``.

An untrained model (zero-initialised up-projections) returns exactly the features of frozen
ImageBind: the adapters add an exact 0 after the same operations as the plain blocks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from moca_rt.checkpoints import load_strict, read_state_dict
from moca_rt.config import MocaConfig
from moca_rt.modeling.adapter import AdaAV, adapter_pairs
from moca_rt.modeling.imagebind import ImageBindBlock, ImageBindVisionAudio, load_imagebind

__all__ = ["AudioFeatures", "MocaModel", "VisionFeatures"]


@dataclass
class AudioFeatures:
    """Frozen audio-trunk outputs for B audio windows of S clips each.

    Attributes:
        layer_inputs: per adapted layer (in adapter order), the paired audio block's input
            tokens X_a, all clips concatenated: [B, S * La, Da] (La = 229 tokens per clip with
            CLS, Da = 768 for the huge preset).
        layer_post_attention: per adapted layer, the same block's tokens after its attention
            residual, Y_a: [B, S * La, Da].
        embedding: the ImageBind audio embedding [B, E] (per-clip L2-normalised x 20, mean over
            the S clips; norm about 20).
    """

    layer_inputs: tuple[Tensor, ...]
    layer_post_attention: tuple[Tensor, ...]
    embedding: Tensor


@dataclass
class VisionFeatures:
    """Outputs of the (audio-adapted) vision encoder for B images of size H x W.

    Attributes:
        patch_features: f^a, the patch tokens after the head LayerNorm, CLS dropped, on the
            row-major patch grid: [B, H/14, W/14, Dv] ([B, 16, 16, 1280] at 224).
        patch_embeddings: the head Linear applied to every normalised patch token, in the joint
            ImageBind space (not normalised): [B, H/14, W/14, E].
        cls_embedding: the L2-normalised ImageBind vision embedding [B, E].
    """

    patch_features: Tensor
    patch_embeddings: Tensor
    cls_embedding: Tensor


class MocaModel(nn.Module):
    """Frozen ImageBind vision/audio encoders plus one AdaAV per adapted layer.

    Args:
        config: sizes of ImageBind and the adapters (e.g. ``MOCA_PRESETS["moca_huge"]``).
        imagebind: an already loaded ImageBind (e.g. from :func:`load_imagebind`); a randomly
            initialised one is built when None.
    """

    def __init__(self, config: MocaConfig, imagebind: ImageBindVisionAudio | None = None) -> None:
        super().__init__()
        if imagebind is not None and imagebind.config != config.imagebind:
            raise ValueError(
                f"expected an ImageBind built for {config.imagebind}, got {imagebind.config}"
            )
        self.config = config
        self.imagebind = (
            imagebind if imagebind is not None else ImageBindVisionAudio(config.imagebind)
        )
        self.imagebind.requires_grad_(False)
        ib = config.imagebind
        self.pairs: list[tuple[int, int]] = adapter_pairs(
            config.adapter.placement,
            config.adapter.num_layers,
            ib.vision.num_blocks,
            ib.audio.num_blocks,
        )
        self.adapters = nn.ModuleList(
            AdaAV(ib.audio.embed_dim, ib.vision.embed_dim, config.adapter) for _ in self.pairs
        )
        self._adapter_of_vision_block = {v: i for i, (v, _) in enumerate(self.pairs)}
        self._adapter_of_audio_block = {a: i for i, (_, a) in enumerate(self.pairs)}
        # Recompute each adapted block in the backward pass instead of storing its activations.
        self.activation_checkpointing = False

    @classmethod
    def from_config(
        cls,
        config: MocaConfig,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        imagebind_weights: str | Path | Mapping[str, Tensor] | None = None,
        adapter_weights: str | Path | Mapping[str, Tensor] | None = None,
    ) -> MocaModel:
        """Build a model, optionally with official ImageBind weights and trained adapters.

        With ``imagebind_weights`` ImageBind is built on the meta device and the official
        checkpoint (``imagebind_huge.pth`` layout) is loaded strictly; otherwise ImageBind is
        randomly initialised (``device="meta"`` builds everything without memory, e.g. to count
        parameters). ``adapter_weights`` is a state dict as written by
        :meth:`adapter_state_dict`, or a file holding one. Returns the model in eval mode.
        """
        if imagebind_weights is not None:
            imagebind = load_imagebind(imagebind_weights, config.imagebind)
            model = cls(config, imagebind=imagebind)
        else:
            with torch.device(device if device is not None else "cpu"):
                model = cls(config)
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        if adapter_weights is not None:
            model.load_adapter_state_dict(adapter_weights)
        return model.eval()

    def train(self, mode: bool = True) -> MocaModel:
        """Switch the adapters' mode; frozen ImageBind always stays in eval mode."""
        super().train(mode)
        self.imagebind.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The adapter parameters, the only ones MoCA trains."""
        return list(self.adapters.parameters())

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """The adapter weights, keys ``adapters.<layer>.<name>`` (detached, on their device)."""
        return {f"adapters.{k}": v.detach() for k, v in self.adapters.state_dict().items()}

    def load_adapter_state_dict(self, state_dict: str | Path | Mapping[str, Tensor]) -> None:
        """Load adapter weights strictly (a mapping, or a safetensors/torch file).

        Tensors are moved to the adapters' current device and dtype. Call before building an
        optimizer: the parameters are replaced (``assign=True``), keeping ``requires_grad``.

        Raises:
            CheckpointMismatchError: naming missing keys, unexpected keys and shape mismatches.
        """
        if isinstance(state_dict, str | Path):
            state_dict = read_state_dict(state_dict)
        ref = next(iter(self.adapters.parameters()), None)
        if ref is not None and ref.device.type != "meta":
            state_dict = {
                k: v.to(device=ref.device, dtype=ref.dtype) for k, v in state_dict.items()
            }
        holder = nn.ModuleDict({"adapters": self.adapters})
        what = (
            f"MoCA adapters ({len(self.pairs)} layers, placement {self.config.adapter.placement})"
        )
        load_strict(holder, state_dict, what)

    @torch.no_grad()
    def encode_audio(self, fbank: Tensor) -> AudioFeatures:
        """Run the frozen audio encoder once per window, outside autograd.

        Args:
            fbank: [B, S, 1, 128, 204] normalised kaldi fbank clips (``moca_rt.preprocess``).

        Returns:
            :class:`AudioFeatures` with one entry per adapted layer.
        """
        audio = self.imagebind.audio
        x = audio.embed(fbank)
        batch, clips = fbank.shape[:2]
        inputs: list[Tensor] = []
        post_attention: list[Tensor] = []
        for j, blk in enumerate(cast(list[ImageBindBlock], list(audio.blocks))):
            adapted = j in self._adapter_of_audio_block
            if adapted:
                inputs.append(x.reshape(batch, clips * x.shape[1], x.shape[2]))
            x = blk.attention_residual(x)
            if adapted:
                post_attention.append(x.reshape(batch, clips * x.shape[1], x.shape[2]))
            x = blk.mlp_residual(x)
        return AudioFeatures(tuple(inputs), tuple(post_attention), audio.head(x, clips))

    @property
    def prefix_depth(self) -> int:
        """Number of leading vision blocks without an adapter (their output can be cached)."""
        return min(self._adapter_of_vision_block, default=len(self.imagebind.vision.blocks))

    @torch.no_grad()
    def encode_vision_prefix(self, images: Tensor) -> Tensor:
        """Frozen vision tokens before the first adapted block, outside autograd.

        Args:
            images: [B, 3, H, W] CLIP-normalised RGB, H == W.

        Returns:
            tokens [B, 1 + N, Dv] (CLS first), the input of block :attr:`prefix_depth`; feed them
            to :meth:`encode_vision_from_prefix`. They do not depend on the audio or on the
            adapters, so a training loop may cache them per image.
        """
        x = self.imagebind.vision.embed(images)
        for blk in cast(list[ImageBindBlock], list(self.imagebind.vision.blocks))[
            : self.prefix_depth
        ]:
            x = blk(x)
        return x

    def encode_vision(self, images: Tensor, audio: AudioFeatures | None) -> VisionFeatures:
        """Run the vision encoder with the adapters fed by ``audio``.

        Args:
            images: [B, 3, H, W] CLIP-normalised RGB, H == W (224 for the official table).
            audio: features of B audio windows from :meth:`encode_audio`; None gives plain
                frozen ImageBind.

        Returns:
            :class:`VisionFeatures` (f^a, joint-space patch embeddings, CLS embedding).
        """
        return self._vision_blocks(self.imagebind.vision.embed(images), 0, audio)

    def encode_vision_from_prefix(
        self, prefix_tokens: Tensor, audio: AudioFeatures | None
    ) -> VisionFeatures:
        """:meth:`encode_vision` starting from :meth:`encode_vision_prefix` tokens [B, 1+N, Dv].

        Gives the same result as :meth:`encode_vision` on the images the tokens came from.
        """
        if prefix_tokens.dim() != 3:
            raise ValueError(f"expected prefix tokens [B, 1 + N, D], got {prefix_tokens.shape}")
        return self._vision_blocks(prefix_tokens, self.prefix_depth, audio)

    def _adapted_block(
        self, block: ImageBindBlock, adapter: nn.Module, x: Tensor, x_a: Tensor, y_a: Tensor
    ) -> Tensor:
        y = block.attention_residual(x) + adapter(x_a, x)
        return block.mlp_residual(y) + adapter(y_a, y)

    def _vision_blocks(self, x: Tensor, start: int, audio: AudioFeatures | None) -> VisionFeatures:
        if audio is not None:
            n = len(self.adapters)
            if len(audio.layer_inputs) != n or len(audio.layer_post_attention) != n:
                raise ValueError(
                    f"expected audio features for {n} adapted layers, got "
                    f"{len(audio.layer_inputs)} and {len(audio.layer_post_attention)}"
                )
            if audio.embedding.shape[0] != x.shape[0]:
                raise ValueError(
                    f"expected as many audio windows as images ({x.shape[0]}), got "
                    f"{audio.embedding.shape[0]}"
                )
        vision = self.imagebind.vision
        checkpointing = self.activation_checkpointing and torch.is_grad_enabled()
        blocks = cast(list[ImageBindBlock], list(vision.blocks))
        for j in range(start, len(blocks)):
            i = self._adapter_of_vision_block.get(j)
            if audio is None or i is None:
                x = blocks[j](x)
                continue
            args = (blocks[j], self.adapters[i], x, audio.layer_inputs[i])
            if checkpointing:
                x = checkpoint(
                    self._adapted_block, *args, audio.layer_post_attention[i], use_reentrant=False
                )
            else:
                x = self._adapted_block(*args, audio.layer_post_attention[i])
        normed = vision.head_norm(x)
        batch, grid = normed.shape[0], math.isqrt(normed.shape[1] - 1)
        patches = normed[:, 1:]
        return VisionFeatures(
            patch_features=patches.reshape(batch, grid, grid, patches.shape[-1]),
            patch_embeddings=vision.head_proj(patches).reshape(batch, grid, grid, -1),
            cls_embedding=F.normalize(vision.head_proj(normed[:, 0]), dim=-1),
        )

    def forward(self, images: Tensor, fbank: Tensor) -> tuple[VisionFeatures, AudioFeatures]:
        """images [B, 3, H, W] and their audio windows fbank [B, S, 1, 128, 204], row by row."""
        if images.dim() != 4 or fbank.dim() != 5 or images.shape[0] != fbank.shape[0]:
            raise ValueError(
                f"expected images [B, 3, H, W] and fbank [B, S, 1, M, T] with the same B, got "
                f"{tuple(images.shape)} and {tuple(fbank.shape)}"
            )
        audio = self.encode_audio(fbank)
        return self.encode_vision(images, audio), audio
