"""Frame and mask files as AVSBench lays them out, read the same way everywhere.

* :func:`natural_key`: the order of numbered file names (``_2`` before ``_10``), used for frame
  folders (:mod:`moca_rt.media`, :mod:`moca_rt.datasets`) and for the videos and frames the
  evaluator pairs.
* :func:`read_binary_mask`: S4 / MS3 masks, values {0, 255} or {0, 1}; images of mode ``P``,
  ``RGB`` or ``LA``/``RGBA`` are read through ``convert("L")`` (palette or luma, alpha ignored),
  which is what AVSBench's loader (``convert("1")``) sees. Other values are an error, or, with
  ``avsbench_fallback``, binarised exactly as that loader does (threshold 128 with
  Floyd-Steinberg dithering). :func:`read_prob_map`: 8-bit probability maps.
* :func:`avss_palette`, :func:`palette_match`, :func:`colour_mask_to_labels`,
  :func:`read_label_map`: AVSS colour label PNGs and the AVSBench-semantic palette
  (``avs_scripts/avss/color_dataloader.py``: ``get_v2_pallete``, ``color_mask_to_label``).

``size`` arguments are ``(W, H)``: the image is resized to it with nearest-neighbour first.
Unreadable or invalid files raise :class:`~moca_rt.errors.InputError` naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from moca_rt.errors import InputError

__all__ = [
    "AVSS_NUM_CLASSES",
    "avss_palette",
    "colour_mask_to_labels",
    "natural_key",
    "palette_match",
    "read_binary_mask",
    "read_label_map",
    "read_prob_map",
]

AVSS_NUM_CLASSES = 71  # AVSBench-semantic, background (class 0) included

_GREY_MODES = {"1", "L", "P", "LA", "RGB", "RGBA"}
_INDEX_MODES = {"L", "I", "I;16", "I;16B", "I;16L"}
_COLOUR_MODES = {"RGB", "RGBA", "P"}


def natural_key(name: str) -> tuple[int | str, ...]:
    """Sort key of a file name with numbers compared as numbers: ``v_2`` before ``v_10``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _open(path: Path, size: tuple[int, int] | None) -> Image.Image:
    try:
        img: Image.Image = Image.open(path)
        img.load()
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if size is not None and img.size != size:
        img = img.resize(size, Image.Resampling.NEAREST)
    return img


def _grey_array(img: Image.Image, path: Path) -> np.ndarray:
    if img.mode in _GREY_MODES:
        return np.asarray(img.convert("L"))
    if img.mode in _INDEX_MODES:
        return np.asarray(img).astype(np.int64)
    raise InputError(
        f"unsupported PNG mode in {path}: expected one of {sorted(_GREY_MODES | _INDEX_MODES)}, "
        f"got {img.mode!r}"
    )


def _value_list(arr: np.ndarray) -> str:
    vals = np.unique(arr)
    shown = ", ".join(str(int(v)) for v in vals[:8])
    return f"[{shown}{', ...' if len(vals) > 8 else ''}]"


def read_binary_mask(
    path: Path, size: tuple[int, int] | None = None, *, avsbench_fallback: bool = False
) -> np.ndarray:
    """Read a binary mask PNG ({0, 255} or {0, 1}) as a bool array [H, W].

    Args:
        path: the PNG.
        size: ``(W, H)`` to resize to with nearest-neighbour first.
        avsbench_fallback: binarise a non-binary image as AVSBench's S4/MS3 loader does
            (``PIL convert("1")``: threshold at 128 with Floyd-Steinberg dithering) instead of
            raising.

    Raises:
        InputError: unreadable file, unsupported mode or values outside those sets (unless
            ``avsbench_fallback`` takes them).
    """
    img = _open(path, size)
    arr = _grey_array(img, path)
    vals = set(np.unique(arr).tolist())
    if vals <= {0, 255}:
        return arr == 255
    if vals <= {0, 1}:
        return arr == 1
    if avsbench_fallback and img.mode in _GREY_MODES:
        return np.asarray(img.convert("1"), dtype=bool)
    raise InputError(
        f"non-binary mask {path}: expected pixel values {{0, 255}} or {{0, 1}}, got "
        f"{_value_list(arr)} (predictions: --pred-format prob reads 8-bit probability maps; "
        "ground truth: --lenient-gt binarises it as AVSBench's loader does)"
    )


