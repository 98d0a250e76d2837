"""``python -m moca_rt.evaluate``: tiny generated AVSBench-style folders, hand-computed scores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moca_rt.evaluate import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_OUTPUT,
    EvaluationError,
    collect_pairs,
    main,
    parse_size,
    run_evaluate,
)
from moca_rt.frame_files import avss_palette


def f_beta(p: float, r: float) -> float:
    return 1.3 * p * r / (0.3 * p + r) if (0.3 * p + r) > 0 else 0.0


def save(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode is not None:
        img = img.convert(mode)
    img.save(path)


def gt_masks() -> dict[str, np.ndarray]:
    """S4-style layout <category>/<video>/<video>_<k>.png, 4x4 masks (0/255).

    vidA: frame 1 top row (4 px), frame 2 left column (4 px)
    vidB: frame 1 top-left 2x2 (4 px), frame 2 empty
    vidC: both frames empty
    """
    m: dict[str, np.ndarray] = {}
    a1 = np.zeros((4, 4), np.uint8)
    a1[0, :] = 255
    a2 = np.zeros((4, 4), np.uint8)
    a2[:, 0] = 255
    b1 = np.zeros((4, 4), np.uint8)
    b1[:2, :2] = 255
    z = np.zeros((4, 4), np.uint8)
    m["dog/vidA/vidA_1.png"] = a1
    m["dog/vidA/vidA_2.png"] = a2
    m["cat/vidB/vidB_1.png"] = b1
    m["cat/vidB/vidB_2.png"] = z
    m["cat/vidC/vidC_1.png"] = z
    m["cat/vidC/vidC_2.png"] = z
    return m


@pytest.fixture()
def s4_gt(tmp_path: Path) -> Path:
    root = tmp_path / "gt"
    for rel, arr in gt_masks().items():
        save(root / rel, arr)
    return root


def write_preds(root: Path, fn) -> Path:  # type: ignore[no-untyped-def]
    for rel, arr in gt_masks().items():
        save(root / rel, fn(rel, arr))
    return root


def test_collect_pairs_groups_videos_in_natural_order(tmp_path: Path) -> None:
    gt, pred = tmp_path / "g", tmp_path / "p"
    for k in (1, 2, 10):
        save(gt / "v" / f"v_{k}.png", np.zeros((2, 2), np.uint8))
        save(pred / "v" / f"v_{k}.png", np.zeros((2, 2), np.uint8))
    save(pred / "v" / "v_99.png", np.zeros((2, 2), np.uint8))
    videos, extra = collect_pairs(pred, gt)
    assert [v for v, _ in videos] == ["v"]
    assert [p.name for p in videos[0][1]] == ["v_1.png", "v_2.png", "v_10.png"]
    assert extra == 1


def test_oracle_predictor(s4_gt: Path, tmp_path: Path) -> None:
    pred = write_preds(tmp_path / "pred", lambda rel, a: a)
    # one video per batch, so the arithmetic below is per video (the default batches 4)
    res = run_evaluate(pred, s4_gt, "s4", batch_videos=1, json_out=tmp_path / "out" / "r.json")
    # every frame has union >= 2 or empty GT of 16 px, so every IoU is exactly 1
    assert res["miou"] == 1.0
    # per-video F: vidA 1, vidB 1 (the empty frame is skipped), vidC has no non-empty
    # frame so AVSBench's F stays 0 -> mean over the 3 videos = 2/3
    per = {v["video"]: v for v in res["per_video"]}
    assert per["cat/vidC"]["fscore"] == 0.0
    assert per["dog/vidA"]["fscore"] == pytest.approx(1.0, abs=1e-7)
    assert res["fscore"] == pytest.approx(2 / 3, abs=1e-7)
    assert res["num_videos"] == 3 and res["num_frames"] == 6 and res["num_batches"] == 3
    assert res["num_empty_gt_frames"] == 3
    assert json.loads((tmp_path / "out" / "r.json").read_text()) == res


def test_trivial_background_predictor(s4_gt: Path, tmp_path: Path) -> None:
    pred = write_preds(tmp_path / "pred", lambda rel, a: np.zeros_like(a))
    res = run_evaluate(pred, s4_gt, "s4", batch_videos=1)
    # IoU: vidA 0, 0 -> 0; vidB 0 and 1 (empty GT, empty pred) -> 1/2; vidC 1, 1 -> 1
    assert res["miou"] == pytest.approx((0 + 0.5 + 1) / 3, abs=1e-7)
    # F: only threshold 0 scores (all 16 px predicted): g = 4/16 in every non-empty frame
    f_g = f_beta(0.25, 1.0)
    per = {v["video"]: v for v in res["per_video"]}
    assert per["dog/vidA"]["fscore"] == pytest.approx(f_g, abs=1e-6)
    assert per["cat/vidB"]["fscore"] == pytest.approx(f_g, abs=1e-6)
    assert res["fscore"] == pytest.approx((f_g + f_g + 0) / 3, abs=1e-6)


def test_zero_one_masks_and_palette_pngs_read_like_0_255(s4_gt: Path, tmp_path: Path) -> None:
    p01 = write_preds(tmp_path / "p01", lambda rel, a: (a // 255).astype(np.uint8))
    pp = write_preds(tmp_path / "pp", lambda rel, a: a)
    for rel, arr in gt_masks().items():  # overwrite as palette images, as AVSBench saves them
        save(pp / rel, arr, mode="P")
    r1 = run_evaluate(p01, s4_gt, "s4")
    r2 = run_evaluate(pp, s4_gt, "s4")
    assert r1["miou"] == r2["miou"] == 1.0 and r1["fscore"] == r2["fscore"]


def test_partial_prediction_and_batch_grouping(s4_gt: Path, tmp_path: Path) -> None:
    def half(rel: str, a: np.ndarray) -> np.ndarray:
        out = a.copy()
        if rel == "dog/vidA/vidA_1.png":
            out[0, 2:] = 0  # 2 of 4 px: IoU 1/2
        if rel == "cat/vidB/vidB_2.png":
            out[3, 3] = 255  # empty GT, 1 px wrong: IoU 15/16
        return out

    pred = write_preds(tmp_path / "pred", half)
    res = run_evaluate(pred, s4_gt, "ms3")
    # videos in order cat/vidB, cat/vidC, dog/vidA: (1 + 15/16)/2, 1, (1/2 + 1)/2
    v_b, v_c, v_a = (1 + 15 / 16) / 2, 1.0, 0.75
    assert res["miou"] == pytest.approx((v_a + v_b + v_c) / 3, abs=1e-7)
    # vidA F: threshold 0 -> frames F(1/4,1) and F(1/4,1); mask -> F(1, 1/2) and 1
    f_a = max(f_beta(0.25, 1), (f_beta(1, 0.5) + 1) / 2)
    per = {v["video"]: v for v in res["per_video"]}
    assert per["dog/vidA"]["fscore"] == pytest.approx(f_a, abs=1e-6)
    # two videos per batch: batches (vidB, vidC) and (vidA); batch 1 = 4 frames
    res2 = run_evaluate(pred, s4_gt, "ms3", batch_videos=2)
    assert res2["num_batches"] == 2
    b1 = (1 + 15 / 16 + 1 + 1) / 4
    assert res2["miou"] == pytest.approx((b1 + v_a) / 2, abs=1e-7)
    assert res2["per_video"] == res["per_video"]


def test_probability_maps(tmp_path: Path) -> None:
    gt, pred = tmp_path / "g", tmp_path / "p"
    g = np.array([[255, 255], [0, 0]], np.uint8)
    save(gt / "v" / "v_1.png", g)
    # p = v/255: 128/255 > 0.5 is foreground, 127/255 is not -> P = {(0,0)}: IoU 1/2
    save(pred / "v" / "v_1.png", np.array([[128, 127], [0, 0]], np.uint8))
    res = run_evaluate(pred, gt, "s4", pred_format="prob")
    assert res["miou"] == 0.5
    # F: t <= 127/255: both top pixels -> 1; so the max is exactly 1
    assert res["fscore"] == pytest.approx(1.0, abs=1e-7)
    with pytest.raises(EvaluationError, match="non-binary mask"):
        run_evaluate(pred, gt, "s4")


def test_resize_option(tmp_path: Path) -> None:
    gt, pred = tmp_path / "g", tmp_path / "p"
    g = np.zeros((4, 4), np.uint8)
    g[:2] = 255
    save(gt / "v" / "v_1.png", g)
    save(pred / "v" / "v_1.png", np.array([[255], [0]], np.uint8).repeat(2, axis=1))  # 2x2
    with pytest.raises(EvaluationError, match=r"expected 4x4 .*got 2x2"):
        run_evaluate(pred, gt, "s4")
    assert run_evaluate(pred, gt, "s4", size=(4, 4))["miou"] == 1.0
    assert parse_size("224x160") == (224, 160)
    with pytest.raises(ValueError, match="WxH"):
        parse_size("224")


# ---------------------------------------------------------------- errors and exit codes


def test_missing_prediction_names_file(s4_gt: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    pred = write_preds(tmp_path / "pred", lambda rel, a: a)
    (pred / "dog/vidA/vidA_2.png").unlink()
    with pytest.raises(EvaluationError, match=r"1 of 6 prediction frames are missing: .*vidA_2"):
        run_evaluate(pred, s4_gt, "s4")
    assert main(["--pred", str(pred), "--gt", str(s4_gt), "--split", "s4"]) == EXIT_BAD_INPUT
    assert "vidA_2.png" in capsys.readouterr().err


def test_size_mismatch_says_expected_and_got(s4_gt: Path, tmp_path: Path) -> None:
    pred = write_preds(tmp_path / "pred", lambda rel, a: a)
    save(pred / "cat/vidB/vidB_1.png", np.zeros((3, 5), np.uint8))
    with pytest.raises(EvaluationError, match=r"vidB_1.png: expected 4x4 .*got 5x3"):
        run_evaluate(pred, s4_gt, "s4")


def test_non_binary_gt_and_prediction(s4_gt: Path, tmp_path: Path) -> None:
    pred = write_preds(tmp_path / "pred", lambda rel, a: a)
    bad = np.zeros((4, 4), np.uint8)
    bad[0, 0] = 7
    save(pred / "cat/vidC/vidC_1.png", bad)
    with pytest.raises(EvaluationError, match=r"non-binary mask .*vidC_1.png.*got \[0, 7\]"):
        run_evaluate(pred, s4_gt, "s4")
    save(pred / "cat/vidC/vidC_1.png", np.zeros((4, 4), np.uint8))
    bad[0, 0] = 1
    bad[0, 1] = 255  # mixing the two conventions is not binary either
    save(s4_gt / "cat/vidC/vidC_1.png", bad)
    with pytest.raises(EvaluationError, match=r"gt/cat/vidC/vidC_1.png.*got \[0, 1, 255\]"):
        run_evaluate(pred, s4_gt, "s4")


def test_lenient_gt_binarises_like_avsbench(tmp_path: Path) -> None:
    gt, pred = tmp_path / "g", tmp_path / "p"
    g = np.zeros((4, 4), np.uint8)
    g[:2] = 254  # not binary; convert("1") maps 254 to white (error -1 per pixel never
    # brings a neighbour below 128), so the object is the top half
    save(gt / "v" / "v_1.png", g)
    p = np.zeros((4, 4), np.uint8)
    p[:2] = 255
    save(pred / "v" / "v_1.png", p)
    with pytest.raises(EvaluationError, match="--lenient-gt"):
        run_evaluate(pred, gt, "s4")
    res = run_evaluate(pred, gt, "s4", lenient_gt=True)
    assert res["miou"] == 1.0 and res["gt_non_binary_files"] == 1


def test_unreadable_and_empty_and_missing_dirs(s4_gt: Path, tmp_path: Path) -> None:
    pred = write_preds(tmp_path / "pred", lambda rel, a: a)
    (pred / "dog/vidA/vidA_1.png").write_bytes(b"not a png")
    with pytest.raises(EvaluationError, match=r"cannot read .*vidA_1.png"):
        run_evaluate(pred, s4_gt, "s4")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvaluationError, match="no ground-truth PNG files under"):
        run_evaluate(pred, empty, "s4")
    with pytest.raises(EvaluationError, match=r"prediction folder .*nowhere does not exist"):
        run_evaluate(tmp_path / "nowhere", s4_gt, "s4")
    with pytest.raises(ValueError, match="expected split in"):
        run_evaluate(pred, s4_gt, "s5")  # type: ignore[arg-type]


def test_cli_exit_codes_and_table(s4_gt: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    pred = write_preds(tmp_path / "pred", lambda rel, a: a)
    out = tmp_path / "r.json"
    args = ["--pred", str(pred), "--gt", str(s4_gt), "--split", "s4", "--no-progress"]
    assert main([*args, "--json", str(out), "--per-video"]) == EXIT_OK
    text = capsys.readouterr().out
    assert "mIoU" in text and "1.0000" in text and "dog/vidA" in text
    assert json.loads(out.read_text())["miou"] == 1.0
    # the JSON path is a folder -> output error
    assert main([*args, "--json", str(tmp_path)]) == EXIT_OUTPUT
    with pytest.raises(SystemExit) as exc:
        main([*args, "--size", "big"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main([*args, "--batch-videos", "0"])
    assert exc.value.code == 2


def test_module_entry_point_exit_code(tmp_path: Path) -> None:
    gt = tmp_path / "g"
    save(gt / "v" / "v_1.png", np.zeros((2, 2), np.uint8))
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "moca_rt.evaluate"),
            *("--pred", str(tmp_path / "p"), "--gt", str(gt), "--split", "s4"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_BAD_INPUT
    assert "prediction folder" in proc.stderr


# ---------------------------------------------------------------- AVSS


def test_avss_colour_and_index_pngs(tmp_path: Path) -> None:
    pal = avss_palette()
    gt, pred_c, pred_i = tmp_path / "g", tmp_path / "pc", tmp_path / "pi"
    # video u1, frame 0: G [[0,1],[1,15]], P [[0,1],[15,15]]
    #   class 0: IoU 1, F 1; class 1: inter 1, union 2 -> 1/2, F(1, 1/2) = 0.8125;
    #   class 15: inter 1, union 2 -> 1/2, F(1/2, 1)
    # frame 1: G = P = all background -> class 0 IoU 1, F 1
    g0 = np.array([[0, 1], [1, 15]])
    p0 = np.array([[0, 1], [15, 15]])
    z = np.zeros((2, 2), np.int64)
    for k, (g, p) in enumerate([(g0, p0), (z, z)]):
        save(gt / "u1" / "labels_rgb" / f"{k}.png", pal[g])
        save(pred_c / "u1" / "labels_rgb" / f"{k}.png", pal[p])
        save(pred_i / "u1" / "labels_rgb" / f"{k}.png", p.astype(np.uint8))
    res = run_evaluate(pred_c, gt, "avss")
    # AVSBench's final mIoU averages over all 71 classes, unseen ones as 0
    assert res["miou"] == pytest.approx((1 + 0.5 + 0.5) / 71, abs=1e-7)
    assert res["miou_present"] == pytest.approx(2 / 3, abs=1e-7)
    assert res["miou_no_bg"] == pytest.approx(0.5, abs=1e-7)
    assert res["fscore_present"] == pytest.approx((1 + 0.8125 + f_beta(0.5, 1)) / 3, abs=1e-6)
    assert res["num_classes_present"] == 3
    assert [c["count"] for c in res["per_class"] if c["count"]] == [2, 1, 1]
    # index PNGs give the same numbers
    assert run_evaluate(pred_i, gt, "avss")["miou"] == res["miou"]
    # an oracle scores 1 on every class it sees
    assert run_evaluate(gt, gt, "avss")["miou_present"] == pytest.approx(1.0, abs=1e-7)


def test_avss_unknown_colours(tmp_path: Path) -> None:
    pal = avss_palette()
    gt, pred = tmp_path / "g", tmp_path / "p"
    g = pal[np.array([[1, 1], [0, 0]])].copy()
    g[1, 1] = (3, 3, 3)  # not a palette colour: AVSBench maps it to class 0
    save(gt / "u" / "0.png", g)
    save(pred / "u" / "0.png", pal[np.array([[1, 1], [0, 0]])])
    res = run_evaluate(pred, gt, "avss")
    assert res["gt_unknown_colour_pixels"] == 1 and res["miou_present"] == 1.0
    bad = pal[np.array([[1, 1], [0, 0]])].copy()
    bad[0, 1] = (3, 3, 3)
    save(pred / "u" / "0.png", bad)
    with pytest.raises(EvaluationError, match=r"colour \(3, 3, 3\) at pixel \(x=1, y=0\)"):
        run_evaluate(pred, gt, "avss")
    save(pred / "u" / "0.png", np.full((2, 2), 80, np.uint8))
    with pytest.raises(EvaluationError, match=r"expected values in \[0, 70\], got \[80\]"):
        run_evaluate(pred, gt, "avss")
