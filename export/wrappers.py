"""One branch-free ``nn.Module`` per export unit (STYLE point 6).

Each wrapper takes and returns plain tensors in the order of :func:`moca_rt.engines.names.
input_names` / :func:`~moca_rt.engines.names.output_names`, has no optional inputs and no Python
control flow that depends on values, so the ONNX graph is a straight trace of the model code.
Wrappers hold references to the model's modules (no copies of weights).
"""

from __future__ import annotations

from torch import Tensor, nn

from moca_rt.engines import names
from moca_rt.modeling.moca import AudioFeatures, MocaModel
from moca_rt.modeling.sam import Sam

__all__ = ["AudioEncoderUnit", "SamDecoderUnit", "SamEncoderUnit", "VisionUnit", "build_wrapper"]


class AudioEncoderUnit(nn.Module):
    """fbank [B, S, 1, M, T] -> (X_a(0), Y_a(0), ..., X_a(L-1), Y_a(L-1), embedding [B, E]).

    Token outputs are [B, S * La, Da] (clips concatenated, as :class:`AudioFeatures`); names from
    :func:`moca_rt.engines.names.output_names` ``("audio", L)``.
    """

    def __init__(self, model: MocaModel) -> None:
        super().__init__()
        self.model = model
        self.num_layers = len(model.adapters)

    def forward(self, fbank: Tensor) -> tuple[Tensor, ...]:
        audio = self.model.encode_audio(fbank)
        out: list[Tensor] = []
        for x_a, y_a in zip(audio.layer_inputs, audio.layer_post_attention, strict=True):
            out += [x_a, y_a]
        return (*out, audio.embedding)


class VisionUnit(nn.Module):
    """images [B, 3, H, W] + 2L audio token tensors -> (f^a, joint-space patches, CLS embedding).

    Outputs: ``patch_features`` [B, H/14, W/14, Dv], ``patch_embeddings`` [B, H/14, W/14, E],
    ``cls_embedding`` [B, E] (unit norm). The audio embedding is not needed by the vision trunk,
    so an empty [B, 0] placeholder stands in for it.
    """

    def __init__(self, model: MocaModel) -> None:
        super().__init__()
        self.model = model
        self.num_layers = len(model.adapters)

    def forward(self, images: Tensor, *audio_tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if len(audio_tokens) != 2 * self.num_layers:
            raise ValueError(
                f"expected {2 * self.num_layers} audio token tensors, got {len(audio_tokens)}"
            )
        audio = AudioFeatures(
            layer_inputs=tuple(audio_tokens[0::2]),
            layer_post_attention=tuple(audio_tokens[1::2]),
            embedding=images.new_zeros(images.shape[0], 0),
        )
        out = self.model.encode_vision(images, audio)
        return out.patch_features, out.patch_embeddings, out.cls_embedding


class SamEncoderUnit(nn.Module):
    """SAM image encoder: [B, 3, S, S] normalised, zero-padded -> [B, 256, S/16, S/16]."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, sam_images: Tensor) -> Tensor:
        return self.image_encoder(sam_images)


class SamDecoderUnit(nn.Module):
    """SAM prompt encoder + mask decoder, multimask, for N point prompts on one image.

    Inputs: ``image_embeddings`` [1, 256, h, w]; ``point_coords`` [N, P, 2] float, XY in
    model-input pixels (the 1024 frame for the official models); ``point_labels`` [N, P] float
    (1 foreground, 0 background, -1 padding; 2/3 box corners; float as in the official SAM ONNX
    model, so that TensorRT needs no int64 input). A padding point is appended, as
    :meth:`Sam.decode` does without boxes. No mask input.

    Outputs: ``low_res_masks`` [N, 3, 4h, 4w] logits and ``iou_predictions`` [N, 3].
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder

    def forward(
        self, image_embeddings: Tensor, point_coords: Tensor, point_labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        pe = self.prompt_encoder
        sparse = pe.embed_points(point_coords, point_labels, pad=True)
        h, w = pe.image_embedding_size
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(sparse.shape[0], -1, h, w)
        masks, iou = self.mask_decoder.predict_masks(
            image_embeddings.to(sparse.dtype), pe.get_dense_pe(), sparse, dense
        )
        return masks[:, 1:], iou[:, 1:]


def build_wrapper(unit: names.Unit, model: MocaModel | Sam) -> nn.Module:
    """The export wrapper of ``unit`` around ``model`` (a MocaModel for audio/vision, else Sam)."""
    if unit in ("audio", "vision"):
        if not isinstance(model, MocaModel):
            raise ValueError(f"expected a MocaModel for unit {unit!r}, got {type(model).__name__}")
        return AudioEncoderUnit(model) if unit == "audio" else VisionUnit(model)
    if unit in ("sam_encoder", "sam_decoder"):
        if not isinstance(model, Sam):
            raise ValueError(f"expected a Sam for unit {unit!r}, got {type(model).__name__}")
        return SamEncoderUnit(model) if unit == "sam_encoder" else SamDecoderUnit(model)
    raise ValueError(f"expected a unit in {names.UNITS}, got {unit!r}")