def read_prob_map(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an 8-bit probability map PNG as float32 [H, W] = value / 255."""
    img = _open(path, size)
    if img.mode not in _GREY_MODES:
        raise InputError(f"expected an 8-bit probability map in {path}, got PNG mode {img.mode!r}")
    return np.asarray(img.convert("L")).astype(np.float32) / np.float32(255.0)


def read_label_map(
    path: Path,
    num_classes: int,
    size: tuple[int, int] | None = None,
    *,
    is_gt: bool,
) -> tuple[np.ndarray, int]:
    """Read an AVSS label PNG (palette colours or class indices) as int64 [H, W].

    Returns:
        ``(labels, unknown)``: the class map and the number of ground-truth pixels whose
        colour is not in the palette (mapped to class 0, as AVSBench does).

    Raises:
        InputError: unreadable file, unsupported mode, predicted colours outside the
            palette, or indices outside [0, num_classes).
    """
    img = _open(path, size)
    if img.mode in _COLOUR_MODES:
        rgb = np.asarray(img.convert("RGB"))
        labels, known = palette_match(rgb, avss_palette(num_classes))
        if not is_gt and not known.all():
            y, x = (int(v[0]) for v in np.nonzero(~known))
            raise InputError(
                f"colour {tuple(int(c) for c in rgb[y, x])} at pixel (x={x}, y={y}) in {path} "
                f"is not in the AVSS palette of {num_classes} classes"
            )
        unknown = int((~known).sum())
        return labels, unknown
    if img.mode in _INDEX_MODES:
        labels = np.asarray(img).astype(np.int64)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise InputError(
                f"class indices in {path}: expected values in [0, {num_classes - 1}], got "
                f"{_value_list(labels)}"
            )
        return labels, 0
    raise InputError(
        f"unsupported PNG mode in {path}: expected colour ({sorted(_COLOUR_MODES)}) or index "
        f"({sorted(_INDEX_MODES)}), got {img.mode!r}"
    )


def avss_palette(num_classes: int = AVSS_NUM_CLASSES) -> np.ndarray:
    """AVSBench-semantic colour palette (``color_dataloader.py::get_v2_pallete``).

    Class j's colour spreads the bits of j over the three channels, most significant bit
    first (the PASCAL VOC construction): bit 3i of j goes to bit 7-i of red, bit 3i+1 to green,
    bit 3i+2 to blue. Class 0 (background) is black, class 1 is (128, 0, 0).

    Returns:
        uint8 array [num_classes, 3] of RGB colours.
    """
    if num_classes < 1 or num_classes > 256:
        raise ValueError(f"expected 1 <= num_classes <= 256, got {num_classes}")
    pal = np.zeros((num_classes, 3), dtype=np.uint8)
    for j in range(num_classes):
        lab, bit = j, 7
        rgb = [0, 0, 0]
        while lab > 0:
            for ch in range(3):
                rgb[ch] |= ((lab >> ch) & 1) << bit
            bit -= 1
            lab >>= 3
        pal[j] = rgb
    return pal


def palette_match(
    rgb: np.ndarray, palette: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Match every pixel's colour against a palette.

    Args:
        rgb: uint8 array [H, W, 3].
        palette: [C, 3] colours (default ``avss_palette()``).

    Returns:
        ``(labels, known)``: int64 [H, W] palette index (0 where the colour is in no entry,
        the first entry on duplicates) and bool [H, W], True where the colour is in the palette.
    """
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an H x W x 3 colour mask, got shape {rgb.shape}")
    pal = avss_palette() if palette is None else palette
    if pal.ndim != 2 or pal.shape[1] != 3:
        raise ValueError(f"expected a C x 3 palette, got shape {pal.shape}")
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pal_code = (pal[:, 0].astype(np.int64) << 16) | (pal[:, 1].astype(np.int64) << 8) | pal[:, 2]
    lut: dict[int, int] = {}
    for idx in range(len(pal_code) - 1, -1, -1):  # first palette entry wins on duplicates
        lut[int(pal_code[idx])] = idx
    uniq, inv = np.unique(code, return_inverse=True)
    mapped = np.array([lut.get(int(u), 0) for u in uniq], dtype=np.int64)
    known = np.array([int(u) in lut for u in uniq], dtype=bool)
    inv = inv.reshape(code.shape)
    return mapped[inv], known[inv]


def colour_mask_to_labels(rgb: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """RGB colour mask -> class indices, as AVSBench ``color_mask_to_label``.

    Args:
        rgb: uint8 array [H, W, 3].
        palette: [C, 3] colours (default ``avss_palette()``).

    Returns:
        int64 array [H, W]. A pixel whose colour is in no palette entry gets class 0, as in
        AVSBench (argmax over an all-false match vector).
    """
    return palette_match(rgb, palette)[0]
