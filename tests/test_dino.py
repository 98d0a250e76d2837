"""DINO ViT against the reference fixtures (tests/fixtures/dino, from the shared reference)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURES, requires_cuda
from numeric import assert_close_stage, compare
from PIL import Image
from safetensors.torch import load_file

from moca_rt.checkpoints import CheckpointMismatchError
from moca_rt.config import DINO_PRESETS, DinoConfig
from moca_rt.modeling.dino import DinoViT, load_dino, preprocess_dino

DINO = FIXTURES / "dino"


def _config_from_fixture() -> DinoConfig:
    kw = json.loads((DINO / "config.json").read_text())["kwargs"]
    return DinoConfig(
        patch_size=kw["patch_size"],
        embed_dim=kw["embed_dim"],
        depth=kw["depth"],
        num_heads=kw["num_heads"],
        mlp_ratio=float(kw["mlp_ratio"]),
        image_size=kw["img_size"][0],
    )


@pytest.fixture(scope="module")
def model() -> DinoViT:
    return load_dino(DINO / "weights.safetensors", _config_from_fixture())


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(DINO / "outputs.safetensors"))


def _cases() -> list[str]:
    return list(json.loads((DINO / "config.json").read_text())["inputs"])


def _input(case: str) -> torch.Tensor:
    spec = json.loads((DINO / "config.json").read_text())["inputs"][case]
    img = np.asarray(Image.open(DINO / f"input_{case}.png").convert("RGB"))
    assert img.shape == (spec["h"], spec["w"], 3)
    x = preprocess_dino(img)
    assert tuple(x.shape) == tuple(spec["shape"])
    return x


def test_fixture_config_is_the_dino_test_preset() -> None:
    assert _config_from_fixture() == DINO_PRESETS["dino_test"]


@pytest.mark.parametrize("case", _cases())
def test_every_stage_matches_reference(
    case: str, model: DinoViT, reference: dict[str, torch.Tensor]
) -> None:
    x = _input(case)
    with torch.no_grad():
        inter = model.forward_intermediates(x)
        cls = model(x)
        tokens = model.forward_tokens(x)
    ours = {
        "tokens_in": inter.tokens_in,
        "tokens_lastlayer_normed": inter.tokens_normed,
        "cls": inter.cls,
        **{f"block{i:02d}": b for i, b in enumerate(inter.blocks)},
    }
    stored = sorted(k.split(".", 1)[1] for k in reference if k.startswith(f"{case}."))
    assert "tokens_in" in stored and "cls" in stored
    for stage in stored:
        c = assert_close_stage(ours[stage], reference[f"{case}.{stage}"], f"{case}.{stage}")
        print(f"dino {case}.{stage}: {c}")
    torch.testing.assert_close(cls, inter.cls, rtol=0, atol=0)
    torch.testing.assert_close(tokens, inter.tokens_normed, rtol=0, atol=0)


def test_size_based_interpolation_would_fail_the_gate(
    model: DinoViT, reference: dict[str, torch.Tensor]
) -> None:
    """Pitfall 11: the scale-factor call matters; a size-based bicubic resize is another one."""
    case = next(c for c in _cases() if c != "224")
    x = _input(case)
    p = model.config.patch_size
    h, w = x.shape[-2] // p, x.shape[-1] // p
    side = int((model.pos_embed.shape[1] - 1) ** 0.5)
    with torch.no_grad():
        table = model.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        sized = F.interpolate(table, size=(h, w), mode="bicubic", align_corners=False)
        pos = torch.cat(
            (model.pos_embed[:, :1], sized.permute(0, 2, 3, 1).reshape(1, h * w, -1)), 1
        )
        tokens = torch.cat((model.cls_token, model.patch_embed(x)), dim=1) + pos
    c = compare(tokens, reference[f"{case}.tokens_in"])
    print(f"size-based interpolation at {case}: {c}")
    assert c.rel > 1e-4


def test_batch_and_dtype_contract(model: DinoViT) -> None:
    x = _input("224")
    x2 = torch.cat((x, x.flip(-1)))
    with torch.no_grad():
        out = model(x2)
        single = model(x2[1:])
    assert out.shape == (2, model.embed_dim) and out.dtype == torch.float32
    torch.testing.assert_close(out[1:], single, rtol=1e-5, atol=1e-5)


def _official_layout() -> dict[str, tuple[int, ...]]:
    lines = (DINO / "dino_vitb16_official_keys.tsv").read_text().strip().splitlines()[1:]
    layout = {}
    for line in lines:
        key, shape, dtype, numel = line.split("\t")
        assert dtype == "float32"
        dims = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        assert int(np.prod(dims)) == int(numel)
        layout[key] = dims
    return layout


def test_vitb16_preset_has_official_keys_and_loads_strictly() -> None:
    layout = _official_layout()
    with torch.device("meta"):
        model = DinoViT(DINO_PRESETS["dino_vitb16"])
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == layout
    meta_sd = {k: torch.empty(s, device="meta") for k, s in layout.items()}
    loaded = load_dino(meta_sd, DINO_PRESETS["dino_vitb16"])
    assert not loaded.training
    out = loaded(torch.empty(2, 3, 320, 480, device="meta"))
    assert tuple(out.shape) == (2, 768)


def test_wrong_checkpoint_names_keys() -> None:
    sd = load_file(str(DINO / "weights.safetensors"))
    cfg = DINO_PRESETS["dino_test"]
    broken = dict(sd)
    broken.pop("blocks.1.attn.qkv.bias")
    broken["head.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError) as err:
        load_dino(broken, cfg)
    assert "blocks.1.attn.qkv.bias" in str(err.value) and "head.weight" in str(err.value)
    prefixed = {f"module.backbone.{k}": v for k, v in sd.items()}
    with pytest.raises(
        CheckpointMismatchError,
        match=r"missing keys \[blocks\.0.*unexpected keys \[module\.backbone\.blocks",
    ):
        load_dino(prefixed, cfg)
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches .*pos_embed"):
        load_dino(sd, DinoConfig(embed_dim=96, depth=2, num_heads=4, image_size=160))


def test_preprocess_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected uint8"):
        preprocess_dino(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="expected uint8"):
        preprocess_dino(np.zeros((8, 8), dtype=np.uint8))
    img = np.asarray(Image.open(DINO / "input_224.png").convert("RGB"))
    batch = preprocess_dino(torch.from_numpy(np.stack([img, img[::-1].copy()])))
    assert batch.shape == (2, 3, 224, 224)
    torch.testing.assert_close(batch[0], preprocess_dino(img)[0], rtol=0, atol=0)
    # ImageNet normalisation maps pure black/white to -mean/std and (1-mean)/std per channel.
    ext = preprocess_dino(np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8))[0]
    torch.testing.assert_close(
        ext[:, 0, 0], torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225])
    )
    torch.testing.assert_close(
        ext[:, 0, 1], torch.tensor([0.515 / 0.229, 0.544 / 0.224, 0.594 / 0.225])
    )


def test_model_rejects_bad_images(model: DinoViT) -> None:
    with pytest.raises(ValueError, match=r"expected \[B, 3, H, W\]"):
        model(torch.zeros(3, 224, 224))
    with pytest.raises(ValueError, match="patch size"):
        model(torch.zeros(1, 3, 8, 224))


def test_sizes_not_multiple_of_patch_floor_like_the_original(
    model: DinoViT, reference: dict[str, torch.Tensor]
) -> None:
    """Conv stride 16 drops the remainder and the grid is H//16 x W//16: extra rows/columns of
    junk past the last full patch change nothing."""
    case = next(c for c in _cases() if c != "224")
    x = _input(case)
    gen = torch.Generator().manual_seed(0)
    padded = torch.randn(1, 3, x.shape[2] + 15, x.shape[3] + 9, generator=gen)
    padded[..., : x.shape[2], : x.shape[3]] = x
    with torch.no_grad():
        cls = model(padded)
    c = assert_close_stage(cls, reference[f"{case}.cls"], f"{case}.cls (padded input)")
    print(f"padded {tuple(padded.shape[-2:])}: {c}")


@requires_cuda
def test_every_stage_matches_reference_on_cuda(reference: dict[str, torch.Tensor]) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gpu = load_dino(DINO / "weights.safetensors", _config_from_fixture(), device="cuda")
    for case in _cases():
        with torch.no_grad():
            inter = gpu.forward_intermediates(_input(case).cuda())
        assert_close_stage(inter.tokens_in, reference[f"{case}.tokens_in"], f"cuda {case}.in")
        assert_close_stage(inter.cls, reference[f"{case}.cls"], f"cuda {case}.cls")
        normed = reference[f"{case}.tokens_lastlayer_normed"]
        assert_close_stage(inter.tokens_normed, normed, f"cuda {case}.normed")
