"""``python -m moca_rt.datasets generate``: files, byte-identical reruns, exit codes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moca_rt.datasets.__main__ import EXIT_BAD_INPUT, EXIT_OK, main, run_generate
from moca_rt.datasets.avsbench import AvsbenchDataset
from moca_rt.datasets.synth import SynthWorld
from moca_rt.frame_files import read_binary_mask


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("split", ["s4", "ms3", "avss", "silent"])
def test_generate_writes_a_readable_avsbench_folder(tmp_path: Path, split: str) -> None:
    root = run_generate(
        tmp_path / split,
        split,
        2,
        seed=5,
        size=48,
        frames=2,
        progress=False,
        avss_frame_format="png",
    )
    subset = {"silent": "s4"}.get(split, split)
    ds = AvsbenchDataset(root, subset, split="test")
    assert len(ds) == 2
    world = SynthWorld(5, image_size=48, frames_per_clip=2)
    for i, clip in enumerate(ds):
        scene = world.sample(split, i, "test")
        np.testing.assert_array_equal(clip.frames, scene.frames)
        np.testing.assert_array_equal(clip.masks, scene.masks)
        if split == "silent":
            assert clip.category == "silent" and not clip.masks.any()
    manifest = json.loads((root / "synth_manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["config"]["image_size"] == 48


def test_same_seed_gives_identical_files_and_other_seeds_differ(tmp_path: Path) -> None:
    a = _tree_digest(
        run_generate(tmp_path / "a", "ms3", 2, seed=1, size=32, frames=2, progress=False)
    )
    b = _tree_digest(
        run_generate(tmp_path / "b", "ms3", 2, seed=1, size=32, frames=2, progress=False)
    )
    c = _tree_digest(
        run_generate(tmp_path / "c", "ms3", 2, seed=2, size=32, frames=2, progress=False)
    )
    assert a == b
    assert a.keys() == c.keys()
    differing = [k for k in a if a[k] != c[k] and not k.endswith(".json")]
    assert any(k.endswith(".wav") for k in differing) and any(
        "visual_frames" in k for k in differing
    )


def test_video_split_writes_mp4_masks_and_flags(tmp_path: Path) -> None:
    root = run_generate(tmp_path, "video", 1, seed=3, size=32, video_seconds=0.8, progress=False)
    vid = "synth_video_test_000000"
    assert (root / "videos" / f"{vid}.mp4").is_file() and (
        root / "audio_wav" / f"{vid}.wav"
    ).is_file()
    meta = json.loads((root / "videos.json").read_text())
    (record,) = meta["videos"]
    assert meta["fps"] == 25.0 and record["num_frames"] == 20
    scene = SynthWorld(3, image_size=32, video_seconds=0.8).sample("video", 0, "test")
    assert record["sounding"] == scene.sounding.astype(int).tolist()
    for k in (1, 20):
        np.testing.assert_array_equal(
            read_binary_mask(root / "gt_masks" / vid / f"{vid}_{k}.png"), scene.masks[k - 1]
        )


def test_main_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "generate",
                "--out",
                str(tmp_path / "ok"),
                "--split",
                "s4",
                "--num",
                "1",
                "--size",
                "32",
                "--no-progress",
            ]
        )
        == EXIT_OK
    )
    assert "wrote 1 s4 clips" in capsys.readouterr().out
    assert (
        main(
            [
                "generate",
                "--out",
                str(tmp_path / "odd"),
                "--split",
                "s4",
                "--num",
                "1",
                "--size",
                "33",
                "--no-progress",
            ]
        )
        == EXIT_BAD_INPUT
    )
    assert "expected an even --size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--out", str(tmp_path), "--split", "nope", "--num", "1"])
    assert exc.value.code == 2


def test_module_runs_as_a_script(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "moca_rt.datasets",
        "generate",
        "--out",
        str(tmp_path),
        "--split",
        "avss",
        "--num",
        "2",
        "--seed",
        "4",
        "--size",
        "32",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "generate avss" in proc.stderr  # the tqdm bar
    assert len(AvsbenchDataset(tmp_path, "avss")) == 2
