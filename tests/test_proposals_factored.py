"""The factored grid decoder (moca_rt.grid_decoder) and the batched grid proposals built on it.

Checked against the official SAM's outputs on the fixture (sam_test weights and image), against
our own ``Sam.decode`` on seeded random weights of two sizes, and proposal for proposal against
the per-frame reference path with filters that drop some prompts and keep others.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import FIXTURES
from numeric import assert_close_stage
from safetensors.torch import load_file

from moca_rt.config import SAM_PRESETS
from moca_rt.grid_decoder import (
    DecodedPrompts,
    GridFrames,
    decode_grid_tokens,
    prepare_frames,
    upscale_masks,
)
from moca_rt.modeling.sam import Sam, build_sam
from moca_rt.proposals import (
    ProposalConfig,
    SamProposals,
    build_point_grid,
    grid_proposals_batch,
    grid_proposals_from_embedding,
)
from moca_rt.sam_transforms import apply_coords

SAM_DIR = FIXTURES / "sam"
SIZE = (480, 640)


def _decode(sam: Sam, emb: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, ...]:
    frames = prepare_frames(sam, emb)
    iou, tokens, keys = decode_grid_tokens(sam, frames, coords)
    low = upscale_masks(sam, tokens.flatten(0, 1), keys.flatten(0, 1), frames.grid)
    return iou, low.unflatten(0, iou.shape[:2])


def test_factored_decoder_matches_official_grid(
    sam_model: Sam, sam_embedding: torch.Tensor
) -> None:
    ref = load_file(str(SAM_DIR / "predictor.safetensors"))
    raw = ref["grid16.coords_raw"][:, 0, :]  # (16, 2) input pixels
    coords = apply_coords(raw, SIZE, sam_model.image_size)[None]
    iou, low = _decode(sam_model, sam_embedding, coords)
    err = (iou[0] - ref["grid16.iou_predictions"]).abs().max().item()
    print(f"factored decoder vs official grid16 IoU: max_abs={err:.3e}")
    assert err <= 1e-5
    assert_close_stage(low[0, :, :, ::8, ::8], ref["grid16.low_res_logits_sub8"], "factored")


@pytest.mark.parametrize("preset", ["sam_test", "sam_synth"])
def test_factored_decoder_matches_sam_decode(preset: str) -> None:
    """Several frames of 5 prompts at once == Sam.decode per frame (seeded random weights)."""
    torch.manual_seed(1)
    sam = build_sam(SAM_PRESETS[preset]).eval()
    cfg = sam.config
    grid = cfg.image_size // cfg.patch_size
    emb = torch.randn(3, cfg.prompt_embed_dim, grid, grid)
    coords = torch.rand(3, 5, 2) * cfg.image_size
    iou, low = _decode(sam, emb, coords)
    assert iou.shape == (3, 5, 3) and low.shape == (3, 5, 3, 4 * grid, 4 * grid)
    ones = torch.ones(5, 1, dtype=torch.int64)
    with torch.no_grad():
        for f in range(3):
            ref_low, ref_iou = sam.decode(emb[f : f + 1], coords[f][:, None], ones)
            torch.testing.assert_close(iou[f], ref_iou, rtol=0, atol=1e-5)
            torch.testing.assert_close(low[f], ref_low, rtol=0, atol=1e-5)


def test_batched_grid_proposals_equal_reference_path(
    sam_model: Sam, sam_embedding: torch.Tensor
) -> None:
    """Same proposals (order, scores, boxes, masks) as the per-frame path; some prompts are
    skipped before upscaling (IoU filter), others kept; two frames of different sizes."""
    small = (300, 200)
    emb2 = torch.cat([sam_embedding, sam_embedding.flip(-1)])
    everything = ProposalConfig(
        points_per_side=4,
        pred_iou_thresh=-1.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        resolution="low",
    )
    thresh = float(
        grid_proposals_from_embedding(sam_model, sam_embedding, SIZE, everything).scores.median()
    )
    cfg = ProposalConfig(
        points_per_side=4,
        points_per_batch=6,
        pred_iou_thresh=thresh,
        stability_score_thresh=0.0,
        box_nms_thresh=0.99,
        resolution="low",
        keep_low_res_logits=True,
    )
    got = grid_proposals_batch(sam_model, emb2, [SIZE, small], cfg)
    kept_any = 0
    for f, size in enumerate([SIZE, small]):
        ref = grid_proposals_from_embedding(sam_model, emb2[f : f + 1], size, cfg)
        assert len(got[f]) == len(ref) and len(ref) > 0
        kept_any += len(ref)
        torch.testing.assert_close(got[f].scores, ref.scores, rtol=0, atol=1e-5)
        torch.testing.assert_close(got[f].boxes, ref.boxes)
        assert got[f].points is not None and ref.points is not None
        assert torch.equal(got[f].points, ref.points)
        agree = (got[f].masks == ref.masks).float().mean().item()
        assert agree > 0.999
    # The threshold is the median predicted IoU, so some grid masks were filtered out.
    assert kept_any < 2 * 16 * 3


def test_sam_proposals_decoders_agree(sam_model: Sam, sam_embedding: torch.Tensor) -> None:
    cfg = ProposalConfig(points_per_side=3, pred_iou_thresh=0.5, stability_score_thresh=0.0)
    sizes = [SIZE]
    out = {
        d: SamProposals(sam_model, cfg, grid_decoder=d).from_embeddings(sam_embedding, sizes, None)
        for d in ("factored", "reference")
    }
    assert out["factored"][0].shape == out["reference"][0].shape
    assert out["factored"][0].shape[0] > 0
    torch.testing.assert_close(out["factored"][0], out["reference"][0], rtol=0, atol=1e-4)


def test_sam_proposals_rejects_unknown_decoder(sam_model: Sam) -> None:
    with pytest.raises(ValueError, match="grid_decoder"):
        SamProposals(sam_model, grid_decoder="fast")  # type: ignore[arg-type]


def test_upscaling_runs_only_for_prompts_passing_the_iou_filter(
    sam_model: Sam, sam_embedding: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output upscaling (half the decoder's work) sees only prompts with a mask above
    pred_iou_thresh; with a threshold above every prediction it never runs."""
    import moca_rt.grid_decoder as grid_decoder

    upscaled: list[int] = []
    real = grid_decoder.upscale_masks

    def counting(sam: Sam, tokens: torch.Tensor, keys: torch.Tensor, grid: tuple[int, int]):
        upscaled.append(int(tokens.shape[0]))
        return real(sam, tokens, keys, grid)

    monkeypatch.setattr(grid_decoder, "upscale_masks", counting)
    coords = apply_coords(
        (build_point_grid(4) * torch.tensor([SIZE[1], SIZE[0]])).float(), SIZE, 1024
    )
    iou = _decode(sam_model, sam_embedding, coords[None])[0][0]  # (16, 3)
    thresh = float(iou.max(dim=1).values.median())
    passing = int((iou > thresh).any(dim=1).sum())
    assert 0 < passing < 16
    cfg = ProposalConfig(points_per_side=4, pred_iou_thresh=thresh, stability_score_thresh=0.0)
    grid_proposals_batch(sam_model, sam_embedding, [SIZE], cfg)
    assert sum(upscaled) == passing
    upscaled.clear()
    cfg_none = ProposalConfig(points_per_side=4, pred_iou_thresh=float(iou.max()) + 1.0)
    assert len(grid_proposals_batch(sam_model, sam_embedding, [SIZE], cfg_none)[0]) == 0
    assert upscaled == []


