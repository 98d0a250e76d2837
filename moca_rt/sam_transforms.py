"""SAM input and output transforms: resize-longest-side, normalisation, padding, coordinate maps.

Coordinate frames used throughout:

* **input pixels**: (x, y) in the raw image of size (H, W) as the user gave it;
* **model frame**: (x, y) in the resized image of size (H', W'), the top-left part of the
  1024 x 1024 padded encoder input; x is scaled by W'/W and y by H'/H;
* **low-res frame**: the decoder's 256 x 256 logits cover the whole padded 1024 x 1024 input.

Sizes are quoted for the 1024-input presets; in general the encoder input is S x S, the image
embedding S/16 and the low-res logits S/4 on a side (``SamConfig.image_size`` = S).

Resizing follows the official predictor: (H', W') = int(side * 1024 / max(H, W) + 0.5) (computed
as ``side * (1024 / max(H, W))``), PIL bilinear on the uint8 image (the exact CPU path, bit for
bit equal to the reference); a torch path (bilinear, ``align_corners=False``, antialias when
shrinking, rounded to uint8) runs on any device and differs from PIL by at most a few grey
levels (see ``tests/test_sam.py`` for the measured difference). Do not copy the PyPI
``apply_image_torch`` (it read batch and channel sizes as H and W).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def get_preprocess_shape(height: int, width: int, long_side: int = 1024) -> tuple[int, int]:
    """(H', W') after scaling the longest side of (H, W) to ``long_side`` (round half up)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"expected a positive image size, got {height} x {width}")
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def _check_hwc_uint8(image: np.ndarray | torch.Tensor) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {tuple(image.shape)}")
    if image.dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"expected dtype uint8, got {image.dtype}")


def resize_longest_side_pil(image: np.ndarray, long_side: int = 1024) -> np.ndarray:
    """Resize an (H, W, 3) uint8 RGB array with PIL bilinear so the longest side is ``long_side``.

    Returns an (H', W', 3) uint8 array; bit for bit the official ``ResizeLongestSide.apply_image``.
    """
    image = np.asarray(image)
    _check_hwc_uint8(image)
    h, w = get_preprocess_shape(image.shape[0], image.shape[1], long_side)
    pil = Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR)
    return np.array(pil)


def resize_longest_side_torch(images: torch.Tensor, long_side: int = 1024) -> torch.Tensor:
    """Resize a (B, 3, H, W) uint8 or float batch on its device; returns (B, 3, H', W') uint8.

    Bilinear, ``align_corners=False``, antialiased when shrinking, rounded and clamped to 0..255.
    Not bit-exact with PIL (PIL works in fixed point); the difference is at most a few grey levels.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a B x 3 x H x W batch, got shape {tuple(images.shape)}")
    h, w = get_preprocess_shape(images.shape[2], images.shape[3], long_side)
    shrink = h < images.shape[2] or w < images.shape[3]
    out = F.interpolate(
        images.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=shrink
    )
    return out.round().clamp(0, 255).to(torch.uint8)


def normalize_and_pad(
    images: torch.Tensor,
    image_size: int = 1024,
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN,
    pixel_std: tuple[float, float, float] = PIXEL_STD,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(B, 3, H', W') uint8 (0-255 scale) -> (B, 3, S, S) ``(x - mean) / std``, zero-padded.

    Normalisation happens in fp32 (bitwise the official input), then the result is cast to
    ``dtype``. Padding is at the bottom and right.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a B x 3 x H x W batch, got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h > image_size or w > image_size:
        raise ValueError(f"expected sides <= {image_size}, got {h} x {w}; resize first")
    mean = torch.tensor(pixel_mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(pixel_std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    x = (images.float() - mean) / std
    x = F.pad(x, (0, image_size - w, 0, image_size - h))
    return x.to(dtype)


def preprocess_image(
    image: np.ndarray,
    image_size: int = 1024,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """One (H, W, 3) uint8 RGB image -> ((1, 3, S, S) encoder input, (H', W')) via the PIL path."""
    resized = resize_longest_side_pil(image, image_size)
    x = torch.as_tensor(resized, device=device).permute(2, 0, 1)[None]
    return normalize_and_pad(x, image_size, dtype=dtype), (resized.shape[0], resized.shape[1])


def apply_coords(
    coords: torch.Tensor | np.ndarray,
    original_size: tuple[int, int],
    long_side: int = 1024,
) -> torch.Tensor:
    """(..., 2) XY in input pixels -> (..., 2) float32 XY in the model frame.

    x is multiplied by W'/W and y by H'/H (computed in float64, returned as float32).
    """
    t = torch.as_tensor(coords)
    if t.ndim < 1 or t.shape[-1] != 2:
        raise ValueError(f"expected coordinates of shape (..., 2), got {tuple(t.shape)}")
    h, w = original_size
    new_h, new_w = get_preprocess_shape(h, w, long_side)
    scale = torch.tensor([new_w / w, new_h / h], dtype=torch.float64, device=t.device)
    return (t.to(torch.float64) * scale).to(torch.float32)


def apply_boxes(
    boxes: torch.Tensor | np.ndarray,
    original_size: tuple[int, int],
    long_side: int = 1024,
) -> torch.Tensor:
    """(..., 4) XYXY in input pixels -> (..., 4) float32 XYXY in the model frame."""
    t = torch.as_tensor(boxes)
    if t.ndim < 1 or t.shape[-1] != 4:
        raise ValueError(f"expected boxes of shape (..., 4), got {tuple(t.shape)}")
    out = apply_coords(t.reshape(*t.shape[:-1], 2, 2), original_size, long_side)
    return out.reshape(t.shape)


def postprocess_masks(
    low_res: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int = 1024,
) -> torch.Tensor:
    """Low-res logits (B, M, 256, 256) -> logits (B, M, H, W) in input pixels.

    Bilinear to S x S, crop to (H', W'), bilinear to (H, W); all ``align_corners=False``.
    The result keeps the input dtype (upsampling runs in that dtype).
    """
    if low_res.ndim != 4:
        raise ValueError(f"expected B x M x h x w logits, got shape {tuple(low_res.shape)}")
    x = F.interpolate(low_res, (image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, original_size, mode="bilinear", align_corners=False)


def low_res_valid_size(
    input_size: tuple[int, int], image_size: int = 1024, low: int | None = None
) -> tuple[int, int]:
    """Rows and columns of the low-res logits (side ``low``, default image_size / 4) covering the
    resized image: (ceil(H' * low / S), ceil(W' * low / S)), e.g. (192, 256) for 768 x 1024."""
    side = image_size // 4 if low is None else low
    f = image_size // side
    return -(-input_size[0] // f), -(-input_size[1] // f)
