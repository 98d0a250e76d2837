"""ImageBind vision/audio: official key layout, strict loading, reference stages, pos-embed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURES
from numeric import assert_close_stage, compare
from safetensors.torch import load_file

from moca_rt.checkpoints import CheckpointMismatchError
from moca_rt.config import IMAGEBIND_PRESETS
from moca_rt.modeling.imagebind import (
    SKIPPED_PREFIXES,
    ImageBindVisionAudio,
    MultiheadSelfAttention,
    config_from_official_kwargs,
    interpolate_pos_embed,
    load_imagebind,
    official_key_layout,
)

IB = FIXTURES / "imagebind"
PRE = FIXTURES / "preprocessing"


def _read_keys_tsv(path: Path) -> dict[str, tuple[int, ...]]:
    rows: dict[str, tuple[int, ...]] = {}
    for line in path.read_text().splitlines()[1:]:
        key, shape, _dtype, numel = line.split("\t")
        dims = tuple(int(d) for d in shape.strip("()").replace(" ", "").split(",") if d)
        assert math.prod(dims) == int(numel), line
        rows[key] = dims
    return rows


def _is_vision_audio(key: str) -> bool:
    return key.split(".")[1] in ("vision", "audio")


@pytest.fixture(scope="module")
def huge_keys() -> dict[str, tuple[int, ...]]:
    return _read_keys_tsv(IB / "imagebind_huge_keys.tsv")


@pytest.fixture(scope="module")
def reference() -> tuple[ImageBindVisionAudio, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    config = json.loads((IB / "config.json").read_text())
    cfg = config_from_official_kwargs(config["kwargs"])
    model = load_imagebind(IB / "weights.safetensors", cfg)
    images = torch.stack(
        [load_file(PRE / "vision.safetensors")[n.split(":")[1]] for n in _stack(config, "vision")]
    )
    fbank = torch.stack(
        [load_file(PRE / "audio.safetensors")[n.split(":")[1]] for n in _stack(config, "audio")]
    )
    return model, load_file(IB / "outputs.safetensors"), images, fbank


def _stack(config: dict, modality: str) -> list[str]:
    return list(config["inputs"][f"{modality}_input"]["stack_of"])


def test_huge_preset_has_official_vision_audio_layout(huge_keys: dict) -> None:
    expected = {k: v for k, v in huge_keys.items() if _is_vision_audio(k)}
    ours = official_key_layout(IMAGEBIND_PRESETS["imagebind_huge"])
    assert sorted(ours) == sorted(expected)
    assert ours == expected
    others = [k for k in huge_keys if not _is_vision_audio(k)]
    assert others and all(k.startswith(SKIPPED_PREFIXES) for k in others)
    print(f"\nimagebind_huge: {len(ours)} vision/audio keys, {len(others)} skipped keys")


def test_huge_loads_official_layout_strictly_on_meta(huge_keys: dict) -> None:
    state = {k: torch.empty(shape, device="meta") for k, shape in huge_keys.items()}
    model = load_imagebind(state, IMAGEBIND_PRESETS["imagebind_huge"])
    assert model.vision.stem.weight.shape == (1280, 3, 14, 14)
    assert model.vision.stem.weight.is_meta
    assert len(model.vision.blocks) == 32 and len(model.audio.blocks) == 12
    assert model.audio.blocks[0].attn.bias_k is not None
    assert model.vision.blocks[0].attn.bias_k is None


def test_missing_and_unexpected_keys_are_named(huge_keys: dict) -> None:
    state = {k: torch.empty(shape, device="meta") for k, shape in huge_keys.items()}
    missing = "modality_trunks.audio.blocks.3.norm_2.bias"
    extra = "modality_trunks.vision.blocks.32.norm_1.weight"
    del state[missing]
    state[extra] = torch.empty(1280, device="meta")
    with pytest.raises(CheckpointMismatchError) as err:
        load_imagebind(state, IMAGEBIND_PRESETS["imagebind_huge"])
    assert missing in str(err.value) and extra in str(err.value)


def test_wrong_shape_is_rejected(huge_keys: dict) -> None:
    state = {k: torch.empty(shape, device="meta") for k, shape in huge_keys.items()}
    state["modality_heads.audio.2.weight"] = torch.empty(512, 768, device="meta")
    with pytest.raises(CheckpointMismatchError, match=r"audio\.head_proj\.weight"):
        load_imagebind(state, IMAGEBIND_PRESETS["imagebind_huge"])
    state = {k: torch.empty(shape, device="meta") for k, shape in huge_keys.items()}
    state["modality_preprocessors.vision.rgbt_stem.proj.1.weight"] = torch.empty(
        1280, 3, 3, 14, 14, device="meta"
    )
    with pytest.raises(CheckpointMismatchError, match="rgbt_stem"):
        load_imagebind(state, IMAGEBIND_PRESETS["imagebind_huge"])


def test_config_from_fixture_matches_test_preset() -> None:
    kwargs = json.loads((IB / "config.json").read_text())["kwargs"]
    assert config_from_official_kwargs(kwargs) == IMAGEBIND_PRESETS["imagebind_test"]


@pytest.mark.parametrize("modality", ["vision", "audio"])
def test_reference_stages(reference: tuple, modality: str) -> None:
    model, outputs, images, fbank = reference
    with torch.no_grad():
        if modality == "vision":
            stages = model.vision.forward_stages(images)
            fast = model.vision(images)
        else:
            stages = model.audio.forward_stages(fbank)
            fast = model.audio(fbank)
    prefix = f"{modality}."
    names = sorted(k[len(prefix) :] for k in outputs if k.startswith(prefix))
    depth = len(model.vision.blocks if modality == "vision" else model.audio.blocks)
    assert {f"block{i:02d}" for i in range(depth)} <= set(names)
    print()
    for name in names:
        c = assert_close_stage(stages[name], outputs[prefix + name], f"{modality}.{name}")
        print(f"  {modality}.{name:22s} {c}")
    ref_emb = outputs[f"{modality}_embedding"]
    atol = 1e-5 if modality == "vision" else 1e-4
    for label, emb in (("stages", stages["embedding"]), ("forward", fast)):
        c = compare(emb, ref_emb)
        print(f"  {modality}_embedding ({label}) {c}")
        assert c.max_abs <= atol, f"{modality}_embedding: {c}"
    if modality == "audio":
        norm = stages["embedding"].norm(dim=-1)
        assert torch.all((norm > 15) & (norm <= 20.0 + 1e-4)), norm


def test_summed_conv2d_equals_conv3d_on_repeated_frames() -> None:
    torch.manual_seed(0)
    weight = torch.randn(8, 3, 2, 14, 14, dtype=torch.float64)
    image = torch.randn(2, 3, 56, 56, dtype=torch.float64)
    video = image[:, :, None].repeat(1, 1, 2, 1, 1)
    ref = F.conv3d(video, weight, stride=(2, 14, 14))[:, :, 0]
    ours = F.conv2d(image, weight.sum(dim=2), stride=14)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias_kv", [False, True])
def test_attention_matches_nn_multihead_attention(bias_kv: bool) -> None:
    torch.manual_seed(1)
    ours = MultiheadSelfAttention(32, 4, add_bias_kv=bias_kv).double()
    ref = torch.nn.MultiheadAttention(32, 4, add_bias_kv=bias_kv).double()
    state = {k: torch.randn_like(v) for k, v in ref.state_dict().items()}
    ref.load_state_dict(state)
    ours.load_state_dict(state)
    x = torch.randn(3, 11, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = ref(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1))[0].transpose(0, 1)
        got = ours(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_pos_embed_interpolation_112_and_non_square(reference: tuple) -> None:
    model, _, images, _ = reference
    small = F.interpolate(images, size=(112, 112), mode="bilinear", align_corners=False)
    with torch.no_grad():
        stages = model.vision.forward_stages(small)
    assert stages["tokens_in"].shape == (images.shape[0], 1 + 8 * 8, model.config.vision.embed_dim)
    assert torch.isfinite(stages["embedding"]).all()
    torch.testing.assert_close(stages["embedding"].norm(dim=-1), torch.ones(images.shape[0]))
    with pytest.raises(ValueError, match="square"):
        model.vision(images[..., :, :196])


def test_interpolate_pos_embed_properties() -> None:
    torch.manual_seed(2)
    table = torch.randn(1, 1 + 16 * 16, 5)
    assert interpolate_pos_embed(table, 256) is table
    constant = torch.full((1, 1 + 256, 3), 0.7)
    constant[:, 0] = -4.0
    out = interpolate_pos_embed(constant, 64)
    assert out.shape == (1, 65, 3)
    assert torch.equal(out[:, 0], constant[:, 0])
    torch.testing.assert_close(out[:, 1:], torch.full((1, 64, 3), 0.7))
    # A ramp along x stays monotone along x after bicubic upsampling (16 -> 32).
    ramp = torch.zeros(1, 257, 1)
    ramp[0, 1:, 0] = torch.arange(16.0).repeat(16)
    up = interpolate_pos_embed(ramp, 1024)[0, 1:, 0].reshape(32, 32)
    assert torch.all(up[:, 1:] >= up[:, :-1] - 1e-5)
    with pytest.raises(ValueError, match="square"):
        interpolate_pos_embed(table, 200)


def test_bad_input_shapes(reference: tuple) -> None:
    model, _, images, fbank = reference
    with pytest.raises(ValueError, match="expected fbank"):
        model.audio(fbank[:, :, :, :, :100])
    with pytest.raises(ValueError, match="expected fbank"):
        model.audio(fbank[0])
    with pytest.raises(ValueError, match="expected images"):
        model.vision(images[:, :1])


def test_full_official_pickle_loads_and_skips_other_modalities(reference: tuple, tmp_path) -> None:
    """The whole official state dict (all six modalities) as a torch pickle, like the .pth file."""
    model, _, images, fbank = reference
    full = load_file(IB / "weights.safetensors") | load_file(
        IB / "weights_other_modalities.safetensors"
    )
    assert any(k.startswith("modality_trunks.text.") for k in full)
    path = tmp_path / "imagebind_test.pth"
    torch.save(full, path)
    loaded = load_imagebind(path, model.config)
    assert all(not p.is_meta for p in loaded.parameters())
    ours, ref = loaded.state_dict(), model.state_dict()
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)
    # Same weights; memory-mapped storage may pick another BLAS path, so not bit for bit.
    with torch.no_grad():
        torch.testing.assert_close(loaded.vision(images), model.vision(images))
        torch.testing.assert_close(loaded.audio(fbank), model.audio(fbank))
    full["modality_trunks.audio.blocks.0.attn.bias_q"] = torch.zeros(1, 1, 64)
    with pytest.raises(CheckpointMismatchError, match="bias_q"):
        load_imagebind(full, model.config)