def test_onnxruntime_grid_backend_gives_the_same_proposals(
    sam_model: Sam, sam_embedding: torch.Tensor, tmp_path: Path
) -> None:
    """The exported tokens + upscaling graphs on onnxruntime: the torch backend's proposals
    (count, order, scores, masks), for a grid that spans several decoder calls."""
    pytest.importorskip("onnxruntime")
    from moca_rt.grid_decoder import GRID_TOKENS_FILE, OrtGridBackend, export_grid_decoder

    tokens, upscale = export_grid_decoder(sam_model, tmp_path)
    assert tokens.name == GRID_TOKENS_FILE and upscale.is_file()
    assert next(sam_model.parameters()).device.type == "cpu"  # the model is left where it was
    grid = {"points_per_side": 4, "points_per_batch": 10, "pred_iou_thresh": 0.5}
    cfg = ProposalConfig(**grid, stability_score_thresh=0.0, keep_low_res_logits=True)
    emb2 = torch.cat([sam_embedding, sam_embedding.flip(-1)])
    sizes = [SIZE, (300, 200)]
    ort = grid_proposals_batch(sam_model, emb2, sizes, cfg, decoder=OrtGridBackend(tmp_path, 1))
    ref = grid_proposals_batch(sam_model, emb2, sizes, cfg)
    for got, want in zip(ort, ref, strict=True):
        assert len(got) == len(want) > 0
        torch.testing.assert_close(got.scores, want.scores, rtol=0, atol=1e-5)
        assert got.low_res_logits is not None and want.low_res_logits is not None
        torch.testing.assert_close(got.low_res_logits, want.low_res_logits, rtol=0, atol=1e-4)
        assert (got.masks == want.masks).float().mean().item() > 0.999


