"""The installed layout of DESIGN section 1: one import root, mapped sub-packages, presets."""

from __future__ import annotations

import importlib

import pytest

from moca_rt import config


@pytest.mark.parametrize("name", ["moca_rt.kernels", "moca_rt.export", "moca_rt.train"])
def test_mapped_subpackages_import(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__name__ == name


def test_presets_are_frozen_and_named() -> None:
    preset = config.MOCA_PRESETS["moca_huge"]
    with pytest.raises(AttributeError):
        preset.adapter.bottleneck = 3  # type: ignore[misc]
    assert preset.imagebind.vision.embed_dim == 1280
    assert preset.imagebind.audio.num_blocks == 12
    assert set(config.SAM_PRESETS) >= {"sam_vit_h", "sam_vit_l", "sam_vit_b"}
