"""The media layer's side of issue 10: garbage samples, open-time hints, lazy decoding, names."""

from __future__ import annotations

import time
from pathlib import Path

import media_factory as mf
import numpy as np
import pytest
from PIL import Image

from moca_rt.media import ContainerSource, gt_mask_name, load_audio_16k, open_image_audio
from moca_rt.media.audio import SAMPLE_LIMIT
from moca_rt.media.sources import mp4_problem


def test_garbage_float_samples_are_clipped(tmp_path: Path) -> None:
    wave = mf.sine(440.0, 16000, 1.0)
    wave[0, 100:110] = 3.0e38
    wave[0, 500] = -1.0e30
    wav = mf.write_float_wav(tmp_path / "g.wav", wave, 16000)
    with pytest.warns(RuntimeWarning, match=r"up to 3e\+38 times full scale"):
        ring = load_audio_16k(wav)
    audio = ring.window(ring.start, ring.end - ring.start)
    assert np.isfinite(audio).all() and np.abs(audio).max() == SAMPLE_LIMIT
    # the float32 sums of the preprocessing no longer overflow
    assert np.isfinite(audio - audio.mean()).all()
    assert np.allclose(audio[:100], wave[0, :100])  # real samples are kept as they are


def test_clipped_samples_are_counted(tmp_path: Path) -> None:
    wave = mf.sine(440.0, 16000, 1.0)
    wave[0, :5] = 1e20
    wav = mf.write_float_wav(tmp_path / "g.wav", wave, 16000)
    image = tmp_path / "f.png"
    Image.fromarray(mf.make_frame(0, 16, 16)).save(image)
    with pytest.warns(RuntimeWarning):
        source = open_image_audio(image, wav)
    assert source.stats.clipped_samples == 5


def test_mp4_problem(tmp_path: Path) -> None:
    full = mf.write_video(tmp_path / "full.mp4", num_frames=10, height=32, width=32)
    assert mp4_problem(full) is None
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    problem = mp4_problem(cut)
    assert problem is not None and "truncated" in problem and "moov" in problem
    wav = mf.write_wav(tmp_path / "x.wav", mf.sine(440.0, 16000, 0.5), 16000)
    assert mp4_problem(wav) is None  # not an mp4: no opinion


def test_decoding_starts_with_the_iteration(tmp_path: Path) -> None:
    clip = mf.write_video(tmp_path / "c.mp4", num_frames=12, height=32, width=32)
    source = ContainerSource(clip)
    try:
        time.sleep(0.3)
        assert source.stats.frames_decoded == 0  # opened and checked, nothing decoded yet
        assert [f.index for f in source] == list(range(12))
    finally:
        source.close()
    unused = ContainerSource(clip)
    unused.close()  # closing a never-iterated source releases it without a thread
    assert not unused._thread.is_alive()


def test_image_source_hands_its_audio_to_an_overlay(tmp_path: Path) -> None:
    wav = mf.write_wav(tmp_path / "x.wav", mf.sine(440.0, 16000, 1.5), 16000)
    image = tmp_path / "f.png"
    Image.fromarray(mf.make_frame(0, 16, 16)).save(image)
    source = open_image_audio(image, wav)
    assert source.audio_sample_rate == 16000 and source.audio_channels == 1
    (chunk,) = source.tail_audio()
    assert chunk.sample_rate == 16000 and chunk.samples.shape == (1, 24000)


@pytest.mark.parametrize(
    ("frame", "name"),
    [
        ("bento_000_1.png", "bento_000_1.png"),  # S4
        ("abc.mp4_3.png", "abc_3.png"),  # MS3 frames carry ".mp4" in their names
        ("0.jpg", "0.png"),  # AVSS
    ],
)
def test_gt_mask_name(frame: str, name: str) -> None:
    assert gt_mask_name(Path(frame)) == name
