"""MP4 (H.264 + AAC) output of the continuous videos and the VGGSound-style folder reader."""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from moca_rt.datasets.io import write_wav
from moca_rt.datasets.synth import SynthWorld
from moca_rt.datasets.vggsound import VggsoundFolder
from moca_rt.datasets.video import read_video, write_mp4


@pytest.fixture(scope="module")
def video_scene():  # type: ignore[no-untyped-def]
    return SynthWorld(2, image_size=64, video_seconds=1.6).sample("video", 0)


def test_mp4_has_both_streams_with_right_counts_and_durations(tmp_path: Path, video_scene) -> None:  # type: ignore[no-untyped-def]
    path = write_mp4(tmp_path / "v.mp4", video_scene.frames, video_scene.audio, 25.0, 16000)
    with av.open(str(path)) as container:
        (vs,) = container.streams.video
        (aus,) = container.streams.audio
        assert vs.codec_context.name == "h264" and aus.codec_context.name == "aac"
        assert vs.frames == 40 and float(vs.duration * vs.time_base) == pytest.approx(1.6, abs=1e-6)
        assert aus.codec_context.sample_rate == 16000
        assert float(aus.duration * aus.time_base) == pytest.approx(1.6, abs=1024 / 16000)
    data = read_video(path)
    assert data.frames.shape == (40, 64, 64, 3) and data.fps == 25.0
    np.testing.assert_allclose(data.frame_times, np.arange(40) / 25.0, atol=1e-6)
    assert data.audio is not None and data.sample_rate == 16000
    # AAC pads the end, never the start (the edit list removes the priming): sample 0 is at t=0.
    assert data.audio_start == pytest.approx(0.0, abs=1e-6)
    n = video_scene.audio.shape[0]
    assert n <= data.audio.shape[1] <= n + 2048
    decoded = data.audio[0, :n]
    ref = video_scene.audio
    lags = range(-64, 65)
    best = max(lags, key=lambda k: float(np.dot(np.roll(decoded, k), ref)))
    assert best == 0
    snr = 10 * np.log10(
        np.sum(ref.astype(np.float64) ** 2) / np.sum((decoded - ref).astype(np.float64) ** 2)
    )
    assert snr > 10.0
    psnr = 10 * np.log10(
        255**2 / np.mean((data.frames.astype(np.float64) - video_scene.frames) ** 2)
    )
    assert psnr > 24.0


def test_mp4_bytes_are_reproducible(tmp_path: Path, video_scene) -> None:  # type: ignore[no-untyped-def]
    # Four encodes: with x264's macroblock tree on, most pairs differed, but not every pair.
    digests = {
        hashlib.sha256(
            write_mp4(tmp_path / f"{i}.mp4", video_scene.frames, video_scene.audio).read_bytes()
        ).hexdigest()
        for i in range(4)
    }
    assert len(digests) == 1, digests


def test_mp4_rejects_odd_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even frame height and width"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 15, 16, 3), np.uint8), None)


def test_vggsound_folder_reads_videos_and_pairs(tmp_path: Path, video_scene) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "vgg"
    write_mp4(root / "clips" / "a.mp4", video_scene.frames, video_scene.audio)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / "b.png")
    write_wav(root / "b.wav", np.stack([np.linspace(-0.5, 0.5, 2205)] * 2), 22050)
    (root / "c").mkdir()
    frames = rng.integers(0, 256, size=(12, 10, 10, 3), dtype=np.uint8)
    for i in range(12):
        Image.fromarray(frames[i]).save(root / "c" / f"f{i}.png")
    write_wav(root / "c.wav", np.zeros(12000), 12000)
    (root / "orphan.wav").write_bytes(b"")  # no frames next to it: not an item

    ds = VggsoundFolder(root, num_frames=3)
    assert len(ds) == 3
    by_name = {item.path.name: item for item in ds}
    b = by_name["b.png"]
    got_frames, audio, rate = b
    np.testing.assert_array_equal(got_frames[0], image)
    assert rate == 22050 and audio.shape == (2, 2205)
    c = by_name["c"]
    assert c.frames.shape == (3, 10, 10, 3) and c.sample_rate == 12000
    # 12 frames over 1 s at (i + 0.5) / 12; targets (j + 0.5) / 3 pick frames 1 or 2, 5 or 6,
    # 9 or 10.
    for got, allowed in zip(c.frames, ((1, 2), (5, 6), (9, 10)), strict=True):
        assert any(np.array_equal(got, frames[i]) for i in allowed)
    a = by_name["a.mp4"]
    assert a.frames.shape == (3, 64, 64, 3) and a.sample_rate == 16000
    assert a.audio.shape[1] >= video_scene.audio.shape[0]
    # Targets (j + 0.5) / 3 * 1.6 s = 0.267, 0.8, 1.333; nearest 25 fps frames: 0.28, 0.8, 1.32.
    np.testing.assert_allclose(a.frame_times, [0.28, 0.8, 1.32], atol=1e-6)
    assert len(VggsoundFolder(root, num_frames=None)[0].frames) in (1, 12, 40)
