"""SAM modeling, transforms and predictor against the reference fixtures (tests/fixtures/sam)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, requires_cuda
from numeric import assert_close_stage, compare
from PIL import Image
from safetensors.torch import load_file

from moca_rt.checkpoints import CheckpointMismatchError
from moca_rt.config import SAM_PRESETS, SamConfig
from moca_rt.modeling.sam import Sam, build_sam, load_sam
from moca_rt.proposals import SamPredictor
from moca_rt.sam_transforms import (
    apply_boxes,
    apply_coords,
    get_preprocess_shape,
    normalize_and_pad,
    postprocess_masks,
    resize_longest_side_pil,
    resize_longest_side_torch,
)

SAM_DIR = FIXTURES / "sam"


def _config_from_fixture(cfg: dict) -> SamConfig:
    kw = cfg["kwargs"]
    return replace(
        SAM_PRESETS["sam_test"],
        encoder_embed_dim=kw["encoder_embed_dim"],
        encoder_depth=kw["encoder_depth"],
        encoder_num_heads=kw["encoder_num_heads"],
        encoder_global_attn_indexes=tuple(kw["encoder_global_attn_indexes"]),
    )


@pytest.fixture(scope="module")
def ref() -> dict:
    cfg = json.loads((SAM_DIR / "config.json").read_text())
    return {
        "cfg": cfg,
        "enc": load_file(str(SAM_DIR / "encoder.safetensors")),
        "pred": load_file(str(SAM_DIR / "predictor.safetensors")),
        "raw": np.array(Image.open(SAM_DIR / cfg["image"]["file"]).convert("RGB")),
        "resized": np.array(Image.open(SAM_DIR / "encoder_input_resized_uint8.png").convert("RGB")),
    }


@pytest.fixture(scope="module")
def model(ref: dict) -> Sam:
    torch.set_num_threads(2)
    return load_sam(SAM_DIR / "weights.safetensors", _config_from_fixture(ref["cfg"]))


@pytest.fixture(scope="module")
def encoded(model: Sam, ref: dict) -> dict:
    x = torch.from_numpy(ref["resized"]).permute(2, 0, 1)[None]
    x = normalize_and_pad(x, 1024)
    with torch.no_grad():
        out, inter = model.image_encoder.forward_with_intermediates(x)
    return {"input": x, "out": out, "inter": inter}


@pytest.fixture(scope="module")
def predictor(model: Sam, ref: dict) -> SamPredictor:
    p = SamPredictor(model)
    p.set_image(ref["raw"])
    return p


# --------------------------------------------------------------------------- transforms


def test_fixture_config_matches_sam_test_preset(ref: dict) -> None:
    assert _config_from_fixture(ref["cfg"]) == SAM_PRESETS["sam_test"]


def test_resize_reproduces_reference_png_bit_for_bit(ref: dict) -> None:
    h, w = ref["cfg"]["image"]["original_size_hw"]
    assert get_preprocess_shape(h, w) == tuple(ref["cfg"]["image"]["input_size_hw"])
    ours = resize_longest_side_pil(ref["raw"])
    assert ours.shape == ref["resized"].shape and ours.dtype == np.uint8
    assert np.array_equal(ours, ref["resized"])


def test_torch_resize_within_one_grey_level_of_pil(ref: dict) -> None:
    x = torch.from_numpy(ref["raw"]).permute(2, 0, 1)[None]
    ours = resize_longest_side_torch(x)[0].permute(1, 2, 0).numpy().astype(int)
    diff = np.abs(ours - ref["resized"].astype(int))
    print(
        f"torch vs PIL resize: max {diff.max()} grey levels, {100 * (diff > 0).mean():.2f}% differ"
    )
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.2


def test_preprocess_shape_rounding_and_errors() -> None:
    assert get_preprocess_shape(480, 640) == (768, 1024)
    assert get_preprocess_shape(640, 480) == (1024, 768)
    assert get_preprocess_shape(333, 1000) == (341, 1024)  # 340.99 rounds up
    with pytest.raises(ValueError, match="expected a positive image size"):
        get_preprocess_shape(0, 10)
    with pytest.raises(ValueError, match="expected an H x W x 3"):
        resize_longest_side_pil(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="expected dtype uint8"):
        resize_longest_side_pil(np.zeros((4, 4, 3), np.float32))


def test_encoder_input_matches_reference_stats(ref: dict, encoded: dict) -> None:
    stats = ref["cfg"]["encoder_input_stats"]
    x = encoded["input"].double()
    assert list(x.shape) == stats["shape"]
    assert x.mean().item() == pytest.approx(stats["mean"], abs=1e-9)
    assert x.std().item() == pytest.approx(stats["std"], abs=1e-9)
    assert x.abs().max().item() == pytest.approx(stats["absmax"], abs=1e-7)
    assert x.flatten()[:5].tolist() == pytest.approx(stats["first5"], abs=1e-7)


def test_coordinate_transforms_use_height_and_width_correctly(ref: dict) -> None:
    pred = ref["pred"]
    assert_close_stage(
        apply_coords(torch.tensor([[330.0, 215.0]]), (480, 640)),
        pred["point.coords_transformed"],
        "point coords",
    )
    assert_close_stage(
        apply_coords(pred["grid16.coords_raw"], (480, 640)),
        pred["grid16.coords_transformed"],
        "grid16 coords",
    )
    box = torch.tensor([ref["cfg"]["prompts"]["box"]])
    assert_close_stage(apply_boxes(box, (480, 640)), pred["box.box_transformed"], "box")
    # Portrait image: x scales by W'/W = 768/480 and y by H'/H = 1024/640 (pitfall 8).
    out = apply_coords(np.array([[10.0, 20.0]]), (640, 480))
    assert out.tolist() == [[16.0, 32.0]]
    with pytest.raises(ValueError, match=r"expected coordinates of shape \(\.\.\., 2\)"):
        apply_coords(torch.zeros(3), (10, 10))
    with pytest.raises(ValueError, match=r"expected boxes of shape \(\.\.\., 4\)"):
        apply_boxes(torch.zeros(2, 3), (10, 10))


def test_postprocess_masks_shapes_and_constant_field() -> None:
    low = torch.full((2, 3, 256, 256), 1.5)
    out = postprocess_masks(low, (768, 1024), (480, 640))
    assert out.shape == (2, 3, 480, 640)
    assert torch.allclose(out, torch.full_like(out, 1.5))
    # A ramp along x survives the crop: the right edge of the image is column 1023 of 1024.
    ramp = torch.arange(256.0).expand(1, 1, 256, 256).contiguous()
    out = postprocess_masks(ramp, (768, 1024), (480, 640))
    assert out[0, 0, 0, 0] < 1.0 and out[0, 0, 0, -1] > 254.0


# --------------------------------------------------------------------------- encoder


def test_encoder_stages_match_reference(ref: dict, encoded: dict) -> None:
    k = ref["cfg"]["subsample_strides"]["encoder_intermediate"]
    inter = encoded["inter"]
    c = assert_close_stage(inter[0][:, ::k, ::k], ref["enc"]["encoder.tokens_in_sub4"], "tokens_in")
    print(f"tokens_in: {c}")
    for i in range(len(inter) - 1):
        name = f"encoder.block{i:02d}_sub{k}"
        c = assert_close_stage(inter[i + 1][:, ::k, ::k], ref["enc"][name], name)
        print(f"{name}: {c}")
    c = assert_close_stage(encoded["out"], ref["enc"]["encoder_output"], "encoder_output")
    print(f"encoder_output: {c}")


def test_predictor_features_equal_encoder_output(predictor: SamPredictor, encoded: dict) -> None:
    assert predictor.features is not None
    assert torch.equal(predictor.features, encoded["out"])
    assert predictor.input_size == (768, 1024) and predictor.original_size == (480, 640)


def _naive_window_block(
    blk: torch.nn.Module, x: torch.Tensor, ws: int, mask_pad: bool
) -> torch.Tensor:
    """Explicit-softmax windowed block on (1, h, w, C), optionally masking the zero padding."""
    attn = blk.attn
    nh, hd = attn.num_heads, attn.head_dim
    _, h, w, c = x.shape
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    y = torch.zeros(1, hp, wp, c)
    y[:, :h, :w] = blk.norm1(x)
    real = torch.zeros(hp, wp, dtype=torch.bool)
    real[:h, :w] = True
    idx = torch.arange(ws)
    rh = attn.rel_pos_h[idx[:, None] - idx[None, :] + ws - 1]  # (ws, ws, hd)
    rw = attn.rel_pos_w[idx[:, None] - idx[None, :] + ws - 1]
    out = torch.zeros_like(y)
    for wy in range(0, hp, ws):
        for wx in range(0, wp, ws):
            t = y[0, wy : wy + ws, wx : wx + ws].reshape(ws * ws, c)
            q, k, v = attn.qkv(t).reshape(ws * ws, 3, nh, hd).permute(1, 2, 0, 3)
            logits = (q * hd**-0.5) @ k.transpose(-1, -2)  # (nh, N, N)
            qg = q.reshape(nh, ws, ws, hd)
            bias_h = torch.einsum("nijc,ikc->nijk", qg, rh)  # query (i, j), key row k
            bias_w = torch.einsum("nijc,jlc->nijl", qg, rw)  # query (i, j), key column l
            logits = logits + (bias_h[..., :, None] + bias_w[..., None, :]).reshape(nh, ws * ws, -1)
            if mask_pad:
                keep = real[wy : wy + ws, wx : wx + ws].reshape(-1)
                logits = logits.masked_fill(~keep, float("-inf"))
            o = (logits.softmax(-1) @ v).transpose(0, 1).reshape(ws * ws, c)
            out[0, wy : wy + ws, wx : wx + ws] = attn.proj(o).reshape(ws, ws, c)
    z = x + out[:, :h, :w]
    return z + blk.mlp(blk.norm2(z))


def test_windowed_block_matches_explicit_math_and_attends_to_padding() -> None:
    """6x7 map, windows of 4: padded to 8x8; the zero padding takes part as keys (pitfall 9)."""
    torch.manual_seed(0)
    cfg = SamConfig(
        encoder_embed_dim=16,
        encoder_depth=1,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(),
        image_size=96,
        window_size=4,
    )
    blk = build_sam(cfg).image_encoder.blocks[0].eval()
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(0, 0.3)
        x = torch.randn(1, 6, 7, 16)
        ours = blk(x)
        naive = _naive_window_block(blk, x, 4, mask_pad=False)
        masked = _naive_window_block(blk, x, 4, mask_pad=True)
    c = compare(ours, naive)
    print(f"windowed block vs explicit math: {c}")
    assert c.rel < 1e-5
    assert (ours - masked).abs().max() > 1e-2


def test_encoder_batch_consistency_small_config() -> None:
    torch.manual_seed(0)
    cfg = SamConfig(
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        image_size=160,
        window_size=4,
    )
    model = build_sam(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
        x = torch.randn(2, 3, 160, 160)
        both = model.image_encoder(x)
        one = model.image_encoder(x[1:])
    assert both.shape == (2, 256, 10, 10)
    c = compare(both[1:], one)
    assert c.rel < 1e-5, c


# --------------------------------------------------------------------------- predictor


def _check(
    name: str, pred: dict, iou: torch.Tensor, low: torch.Tensor, masks: torch.Tensor, k: int
) -> None:
    ref_iou = pred[f"{name}.iou_predictions"]
    err = (iou - ref_iou).abs().max().item()
    print(f"{name}.iou_predictions: max_abs={err:.3e}")
    assert err <= 1e-5
    low_key = next(key for key in pred if key.startswith(f"{name}.low_res_logits"))
    lk = int(low_key.rsplit("_sub", 1)[1]) if "_sub" in low_key else 1
    c = assert_close_stage(low[..., ::lk, ::lk], pred[low_key], low_key)
    print(f"{low_key}: {c}")
    c = assert_close_stage(
        masks[..., ::k, ::k], pred[f"{name}.mask_logits_sub{k}"], name + " masks"
    )
    print(f"{name}.mask_logits_sub{k}: {c}")


def test_predict_point(predictor: SamPredictor, ref: dict, model: Sam) -> None:
    pts = ref["cfg"]["prompts"]["point"]
    masks, iou, low = predictor.predict(np.array(pts), np.array([1]), return_logits=True)
    assert masks.shape == (3, 480, 640) and iou.shape == (3,) and low.shape == (3, 256, 256)
    _check("point", ref["pred"], iou, low, masks, ref["cfg"]["subsample_strides"]["point_masks"])
    coords = predictor.transform_coords(torch.tensor([pts]))
    sparse, dense = model.prompt_encoder((coords, torch.ones(1, 1, dtype=torch.int64)), None, None)
    assert_close_stage(sparse, ref["pred"]["point.sparse_embeddings"], "point sparse")
    assert dense.shape == (1, 256, 64, 64)
    bool_masks, _, _ = predictor.predict(np.array(pts), np.array([1]))
    assert bool_masks.dtype == torch.bool and torch.equal(bool_masks, masks > 0)


def test_predict_box(predictor: SamPredictor, ref: dict, model: Sam) -> None:
    box = ref["cfg"]["prompts"]["box"]
    masks, iou, low = predictor.predict(
        box=np.array(box), multimask_output=False, return_logits=True
    )
    assert masks.shape == (1, 480, 640)
    _check("box", ref["pred"], iou, low, masks, ref["cfg"]["subsample_strides"]["box_masks"])
    sparse, _ = model.prompt_encoder(None, predictor.transform_boxes(torch.tensor([box])), None)
    assert_close_stage(sparse, ref["pred"]["box.sparse_embeddings"], "box sparse")


def test_predict_combo_negative_box_and_mask_input(
    predictor: SamPredictor, ref: dict, model: Sam
) -> None:
    pr = ref["cfg"]["prompts"]["combo"]
    masks, iou, low = predictor.predict(
        np.array(pr["points"]),
        np.array(pr["labels"]),
        box=np.array(pr["box"]),
        mask_input=ref["pred"]["box.low_res_logits"],
        multimask_output=False,
        return_logits=True,
    )
    _check("combo", ref["pred"], iou, low, masks, ref["cfg"]["subsample_strides"]["combo_masks"])
    sparse, _ = model.prompt_encoder(
        (predictor.transform_coords(torch.tensor([pr["points"]])), torch.tensor([pr["labels"]])),
        predictor.transform_boxes(torch.tensor([pr["box"]])),
        None,
    )
    assert sparse.shape == (1, 4, 256)  # no padding point when a box is given
    assert_close_stage(sparse, ref["pred"]["combo.sparse_embeddings"], "combo sparse")


def test_predict_torch_grid16_one_batch(predictor: SamPredictor, ref: dict) -> None:
    pred = ref["pred"]
    coords = predictor.transform_coords(pred["grid16.coords_raw"])
    assert_close_stage(coords, pred["grid16.coords_transformed"], "grid16 coords")
    labels = torch.ones(coords.shape[:2], dtype=torch.int64)
    masks, iou, low = predictor.predict_torch(coords, labels, return_logits=True)
    assert masks.shape == (16, 3, 480, 640) and iou.shape == (16, 3)
    _check("grid16", pred, iou, low, masks, ref["cfg"]["subsample_strides"]["grid16_masks"])


def test_predictor_input_errors(model: Sam, predictor: SamPredictor) -> None:
    with pytest.raises(RuntimeError, match="no image is set"):
        SamPredictor(model).predict(box=np.array([0, 0, 5, 5]))
    with pytest.raises(ValueError, match="expected image_format"):
        SamPredictor(model).set_image(np.zeros((8, 8, 3), np.uint8), image_format="HSV")
    with pytest.raises(ValueError, match="expected an H x W x 3 uint8 image"):
        SamPredictor(model).set_image(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected point_coords \(N, 2\)"):
        predictor.predict(np.zeros((2, 3)), np.ones(2))
    with pytest.raises(ValueError, match="expected a box of 4 numbers"):
        predictor.predict(box=np.zeros(3))
    with pytest.raises(ValueError, match="expected point_labels"):
        predictor.predict(np.zeros((1, 2)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_predictor_close_to_reference(
    model: Sam, ref: dict, dtype: torch.dtype
) -> None:
    half = build_sam(model.config)
    half.load_state_dict(model.state_dict())
    predictor = SamPredictor(half.to(dtype).eval())
    predictor.set_image(ref["raw"])
    assert predictor.features is not None and predictor.features.dtype == dtype
    c = compare(predictor.features.float(), ref["enc"]["encoder_output"])
    print(f"{dtype} encoder output vs fp32 reference: {c}")
    assert c.cosine > 0.9999
    masks, iou, low = predictor.predict(
        np.array(ref["cfg"]["prompts"]["point"]), np.array([1]), return_logits=True
    )
    assert masks.dtype == torch.float32 and low.dtype == torch.float32
    c = compare(low, ref["pred"]["point.low_res_logits"])
    print(f"{dtype} point low-res logits vs fp32 reference: {c}")
    assert c.cosine > 0.9999
    assert (iou - ref["pred"]["point.iou_predictions"]).abs().max() < 0.02


@requires_cuda
def test_encoder_half_precision_on_gpu(model: Sam, encoded: dict, ref: dict) -> None:
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        _gpu_half_checks(model, encoded, ref)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def _gpu_half_checks(model: Sam, encoded: dict, ref: dict) -> None:
    gm = build_sam(model.config, device="cuda")
    gm.load_state_dict(model.state_dict())
    with torch.no_grad():
        out32 = gm.eval().image_encoder(encoded["input"].cuda())
        c = assert_close_stage(out32.cpu(), ref["enc"]["encoder_output"], "gpu fp32 encoder")
        print(f"GPU fp32 encoder: {c}")
        for dt in (torch.bfloat16, torch.float16):
            out = gm.to(dt).image_encoder(encoded["input"].cuda().to(dt))
            c = compare(out.float().cpu(), ref["enc"]["encoder_output"])
            print(f"GPU {dt} encoder: {c}")
            assert c.cosine > 0.999


# --------------------------------------------------------------------------- checkpoints


def _read_tsv(path: Path) -> dict[str, tuple[int, ...]]:
    rows = path.read_text().strip().splitlines()[1:]
    out = {}
    for row in rows:
        key, shape, _dtype, _numel = row.split("\t")
        out[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out


@pytest.mark.parametrize("preset", ["sam_vit_h", "sam_vit_b"])
def test_presets_have_official_keys_and_load_strictly(preset: str) -> None:
    expected = _read_tsv(SAM_DIR / f"{preset}_keys.tsv")
    model = build_sam(SAM_PRESETS[preset], device="meta")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(ours) - set(expected)) == []
    assert sorted(set(expected) - set(ours)) == []
    assert ours == expected
    state = {k: torch.empty(s, device="meta") for k, s in expected.items()}
    loaded = load_sam(state, SAM_PRESETS[preset], device="meta")
    assert loaded.pixel_mean.shape == (3, 1, 1)


def test_wrong_checkpoint_names_keys(ref: dict) -> None:
    state = load_file(str(SAM_DIR / "weights.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        load_sam(state, SAM_PRESETS["sam_vit_b"])
    broken = dict(state)
    del broken["mask_decoder.iou_token.weight"]
    broken["mask_decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as err:
        load_sam(broken, _config_from_fixture(ref["cfg"]))
    msg = str(err.value)
    assert "missing keys [mask_decoder.iou_token.weight]" in msg
    assert "unexpected keys [mask_decoder.extra.weight]" in msg


def test_loaded_model_is_usable_and_buffers_materialised(model: Sam) -> None:
    assert model.pixel_mean.device.type == "cpu"
    assert model.pixel_mean.flatten().tolist() == pytest.approx([123.675, 116.28, 103.53])
    assert not model.training
    assert "pixel_mean" not in model.state_dict()


def test_sam_synth_preset_runs_end_to_end(ref: dict) -> None:
    """The small synthetic-world preset (256 input) goes through predictor and proposals."""
    from moca_rt.proposals import ProposalConfig, grid_proposals

    torch.manual_seed(0)
    model = build_sam(SAM_PRESETS["sam_synth"]).eval()
    predictor = SamPredictor(model)
    predictor.set_image(ref["raw"])
    assert predictor.input_size == (192, 256)
    assert predictor.features is not None and predictor.features.shape == (1, 128, 16, 16)
    masks, iou, low = predictor.predict(np.array([[300.0, 200.0]]), np.array([1]))
    assert masks.shape == (3, 480, 640) and iou.shape == (3,) and low.shape == (3, 64, 64)
    masks, _, _ = predictor.predict(
        box=np.array([10, 20, 300, 400]), mask_input=low[:1], multimask_output=False
    )
    assert masks.shape == (1, 480, 640)
    cfg = ProposalConfig(
        points_per_side=3,
        pred_iou_thresh=-9.0,
        stability_score_thresh=-1.0,
        box_nms_thresh=1.0,
        resolution="low",
    )
    props = grid_proposals(predictor, cfg)
    assert len(props) == 27 and props.masks.shape == (27, 48, 64)


def test_decoder_exports_with_dynamic_prompt_count(model: Sam) -> None:
    """torch.export traces decode() with a dynamic number of prompt sets and points."""

    class Decode(torch.nn.Module):
        def __init__(self, sam: Sam) -> None:
            super().__init__()
            self.sam = sam

        def forward(self, emb: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor):
            return self.sam.decode(emb, coords, labels, multimask_output=True)

    emb = torch.randn(1, 256, 64, 64)
    b = torch.export.Dim("b", min=1, max=1024)
    n = torch.export.Dim("n", min=1, max=16)
    shapes = {"emb": None, "coords": {0: b, 1: n}, "labels": {0: b, 1: n}}
    args = (emb, torch.rand(3, 2, 2) * 1000, torch.ones(3, 2, dtype=torch.int64))
    ep = torch.export.export(Decode(model).eval(), args, dynamic_shapes=shapes)
    coords, labels = torch.rand(5, 3, 2) * 1000, torch.tensor([[1, 0, 1]] * 5)
    low, iou = ep.module()(emb, coords, labels)
    with torch.no_grad():
        ref_low, ref_iou = model.decode(emb, coords, labels)
    assert low.shape == (5, 3, 256, 256) and iou.shape == (5, 3)
    assert torch.allclose(low, ref_low, atol=1e-5) and torch.allclose(iou, ref_iou, atol=1e-6)


def test_decode_shape_errors(model: Sam) -> None:
    emb = torch.zeros(1, 256, 64, 64)
    pts, lab = torch.zeros(2, 1, 2), torch.ones(2, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match="expected point_coords and point_labels together"):
        model.decode(emb, pts)
    with pytest.raises(ValueError, match=r"expected point_labels \(2, 1\) matching"):
        model.decode(emb, pts, lab[:1])
    with pytest.raises(ValueError, match=r"expected boxes \(B, 4\)"):
        model.decode(emb, boxes=torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="expected one batch size B for all prompts"):
        model.decode(emb, pts, lab, boxes=torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"expected mask_input \(B, 1, 256, 256\)"):
        model.decode(emb, pts, lab, mask_input=torch.zeros(2, 1, 64, 64))
    with pytest.raises(ValueError, match="expected image_embeddings batch 1 or 2"):
        model.decode(torch.zeros(3, 256, 64, 64), pts, lab)
    with pytest.raises(ValueError, match=r"expected image_embeddings \(1 or B, 256, 64, 64\)"):
        model.decode(torch.zeros(1, 128, 64, 64), pts, lab)
