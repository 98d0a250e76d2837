"""Output writers: mask PNGs, JSONL with COCO RLE, overlay video with the original audio."""

from __future__ import annotations

import json
from pathlib import Path

import av
import media_factory as mf
import numpy as np
import pytest
from PIL import Image

from moca_rt.media import open_source
from moca_rt.sinks import (
    JsonlWriter,
    MaskPngWriter,
    OverlayVideoWriter,
    decode_rle,
    mask_to_rle,
    read_jsonl,
    tint,
)


def _random_masks(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(n):
        m = np.zeros((h, w), bool)
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        m[y0 : y0 + rng.integers(1, h // 2), x0 : x0 + rng.integers(1, w // 2)] = True
        m ^= rng.random((h, w)) < 0.05  # irregular edges and holes
        masks.append(m)
    return masks


def test_png_and_jsonl_rle_agree(tmp_path: Path) -> None:
    masks = _random_masks(4, 37, 53)
    masks.append(np.zeros((37, 53), bool))  # empty mask
    with MaskPngWriter(tmp_path / "png") as pw, JsonlWriter(tmp_path / "out.jsonl") as jw:
        for i, m in enumerate(masks):
            pw.write(i * 5, m)
            jw.write_frame(
                i * 5,
                i * 0.2,
                m,
                scores=np.array([0.25, -0.5]),
                chosen=[1],
                timings={"kmeans": 1.5},
                audio_missing=False,
            )
        jw.write_frame(99, 9.9, None, dropped=True)
    names = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert names == [f"{i * 5:06d}.png" for i in range(5)]
    records = read_jsonl(tmp_path / "out.jsonl")
    assert len(records) == 6
    for i, (rec, m) in enumerate(zip(records, masks, strict=False)):
        png = np.asarray(Image.open(tmp_path / "png" / f"{i * 5:06d}.png"))
        assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
        assert np.array_equal(png == 255, m)
        assert isinstance(rec["mask"]["counts"], str) and rec["mask"]["size"] == [37, 53]
        assert np.array_equal(decode_rle(rec), m.astype(np.uint8))
        assert np.array_equal(decode_rle(rec["mask"]), png // 255)
        assert rec["index"] == i * 5 and rec["scores"] == [0.25, -0.5] and rec["chosen"] == [1]
        assert rec["timings"] == {"kmeans": 1.5} and rec["audio_missing"] is False
    assert records[-1]["dropped"] is True and records[-1]["mask"] is None
    with pytest.raises(ValueError, match="null"):
        decode_rle(records[-1])


def test_jsonl_flushes_each_record_and_handles_nan(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    writer = JsonlWriter(path)
    writer.write_frame(0, 0.0, np.ones((4, 4), bool), scores=[float("nan"), float("inf"), 1.0])
    # still open: another reader (or a crash now) sees the complete record
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])  # strict JSON: NaN/inf were written as null
    assert rec["scores"] == [None, None, 1.0]
    with path.open("a") as fh:
        fh.write('{"index": 1, "pts"')  # torn last line, as after a crash
    assert len(read_jsonl(path)) == 1
    writer.close()
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write({"index": 2})


def test_bad_masks_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"2-D"):
        mask_to_rle(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="index"), MaskPngWriter(tmp_path) as w:
        w.write(-1, np.zeros((3, 3)))
    img = np.zeros((4, 6, 3), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        tint(img, np.zeros((6, 4), bool))
    with pytest.raises(ValueError, match="uint8"):
        tint(img.astype(np.float32), np.zeros((4, 6), bool))


def _decode_all(path: Path) -> tuple[list[float], list[np.ndarray], np.ndarray, int, str]:
    times, images, audio = [], [], []
    with av.open(str(path)) as c:
        rate = c.streams.audio[0].sample_rate
        codec = c.streams.audio[0].codec_context.name
        for fr in c.decode(*c.streams):
            if isinstance(fr, av.VideoFrame):
                times.append(fr.time)
                images.append(fr.to_ndarray(format="rgb24"))
            else:
                audio.append(fr.to_ndarray()[0])
    return times, images, np.concatenate(audio), rate, codec


def test_overlay_video_keeps_timestamps_and_original_audio(tmp_path: Path) -> None:
    src_path = mf.write_video(
        tmp_path / "in.mp4",
        num_frames=20,
        height=48,
        width=64,
        audio_rate=44100,
        audio_channels=2,
        freq=660.0,
        audio_duration=1.5,
    )
    out = tmp_path / "overlay.mp4"
    mask = np.zeros((48, 64), bool)
    mask[24:, 32:] = True
    pts_in = []
    with (
        open_source(src_path, keep_raw_audio=True) as src,
        OverlayVideoWriter.for_source(out, src, color=(255, 0, 0), alpha=0.6) as writer,
    ):
        for frame in src:
            pts_in.append(frame.pts)
            assert writer.write_frame(frame, mask)
        writer.write_audio(src.tail_audio())
    times, images, audio, rate, codec = _decode_all(out)
    assert len(times) == 20
    np.testing.assert_allclose(times, pts_in, atol=1e-3)
    assert codec == "aac" and rate == 44100
    # all 1.5 s of the original audio (video only lasts 0.8 s), padded to whole AAC frames
    assert 1.5 * rate <= len(audio) <= 1.5 * rate + 2048
    spec = np.abs(np.fft.rfft(audio[4410:61740]))
    assert abs(np.argmax(spec) * rate / (61740 - 4410) - 660.0) < 2.0
    img = images[5].astype(int)
    original = mf.make_frame(5, 48, 64).astype(int)
    inside, outside = (36, 48), (36, 10)
    assert img[inside][0] - original[inside][0] > 30  # red pushed up inside the mask
    assert abs(img[outside] - original[outside]).max() < 12  # untouched outside (H.264 error)


def test_overlay_odd_size_and_non_increasing_pts(tmp_path: Path) -> None:
    out = tmp_path / "odd.mkv"
    with OverlayVideoWriter(out, frame_rate=10) as w:
        for i in range(3):
            assert w.write(mf.make_frame(i, 33, 47), np.ones((33, 47), bool), i / 10)
        assert not w.write(mf.make_frame(3, 33, 47), None, 0.2)  # same pts: skipped
        with pytest.raises(ValueError, match="size of the first frame"):
            w.write(mf.make_frame(4, 34, 47), None, 0.5)
    assert w.frames_written == 3 and w.frames_skipped == 1
    with av.open(str(out)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 3 and (frames[0].height, frames[0].width) == (34, 48)


def test_overlay_bytes_are_reproducible(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, 64, 80, 3), dtype=np.uint8)
    digests = set()
    for k in range(4):
        path = tmp_path / f"overlay{k}.mp4"
        with OverlayVideoWriter(path, frame_rate=25) as writer:
            for i, image in enumerate(images):
                writer.write(image, image[..., 0] > 128, i / 25)
        digests.add(path.read_bytes())
    assert len(digests) == 1
