"""Run one opened source through a built pipeline and write its outputs (one model load, many
sources: ``infer`` calls this once, the batch and split-root jobs once per video).

Outputs under ``out``: ``masks/NNNNNN.png`` (one per processed frame, 0/255), ``records.jsonl``
(one record per input frame, flushed per record; a record is written after its PNG), optionally
``overlay.mp4`` and always ``summary.json`` (:class:`RunSummary`), also when the source breaks
part-way or the run is interrupted.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from moca_rt.errors import DecodeError, MediaError

if TYPE_CHECKING:
    from moca_rt.media.sources import MediaSource
    from moca_rt.pipeline import MocaPipeline

__all__ = ["SUMMARY_FILE", "RunSummary", "segment_source"]

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
) -> RunSummary:
    """Segment every frame of ``source`` (closed on return) and write the outputs under ``out``.

    A decode or media error part-way is not raised: it is stored in ``summary.error`` after
    every decodable frame was written. KeyboardInterrupt closes the outputs and sets
    ``summary.interrupted``. ``summary`` (e.g. with notes gathered while building) is filled
    in and returned.
    """
    from moca_rt.sinks import JsonlWriter, MaskPngWriter, OverlayVideoWriter

    summary = summary if summary is not None else RunSummary()
    summary.out = str(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stage_totals: dict[str, float] = {}
    masks = MaskPngWriter(out / "masks")
    records = JsonlWriter(out / "records.jsonl")
    writer = OverlayVideoWriter.for_source(out / "overlay.mp4", source) if overlay else None
    bar = tqdm(
        desc="frames", unit="frame", file=sys.stderr, dynamic_ncols=True, disable=not progress
    )
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
                masks.write(frame.index, result.mask)  # before its record: a record has its PNG
                records.write_result(frame, result)
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
    finally:
        bar.close()
        records.close()
        masks.close()
        if writer is not None:
            writer.write_audio(source.tail_audio())
            writer.close()
        summary.wall_s = time.perf_counter() - started
        summary.notes.extend(f"stream: {line}" for line in source.reconnect_log)
        if summary.processed:
            summary.stage_ms = {k: v / summary.processed for k, v in stage_totals.items()}
        summary.write(out)
    return summary
