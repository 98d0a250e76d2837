"""Run one opened source through a built pipeline and write its outputs (one model load, many
sources: ``infer`` calls this once, the batch and split-root jobs once per video).

Outputs under ``out``: ``masks/<name>.png`` (one per processed frame, 0/255; named by the
frame's AVSBench ground truth for a frame folder, else ``NNNNNN.png`` by frame index; another
folder with ``masks_dir``), ``records.jsonl`` (one record per input frame, flushed per record; a
record is written after its PNG and names it), optionally ``overlay.mp4`` and always
``summary.json`` (:class:`RunSummary`), also when the source breaks part-way, the run is
interrupted or an unexpected error escapes (then recorded in ``error`` and raised again).

What the input lacked and got substituted (silence for a missing audio stream, zeros around a
short soundtrack, clipped or replaced samples) is written to ``summary.warnings``; Python
warnings raised while the source is read are collected there too, not printed.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from moca_rt.errors import DecodeError, MediaError

if TYPE_CHECKING:
    from moca_rt.datasets.avsbench import AvsSplit
    from moca_rt.media.sources import MediaSource
    from moca_rt.pipeline import MocaPipeline

__all__ = [
    "SUMMARY_FILE",
    "RunSummary",
    "SplitSummary",
    "collect_warnings",
    "segment_source",
    "segment_split",
]

SUMMARY_FILE = "summary.json"


@dataclass
class RunSummary:
    """What a run did: counts, per-stage mean milliseconds per processed frame, outputs."""

    frames: int = 0
    processed: int = 0
    dropped: int = 0
    silent: int = 0
    empty: int = 0
    stage_ms: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    out: str = ""
    error: str | None = None
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def timing_table(self) -> str:
        rows = [f"{'stage':<12} {'ms/frame':>10}"]
        for name, ms in self.stage_ms.items():
            rows.append(f"{name:<12} {ms:>10.2f}")
        total = sum(self.stage_ms.values())
        rows.append(f"{'total':<12} {total:>10.2f}")
        fps = self.processed / self.wall_s if self.wall_s > 0 else 0.0
        rows.append(
            f"{self.frames} frames ({self.processed} processed, {self.dropped} dropped, "
            f"{self.silent} silent) in {self.wall_s:.2f} s = {fps:.2f} frames/s"
        )
        return "\n".join(rows)

    def write(self, folder: Path) -> Path:
        """Write ``folder/summary.json``."""
        path = folder / SUMMARY_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path


def segment_source(
    pipeline: MocaPipeline,
    source: MediaSource,
    out: Path,
    *,
    batch: int = 1,
    box_prompts: Any = None,
    overlay: bool = False,
    progress: bool = False,
    summary: RunSummary | None = None,
    masks_dir: Path | None = None,
    mask_names: Sequence[str] | None = None,
) -> RunSummary:
    """Segment every frame of ``source`` (closed on return) and write the outputs under ``out``.

    A decode or media error part-way is not raised: it is stored in ``summary.error`` after
    every decodable frame was written. KeyboardInterrupt closes the outputs and sets
    ``summary.interrupted``. Any other exception is recorded in ``summary.error`` (and
    ``summary.json``) and raised again. ``summary`` (e.g. with notes gathered while building)
    is filled in and returned.

    ``masks_dir``: where the mask PNGs go (default ``out/masks``); ``mask_names``: the PNG
    name of each frame index (default the source's ``mask_names``, else ``NNNNNN.png``).
    """
    from moca_rt.sinks import JsonlWriter, MaskPngWriter, OverlayVideoWriter

    summary = summary if summary is not None else RunSummary()
    summary.out = str(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stage_totals: dict[str, float] = {}
    names = mask_names if mask_names is not None else source.mask_names
    masks = MaskPngWriter(out / "masks" if masks_dir is None else masks_dir, names=names)
    records = JsonlWriter(out / "records.jsonl")
    writer = OverlayVideoWriter.for_source(out / "overlay.mp4", source) if overlay else None
    bar = tqdm(
        desc="frames", unit="frame", file=sys.stderr, dynamic_ncols=True, disable=not progress
    )
    caught = collect_warnings()
    raised = caught.__enter__()
    try:
        with source:
            frames = source if writer is None else writer.tap_audio(source)
            for frame, result in pipeline.stream(frames, batch, box_prompts):
                # Outputs first, counts right after (a Ctrl-C between the two is a few bytecodes
                # wide, not a PNG encode wide): summary.frames matches the records written.
                if result is None:
                    records.write_result(frame, None)
                    summary.frames += 1
                    summary.dropped += 1
                    bar.update(1)
                    continue
                png = masks.write(frame.index, result.mask)  # before its record, which names it
                records.write_result(frame, result, mask_file=os.path.relpath(png, out))
                summary.frames += 1
                summary.processed += 1
                summary.silent += int(result.silent)
                summary.empty += int(not result.mask.any())
                bar.update(1)
                for name, ms in result.timings_ms.items():
                    stage_totals[name] = stage_totals.get(name, 0.0) + ms
                if writer is not None and frame.image is not None:
                    writer.write(frame.image, result.mask, frame.pts)
    except (DecodeError, MediaError) as e:  # also a later image of a folder that cannot be read
        summary.error = f"{type(e).__name__}: {e}"
    except KeyboardInterrupt:
        summary.interrupted = True
    except BaseException as e:  # recorded, then raised: the caller maps it to its exit code
        summary.error = f"{type(e).__name__}: {e}"
        raise
    finally:
        caught.__exit__(None, None, None)
        bar.close()
        records.close()
        masks.close()
        if writer is not None:
            writer.write_audio(source.tail_audio())
            writer.close()
        summary.wall_s = time.perf_counter() - started
        summary.notes.extend(f"stream: {line}" for line in source.reconnect_log)
        summary.warnings.extend(source.notes)
        summary.warnings.extend(raised)
        summary.warnings.extend(_coverage_warnings(source, summary))
        if summary.processed:
            summary.stage_ms = {k: v / summary.processed for k, v in stage_totals.items()}
        summary.write(out)
    return summary


@contextmanager
def collect_warnings() -> Iterator[list[str]]:
    """Collect the Python warnings raised inside the block (every one, from any thread) as
    messages, instead of printing them with a source line; yields the list it fills."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield messages
        finally:
            messages.extend(dict.fromkeys(str(w.message) for w in caught))


def _coverage_warnings(source: MediaSource, summary: RunSummary) -> list[str]:
    """What the audio did not cover: a soundtrack shorter than one window (zero-padded), or a
    single frame against a longer soundtrack (only the window around it is used)."""
    from moca_rt.config import SAMPLE_RATE

    if not source.has_audio or summary.processed == 0:
        return []
    audio_s = source.stats.audio_samples_16k / SAMPLE_RATE
    window = source.window_s
    if audio_s < window:
        return [
            f"the audio lasts {audio_s:.2f} s, shorter than the {window:g} s window of a frame: "
            "the rest of each window is zeros (silence)"
        ]
    if summary.frames == 1 and audio_s > window:
        return [
            f"one video frame against {audio_s:.2f} s of audio: only the {window:g} s of audio "
            "around the frame are used"
        ]
    return []


@dataclass
class SplitSummary:
    """What a split run did: per-video outcomes (``out`` and ``error`` of each), totals and the
    videos that failed (recorded and skipped). Written to ``OUT/summary.json``."""

    source: str = ""
    subset: str = ""
    gt_root: str | None = None
    out: str = ""
    videos: int = 0
    ok: int = 0
    failed: int = 0
    frames: int = 0
    processed: int = 0
    wall_s: float = 0.0
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    per_video: list[dict[str, Any]] = field(default_factory=list)

    @property
    def error(self) -> str | None:
        """One line on the videos that failed, or None."""
        bad = [v for v in self.per_video if v["error"] is not None]
        if not bad:
            return None
        return f"{len(bad)} of {self.videos} videos failed; first: {bad[0]['video']}: " + str(
            bad[0]["error"]
        )

    def timing_table(self) -> str:
        fps = self.processed / self.wall_s if self.wall_s > 0 else 0.0
        return (
            f"{self.videos} videos ({self.ok} ok, {self.failed} failed), {self.frames} frames "
            f"({self.processed} processed) in {self.wall_s:.2f} s = {fps:.2f} frames/s"
        )

    def write(self, folder: Path) -> Path:
        path = folder / SUMMARY_FILE
        path.write_text(json.dumps({**asdict(self), "error": self.error}, indent=2) + "\n")
        return path


def segment_split(
    pipeline: MocaPipeline,
    split: AvsSplit,
    out: Path,
    *,
    batch: int = 1,
    overlay: bool = False,
    progress: bool = False,
    open_options: dict[str, Any] | None = None,
    summary: SplitSummary | None = None,
) -> SplitSummary:
    """Segment every video of an AVSBench split with one pipeline (one model load).

    Layout under ``out``: ``masks/<mask_dir>/<gt name>.png`` (the ground truth's relative
    paths and names, so ``moca_rt.evaluate --pred OUT/masks --gt <split.gt_root>`` pairs them
    as they are), ``videos/<mask_dir>/records.jsonl`` and ``summary.json`` per video (one JSONL
    per video), and ``summary.json`` for the split (:class:`SplitSummary`). A video that cannot
    be opened or breaks is recorded (its ``error``) and skipped; out of memory and Ctrl-C end
    the run (the summary is still written).
    """
    from moca_rt.errors import OutOfMemoryError
    from moca_rt.media import open_avsbench

    summary = summary if summary is not None else SplitSummary()
    summary.source, summary.subset, summary.out = str(split.root), split.subset, str(out)
    summary.gt_root = None if split.gt_root is None else str(split.gt_root)
    summary.videos = len(split.videos)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bar = tqdm(split.videos, desc="videos", unit="video", file=sys.stderr, disable=not progress)
    try:
        for video in bar:
            vout = out / "videos" / video.mask_dir
            row: dict[str, Any] = {"video": video.mask_dir, "out": str(vout), "frames": 0}
            row["error"] = None
            summary.per_video.append(row)
            try:
                with collect_warnings() as opened:
                    source = open_avsbench(video.frames_dir, video.audio, **(open_options or {}))
                run = segment_source(
                    pipeline,
                    source,
                    vout,
                    batch=batch,
                    overlay=overlay,
                    masks_dir=out / "masks" / video.mask_dir,
                    mask_names=video.mask_names,
                    summary=RunSummary(warnings=opened),
                )
            except (OutOfMemoryError, KeyboardInterrupt):
                row["error"] = "stopped here"
                raise
            except Exception as e:  # recorded and skipped: one bad video does not end the split
                row["error"] = f"{type(e).__name__}: {e}"
                summary.failed += 1
                continue
            row.update(frames=run.frames, processed=run.processed, error=run.error)
            summary.frames += run.frames
            summary.processed += run.processed
            summary.warnings.extend(f"{video.mask_dir}: {w}" for w in run.warnings)
            if run.interrupted:
                summary.interrupted = True
                break
            if run.error is not None:
                summary.failed += 1
            else:
                summary.ok += 1
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        bar.close()
        summary.wall_s = time.perf_counter() - started
        summary.write(out)
    return summary
