"""Editor timelines (issue 12, item 3): OTIO and CMX 3600 EDL files read back with OTIO.

* The timeline of a generated video whose sounds switch on and off, written from per-frame
  records whose masks are the world's ground truth (the segmenter replaced by the truth, so the
  timeline path is what is checked: frame rate from the decoded file, intervals, markers), has
  one marker per ground-truth on-interval, each within one frame of it.
* ``infer --timeline`` end to end (shipped tiny models, no SAM proposals): the markers are
  exactly the runs of non-empty masks in ``records.jsonl``, the clip has the source's frame
  count and rate, the metadata points at the mask folder; the EDL keeps one LOC per interval.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moca_rt import infer
from moca_rt.sinks import JsonlWriter, decode_rle, read_jsonl
from moca_rt.timeline import (
    SoundingInterval,
    build_timeline,
    frame_intervals,
    intervals_from_records,
    write_run_timeline,
    write_timeline,
)

otio = pytest.importorskip(
    "opentimelineio", reason="needs moca-rt[otio] (CI installs it; pip install 'moca-rt[otio]')"
)

FPS = 25.0
# The shipped tiny models (trained on the synthetic world), cluster masks only: fast on a CPU.
SHIPPED = ["--proposals", "none", "--no-progress", "--device", "cpu"]


def _markers(path: Path, **kwargs: object) -> tuple[object, list[object]]:
    timeline = otio.adapters.read_from_file(str(path), **kwargs)
    clips = list(timeline.find_clips())
    assert len(clips) == 1, f"expected one clip, got {len(clips)}"
    return clips[0], list(clips[0].markers)


def test_frame_intervals_are_maximal_runs() -> None:
    flags = [False, True, True, False, False, True, False, True, True, True]
    assert frame_intervals(flags) == [(1, 3), (5, 6), (7, 10)]
    assert frame_intervals([]) == []
    assert frame_intervals([True] * 4) == [(0, 4)]


def _record(writer: JsonlWriter, index: int, mask: np.ndarray, dropped: bool = False) -> None:
    writer.write_frame(index, index / FPS, None if dropped else mask, dropped=dropped)


def test_intervals_from_records_gaps_dropped_and_merging(tmp_path: Path) -> None:
    on, off = np.ones((4, 6), bool), np.zeros((4, 6), bool)
    with JsonlWriter(tmp_path / "r.jsonl") as w:
        # frames 0..9 one record each; frame 4 dropped; then --fps-like gaps: 10, 14, 18
        for k, m in enumerate([on, on, off, on, on, on, off, off, on, off]):
            _record(w, k, m, dropped=(k == 4))
        _record(w, 10, on)
        _record(w, 14, on)
        _record(w, 18, off)
    records = read_jsonl(tmp_path / "r.jsonl")
    got = intervals_from_records(records)
    assert [(iv.start, iv.end) for iv in got] == [(0, 2), (3, 4), (5, 6), (8, 9), (10, 18)]
    assert got[-1].frames == 2 and got[0].mean_area == 1.0
    merged = intervals_from_records(records, min_gap=1)
    assert [(iv.start, iv.end) for iv in merged] == [(0, 6), (8, 18)]
    assert merged[0].frames == 4  # the merged gaps (off frame 2, dropped frame 4) count no record
    longer = intervals_from_records(records, min_gap=1, min_frames=7)
    assert [(iv.start, iv.end) for iv in longer] == [(8, 18)]
    with pytest.raises(ValueError, match="min_frames"):
        intervals_from_records(records, min_frames=0)


@pytest.fixture(scope="module")
def switching_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A synthetic-world video (64 px, 3 s at 25 fps) whose ground truth switches at least twice
    on and off, and its per-frame ground-truth masks."""
    from moca_rt.datasets.synth import SynthWorld
    from moca_rt.datasets.video import write_mp4

    world = SynthWorld(3, image_size=64, video_seconds=3.0)
    for index in range(40):
        scene = world.sample("video", index)
        on = scene.masks.reshape(scene.num_frames, -1).any(axis=1)
        if len(frame_intervals(list(on))) >= 2 and not on[0]:
            break
    else:
        raise AssertionError("no scene of the first 40 switches on twice")
    folder = tmp_path_factory.mktemp("timeline")
    path = write_mp4(folder / "switching.mp4", scene.frames, scene.audio, fps=FPS)
    return path, scene.masks


