"""AVSBench folders: lossless writer -> reader round trips, official paths, real-data variants."""

from __future__ import annotations

import csv
import json
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import moca_rt.datasets
from moca_rt.datasets.avsbench import AvsbenchDataset, AvsbenchWriter, add_scene
from moca_rt.datasets.io import read_audio_av, read_wav, write_wav
from moca_rt.datasets.synth import SynthWorld
from moca_rt.frame_files import avss_palette, colour_mask_to_labels
from tests.conftest import FIXTURES

SIZE = 64


@pytest.fixture(scope="module")
def world() -> SynthWorld:
    return SynthWorld(7, image_size=SIZE, frames_per_clip=5)


@pytest.mark.parametrize(
    ("subset", "split"), [("s4", "s4"), ("s4", "silent"), ("ms3", "ms3"), ("avss", "avss")]
)
def test_round_trip_is_lossless(tmp_path: Path, world: SynthWorld, subset: str, split: str) -> None:
    scenes = [world.sample(split, i, "test") for i in range(2)] + [world.sample(split, 0, "train")]
    with AvsbenchWriter(
        tmp_path, subset, class_names=world.class_names, frame_format="png"
    ) as writer:
        for i, scene in enumerate(scenes):
            add_scene(writer, scene, f"vid{i}")
    test = AvsbenchDataset(tmp_path, subset, split="test")
    assert test.video_ids == ["vid0", "vid1"]
    assert len(AvsbenchDataset(tmp_path, subset)) == 3
    for scene, clip in zip(scenes, test, strict=False):
        np.testing.assert_array_equal(clip.frames, scene.frames)
        np.testing.assert_array_equal(clip.masks, scene.masks)
        assert clip.mask_frames == (0, 1, 2, 3, 4)
        assert clip.sample_rate == 16000 and clip.audio.shape == (1, scene.audio.shape[0])
        assert np.abs(clip.audio[0] - scene.audio).max() <= 1 / 32768
        if subset == "avss":
            assert clip.labels is not None
            np.testing.assert_array_equal(clip.labels, scene.labels)
        else:
            assert clip.labels is None
    if subset == "avss":
        assert test.classes == ("background", *world.class_names)


def test_avss_frames_default_to_near_lossless_jpeg(tmp_path: Path, world: SynthWorld) -> None:
    scene = world.sample("avss", 1, "val")
    with AvsbenchWriter(tmp_path, "avss", class_names=world.class_names) as writer:
        add_scene(writer, scene, "u")
    assert (tmp_path / "v1m" / "u" / "frames" / "0.jpg").is_file()
    assert not list(tmp_path.rglob("frames/*.png"))  # every PNG in a video folder is a label map
    clip = AvsbenchDataset(tmp_path, "avss")[0]
    err = np.abs(clip.frames.astype(np.int16) - scene.frames)
    assert err.mean() < 2.0 and np.percentile(err, 99) <= 8
    assert clip.labels is not None
    np.testing.assert_array_equal(clip.labels, scene.labels)


