"""kNN pairing for MoCA training (DESIGN section 4, paper section 3.1).

Every training image gets one global feature from a frozen featuriser (DINO CLS by default,
or the mean of DINO's normed patch tokens), L2-normalised. An exact cosine top-K table over the
whole set (self excluded) then gives, for each anchor, its K most similar images.

Rules (what the trainer relies on):

* **Table**: ``indices[i]`` are the K dataset indices with the highest cosine to item i, sorted
  by decreasing cosine; ties are broken by the lower index. Item i itself is never listed
  (another item with an identical feature is). ``sims[i]`` are those cosines (float32).
* **Positive** of anchor a: ``indices[a, u]`` with u uniform in [0, K).
* **Negatives** of a batch ``b`` (dataset indices, length B): ``b[perm]`` for a permutation
  ``perm`` of the batch such that for every position i, ``b[perm[i]] != b[i]`` and
  ``b[perm[i]]`` is not in ``indices[b[i]]`` (the anchor's own top-K; the relation is not made
  symmetric). Every batch member is used exactly once as a negative. The permutation is drawn
  uniformly among the valid ones by rejection (``max_tries`` random shuffles); when none of them
  is valid, a random valid permutation is found by augmenting-path matching (not uniform); when
  no valid permutation exists (e.g. B = 1, or a batch of near-duplicates), ``ValueError``.

The table is a safetensors file with ``indices`` (int64 [N, K]) and ``sims`` (float32 [N, K]) and
a JSON string in its metadata (key ``moca_rt.pairing``): ``k``, ``n``, ``featuriser``,
``created`` (UTC ISO 8601), ``item_ids`` (optional list of N strings naming the items, e.g.
image paths relative to the image folder) and ``format`` (1).

CLI: ``python -m moca_rt.train.pairing --images DIR --weights dino_vitbase16_pretrain.pth
--out table.safetensors --k 10`` (``--images synth:N`` uses N scenes of the synthetic world).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moca_rt.modeling.dino import DinoViT, preprocess_dino

__all__ = [
    "IMAGE_SUFFIXES",
    "METADATA_KEY",
    "DinoFeaturiser",
    "Featuriser",
    "PairingTable",
    "compute_features",
    "featuriser_name",
    "knn_table",
    "load_table",
    "main",
    "run_pairing",
    "sample_negatives",
    "sample_positive",
    "save_table",
]

Featuriser = Callable[[Tensor], Tensor]
"""uint8 RGB images [B, H, W, 3] on the compute device -> global features [B, E] (any float)."""

Pooling = Literal["cls", "gap"]
METADATA_KEY = "moca_rt.pairing"
FORMAT_VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
ImageLike = np.ndarray | Tensor


class DinoFeaturiser(nn.Module):
    """DINO global feature of uint8 images: the CLS token or the mean of the patch tokens.

    Both come from the tokens after DINO's final LayerNorm; ``gap`` averages the patch tokens
    (CLS excluded). Input: uint8 RGB [B, H, W, 3] (any H, W >= patch size; DINO interpolates its
    positional table); output float32 [B, D], not normalised.
    """

    def __init__(self, model: DinoViT, pooling: Pooling = "cls") -> None:
        super().__init__()
        if pooling not in ("cls", "gap"):
            raise ValueError(f"pooling: expected 'cls' or 'gap', got {pooling!r}")
        self.model = model
        self.pooling: Pooling = pooling

    @property
    def name(self) -> str:
        c = self.model.config
        return f"dino_vit(p{c.patch_size},d{c.embed_dim},L{c.depth}):{self.pooling}"

    def forward(self, images: Tensor) -> Tensor:
        param = next(self.model.parameters())
        x = preprocess_dino(images.to(param.device)).to(param.dtype)
        tokens = self.model.forward_tokens(x)
        pooled = tokens[:, 0] if self.pooling == "cls" else tokens[:, 1:].mean(dim=1)
        return pooled.float()


def featuriser_name(featuriser: Featuriser) -> str:
    """``featuriser.name`` when it has one, else its class name (recorded in the table)."""
    name = getattr(featuriser, "name", None)
    return name if isinstance(name, str) else type(featuriser).__name__


def _as_uint8_hwc(image: ImageLike, image_size: int | None) -> Tensor:
    if image_size is not None:
        from moca_rt.preprocess import resize_center_crop

        image = resize_center_crop(image, image_size)
    t = image if isinstance(image, Tensor) else torch.from_numpy(np.array(image, copy=True))
    if t.dtype != torch.uint8 or t.dim() != 3 or t.shape[-1] != 3:
        raise ValueError(
            f"image: expected uint8 [H, W, 3] RGB, got dtype {t.dtype} shape {tuple(t.shape)}"
        )
    return t.cpu()


def _batches(
    images: Iterable[ImageLike], batch_size: int, image_size: int | None
) -> Iterator[Tensor]:
    batch: list[Tensor] = []
    for image in images:
        t = _as_uint8_hwc(image, image_size)
        if batch and t.shape != batch[0].shape:
            raise ValueError(
                f"images: expected one size within a batch, got {tuple(batch[0].shape)} and "
                f"{tuple(t.shape)}; pass image_size to resize and centre-crop"
            )
        batch.append(t)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


@torch.inference_mode()
def compute_features(
    featuriser: Featuriser,
    images: Iterable[ImageLike],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    image_size: int | None = None,
    progress: bool = False,
) -> Tensor:
    """Global features of every image, L2-normalised: float32 [N, E] on the CPU.

    Args:
        featuriser: uint8 [B, H, W, 3] (on ``device``) -> [B, E], e.g. :class:`DinoFeaturiser`.
        images: uint8 RGB [H, W, 3] arrays or tensors, in dataset order (row i = item i).
        batch_size: images per featuriser call.
        device: where the uint8 batches are sent before the featuriser runs.
        image_size: if given, each image is first resized (shorter side, PIL bicubic) and
            centre-cropped to ``image_size`` squared; otherwise images within a batch must share
            one size.
        progress: show a tqdm bar.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    feats: list[Tensor] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="features", unit="img")
    for batch in _batches(images, batch_size, image_size):
        out = featuriser(batch.to(device))
        if out.dim() != 2 or out.shape[0] != batch.shape[0]:
            raise ValueError(
                f"featuriser: expected [{batch.shape[0]}, E] features, got {tuple(out.shape)}"
            )
        out = out.float()
        if not torch.isfinite(out).all():
            raise ValueError("featuriser: expected finite features, got NaN or inf")
        feats.append(F.normalize(out, dim=1).cpu())
        if bar is not None:
            bar.update(batch.shape[0])
    if bar is not None:
        bar.close()
    if not feats:
        raise ValueError("images: expected at least one image, got none")
    return torch.cat(feats)


