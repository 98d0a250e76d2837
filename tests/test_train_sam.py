"""Tiny-SAM promptable training (moca_rt.train.sam_synth): prompts, losses, resume, weights, eval.

The ``sam_synth`` preset (256-pixel input) runs on 64-pixel scenes of the synthetic world, a
few scenes and prompts per step and a 4 x 4 validation grid, so the suite stays fast.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from moca_rt.config import SAM_PRESETS
from moca_rt.modeling.sam import load_sam
from moca_rt.proposals import ProposalConfig, SamPredictor, grid_proposals
from moca_rt.train.core import LoopSettings, run_stage
from moca_rt.train.sam_synth import (
    WEIGHTS_FILE,
    SamStage,
    SamTrainConfig,
    evaluate_proposals,
    low_res_targets,
    main,
    mask_losses,
    proposal_variants,
    sample_prompts,
)

TINY = SamTrainConfig(
    image_size=64,
    train_scenes=2,
    val_scenes=1,
    iters=6,
    batch=2,
    prompts_per_image=3,
    lr=3e-3,
    warmup=1,
    points_per_side=4,
    min_object_pixels=20,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def stage() -> SamStage:
    return SamStage(TINY)


def test_prompt_sampling_shapes_ranges_and_determinism(stage: SamStage) -> None:
    data = stage.train_data
    scenes = [0, 1, 2]
    gen = torch.Generator().manual_seed(5)
    p = sample_prompts(data, scenes, 40, gen)
    assert p.coords.shape == (120, 2, 2) and p.labels.shape == (120, 2) and len(p) == 120
    assert p.image.tolist() == [i for i in range(3) for _ in range(40)]
    assert 0 < int(p.is_point.sum()) < 120
    # Every prompt targets an object of its own scene.
    assert torch.equal(data.obj_scene[p.target], torch.tensor(scenes)[p.image])
    s = data.model_size
    assert bool((p.coords >= 0).all()) and bool((p.coords <= s).all())
    pts, boxes = p.is_point, ~p.is_point
    assert p.labels[pts].tolist() == [[1, -1]] * int(pts.sum())
    assert p.labels[boxes].tolist() == [[2, 3]] * int(boxes.sum())
    assert bool((p.coords[pts, 1] == 0).all())
    # A point lies within half a pixel of a visible pixel's index (x, y) of its object.
    scale = data.original_size[0] / data.input_size[0]
    masks = [torch.from_numpy(m) for m in data.instances]
    for i in torch.nonzero(pts)[:, 0].tolist():
        x, y = (p.coords[i, 0] * scale + 0.5).floor().long().tolist()
        obj = int(p.target[i]) - int(data.scene_first[data.obj_scene[p.target[i]]])
        assert bool(masks[int(data.obj_scene[p.target[i]])][obj, y, x])
    # Boxes are ordered and stay within 5 model pixels of the object's box.
    b = p.coords[boxes]
    assert bool((b[:, 0] <= b[:, 1]).all())
    exact = data.obj_boxes[p.target[boxes]].reshape(-1, 2, 2) / scale
    assert float((b - exact).abs().max()) <= 5.0 + 1e-4
    again = sample_prompts(data, scenes, 40, torch.Generator().manual_seed(5))
    assert torch.equal(again.coords, p.coords) and torch.equal(again.target, p.target)
    only_points = sample_prompts(data, scenes, 4, gen, point_prob=1.0)
    only_boxes = sample_prompts(data, scenes, 4, gen, point_prob=0.0)
    assert bool(only_points.is_point.all()) and not bool(only_boxes.is_point.any())


def test_low_res_targets_and_losses() -> None:
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 8:40, 16:32] = True  # 256-frame: rows 32..160, cols 64..128 -> low-res 8..40, 16..32
    low = low_res_targets(masks, (256, 256), 256)
    assert low.shape == (1, 64, 64)
    assert int(low.sum()) == 32 * 16 and bool(low[0, 8:40, 16:32].all())
    target = low
    logits = torch.stack([torch.where(target[0], 20.0, -20.0), torch.zeros(64, 64)])[None]
    focal, dice, iou = mask_losses(logits, target)
    assert focal.shape == dice.shape == iou.shape == (1, 2)
    assert float(focal[0, 0]) < 1e-6 and float(dice[0, 0]) < 1e-3 and float(iou[0, 0]) == 1.0
    assert float(focal[0, 1]) > 0.01 and float(dice[0, 1]) > 0.5 and float(iou[0, 1]) == 0.0


def test_loss_decreases_on_a_tiny_overfit() -> None:
    cfg = replace(TINY, train_scenes=1, batch=2, iters=25, prompts_per_image=4)
    stage = SamStage(cfg)
    losses = [stage.train_step(step)["loss"] for step in range(cfg.iters)]
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:3])  # measured 0.72 (seed 1: 0.80)


def test_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    def losses(out: Path) -> list[float]:
        rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if r["kind"] == "train"]

    whole = SamStage(TINY)
    run_stage(whole, LoopSettings(tmp_path / "whole", iters=4, log_every=1, save_every=2))
    first = SamStage(TINY)
    run_stage(first, LoopSettings(tmp_path / "cut", iters=2, log_every=1, save_every=2))
    resumed = SamStage(TINY)
    result = run_stage(resumed, LoopSettings(tmp_path / "cut", iters=4, log_every=1, save_every=2))
    assert result.steps == 4
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")
    for (k, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k


def test_saved_weights_load_strictly_with_load_sam(stage: SamStage, tmp_path: Path) -> None:
    files = stage.save_weights(tmp_path)
    assert files == [tmp_path / WEIGHTS_FILE]
    loaded = load_sam(files[0], SAM_PRESETS["sam_synth"])
    for (k, a), b in zip(
        stage.model.state_dict().items(), loaded.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    image = stage.val_data.images[0]
    ours, theirs = SamPredictor(stage.model.eval()), SamPredictor(loaded)
    ours.set_image(image)
    theirs.set_image(image)
    point = np.array([[20.0, 30.0]])
    a, b = ours.predict(point, np.array([1]))[1], theirs.predict(point, np.array([1]))[1]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_evaluate_returns_the_metrics_and_agrees_with_grid_proposals(stage: SamStage) -> None:
    for step in range(3):
        stage.train_step(step)
    metrics = stage.evaluate()
    assert stage.model.training
    for suffix in ("", "_low", "_nofilter"):
        assert 0.0 <= metrics[f"proposal_recall{suffix}"] <= 1.0
        assert 0.0 <= metrics[f"proposal_hit50{suffix}"] <= 1.0
        assert 0.0 <= metrics[f"proposals_per_image{suffix}"] <= 3 * 16
    assert stage.selection in metrics
    # The evaluation's proposals are grid_proposals' for the same config.
    model = stage.model.eval()
    cfg = proposal_variants(TINY)["_nofilter"]
    image = stage.val_data.images[0]
    gt = stage.val_data.instances[0]
    predictor = SamPredictor(model)
    predictor.set_image(image)
    direct = grid_proposals(predictor, cfg)
    ours = evaluate_proposals(model, [image], [gt], {"": cfg})
    assert ours["proposals_per_image"] == len(direct)
    full = grid_proposals(predictor, ProposalConfig(**{**cfg.__dict__, "resolution": "image"}))
    assert len(full) >= 1
    stage.model.train()


def test_cli_trains_and_writes_loadable_weights(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [
        "--out",
        str(out),
        "--iters",
        "2",
        "--batch",
        "2",
        "--prompts",
        "2",
        "--train-scenes",
        "1",
        "--val-scenes",
        "1",
        "--image-size",
        "64",
        "--points-per-side",
        "2",
        "--eval-every",
        "0",
        "--log-every",
        "1",
    ]
    assert main(argv) == 0
    done = json.loads((out / "done.json").read_text())
    assert done["steps"] == 2 and "proposal_recall" in done["metrics"]
    load_sam(Path(done["weights"]) / WEIGHTS_FILE, SAM_PRESETS["sam_synth"])
    assert json.loads((out / "config.json").read_text())["image_size"] == 64


def test_quick_config_and_schedule_length() -> None:
    quick = SamTrainConfig.quick()
    assert quick.iters is None and quick.image_size == 64
    stage = SamStage(quick, 10)
    assert stage.iters == 10
    assert stage.scheduler.get_last_lr()[0] == pytest.approx(quick.lr / quick.warmup)
    with pytest.raises(ValueError, match="schedule"):
        SamStage(quick)
    assert SamStage(replace(quick, iters=7), 10).iters == 7