def test_ground_truth_timeline_has_one_marker_per_on_interval(
    switching_video: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    from moca_rt.media import open_source

    video, gt_masks = switching_video
    with open_source(str(video)) as source:  # the decoded frames and the rate of the file
        rate = source.frame_rate
        decoded = [frame.index for frame in source]
    assert rate == pytest.approx(FPS)
    assert len(decoded) == len(gt_masks)
    with JsonlWriter(tmp_path / "records.jsonl") as w:
        for k in decoded:
            w.write_frame(k, k / FPS, gt_masks[k])
    gt = frame_intervals(list(gt_masks.reshape(len(gt_masks), -1).any(axis=1)))
    note = write_run_timeline(tmp_path / "gt.otio", str(video), tmp_path, frame_rate=rate)
    assert f"{len(gt)} sounding interval(s) at 25 fps" in note

    clip, markers = _markers(tmp_path / "gt.otio")
    assert len(markers) == len(gt) >= 2
    one_frame = 1.0 / FPS
    for marker, (start, end) in zip(markers, gt, strict=True):
        got = marker.marked_range
        assert got.start_time.rate == pytest.approx(FPS)
        assert abs(got.start_time.to_seconds() - start / FPS) <= one_frame
        assert abs(got.end_time_exclusive().to_seconds() - end / FPS) <= one_frame
    assert clip.source_range.duration.to_frames() == len(gt_masks)
    assert clip.media_reference.target_url == video.resolve().as_uri()


def test_infer_timeline_markers_are_the_records_runs(
    switching_video: tuple[Path, np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    video, gt_masks = switching_video
    out = tmp_path / "run"
    code = infer.main([str(video), "--out", str(out), *SHIPPED, "--timeline", str(out / "t.otio")])
    assert code == 0, capsys.readouterr().err
    assert "timeline:" in capsys.readouterr().err
    records = read_jsonl(out / "records.jsonl")
    flags = [bool(decode_rle(r).any()) for r in records]
    runs = frame_intervals(flags)

    clip, markers = _markers(out / "t.otio")
    assert [
        (m.marked_range.start_time.to_frames(), m.marked_range.end_time_exclusive().to_frames())
        for m in markers
    ] == runs
    assert len(runs) >= 1 and not all(flags), f"expected a switching segmentation, got {flags}"
    assert clip.source_range.duration.to_frames() == len(records) == len(gt_masks)
    timeline = otio.adapters.read_from_file(str(out / "t.otio"))
    meta = timeline.metadata["moca_rt"]
    assert meta["masks"] == "masks" and (out / meta["masks"]).is_dir()
    assert meta["frame_rate"] == pytest.approx(FPS)

    code = infer.main([str(video), "--out", str(out), *SHIPPED, "--timeline", str(out / "t.edl")])
    assert code == 0
    _, edl_markers = _markers(out / "t.edl", rate=FPS)
    assert [m.marked_range.start_time.to_frames() for m in edl_markers] == [s for s, _ in runs]


def test_bad_timeline_suffix_is_a_usage_error(
    switching_video: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        infer.main([str(switching_video[0]), "--out", str(tmp_path), "--timeline", "t.json"])
    assert exit_info.value.code == infer.EXIT_USAGE
    assert "expected a file ending in .otio or .edl" in capsys.readouterr().err


def test_edl_needs_a_timecode_rate(tmp_path: Path) -> None:
    from moca_rt.errors import InputError

    timeline = build_timeline("clip.mp4", [SoundingInterval(0, 2, 2, 0.5)], 1.0, 5)
    with pytest.raises(InputError, match=r"cannot write a CMX 3600 EDL at 1\.0 fps"):
        write_timeline(timeline, tmp_path / "x.edl", 1.0)
    assert not (tmp_path / "x.edl").exists() and not (tmp_path / "x.edl.part").exists()