def test_onnxruntime_grid_tokens_take_several_frames(sam_model: Sam, tmp_path: Path) -> None:
    """Small grids share a decoder call across frames: the one-frame graph runs per frame."""
    pytest.importorskip("onnxruntime")
    from moca_rt.grid_decoder import GridBackend, OrtGridBackend, export_grid_decoder

    export_grid_decoder(sam_model, tmp_path)
    torch.manual_seed(0)
    emb = torch.randn(
        2, sam_model.prompt_encoder.embed_dim, *sam_model.prompt_encoder.image_embedding_size
    )
    frames = prepare_frames(sam_model, emb)
    coords = torch.rand(2, 5, 2) * sam_model.image_size
    got = OrtGridBackend(tmp_path, 1).tokens(sam_model, frames, coords)
    want = GridBackend().tokens(sam_model, frames, coords)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=0, atol=1e-4)


def _frames_and_threshold(sam: Sam, upscaled: str) -> tuple[GridFrames, torch.Tensor, float]:
    """Two random frames of 5 prompts, and an IoU threshold that no prompt, some (halfway
    between two predictions: no tie to round) or every prompt passes."""
    from moca_rt.grid_decoder import GridBackend

    torch.manual_seed(2)
    emb = torch.randn(2, sam.prompt_encoder.embed_dim, *sam.prompt_encoder.image_embedding_size)
    frames = prepare_frames(sam, emb)
    coords = torch.rand(2, 5, 2) * sam.image_size
    best = GridBackend().tokens(sam, frames, coords)[0].max(dim=-1).values.flatten()
    thresh = {
        "none": float(best.max()) + 1.0,
        "some": float(best.sort().values[4:6].mean()),
        "all": float("-inf"),
    }[upscaled]
    return frames, coords, thresh


def _assert_same_decoding(got: DecodedPrompts, want: DecodedPrompts, upscaled: str) -> None:
    assert torch.equal(got.upscaled, want.upscaled)
    count = int(want.upscaled.sum())
    assert count == {"none": 0, "all": 10}.get(upscaled, count)
    assert (0 < count < 10) or upscaled != "some"
    torch.testing.assert_close(got.iou, want.iou, rtol=0, atol=1e-5)
    assert got.low.shape == want.low.shape == (count, 3, *want.low.shape[2:])
    torch.testing.assert_close(got.low, want.low, rtol=0, atol=1e-4)


@pytest.mark.parametrize("upscaled", ["none", "some", "all"])
def test_decoding_in_small_runs_keeps_every_prompt_in_order(sam_model: Sam, upscaled: str) -> None:
    """GridBackend.decode two prompts per run (three runs of both frames) == one run: the same
    IoU, prompts upscaled and logits, frame by frame (the order of ``iou[upscaled]``)."""
    from moca_rt.grid_decoder import GridBackend

    frames, coords, thresh = _frames_and_threshold(sam_model, upscaled)
    one_run = GridBackend(prompts_per_call=10).decode(sam_model, frames, coords, thresh)
    small = GridBackend(prompts_per_call=2).decode(sam_model, frames, coords, thresh)
    _assert_same_decoding(small, one_run, upscaled)