_LOW_BITS = 32
_LOW_MASK = (1 << _LOW_BITS) - 1
_SIGN = 1 << 31


def _order_keys(sim: Tensor, col_ids: Tensor) -> Tensor:
    """int64 keys whose order is (cosine desc, index asc) and which are all distinct.

    ``sim`` is float32 [R, C]; ``col_ids`` int64 dataset indices broadcastable to it.

    The float32 bits are mapped to an int that orders like the float (negative floats flipped),
    shifted up 32 bits, and the low 32 bits hold ``2^32 - 1 - index``, so ``topk`` on the keys
    has no ties and its result does not depend on the device, tile size or thread count.
    """
    bits = sim.contiguous().view(torch.int32).to(torch.int64)
    ordered = torch.where(bits >= 0, bits, -(bits + _SIGN) - 1)
    return (ordered << _LOW_BITS) | (_LOW_MASK - col_ids)


def _decode_keys(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`_order_keys`: (float32 cosines, int64 indices)."""
    ordered = keys >> _LOW_BITS
    idx = _LOW_MASK - (keys & _LOW_MASK)
    bits = torch.where(ordered >= 0, ordered, -(ordered + 1) - _SIGN)
    return bits.to(torch.int32).view(torch.float32), idx


@torch.inference_mode()
def knn_table(
    features: Tensor, k: int = 10, chunk: int = 4096, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """Exact cosine top-K of every row against all other rows, in ``chunk x chunk`` tiles.

    Features are L2-normalised here (a no-op for :func:`compute_features` output) and the
    cosines computed in float32 on ``device`` (default: the features' device). Rows are
    processed ``chunk`` at a time against ``chunk`` columns at a time, keeping a running top-K,
    so the extra memory is a few ``chunk x chunk`` tiles, never N x N. Ties are resolved
    exactly by an int64 key per entry (:func:`_order_keys`), not by ``topk``'s own order.

    Args:
        features: float [N, E], row i = dataset item i.
        k: neighbours per item, 1 <= k <= N - 1.
        chunk: tile side (rows and columns), >= 1.

    Returns:
        ``(indices, sims)`` on the CPU: int64 [N, k] and float32 [N, k], each row sorted by
        decreasing cosine, ties broken by the lower index; item i is never in row i.
    """
    if features.dim() != 2 or features.shape[0] < 2 or features.shape[1] < 1:
        raise ValueError(f"features: expected [N >= 2, E >= 1], got {tuple(features.shape)}")
    n = features.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k: expected 1 <= k <= N - 1 = {n - 1}, got {k}")
    if chunk < 1:
        raise ValueError(f"chunk: expected >= 1, got {chunk}")
    if not features.is_floating_point() or not torch.isfinite(features).all():
        raise ValueError(f"features: expected finite floats, got dtype {features.dtype}")
    dev = torch.device(device) if device is not None else features.device
    f = F.normalize(features.to(dev, torch.float32), dim=1)
    out_idx = torch.empty(n, k, dtype=torch.int64)
    out_sim = torch.empty(n, k, dtype=torch.float32)
    for r0 in range(0, n, chunk):
        rows = f[r0 : r0 + chunk]
        r = rows.shape[0]
        best = torch.empty((r, 0), dtype=torch.int64, device=dev)
        for c0 in range(0, n, chunk):
            cols = f[c0 : c0 + chunk]
            sim = rows @ cols.T
            col_ids = torch.arange(c0, c0 + cols.shape[0], device=dev)
            if c0 == r0:  # rows and columns share the tiling: self pairs lie on this diagonal
                sim.fill_diagonal_(float("-inf"))
            kk = min(k, cols.shape[0])
            vals, sel = torch.topk(sim, kk, dim=1)
            tile = _order_keys(vals, col_ids[sel])
            # topk's choice among entries equal to the k-th value is unspecified: redo those
            # rows (rare: duplicates or exact ties) on the keys of the whole tile row.
            tied = ((sim >= vals[:, -1:]).sum(dim=1) > kk).nonzero().squeeze(1)
            if tied.numel():
                full = _order_keys(sim[tied], col_ids[None, :])
                tile[tied] = torch.topk(full, kk, dim=1).values
            merged = torch.cat((best, tile), dim=1)
            best = torch.topk(merged, min(k, merged.shape[1]), dim=1).values
        best_sim, best_idx = _decode_keys(best)
        out_idx[r0 : r0 + r] = best_idx.cpu()
        out_sim[r0 : r0 + r] = best_sim.cpu()
    return out_idx, out_sim


@dataclass(frozen=True)
class PairingTable:
    """A saved top-K table (see the module docstring for the rules and the file format).

    Attributes:
        indices: int64 [N, K] neighbour indices, row i for item i.
        sims: float32 [N, K] their cosines.
        featuriser: name of the featuriser that produced the features.
        created: UTC ISO 8601 time stamp.
        item_ids: optional N names of the items (e.g. relative image paths).
    """

    indices: Tensor
    sims: Tensor
    featuriser: str
    created: str
    item_ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        idx, sims = self.indices, self.sims
        if idx.dim() != 2 or idx.dtype != torch.int64:
            raise ValueError(f"indices: expected int64 [N, K], got {idx.dtype} {tuple(idx.shape)}")
        if sims.shape != idx.shape or sims.dtype != torch.float32:
            raise ValueError(
                f"sims: expected float32 {tuple(idx.shape)}, got {sims.dtype} {tuple(sims.shape)}"
            )
        n = idx.shape[0]
        if idx.numel() and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"indices: expected values in [0, {n}), got a value outside")
        if (idx == torch.arange(n)[:, None]).any():
            raise ValueError("indices: expected no item to list itself as a neighbour")
        if self.item_ids is not None and len(self.item_ids) != n:
            raise ValueError(f"item_ids: expected {n} names, got {len(self.item_ids)}")

    @property
    def n(self) -> int:
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    @classmethod
    def build(
        cls,
        features: Tensor,
        k: int = 10,
        featuriser: str = "unknown",
        item_ids: Sequence[str] | None = None,
        chunk: int = 4096,
        device: torch.device | str | None = None,
    ) -> PairingTable:
        """:func:`knn_table` of ``features`` [N, E], stamped with the current UTC time."""
        idx, sims = knn_table(features, k=k, chunk=chunk, device=device)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        ids = tuple(item_ids) if item_ids is not None else None
        return cls(idx, sims, featuriser, created, ids)


def save_table(table: PairingTable, path: str | Path) -> None:
    """Write ``table`` as safetensors with its JSON metadata (module docstring)."""
    from safetensors.torch import save_file

    meta = {
        "format": FORMAT_VERSION,
        "k": table.k,
        "n": table.n,
        "featuriser": table.featuriser,
        "created": table.created,
        "item_ids": list(table.item_ids) if table.item_ids is not None else None,
    }
    tensors = {"indices": table.indices.contiguous(), "sims": table.sims.contiguous()}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})


def load_table(path: str | Path) -> PairingTable:
    """Read a table written by :func:`save_table`; checks its metadata against its tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        raw = (fh.metadata() or {}).get(METADATA_KEY)
        if raw is None:
            raise ValueError(f"{path}: expected a pairing table with '{METADATA_KEY}' metadata")
        names = set(fh.keys())
        if names != {"indices", "sims"}:
            raise ValueError(f"{path}: expected tensors ['indices', 'sims'], got {sorted(names)}")
        idx, sims = fh.get_tensor("indices"), fh.get_tensor("sims")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: expected format {FORMAT_VERSION}, got {meta.get('format')}")
    if (meta["n"], meta["k"]) != tuple(idx.shape):
        raise ValueError(
            f"{path}: metadata says n={meta['n']}, k={meta['k']}, got indices {tuple(idx.shape)}"
        )
    ids = meta.get("item_ids")
    return PairingTable(
        idx, sims, meta["featuriser"], meta["created"], tuple(ids) if ids is not None else None
    )


def _neighbours(table: PairingTable | Tensor) -> Tensor:
    idx = table.indices if isinstance(table, PairingTable) else table
    if idx.dim() != 2 or idx.dtype != torch.int64:
        raise ValueError(
            f"table: expected int64 [N, K] indices, got {idx.dtype} {tuple(idx.shape)}"
        )
    return idx


def _check_items(items: Tensor, n: int, name: str) -> None:
    if items.dtype != torch.int64 or items.dim() != 1:
        raise ValueError(f"{name}: expected int64 [B], got {items.dtype} {tuple(items.shape)}")
    if items.numel() and (items.min() < 0 or items.max() >= n):
        raise ValueError(f"{name}: expected dataset indices in [0, {n}), got {items.tolist()}")


def sample_positive(
    table: PairingTable | Tensor, anchor_idx: int | Tensor, generator: torch.Generator
) -> int | Tensor:
    """A uniformly random one of the anchor's top-K (an int for an int, int64 [B] for [B]).

    ``table`` is a :class:`PairingTable` or its int64 [N, K] ``indices`` (on the CPU).
    """
    idx = _neighbours(table)
    anchors = torch.as_tensor(anchor_idx, dtype=torch.int64).reshape(-1)
    _check_items(anchors, idx.shape[0], "anchor_idx")
    pick = torch.randint(0, idx.shape[1], (anchors.numel(),), generator=generator)
    pos = idx[anchors, pick]
    return int(pos.item()) if isinstance(anchor_idx, int) else pos


def _perfect_matching(allowed: np.ndarray, rng: np.random.Generator) -> list[int] | None:
    """Random-order augmenting paths (Kuhn): a permutation p with allowed[i, p[i]], or None."""
    b = allowed.shape[0]
    match_col = [-1] * b
    options = [rng.permutation(np.flatnonzero(allowed[i])).tolist() for i in range(b)]

    def augment(i: int, seen: list[bool]) -> bool:
        for j in options[i]:
            if not seen[j]:
                seen[j] = True
                if match_col[j] < 0 or augment(match_col[j], seen):
                    match_col[j] = i
                    return True
        return False

    for i in rng.permutation(b).tolist():
        if not augment(i, [False] * b):
            return None
    perm = [0] * b
    for j, i in enumerate(match_col):
        perm[i] = j
    return perm


def sample_negatives(
    batch_indices: Tensor,
    table: PairingTable | Tensor,
    generator: torch.Generator,
    max_tries: int = 100,
) -> Tensor:
    """A shuffle of the batch that never gives an anchor itself or one of its top-K.

    Args:
        batch_indices: int64 [B] dataset indices of the anchors.
        table: a :class:`PairingTable` or its int64 [N, K] indices.
        generator: CPU generator; the result is a pure function of its state.
        max_tries: random shuffles tried before the matching fallback (module docstring).

    Returns:
        int64 [B]: ``batch_indices[perm]`` for a valid permutation ``perm``.

    Raises:
        ValueError: when no valid permutation exists, naming the anchors with fewest options.
    """
    idx = _neighbours(table)
    _check_items(batch_indices, idx.shape[0], "batch_indices")
    b = batch_indices.numel()
    if b < 2:
        raise ValueError(f"batch_indices: expected a batch of at least 2 to shuffle, got {b}")
    nbrs = idx[batch_indices]  # [B, K]
    cand = batch_indices[None, :]  # column j is the candidate batch_indices[j]
    forbidden = (cand == batch_indices[:, None]) | (cand[:, :, None] == nbrs[:, None, :]).any(-1)
    allowed = ~forbidden
    rows = torch.arange(b)
    for _ in range(max_tries):
        perm = torch.randperm(b, generator=generator)
        if allowed[rows, perm].all():
            return batch_indices[perm]
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    found = _perfect_matching(allowed.numpy(), np.random.default_rng(seed))
    if found is None:
        counts = allowed.sum(1)
        worst = torch.argsort(counts, stable=True)[:4].tolist()
        detail = ", ".join(
            f"anchor {int(batch_indices[i])} has {int(counts[i])} allowed" for i in worst
        )
        raise ValueError(
            f"cannot draw negatives: expected a shuffle of the batch of {b} that avoids every "
            f"anchor and its top-{idx.shape[1]}, got none ({detail}); use a larger or more "
            f"varied batch or a smaller K"
        )
    return batch_indices[torch.tensor(found, dtype=torch.int64)]


# --------------------------------------------------------------------------------------------
# CLI


def _folder_images(root: Path) -> tuple[list[str], Iterator[np.ndarray]]:
    from PIL import Image

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"--images: expected image files ({', '.join(IMAGE_SUFFIXES)}) in {root}")

    def gen() -> Iterator[np.ndarray]:
        for p in files:
            with Image.open(p) as im:
                yield np.asarray(im.convert("RGB"))

    return [p.relative_to(root).as_posix() for p in files], gen()


def _synth_images(count: int, seed: int, size: int) -> tuple[list[str], Iterator[np.ndarray]]:
    from moca_rt.datasets.synth import SynthWorld

    world = SynthWorld(seed, image_size=size)
    ids = [f"synth:s4:{i}" for i in range(count)]
    return ids, (world.sample("s4", i).image for i in range(count))


def run_pairing(
    images: str,
    out: str | Path,
    k: int = 10,
    weights: str | Path | None = None,
    preset: str = "dino_vitb16",
    pooling: Pooling = "cls",
    image_size: int | None = 224,
    batch_size: int = 64,
    chunk: int = 4096,
    device: str = "cpu",
    random_weights_seed: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> PairingTable:
    """Featurise a folder (or ``synth:N``) with DINO, build the top-K table and save it."""
    from moca_rt.config import DINO_PRESETS
    from moca_rt.modeling.dino import load_dino

    if preset not in DINO_PRESETS:
        raise ValueError(f"preset: expected one of {sorted(DINO_PRESETS)}, got {preset!r}")
    config = DINO_PRESETS[preset]
    if (weights is None) == (random_weights_seed is None):
        raise ValueError("expected exactly one of weights and random_weights_seed")
    if weights is not None:
        model = load_dino(weights, config, device=device)
    else:
        torch.manual_seed(int(random_weights_seed or 0))
        model = DinoViT(config).to(device).eval()
        nn.init.normal_(model.pos_embed, std=0.02)
        nn.init.normal_(model.cls_token, std=0.02)
    if images.startswith("synth:"):
        ids, stream = _synth_images(int(images.split(":", 1)[1]), seed, image_size or 224)
    else:
        ids, stream = _folder_images(Path(images))
    featuriser = DinoFeaturiser(model, pooling)
    feats = compute_features(featuriser, stream, batch_size, device, image_size, progress)
    table = PairingTable.build(feats, k, featuriser.name, ids, chunk, device)
    save_table(table, out)
    return table


def sample_negatives_or_redraw(
    batch_indices: Tensor, table: PairingTable | Tensor, generator: torch.Generator, num_items: int
) -> Tensor:
    """:func:`sample_negatives`, or, when the batch has no valid shuffle (e.g. one class fills
    more than half a batch under the ``class`` pairing), a negative per anchor drawn from all
    ``num_items`` items avoiding the anchor and its top-K. Never raises for a valid table with
    ``num_items > K + 1``; a pure function of the generator's state."""
    try:
        return sample_negatives(batch_indices, table, generator)
    except ValueError:
        pass
    idx = _neighbours(table)
    out = []
    for a in batch_indices.tolist():
        forbidden = set(idx[a].tolist()) | {a}
        if len(forbidden) >= num_items:
            raise ValueError(
                f"cannot draw a negative for anchor {a}: all {num_items} items are its neighbours"
            )
        while True:
            j = int(torch.randint(0, num_items, (1,), generator=generator))
            if j not in forbidden:
                out.append(j)
                break
    return torch.tensor(out, dtype=torch.int64)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m moca_rt.train.pairing``; returns the exit code."""
    from moca_rt.config import DINO_PRESETS

    parser = argparse.ArgumentParser(
        prog="python -m moca_rt.train.pairing",
        description="Build the DINO kNN pairing table of a set of training images.",
    )
    parser.add_argument(
        "--images",
        required=True,
        help="A folder searched recursively for images, or synth:N for N synthetic scenes.",
    )
    parser.add_argument("--out", required=True, help="The table file to write (.safetensors).")
    parser.add_argument("--k", type=int, default=10, help="Neighbours kept per image.")
    parser.add_argument("--weights", help="Official DINO backbone weights (.pth or .safetensors).")
    parser.add_argument(
        "--random-weights",
        type=int,
        metavar="SEED",
        help="Use a seeded random DINO instead of weights (only for smoke tests).",
    )
    parser.add_argument("--preset", default="dino_vitb16", choices=sorted(DINO_PRESETS))
    parser.add_argument(
        "--pooling",
        default="cls",
        choices=["cls", "gap"],
        help="Global feature: the CLS token or the mean of the patch tokens.",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=224,
        help="Resize the shorter side and centre-crop to this size; "
        "0 keeps the images as they are.",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="Images per DINO call.")
    parser.add_argument("--chunk", type=int, default=4096, help="Tile side of the top-K search.")
    parser.add_argument("--device", default="cpu", help="Torch device, e.g. cuda or cpu.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic world.")
    args = parser.parse_args(argv)
    try:
        table = run_pairing(
            args.images,
            args.out,
            k=args.k,
            weights=args.weights,
            preset=args.preset,
            pooling=args.pooling,
            image_size=args.image_size or None,
            batch_size=args.batch_size,
            chunk=args.chunk,
            device=args.device,
            random_weights_seed=args.random_weights,
            seed=args.seed,
            progress=sys.stderr.isatty(),
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {table.n} items, k={table.k}, featuriser {table.featuriser}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
