"""Input/output names and dynamic axes of every export unit, defined once.

The runtime owns this wire contract: the runners (:mod:`moca_rt.engines`) speak these names, and
the ONNX exporter (:mod:`moca_rt.export.create_onnx`), the comparison
(:mod:`moca_rt.export.compare`) and the TensorRT builder import them from here, so a tensor has
the same name in the torch wrapper, the ONNX graph and an engine binding.

The audio unit's per-layer token outputs carry the same names as the vision unit's audio inputs:
the output dict of the audio engine is fed to the vision engine as it is.
"""

from __future__ import annotations

from typing import Literal

Unit = Literal["audio", "vision", "sam_encoder", "sam_decoder"]
UNITS: tuple[Unit, ...] = ("audio", "vision", "sam_encoder", "sam_decoder")

# Symbolic axis names (shared by all units so that a dict of feeds reads the same everywhere).
BATCH = "batch"
NUM_PROMPTS = "num_prompts"
NUM_POINTS = "num_points"

# --- audio encoder: fbank [B, S, 1, 128, 204] -> per adapted layer X_a, Y_a + embedding
FBANK = "fbank"
AUDIO_EMBEDDING = "audio_embedding"


def audio_layer_input(i: int) -> str:
    """Name of adapted layer ``i``'s audio block input X_a: [B, S * La, Da]."""
    return f"audio_layer{i}_input"


def audio_layer_post_attention(i: int) -> str:
    """Name of adapted layer ``i``'s audio state after the attention residual Y_a: [B, S*La, Da]."""
    return f"audio_layer{i}_post_attention"


def audio_token_names(num_layers: int) -> tuple[str, ...]:
    """Per-layer audio token names in wrapper order: X_a(0), Y_a(0), X_a(1), Y_a(1), ..."""
    if num_layers < 0:
        raise ValueError(f"expected num_layers >= 0, got {num_layers}")
    names: list[str] = []
    for i in range(num_layers):
        names += [audio_layer_input(i), audio_layer_post_attention(i)]
    return tuple(names)


# --- MoCA vision: images [B, 3, 224, 224] + audio tokens -> f^a, joint-space patches, CLS
IMAGES = "images"
PATCH_FEATURES = "patch_features"
PATCH_EMBEDDINGS = "patch_embeddings"
CLS_EMBEDDING = "cls_embedding"

# --- SAM image encoder: [B, 3, S, S] normalised, padded -> [B, 256, S/16, S/16]
SAM_IMAGES = "sam_images"
IMAGE_EMBEDDINGS = "image_embeddings"

# --- SAM prompt encoder + mask decoder (multimask): one image, N prompts of P points
POINT_COORDS = "point_coords"
POINT_LABELS = "point_labels"
LOW_RES_MASKS = "low_res_masks"
IOU_PREDICTIONS = "iou_predictions"

# --- the factored grid decoder (moca_rt.grid_decoder) on an engine: two graphs per SAM.
# Tokens: one frame's shared tensors (GridFrames) + (1, n, 2) points -> (n, 3) IoU, (n, 3, D)
# mask tokens, (n, HW, D) image tokens.
GRID_KEYS = "grid_keys"
GRID_KEY_PE = "grid_key_pe"
GRID_K0 = "grid_k0"
GRID_V0 = "grid_v0"
GRID_Q0 = "grid_q0"
GRID_MASK_TOKENS = "grid_mask_tokens"
GRID_IMAGE_TOKENS = "grid_image_tokens"
GRID_TOKENS_INPUTS = (GRID_KEYS, GRID_KEY_PE, GRID_K0, GRID_V0, GRID_Q0, POINT_COORDS)
GRID_TOKENS_OUTPUTS = (IOU_PREDICTIONS, GRID_MASK_TOKENS, GRID_IMAGE_TOKENS)
# Upscale: (P, 3, D) mask tokens + (P, h, w, D) image tokens (the embedding grid or its first
# rows and columns) -> (P, 3, 4h, 4w) low-res logits.
GRID_UPSCALE_INPUTS = (GRID_MASK_TOKENS, GRID_IMAGE_TOKENS)
GRID_UPSCALE_OUTPUTS = (LOW_RES_MASKS,)


def input_names(unit: Unit, num_layers: int = 0) -> tuple[str, ...]:
    """The ONNX input names of ``unit`` (``num_layers`` adapted layers for the MoCA units)."""
    if unit == "audio":
        return (FBANK,)
    if unit == "vision":
        return (IMAGES, *audio_token_names(num_layers))
    if unit == "sam_encoder":
        return (SAM_IMAGES,)
    if unit == "sam_decoder":
        return (IMAGE_EMBEDDINGS, POINT_COORDS, POINT_LABELS)
    raise ValueError(f"expected a unit in {UNITS}, got {unit!r}")


def output_names(unit: Unit, num_layers: int = 0) -> tuple[str, ...]:
    """The ONNX output names of ``unit``, in the order the wrapper returns them."""
    if unit == "audio":
        return (*audio_token_names(num_layers), AUDIO_EMBEDDING)
    if unit == "vision":
        return (PATCH_FEATURES, PATCH_EMBEDDINGS, CLS_EMBEDDING)
    if unit == "sam_encoder":
        return (IMAGE_EMBEDDINGS,)
    if unit == "sam_decoder":
        return (LOW_RES_MASKS, IOU_PREDICTIONS)
    raise ValueError(f"expected a unit in {UNITS}, got {unit!r}")


def dynamic_axes(unit: Unit, num_layers: int = 0) -> dict[str, dict[int, str]]:
    """``{tensor name: {axis: symbolic name}}`` for inputs and outputs of ``unit``.

    MoCA and SAM-encoder units have a dynamic batch; the decoder has a dynamic number of prompts
    N and points per prompt P (the image embedding stays [1, 256, 64, 64]: one image per call).
    """
    names = input_names(unit, num_layers) + output_names(unit, num_layers)
    if unit == "sam_decoder":
        return {
            POINT_COORDS: {0: NUM_PROMPTS, 1: NUM_POINTS},
            POINT_LABELS: {0: NUM_PROMPTS, 1: NUM_POINTS},
            LOW_RES_MASKS: {0: NUM_PROMPTS},
            IOU_PREDICTIONS: {0: NUM_PROMPTS},
        }
    return {name: {0: BATCH} for name in names}