@pytest.mark.parametrize("upscaled", ["none", "some", "all"])
def test_onnxruntime_decode_streams_what_the_torch_backend_decodes(
    sam_model: Sam, tmp_path: Path, upscaled: str
) -> None:
    """OrtGridBackend.decode (each tokens run's prompts straight into the upscaling graph, two
    at a time) == GridBackend.decode: the same IoU, the same prompts upscaled, the same logits
    in the same order, whether no prompt, some or every prompt passes the IoU threshold."""
    pytest.importorskip("onnxruntime")
    from moca_rt.grid_decoder import GridBackend, OrtGridBackend, export_grid_decoder

    export_grid_decoder(sam_model, tmp_path)
    frames, coords, thresh = _frames_and_threshold(sam_model, upscaled)
    got = OrtGridBackend(tmp_path, 1, prompts_per_call=2).decode(sam_model, frames, coords, thresh)
    want = GridBackend().decode(sam_model, frames, coords, thresh, upscale_batch=3)
    _assert_same_decoding(got, want, upscaled)


def test_grid_backends_reject_no_prompts_per_call(sam_model: Sam, tmp_path: Path) -> None:
    from moca_rt.grid_decoder import GridBackend

    with pytest.raises(ValueError, match="prompts_per_call"):
        GridBackend(prompts_per_call=0)
    pytest.importorskip("onnxruntime")
    from moca_rt.grid_decoder import OrtGridBackend

    with pytest.raises(ValueError, match="prompts_per_call"):
        OrtGridBackend(tmp_path, 1, prompts_per_call=0)


def test_small_runs_only_on_the_cpu() -> None:
    """The 8 MiB runs are a CPU cache rule: 2 prompts for the 1024 models' 4096 x 256 tokens,
    64 for 16 x 16 x 128; a GPU (here the meta device) decodes the caller's whole batch; an
    explicit prompts_per_call holds everywhere."""
    from moca_rt.grid_decoder import GridBackend

    auto, two = GridBackend(), GridBackend(prompts_per_call=2)
    assert auto._step(torch.empty(1, 4096, 256), 32) == 2
    assert auto._step(torch.empty(1, 256, 128), 32) == 64
    assert auto._step(torch.empty(1, 4096, 256, device="meta"), 32) == 32
    assert two._step(torch.empty(1, 4096, 256, device="meta"), 32) == 2


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_upscaling_only_the_valid_tokens_crops_the_full_logits(
    sam_model: Sam, tmp_path: Path, backend: str
) -> None:
    """decode(valid_tokens=(rows, cols)) upscales only those first rows and columns of the
    embedding grid (the frame without its padding): the logits are the full ones cut to
    (4 rows, 4 cols), since the upscaling works token by token."""
    from moca_rt.grid_decoder import GridBackend

    frames, coords, thresh = _frames_and_threshold(sam_model, "some")
    h, w = frames.grid
    valid = (h - 1, max(1, w // 2))
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
        from moca_rt.grid_decoder import OrtGridBackend, export_grid_decoder

        export_grid_decoder(sam_model, tmp_path)
        decoder: GridBackend = OrtGridBackend(tmp_path, 1, prompts_per_call=2)
    else:
        decoder = GridBackend(prompts_per_call=2)
    full = GridBackend().decode(sam_model, frames, coords, thresh)
    cut = decoder.decode(sam_model, frames, coords, thresh, valid_tokens=valid)
    assert torch.equal(cut.upscaled, full.upscaled)
    assert cut.low.shape == (full.low.shape[0], 3, 4 * valid[0], 4 * valid[1])
    want = full.low[:, :, : 4 * valid[0], : 4 * valid[1]]
    torch.testing.assert_close(cut.low, want, rtol=0, atol=1e-4)


def test_grid_proposals_upscale_only_the_frame_at_low_resolution(
    sam_model: Sam, sam_embedding: torch.Tensor
) -> None:
    """A 480 x 640 frame fills 192 of the 256 low-res rows: the factored path keeps logits for
    the token rows covering it (48 tokens, 192 rows), equal there to the reference's."""
    cfg = ProposalConfig(
        points_per_side=3,
        pred_iou_thresh=-1.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        resolution="low",
        keep_low_res_logits=True,
    )
    got = grid_proposals_batch(sam_model, sam_embedding, [SIZE], cfg)[0]
    ref = grid_proposals_from_embedding(sam_model, sam_embedding, SIZE, cfg)
    assert got.low_res_logits is not None and ref.low_res_logits is not None
    side = sam_model.image_size // 4
    rows = got.low_res_logits.shape[1]
    assert rows < side and rows >= side * SIZE[0] // SIZE[1]
    assert got.low_res_logits.shape[2] == side
    torch.testing.assert_close(got.low_res_logits, ref.low_res_logits[:, :rows], rtol=0, atol=1e-4)
