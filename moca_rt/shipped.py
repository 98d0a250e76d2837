"""The tiny trained models that ship inside the package (DESIGN section 6).

``moca_rt/assets/synth/`` holds the weights of ``imagebind_synth`` (official ImageBind key
layout), the AdaAV of ``moca_synth`` and ``sam_synth``, all trained on the synthetic world by
``python -m moca_rt.train.synth_models``, and ``manifest.json``: the command, seeds, versions,
validation metrics, the calibrated pipeline and proposal settings, and the sha256 of every file.
Each file is checked against its sha256 before it is handed out, so a damaged install fails
loudly instead of segmenting with other weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from moca_rt.provenance import sha256_file

__all__ = [
    "ASSETS_DIR",
    "ShippedWeights",
    "ShippedWeightsError",
    "load_manifest",
    "shipped_available",
    "shipped_weights",
]

ASSETS_DIR = Path(__file__).resolve().parent / "assets" / "synth"
MANIFEST = "manifest.json"


class ShippedWeightsError(RuntimeError):
    """The shipped weights are missing or do not match their manifest."""


@dataclass(frozen=True)
class ShippedWeights:
    """Paths of the shipped tiny models (sha256-checked) and their calibrated settings.

    ``pipeline`` holds :class:`~moca_rt.pipeline.PipelineConfig` fields and ``proposals``
    :class:`~moca_rt.proposals.ProposalConfig` fields, calibrated on the validation partition.
    """

    imagebind: Path
    adapter: Path
    sam: Path
    pipeline: dict[str, Any]
    proposals: dict[str, Any]
    manifest: dict[str, Any]
    folder: Path


def load_manifest(folder: Path = ASSETS_DIR) -> dict[str, Any]:
    """The manifest of a weights folder; :class:`ShippedWeightsError` when it is missing."""
    path = folder / MANIFEST
    if not path.is_file():
        raise ShippedWeightsError(
            f"no trained tiny weights in {folder} (expected {MANIFEST}); reproduce them with "
            f"`python -m moca_rt.train.synth_models --out DIR` and pass them by path"
        )
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def shipped_available(folder: Path = ASSETS_DIR) -> bool:
    """Whether a manifest is present (the files are checked when they are used)."""
    return (folder / MANIFEST).is_file()


@cache
def _checked(path: Path, expected: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise ShippedWeightsError(
            f"{path}: sha256 {got} does not match the manifest's {expected}; the package is "
            f"damaged, reinstall it"
        )


def shipped_weights(folder: Path = ASSETS_DIR) -> ShippedWeights:
    """The shipped weights, every file checked against the manifest's sha256."""
    manifest = load_manifest(folder)
    files: dict[str, dict[str, Any]] = manifest["files"]
    paths: dict[str, Path] = {}
    for role in ("imagebind", "adapter", "sam"):
        name = manifest["roles"][role]
        path = folder / name
        if not path.is_file():
            raise ShippedWeightsError(f"{path}: listed in the manifest but missing")
        _checked(path, files[name]["sha256"])
        paths[role] = path
    return ShippedWeights(
        imagebind=paths["imagebind"],
        adapter=paths["adapter"],
        sam=paths["sam"],
        pipeline=dict(manifest["calibration"]["pipeline"]),
        proposals=dict(manifest["calibration"]["proposals"]),
        manifest=manifest,
        folder=folder,
    )