def test_files_sit_at_the_official_paths(tmp_path: Path, world: SynthWorld) -> None:
    scene = world.sample("s4", 3, "test")
    category = scene.class_names[scene.sounding_class_ids[0]]
    with AvsbenchWriter(tmp_path / "s4", "s4") as writer:
        add_scene(writer, scene, "abc")
    base = tmp_path / "s4" / "s4_data"
    for k in range(1, 6):
        assert (base / "visual_frames" / "test" / category / "abc" / f"abc_{k}.png").is_file()
        mask = np.asarray(
            Image.open(base / "gt_masks" / "test" / category / "abc" / f"abc_{k}.png")
        )
        assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, scene.masks[k - 1])
    assert (base / "audio_wav" / "test" / category / "abc.wav").is_file()
    with (tmp_path / "s4" / "s4_meta_data.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0][2:] == ["category", "split"] and rows[1] == ["abc", "0", category, "test"]

    with AvsbenchWriter(tmp_path / "ms3", "ms3") as writer:
        add_scene(writer, world.sample("ms3", 0, "val"), "m1")
    ms3 = tmp_path / "ms3" / "ms3_data"
    assert (ms3 / "visual_frames" / "m1" / "m1.mp4_5.png").is_file()
    assert (ms3 / "audio_wav" / "val" / "m1.wav").is_file()
    assert (ms3 / "gt_masks" / "val" / "m1" / "m1_1.png").is_file()

    with AvsbenchWriter(tmp_path / "avss", "avss", class_names=world.class_names) as writer:
        add_scene(writer, world.sample("avss", 0, "train"), "u1")
    avss = tmp_path / "avss" / "v1m" / "u1"
    assert (avss / "frames" / "0.jpg").is_file() and (avss / "audio.wav").is_file()
    assert (avss / "labels_rgb" / "4.png").is_file() and not (
        avss / "labels_rgb" / "5.png"
    ).exists()
    assert json.loads((tmp_path / "avss" / "label2idx.json").read_text())["background"] == 0


def test_palette_matches_the_voc_pattern_and_datasets_use_the_scorer_one() -> None:
    pal = avss_palette()
    assert pal.shape == (71, 3)
    assert pal[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert pal[8].tolist() == [64, 0, 0] and len({tuple(c) for c in pal.tolist()}) == 71
    assert moca_rt.datasets.avss_palette is avss_palette  # one palette for writer and scorer
    rgb = pal[np.array([[0, 5], [70, 9]])].astype(np.uint8)
    rgb[0, 0] = [1, 2, 3]  # not a palette colour -> background
    assert colour_mask_to_labels(rgb, pal).tolist() == [[0, 5], [70, 9]]


def _write_real_like_s4(root: Path) -> np.ndarray:
    """An S4 train video as AVSBench ships it: one mask only, stereo WAV, its own header."""
    root.mkdir(parents=True)
    (root / "s4_meta_data.csv").write_text(
        "vid_name,start,category,split\nxYz-1,3,dog_barking,train\n"
    )
    frames_dir = root / "s4_data" / "visual_frames" / "train" / "dog_barking" / "xYz-1"
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(5, 24, 32, 3), dtype=np.uint8)
    frames_dir.mkdir(parents=True)
    for k in range(5):
        Image.fromarray(frames[k]).save(frames_dir / f"xYz-1_{k + 1}.png")
    mask_dir = root / "s4_data" / "gt_masks" / "train" / "dog_barking" / "xYz-1"
    mask_dir.mkdir(parents=True)
    mask = np.zeros((24, 32), np.uint8)
    mask[5:15, 3:20] = 255
    Image.fromarray(mask).save(mask_dir / "xYz-1_1.png")
    stereo = (rng.uniform(-0.5, 0.5, size=(2, 1600)) * 32768).astype("<i2")
    wav_path = root / "s4_data" / "audio_wav" / "train" / "dog_barking" / "xYz-1.wav"
    wav_path.parent.mkdir(parents=True)
    with wave.open(str(wav_path), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(stereo.T.tobytes())
    return stereo


def test_reader_takes_real_s4_train_layout(tmp_path: Path) -> None:
    stereo = _write_real_like_s4(tmp_path / "Single-source")
    ds = AvsbenchDataset(tmp_path / "Single-source", "s4", split="train")
    assert (
        len(ds) == 1 and len(AvsbenchDataset(tmp_path / "Single-source", "s4", split="test")) == 0
    )
    clip = ds[0]
    assert (clip.video_id, clip.category, clip.split) == ("xYz-1", "dog_barking", "train")
    assert clip.frames.shape == (5, 24, 32, 3) and clip.masks.shape == (1, 24, 32)
    assert clip.mask_frames == (0,) and int(clip.masks.sum()) == 10 * 17
    np.testing.assert_array_equal(clip.audio, stereo.astype(np.float32) / 32768)


def test_reader_takes_avss_jpeg_frames(tmp_path: Path) -> None:
    root = tmp_path / "avss"
    (root / "v2" / "u9" / "frames").mkdir(parents=True)
    (root / "v2" / "u9" / "labels_rgb").mkdir(parents=True)
    (root / "metadata.csv").write_text(
        "vid,uid,s_min,s_sec,a_obj,split,label\nq,u9,0,0,x,test,v2\n"
    )
    (root / "label2idx.json").write_text(json.dumps({"background": 0, "dog": 1, "car": 2}))
    pal = avss_palette()
    lab = np.zeros((16, 16), np.int64)
    lab[2:6, 2:6] = 2
    for i in range(10):
        Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(
            root / "v2" / "u9" / "frames" / f"{i}.jpg"
        )
        Image.fromarray(pal[lab].astype(np.uint8)).save(
            root / "v2" / "u9" / "labels_rgb" / f"{i}.png"
        )
    write_wav(root / "v2" / "u9" / "audio.wav", np.zeros(800, np.float32), 16000)
    clip = AvsbenchDataset(root, "avss", split="test")[0]
    assert clip.frames.shape == (10, 16, 16, 3) and clip.category == "v2"
    assert clip.labels is not None and clip.labels.shape == (10, 16, 16)
    np.testing.assert_array_equal(clip.labels[9], lab)
    assert AvsbenchDataset(root, "avss").classes == ("background", "dog", "car")


def test_wav_readers_agree_on_a_reference_fixture() -> None:
    path = FIXTURES / "preprocessing" / "wav_2s_16k.wav"
    if not path.is_file():
        pytest.skip(f"fixture {path} is not present")
    ours, rate = read_wav(path)
    theirs, rate_av = read_audio_av(path)
    assert (rate, rate_av) == (16000, 16000) and ours.shape == (1, 32000)
    np.testing.assert_array_equal(ours, theirs)


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    frames = np.zeros((5, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="expected masks of shape"):
        AvsbenchWriter(tmp_path, "ms3").add("a", "test", frames, np.zeros(16), 16000)
    with pytest.raises(ValueError, match="expected class_names"):
        AvsbenchWriter(tmp_path, "avss")
    with pytest.raises(ValueError, match="expected subset"):
        AvsbenchDataset(tmp_path, "s5")
    with pytest.raises(FileNotFoundError, match=r"s4_meta_data\.csv"):
        AvsbenchDataset(tmp_path / "nothing", "s4")
